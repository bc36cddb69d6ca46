"""sslseq: speech self-supervised learning recipes (wav2vec 2.0, HuBERT, w2v-BERT, DinoSR)."""

__version__ = "0.1.0"
