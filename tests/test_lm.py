"""Word n-gram LM decoding (sslseq.lm, sslseq.asr.{emissions,lm_decode,lm_tune}): small synthetic inputs, seconds."""

from __future__ import annotations

import builtins
import io
import math
import os
from pathlib import Path

import numpy as np
import pytest
import yaml

from sslseq.data.text import DEFAULT_UNITS, CharTokenizer
from sslseq.utils import SslseqError

TOK = CharTokenizer(DEFAULT_UNITS)
ID = {u: i for i, u in enumerate(TOK.units)}


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    monkeypatch.setenv("SSLSEQ_NO_PROGRESS", "1")


def _build(tmp_path: Path, lines: list[str], name: str = "lm", order: int = 2) -> Path:
    from sslseq.lm.ngram import build_lm

    text = tmp_path / f"{name}.txt"
    text.write_text("".join(f"{x}\n" for x in lines))
    build_lm(text, tmp_path / name, order=order)
    return tmp_path / name


def _read_arpa(path: Path) -> tuple[dict[tuple, float], dict[tuple, float]]:
    """ngram -> log10 prob, ngram -> log10 back-off weight."""
    probs, bows = {}, {}
    section = 0
    for line in path.read_text().splitlines():
        if line.startswith("\\") and line.endswith("-grams:"):
            section = int(line[1])
            continue
        if section and line and not line.startswith("\\"):
            f = line.split("\t")
            ng = tuple(f[1].split())
            probs[ng] = float(f[0])
            if len(f) > 2:
                bows[ng] = float(f[2])
    return probs, bows


def _p(probs, bows, hist: tuple, w: str) -> float:
    """P(w | hist) of a back-off ARPA (not log)."""
    if hist + (w,) in probs:
        return 10 ** probs[hist + (w,)]
    if not hist:
        return 0.0
    return 10 ** bows.get(hist, 0.0) * _p(probs, bows, hist[1:], w)


# ---------------------------------------------------------------- the ARPA


def test_arpa_is_back_off_kneser_ney_by_hand(tmp_path):
    """Order 2 on "A B / A B / B", every number by hand (SRILM -ukndiscount, as kaldingram documents):
    bigram counts <s>A 2, AB 2, B</s> 3, <s>B 1 -> n1 = 1, n2 = 2, D = 1 / (1 + 2*2) = 0.2.
    Unigrams by continuation count (distinct left words): A 1, B 2, </s> 1 of 4, undiscounted.
    f(A|<s>) = 1.8/3, f(B|<s>) = 0.8/3, f(B|A) = 1.8/2, f(</s>|B) = 2.8/3;
    bow(<s>) = (1 - 2.6/3) / (1 - 1/4 - 2/4), bow(A) = 0.1 / (1 - 2/4), bow(B) = (0.2/3) / (1 - 1/4)."""
    lm = _build(tmp_path, ["A B", "A B", "B"])
    probs, bows = _read_arpa(lm / "lm.arpa")
    expect = {("A",): 1 / 4, ("B",): 2 / 4, ("</s>",): 1 / 4, ("<s>", "A"): 1.8 / 3, ("<s>", "B"): 0.8 / 3,
              ("A", "B"): 0.9, ("B", "</s>"): 2.8 / 3}
    for ng, p in expect.items():
        assert probs[ng] == pytest.approx(math.log10(p), abs=1e-6), ng
    for h, b in {("<s>",): (0.4 / 3) / 0.25, ("A",): 0.2, ("B",): (0.2 / 3) / 0.75}.items():
        assert bows[h] == pytest.approx(math.log10(b), abs=1e-6), h
    # P(</s> | A) backs off: bow(A) * f(</s>) = 0.2 * 0.25
    assert _p(probs, bows, ("A",), "</s>") == pytest.approx(0.05, abs=1e-6)
    info = yaml.safe_load((lm / "lm.yaml").read_text())
    assert info["order"] == 2 and info["vocab"] == 2 and info["ngrams"] == {1: 4, 2: 4}


