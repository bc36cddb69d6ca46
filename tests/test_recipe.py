"""End to end: the tiny synth_en recipe, a rerun that skips everything, and kill-and-rerun.

These run the real recipe (espeak-ng synthesis, MFCC, k-means, HuBERT pretraining, CTC,
decoding) at the --tiny size, so they take a few minutes.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from safetensors.numpy import load_file
from stage_log import assert_nothing_redone, done, markers, skipped

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / "egs" / "synth_en" / "run.sh"
ENV = {**os.environ, "SSLSEQ_NO_PROGRESS": "1"}

pytestmark = pytest.mark.skipif(
    shutil.which("espeak-ng") is None or shutil.which("bible") is None,
    reason="espeak-ng and bible-kjv are needed to synthesize the corpus (bash tools/install.sh installs them)",
)


def recipe_cmd(workdir: Path, *args: str) -> list[str]:
    return ["bash", str(RUN), "--tiny", "true", "--workdir", str(workdir), *args]


def run_recipe(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    r = subprocess.run(recipe_cmd(workdir, *args), capture_output=True, text=True, env=ENV, timeout=1200)
    assert r.returncode == 0, f"recipe failed:\n{r.stderr[-6000:]}"
    return r


def run_until(workdir: Path, ready, *args: str, timeout: float = 600) -> None:
    """Start the recipe, SIGKILL its whole process group as soon as ``ready()`` is true."""
    p = subprocess.Popen(
        recipe_cmd(workdir, *args), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    t0 = time.time()
    try:
        while not ready():
            if p.poll() is not None:
                pytest.fail(f"recipe ended before the kill point:\n{p.stderr.read().decode()[-4000:]}")
            if time.time() - t0 > timeout:
                pytest.fail("kill point never reached")
            time.sleep(0.05)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
        p.wait()


def test_tiny_recipe_end_to_end(tiny_run: Path):
    results = (tiny_run / "exp" / "RESULTS.md").read_text()
    assert "WER" in results
    decode_dirs = sorted(tiny_run.glob("exp/ctc_*/decode_*"))
    # pretrained-init and from-scratch CTC, each decoded on dev and test
    assert len(decode_dirs) == 4, decode_dirs
    for d in decode_dirs:
        hyp = (d / "hyp.txt").read_text().splitlines()
        ref_utts = (tiny_run / "data" / d.name.removeprefix("decode_") / "text").read_text().splitlines()
        assert [h.split()[0] for h in hyp] == [r.split()[0] for r in ref_utts]
        assert (d / "wer").read_text().startswith("%WER")
        assert d.name.removeprefix("decode_") in results
        # --lm true (default): LM results beside the greedy ones, from the cached emissions
        assert (d / "lm" / "wer").read_text().startswith("%WER")
        assert [h.split()[0] for h in (d / "lm" / "hyp.txt").read_text().splitlines()] == [h.split()[0] for h in hyp]
        assert (d / "emissions" / "feats.yaml").is_file()
    assert "| LM WER % | LM CER % |" in results
    # tuned on dev only, once per experiment; the LM text holds no dev/test sentence
    tuned = sorted(tiny_run.glob("exp/ctc_*/decode_*/lm_tune/params.yaml"))
    assert [p.parent.parent.name for p in tuned] == ["decode_dev", "decode_dev"]
    assert all(yaml.safe_load(p.read_text())["tuned_on"] == "data/dev" for p in tuned)
    assert yaml.safe_load((tiny_run / "data/lm/lm.yaml").read_text())["order"] == 3
    from sslseq.lm.corpus import check_overlap

    check_overlap(tiny_run / "data/lm/text", [tiny_run / "data/dev", tiny_run / "data/test"])


def _stage_outputs(workdir: Path) -> dict[str, int]:
    """What each stage writes (data dirs, LM, feature shards, labels, models, hypotheses) and
    when it was last written: a redone stage rewrites some of it."""
    patterns = ("data/*/wav.scp", "data/lm/lm.arpa", "dump/**/*.npy", "dump/**/*.km", "exp/*/model.safetensors",
                "exp/*/decode_*/hyp.txt", "exp/*/decode_*/lm/hyp.txt")
    return {str(f.relative_to(workdir)): f.stat().st_mtime_ns for pat in patterns for f in workdir.glob(pat)}


def test_rerun_skips_finished_stages(tiny_run: Path):
    before = _stage_outputs(tiny_run)
    assert any(k.startswith("dump/") for k in before) and any(k.endswith("model.safetensors") for k in before)
    r = run_recipe(tiny_run)
    assert_nothing_redone(r.stderr, markers(tiny_run))
    after = _stage_outputs(tiny_run)
    redone = sorted(k for k in after if before.get(k) != after[k])
    assert after.keys() == before.keys() and not redone, f"a finished stage was redone: {redone[:5]}"


def test_an_edited_config_redoes_exactly_what_depends_on_it(tiny_run: Path, tmp_path: Path):
    """Training stages' markers hold the trainer's fingerprint of the resolved config: the same
    YAMLs in another place redo nothing; an edit of the model YAML that the pretraining config
    includes (once skipped: the markers hashed only the top YAML) redoes pretraining, the CTC
    run initialised from it and that run's decoding, but not the from-scratch CTC run, which
    takes only the encoder section of that YAML; an edit of the CTC YAML redoes both CTC runs."""
    work, conf = tmp_path / "w", tmp_path / "conf"
    shutil.copytree(tiny_run, work, symlinks=True, ignore=shutil.ignore_patterns("checkpoints"))
    conf.mkdir()
    for name in ("pretrain_hubert_cpu.yaml", "model_hubert_cpu.yaml", "ctc_cpu.yaml"):
        shutil.copy(ROOT / "recipes" / "conf" / name, conf / name)
    opts = ("--stage", "4", "--pretrain-config", str(conf / "pretrain_hubert_cpu.yaml"),
            "--ctc-config", str(conf / "ctc_cpu.yaml"))
    pre = "exp/pretrain_hubert_cpu_mfcc_k20"
    ft, scratch = "exp/ctc_cpu_train_1min_from_pretrain_hubert_cpu_mfcc_k20", "exp/ctc_cpu_train_1min_scratch"
    assert_nothing_redone(run_recipe(work, *opts).stderr, markers(work, pre, ft, scratch))

    model = conf / "model_hubert_cpu.yaml"
    assert "logit_temp: 0.1" in model.read_text()
    model.write_text(model.read_text().replace("logit_temp: 0.1", "logit_temp: 0.2"))
    r = run_recipe(work, *opts)
    assert done(r.stderr) == {pre} | markers(work, ft), sorted(done(r.stderr))
    assert markers(work, scratch) <= skipped(r.stderr)
    assert yaml.safe_load((work / pre / "config.yaml").read_text())["model"]["logit_temp"] == 0.2

    ctc = conf / "ctc_cpu.yaml"
    assert "freeze_encoder_steps: 100" in ctc.read_text()
    ctc.write_text(ctc.read_text().replace("freeze_encoder_steps: 100", "freeze_encoder_steps: 10"))
    r = run_recipe(work, *opts[2:], "--stage", "6", "--stop-stage", "6")
    assert done(r.stderr) == {ft, scratch}, sorted(done(r.stderr))


def _same_arrays(a: Path, b: Path) -> None:
    x, y = load_file(str(a)), load_file(str(b))
    assert x.keys() == y.keys()
    for k in x:
        np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_killed_stages_rerun_to_the_same_outputs(tiny_run: Path, tmp_path: Path):
    workdir = tmp_path / "killed"
    workdir.mkdir()
    for d in ("corpus", "data"):  # stages 0-1 are reused; 2-4 are killed and rerun
        shutil.copytree(tiny_run / d, workdir / d, symlinks=True)

    # kill during stage 2, once the first feature shard of train is on disk
    run_until(workdir, lambda: any((workdir / "dump/mfcc/train").glob("*.npy")), "--stage", "2", "--stop-stage", "4")
    assert not (workdir / "dump/mfcc/train/.done").exists()
    # kill during stage 3, as soon as k-means fitting has started
    run_until(workdir, lambda: any(workdir.glob("exp/kmeans_*")), "--stage", "2", "--stop-stage", "4")
    assert not any(workdir.glob("dump/labels/*/.done"))
    # kill during stage 4, once the first training checkpoint is on disk
    run_until(workdir, lambda: any(workdir.glob("exp/pretrain_*/checkpoints/step_*/model.safetensors")),
              "--stage", "2", "--stop-stage", "4")
    pretrain = next(workdir.glob("exp/pretrain_*"))
    assert not (pretrain / ".done").exists()
    run_recipe(workdir, "--stage", "2", "--stop-stage", "4")

    for set_ in ("train", "dev", "test"):
        ref, got = tiny_run / "dump/mfcc" / set_, workdir / "dump/mfcc" / set_
        for f in sorted(ref.glob("*.npy")):
            np.testing.assert_array_equal(np.load(f), np.load(got / f.name))
    for km in sorted((tiny_run / "dump/labels").glob("*/*.km")):
        assert km.read_text() == (workdir / km.relative_to(tiny_run)).read_text()
    _same_arrays(tiny_run / pretrain.relative_to(workdir) / "model.safetensors", pretrain / "model.safetensors")


def test_hubert_iteration_2_on_layer_features(tiny_run: Path):
    """Stage 5: layer 3 of the iteration-1 model → k-means → a new HuBERT on 25 Hz labels, which
    stages 6-7 then fine-tune and score (after the tests above, which use iteration 1's outputs)."""
    r = run_recipe(tiny_run, "--stage", "5", "--iterations", "2")
    assert "stage 5: HuBERT iteration 2: layer 3 of exp/pretrain_hubert_cpu_mfcc_k20" in r.stderr
    feats = yaml.safe_load((tiny_run / "dump/layer_it2_L3/train/feats.yaml").read_text())
    assert feats["type"] == "layer" and feats["layer"] == 3 and feats["frame_rate"] == 25.0
    labels = yaml.safe_load((tiny_run / "dump/labels/it2_L3_k100/labels.yaml").read_text())
    assert labels["label_rate"] == 25.0 and labels["k"] == 100
    it2 = tiny_run / "exp/pretrain_hubert_cpu_it2_L3_k100"
    assert yaml.safe_load((it2 / "config.yaml").read_text())["model"]["label_rate"] == 25.0
    results = (tiny_run / "exp/RESULTS.md").read_text()
    assert "ctc_cpu_train_1min_from_pretrain_hubert_cpu_it2_L3_k100" in results
    # a rerun of the same iteration skips it
    r = run_recipe(tiny_run, "--stage", "5", "--stop-stage", "5", "--iterations", "2")
    assert_nothing_redone(r.stderr, {"dump/layer_it2_L3/train", "dump/layer_it2_L3/dev", "exp/kmeans_it2_L3_k100",
                                     "dump/labels/it2_L3_k100", str(it2.relative_to(tiny_run))})


def test_iterations_need_hubert(tmp_path: Path):
    r = subprocess.run(recipe_cmd(tmp_path, "--iterations", "2", "--model", "wav2vec2"), capture_output=True,
                       text=True, env=ENV, timeout=60)
    assert r.returncode != 0 and "only HuBERT iterates" in r.stderr


def test_family_facts_come_from_the_model_registry(tmp_path: Path, capsys):
    from sslseq.cli import main

    conf = ROOT / "recipes" / "conf"
    # A user's config: HuBERT's model file with another family named over it.
    own = tmp_path / "pretrain_own.yaml"
    own.write_text(f"task: pretrain\nmodel_config: {conf / 'model_hubert_tiny.yaml'}\nmodel:\n  name: w2vbert\n")
    for config, labels, ctc in ((conf / "pretrain_hubert_cpu.yaml", "true", "ctc_cpu.yaml"),
                                (conf / "pretrain_wav2vec2_cpu.yaml", "false", "ctc_cpu.yaml"),
                                (conf / "pretrain_w2vbert_cpu.yaml", "false", "ctc_w2vbert_cpu.yaml"),
                                (conf / "pretrain_dinosr_cpu.yaml", "false", "ctc_cpu.yaml"),
                                (own, "false", "ctc_w2vbert_cpu.yaml")):
        assert main(["config", "needs-labels", str(config)]) == 0
        assert capsys.readouterr().out == labels + "\n", config
        assert main(["config", "default-ctc", str(config)]) == 0
        name = capsys.readouterr().out.strip()
        assert name == ctc and (conf / name).is_file(), config


def test_config_get_reads_one_value_and_names_missing_keys(tmp_path: Path, capsys):
    from sslseq.cli import main
    from sslseq.config import get_value
    from sslseq.utils import SslseqError

    f = tmp_path / "it.yaml"
    f.write_text("iterations:\n  - layer: 3\n    k: 50\n")
    assert main(["config", "get", str(f), "iterations.0.layer"]) == 0
    assert capsys.readouterr().out == "3\n"
    assert main(["config", "get", "--default", "x.yaml", str(f), "iterations.0.pretrain_config"]) == 0
    assert capsys.readouterr().out == "x.yaml\n"
    assert main(["config", "get", str(f), "iterations.1.layer"]) == 1
    assert main(["config", "get", str(f), "iterations"]) == 1  # a list, not one value
    data = yaml.safe_load(f.read_text())
    with pytest.raises(SslseqError, match=r"list of 1 items; '1' is not an index 0\.\.0"):
        get_value(data, "iterations.1.layer", where=str(f))
    with pytest.raises(SslseqError, match="'layr' is not among layer, k"):
        get_value(data, "iterations.0.layr", where=str(f))


def test_pretraining_with_two_processes_through_torchrun(tiny_run: Path, tmp_path: Path):
    """--ngpu 2 --device cpu: stage 4 runs `sslseq train` under torchrun (2 gloo processes)."""
    workdir = tmp_path / "ddp"
    workdir.mkdir()
    for d in ("corpus", "data", "dump"):
        shutil.copytree(tiny_run / d, workdir / d, symlinks=True)
    for km in tiny_run.glob("exp/kmeans_*"):
        shutil.copytree(km, workdir / km.relative_to(tiny_run), symlinks=True)
    run_recipe(workdir, "--stage", "4", "--stop-stage", "4", "--ngpu", "2", "--device", "cpu", "--pretrain-steps", "6")
    summary = yaml.safe_load((workdir / "exp/pretrain_hubert_cpu_mfcc_k20/train_summary.yaml").read_text())
    assert summary["processes"] == 2 and summary["steps"] == 6


def test_bpe_units_fine_tune_decode_and_lm(tiny_run: Path, tmp_path: Path):
    """--units bpe40: stage 1 learns 40 SentencePiece pieces from the train transcripts and spells
    the LM's lexicon in them; stage 6 fine-tunes CTC on them (the exp dir carries bpe.model);
    stage 7 decodes greedily and with the LM. The character runs are left as they were."""
    work = tmp_path / "w"
    pretrain = "exp/pretrain_hubert_cpu_mfcc_k20"
    for part in ("data", pretrain):
        shutil.copytree(tiny_run / part, work / part, symlinks=True, ignore=shutil.ignore_patterns("checkpoints"))
    run_recipe(work, "--stage", "1", "--stop-stage", "1", "--units", "bpe40")
    lang = work / "data" / "lang_bpe40"
    assert (lang / "bpe.model").is_file() and len((lang / "units.txt").read_text().split()) == 42
    lexicon = (work / "data" / "lm_bpe40" / "lexicon.txt").read_text().splitlines()
    assert any(len(line.split()) < len(line.split()[0]) + 2 for line in lexicon)  # some word in fewer pieces than letters
    run_recipe(work, "--stage", "6", "--stop-stage", "7", "--units", "bpe40")
    for init in (f"from_{Path(pretrain).name}", "scratch"):
        exp = work / "exp" / f"ctc_cpu_bpe40_train_1min_{init}"
        assert (exp / "bpe.model").read_bytes() == (lang / "bpe.model").read_bytes()
        cfg = yaml.safe_load((exp / "config.yaml").read_text())
        assert cfg["data"]["units"] == "data/lang_bpe40/bpe.model" and cfg["model"]["vocab_size"] == 42
        for s in ("dev", "test"):
            for d in (exp / f"decode_{s}", exp / f"decode_{s}" / "lm"):
                wer = yaml.safe_load((d / "wer.yaml").read_text())
                assert wer["n_utts"] == 6 and 0 <= wer["wer"] <= 200, d
    assert "bpe40" in (work / "exp" / "RESULTS.md").read_text()
    again = run_recipe(work, "--stage", "1", "--stop-stage", "1", "--units", "bpe40")
    assert_nothing_redone(again.stderr, {"data/train_1min", "data/lang_bpe40", "data/lm_bpe40"})
    again = run_recipe(work, "--stage", "6", "--stop-stage", "7", "--units", "bpe40")
    assert_nothing_redone(again.stderr, markers(work, "exp/ctc_cpu_bpe40_train_1min_from_pretrain_hubert_cpu_mfcc_k20",
                                                "exp/ctc_cpu_bpe40_train_1min_scratch"))
