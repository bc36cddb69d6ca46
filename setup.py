from setuptools import find_packages, setup

setup(
    name="sslseq",
    version="0.1.0",
    description="Speech self-supervised learning recipes: wav2vec 2.0, HuBERT, w2v-BERT, DinoSR",
    packages=find_packages(include=["sslseq", "sslseq.*"]),
    python_requires=">=3.10",
    # torch: a range that both 2.11 (GPU machine) and 2.13 (CPU build) satisfy, so pip never
    # replaces an installed torch with a CUDA download.
    install_requires=[
        "torch>=2.4",
        "numpy>=1.24",
        "soundfile>=0.12",
        "soxr>=0.3",
        "pyyaml>=6",
        "safetensors>=0.4",
        "sentencepiece>=0.1.99",
        "jiwer>=3.0",
        "tqdm>=4.60",
        "tensorboard>=2.12",
        "accelerate>=0.30",
        "matplotlib>=3.7",  # RESULTS.png learning curves (Agg backend, no display)
        # word n-gram LM decoding: Kneser-Ney ARPA training (pure Python) and flashlight's lexicon
        # beam search + KenLM (binary wheels, no torch dependency)
        "kaldingram>=0.1.2,<0.2",
        "flashlight-text>=0.0.7,<0.1",
    ],
    extras_require={
        "test": ["pytest>=7", "kaldi-native-fbank>=1.18", "scikit-learn>=1.3", "faiss-cpu>=1.7", "transformers>=4.40",
                 "lhotse>=1.20",  # tests/test_lhotse.py (skipped without it)
                 # Kernel tests run the Triton interpreter on CPU; wheels exist for x86_64 Linux only.
                 "triton>=3.0; platform_system=='Linux' and platform_machine=='x86_64'"],
        "gpu": ["triton>=3.0"],
        # `sslseq data from-lhotse / to-lhotse`; lhotse asks for torch without a version, so it keeps the installed one
        "lhotse": ["lhotse>=1.20"],
    },
    entry_points={"console_scripts": ["sslseq=sslseq.cli:main"]},
)