def test_arpa_distributions_sum_to_one(tmp_path):
    """Order 3: P(. | h) over the vocabulary and </s> sums to 1 for every history the model has,
    and for histories it never saw (pure back-off)."""
    lines = ["THE LORD SAID UNTO MOSES", "AND THE LORD SPAKE UNTO MOSES SAYING", "THE LORD IS MY SHEPHERD",
             "AND MOSES SAID UNTO THE LORD", "I SHALL NOT WANT", "THE LORD SAID", "AND GOD SAID"]
    lm = _build(tmp_path, lines, order=3)
    probs, bows = _read_arpa(lm / "lm.arpa")
    vocab = sorted({w for x in lines for w in x.split()}) + ["</s>"]
    histories = {ng[:-1] for ng in probs if len(ng) > 1} | set(bows) | {(), ("MOSES", "SHEPHERD"), ("WANT",)}
    for h in histories:
        if h and h[-1] == "</s>":
            continue
        total = sum(_p(probs, bows, h, w) for w in vocab)
        assert total == pytest.approx(1.0, abs=1e-5), h


def test_lexicon_spells_every_lm_word_with_the_separator(tmp_path):
    from sslseq.lm.ngram import arpa_vocab, load_lm_dir

    lm = _build(tmp_path, ["IN THE BEGINNING", "DON'T FEAR", "THE END"])
    d = load_lm_dir(lm)
    assert set(d.lexicon) == set(arpa_vocab(lm / "lm.arpa")) == {"IN", "THE", "BEGINNING", "DON'T", "FEAR", "END"}
    assert d.lexicon["DON'T"] == ["D", "O", "N", "'", "T", "|"]
    assert all(sp[-1] == "|" and all(u in TOK.units for u in sp) for sp in d.lexicon.values())


def test_unspellable_word_and_missing_lm_dir_are_clear_errors(tmp_path):
    from sslseq.lm.ngram import build_lm, load_lm_dir

    text = tmp_path / "t.txt"
    text.write_text("GOOD TEXT\nA CAFÉ HERE\n")
    with pytest.raises(SslseqError, match=r"t\.txt:2: word 'CAFÉ' cannot be spelled .*no unit for É"):
        build_lm(text, tmp_path / "lm")
    with pytest.raises(SslseqError, match=r"nope: LM dir not found; build it with 'sslseq lm build"):
        load_lm_dir(tmp_path / "nope")
    (tmp_path / "half").mkdir()
    with pytest.raises(SslseqError, match=r"half/lm\.yaml: not found, so .* not a complete LM dir"):
        load_lm_dir(tmp_path / "half")
    lm = _build(tmp_path, ["A B"], name="ok")
    (lm / "lexicon.txt").write_text("A A |\n")  # not the file lm.yaml describes
    with pytest.raises(SslseqError, match=r"lexicon\.txt: missing or not the file"):
        load_lm_dir(lm)
    with pytest.raises(SslseqError, match="order must be 1..5"):
        build_lm(text, tmp_path / "lm", order=7)


def test_perplexity_counts_oovs_and_leaves_them_out(tmp_path):
    from sslseq.lm.ngram import perplexity

    lm = _build(tmp_path, ["A B", "A B", "B"])
    text = tmp_path / "text"
    text.write_text("u1 A B\nu2 A ZED B\n")
    r = perplexity(lm, text)
    assert (r["sentences"], r["words"], r["oov"]) == (2, 5, 1)
    # u1: <s> A B </s> = 0.6 * 0.9 * (2.8/3); u2: the OOV resets the context: A, then B, </s> without <s> A.
    p_b = 0.5  # unigram B (no context after the OOV)
    expect = math.log10(0.6 * 0.9 * 2.8 / 3) + math.log10(0.6) + math.log10(p_b) + math.log10(2.8 / 3)
    assert r["logprob10"] == pytest.approx(expect, abs=1e-3)
    assert r["ppl"] == pytest.approx(10 ** (-expect / 6), rel=1e-3)  # 4 in-vocabulary words + 2 </s>


# ---------------------------------------------------------------- LM text without dev/test


def _text_dir(path: Path, sentences: dict[str, str]) -> Path:
    path.mkdir(parents=True)
    (path / "text").write_text("".join(f"{u} {t}\n" for u, t in sentences.items()))
    (path / "wav.scp").write_text("".join(f"{u} /audio/{path.name}/{u}.wav\n" for u in sentences))
    return path


