"""LibriSpeech + Libri-light data preparation on a small fake tree (tests/librispeech_fake.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import soundfile as sf

from librispeech_fake import make_fake_librispeech
from sslseq.data.kaldi import check_data_dir, load_data_dir
from sslseq.data.librispeech import prepare_librispeech
from sslseq.utils import SslseqError

EXPECTED = ["train_clean_100", "dev_clean", "dev_other", "test_clean", "test_other",
            "librilight_10min", "librilight_1h", "librilight_10h"]


@pytest.fixture(scope="module")
def fake_tree(tiny_corpus: Path, tmp_path_factory) -> Path:
    return make_fake_librispeech(tiny_corpus, tmp_path_factory.mktemp("fake_librispeech"))


@pytest.fixture
def tree(fake_tree: Path, tmp_path: Path) -> Path:
    """A copy to damage."""
    return Path(shutil.copytree(fake_tree, tmp_path / "corpus"))


def test_prepare(fake_tree: Path, tmp_path: Path):
    written = prepare_librispeech(fake_tree, tmp_path / "data")
    assert written == EXPECTED
    for name in written:
        d = load_data_dir(tmp_path / "data" / name)
        assert not check_data_dir(d.path).problems, name
        for utt in d.utts[:3]:
            assert d.wav[utt].endswith(f"/{utt}.flac") and Path(d.wav[utt]).is_file()
            info = sf.info(d.wav[utt])
            assert d.utt2dur[utt] == pytest.approx(info.frames / info.samplerate, abs=1e-3)
            assert d.utt2spk[utt] == utt.split("-")[0]
            assert d.text[utt] and d.text[utt] == d.text[utt].upper()
    ten_min = load_data_dir(tmp_path / "data" / "librilight_10min")
    one_h = load_data_dir(tmp_path / "data" / "librilight_1h")
    ten_h = load_data_dir(tmp_path / "data" / "librilight_10h")
    # nested as Libri-light's: fold 0 in 1h, 1h in 10h; all of them are train utterances
    assert set(ten_min.utts) < set(one_h.utts) < set(ten_h.utts)
    assert set(ten_h.utts) <= set(load_data_dir(tmp_path / "data" / "train_clean_100").utts)
    assert (tmp_path / "data" / "labeled_subsets").read_text().split("\n")[:4] == [
        "10min librilight_10min", "1h librilight_1h", "10h librilight_10h", "100h train_clean_100"]


def test_missing_sets_named(tree: Path, tmp_path: Path):
    shutil.rmtree(tree / "LibriSpeech" / "dev-other")
    with pytest.raises(SslseqError) as e:
        prepare_librispeech(tree, tmp_path / "data", train_set="train-960")
    msg = str(e.value)
    assert "missing train-clean-360, train-other-500, dev-other" in msg
    assert "found: dev-clean, test-clean, test-other, train-clean-100" in msg
    assert not (tmp_path / "data").exists()  # nothing written before the layout is known to be complete


def test_missing_fold_named(tree: Path, tmp_path: Path):
    shutil.rmtree(tree / "librispeech_finetuning" / "1h" / "3" / "other")
    with pytest.raises(SslseqError, match=r"librispeech_finetuning: missing 1h/3/other"):
        prepare_librispeech(tree, tmp_path / "data")
    prepare_librispeech(tree, tmp_path / "data", finetune=False)  # not needed: not asked for


def test_transcript_lacks_utterance(tree: Path, tmp_path: Path):
    trans = sorted((tree / "LibriSpeech" / "dev-clean").glob("*/*/*.trans.txt"))[0]
    lines = trans.read_text().splitlines(keepends=True)
    dropped = lines[1].split()[0]
    trans.write_text(lines[0] + "".join(lines[2:]))
    with pytest.raises(SslseqError) as e:
        prepare_librispeech(tree, tmp_path / "data")
    assert f"{trans}: lacks utterance {dropped}" in str(e.value)


def test_unreadable_flac_named(tree: Path, tmp_path: Path):
    flacs = sorted((tree / "LibriSpeech" / "train-clean-100").glob("*/*/*.flac"))
    flacs[0].write_bytes(b"fLaC not really")
    flacs[5].write_bytes(b"")
    with pytest.raises(SslseqError) as e:
        prepare_librispeech(tree, tmp_path / "data")
    msg = str(e.value)
    assert flacs[0].stem in msg and flacs[5].stem in msg  # every bad file, at once
    assert "re-extract or re-download" in msg


def test_characters_outside_units(fake_tree: Path, tmp_path: Path):
    prepare_librispeech(fake_tree, tmp_path / "data")
    text = tmp_path / "data" / "dev_clean" / "text"
    lines = text.read_text().splitlines()
    utt = lines[0].split()[0]
    text.write_text("\n".join([f"{utt} CAFÉ AU LAIT"] + lines[1:]) + "\n")
    problems = check_data_dir(tmp_path / "data" / "dev_clean").problems
    assert any(utt in p and "É" in p for p in problems), problems


def test_unknown_train_set(fake_tree: Path, tmp_path: Path):
    with pytest.raises(SslseqError, match="unknown LibriSpeech set 'train-clean-50'.*train-960"):
        prepare_librispeech(fake_tree, tmp_path / "data", train_set="train-clean-50")


RUN = Path(__file__).resolve().parents[1] / "egs" / "librispeech" / "run.sh"


def _run(*args: str):
    import os
    import subprocess

    return subprocess.run(["bash", str(RUN), *args], capture_output=True, text=True, timeout=1200,
                          env={**os.environ, "SSLSEQ_NO_PROGRESS": "1"})


def test_recipe_tiny_end_to_end(fake_tree: Path, tmp_path: Path):
    """egs/librispeech/run.sh --tiny true on the fake tree: prepares the sets, fine-tunes on
    Libri-light's 10min fold (not a drawn subset), decodes the four sets greedily and with the LM."""
    import yaml

    work = tmp_path / "work"
    r = _run("--corpus-dir", str(fake_tree), "--tiny", "true", "--workdir", str(work))
    assert r.returncode == 0, r.stderr[-6000:]
    for exp in ("ctc_cpu_train_clean_100_10min_scratch", "ctc_cpu_train_clean_100_10min_from_pretrain_hubert_cpu_mfcc_k20"):
        cfg = yaml.safe_load((work / "exp" / exp / "config.yaml").read_text())
        assert cfg["data"]["train"] == "data/librilight_10min"
        for s in ("dev_clean", "dev_other", "test_clean", "test_other"):
            wer = yaml.safe_load((work / "exp" / exp / f"decode_{s}" / "lm" / "wer.yaml").read_text())
            assert wer["n_utts"] == 3 and 0 <= wer["wer"] <= 200
    results = (work / "exp" / "RESULTS.md").read_text()
    assert all(s in results for s in ("dev_other", "test_clean", "test_other"))
    assert not (work / "data" / "train_clean_100_10min").exists()  # nothing drawn
    # another corpus copy is another stage-0 input: stage 0 is redone (corpus options are in its marker)
    copy = Path(shutil.copytree(fake_tree, tmp_path / "copy"))
    r = _run("--corpus-dir", str(copy), "--tiny", "true", "--workdir", str(work), "--stop-stage", "1")
    assert r.returncode == 0, r.stderr[-4000:]
    assert "options changed for data" in r.stderr
    assert str(copy) in (work / "data" / "dev_clean" / "wav.scp").read_text()


