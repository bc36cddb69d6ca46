"""Decoding, scoring and results tables (sslseq.asr)."""

from __future__ import annotations

import itertools
import json
import logging
import math
import re
from pathlib import Path

import jiwer
import numpy as np
import pytest
import torch
import yaml

from sslseq.asr.ctc_decode import greedy_decode, prefix_beam_search, prefix_beam_search_nbest
from sslseq.asr.score import ScoreResult, score_files
from sslseq.utils import SslseqError


def _collapse(path, blank=0):
    out, prev = [], None
    for s in path:
        if s != prev and s != blank:
            out.append(s)
        prev = s
    return tuple(out)


def _brute_force(log_probs: np.ndarray) -> dict[tuple, float]:
    """log P(labeling) for every labeling, summing over all V**T paths."""
    T, V = log_probs.shape
    probs: dict[tuple, float] = {}
    for path in itertools.product(range(V), repeat=T):
        p = math.exp(sum(log_probs[t, s] for t, s in enumerate(path)))
        lab = _collapse(path)
        probs[lab] = probs.get(lab, 0.0) + p
    return {k: math.log(v) for k, v in probs.items()}


def _random_log_probs(rng, T, V, sharpness=1.0):
    logits = torch.tensor(rng.normal(size=(T, V)) * sharpness)
    return torch.log_softmax(logits, dim=-1).numpy()


# ---------------------------------------------------------------- greedy


def test_greedy_hand_example_collapses_repeats_drops_blanks_and_padding():
    # argmax paths: item 0: a a _ a b b _ | pad; item 1: _ b b a (length 4)
    paths = [[1, 1, 0, 1, 2, 2, 0, 2], [0, 2, 2, 1, 1, 1, 1, 1]]
    lp = torch.log_softmax(torch.nn.functional.one_hot(torch.tensor(paths), 3).float() * 5, dim=-1)
    assert greedy_decode(lp, torch.tensor([7, 4])) == [[1, 1, 2], [2, 1]]
    assert greedy_decode(lp.numpy(), None) == [[1, 1, 2, 2], [2, 1]]


def test_greedy_matches_loop_reference():
    rng = np.random.default_rng(0)
    lp = torch.tensor(rng.normal(size=(5, 40, 4)))
    lens = torch.tensor([40, 0, 1, 17, 39])
    got = greedy_decode(lp, lens, blank=2)
    for b in range(5):
        path = lp[b, : lens[b]].argmax(-1).tolist()
        assert got[b] == list(_collapse(path, blank=2))


# ---------------------------------------------------------------- prefix beam search


@pytest.mark.parametrize("T,V", [(1, 3), (2, 2), (3, 3), (4, 2), (4, 3)])
def test_prefix_beam_search_finds_most_probable_labeling(T, V):
    rng = np.random.default_rng(T * 10 + V)
    for _ in range(8):
        lp = _random_log_probs(rng, T, V)
        truth = _brute_force(lp)
        best = max(truth, key=truth.get)
        # A beam wider than the number of labelings makes the search exact: its score is
        # then the labeling's log probability, summed over all paths.
        nbest = prefix_beam_search_nbest(lp, beam=100)
        labels, score = nbest[0]
        assert tuple(labels) == best
        assert score == pytest.approx(truth[best], abs=1e-9)
        for lab, s in nbest:
            assert s == pytest.approx(truth[tuple(lab)], abs=1e-9)
        assert tuple(prefix_beam_search(lp, beam=8)) == best


def test_prefix_beam_search_beats_greedy_when_mass_is_spread():
    # Two frames, p(blank) = 0.6, p(a) = 0.4: best path "_ _" (0.36) gives the empty
    # labeling, but "a" collects a a, a _, _ a = 0.16 + 0.24 + 0.24 = 0.64.
    lp = torch.log(torch.tensor([[[0.6, 0.4], [0.6, 0.4]]]))
    assert greedy_decode(lp, torch.tensor([2])) == [[]]
    (labels, score), *_ = prefix_beam_search_nbest(lp[0], beam=4)
    assert labels == [1]
    assert score == pytest.approx(math.log(0.64))


