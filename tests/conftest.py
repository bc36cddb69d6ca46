"""Shared fixtures: a tiny synthesized corpus (about 4 minutes) and its Kaldi data dirs.

Session-scoped, so the corpus is synthesized once per pytest run (a few seconds).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("SSLSEQ_NO_PROGRESS", "1")
# The embedded corpus's synthesis is synth_en's own (egs/synth_en/local/synth_corpus.py, not the
# package); the tests build their tiny corpus with it.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "egs" / "synth_en" / "local"))

# Whether @triton.jit (triton's own library functions included) makes interpreted or compiled
# kernels is fixed when triton is first imported, and importing sslseq's models imports it (via
# torch.compiler.disable -> torch._dynamo): decide it here, before any test module is collected.
# Without a CUDA GPU the triton path runs in the interpreter (tests/test_kernels.py); with one the
# kernels compile (tests/test_cuda.py) and the interpreter tests skip, saying so.
if "triton" not in sys.modules:
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")

# Tests marked ``cuda`` (tests/test_cuda.py) run on the device $SSLSEQ_TEST_DEVICE (default
# cuda) and are skipped, saying why, where that is cuda and no CUDA GPU is visible; on a GPU
# machine `sslseq bench gpu` (tools/gpu_check.sh) runs them, and its dry run runs some of them
# on the CPU (SSLSEQ_TEST_DEVICE=cpu, Triton interpreter) so they cannot rot between GPU loans.
CUDA_MARK_HELP = ("cuda: needs a CUDA GPU (the device $SSLSEQ_TEST_DEVICE, default cuda); skipped without one. "
                  "`sslseq bench gpu` / tools/gpu_check.sh runs them on a GPU machine")


def target_device() -> str:
    return os.environ.get("SSLSEQ_TEST_DEVICE", "cuda")


def pytest_configure(config):
    config.addinivalue_line("markers", CUDA_MARK_HELP)


def pytest_collection_modifyitems(config, items):
    marked = [item for item in items if item.get_closest_marker("cuda")]
    if not marked or not target_device().startswith("cuda"):
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="no CUDA GPU visible (SSLSEQ_TEST_DEVICE=cuda): these run on a GPU machine through "
                                   "`sslseq bench gpu` (tools/gpu_check.sh)")
    for item in marked:
        item.add_marker(skip)

needs_synth = pytest.mark.skipif(
    shutil.which("espeak-ng") is None or shutil.which("bible") is None,
    reason="espeak-ng and bible-kjv are needed to synthesize the corpus (apt-get install espeak-ng bible-kjv)",
)


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    """``synthesize_corpus(tiny=True, seed=0)`` output dir: wav/, corpus.tsv, speakers.tsv."""
    if shutil.which("espeak-ng") is None or shutil.which("bible") is None:
        pytest.skip("espeak-ng and bible-kjv are needed to synthesize the corpus")
    from synth_corpus import synthesize_corpus

    out = tmp_path_factory.mktemp("tiny_corpus")
    synthesize_corpus(out, hours=0.0, seed=0, tiny=True, nj=2)
    return out


@pytest.fixture(scope="session")
def tiny_data(tiny_corpus: Path, tmp_path_factory) -> Path:
    """Kaldi data dirs ``train``, ``dev``, ``test`` of the tiny corpus (read-only: copy before editing)."""
    from synth_corpus import prepare_data_dirs

    out = tmp_path_factory.mktemp("tiny_data")
    prepare_data_dirs(tiny_corpus, out)
    return out


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A workdir of the whole tiny synth_en recipe (``run.sh --tiny true``, a few minutes), built
    once per session and shared by tests/test_recipe.py and tests/test_faults.py.
    ``SSLSEQ_TEST_TINY_RUN=DIR`` reuses a finished workdir instead (copied first: tests change it)."""
    if shutil.which("espeak-ng") is None or shutil.which("bible") is None:
        pytest.skip("espeak-ng and bible-kjv are needed to synthesize the corpus")
    workdir = tmp_path_factory.mktemp("synth_en_tiny")
    given = os.environ.get("SSLSEQ_TEST_TINY_RUN")
    if given:
        if not (Path(given) / "exp" / "RESULTS.md").is_file():
            pytest.fail(f"SSLSEQ_TEST_TINY_RUN={given} is not a finished tiny recipe workdir (no exp/RESULTS.md)")
        shutil.copytree(given, workdir, symlinks=True, dirs_exist_ok=True)
        return workdir
    run = Path(__file__).resolve().parents[1] / "egs" / "synth_en" / "run.sh"
    r = subprocess.run(["bash", str(run), "--tiny", "true", "--workdir", str(workdir)], capture_output=True, text=True,
                       env={**os.environ, "SSLSEQ_NO_PROGRESS": "1"}, timeout=2400)
    assert r.returncode == 0, f"the tiny recipe failed:\n{r.stderr[-6000:]}"
    return workdir
