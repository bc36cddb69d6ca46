"""``sslseq <verb> ...``: the command line. Each verb is a thin wrapper over one module function.

Modules are imported only when their verb runs, so ``sslseq --help`` is instant.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sslseq.utils import SslseqError, get_logger, run_main


def parse_duration(text: str) -> float:
    """'10min', '1h', '90s', '1.5h' or plain seconds -> seconds."""
    units = {"h": 3600.0, "min": 60.0, "m": 60.0, "s": 1.0}
    t = text.strip().lower()
    for suffix in ("min", "h", "m", "s"):
        if t.endswith(suffix):
            number = t[: -len(suffix)]
            break
    else:
        number, suffix = t, "s"
    try:
        return float(number) * units[suffix]
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a duration (use e.g. 10min, 1h, 600s)") from None


# ---------------------------------------------------------------- verbs


def cmd_corpus_librispeech(a: argparse.Namespace) -> None:
    from sslseq.data.librispeech import EVAL_SETS, prepare_librispeech, set_parts

    eval_sets = tuple(a.eval_sets.split()) if a.eval_sets else EVAL_SETS
    for name in eval_sets:
        set_parts(name)  # an unknown name is an error before anything is fetched
    if a.download:
        from sslseq.data.download import download_librispeech

        sets = list(dict.fromkeys(set_parts(a.train_set) + eval_sets))
        download_librispeech(Path(a.corpus_dir), sets, finetune=not a.no_finetune, base_url=a.url_base,
                             mini_url=a.mini_url_base)
    prepare_librispeech(Path(a.corpus_dir), Path(a.data_dir), train_set=a.train_set, eval_sets=eval_sets,
                        finetune=not a.no_finetune)


def cmd_corpus_custom(a: argparse.Namespace) -> None:
    from sslseq.data.custom import prepare_custom

    prepare_custom(Path(a.audio_dir), Path(a.data_dir), Path(a.copy_dir), text=Path(a.text) if a.text else None,
                   spk_from=a.spk_from, split=a.split, dev_size=a.dev_size, test_size=a.test_size, seed=a.seed,
                   min_char_count=a.min_char_count, units=Path(a.units) if a.units else None, nj=a.nj)


def cmd_lm_text(a: argparse.Namespace) -> None:
    from sslseq.lm.corpus import source_lines, write_lm_text

    write_lm_text(source_lines([Path(p) for p in a.sources]), Path(a.out), [Path(d) for d in a.exclude],
                  units=Path(a.units) if a.units else None)


def cmd_lm_check_overlap(a: argparse.Namespace) -> None:
    from sslseq.lm.corpus import check_overlap

    n = check_overlap(Path(a.lm_text), [Path(d) for d in a.data_dirs], units=Path(a.units) if a.units else None)
    print(f"{a.lm_text}: OK ({n} lines, none holds a sentence of {' '.join(a.data_dirs)})")


def cmd_data_bpe(a: argparse.Namespace) -> None:
    from sslseq.data.text import load_tokenizer, train_bpe

    model = train_bpe(Path(a.data_dir) / "text", Path(a.out_dir), a.vocab_size)
    print(f"{model}: {len(load_tokenizer(model)) - 1} BPE pieces (+ blank)")


def cmd_lm_build(a: argparse.Namespace) -> None:
    from sslseq.lm.ngram import build_lm

    build_lm(Path(a.text), Path(a.out_dir), order=a.order, dev_text=Path(a.dev) if a.dev else None,
             units=Path(a.units) if a.units else None, arpa=Path(a.arpa) if a.arpa else None)


def cmd_lm_ppl(a: argparse.Namespace) -> None:
    from sslseq.lm.ngram import perplexity

    r = perplexity(Path(a.lm_dir), Path(a.text))
    print(f"{r['text']}: {r['sentences']} sentences, {r['words']} words, {r['oov']} OOVs ({r['oov_rate']}%), "
          f"logprob10 {r['logprob10']}, ppl {r['ppl']}")


def cmd_data_validate(a: argparse.Namespace) -> None:
    from sslseq.data.kaldi import BAD_UTTS, check_data_dir, drop_utterances

    opts = dict(allow_pipes=a.allow_pipes, sample_rate=a.sample_rate, units=a.units)
    found = check_data_dir(Path(a.data_dir), read_samples=not a.quick, **opts)
    problems, bad = found.problems, found.bad_audio
    if a.drop_bad and found.only_bad_audio:
        left = drop_utterances(Path(a.data_dir), bad)
        get_logger().warning("%s: %d utterance(s) with bad audio left out (%d left), listed in %s", a.data_dir,
                             len(bad), left, Path(a.data_dir) / BAD_UTTS)
        problems = check_data_dir(Path(a.data_dir), read_samples=False, **opts).problems
    for line in problems:
        print(line)
    if problems:
        hint = ("; --drop-bad leaves out the utterances with bad audio (the recipe: --skip-bad true)"
                if bad and not a.drop_bad else "")
        raise SslseqError(f"{a.data_dir}: {len(problems)} problem(s) found (listed above){hint}")
    print(f"{a.data_dir}: OK")


def cmd_data_subset(a: argparse.Namespace) -> None:
    from sslseq.data.kaldi import subset_by_duration

    subset_by_duration(Path(a.src_dir), Path(a.dst_dir), seconds=a.duration, seed=a.seed)


def cmd_data_from_lhotse(a: argparse.Namespace) -> None:
    from sslseq.data.lhotse_manifests import lhotse_to_data_dir

    n = lhotse_to_data_dir(Path(a.out_dir), recordings=a.recordings, supervisions=a.supervisions, cuts=a.cuts)
    print(f"{a.out_dir}: {n} utterances; check it with 'sslseq data validate {a.out_dir}'")


def cmd_data_to_lhotse(a: argparse.Namespace) -> None:
    from sslseq.data.lhotse_manifests import data_dir_to_lhotse

    data_dir_to_lhotse(Path(a.data_dir), recordings=a.recordings, supervisions=a.supervisions, cuts=a.cuts,
                       allow_pipes=a.allow_pipes)


def cmd_feats_dump(a: argparse.Namespace) -> None:
    from sslseq.features.dump import dump_features

    layer_features = None
    if a.type == "layer":  # the model's hidden states: models/ loads and runs it, features/ stores them
        if a.checkpoint is None or a.layer is None:
            raise SslseqError("--type layer needs --checkpoint <experiment dir> and --layer <index>")
        from sslseq.hw import resolve_device
        from sslseq.models.layer_features import LayerFeatures

        layer_features = LayerFeatures(a.checkpoint, a.layer, resolve_device(a.device))
    dump_features(
        Path(a.data_dir),
        Path(a.out_dir),
        feat_type=a.type,
        nj=a.nj,
        rank=a.rank,
        device=a.device,
        layer_features=layer_features,
        allow_pipes=a.allow_pipes,
        resample=not a.no_resample,
        skip_bad=a.skip_bad,
    )


def cmd_feats_check(a: argparse.Namespace) -> None:
    from sslseq.features.store import check_complete

    check_complete(Path(a.feat_dir), nj=a.nj, verify=not a.quick)
    what = "sizes" if a.quick else "sizes and checksums"
    print(f"{a.feat_dir}: all {a.nj} shard(s) complete ({what} as written)")


def cmd_kmeans_fit(a: argparse.Namespace) -> None:
    from sslseq.cluster.jobs import fit_kmeans_on_features

    fit_kmeans_on_features(
        Path(a.feat_dir),
        Path(a.model),
        k=a.k,
        sample_frac=a.sample_frac,
        max_frames=a.max_frames,
        seed=a.seed,
        device=a.device,
    )


def cmd_kmeans_label(a: argparse.Namespace) -> None:
    from sslseq.cluster.jobs import label_features

    label_features(Path(a.model), Path(a.feat_dir), Path(a.out), device=a.device, nj=a.nj, rank=a.rank)


def cmd_train(a: argparse.Namespace) -> None:
    if a.fingerprint:
        from sslseq.train.config import resolve_train_config, train_fingerprint

        # The resolved config is all a fingerprint needs (checking it imports the model registry,
        # torch with it: seconds per recipe stage); training it checks it first.
        print(train_fingerprint(resolve_train_config(a.config, a.overrides)))
        return
    from sslseq.train.trainer import train_from_config

    train_from_config(Path(a.config), a.overrides)


def cmd_decode(a: argparse.Namespace) -> None:
    from sslseq.asr.decode import decode_data_dir

    lm_params = None
    lm_flags = {"lm_weight": a.lm_weight, "word_score": a.word_score, "beam_size": a.beam_size}
    if a.lm:
        from sslseq.asr.lm_decode import LmParams

        lm_params = LmParams.resolve(Path(a.lm_params) if a.lm_params else None, **lm_flags)
    elif a.lm_params or any(v is not None for v in lm_flags.values()):
        raise SslseqError("--lm-params, --lm-weight, --word-score and --beam-size set the LM search: give --lm LM_DIR too")
    decode_data_dir(
        Path(a.exp_dir),
        Path(a.data_dir),
        Path(a.out_dir),
        device=a.device,
        batch_seconds=a.batch_seconds,
        beam=a.beam,
        allow_pipes=a.allow_pipes,
        nj=a.nj,
        rank=a.rank,
        lm_dir=Path(a.lm) if a.lm else None,
        lm_params=lm_params,
    )


def cmd_lm_tune(a: argparse.Namespace) -> None:
    from sslseq.asr.lm_tune import tune_lm

    tune_lm(
        Path(a.decode_dir), Path(a.lm), out_dir=Path(a.out_dir) if a.out_dir else None, lm_weights=a.lm_weights,
        word_scores=a.word_scores, beam_size=a.beam_size, nj=a.nj,
        held_out=[Path(p) for p in a.held_out] if a.held_out else None, force=a.force,
    )


def cmd_score(a: argparse.Namespace) -> None:
    from sslseq.asr.score import score_files

    result = score_files(Path(a.ref), Path(a.hyp), out_dir=Path(a.out_dir) if a.out_dir else None)
    print(result.summary())


def cmd_results(a: argparse.Namespace) -> None:
    from sslseq.asr.report import write_results

    print(write_results([Path(p) for p in a.decode_dirs], Path(a.out)))


def cmd_plot(a: argparse.Namespace) -> None:
    from sslseq.asr.curves import plot_curves

    png, notes = plot_curves([Path(p) for p in a.exp_dirs], Path(a.out))
    for n in notes:
        get_logger().warning("%s", n)
    if png is None:
        raise SslseqError("nothing to plot: " + "; ".join(notes))
    print(png)


def cmd_config_family_fact(a: argparse.Namespace) -> None:
    from sslseq.train.config import pretrain_family_fact, resolve_train_config

    # The model registry knows each family's facts (k-means labels or not, its CTC recipe); the
    # recipe asks here instead of testing model names in shell.
    value = pretrain_family_fact(resolve_train_config(a.file), a.fact)
    print(str(value).lower() if isinstance(value, bool) else value)


def cmd_config_get(a: argparse.Namespace) -> None:
    from sslseq.config import get_value, load_yaml

    data = load_yaml(a.file)
    try:
        value = get_value(data, a.key, where=a.file)
    except SslseqError:
        if a.default is None:
            raise
        value = a.default
    if isinstance(value, (dict, list)):
        raise SslseqError(f"{a.file}: '{a.key}' is a {'mapping' if isinstance(value, dict) else 'list'}, not a single value")
    print(str(value).lower() if isinstance(value, bool) else "" if value is None else value)


def cmd_bench(a: argparse.Namespace) -> None:
    import importlib

    module = importlib.import_module(f"sslseq.bench.{a.what}")
    module.main(a)


def cmd_convert(a: argparse.Namespace) -> None:
    from sslseq.convert import convert, export

    if a.to:
        export(Path(a.src), Path(a.out_dir), target=a.to, overwrite=a.overwrite)
        return
    lnf = {"pre": True, "post": False, None: None}[a.norm_order]
    convert(
        Path(a.src), Path(a.out_dir), a.from_, fairseq_dict=a.dict, num_heads=a.num_heads,
        layer_norm_first=lnf, overwrite=a.overwrite,
    )


# ---------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sslseq",
        description="Speech self-supervised learning recipes. Each verb does one stage's work; "
        "egs/<corpus>/run.sh chains them.",
    )
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)

    def verb(parent, name, fn, help):
        sp = parent.add_parser(name, help=help, description=help, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        sp.set_defaults(fn=fn)
        return sp

    # corpus
    corpus = verbs.add_parser("corpus", help="Kaldi data dirs of a corpus (LibriSpeech, a folder of your own audio)").add_subparsers(
        dest="sub", metavar="SUB", required=True
    )
    s = verb(corpus, "librispeech", cmd_corpus_librispeech, "make Kaldi data dirs from a LibriSpeech (+ Libri-light "
             "librispeech_finetuning) copy: the pretraining set, dev/test clean/other, librilight_{10min,1h,10h}")
    s.add_argument("--train-set", default="train-clean-100",
                   help="pretraining set: train-clean-100, train-clean-360, train-other-500, train-460, train-960 "
                   "or Mini LibriSpeech's train-clean-5")
    s.add_argument("--eval-sets", default="", metavar="'SET ...'",
                   help="dev/test sets to prepare (default: dev-clean dev-other test-clean test-other; Mini "
                   "LibriSpeech: 'dev-clean-2 test-clean')")
    s.add_argument("--no-finetune", action="store_true", help="no Libri-light labeled sets (not needed, not written)")
    s.add_argument("--download", action="store_true", help="first fetch (resumable, MD5-checked) and extract the "
                   "archives that CORPUS_DIR lacks")
    s.add_argument("--url-base", default="https://www.openslr.org/resources/12",
                   help="where the LibriSpeech archives are (a mirror, e.g. https://us.openslr.org/resources/12)")
    s.add_argument("--mini-url-base", default="https://www.openslr.org/resources/31",
                   help="where the Mini LibriSpeech archives are (train-clean-5, dev-clean-2)")
    s.add_argument("corpus_dir", help="holds LibriSpeech/<set>/ and librispeech_finetuning/")
    s.add_argument("data_dir")

    s = verb(corpus, "custom", cmd_corpus_custom, "make Kaldi data dirs (train, dev, test; train_labeled and units.txt "
             "with --text) from a folder of audio in any format and sample rate (not 16 kHz mono: a 16 kHz mono copy)")
    s.add_argument("--text", default=None, help="'<file or utt id> <transcript>' lines for the labeled part")
    s.add_argument("--spk-from", default="dir", help="speaker: the dir holding the file, or none")
    s.add_argument("--split", default="auto", help="held-out dev/test: speaker (whole speakers), random (random "
                   "utterances), none (the folder's own dev/ and test/ subdirs); auto: speaker if 3+ speakers")
    s.add_argument("--dev-size", type=float, default=0.1, help="a fraction, or a number of speakers/utterances")
    s.add_argument("--test-size", type=float, default=0.1, help="as --dev-size; 0: no test set")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--min-char-count", type=int, default=10, help="warn about characters seen fewer times")
    s.add_argument("--units", default=None, help="a units file the transcripts must fit (default: their characters)")
    s.add_argument("--nj", type=int, default=1, help="files converted in parallel")
    s.add_argument("audio_dir")
    s.add_argument("copy_dir", help="where 16 kHz mono copies go (COPY_DIR/audio/)")
    s.add_argument("data_dir")

    # lm
    lm = verbs.add_parser("lm", help="word n-gram LMs for CTC decoding: build, check, perplexity, tune").add_subparsers(
        dest="sub", metavar="SUB", required=True
    )
    s = verb(lm, "build", cmd_lm_build, "train a Kneser-Ney ARPA (kaldingram) and its lexicon into an LM dir")
    s.add_argument("--order", type=int, default=3, help="n-gram order (3: see README, LM decoding)")
    s.add_argument("--dev", default=None, help="a data dir (or Kaldi text file) to record the perplexity of")
    s.add_argument("--units", default=None, help="the CTC model's units: its units.txt, or the bpe.model of BPE units (default: A-Z, apostrophe, |)")
    s.add_argument("--arpa", default=None, help="use this ARPA (e.g. LibriSpeech's 4-gram.arpa) instead of training "
                   "one; --order is then the ARPA's")
    s.add_argument("text")
    s.add_argument("out_dir")
    s = verb(lm, "text", cmd_lm_text, "normalised LM text from data dirs' transcripts or text files, without any "
             "line that is or contains a sentence of the --exclude data dirs")
    s.add_argument("--from", dest="sources", action="append", required=True, metavar="PATH",
                   help="a data dir (its text, ids dropped) or a file of sentences, one a line (repeatable)")
    s.add_argument("--exclude", action="append", required=True, metavar="DATA_DIR", help="repeat it for each eval set")
    s.add_argument("--units", default=None, help="the CTC units file the text is normalised for (default: A-Z, apostrophe, |)")
    s.add_argument("out", help="text file to write (and OUT.yaml with the counts)")
    s = verb(lm, "check-overlap", cmd_lm_check_overlap, "fail if a line of the LM text is or contains a sentence of the data dirs")
    s.add_argument("--units", default=None, help="the units file the sentences are normalised for (as for lm text)")
    s.add_argument("lm_text")
    s.add_argument("data_dirs", nargs="+")
    from sslseq.asr.lm_tune import DEFAULT_BEAM, DEFAULT_LM_WEIGHTS, DEFAULT_WORD_SCORES

    s = verb(lm, "tune", cmd_lm_tune, "grid-search the LM weight and word score on a DEV decode dir's cached emissions "
             "(writes DECODE_DIR/lm_tune/params.yaml and grid.tsv); refuses test sets")
    s.add_argument("--lm", required=True, metavar="LM_DIR")
    s.add_argument("--lm-weights", type=float, nargs="+", default=list(DEFAULT_LM_WEIGHTS), help="grid of LM weights")
    s.add_argument("--word-scores", type=float, nargs="+", default=list(DEFAULT_WORD_SCORES), help="grid of word scores")
    s.add_argument("--beam-size", type=int, default=DEFAULT_BEAM, help="beam of every grid point")
    s.add_argument("--nj", type=int, default=1, help="grid points searched in parallel (forked processes)")
    s.add_argument("--held-out", action="append", default=None, metavar="DATA_DIR",
                   help="a test data dir the tuning set must not overlap (default: the test* dirs beside it)")
    s.add_argument("--force", action="store_true", help="tune even on a set named test* or overlapping one")
    s.add_argument("--out-dir", default=None, help="default: DECODE_DIR/lm_tune")
    s.add_argument("decode_dir", help="the dev decode dir of 'sslseq decode' (holds emissions/), or an experiment "
                   "dir (then EXP/decode_dev)")
    s = verb(lm, "ppl", cmd_lm_ppl, "perplexity of an LM dir on a data dir's text (OOVs left out, counted)")
    s.add_argument("lm_dir")
    s.add_argument("text", help="a data dir or a Kaldi text file")

    # data
    data = verbs.add_parser("data", help="Kaldi data dirs: validate, subset, lhotse manifests").add_subparsers(
        dest="sub", metavar="SUB", required=True
    )
    s = verb(data, "validate", cmd_data_validate, "check every file and audio entry of a data dir")
    s.add_argument("--allow-pipes", action="store_true", help="allow 'cmd |' entries in wav.scp (runs them)")
    s.add_argument("--sample-rate", type=int, default=16000)
    s.add_argument("--units", default=None, help="unit list (one symbol per line) or a BPE bpe.model; default: A-Z, apostrophe, space")
    s.add_argument("--quick", action="store_true",
                   help="read the audio headers only, not the samples (NaN or infinite samples go unnoticed)")
    s.add_argument("--drop-bad", action="store_true",
                   help="when the only problems are utterances' audio (unreadable, not mono, NaN, < 25 ms), rewrite the "
                        "dir without them and list them in its bad_utts")
    s.add_argument("data_dir")
    s = verb(data, "bpe", cmd_data_bpe, "learn SentencePiece BPE units from a data dir's transcripts: OUT_DIR/bpe.model "
             "(the CTC units: data.units=OUT_DIR/bpe.model) and OUT_DIR/units.txt")
    s.add_argument("--vocab-size", type=int, required=True, help="pieces, e.g. 500 (LibriSpeech 100 h: 300-5000)")
    s.add_argument("data_dir")
    s.add_argument("out_dir")
    s = verb(data, "subset", cmd_data_subset, "subset a data dir by total duration, balanced over speakers")
    s.add_argument("--duration", type=parse_duration, required=True, help="e.g. 10min, 1h, 10h")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("src_dir")
    s.add_argument("dst_dir")
    s = verb(data, "from-lhotse", cmd_data_from_lhotse,
             "a data dir from lhotse manifests: recordings (+ supervisions) or cuts (needs: pip install lhotse)")
    s.add_argument("--recordings", default=None, help="a lhotse RecordingSet (.jsonl.gz)")
    s.add_argument("--supervisions", default=None,
                   help="its SupervisionSet: one utterance per supervision (without it: one unlabeled utterance per "
                        "recording)")
    s.add_argument("--cuts", default=None, help="a lhotse CutSet instead (one utterance per supervision of a cut, or "
                                                "per cut without supervisions)")
    s.add_argument("out_dir", help="the data dir to write (audio that is part of a recording goes to OUT_DIR/lhotse_audio/)")
    s = verb(data, "to-lhotse", cmd_data_to_lhotse,
             "lhotse manifests of a data dir: recordings + supervisions and/or cuts (needs: pip install lhotse)")
    s.add_argument("--recordings", default=None, help="RecordingSet to write (.jsonl.gz)")
    s.add_argument("--supervisions", default=None, help="SupervisionSet to write (.jsonl.gz)")
    s.add_argument("--cuts", default=None, help="CutSet to write (.jsonl.gz)")
    s.add_argument("--allow-pipes", action="store_true",
                   help="run 'cmd |' entries of wav.scp once for their length (they become 'command' sources)")
    s.add_argument("data_dir")

    # feats
    feats = verbs.add_parser("feats", help="feature extraction").add_subparsers(dest="sub", metavar="SUB", required=True)
    s = verb(feats, "dump", cmd_feats_dump, "compute features of a data dir into shards <rank>_<nj>.npy/.len")
    s.add_argument("--type", choices=["mfcc", "fbank", "layer"], default="mfcc")
    s.add_argument("--nj", type=int, default=1, help="number of shards")
    s.add_argument("--rank", type=int, default=None, help="shard to write (default: all shards)")
    s.add_argument("--device", default="cpu")
    s.add_argument("--checkpoint", default=None, help="experiment dir of a trained model (--type layer)")
    s.add_argument("--layer", type=int, default=None, help="encoder layer to dump (--type layer)")
    s.add_argument("--allow-pipes", action="store_true")
    s.add_argument("--no-resample", action="store_true", help="refuse audio at another sample rate")
    s.add_argument("--skip-bad", action="store_true", help="skip unreadable utterances, listing them in bad_utts")
    s.add_argument("data_dir")
    s.add_argument("out_dir")
    s = verb(feats, "check", cmd_feats_check, "check that all shards of a feature dir are complete, with the sizes "
             "and SHA-256s recorded when they were written (<rank>_<nj>.sums)")
    s.add_argument("--nj", type=int, required=True)
    s.add_argument("--quick", action="store_true", help="check file sizes only, not checksums")
    s.add_argument("feat_dir")

    # kmeans
    km = verbs.add_parser("kmeans", help="offline k-means targets").add_subparsers(dest="sub", metavar="SUB", required=True)
    s = verb(km, "fit", cmd_kmeans_fit, "fit k-means (k-means++ init) on a sample of frames; under torchrun, "
             "each process reads its block of the sample and the cluster statistics are all-reduced")
    s.add_argument("--k", type=int, default=100)
    s.add_argument("--sample-frac", type=float, default=1.0, help="fraction of utterances to sample frames from")
    s.add_argument("--max-frames", type=int, default=2_000_000, help="cap on sampled frames")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device", default="auto")
    s.add_argument("feat_dir")
    s.add_argument("model")
    s = verb(km, "label", cmd_kmeans_label, "label every utterance with the nearest centroid (--nj jobs: "
             "--rank R labels block R into OUT.km.parts/; without --rank, missing parts are labelled and joined)")
    s.add_argument("--device", default="auto")
    s.add_argument("--nj", type=int, default=1, help="number of labelling jobs (blocks of utterances)")
    s.add_argument("--rank", type=int, default=None, help="label only this block (default: all, then join into OUT.km)")
    s.add_argument("model")
    s.add_argument("feat_dir")
    s.add_argument("out", help="OUT.km; dict.km.txt and the label rate are written beside it")

    # train
    s = verb(verbs, "train", cmd_train, "train a model (pretraining or CTC fine-tuning) from a YAML config")
    s.add_argument("--fingerprint", action="store_true",
                   help="print the fingerprint of the resolved config (the YAML, the model_config it includes, the "
                   "overrides; what a recipe's stage marker holds) and train nothing")
    s.add_argument("config")
    s.add_argument("overrides", nargs="*", help="key=value overrides, e.g. optim.lr=1e-4 out_dir=exp/x")

    # decode / score / results
    s = verb(verbs, "decode", cmd_decode, "CTC decoding (greedy or prefix beam search) of a data dir, then WER")
    s.add_argument("--device", default="cpu")
    s.add_argument("--beam", type=int, default=1, help="1: greedy; >1: CTC prefix beam search")
    s.add_argument("--allow-pipes", action="store_true")
    s.add_argument("--batch-seconds", type=float, default=200.0, help="audio seconds per batch")
    s.add_argument("--nj", type=int, default=1, help="blocks of utterances (each decoded by one --rank job)")
    s.add_argument("--rank", type=int, default=None,
                   help="decode only this block into OUT_DIR/parts; without it: decode missing blocks, join, score")
    s.add_argument("--lm", default=None, metavar="LM_DIR",
                   help="also decode with this word n-gram LM (sslseq lm build) into OUT_DIR/lm/, from the cached emissions")
    s.add_argument("--lm-params", default=None, metavar="FILE", help="tuned LM parameters (params.yaml of sslseq lm tune)")
    s.add_argument("--lm-weight", type=float, default=None, help="LM weight (on log10 probabilities; default 1.0 or --lm-params)")
    s.add_argument("--word-score", type=float, default=None, help="score added per word (default 0.0 or --lm-params)")
    s.add_argument("--beam-size", type=int, default=None, help="LM search beam (default 50 or --lm-params)")
    s.add_argument("exp_dir")
    s.add_argument("data_dir")
    s.add_argument("out_dir")
    s = verb(verbs, "score", cmd_score, "WER of hypotheses against references (Kaldi text files)")
    s.add_argument("--out-dir", default=None, help="write wer summary and per-utterance errors here")
    s.add_argument("ref")
    s.add_argument("hyp")
    s = verb(verbs, "results", cmd_results, "collect scored decode dirs into a RESULTS.md table and RESULTS.png curves")
    s.add_argument("--out", required=True)
    s.add_argument("decode_dirs", nargs="+")
    s = verb(verbs, "plot", cmd_plot, "learning curves of experiment dirs (and the pretraining runs CTC ones start from) as a PNG")
    s.add_argument("--out", required=True, help="PNG file to write")
    s.add_argument("exp_dirs", nargs="+", help="pretraining or CTC experiment dirs (each with log/train.jsonl)")

    # config
    cfg = verbs.add_parser("config", help="read recipe configs").add_subparsers(dest="sub", metavar="SUB", required=True)
    s = verb(cfg, "get", cmd_config_get, "print one value of a YAML file (recipes read per-iteration settings this way)")
    s.add_argument("--default", default=None, help="print this when the key is absent instead of failing")
    s.add_argument("file")
    s.add_argument("key", help="dotted path; list items by index, e.g. iterations.0.layer")
    s = verb(cfg, "needs-labels", cmd_config_family_fact,
             "true if the model of a training YAML learns from k-means labels (HuBERT), else false")
    s.add_argument("file")
    s.set_defaults(fact="needs_labels")
    s = verb(cfg, "default-ctc", cmd_config_family_fact,
             "the recipes/conf/ CTC config that fine-tunes the model of a training YAML by default")
    s.add_argument("file")
    s.set_defaults(fact="default_ctc_config")

    # bench
    bench = verbs.add_parser("bench", help="benchmarks against references measured in the same run").add_subparsers(
        dest="what", metavar="WHAT", required=True
    )
    s = verb(bench, "feats", cmd_bench, "MFCC/fbank throughput vs kaldi-native-fbank")
    s.add_argument("--seconds", type=float, default=600.0, help="audio seconds to process")
    s.add_argument("--batch-size", type=int, default=16)
    s = verb(bench, "kmeans", cmd_bench, "k-means fit time and inertia vs scikit-learn MiniBatchKMeans and faiss")
    s.add_argument("--frames", type=int, default=1_000_000)
    s.add_argument("--dim", type=int, default=39)
    s.add_argument("--k", type=int, default=500)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--skip", nargs="*", default=[], choices=["sklearn", "faiss"], help="references to leave out")
    s = verb(bench, "train", cmd_bench, "a pretraining step of sslseq's wav2vec 2.0 vs transformers' Wav2Vec2ForPreTraining, "
             "or in fp32 vs bf16 (--dtype both, --agree-steps)")
    s.add_argument("--model", default="wav2vec2", choices=["wav2vec2", "hubert"],
                   help="hubert: --dtype both only (no transformers pretraining reference)")
    s.add_argument("--size", choices=["tiny", "base", "cpu"], default=None,
                   help="model config recipes/conf/model_<model>_<size>.yaml (default: base on CUDA, tiny on CPU; "
                   "cpu: the recipe's fbank 25 Hz config, --dtype both only)")
    s.add_argument("--batch", type=int, default=4, help="utterances per batch")
    s.add_argument("--seconds", type=float, default=8.0, help="seconds per utterance")
    s.add_argument("--device", default="auto")
    s.add_argument("--dtype", choices=["fp32", "bf16", "both"], default="fp32",
                   help="bf16: autocast (CUDA or CPU); both: sslseq's step in fp32 and bf16 side by side, no reference")
    s.add_argument("--agree-steps", type=int, default=0,
                   help="also train N steps from the same init in fp32 and bf16 and print both loss curves")
    s.add_argument("--steps", type=int, default=5, help="timed steps (median)")
    s.add_argument("--warmup", type=int, default=2)
    s.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", default=None, help="write the records as JSON")
    s = verb(bench, "kernels", cmd_bench, "Gumbel quantizer / contrastive loss kernels: time and peak memory per path vs reference")
    s.add_argument("--out", default=None, help="write the records as JSON to this file")
    s.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    s.add_argument("--repeats", type=int, default=3, help="timed runs per path (best is kept)")
    s.add_argument("--shapes", nargs="*", choices=["base", "large", "tiny"], default=None,
                   help="default: base and large (tiny: a smoke test of the benchmark)")
    s.add_argument("--ops", nargs="*", choices=["gumbel_quantize", "contrastive_loss"], default=None, help="default: both")
    s = verb(bench, "gpu", cmd_bench, "the GPU check in one command (CUDA tests, NCCL, kernel and training benchmarks, "
             "pretraining throughput) under a deadline; tools/gpu_check.sh runs it on a GPU machine")
    s.add_argument("--out", default=None, help="where gpu_check.{json,md,log} go (default: $OUT if set, else gpu_check/)")
    s.add_argument("--dry-run", action="store_true",
                   help="every step on the CPU on tiny shapes (Triton interpreter, gloo, compile backend eager)")
    s.add_argument("--deadline", type=float, default=None,
                   help="seconds for all steps (default: 420 on a GPU, 900 for --dry-run); later steps are skipped")
    s.add_argument("--only", nargs="*", default=None, metavar="STEP",
                   help="run only these steps (env always runs): env tests nccl kernels train throughput throughput_compile")
    s.add_argument("--skip", nargs="*", default=None, metavar="STEP", help="leave these steps out")
    s.add_argument("--work", default=None, help="scratch dir (default: a new temporary dir)")

    # convert
    s = verb(verbs, "convert", cmd_convert, "import a transformers/fairseq/fairseq2 checkpoint as an experiment dir, "
             "or export an experiment to transformers")
    direction = s.add_mutually_exclusive_group(required=True)
    direction.add_argument("--from", dest="from_", choices=["hf", "fairseq", "fairseq2"],
                           help="SRC is a save_pretrained dir (hf) or a checkpoint file; OUT_DIR becomes an exp dir")
    direction.add_argument("--to", choices=["hf"], help="SRC is an exp dir; OUT_DIR becomes a transformers dir")
    s.add_argument("--dict", default=None, help="fairseq CTC checkpoints: the dict.ltr.txt it was fine-tuned with (units.txt)")
    s.add_argument("--num-heads", type=int, default=None, help="attention heads, for checkpoints without a config")
    s.add_argument("--norm-order", choices=["pre", "post"], default=None,
                   help="Transformer LayerNorm placement, for fairseq checkpoints without a config")
    s.add_argument("--overwrite", action="store_true", help="replace the files of an existing OUT_DIR")
    s.add_argument("src")
    s.add_argument("out_dir")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_main(lambda: args.fn(args))


if __name__ == "__main__":
    sys.exit(main())