def test_lm_text_excludes_dev_and_test_sentences_and_check_overlap_fails_loudly(tmp_path):
    from sslseq.lm.corpus import check_overlap, write_lm_text

    dev = _text_dir(tmp_path / "dev", {"d1": "AND GOD SAW THE LIGHT", "d2": "AMEN"})
    test = _text_dir(tmp_path / "test", {"t1": "IN THE BEGINNING GOD CREATED"})
    source = ["And God saw the light,", "IN THE BEGINNING GOD CREATED THE HEAVEN", "amen", "AMEN SO BE IT",
              "THE LIGHT WAS GOOD", "AND GOD SAW"]
    out = tmp_path / "lm" / "text"
    info = write_lm_text(source, out, [dev, test])
    # equal lines go (1 and 3), a line containing a 4+ word sentence goes (2); "AMEN" is short, so
    # only a whole line of it counts; a part of a sentence ("AND GOD SAW") is not the sentence.
    assert out.read_text().splitlines() == ["AMEN SO BE IT", "THE LIGHT WAS GOOD", "AND GOD SAW"]
    assert (info["excluded_lines"], info["excluded_equal"], info["eval_sentences_found"]) == (3, 2, 3)
    assert yaml.safe_load((tmp_path / "lm" / "text.yaml").read_text())["excluded_lines"] == 3
    assert check_overlap(out, [dev, test]) == 3

    with open(out, "a") as f:
        f.write("SO AND GOD SAW THE LIGHT THAT IT WAS GOOD\n")
    with pytest.raises(SslseqError, match=r"text:4 holds .*dev/text:1 \('AND GOD SAW THE LIGHT'\)"):
        check_overlap(out, [dev, test])


def test_check_overlap_cli_exit_code(tmp_path, capsys):
    from sslseq.cli import main

    dev = _text_dir(tmp_path / "dev", {"d1": "AND GOD SAW THE LIGHT"})
    lm_text = tmp_path / "lm.txt"
    lm_text.write_text("THE LIGHT WAS GOOD\n")
    assert main(["lm", "check-overlap", str(lm_text), str(dev)]) == 0
    lm_text.write_text("THE LIGHT WAS GOOD\nAND GOD SAW THE LIGHT\n")
    assert main(["lm", "check-overlap", str(lm_text), str(dev)]) == 1


# ---------------------------------------------------------------- the lexicon beam search


def _emissions(units: list, rng=None, peak: float = 8.0) -> np.ndarray:
    """(T, V) log-probs: each entry of ``units`` is a unit or a {unit: prob} tie, after noise."""
    rng = rng or np.random.default_rng(0)
    T, V = len(units), len(TOK)
    logits = rng.normal(scale=0.5, size=(T, V))
    for t, u in enumerate(units):
        if isinstance(u, dict):
            logits[t] = -30.0
            for k, p in u.items():
                logits[t, ID[k]] = math.log(p)
        else:
            logits[t, ID[u]] += peak
    logits -= np.log(np.exp(logits).sum(-1, keepdims=True))
    return logits.astype(np.float32)


def _frames(text: str) -> list:
    """A CTC path of ``text``: each unit twice, a blank after each unit (so doubles stay apart)."""
    out = ["<blank>"]
    for c in text.replace(" ", "|"):
        out += [c, c, "<blank>"]
    return out


def test_lm_weight_zero_gives_the_greedy_words(tmp_path):
    from sslseq.asr.ctc_decode import greedy_decode
    from sslseq.asr.lm_decode import LexiconSearch, LmParams

    lm = _build(tmp_path, ["THE CAT SAT ON THE MAT", "A DOG SAT", "THE DOG ATE THE CAT", "ON A MAT"], order=3)
    search = LexiconSearch(lm, TOK)
    dec = search.decoder(LmParams(lm_weight=0.0, word_score=0.0))
    rng = np.random.default_rng(1)
    for sentence in ["THE DOG SAT ON A MAT", "A CAT ATE THE DOG", "MAT"]:
        em = _emissions(_frames(sentence), rng)
        greedy = TOK.decode(greedy_decode(em[None])[0])
        assert greedy == sentence
        assert " ".join(search.decode(dec, em)) == greedy