def test_prefix_beam_search_beam1_equals_greedy_on_peaky_output():
    # Best path and best labeling agree when every frame has one clearly dominant unit
    # (p >= 0.9, the rest spread at random), as in a well-trained CTC model.
    rng = np.random.default_rng(1)
    for _ in range(20):
        T, V = 30, 6
        rest = rng.dirichlet(np.ones(V - 1), size=T) * 0.1
        top = rng.integers(0, V, size=T)
        p = np.zeros((T, V))
        for t in range(T):
            p[t, np.arange(V) != top[t]] = rest[t]
            p[t, top[t]] = 0.9
        lp = np.log(p)
        assert prefix_beam_search(lp, beam=1) == greedy_decode(lp[None], None)[0]


def test_prefix_beam_search_double_letters_need_a_blank():
    # a a -> "a"; a _ a -> "a a"
    onehot = lambda path: torch.log_softmax(torch.nn.functional.one_hot(torch.tensor(path), 3).float() * 20, -1)
    assert prefix_beam_search(onehot([1, 1]), beam=4) == [1]
    assert prefix_beam_search(onehot([1, 0, 1]), beam=4) == [1, 1]
    assert prefix_beam_search(onehot([0, 0, 0]), beam=4) == []


class _BanToken:
    """A toy LM: token ``banned`` costs 50 nats, everything else is free."""

    def __init__(self, banned):
        self.banned, self.calls = banned, 0

    def init_state(self):
        return ()

    def score(self, state, token):
        self.calls += 1
        return (-50.0 if token == self.banned else 0.0), state + (token,)

    def final(self, state):
        return 0.0


def test_prefix_beam_search_scorer_hook_changes_the_ranking():
    # Acoustically "1" wins clearly over "2"; an LM that bans 1 flips the choice.
    lp = torch.log(torch.tensor([[0.1, 0.6, 0.3], [0.1, 0.6, 0.3]]))
    assert prefix_beam_search(lp, beam=4) == [1]
    lm = _BanToken(1)
    assert prefix_beam_search(lp, beam=4, scorer=lm, lm_weight=1.0) == [2]
    assert lm.calls > 0
    # A neutral scorer leaves acoustic scores unchanged.
    free = _BanToken(banned=-1)
    nb = prefix_beam_search_nbest(lp, beam=4, scorer=free, lm_weight=1.0)
    ref = prefix_beam_search_nbest(lp, beam=4)
    assert [h for h, _ in nb] == [h for h, _ in ref]
    assert [score for _, score in nb] == pytest.approx([score for _, score in ref])


# ---------------------------------------------------------------- scoring


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_score_hand_computed_example(tmp_path, caplog):
    ref = _write(tmp_path / "ref", ["u1 A B C D", "u2 X Y", "u3 THE CAT"])
    hyp = _write(tmp_path / "hyp", ["u1 A C C E F", "u2"])  # u3 missing
    # The sslseq logger does not propagate to the root logger, so hook caplog in directly.
    logger = logging.getLogger("sslseq")
    logger.addHandler(caplog.handler)
    try:
        r = score_files(ref, hyp, tmp_path / "out")
    finally:
        logger.removeHandler(caplog.handler)
    # u1: B->C sub, insert E, D->F sub (2 sub, 1 ins); u2: 2 del; u3: 2 del (missing)
    assert (r.n_sub, r.n_del, r.n_ins, r.n_ref_words) == (2, 4, 1, 8)
    assert r.wer == pytest.approx(100 * 7 / 8)
    assert (r.n_utts, r.n_sent_err, r.n_missing) == (3, 3, 1)
    # characters (spaces count): "A B C D" vs "A C C E F": 7 ref chars, 2 sub + 2 ins;
    # "X Y": 3 del; "THE CAT": 7 del -> 14 / 17
    assert r.n_ref_chars == 17
    assert r.cer == pytest.approx(100 * 14 / 17)
    assert "1 of 3 reference utterance(s) have no hypothesis" in caplog.text and "u3" in caplog.text
    assert r.summary().splitlines() == [
        "%WER 87.50 [ 7 / 8, 1 ins, 4 del, 2 sub ]",
        "%SER 100.00 [ 3 / 3 ]",
        "%CER 82.35 [ 14 / 17, 2 ins, 10 del, 2 sub ]",
    ]
    out = tmp_path / "out"
    assert (out / "wer").read_text().splitlines()[0] == "%WER 87.50 [ 7 / 8, 1 ins, 4 del, 2 sub ]"
    data = yaml.safe_load((out / "wer.yaml").read_text())
    assert data["wer"] == pytest.approx(87.5) and data["n_del"] == 4 and data["n_ref_words"] == 8
    errs = (out / "errs").read_text()
    assert "u1 ref: A B C *** D" in errs
    assert "u1 hyp: A C C E   F" in errs
    assert "u1 ops:   S   I   S" in errs
    subs = errs.split("SUBSTITUTIONS:")[1].split("DELETIONS:")[0]
    assert re.search(r"1 B -> C", subs) and re.search(r"1 D -> F", subs)
    dels = errs.split("DELETIONS:")[1].split("INSERTIONS:")[0]
    assert {"X", "Y", "THE", "CAT"} == {line.split()[1] for line in dels.splitlines()[1:] if line.strip()}
    assert errs.split("INSERTIONS:")[1].splitlines()[1].split() == ["1", "E"]


