"""Fault injection: bad options, failed and killed redos of recipe stages. Each test asserts the
error text, the exit status, and that no finished output was lost.

The stage-marker tests source tools/common.sh in a bare bash (seconds); the recipe tests run
egs/synth_en/run.sh on copies of parts of the tiny recipe's workdir (the session's ``tiny_run``,
see conftest.py) and stop in the option checks or within one cheap stage.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from test_recipe import ENV, ROOT, recipe_cmd

COMMON = ROOT / "tools" / "common.sh"
PRETRAIN = "exp/pretrain_hubert_cpu_mfcc_k20"


def bash(script: str, cwd: Path) -> subprocess.CompletedProcess:
    """``script`` in a fresh bash that has sourced tools/common.sh (as recipes/ssl.sh does)."""
    return subprocess.run(["bash", "-c", f"set -euo pipefail; . {COMMON}; {script}"], cwd=cwd,
                          capture_output=True, text=True, timeout=60)


def tree(d: Path) -> dict[str, str]:
    """Every file under ``d`` (relative path -> content hash): what "nothing was lost" compares."""
    return {str(p.relative_to(d)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(d.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- stage markers (tools/common.sh)


@pytest.fixture
def finished(tmp_path: Path) -> Path:
    """A stage dir ``out`` finished with options a=1."""
    r = bash('mkdir -p out && echo old > out/result && mark_done out "a=1"', tmp_path)
    assert r.returncode == 0, r.stderr
    return tmp_path


def test_failed_redo_keeps_the_old_result_and_the_partial_redo_resumes(finished: Path):
    before = tree(finished / "out")
    r = bash('stage_todo out "a=2"; [ ! -e out/result ]; echo partial > out/piece; exit 3', finished)
    assert r.returncode == 3
    assert "the previous result is back in place" in r.stderr and "out.redo" in r.stderr
    assert tree(finished / "out") == before  # the finished result, untouched
    assert (finished / "out.redo/piece").read_text() == "partial\n" and not (finished / "out.prev").exists()
    # the same options again: the partial redo resumes, and once done replaces the old result
    r = bash('if stage_todo out "a=2"; then cat out/piece; mark_done out "a=2"; fi', finished)
    assert r.returncode == 0 and r.stdout == "partial\n" and "resuming the unfinished redo" in r.stderr
    assert (finished / "out/.done").read_text() == "a=2\n" and not (finished / "out/result").exists()
    assert not (finished / "out.prev").exists() and not (finished / "out.redo").exists()
    assert not (finished / "out/.todo").exists()


def test_redo_killed_outright_is_put_back_by_the_next_run(finished: Path):
    before = tree(finished / "out")
    r = bash('stage_todo out "a=2"; echo partial > out/piece; kill -9 $$', finished)
    assert r.returncode == -signal.SIGKILL and (finished / "out.prev").is_dir()  # no trap ran
    # the old options again: the old result is back, and done
    r = bash('if stage_todo out "a=1"; then echo redone; fi', finished)
    assert r.returncode == 0 and "redone" not in r.stdout and "skip: out is done" in r.stderr
    assert tree(finished / "out") == before and (finished / "out.redo/piece").is_file()


def test_interrupted_redo_puts_the_old_result_back(finished: Path):
    before = tree(finished / "out")
    r = bash('stage_todo out "a=2"; kill -INT $$; sleep 5', finished)
    assert r.returncode == 130 and tree(finished / "out") == before


def test_a_done_redo_replaces_the_old_result(finished: Path):
    r = bash('stage_todo out "a=2"; echo new > out/result; mark_done out "a=2"; exit 4', finished)
    assert r.returncode == 4  # a later failure does not undo a finished stage
    assert (finished / "out/result").read_text() == "new\n" and (finished / "out/.done").read_text() == "a=2\n"
    assert not (finished / "out.prev").exists() and not (finished / "out.redo").exists()


# ---------------------------------------------------------------- recipe options


def _copy(tiny_run: Path, dst: Path, *parts: str) -> Path:
    """A workdir holding copies of ``parts`` of the finished tiny run (training dirs without their
    checkpoints: they are large and no test here reads them)."""
    for part in parts:
        shutil.copytree(tiny_run / part, dst / part, symlinks=True,
                        ignore=shutil.ignore_patterns("checkpoints", "tensorboard"))
    return dst


def _recipe(workdir: Path, *args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(recipe_cmd(workdir, *args), capture_output=True, text=True, env=env or ENV, timeout=timeout)


@pytest.mark.parametrize("args, message", [
    (["--stage", "4", "--stop-stage", "4", "--pretrain-steps", "3O"], "--pretrain-steps '3O': must be an integer >= 1"),
    (["--stage", "2", "--nj", "0"], "--nj '0': must be an integer >= 1"),
    (["--stage", "9"], "--stage '9': must be an integer from 0 to 7"),
    (["--stage", "abc"], "--stage 'abc': must be an integer from 0 to 7"),
    (["--stage", "5", "--stop-stage", "3"], "--stage 5 is after --stop-stage 3: nothing would run"),
    (["--tiny", "yes"], "--tiny 'yes': must be true or false"),
    (["--stage", "3", "--k", "2O"], "--k '2O': must be an integer >= 1"),
    (["--device", "gpu"], "--device 'gpu': must be one of: cpu cuda auto"),
    (["--hours", "ten"], "--hours 'ten': must be a positive number"),
    (["--stage", "6", "--subsets", "10mins"], "--subsets: '10mins' is not a duration"),
])
def test_bad_options_stop_before_anything_is_touched(tiny_run: Path, tmp_path: Path, args, message):
    workdir = _copy(tiny_run, tmp_path, "data", "dump/mfcc", "dump/labels", "exp/kmeans_mfcc_k20", PRETRAIN)
    before = tree(workdir)
    r = _recipe(workdir, *args, timeout=60)
    assert r.returncode == 1 and message in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr  # one line, no bash errors
    assert tree(workdir) == before


def _failing(tmp_path: Path, verb: str) -> dict:
    """ENV with an ``sslseq`` first on PATH that fails ``sslseq VERB ...`` and runs the real one otherwise."""
    real = shutil.which("sslseq")
    bin_dir = tmp_path / "fault_bin"
    bin_dir.mkdir()
    (bin_dir / "sslseq").write_text(
        f'#!/usr/bin/env bash\ncase "$*" in "{verb} "*) echo "injected failure: sslseq $*" >&2; exit 7 ;; esac\n'
        f'exec {real} "$@"\n')
    (bin_dir / "sslseq").chmod(0o755)
    return {**ENV, "PATH": f"{bin_dir}:{ENV['PATH']}"}


def test_failed_feature_redo_keeps_the_finished_features(tiny_run: Path, tmp_path: Path):
    workdir = _copy(tiny_run, tmp_path / "w", "data", "dump/mfcc")
    # --nj 3 changes the stage-2 options: a redo, whose dump fails
    r = _recipe(workdir, "--stage", "2", "--stop-stage", "2", "--nj", "3", env=_failing(tmp_path, "feats dump"))
    assert r.returncode != 0 and "dump/mfcc/train: the redo did not finish; the previous result is back" in r.stderr, \
        r.stderr[-3000:]
    for set_ in ("train", "dev", "test"):
        assert tree(workdir / "dump/mfcc" / set_) == tree(tiny_run / "dump/mfcc" / set_)
    assert (workdir / "dump/mfcc/train.redo/.todo").read_text().startswith("type=mfcc nj=3 ")
    # without the fault the redo runs to its end and replaces the old features
    r = _recipe(workdir, "--stage", "2", "--stop-stage", "2", "--nj", "3")
    assert r.returncode == 0, r.stderr[-3000:]
    for set_ in ("train", "dev", "test"):
        d = workdir / "dump/mfcc" / set_
        assert (d / ".done").read_text().startswith("type=mfcc nj=3 ")
        assert sorted(p.name for p in d.glob("*.npy")) == ["0_3.npy", "1_3.npy", "2_3.npy"]
        assert not (d.parent / f"{set_}.prev").exists() and not (d.parent / f"{set_}.redo").exists()


def test_failed_pretraining_redo_keeps_the_finished_model(tiny_run: Path, tmp_path: Path):
    workdir = _copy(tiny_run, tmp_path / "w", "data", "dump/labels", PRETRAIN)
    before = tree(workdir / PRETRAIN)
    r = _recipe(workdir, "--stage", "4", "--stop-stage", "4", "--pretrain-steps", "3", env=_failing(tmp_path, "train"))
    assert r.returncode != 0 and "injected failure: sslseq train" in r.stderr, r.stderr[-3000:]
    assert tree(workdir / PRETRAIN) == before


def test_killed_feature_redo_is_put_back_by_a_rerun(tiny_run: Path, tmp_path: Path):
    workdir = _copy(tiny_run, tmp_path / "w", "data", "dump/mfcc")
    before = tree(workdir / "dump/mfcc/train")
    p = subprocess.Popen(recipe_cmd(workdir, "--stage", "2", "--stop-stage", "2", "--nj", "3"), env=ENV,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        t0 = time.time()
        while not (workdir / "dump/mfcc/train.prev").is_dir():
            assert p.poll() is None and time.time() - t0 < 120, "the redo never started"
            time.sleep(0.02)
    finally:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    # back to the old options: the finished features are back, nothing is redone
    r = _recipe(workdir, "--stage", "2", "--stop-stage", "2")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "skip: dump/mfcc/train is done" in r.stderr and "stage took" not in r.stderr
    assert tree(workdir / "dump/mfcc/train") == before


# ---------------------------------------------------------------- one-line errors, not tracebacks

CONF = ROOT / "recipes" / "conf" / "pretrain_hubert_tiny.yaml"
TRAIN_ARGS = ["out_dir=x", "data.train=d", "data.labels_train=a.km"]


def test_floats_in_any_standard_notation(tmp_path: Path):
    from sslseq.train.config import load_train_config

    cfg = load_train_config(CONF, [*TRAIN_ARGS, "optim.lr=1e-4", "optim.eps=5E-9", "model.encoder.mask_prob=.5"])
    assert cfg.optim.lr == 1e-4 and cfg.optim.eps == 5e-9 and cfg.model["encoder"]["mask_prob"] == 0.5
    f = tmp_path / "c.yaml"
    f.write_text(f"model_config: {CONF.parent / 'model_hubert_tiny.yaml'}\noptim:\n  lr: 2e-3\n  betas: [0.9, 9.8e-1]\n")
    cfg = load_train_config(f, TRAIN_ARGS)
    assert cfg.optim.lr == 2e-3 and cfg.optim.betas == (0.9, 0.98)


@pytest.mark.parametrize("override, message", [
    ("optim.betas=[0.9]", "config key 'optim.betas' must be a list of 2 values, got [0.9]"),
    ("optim.lr=-1.0", "optim.lr: must be >= 0 and finite, got -1.0"),
    ("optim.lr=.inf", "optim.lr: must be >= 0 and finite, got inf"),
    ("optim.betas=[0.9, 1.5]", "optim.betas: each must be in [0, 1)"),
    ("optim.weight_decay=-0.1", "optim.weight_decay: must be >= 0 and finite"),
    ("optim.lr=[1", "override 'optim.lr=[1': the value is not valid YAML"),
    ("optim.max_skipped_frac=2", "optim.max_skipped_frac: must be in [0, 1]"),
])
def test_bad_train_values_are_one_line_errors(override, message):
    from sslseq.train.config import load_train_config
    from sslseq.utils import SslseqError

    with pytest.raises(SslseqError) as e:  # what `sslseq train` prints (exit status 1), before any work
        load_train_config(CONF, [*TRAIN_ARGS, override])
    assert message in str(e.value) and "\n" not in str(e.value)


def test_an_empty_checkpoint_file_is_named(tmp_path: Path):
    from sslseq.convert import load_torch_file
    from sslseq.utils import SslseqError

    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(SslseqError, match=r"empty\.pt: the file is empty or cut short \(0 bytes\)"):
        load_torch_file(tmp_path / "empty.pt")


def _label_dir(tmp_path: Path, meta: str | None, dict_lines: int | None = 5, labels: str = "0 1 2 3 4\n") -> Path:
    d = tmp_path / "labels"
    d.mkdir()
    (d / "train.km").write_text(labels)
    (d / "train.utts").write_text("u1\n")
    if meta is not None:
        (d / "labels.yaml").write_text(meta)
    if dict_lines is not None:
        (d / "dict.km.txt").write_text("".join(f"{i} 1\n" for i in range(dict_lines)))
    return d / "train.km"


@pytest.mark.parametrize("meta, dict_lines, message", [
    ("label_rate: 100.0\nk: [5\n", 5, "labels.yaml: not valid YAML"),
    ("", 5, "labels.yaml: expected a mapping of keys to values, got an empty file"),
    ("label_rate: 100.0\nk: five\n", 5, "labels.yaml: 'k: 'five'' is not a number of clusters"),
    # dict.km.txt of 2 clusters beside labels.yaml's k=5: files of two k-means runs
    ("label_rate: 100.0\nk: 5\n", 2, "dict.km.txt lists 2 clusters but"),
])
def test_broken_label_dirs_are_named(tmp_path: Path, meta, dict_lines, message):
    from sslseq.data.labels import read_labels
    from sslseq.utils import SslseqError

    km = _label_dir(tmp_path, meta, dict_lines)
    with pytest.raises(SslseqError, match=re.escape(message)) as e:
        read_labels(km)
    assert "regenerate the labels" in str(e.value)


@pytest.mark.parametrize("text, message", [
    ("type: mfcc\ndim: 39\nframe_rate: 100.0\n", "feats.yaml: no 'nj' (needs type, dim, frame_rate, nj)"),
    ("type: mfcc\ndim: 39\nframe_rate: 100.0\nnj: {2\n", "feats.yaml: not valid YAML"),
    ("type: mfcc\ndim: 39\nframe_rate: 100.0\nnj: two\n", "feats.yaml: 'nj: 'two'' is not a valid value"),
    ("- a list\n", "feats.yaml: expected a mapping of keys to values, got a list"),
])
def test_broken_feats_yaml_is_named(tmp_path: Path, text, message):
    from sslseq.features.store import read_meta
    from sslseq.utils import SslseqError

    (tmp_path / "feats.yaml").write_text(text)
    with pytest.raises(SslseqError, match=re.escape(message)) as e:
        read_meta(tmp_path)
    assert "sslseq feats dump" in str(e.value)


# ---------------------------------------------------------------- audio that validation must not pass


@pytest.mark.parametrize("samples, message", [
    (np.array([0.1, np.nan, 0.2] * 3000, dtype=np.float32), "audio contains NaN or infinite samples"),
    (np.array([0.1, np.inf] * 4000, dtype=np.float32), "audio contains NaN or infinite samples"),
    (np.full(320, 0.1, dtype=np.float32), "0.0200 s of audio is shorter than one 25 ms frame"),
])
def test_validation_reads_the_samples(tmp_path: Path, samples, message):
    import soundfile as sf
    from test_data import line_of, make_dir, wav_path

    from sslseq.cli import main
    from sslseq.data.kaldi import validate_data_dir

    d = make_dir(tmp_path)
    utt = "spk1-utt01"
    sf.write(wav_path(d, utt), samples, 16000, subtype="FLOAT")
    (d / "utt2dur").write_text((d / "utt2dur").read_text().replace(f"{utt} 0.4", f"{utt} {len(samples) / 16000:.4f}"))
    problems = validate_data_dir(d)
    assert len(problems) == 1 and problems[0].startswith(f"{d / 'wav.scp'}:{line_of(d / 'wav.scp', utt)}: {utt}: ") \
        and message in problems[0], problems
    assert main(["data", "validate", str(d)]) == 1
    quick = validate_data_dir(d, read_samples=False)  # headers only: the length is still checked
    assert quick == ([] if "NaN" in message else problems)


def test_recipe_stops_on_bad_audio_or_leaves_it_out_with_skip_bad(tiny_run: Path, tmp_path: Path):
    import soundfile as sf

    workdir = _copy(tiny_run, tmp_path / "w", "data")
    shutil.rmtree(workdir / "data/train_1min")  # as after stage 0: stage 1 makes the subset
    scp = workdir / "data/train/wav.scp"
    lines = scp.read_text().splitlines()
    utt = lines[3].split()[0]
    bad_wav = tmp_path / "nan.wav"
    x, sr = sf.read(lines[3].split()[1], dtype="float32")
    x[100] = np.nan
    sf.write(bad_wav, x, sr, subtype="FLOAT")
    lines[3] = f"{utt} {bad_wav}"
    scp.write_text("\n".join(lines) + "\n")
    before = tree(workdir / "data")
    r = _recipe(workdir, "--stage", "1", "--stop-stage", "1")
    assert r.returncode == 1 and f"wav.scp:4: {utt}: audio contains NaN or infinite samples" in r.stdout + r.stderr
    assert "--skip-bad true" in r.stderr and tree(workdir / "data") == before
    r = _recipe(workdir, "--stage", "1", "--stop-stage", "2", "--skip-bad", "true")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "1 utterance(s) with bad audio left out (54 left)" in r.stderr
    bad = (workdir / "data/train/bad_utts").read_text().splitlines()
    assert len(bad) == 1 and bad[0].startswith(f"{utt}\t") and "NaN" in bad[0]
    for d in ("train", "train_1min"):
        assert utt not in (workdir / "data" / d / "wav.scp").read_text()
    from sslseq.features.store import FeatureStore

    assert len(FeatureStore(workdir / "dump/mfcc/train").utts) == 54