def test_the_lm_picks_the_word_it_prefers_between_acoustic_twins(tmp_path):
    """"THE CA? SAT" with T and R equally likely: the LM decides, whichever way it was trained."""
    from sslseq.asr.lm_decode import LexiconSearch, LmParams

    frames = _frames("THE CA")[:-1] + [{"T": 0.5, "R": 0.5}, {"T": 0.5, "R": 0.5}, "<blank>"] + _frames(" SAT")[1:]
    em = _emissions(frames, np.random.default_rng(2), peak=12.0)
    for likes, other in (("CAT", "CAR"), ("CAR", "CAT")):
        lm = _build(tmp_path, [f"THE {likes} SAT"] * 5 + [f"THE {other} SAT"], name=f"lm_{likes}")
        search = LexiconSearch(lm, TOK)
        assert search.decode(search.decoder(LmParams(lm_weight=2.0)), em) == ["THE", likes, "SAT"]


def test_lexicon_units_must_be_the_models(tmp_path):
    from sslseq.asr.lm_decode import LexiconSearch

    lm = _build(tmp_path, ["DON'T GO"])
    no_apostrophe = CharTokenizer([u for u in DEFAULT_UNITS if u != "'"])
    with pytest.raises(SslseqError, match=r"lexicon\.txt: DON'T is spelled with \[\"'\"\], which units\.txt does not have"):
        LexiconSearch(lm, no_apostrophe)


# ---------------------------------------------------------------- the emissions cache, decode --lm, tune