def test_score_matches_jiwer(tmp_path):
    rng = np.random.default_rng(3)
    vocab = ["THE", "CAT", "SAT", "ON", "A", "MAT", "DOG"]
    refs, hyps = [], []
    for i in range(40):
        r = list(rng.choice(vocab, size=rng.integers(1, 9)))
        h = [w for w in r if rng.random() > 0.2]  # deletions
        h = [w if rng.random() > 0.2 else str(rng.choice(vocab)) for w in h]  # substitutions
        if rng.random() < 0.3:
            h.insert(int(rng.integers(0, len(h) + 1)), "UH")  # insertions
        refs.append(r)
        hyps.append(h)
    ref = _write(tmp_path / "ref", [f"utt{i:03d} {' '.join(r)}" for i, r in enumerate(refs)])
    hyp = _write(tmp_path / "hyp", [f"utt{i:03d} {' '.join(h)}".rstrip() for i, h in enumerate(hyps)])
    r = score_files(ref, hyp, None)
    ref_s, hyp_s = [" ".join(x) for x in refs], [" ".join(x) for x in hyps]
    assert r.wer == pytest.approx(100 * jiwer.wer(ref_s, hyp_s))
    assert r.cer == pytest.approx(100 * jiwer.cer(ref_s, hyp_s))
    assert r.n_sent_err == sum(a != b for a, b in zip(refs, hyps))
    assert 0 < r.wer < 100


def test_score_rejects_hypothesis_without_reference(tmp_path):
    ref = _write(tmp_path / "ref", ["u1 A B"])
    hyp = _write(tmp_path / "hyp", ["u1 A B", "u9 C"])
    with pytest.raises(SslseqError, match=r"hyp:2: u9: utterance has no reference"):
        score_files(ref, hyp, None)


def test_score_rejects_duplicate_ids_and_perfect_score(tmp_path):
    ref = _write(tmp_path / "ref", ["u1 A B", "u1 C"])
    with pytest.raises(SslseqError, match=r"ref:2: u1: duplicate"):
        score_files(ref, ref, None)
    ref = _write(tmp_path / "ref2", ["u1 A B", "u2 C"])
    r = score_files(ref, ref, tmp_path / "o")
    assert (r.wer, r.cer, r.n_sent_err) == (0.0, 0.0, 0)
    assert "u1 ref" not in (tmp_path / "o" / "errs").read_text()


# ---------------------------------------------------------------- decoding a data dir

FRAME = 160  # samples per output frame of the fake model below


