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

from stage_log import assert_nothing_redone
from test_recipe import ENV, ROOT, recipe_cmd

COMMON = ROOT / "tools" / "common.sh"
PRETRAIN = "exp/pretrain_hubert_cpu_mfcc_k20"


def bash(script: str, cwd: Path) -> subprocess.CompletedProcess:
    """``script`` in a fresh bash that has sourced tools/common.sh (as recipes/ssl.sh does)."""
    return subprocess.run(["bash", "-c", f"set -euo pipefail; . {COMMON}; {script}"], cwd=cwd,
                          capture_output=True, text=True, timeout=60, preexec_fn=_default_sigint)


def _default_sigint() -> None:
    # A test run started in the background (`pytest &`, CI wrappers) inherits SIGINT ignored, and
    # bash cannot trap a signal ignored at its start: give it the default, as a terminal would.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def tree(d: Path) -> dict[str, str]:
    """Every file under ``d`` (relative path -> content hash): what "nothing was lost" compares."""
    return {str(p.relative_to(d)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(d.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- stage markers (tools/common.sh)


@pytest.fixture
def finished(tmp_path: Path) -> Path:
    """A stage dir ``out`` finished with options a=1."""
    r = bash('stage_todo out "a=1" && echo old > out/result && mark_done out "a=1"', tmp_path)
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
    assert_nothing_redone(r.stderr, {"dump/mfcc/train", "dump/mfcc/dev", "dump/mfcc/test"})
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
    # the model section is typed by the registry (its family's config class) when the config loads
    ("model.logit_tmp=0.2", "model: unknown config key 'logit_tmp'. Did you mean: logit_temp?"),
    ("model.final_dim=abc", "model: config key 'final_dim' must be int, got 'abc'"),
    ("model.name=hubret", "model: unknown model name 'hubret'; known models: hubert,"),
])
def test_bad_train_values_are_one_line_errors(override, message):
    from sslseq.train.config import load_train_config
    from sslseq.utils import SslseqError

    with pytest.raises(SslseqError) as e:  # what `sslseq train` prints (exit status 1), before any work
        load_train_config(CONF, [*TRAIN_ARGS, override])
    assert message in str(e.value) and "\n" not in str(e.value)


def test_damaged_hf_dirs_and_a_safetensors_given_as_fairseq_are_named(tmp_path: Path):
    import json

    import torch
    from safetensors.torch import save_file

    from sslseq.convert import load_torch_file
    from sslseq.convert.hf import load_hf_dir
    from sslseq.utils import SslseqError

    d = tmp_path / "hf"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "hubert"}))
    save_file({"w": torch.zeros(64, 64)}, str(d / "model.safetensors"))
    good = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(good[: len(good) // 2])
    with pytest.raises(SslseqError, match=r"model\.safetensors: cannot read weights .* the file is damaged: copy or "
                                          "download the model again"):
        load_hf_dir(d)
    (d / "model.safetensors").rename(d / "model-00001-of-00001.safetensors")
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}}))
    with pytest.raises(SslseqError, match=r"index\.json: no 'weight_map' \(parameter name → shard file\)"):
        load_hf_dir(d)
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": "model-00001-of-00001.safetensors"}}))
    with pytest.raises(SslseqError, match=r"model-00001-of-00001\.safetensors: cannot read weights"):
        load_hf_dir(d)  # the shard is still the cut one
    (d / "model-00001-of-00001.safetensors").write_bytes(good)
    assert load_hf_dir(d)[1]["w"].shape == (64, 64)
    # --from fairseq: a .safetensors that torch.load cannot read (torch < 2.13 reads none) is named with the fix
    (tmp_path / "cut.safetensors").write_bytes(good[: len(good) // 2])
    with pytest.raises(SslseqError, match=r"cut\.safetensors: cannot read the checkpoint .*it is a safetensors file: "
                                          "convert its transformers directory with --from hf"):
        load_torch_file(tmp_path / "cut.safetensors")


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


# ---------------------------------------------------------------- damaged outputs of finished stages (issue 10)


def _sslseq(workdir: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(["sslseq", *args], cwd=workdir, capture_output=True, text=True, env=ENV, timeout=timeout)


def _no_logs(d: Path) -> dict[str, str]:
    return {k: v for k, v in tree(d).items() if not k.startswith("log/")}


def test_damaged_feature_shards_are_named_and_stage_2_redoes_them(tiny_run: Path, tmp_path: Path):
    workdir = _copy(tiny_run, tmp_path / "w", "data", "dump/mfcc")
    feats = workdir / "dump/mfcc"
    npy = feats / "train/0_2.npy"
    size = npy.stat().st_size
    os.truncate(npy, size // 2)  # truncated
    (feats / "dev/1_2.npy").unlink()  # deleted
    changed = feats / "test/0_2.npy"  # the same size, other content
    changed.write_bytes(changed.read_bytes()[:-4] + b"\x00\x00\xc0\x7f")
    untouched = {p: p.stat().st_mtime_ns for p in feats.glob("*/1_2.npy") if p.parent.name != "dev"}

    cut = f"dump/mfcc/train/0_2.npy: {size // 2} bytes, but {size} were written (the file is cut short); " \
          "dump it again: rerun the recipe's stage 2"
    r = _sslseq(workdir, "feats", "check", "--nj", "2", "dump/mfcc/train")
    assert r.returncode == 1 and cut in r.stderr and "complete" not in r.stdout, r.stderr
    r = _sslseq(workdir, "kmeans", "fit", "--k", "20", "--device", "cpu", "dump/mfcc/train", str(tmp_path / "km.st"))
    assert r.returncode == 1 and cut in r.stderr and "Traceback" not in r.stderr, r.stderr
    r = _sslseq(workdir, "feats", "check", "--nj", "2", "dump/mfcc/test")
    assert r.returncode == 1 and "dump/mfcc/test/0_2.npy: its SHA-256 differs from the one in 0_2.sums" in r.stderr
    r = _sslseq(workdir, "feats", "check", "--nj", "2", "dump/mfcc/dev")
    assert r.returncode == 1 and "dump/mfcc/dev/1_2.npy: missing" in r.stderr

    r = _recipe(workdir, "--stage", "2", "--stop-stage", "2")
    assert r.returncode == 0, r.stderr[-3000:]
    for set_, what in (("train", f"0_2.npy: {size // 2} bytes, {size} when the stage was done"),
                       ("dev", "1_2.npy: missing"),
                       ("test", "0_2.npy: changed since the stage was done (another SHA-256)")):
        assert f"dump/mfcc/{set_}/{what}: dump/mfcc/{set_} is not done after all; redoing it" in r.stderr, \
            r.stderr[-3000:]
    for set_ in ("train", "dev", "test"):  # the same shards and markers as before the damage
        assert _no_logs(feats / set_) == _no_logs(tiny_run / "dump/mfcc" / set_)
    assert all(p.stat().st_mtime_ns == t for p, t in untouched.items())  # intact shards were not dumped again
    r = _recipe(workdir, "--stage", "2", "--stop-stage", "2")
    assert r.returncode == 0 and "not done after all" not in r.stderr and "skip: dump/mfcc/train is done" in r.stderr


def _relabel_one(km: Path) -> None:
    """Another cluster id for one label of ``km``: the same number of labels and the same size."""
    lines = km.read_text().splitlines(True)
    ids = lines[0].split()
    i = next(n for n, t in enumerate(ids) if len(t) == 1)
    ids[i] = str((int(ids[i]) + 1) % 10)
    lines[0] = " ".join(ids) + "\n"
    km.write_text("".join(lines))


def test_changed_labels_stop_training_and_stage_3_redoes_them(tiny_run: Path, tmp_path: Path):
    workdir = _copy(tiny_run, tmp_path / "w", "data", "dump/mfcc", "dump/labels", "exp/kmeans_mfcc_k20", PRETRAIN)
    km = workdir / "dump/labels/mfcc_k20/train.km"
    size = km.stat().st_size
    _relabel_one(km)
    assert km.stat().st_size == size and km.read_text() != (tiny_run / "dump/labels/mfcc_k20/train.km").read_text()
    before = tree(workdir / PRETRAIN)
    # a redo of pretraining (other steps) reads the labels: one named error, the finished model stays
    r = _recipe(workdir, "--stage", "4", "--stop-stage", "4", "--pretrain-steps", "3")
    assert r.returncode != 0, r.stderr[-3000:]
    assert "dump/labels/mfcc_k20/train.km: its SHA-256 differs from the one recorded when it was written (the " \
           "content was changed since); regenerate the labels ('sslseq kmeans label', recipe stage 3)" in r.stderr, \
        r.stderr[-3000:]
    assert "Traceback" not in r.stderr and tree(workdir / PRETRAIN) == before
    # stage 3 notices its changed output and labels again; the k-means model is kept
    r = _recipe(workdir, "--stage", "3", "--stop-stage", "3")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "dump/labels/mfcc_k20/train.km: changed since the stage was done (another SHA-256): dump/labels/mfcc_k20 " \
           "is not done after all; redoing it" in r.stderr and "skip: exp/kmeans_mfcc_k20 is done" in r.stderr
    assert _no_logs(workdir / "dump/labels/mfcc_k20") == _no_logs(tiny_run / "dump/labels/mfcc_k20")


def test_a_truncated_model_redoes_its_stage(tiny_run: Path, tmp_path: Path):
    workdir = _copy(tiny_run, tmp_path / "w", "data", "dump/labels")
    shutil.copytree(tiny_run / PRETRAIN, workdir / PRETRAIN)  # with its checkpoints: the redo resumes from the last
    model = workdir / PRETRAIN / "model.safetensors"
    good = model.read_bytes()
    os.truncate(model, len(good) // 2)
    r = _recipe(workdir, "--stage", "4", "--stop-stage", "4")
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"{PRETRAIN}/model.safetensors: {len(good) // 2} bytes, {len(good)} when the stage was done: {PRETRAIN} " \
           "is not done after all; redoing it" in r.stderr, r.stderr[-3000:]
    assert model.read_bytes() == good  # the same model, from the last checkpoint
    assert (workdir / PRETRAIN / ".done").read_text() == (tiny_run / PRETRAIN / ".done").read_text()  # later stages stay
    model.unlink()
    r = _recipe(workdir, "--stage", "4", "--stop-stage", "4")
    assert r.returncode == 0 and f"{PRETRAIN}/model.safetensors: missing" in r.stderr and model.read_bytes() == good


def test_damaged_lm_and_decode_outputs_redo_their_step(tiny_run: Path, tmp_path: Path):
    from sslseq.asr import emissions
    from sslseq.utils import SslseqError

    # the first run's CTC dirs only: another test may have added an iteration-2 run to the shared tiny_run
    ctc = [str(p.relative_to(tiny_run)) for p in sorted(tiny_run.glob("exp/ctc_*"))
           if p.name.endswith(("_scratch", "_from_" + Path(PRETRAIN).name))]
    workdir = _copy(tiny_run, tmp_path / "w", "data", PRETRAIN, *ctc)
    dec = workdir / ctc[0] / "decode_test"
    rel = dec.relative_to(workdir)
    hyp, block, arpa = dec / "hyp.txt", dec / "emissions/0_2.npy", workdir / "data/lm/lm.arpa"
    good = {p: p.read_bytes() for p in (hyp, block, arpa)}
    good_log_probs = emissions.load(dec, dec.parent, workdir / "data/test")
    hyp.write_bytes(good[hyp] + b"X\n")
    os.truncate(block, len(good[block]) // 2)
    arpa.write_bytes(good[arpa].replace(b"\\end\\", b"\\end\\ "))  # one byte more

    # a reader of the emissions names the damaged block
    with pytest.raises(SslseqError, match=re.escape(f"{block}: {len(good[block]) // 2} bytes, but {len(good[block])} "
                                                    "were written (the file is cut short); run 'sslseq decode")):
        emissions.load(dec, dec.parent, workdir / "data/test")
    r = _recipe(workdir, "--stage", "1", "--stop-stage", "1")
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"data/lm/lm.arpa: {len(good[arpa]) + 1} bytes, {len(good[arpa])} when the stage was done: data/lm is not " \
           "done after all; redoing it" in r.stderr, r.stderr[-3000:]
    assert arpa.read_bytes() == good[arpa]
    r = _recipe(workdir, "--stage", "7", "--stop-stage", "7")
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"{rel}/hyp.txt: {len(good[hyp]) + 2} bytes, {len(good[hyp])} when the stage was done: {rel} is not done " \
           "after all; redoing it" in r.stderr, r.stderr[-3000:]
    assert hyp.read_bytes() == good[hyp]
    again = emissions.load(dec, dec.parent, workdir / "data/test")  # the damaged block was computed again
    assert again.keys() == good_log_probs.keys()
    assert all(np.allclose(again[u], good_log_probs[u], atol=1e-5) for u in again)
    assert "not done after all" not in r.stderr.replace(f"{rel} is not done after all", "")  # nothing else redone
    r = _recipe(workdir, "--stage", "7", "--stop-stage", "7")
    assert r.returncode == 0 and "not done after all" not in r.stderr and f"skip: {rel} is done" in r.stderr


# ---------------------------------------------------------------- data dirs of the tiny recipe, damaged (issue 10 item 9)


def _second_line(path: Path) -> tuple[str, int]:
    """The utterance id of line 2 of ``path`` and the byte offset of that line."""
    raw = path.read_bytes()
    start = raw.index(b"\n") + 1
    return raw[start:].split()[0].decode(), start


def test_data_dir_with_invalid_utf8_text(tiny_run: Path, tmp_path: Path):
    workdir = _copy(tiny_run, tmp_path / "w", "data/dev")
    text = workdir / "data/dev/text"
    utt, start = _second_line(text)
    raw = text.read_bytes()
    at = start + len(utt) + 2  # the second character of the transcript
    text.write_bytes(raw[:at] + b"\xc9" + raw[at + 1:])
    before = tree(workdir / "data")
    r = _sslseq(workdir, "data", "validate", "--quick", "data/dev")
    assert r.returncode == 1, r.stderr
    assert r.stdout.splitlines() == [
        f"data/dev/text:2: invalid UTF-8: byte 0xC9 at byte offset {at} of the file (byte {at - start + 1} of the "
        "line); data files must be UTF-8: convert the file (e.g. 'iconv -f latin1 -t utf-8')"], r.stdout
    assert "data/dev: 1 problem(s) found" in r.stderr and tree(workdir / "data") == before


def test_data_dir_with_a_space_in_an_utterance_id(tiny_run: Path, tmp_path: Path):
    workdir = _copy(tiny_run, tmp_path / "w", "data/dev")
    d = workdir / "data/dev"
    utt, _ = _second_line(d / "wav.scp")
    spaced = f"{utt[:2]} {utt[2:]}"
    for name in ("wav.scp", "text", "utt2spk", "spk2utt", "utt2dur"):
        (d / name).write_text(re.sub(rf"(?<!\S){re.escape(utt)}(?!\S)", spaced, (d / name).read_text()))
    before = tree(workdir / "data")
    r = _sslseq(workdir, "data", "validate", "--quick", "data/dev")
    assert r.returncode == 1, r.stderr
    problems = r.stdout.splitlines()
    assert len(problems) == 1 and problems[0].startswith(
        f"data/dev/wav.scp:2: utterance id '{spaced}' contains a space (after '{utt[:2]}') (also on "), problems
    assert "data/dev: 1 problem(s) found" in r.stderr and tree(workdir / "data") == before
    r = _sslseq(workdir, "feats", "dump", "--type", "mfcc", "data/dev", "x")  # readers: the same one line
    assert r.returncode == 1 and f"utterance id '{spaced}' contains a space" in r.stderr and not (workdir / "x").exists()


def test_data_dir_with_a_byte_order_mark(tiny_run: Path, tmp_path: Path):
    workdir = _copy(tiny_run, tmp_path / "w", "data/dev")
    for name in ("wav.scp", "utt2spk", "text"):
        f = workdir / "data/dev" / name
        f.write_bytes(b"\xef\xbb\xbf" + f.read_bytes())
    before = tree(workdir / "data")
    r = _sslseq(workdir, "data", "validate", "--quick", "data/dev")
    assert r.returncode == 0 and r.stdout.strip() == "data/dev: OK", r.stdout + r.stderr
    assert "data/dev/wav.scp starts with a UTF-8 byte order mark; it is ignored" in r.stderr
    assert tree(workdir / "data") == before


def test_data_dir_with_a_latin1_wav_file_name(tiny_run: Path, tmp_path: Path):
    workdir = _copy(tiny_run, tmp_path / "w", "data/dev")
    scp = workdir / "data/dev/wav.scp"
    utt, start = _second_line(scp)
    raw = scp.read_bytes()
    end = raw.index(b"\n", start)
    wav = raw[start:end].split()[1]
    name = os.fsencode(tmp_path) + b"/caf\xe9.wav"  # 'café.wav' in latin-1
    shutil.copyfile(wav, name)
    scp.write_bytes(raw[:start] + utt.encode() + b" " + name + raw[end:])
    r = _sslseq(workdir, "data", "validate", "data/dev")  # reads every sample
    assert r.returncode == 0 and r.stdout.strip() == "data/dev: OK", r.stdout + r.stderr
    total = sum(float(line.split()[1]) for line in (workdir / "data/dev/utt2dur").read_text().splitlines())
    r = _sslseq(workdir, "data", "subset", "--duration", f"{total - 0.005:.3f}s", "data/dev", "data/dev_all")
    assert r.returncode == 0, r.stderr
    assert name in (workdir / "data/dev_all/wav.scp").read_bytes()  # written back as the same bytes


def test_pretraining_out_dir_spelled_differently_is_the_same_run(tiny_run: Path, tmp_path: Path, monkeypatch):
    import yaml

    from sslseq.models.exp_dir import FILES
    from sslseq.train.config import load_train_config
    from sslseq.train.trainer import is_finished

    config = ROOT / "recipes/conf/pretrain_hubert_cpu.yaml"

    def overrides(exp: Path, out_dir: str) -> list[str]:
        """key=value of every setting in ``exp``'s config.yaml but the model and its file record: the recipe's run again."""
        out: list[str] = []

        def walk(d: dict, prefix: str) -> None:
            for k, v in d.items():
                if isinstance(v, dict):
                    walk(v, f"{prefix}{k}.")
                elif f"{prefix}{k}" not in ("model_config", "out_dir"):
                    value = yaml.safe_dump(v, default_flow_style=True).removesuffix("...\n").strip()
                    out.append(f"{prefix}{k}={value}")

        recorded = yaml.safe_load((exp / "config.yaml").read_text())
        walk({k: v for k, v in recorded.items() if k not in ("model", FILES)}, "")
        return [*out, f"out_dir={out_dir}"]

    monkeypatch.chdir(tiny_run)  # the recipe's paths are relative to its workdir
    assert is_finished(load_train_config(config, overrides(tiny_run / PRETRAIN, PRETRAIN)))
    assert is_finished(load_train_config(config, overrides(tiny_run / PRETRAIN, f"./{PRETRAIN}")))
    assert is_finished(load_train_config(config, overrides(tiny_run / PRETRAIN, str(tiny_run / PRETRAIN))))
    monkeypatch.undo()
    # resuming a copy's checkpoints (the recipe's run elsewhere) with out_dir as an absolute path
    workdir = _copy(tiny_run, tmp_path / "w", "data", "dump/labels")
    shutil.copytree(tiny_run / PRETRAIN, workdir / PRETRAIN)
    good = (workdir / PRETRAIN / "model.safetensors").read_bytes()
    (workdir / PRETRAIN / "model.safetensors").unlink()
    r = _sslseq(workdir, "train", str(config), *overrides(workdir / PRETRAIN, str(workdir / PRETRAIN)))
    assert r.returncode == 0 and "another config" not in r.stderr and "resumed from" in r.stderr, r.stderr[-3000:]
    assert (workdir / PRETRAIN / "model.safetensors").read_bytes() == good