class _PathModel:
    """A CTC "model" that reads its output from the audio: sample value / 100 of each 160-sample
    frame is the unit id with probability ~1, except value 99: R 0.55, T 0.45, so that greedy
    (and the lexicon alone) says CAR where the reference and the LM say CAT."""

    def __init__(self):
        self.calls = 0

    def to(self, dev):
        return self

    def eval(self):
        return self

    def log_probs(self, wav, wav_lens):
        import torch

        self.calls += 1
        B, S = wav.shape
        frames = wav[:, : S // 160 * 160].reshape(B, S // 160, 160).mean(-1)
        ids = torch.round(frames * 100).long()
        logits = torch.nn.functional.one_hot(ids.clamp(0, len(TOK) - 1), len(TOK)).float() * 20
        tie = ids == 99
        logits[tie] = -30.0
        logits[..., ID["T"]] = torch.where(tie, math.log(0.45), logits[..., ID["T"]])
        logits[..., ID["R"]] = torch.where(tie, math.log(0.55), logits[..., ID["R"]])
        return torch.log_softmax(logits, -1), wav_lens // 160


def _data_dir(path: Path, texts: dict[str, str]) -> Path:
    """Audio that ``_PathModel`` reads back as ``texts``; '?' is the T/R near-tie (reference: T)."""
    import soundfile as sf

    from sslseq.data.kaldi import write_data_dir

    wav, dur = {}, {}
    for u, t in texts.items():
        frames = [0]
        for c in t.replace(" ", "|"):
            i = 99 if c == "?" else ID[c]
            frames += [i, i, 0]
        x = np.repeat(np.array(frames + [0] * 3, dtype=np.float32) / 100, 160)
        p = path.parent / "wav" / path.name / f"{u}.wav"
        p.parent.mkdir(parents=True, exist_ok=True)
        sf.write(p, x, 16000, subtype="FLOAT")
        wav[u], dur[u] = str(p), len(x) / 16000
    write_data_dir(path, wav=wav, text={u: t.replace("?", "T") for u, t in texts.items()},
                   utt2spk={u: u.split("-")[0] for u in texts}, utt2dur=dur)
    return path


@pytest.fixture
def ctc_exp(tmp_path, monkeypatch):
    import sslseq.models

    exp = tmp_path / "exp" / "ctc"
    exp.mkdir(parents=True)
    TOK.save(exp / "units.txt")
    (exp / "model.safetensors").write_bytes(b"v1")
    model = _PathModel()
    monkeypatch.setattr(sslseq.models, "load", lambda exp_dir: model, raising=False)
    return exp, model


DEV = {"s1-a": "THE CA? SAT", "s1-b": "A CA? ATE", "s2-a": "THE DOG SAT"}
TEST = {"s3-a": "THE CA? ATE", "s3-b": "A DOG SAT"}
LM_TEXT = ["THE CAT SAT", "THE CAT ATE", "A CAT SAT", "A CAT ATE", "THE DOG SAT", "A CAR"]


def test_emissions_are_cached_reused_and_invalidated_by_a_new_model(tmp_path, ctc_exp):
    from sslseq.asr import emissions as em
    from sslseq.asr.decode import decode_data_dir

    exp, model = ctc_exp
    data = _data_dir(tmp_path / "data" / "dev", DEV)
    out = tmp_path / "decode_dev"
    decode_data_dir(exp, data, out)
    assert model.calls > 0
    hyp = (out / "hyp.txt").read_text()
    cached = em.load(out, exp, data)
    assert sorted(cached) == sorted(DEV) and cached["s2-a"].shape == (len("THE|DOG|SAT") * 3 + 4, len(TOK))

    calls = model.calls
    decode_data_dir(exp, data, out)  # same model and data: the network is not run again
    lm = _build(tmp_path, LM_TEXT)
    decode_data_dir(exp, data, out, lm_dir=lm)  # nor for the LM search
    assert model.calls == calls and (out / "hyp.txt").read_text() == hyp
    assert (out / "lm" / "hyp.txt").is_file() and (out / "lm" / "wer").read_text().startswith("%WER")

    os.utime(exp / "model.safetensors", ns=(1, 1))  # a retrained model (new mtime)
    with pytest.raises(SslseqError, match="emissions are of another model or data dir"):
        em.load(out, exp, data)
    decode_data_dir(exp, data, out)
    assert model.calls > calls
    assert em.load(out, exp, data).keys() == cached.keys()


def test_decode_with_lm_writes_lm_results_beside_greedy_and_results_shows_both(tmp_path, ctc_exp):
    from sslseq.asr.decode import decode_data_dir
    from sslseq.asr.lm_decode import LmParams
    from sslseq.asr.report import write_results

    exp, _ = ctc_exp
    (exp / "config.yaml").write_text(yaml.safe_dump({"init": "none", "model": {"name": "ctc"}}))
    data = _data_dir(tmp_path / "data" / "dev", DEV)
    out = exp / "decode_dev"
    lm = _build(tmp_path, LM_TEXT)
    greedy = decode_data_dir(exp, data, out, lm_dir=lm, lm_params=LmParams(lm_weight=2.0, word_score=0.0, beam_size=20))
    lm_wer = yaml.safe_load((out / "lm" / "wer.yaml").read_text())
    assert lm_wer["wer"] == 0.0 and greedy.wer > 0  # the LM resolves every CAT/CAR near-tie; greedy says CAR
    info = yaml.safe_load((out / "lm" / "decode.yaml").read_text())
    assert info["params"]["lm_weight"] == 2.0 and info["lm_order"] == 2 and info["search_seconds"] >= 0
    md = write_results([out], exp.parent / "RESULTS.md")
    assert "| LM WER % | LM CER % | LM weight / word score |" in md
    assert f"| dev | {greedy.wer:.2f} | {greedy.cer:.2f} | 0.00 | 0.00 | 2 / 0 |" in md


def test_tune_picks_the_dev_best_point_and_never_reads_test(tmp_path, ctc_exp, monkeypatch):
    from sslseq.asr.decode import decode_data_dir
    from sslseq.asr.lm_tune import tune_lm

    exp, _ = ctc_exp
    dev = _data_dir(tmp_path / "data" / "dev", DEV)
    test = _data_dir(tmp_path / "data" / "test", TEST)
    lm = _build(tmp_path, LM_TEXT)
    out = tmp_path / "decode_dev"
    decode_data_dir(exp, dev, out)

    opened: list[str] = []
    real_open = builtins.open

    def spy(file, *a, **k):
        opened.append(str(file))
        return real_open(file, *a, **k)

    with monkeypatch.context() as m:
        m.setattr(builtins, "open", spy)
        m.setattr(io, "open", spy)
        info = tune_lm(out, lm, lm_weights=[0.0, 2.0], word_scores=[0.0, 1.0], beam_size=20)
    assert [p for p in opened if str(test) in p] == [str(test / "wav.scp")]  # ids only: overlap check
    rows = [line.split("\t") for line in (out / "lm_tune" / "grid.tsv").read_text().splitlines()[1:]]
    assert len(rows) == 4
    best = min(rows, key=lambda r: (float(r[2]), float(r[3]), float(r[0]), float(r[1])))
    assert [r[-1] for r in rows].count("*") == 1 and best[-1] == "*"
    assert (info["params"]["lm_weight"], info["params"]["word_score"]) == (float(best[0]), float(best[1]))
    assert info["params"]["lm_weight"] == 2.0 and info["dev_wer"] == 0.0
    assert float(rows[0][2]) > 0  # lm_weight 0: the lexicon alone keeps CAR    assert yaml.safe_load((out / "lm_tune" / "params.yaml").read_text()) == info
    assert str(test) in info["held_out_checked"][0]

    # the tuned parameters decode test once (from its own cache)
    from sslseq.asr.lm_decode import LmParams

    test_out = tmp_path / "decode_test"
    decode_data_dir(exp, test, test_out, lm_dir=lm, lm_params=LmParams.from_yaml(out / "lm_tune" / "params.yaml"))
    assert yaml.safe_load((test_out / "lm" / "wer.yaml").read_text())["wer"] == 0.0


def test_tune_refuses_test_sets_unless_forced(tmp_path, ctc_exp):
    from sslseq.asr.decode import decode_data_dir
    from sslseq.asr.lm_tune import tune_lm

    exp, _ = ctc_exp
    lm = _build(tmp_path, LM_TEXT)
    test = _data_dir(tmp_path / "data" / "test", TEST)
    decode_data_dir(exp, test, tmp_path / "decode_test")
    with pytest.raises(SslseqError, match="refusing to tune LM weights on a test set"):
        tune_lm(tmp_path / "decode_test", lm, lm_weights=[1.0], word_scores=[0.0])
    info = tune_lm(tmp_path / "decode_test", lm, lm_weights=[1.0], word_scores=[0.0], force=True)
    assert info["points"] == 1

    # a "dev" set that shares utterances with test
    leaky = _data_dir(tmp_path / "data" / "dev", {**DEV, "s3-a": TEST["s3-a"]})
    decode_data_dir(exp, leaky, tmp_path / "decode_dev")
    with pytest.raises(SslseqError, match=r"shares 1 utterance\(s\) with the held-out set .*test \(e\.g\. s3-a\)"):
        tune_lm(tmp_path / "decode_dev", lm, lm_weights=[1.0], word_scores=[0.0])
    with pytest.raises(SslseqError, match="no emissions cache|decode.yaml: not found"):
        tune_lm(tmp_path / "nowhere", lm)
    with pytest.raises(SslseqError, match="experiment dir without decode_dev/"):
        tune_lm(exp, lm)  # an experiment dir means its decode_dev


def test_decode_lm_options_need_lm(tmp_path):
    from sslseq.cli import main

    assert main(["decode", "--lm-weight", "2", "exp", "data", "out"]) == 1


def test_lm_params_file_and_overrides(tmp_path):
    from sslseq.asr.lm_decode import LmParams

    f = tmp_path / "params.yaml"
    f.write_text(yaml.safe_dump({"params": {"lm_weight": 1.5, "word_score": -1.0, "beam_size": 30}, "dev_wer": 1.0}))
    p = LmParams.resolve(f, beam_size=100, word_score=None)
    assert (p.lm_weight, p.word_score, p.beam_size) == (1.5, -1.0, 100)
    f.write_text(yaml.safe_dump({"params": {"lm_wieght": 1.5}}))
    with pytest.raises(SslseqError, match=r"unknown LM parameter\(s\) \['lm_wieght'\]"):
        LmParams.from_yaml(f)
    with pytest.raises(SslseqError, match="not found; tune them"):
        LmParams.from_yaml(tmp_path / "none.yaml")


# ---------------------------------------------------------------- BPE units (--units bpeN)
BPE_TEXT = ["THE CAT SAT ON THE MAT", "A DOG SAT ON A MAT", "THE DOG ATE THE CAT", "ON A MAT THE CAT SAT",
            "THE CATS SAT", "A MAT", "THE DOGS ATE"] * 3


@pytest.fixture
def bpe(tmp_path):
    """A SentencePiece BPE model of 30 pieces learnt from BPE_TEXT's transcripts."""
    from sslseq.data.text import load_tokenizer, train_bpe

    text = tmp_path / "text"
    text.write_text("".join(f"u{i:03d} {x}\n" for i, x in enumerate(BPE_TEXT)))
    return load_tokenizer(train_bpe(text, tmp_path / "lang", 30))


def test_bpe_tokenizer_round_trips_and_names_what_it_cannot_spell(bpe, tmp_path):
    from sslseq.data.text import PieceTokenizer, load_tokenizer, read_units, train_bpe

    assert isinstance(bpe, PieceTokenizer) and len(bpe) == 32 and bpe.units[:2] == ["<blank>", "|"]
    assert not any("\u2581" in u or "|" in u for u in bpe.units[2:])  # pieces stay within words
    assert read_units(tmp_path / "lang" / "units.txt") == bpe.units
    for sentence in ["THE CAT SAT ON THE MAT", "A DOGS MAT", "TOCAM"]:  # also a word never seen
        ids = bpe.encode(sentence)
        assert 0 not in ids and bpe.decode(ids) == sentence
        assert bpe.decode([0, *ids, 0]) == sentence  # blanks dropped
        assert [bpe.units[i] for i in ids] == [p for w in sentence.split() for p in bpe.spell(w)][:-1]
    assert bpe.check_text("THE QUIZ") == ["Q", "U", "I", "Z"]
    with pytest.raises(SslseqError, match=r"character\(s\) 'QUIZ' in 'THE QUIZ' are in no piece of .*bpe.model"):
        bpe.encode("THE QUIZ")
    assert load_tokenizer(None).kind == "chars"
    with pytest.raises(SslseqError, match=r"is not one character; the units of BPE pieces are read from their Sent"):
        load_tokenizer(tmp_path / "lang" / "units.txt")
    with pytest.raises(SslseqError, match="choose a smaller --units bpeN"):
        train_bpe(tmp_path / "text", tmp_path / "big", 5000)


def test_lexicon_search_over_bpe_pieces(bpe, tmp_path):
    """The LM dir's lexicon spells words in the model's pieces; the search, with blank as its
    silence, finds the words of a path of pieces, and the LM picks between acoustic twins."""
    from sslseq.asr.ctc_decode import greedy_decode
    from sslseq.asr.lm_decode import LexiconSearch, LmParams
    from sslseq.lm.ngram import build_lm, load_lm_dir

    model = tmp_path / "lang" / "bpe.model"
    (tmp_path / "lm.txt").write_text("".join(f"{x}\n" for x in BPE_TEXT))
    build_lm(tmp_path / "lm.txt", tmp_path / "lm", order=3, units=model)
    lm_dir = load_lm_dir(tmp_path / "lm")
    assert lm_dir.units == bpe.units and lm_dir.lexicon["CAT"] == bpe.spell("CAT")
    search = LexiconSearch(tmp_path / "lm", bpe, model)
    ids = {u: i for i, u in enumerate(bpe.units)}

    def frames(units: list) -> np.ndarray:
        """Each unit (or {unit: prob} tie) on two frames, then a blank."""
        rng = np.random.default_rng(3)
        logits = rng.normal(scale=0.5, size=(3 * len(units) + 1, len(bpe)))
        logits[0, 0] += 8.0
        for t, u in enumerate(units):
            for r in (3 * t + 1, 3 * t + 2):
                if isinstance(u, dict):
                    logits[r] = -30.0
                    for k, q in u.items():
                        logits[r, ids[k]] = math.log(q)
                else:
                    logits[r, ids[u]] += 8.0
            logits[3 * t + 3, 0] += 8.0
        return (logits - np.log(np.exp(logits).sum(-1, keepdims=True))).astype(np.float32)

    sentence = "THE DOG SAT ON A MAT"
    em = frames([bpe.units[i] for i in bpe.encode(sentence)])
    assert bpe.decode(greedy_decode(em[None])[0]) == sentence
    assert " ".join(search.decode(search.decoder(LmParams(lm_weight=0.0)), em)) == sentence
    # CAT or DOG equally likely acoustically, piece by piece: the LM says which follows "ATE THE"
    cat, dog = bpe.spell("CAT")[:-1], bpe.spell("DOG")[:-1]
    assert len(cat) == len(dog) == 1, (cat, dog)  # frequent words are one piece each here
    em = frames([bpe.units[i] for i in bpe.encode("THE DOG ATE THE")] + ["|", {cat[0]: 0.5, dog[0]: 0.5}])
    assert search.decode(search.decoder(LmParams(lm_weight=2.0)), em) == ["THE", "DOG", "ATE", "THE", "CAT"]