class _FrameCodeModel(torch.nn.Module):
    """A CTC "model" whose output is written in its input: each 160-sample frame holds
    the value (unit id) / 100, and the model emits that unit with probability ~1.

    It stands in for sslseq.models until a trained model is at hand, and keeps the test
    exact: any WER above 0 is a bug in batching, padding, lengths or text handling.
    """

    def __init__(self, n_units: int):
        super().__init__()
        self.n_units = n_units
        self.calls: list[tuple[int, int]] = []

    def log_probs(self, wav, wav_lens):
        B, S = wav.shape
        self.calls.append((B, S))
        frames = wav[:, : S // FRAME * FRAME].reshape(B, S // FRAME, FRAME).mean(-1)
        ids = torch.round(frames * 100).long().clamp(0, self.n_units - 1)
        logits = torch.nn.functional.one_hot(ids, self.n_units).float() * 30
        return torch.log_softmax(logits, -1), wav_lens // FRAME


def _make_data_dir(tmp_path: Path, texts: dict[str, str], tokenizer) -> Path:
    import soundfile as sf

    from sslseq.data.kaldi import write_data_dir

    wav, dur = {}, {}
    for u, t in texts.items():
        frames = []
        for i in tokenizer.encode(t):
            frames += [i, i, 0]  # a blank after every unit keeps double letters apart
        frames += [0] * 5
        x = np.repeat(np.array(frames, dtype=np.float32) / 100, FRAME)
        path = tmp_path / "wav" / f"{u}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, x, 16000, subtype="FLOAT")
        wav[u], dur[u] = str(path), len(x) / 16000
    d = tmp_path / "data"
    write_data_dir(d, wav=wav, text=texts, utt2spk={u: u.split("_")[0] for u in texts}, utt2dur=dur)
    return d


@pytest.fixture
def fake_exp(tmp_path, monkeypatch):
    import sslseq.models
    from sslseq.data.text import DEFAULT_UNITS, CharTokenizer

    tok = CharTokenizer(DEFAULT_UNITS)
    exp = tmp_path / "exp"
    exp.mkdir()
    tok.save(exp / "units.txt")
    model = _FrameCodeModel(len(tok))
    monkeypatch.setattr(sslseq.models, "load", lambda exp_dir: model, raising=False)
    return exp, tok, model


TEXTS = {
    "spk1_a": "HELLO WORLD",
    "spk1_b": "THE BOOK OF GENESIS",
    "spk2_a": "IN THE BEGINNING",
    "spk2_b": "DON'T",
    "spk2_c": "AND GOD SAW THE LIGHT THAT IT WAS GOOD",
}


@pytest.mark.parametrize("beam", [1, 4])
def test_decode_data_dir_end_to_end(tmp_path, fake_exp, beam, monkeypatch):
    from sslseq.asr.decode import decode_data_dir

    monkeypatch.setenv("SSLSEQ_NO_PROGRESS", "1")
    exp, tok, model = fake_exp
    data = _make_data_dir(tmp_path, TEXTS, tok)
    # A small batch budget forces several padded batches of different lengths.
    out = tmp_path / "decode"
    r = decode_data_dir(exp, data, out, batch_seconds=1.0, beam=beam)
    assert isinstance(r, ScoreResult)
    assert r.wer == 0.0 and r.n_utts == 5 and r.n_ref_words == sum(len(t.split()) for t in TEXTS.values())
    assert len(model.calls) > 1
    hyp_lines = (out / "hyp.txt").read_text().splitlines()
    assert hyp_lines == [f"{u} {TEXTS[u]}" for u in sorted(TEXTS)]
    info = yaml.safe_load((out / "decode.yaml").read_text())
    assert info["beam"] == beam and info["n_utts"] == 5 and info["rtf"] > 0
    assert info["audio_seconds"] == pytest.approx(
        sum(len(t) * 3 * FRAME + 5 * FRAME for t in (t.replace(" ", "|") for t in TEXTS.values())) / 16000, abs=1e-3
    )
    assert (out / "wer").read_text().startswith("%WER 0.00 [ 0 / ")


def test_decode_in_blocks_joins_to_the_same_hypotheses(tmp_path, fake_exp, monkeypatch):
    """--nj 3: each --rank decodes one block into parts/; the join equals one-job decoding,
    and a finished block is not decoded again."""
    from sslseq.asr.decode import decode_data_dir

    monkeypatch.setenv("SSLSEQ_NO_PROGRESS", "1")
    exp, tok, model = fake_exp
    data = _make_data_dir(tmp_path, TEXTS, tok)
    whole = decode_data_dir(exp, data, tmp_path / "whole", batch_seconds=1.0)
    out = tmp_path / "blocks"
    assert decode_data_dir(exp, data, out, batch_seconds=1.0, nj=3, rank=1) is None
    assert sorted(p.name for p in (out / "parts").iterdir()) == ["1_3.yaml"] and not (out / "hyp.txt").exists()
    calls = len(model.calls)
    r = decode_data_dir(exp, data, out, batch_seconds=1.0, nj=3)  # decodes blocks 0 and 2 only, then joins
    assert sum(B for B, _ in model.calls[calls:]) == 3  # blocks 0 and 2: 2 + 1 of the 5 utterances
    assert (out / "hyp.txt").read_text() == (tmp_path / "whole" / "hyp.txt").read_text()
    assert r.wer == whole.wer == 0.0 and yaml.safe_load((out / "decode.yaml").read_text())["nj"] == 3
    n_after_join = len(model.calls)
    decode_data_dir(exp, data, out, batch_seconds=1.0, nj=3)  # every part done: only the join
    assert len(model.calls) == n_after_join
    with pytest.raises(SslseqError, match=r"rank 3 is outside 0..2"):
        decode_data_dir(exp, data, out, nj=3, rank=3)


def test_decode_scores_against_normalised_refs_and_counts_errors(tmp_path, fake_exp, monkeypatch):
    from sslseq.asr.decode import decode_data_dir

    monkeypatch.setenv("SSLSEQ_NO_PROGRESS", "1")
    exp, tok, _ = fake_exp
    data = _make_data_dir(tmp_path, {"s_1": "HELLO WORLD", "s_2": "GOOD NIGHT"}, tok)
    # Reference in raw form (case, punctuation) and with one real word error.
    (data / "text").write_text("s_1 Hello, world!\ns_2 good day\n")
    r = decode_data_dir(exp, data, tmp_path / "dec")
    assert (r.n_sub, r.n_del, r.n_ins, r.n_ref_words) == (1, 0, 0, 4)
    assert (tmp_path / "dec" / "ref.txt").read_text() == "s_1 HELLO WORLD\ns_2 GOOD DAY\n"
    # Without transcripts there is nothing to score.
    (data / "text").unlink()
    assert decode_data_dir(exp, data, tmp_path / "dec2") is None
    assert (tmp_path / "dec2" / "hyp.txt").read_text() == "s_1 HELLO WORLD\ns_2 GOOD NIGHT\n"


def test_decode_rejects_units_that_do_not_match_the_model(tmp_path, fake_exp, monkeypatch):
    from sslseq.asr.decode import decode_data_dir

    exp, tok, model = fake_exp
    data = _make_data_dir(tmp_path, {"s_1": "HI"}, tok)
    model.n_units = len(tok) + 2
    with pytest.raises(SslseqError, match="units"):
        decode_data_dir(exp, data, tmp_path / "dec")


@pytest.mark.parametrize("longest_first", [True, False])  # decoding, feature dumping
def test_utterance_batches_respect_padded_budget(longest_first):
    from sslseq.data.batching import utterance_batches

    durs = {f"u{i}": d for i, d in enumerate([1.0, 5.0, 2.0, 2.5, 9.0, 0.5, 3.0])}
    batches = utterance_batches(list(durs), durs, 6.0, longest_first=longest_first)
    assert sorted(u for b in batches for u in b) == sorted(durs)
    for b in batches:
        assert len(b) == 1 or len(b) * max(durs[u] for u in b) <= 6.0
    assert ["u4"] in batches  # longer than the budget: alone
    flat = [durs[u] for b in batches for u in b]
    assert flat == sorted(flat, reverse=longest_first)
    with pytest.raises(SslseqError, match="positive"):
        utterance_batches(list(durs), durs, 0.0)


# ---------------------------------------------------------------- results table


def _fake_decode(root: Path, exp: str, init: str, data_set: str, wer: float) -> Path:
    exp_dir = root / "exp" / exp
    exp_dir.mkdir(parents=True, exist_ok=True)
    (exp_dir / "config.yaml").write_text(
        yaml.safe_dump({"init": init, "model": {"name": "ctc_hubert"}, "data": {"train": "data/train_1h"}})
    )
    d = exp_dir / f"decode_{data_set}"
    d.mkdir()
    (d / "wer.yaml").write_text(
        yaml.safe_dump({"wer": wer, "cer": wer / 3, "n_ref_words": 200, "n_sub": 10, "n_del": 5, "n_ins": 1})
    )
    (d / "decode.yaml").write_text(
        yaml.safe_dump({"exp_dir": f"exp/{exp}", "data_dir": f"data/{data_set}", "beam": 1, "rtf": 0.01, "device": "cpu"})
    )
    return d


def test_write_results_table_and_relative_reduction(tmp_path):
    from sslseq.asr.report import write_results

    pre = tmp_path / "exp" / "pretrain_hubert"
    pre.mkdir(parents=True)
    (pre / "config.yaml").write_text(yaml.safe_dump({"model": {"name": "hubert"}, "optim": {"max_steps": 400}}))
    dirs = [
        _fake_decode(tmp_path, "ctc_from_pre", "exp/pretrain_hubert", "test", 30.0),
        _fake_decode(tmp_path, "ctc_scratch", "none", "test", 60.0),
        _fake_decode(tmp_path, "ctc_scratch", "none", "dev", 50.0),
    ]
    out = tmp_path / "exp" / "RESULTS.md"
    md = write_results(dirs, out)
    assert out.read_text() == md
    rows = [line for line in md.splitlines() if line.startswith("| `exp/")]
    assert len(rows) == 3
    assert "| `exp/ctc_from_pre` | ctc_hubert | `exp/pretrain_hubert` (hubert, 400 steps) | test | 30.00 | 10.00 | 200 | 10 / 5 / 1 |" in rows
    assert "none (from scratch)" in rows[1] and "| dev | 50.00 |" in rows[2]
    # (60 - 30) / 60 on test; dev has no pretrained experiment, so no line for it.
    assert "test: relative WER reduction from pretraining: 50.0 %" in md
    assert md.count("relative WER reduction") == 1
    assert "stage 7" in md and "sslseq results --out" in md


def _fake_log(exp_dir: Path, records: list[dict]) -> None:
    (exp_dir / "log").mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(r) for r in records]
    (exp_dir / "log" / "train.jsonl").write_text("\n".join(lines[:-1] + ['{"step": 4', lines[-1]]) + "\n")  # one cut line