def test_recipe_bad_options(fake_tree: Path, tmp_path: Path):
    r = _run("--tiny", "true", "--workdir", str(tmp_path / "w"))
    assert r.returncode != 0 and "--corpus-dir DIR is needed" in r.stderr
    r = _run("--corpus-dir", str(fake_tree), "--pretrain-set", "train-clean-50", "--workdir", str(tmp_path / "w"))
    assert r.returncode != 0 and "--pretrain-set 'train-clean-50'" in r.stderr
    r = _run("--corpus-dir", str(tmp_path / "nowhere"), "--workdir", str(tmp_path / "w"))
    assert r.returncode != 0 and "not a directory" in r.stderr
    assert not (tmp_path / "w").exists()


def test_lm_dir_from_a_given_arpa(fake_tree: Path, tmp_path: Path):
    """--lm-arpa (LibriSpeech's 4-gram.arpa): the LM dir takes the ARPA as it is, its order from its header."""
    from sslseq.lm.corpus import source_lines, write_lm_text
    from sslseq.lm.ngram import build_lm, load_lm_dir

    data = tmp_path / "data"
    prepare_librispeech(fake_tree, data)
    write_lm_text(source_lines([data / "train_clean_100"]), tmp_path / "lm.txt", [data / "dev_clean", data / "test_clean"])
    trained = build_lm(tmp_path / "lm.txt", tmp_path / "lm4", order=4)
    given = build_lm(tmp_path / "lm.txt", tmp_path / "given", order=2, arpa=tmp_path / "lm4" / "lm.arpa",
                     dev_text=data / "dev_clean")
    assert given["order"] == 4 and given["ngrams"] == trained["ngrams"] and given["vocab"] == trained["vocab"]
    assert (tmp_path / "given" / "lm.arpa").read_bytes() == (tmp_path / "lm4" / "lm.arpa").read_bytes()
    assert load_lm_dir(tmp_path / "given").lexicon
    (tmp_path / "bad.arpa").write_text("not an arpa\n")
    with pytest.raises(SslseqError, match="not an ARPA file"):
        build_lm(tmp_path / "lm.txt", tmp_path / "bad", arpa=tmp_path / "bad.arpa")


