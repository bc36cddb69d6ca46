"""Collect scored decode dirs into a markdown results table (``RESULTS.md``) and draw the
learning curves of their experiments beside it (``RESULTS.png``, ``sslseq.asr.curves``)."""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from sslseq.utils import SslseqError, atomic_write_text, get_logger

log = get_logger(__name__)


@dataclass
class _Row:
    decode_dir: Path
    exp_dir: Path  # as decode.yaml names it
    exp_path: Path  # where it is from here
    data_set: str
    init: str  # "none" or the pretrained experiment's path
    model: str
    pretrain_model: str | None
    train_data: str | None
    wer: dict[str, Any]
    decode: dict[str, Any]
    lm_wer: dict[str, Any] | None = None  # decode_dir/lm/ (sslseq decode --lm), when there
    lm_decode: dict[str, Any] | None = None


def _read_yaml(path: Path, hint: str) -> dict[str, Any]:
    if not path.is_file():
        raise SslseqError(f"{path}: not found; {hint}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise SslseqError(f"{path}: not valid YAML ({e}); re-run the step that wrote it") from None
    if not isinstance(data, dict):
        raise SslseqError(f"{path}: expected a mapping of keys to values; re-run the step that wrote it")
    return data


def _model_name(cfg: dict[str, Any]) -> str:
    """The model's registry name, wherever the config keeps it."""
    m = cfg.get("model")
    if isinstance(m, str):
        return m
    if isinstance(m, dict):
        for key in ("name", "arch", "type", "encoder"):
            if isinstance(m.get(key), str):
                return m[key]
    for key in ("model_name", "name", "arch"):
        if isinstance(cfg.get(key), str):
            return cfg[key]
    return "?"


def _train_data(cfg: dict[str, Any]) -> str | None:
    d = cfg.get("data")
    if isinstance(d, dict) and d.get("train") is not None:
        return str(d["train"])
    return None


def init_of(cfg: dict[str, Any]) -> str:
    """A CTC config's ``init``: "none" or the pretrained experiment's path as written."""
    init = cfg.get("init")
    if init is None and isinstance(cfg.get("model"), dict):
        init = cfg["model"].get("init")
    return "none" if init in (None, "", "none", "None") else str(init)


def resolve_recipe_path(path: str, base: Path) -> Path:
    """A path of decode.yaml/config.yaml: as given on the command line, i.e. relative to where
    the recipe ran; that is ``base`` or one of its parents (the parent of exp/ for recipes)."""
    p = Path(path)
    if p.is_absolute() or p.exists():
        return p
    for anchor in [base, *base.parents]:
        if (anchor / p).exists():
            return anchor / p
    return p


def _load_row(decode_dir: Path) -> _Row:
    from sslseq.models.exp_dir import CONFIG

    decode_dir = Path(decode_dir)
    wer = _read_yaml(decode_dir / "wer.yaml", "score the decode dir first ('sslseq decode' with a data dir that has text, or 'sslseq score --out-dir')")
    dec = _read_yaml(decode_dir / "decode.yaml", "decode the data set first with 'sslseq decode'")
    for key in ("exp_dir", "data_dir"):
        if key not in dec:
            raise SslseqError(f"{decode_dir / 'decode.yaml'}: no '{key}' entry; re-run 'sslseq decode'")
    exp_dir = resolve_recipe_path(str(dec["exp_dir"]), decode_dir.resolve())
    cfg = _read_yaml(exp_dir / CONFIG, f"{exp_dir} must be the trained CTC experiment that {decode_dir} was decoded with")
    init = init_of(cfg)
    pretrain_model = None
    if init != "none":
        init_cfg = resolve_recipe_path(init, exp_dir.resolve()) / CONFIG
        if init_cfg.is_file():
            icfg = _read_yaml(init_cfg, "")
            pretrain_model = _model_name(icfg)
            steps = (icfg.get("optim") or {}).get("max_steps") if isinstance(icfg.get("optim"), dict) else None
            if steps is not None:
                pretrain_model += f", {steps} steps"
    lm_wer = lm_dec = None
    lm_dir = decode_dir / "lm"
    if (lm_dir / "wer.yaml").is_file():
        lm_wer = _read_yaml(lm_dir / "wer.yaml", "")
        lm_dec = _read_yaml(lm_dir / "decode.yaml", f"re-run 'sslseq decode --lm' into {decode_dir}")
    return _Row(
        lm_wer=lm_wer,
        lm_decode=lm_dec,
        decode_dir=decode_dir,
        exp_dir=Path(str(dec["exp_dir"])),
        exp_path=exp_dir,
        data_set=Path(str(dec["data_dir"])).name,
        init=init,
        model=_model_name(cfg),
        pretrain_model=pretrain_model,
        train_data=_train_data(cfg),
        wer=wer,
        decode=dec,
    )


def _recipe_name(out: Path) -> str:
    """``egs/<corpus>/run.sh`` when ``out`` lies inside a corpus directory."""
    parts = out.resolve().parts
    for i in range(len(parts) - 1):
        if parts[i] == "egs":
            return f"egs/{parts[i + 1]}/run.sh"
    return "egs/<corpus>/run.sh"


def _fmt(x: Any, digits: int = 2) -> str:
    return f"{float(x):.{digits}f}" if x is not None else "-"


def relative_reduction(baseline: float, improved: float) -> float | None:
    """Relative error reduction in percent; None when the baseline has no errors."""
    if baseline <= 0:
        return None
    return 100.0 * (baseline - improved) / baseline


def _curves_section(rows: list[_Row], out: Path) -> list[str]:
    """Draw the learning curves beside ``out`` (``RESULTS.png``); the markdown that shows them."""
    from sslseq.asr.curves import plot_curves

    exp_dirs = list(dict.fromkeys(r.exp_path for r in rows))
    recipe = _recipe_name(out)
    title = "Learning curves" + (f" ({recipe})" if "<corpus>" not in recipe else "")
    png, notes = plot_curves(exp_dirs, out.with_suffix(".png"), title=title)
    for r in rows:  # name experiments as decode.yaml does, not by where they were found
        notes = [n.replace(str(r.exp_path), str(r.exp_dir)) for n in notes]
    lines = ["", "## Learning curves", ""]
    if png is not None:
        lines += [f"![learning curves]({png.name})", "",
                  "Pretraining loss and masked-frame accuracy, and the CTC runs' dev CER/WER (greedy, "
                  "every `valid_interval` steps) against update steps, from each experiment's "
                  "`log/train.jsonl` (`sslseq plot` draws the same for any experiment dirs)."]
    for n in notes:
        log.warning("curves: %s", n)
    return lines + ([""] if notes else []) + [f"- {n}" for n in notes]


def write_results(decode_dirs: list[Path], out: Path) -> str:
    """Markdown table of every decode dir's WER/CER, written atomically to ``out``."""
    if not decode_dirs:
        raise SslseqError("no decode dirs given; pass the decode_<set> dirs written by 'sslseq decode'")
    rows = [_load_row(Path(d)) for d in decode_dirs]
    out = Path(out)
    lines = [
        "# Results",
        "",
        f"Produced by `{_recipe_name(out)}` stage 7: "
        f"`sslseq results --out {shlex.quote(str(out))} {' '.join(shlex.quote(str(d)) for d in decode_dirs)}`",
        "",
    ]
    with_lm = any(r.lm_wer is not None for r in rows)
    if with_lm:
        lines += [
            "Greedy: best path of the CTC model alone. LM: lexicon beam search with the word n-gram LM, its weight "
            "and word score tuned on dev (`sslseq lm tune`).",
            "",
            "| experiment | model | init / pretraining | data set | WER % | CER % | LM WER % | LM CER % | "
            "LM weight / word score | #words | sub / del / ins |",
            "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | --- | ---: | --- |",
        ]
    else:
        lines += [
            "| experiment | model | init / pretraining | data set | WER % | CER % | #words | sub / del / ins |",
            "| --- | --- | --- | --- | ---: | ---: | ---: | --- |",
        ]
    for r in rows:
        if r.init == "none":
            init = "none (from scratch)"
        else:
            init = f"`{r.init}`" + (f" ({r.pretrain_model})" if r.pretrain_model else "")
        w = r.wer
        lm_cols = ""
        if with_lm:
            lw = r.lm_wer or {}
            p = (r.lm_decode or {}).get("params") or {}
            tuned = f"{p['lm_weight']:g} / {p['word_score']:g}" if p else "-"
            lm_cols = f"{_fmt(lw.get('wer'))} | {_fmt(lw.get('cer'))} | {tuned} | "
        lines.append(
            f"| `{r.exp_dir}` | {r.model} | {init} | {r.data_set} | {_fmt(w.get('wer'))} | {_fmt(w.get('cer'))} | "
            f"{lm_cols}{w.get('n_ref_words', '-')} | {w.get('n_sub', '-')} / {w.get('n_del', '-')} / {w.get('n_ins', '-')} |"
        )

    # Pretrained vs from-scratch pairs on the same test set (and, where the configs say,
    # fine-tuned on the same labeled data): the number the recipe exists to measure.
    notes = []
    for scratch in (r for r in rows if r.init == "none"):
        for pre in (r for r in rows if r.init != "none"):
            if pre.data_set != scratch.data_set:
                continue
            if pre.train_data and scratch.train_data and pre.train_data != scratch.train_data:
                continue
            red = relative_reduction(float(scratch.wer["wer"]), float(pre.wer["wer"]))
            what = "n/a (the from-scratch model makes no errors)" if red is None else f"{red:.1f} %"
            notes.append(
                f"- {pre.data_set}: relative WER reduction from pretraining: {what} "
                f"(`{pre.exp_dir}` {_fmt(pre.wer['wer'])} vs `{scratch.exp_dir}` {_fmt(scratch.wer['wer'])})"
            )
            if pre.lm_wer and scratch.lm_wer:
                red = relative_reduction(float(scratch.lm_wer["wer"]), float(pre.lm_wer["wer"]))
                what = "n/a (the from-scratch model makes no errors)" if red is None else f"{red:.1f} %"
                notes.append(f"- {pre.data_set}: with the LM: {what} ({_fmt(pre.lm_wer['wer'])} vs {_fmt(scratch.lm_wer['wer'])})")
    for r in rows:
        if r.lm_wer is not None and r.wer.get("wer") is not None:
            red = relative_reduction(float(r.wer["wer"]), float(r.lm_wer["wer"]))
            if red is not None:
                notes.append(f"- `{r.exp_dir}` {r.data_set}: the LM lowers WER by {red:.1f} % relative "
                             f"({_fmt(r.wer['wer'])} → {_fmt(r.lm_wer['wer'])})")
    if notes:
        lines += ["", *notes]

    lines += _curves_section(rows, out)
    lines += ["", "Decoding commands:", ""]
    for r in rows:
        d = r.decode
        beam = int(d.get("beam", 1))
        search = "greedy" if beam == 1 else f"prefix beam search, beam {beam}"
        rtf = f", RTF {_fmt(d.get('rtf'), 4)} on {d.get('device', '?')}" if d.get("rtf") is not None else ""
        lines.append(
            f"- `sslseq decode {'' if beam == 1 else f'--beam {beam} '}{shlex.quote(str(d['exp_dir']))} {shlex.quote(str(d['data_dir']))} "
            f"{shlex.quote(str(r.decode_dir))}` ({search}{rtf})"
        )
        if r.lm_decode is not None:
            ld = r.lm_decode
            p = ld.get("params") or {}
            lrtf = f", search RTF {_fmt(ld.get('search_rtf'), 4)}" if ld.get("search_rtf") is not None else ""
            lines.append(
                f"  - LM: `--lm {shlex.quote(str(ld.get('lm_dir')))}` ({ld.get('lm_order', '?')}-gram), lm_weight "
                f"{p.get('lm_weight')}, word_score {p.get('word_score')}, beam {p.get('beam_size')}{lrtf}; "
                f"`{r.decode_dir}/lm/`"
            )
    text = "\n".join(lines) + "\n"
    atomic_write_text(out, text)
    log.info("wrote %s (%d row(s))", out, len(rows))
    return text