def _pretrain_records(steps: int, acc_key: str) -> list[dict]:
    out = []
    for s in range(10, steps + 1, 10):
        out.append({"step": s, "epoch": 0, "loss": 6.0 * math.exp(-s / 150) + 1.5, acc_key: 0.9 * (1 - math.exp(-s / 120)),
                    "lr": 1e-3})
        if s % 100 == 0:
            out.append({"step": s, "epoch": 0, "valid_loss": 6.2 * math.exp(-s / 150) + 1.7})
    return out


def _ctc_records(steps: int, floor: float) -> list[dict]:
    out = [{"step": s, "epoch": 0, "loss": 3.0 * math.exp(-s / 200) + 0.2} for s in range(10, steps + 1, 10)]
    for s in range(100, steps + 1, 100):
        out.append({"step": s, "epoch": 0, "valid_loss": 2.0, "valid_cer": floor + (1 - floor) * math.exp(-s / 250),
                    "valid_wer": min(1.0, 2 * floor + (1 - 2 * floor) * math.exp(-s / 300)),
                    "valid_blank_frac": 0.7, "valid_empty_frac": 0.0})
    return out


def test_results_draws_learning_curves_and_skips_missing_logs(tmp_path):
    from PIL import Image

    from sslseq.asr.report import write_results

    pre = tmp_path / "exp" / "pretrain_hubert"
    pre.mkdir(parents=True)
    (pre / "config.yaml").write_text(yaml.safe_dump({"task": "pretrain", "model": {"name": "hubert"}, "optim": {"max_steps": 400}}))
    _fake_log(pre, _pretrain_records(400, "acc_m"))
    dirs = [
        _fake_decode(tmp_path, "ctc_from_pre", "exp/pretrain_hubert", "test", 30.0),
        _fake_decode(tmp_path, "ctc_scratch", "none", "test", 60.0),
        _fake_decode(tmp_path, "ctc_nolog", "exp/pretrain_hubert", "test", 40.0),
    ]
    _fake_log(tmp_path / "exp" / "ctc_from_pre", _ctc_records(800, 0.15))
    _fake_log(tmp_path / "exp" / "ctc_scratch", _ctc_records(800, 0.35))
    out = tmp_path / "exp" / "RESULTS.md"
    md = write_results(dirs, out)
    png = tmp_path / "exp" / "RESULTS.png"
    assert "![learning curves](RESULTS.png)" in md and png.is_file()
    assert "- exp/ctc_nolog: no log/train.jsonl; its curves are left out" in md  # a note, not a crash
    img = Image.open(png)
    assert img.format == "PNG" and img.size == (1300, 1000)
    colors = img.convert("RGB").getcolors(maxcolors=1 << 20)
    assert len(colors) > 50  # lines, text and legends, not a blank canvas
    assert png.stat().st_size > 20_000