# ---------------------------------------------------------------- Mini LibriSpeech (egs/mini_librispeech)
MINI_RUN = Path(__file__).resolve().parents[1] / "egs" / "mini_librispeech" / "run.sh"


@pytest.fixture(scope="module")
def mini_tree(tiny_corpus: Path, tmp_path_factory) -> Path:
    return make_fake_librispeech(tiny_corpus, tmp_path_factory.mktemp("fake_mini"), mini=True)


def test_prepare_mini(mini_tree: Path, tmp_path: Path):
    written = prepare_librispeech(mini_tree, tmp_path / "data", train_set="train-clean-5",
                                  eval_sets=("dev-clean-2", "test-clean"), finetune=False)
    assert written == ["train_clean_5", "dev_clean_2", "test_clean"]
    for name in written:
        assert not check_data_dir(tmp_path / "data" / name).problems, name
    assert (tmp_path / "data" / "labeled_subsets").read_text() == ""  # the recipe draws its subsets
    with pytest.raises(SslseqError, match=r"missing dev-clean, dev-other, test-other \(found: dev-clean-2, test-clean, train-clean-5\)"):
        prepare_librispeech(mini_tree, tmp_path / "other", train_set="train-clean-5", finetune=False)


def test_mini_recipe_tiny_end_to_end(mini_tree: Path, tmp_path: Path):
    """egs/mini_librispeech/run.sh --tiny true: train-clean-5 pretrains, a drawn 1min subset of it
    fine-tunes, dev-clean-2 tunes the LM, dev-clean-2 and test-clean are scored."""
    import os
    import subprocess

    import yaml

    work = tmp_path / "work"
    r = subprocess.run(["bash", str(MINI_RUN), "--corpus-dir", str(mini_tree), "--tiny", "true", "--workdir", str(work)],
                       capture_output=True, text=True, timeout=1200, env={**os.environ, "SSLSEQ_NO_PROGRESS": "1"})
    assert r.returncode == 0, r.stderr[-6000:]
    exp = work / "exp" / "ctc_cpu_train_clean_5_1min_from_pretrain_hubert_cpu_mfcc_k20"
    cfg = yaml.safe_load((exp / "config.yaml").read_text())
    assert cfg["data"]["train"] == "data/train_clean_5_1min" and cfg["data"]["valid"] == "data/dev_clean_2"
    for s in ("dev_clean_2", "test_clean"):
        wer = yaml.safe_load((exp / f"decode_{s}" / "lm" / "wer.yaml").read_text())
        assert wer["n_utts"] > 0 and 0 <= wer["wer"] <= 200
    assert (work / "data" / "train_clean_5_1min").is_dir()


@pytest.mark.parametrize("config", ["pretrain_hubert_1gpu", "ctc_1gpu"])
def test_mini_one_gpu_configs_build(config: str):
    from sslseq.models import build_model
    from sslseq.train.config import check_train_config, resolve_train_config

    path = MINI_RUN.parent / "conf" / f"{config}.yaml"
    cfg = resolve_train_config(path, ["out_dir=x", "data.train=d", "data.labels_train=l.km", "init=none"])
    check_train_config(cfg, where=str(path))
    model = dict(cfg.model, name=cfg.model.get("name", "ctc"))
    model.update(num_classes=100) if cfg.task == "pretrain" else model.update(vocab_size=30)
    n = sum(p.numel() for p in build_model(model).parameters())
    assert 25e6 < n < 30e6  # the size its comment states