def test_plot_verb_takes_any_experiment_dirs(tmp_path, capsys):
    from sslseq.asr.curves import find_experiments
    from sslseq.cli import main

    pre = tmp_path / "exp" / "pretrain_w2v"
    pre.mkdir(parents=True)
    (pre / "config.yaml").write_text(yaml.safe_dump({"task": "pretrain", "model": {"name": "wav2vec2"}}))
    _fake_log(pre, _pretrain_records(200, "acc"))
    ctc = tmp_path / "exp" / "ctc"
    ctc.mkdir()
    (ctc / "config.yaml").write_text(yaml.safe_dump({"task": "ctc", "init": str(pre)}))
    _fake_log(ctc, _ctc_records(300, 0.2))
    exps, notes = find_experiments([ctc, pre])  # the pretraining run once, found from the CTC init too
    assert [(e.label, e.task) for e in exps] == [("ctc (from pretrain_w2v)", "ctc"), ("pretrain_w2v", "pretrain")]
    assert notes == [] and len(exps[1].records) == 22  # the cut line is skipped
    out = tmp_path / "curves.png"
    assert main(["plot", "--out", str(out), str(ctc)]) == 0 and out.stat().st_size > 20_000
    assert main(["plot", "--out", str(tmp_path / "none.png"), str(tmp_path / "missing")]) == 1
    assert not (tmp_path / "none.png").exists()


def test_write_results_needs_scored_dirs(tmp_path):
    from sslseq.asr.report import write_results

    (tmp_path / "decode_test").mkdir()
    with pytest.raises(SslseqError, match="wer.yaml: not found"):
        write_results([tmp_path / "decode_test"], tmp_path / "RESULTS.md")


def test_decode_with_a_real_ctc_model(tmp_path, monkeypatch):
    """sslseq.models.load + CTCModel.log_probs end to end, with a head forced to emit 'A'."""
    import sslseq.models as models
    from sslseq.asr.decode import decode_data_dir
    from sslseq.data.text import DEFAULT_UNITS, CharTokenizer

    monkeypatch.setenv("SSLSEQ_NO_PROGRESS", "1")
    tok = CharTokenizer(DEFAULT_UNITS)
    model = models.build_model({
        "name": "ctc",
        "vocab_size": len(tok),
        "encoder": {
            "conv_layers": [[16, 10, 5], [16, 3, 2], [16, 2, 2]],
            "encoder": {"embed_dim": 32, "ffn_dim": 64, "num_layers": 1, "num_heads": 2,
                        "conv_pos": 8, "conv_pos_groups": 4},
        },
    })
    # Whatever the encoder computes, every frame's best unit is 'A' (logit margin 100), so
    # the greedy and beam hypotheses of every utterance are exactly "A".
    with torch.no_grad():
        model.proj.weight.zero_()
        model.proj.bias.zero_()
        model.proj.bias[tok.units.index("A")] = 100.0
    exp = tmp_path / "exp" / "ctc"
    exp.mkdir(parents=True)
    models.save_weights(model, exp / "model.safetensors")
    (exp / "config.yaml").write_text(yaml.safe_dump({"task": "ctc", "init": "none", "model": models.model_config_dict(model)}))
    tok.save(exp / "units.txt")
    data = _make_data_dir(tmp_path, TEXTS, tok)
    for beam in (1, 3):
        out = tmp_path / f"decode_{beam}"
        r = decode_data_dir(exp, data, out, batch_seconds=2.0, beam=beam)
        assert (out / "hyp.txt").read_text().splitlines() == [f"{u} A" for u in sorted(TEXTS)]
        # Each utterance: one substitution (no reference word is "A"), the rest deleted.
        n_words = sum(len(t.split()) for t in TEXTS.values())
        assert (r.n_sub, r.n_ins, r.n_del) == (5, 0, n_words - 5)
        assert r.wer == pytest.approx(100.0)

    from sslseq.asr.report import write_results

    md = write_results([tmp_path / "decode_1"], tmp_path / "exp" / "RESULTS.md")
    assert "| ctc | none (from scratch) | data | 100.00 |" in md
