"""Kaldi data dirs: wav.scp, text, utt2spk, spk2utt, utt2dur.

Files are ``<key> <value>`` lines sorted in C (byte) order with unique keys. Utterance
ids start with their speaker id so that sorting by utterance and by speaker agree.
"""

from __future__ import annotations

import os
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from sslseq.audio import MIN_AUDIO_SECONDS, audio_info, read_audio
from sslseq.data.text import CharTokenizer, PieceTokenizer, Tokenizer, load_tokenizer
from sslseq.utils import SslseqError, atomic_write_text, get_logger, progress

log = get_logger(__name__)

DUR_TOLERANCE = 0.05  # seconds; utt2dur vs the audio's real length
_MAX_ERRORS_SHOWN = 10


def c_key(s: str) -> bytes:
    """Sort key of LC_ALL=C sort: raw bytes."""
    return s.encode("utf-8", "surrogateescape")


def c_sorted(keys) -> list[str]:
    return sorted(keys, key=c_key)


BOM = "\ufeff"  # a UTF-8 byte order mark (some editors write one): not part of the first key


def _invalid_utf8(raw: bytes) -> int | None:
    """Byte offset in ``raw`` of its first byte that is not valid UTF-8 (None: all valid)."""
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return e.start
    return None


def _read_lines(
    path: Path, *, bytes_values: bool = False, warn: bool = True
) -> tuple[list[tuple[int, str]], list[str]]:
    """(line_no, text) of each line (newline stripped; bytes that are not UTF-8 surrogate-escaped,
    so that they round-trip) and the problems: invalid UTF-8, named by line and byte offset, unless
    ``bytes_values`` (wav.scp: a file name need not be UTF-8, only the key must). A UTF-8 BOM at
    the start of the file is dropped with a warning."""
    lines: list[tuple[int, str]] = []
    problems: list[str] = []
    offset = 0  # of the line in the file, in bytes
    with open(path, "rb") as f:
        for no, raw in enumerate(f, 1):
            start = 0
            if no == 1 and raw.startswith(BOM.encode()):
                if warn:
                    log.warning("%s starts with a UTF-8 byte order mark; it is ignored (Kaldi's tools do not ignore it: "
                                "remove it, e.g. sed -i '1s/^\\xEF\\xBB\\xBF//' %s)", path, path)
                start = len(BOM.encode())
            body = raw[start:].rstrip(b"\r\n")
            bad = _invalid_utf8(body)
            if bad is not None and bytes_values:  # only the key must be UTF-8
                key_end = len(body.split(maxsplit=1)[0]) if body.split() else 0
                key_start = len(body) - len(body.lstrip())
                bad = bad if bad < key_start + key_end else None
            if bad is not None:
                at = start + bad
                problems.append(
                    f"{path}:{no}: invalid UTF-8: byte 0x{raw[at]:02X} at byte offset {offset + at} of the file "
                    f"(byte {at + 1} of the line); data files must be UTF-8: convert the file "
                    "(e.g. 'iconv -f latin1 -t utf-8')"
                )
            lines.append((no, body.decode("utf-8", "surrogateescape")))
            offset += len(raw)
    return lines, problems


def _has_escapes(s: str) -> bool:
    """Whether ``s`` holds bytes that were not UTF-8 (surrogate-escaped by _read_lines)."""
    return any("\udc80" <= c <= "\udcff" for c in s)


def _tokens_start(tokens: list[str], ids: dict[str, list[str]]) -> str | None:
    """The id of ``ids`` (id -> its whitespace-separated parts) that ``tokens`` start with."""
    for spaced, parts in ids.items():
        if tokens[: len(parts)] == parts:
            return spaced
    return None


def _spaced_ids(path: Path, only: str | None = None) -> dict[str, list[str]]:
    """Utterance ids that hold whitespace (``spk1 utt01``), each split at it, as found in the data
    dir's fixed-format files: a utt2dur line of more than two fields ending in a number, or a
    utt2spk line of more than two fields whose leading fields also start a two-field-longer
    wav.scp line. Kaldi splits a line at its first whitespace, so such an id would otherwise be
    reported as unrelated problems of every file; it is one problem (``_parse_map``). ``only``:
    read that one file of the dir, no other."""
    def fields(name: str) -> list[list[str]]:
        f = path / name
        if (only is not None and name != only) or not f.is_file():
            return []
        return [text.split() for _, text in _read_lines(f, bytes_values=True, warn=False)[0]]

    found: dict[str, list[str]] = {}
    for tokens in fields("utt2dur"):
        if len(tokens) > 2:
            try:
                float(tokens[-1])
            except ValueError:
                continue
            found[" ".join(tokens[:-1])] = tokens[:-1]
    wav_heads = {" ".join(t[:-1]) for t in fields("wav.scp") if len(t) > 2 and not t[-1].endswith("|")}
    for tokens in fields("utt2spk"):
        if len(tokens) > 2 and " ".join(tokens[:-1]) in wav_heads:
            found.setdefault(" ".join(tokens[:-1]), tokens[:-1])
    return found


def _parse_map(
    path: Path, spaced: dict[str, list[str]] | None = None, seen: dict[str, list[str]] | None = None
) -> tuple[list[tuple[str, str, int]], list[str]]:
    """(key, value, line_no) entries and problem lines; never raises on content.

    Lines of the ids in ``spaced`` (``_spaced_ids``) are left out, and in spk2utt those ids are
    left out of the lists; where each was met goes into ``seen`` (id -> ['file:line', ...])."""
    entries: list[tuple[str, str, int]] = []
    first_line: dict[str, int] = {}
    prev: str | None = None
    spaced = spaced or {}
    lines, problems = _read_lines(path, bytes_values=path.name == "wav.scp")
    for no, line in lines:
        parts = line.strip().split(maxsplit=1)
        if not parts:
            problems.append(f"{path}:{no}: empty line; remove it")
            continue
        tokens = line.split()
        hit = _tokens_start(tokens, spaced) if spaced and path.name != "spk2utt" else None
        if hit is not None:
            if seen is not None:
                seen.setdefault(hit, []).append(f"{path}:{no}")
            continue
        key, value = parts[0], (parts[1].strip() if len(parts) > 1 else "")
        if spaced and path.name == "spk2utt":
            kept, i = [], 1
            while i < len(tokens):
                hit = _tokens_start(tokens[i:], spaced)
                if hit is None:
                    kept.append(tokens[i])
                    i += 1
                    continue
                if seen is not None:
                    seen.setdefault(hit, []).append(f"{path}:{no}")
                i += len(spaced[hit])
            value = " ".join(kept)
        if not value:
            problems.append(f"{path}:{no}: {key}: has no value (expected '<key> <value>')")
            continue
        if key in first_line:
            problems.append(f"{path}:{no}: {key}: duplicate key (first on line {first_line[key]}); remove one")
            continue
        if prev is not None and c_key(key) < c_key(prev):
            problems.append(f"{path}:{no}: {key}: not sorted (comes after '{prev}'); sort the file with 'LC_ALL=C sort'")
        first_line[key] = no
        prev = key
        entries.append((key, value, no))
    return entries, problems


def _spaced_problems(spaced: dict[str, list[str]], seen: dict[str, list[str]]) -> list[str]:
    """One problem per utterance id with whitespace, at its first line (wav.scp's if it has one)."""
    out = []
    for spaced_id, parts in spaced.items():
        where = sorted(seen.get(spaced_id, []), key=lambda w: (not w.rsplit(":", 1)[0].endswith("wav.scp"), w))
        if not where:
            continue
        also = f" (also on {', '.join(Path(w).name for w in where[1:])})" if len(where) > 1 else ""
        out.append(
            f"{where[0]}: utterance id '{spaced_id}' contains a space (after '{parts[0]}'){also}; ids cannot "
            "hold whitespace (Kaldi splits each line at the first one): replace it, e.g. by '-', in every file of "
            "the data dir"
        )
    return out


def _raise_problems(problems: list[str]) -> None:
    shown = problems[:_MAX_ERRORS_SHOWN]
    more = f"\n... and {len(problems) - len(shown)} more" if len(problems) > len(shown) else ""
    raise SslseqError("\n".join(shown) + more)


def read_kaldi_map(
    path: str | os.PathLike, *, allow_missing: bool = False, spaced: dict[str, list[str]] | None = None
) -> dict[str, tuple[str, int]]:
    """``key -> (value, line_no)``; malformed lines, duplicate keys and invalid UTF-8 (except in
    wav.scp's file names) are errors (order is not checked). An utterance id with whitespace is
    one error naming it; ``spaced``: such ids (``_spaced_ids``), by default those the file shows by
    itself (utt2dur's, whose value is one number; no other file is read)."""
    path = Path(path)
    if not path.is_file():
        if allow_missing:
            return {}
        raise SslseqError(f"{path}: file not found")
    if spaced is None:
        spaced = _spaced_ids(path.parent, only="utt2dur") if path.name == "utt2dur" else {}
    seen: dict[str, list[str]] = {}
    entries, problems = _parse_map(path, spaced, seen)
    problems = _spaced_problems(spaced, seen) + [p for p in problems if ": not sorted" not in p]
    if problems:
        _raise_problems(problems)
    return {k: (v, no) for k, v, no in entries}


@dataclass
class DataDir:
    path: Path
    utts: list[str]
    wav: dict[str, str]
    text: dict[str, str] = field(default_factory=dict)
    utt2spk: dict[str, str] = field(default_factory=dict)
    utt2dur: dict[str, float] = field(default_factory=dict)

    @property
    def total_seconds(self) -> float:
        return float(sum(self.utt2dur.values()))

    def speakers(self) -> list[str]:
        return c_sorted(set(self.utt2spk.values()))


def _parse_durations(path: Path, m: dict[str, tuple[str, int]]) -> tuple[dict[str, float], list[str]]:
    durs: dict[str, float] = {}
    problems = []
    for utt, (value, no) in m.items():
        try:
            d = float(value)
        except ValueError:
            problems.append(f"{path}:{no}: {utt}: duration '{value}' is not a number")
            continue
        if not d > 0:
            problems.append(f"{path}:{no}: {utt}: duration {value} is not positive")
        durs[utt] = d
    return durs, problems


def _set_problems(
    ref_name: str, ref: dict[str, tuple[str, int]], path: Path, other: dict[str, tuple[str, int]], what: str
) -> list[str]:
    """Lines for utterances in one file but not the other, each at its own file:line."""
    problems = [f"{path}:{no}: {u}: in {path.name} but not in {ref_name}" for u, (_, no) in other.items() if u not in ref]
    problems += [f"{ref_name}:{no}: {u}: {what}" for u, (_, no) in ref.items() if u not in other]
    return problems


def load_data_dir(path: str | os.PathLike) -> DataDir:
    """Read a data dir; wav.scp, utt2spk and utt2dur are required, text is optional."""
    path = Path(path)
    if not path.is_dir():
        raise SslseqError(f"{path}: data dir not found")
    maps = {}
    spaced = _spaced_ids(path)
    if spaced:  # one error per such id, naming each line it is on
        seen: dict[str, list[str]] = {}
        for name in ("wav.scp", "text", "utt2spk", "spk2utt", "utt2dur"):
            if (path / name).is_file():
                _parse_map(path / name, spaced, seen)
        _raise_problems(_spaced_problems(spaced, seen))
    for name in ("wav.scp", "utt2spk", "utt2dur"):
        f = path / name
        if not f.is_file():
            hint = {
                "wav.scp": "a data dir needs '<utt> <wav path or cmd |>' lines in wav.scp",
                "utt2spk": "create it ('<utt> <spk>' lines; use '<utt> <utt>' if speakers are unknown)",
                "utt2dur": "create it with Kaldi's utils/data/get_utt2dur.sh, or re-run the corpus's local/prepare.sh (stage 0), "
                "then check the dir with 'sslseq data validate'",
            }[name]
            raise SslseqError(f"{f}: required file missing; {hint}")
        maps[name] = read_kaldi_map(f, spaced={})
    text_map = read_kaldi_map(path / "text", allow_missing=True, spaced={})
    wav_name = str(path / "wav.scp")
    problems: list[str] = []
    for name, m in (("utt2spk", maps["utt2spk"]), ("utt2dur", maps["utt2dur"])):
        problems += _set_problems(wav_name, maps["wav.scp"], path / name, m, f"missing from {name}")
    if text_map:
        problems += _set_problems(wav_name, maps["wav.scp"], path / "text", text_map, "no transcript in text")
    durs, dur_problems = _parse_durations(path / "utt2dur", maps["utt2dur"])
    problems += dur_problems
    if problems:
        _raise_problems(problems + ["(run 'sslseq data validate' on the dir for a full report)"])
    return DataDir(
        path=path,
        utts=c_sorted(maps["wav.scp"]),
        wav={u: v for u, (v, _) in maps["wav.scp"].items()},
        text={u: v for u, (v, _) in text_map.items()},
        utt2spk={u: v for u, (v, _) in maps["utt2spk"].items()},
        utt2dur=durs,
    )


def _lines(m: dict[str, str]) -> str:
    return "".join(f"{k} {m[k]}\n" for k in c_sorted(m))


def write_data_dir(
    path: str | os.PathLike,
    *,
    wav: dict[str, str],
    text: dict[str, str] | None,
    utt2spk: dict[str, str],
    utt2dur: dict[str, float],
) -> None:
    """Write wav.scp, text (if given), utt2spk, spk2utt and utt2dur, C-sorted, atomically."""
    path = Path(path)
    utts = set(wav)
    for name, m in (("text", text), ("utt2spk", utt2spk), ("utt2dur", utt2dur)):
        if m is None or (name == "text" and not m):
            continue
        if set(m) != utts:
            diff = c_sorted(set(m) ^ utts)[:5]
            raise SslseqError(f"{path}: {name} and wav.scp cover different utterances (e.g. {', '.join(diff)})")
    for u in utts:
        if any(c.isspace() for c in u) or any(c.isspace() for c in utt2spk[u]):
            raise SslseqError(f"{path}: utterance or speaker id {u!r} contains whitespace")
    spk2utt: dict[str, list[str]] = {}
    for u in c_sorted(utt2spk):
        spk2utt.setdefault(utt2spk[u], []).append(u)
    path.mkdir(parents=True, exist_ok=True)
    raw = "surrogateescape"  # file names that are not UTF-8 are written back as the bytes they were
    atomic_write_text(path / "wav.scp", _lines(wav), errors=raw)
    if text:
        atomic_write_text(path / "text", _lines(text), errors=raw)
    elif (path / "text").exists():
        (path / "text").unlink()  # a stale transcript file would disagree with wav.scp
    atomic_write_text(path / "utt2spk", _lines(utt2spk), errors=raw)
    atomic_write_text(path / "spk2utt", _lines({s: " ".join(us) for s, us in spk2utt.items()}), errors=raw)
    atomic_write_text(path / "utt2dur", _lines({u: f"{float(d):.3f}" for u, d in utt2dur.items()}), errors=raw)


def write_utterances(path: Path, d: DataDir, keep) -> None:
    """The data dir ``path`` with the utterances ``keep`` of ``d`` (a subset, or ``d`` without
    its bad ones)."""
    write_data_dir(
        path,
        wav={u: d.wav[u] for u in keep},
        text={u: d.text[u] for u in keep} if d.text else None,
        utt2spk={u: d.utt2spk[u] for u in keep},
        utt2dur={u: d.utt2dur[u] for u in keep},
    )


def _load_tokenizer(units: str | os.PathLike | Tokenizer | None) -> Tokenizer:
    if isinstance(units, (CharTokenizer, PieceTokenizer)):
        return units
    return load_tokenizer(units)


def _read_for_validation(
    path: Path, required: bool, problems: list[str], spaced: dict[str, list[str]], seen: dict[str, list[str]]
) -> list[tuple[str, str, int]] | None:
    if not path.is_file():
        if required:
            problems.append(f"{path}: required file missing")
        return None
    entries, p = _parse_map(path, spaced, seen)
    problems.extend(p)
    return entries


@dataclass
class Validation:
    """What ``check_data_dir`` found: every problem, one ``<file>:<line>: <utt>: <what>`` line
    each (empty: OK), and those of them that are one utterance's audio (utterance -> problem),
    which ``drop_utterances`` can fix by leaving the utterances out."""

    problems: list[str]
    bad_audio: dict[str, str]  # the first problem of each
    n_bad_audio: int = 0  # problems that are in bad_audio's utterances' audio

    @property
    def only_bad_audio(self) -> bool:
        """Whether leaving out the utterances of ``bad_audio`` would fix every problem."""
        return bool(self.bad_audio) and self.n_bad_audio == len(self.problems)


def validate_data_dir(path: str | os.PathLike, **kw) -> list[str]:
    """Every problem of a data dir (``check_data_dir(...).problems``; empty: OK)."""
    return check_data_dir(path, **kw).problems


def check_data_dir(
    path: str | os.PathLike,
    *,
    allow_pipes: bool = False,
    sample_rate: int = 16000,
    units: str | os.PathLike | Tokenizer | None = None,
    read_samples: bool = True,
) -> Validation:
    """Check every file and audio entry of a data dir.

    Audio shorter than one 25 ms frame is a problem (it has no features). ``read_samples``
    decodes every file too, so NaN or infinite samples are found here rather than when
    features are dumped; without it only the headers are read (``sslseq data validate --quick``)."""
    path = Path(path)
    if not path.is_dir():
        return Validation([f"{path}: data dir not found"], {})
    tok = _load_tokenizer(units)
    problems: list[str] = []
    spaced, seen = _spaced_ids(path), {}
    files = {
        name: _read_for_validation(path / name, name != "text", problems, spaced, seen)
        for name in ("wav.scp", "text", "utt2spk", "spk2utt", "utt2dur")
    }
    problems[:0] = _spaced_problems(spaced, seen)
    maps = {name: {k: (v, no) for k, v, no in e} for name, e in files.items() if e is not None}
    wav = maps.get("wav.scp")
    wav_name = str(path / "wav.scp")
    if wav is not None:
        checks = (("text", "no transcript in text"), ("utt2spk", "missing from utt2spk"), ("utt2dur", "missing from utt2dur"))
        for name, what in checks:
            if name in maps:
                problems += _set_problems(wav_name, wav, path / name, maps[name], what)
    if "utt2spk" in maps:
        problems += _check_speakers(path, maps["utt2spk"], maps.get("spk2utt"))
    durs: dict[str, float] = {}
    if "utt2dur" in maps:
        durs, p = _parse_durations(path / "utt2dur", maps["utt2dur"])
        problems += p
    if "text" in maps:
        for utt, (value, no) in maps["text"].items():
            if _has_escapes(value):
                continue  # invalid UTF-8: a problem of its own (_read_lines)
            bad = tok.check_text(value)
            if bad:
                shown = ", ".join(repr(c) for c in bad)
                problems.append(
                    f"{path / 'text'}:{no}: {utt}: characters not in the unit set: {shown} "
                    "(normalize the text, or pass --units with a units file that has them)"
                )
    found = Validation(problems, {})
    if wav is not None:
        for utt, msg in _check_audio(path, wav, durs, maps.get("utt2dur", {}), allow_pipes, sample_rate, read_samples):
            problems.append(msg)
            if utt:
                found.bad_audio.setdefault(utt, msg)
                found.n_bad_audio += 1
    return found


BAD_UTTS = "bad_utts"  # in a data dir: utterances drop_utterances left out, '<utt>\t<why>' lines


def drop_utterances(path: str | os.PathLike, bad: dict[str, str]) -> int:
    """The data dir's fixer: rewrite it without the utterances ``bad`` (utterance -> why) and add
    them to its ``bad_utts``. The new dir is written beside the old one and swapped in, so a
    reader sees either. Returns the number of utterances left."""
    path = Path(path)
    d = load_data_dir(path)
    keep = [u for u in d.utts if u not in bad]
    if not keep:
        raise SslseqError(f"{path}: every utterance has bad audio (e.g. {next(iter(bad.values()))}); nothing would be left")
    old_bad = path / BAD_UTTS
    listed = old_bad.read_text(encoding="utf-8", errors="surrogateescape") if old_bad.is_file() else ""
    tmp = path.parent / f".{path.name}.fixing"
    old = path.parent / f".{path.name}.old"
    for t in (tmp, old):
        if t.exists():
            shutil.rmtree(t)
    write_utterances(tmp, d, keep)
    atomic_write_text(tmp / BAD_UTTS, listed + "".join(f"{u}\t{bad[u]}\n" for u in c_sorted(bad) if u in d.wav),
                      errors="surrogateescape")
    os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old)
    return len(keep)


def _check_speakers(
    path: Path, utt2spk: dict[str, tuple[str, int]], spk2utt: dict[str, tuple[str, int]] | None
) -> list[str]:
    problems = []
    u2s_name = path / "utt2spk"
    # Kaldi needs utt2spk sorted by utterance to be sorted by speaker too.
    prev_spk = None
    for utt in c_sorted(utt2spk):
        spk, no = utt2spk[utt]
        if prev_spk is not None and c_key(spk) < c_key(prev_spk):
            problems.append(
                f"{u2s_name}:{no}: {utt}: speaker '{spk}' sorts before the previous utterance's speaker "
                f"'{prev_spk}'; make utterance ids start with the speaker id"
            )
        prev_spk = spk
    if spk2utt is None:
        return problems
    s2u_name = path / "spk2utt"
    listed: dict[str, str] = {}
    for spk, (value, no) in spk2utt.items():
        for utt in value.split():
            if utt in listed:
                problems.append(f"{s2u_name}:{no}: {utt}: listed twice (speakers '{listed[utt]}' and '{spk}')")
                continue
            listed[utt] = spk
            if utt not in utt2spk:
                problems.append(f"{s2u_name}:{no}: {utt}: in spk2utt but not in utt2spk")
            elif utt2spk[utt][0] != spk:
                problems.append(
                    f"{s2u_name}:{no}: {utt}: under speaker '{spk}' but utt2spk says '{utt2spk[utt][0]}'; "
                    "regenerate spk2utt from utt2spk (Kaldi utils/utt2spk_to_spk2utt.pl)"
                )
    for utt, (spk, no) in utt2spk.items():
        if utt not in listed:
            problems.append(f"{u2s_name}:{no}: {utt}: not listed in spk2utt; regenerate spk2utt from utt2spk")
    return problems


def _check_audio(
    path: Path,
    wav: dict[str, tuple[str, int]],
    durs: dict[str, float],
    dur_map: dict[str, tuple[str, int]],
    allow_pipes: bool,
    sample_rate: int,
    read_samples: bool,
) -> list[tuple[str, str]]:
    """(utterance, problem) of every audio entry that cannot be used (utterance "": a problem of
    another file, e.g. utt2dur, that leaving the utterance out would not fix)."""
    problems: list[tuple[str, str]] = []
    wav_name = path / "wav.scp"
    other_rates: dict[int, int] = {}
    for utt in progress(c_sorted(wav), desc=f"validate {path.name}", total=len(wav), unit="utt"):
        spec, no = wav[utt]
        where = f"{wav_name}:{no}: {utt}"
        try:
            sr, channels, frames = audio_info(spec, allow_pipes=allow_pipes, where=where)
        except SslseqError as e:
            problems.append((utt, str(e)))
            continue
        if channels != 1:
            problems.append(
                (utt, f"{where}: audio has {channels} channels, sslseq needs mono; downmix it (e.g. 'sox in.wav -c 1 out.wav')")
            )
        elif read_samples:
            try:  # at its own rate: this checks the samples, resampling is for feature dumping
                read_audio(spec, sample_rate=sr, allow_pipes=allow_pipes, resample=False, where=where)
            except SslseqError as e:
                problems.append((utt, str(e)))
        if frames < MIN_AUDIO_SECONDS * sr:
            problems.append((
                utt, f"{where}: {frames / sr:.4f} s of audio is shorter than one {1000 * MIN_AUDIO_SECONDS:g} ms frame, "
                "so it has no features; drop it from the data dir"
            ))
        if sr != sample_rate:
            other_rates[sr] = other_rates.get(sr, 0) + 1
            if other_rates[sr] == 1:
                log.warning(
                    "%s: audio is %d Hz, not %d Hz; it will be resampled when read (unless --no-resample)",
                    where, sr, sample_rate,
                )
        if utt in durs:
            real = frames / sr
            if abs(real - durs[utt]) > DUR_TOLERANCE:
                problems.append((  # the audio is fine: not for drop_utterances
                    "", f"{path / 'utt2dur'}:{dur_map[utt][1]}: {utt}: utt2dur says {durs[utt]:.3f} s but the audio "
                    f"is {real:.3f} s; recompute utt2dur"
                ))
    for sr, n in other_rates.items():
        log.warning("%s: %d utterance(s) are %d Hz instead of %d Hz", wav_name, n, sr, sample_rate)
    return problems


def subset_by_duration(src: str | os.PathLike, dst: str | os.PathLike, *, seconds: float, seed: int = 0) -> DataDir:
    """Write a subset of ``src`` with about ``seconds`` of audio, balanced over speakers.

    Speakers take turns (in a seeded order) giving one utterance each (their own order
    seeded too) until the total reaches ``seconds``; so it overshoots by less than one
    utterance and speakers' counts differ by at most one unless a speaker runs out.
    """
    d = load_data_dir(src)
    if seconds <= 0:
        raise SslseqError(f"subset duration must be positive, got {seconds} s")
    total = d.total_seconds
    if total < seconds:
        raise SslseqError(
            f"{src}: holds only {total:.1f} s ({total / 3600:.2f} h) of audio, less than the {seconds:.1f} s asked; "
            "ask for less or use a bigger source dir"
        )
    rng = random.Random(seed)
    by_spk: dict[str, list[str]] = {}
    for u in d.utts:
        by_spk.setdefault(d.utt2spk[u], []).append(u)
    order = c_sorted(by_spk)
    rng.shuffle(order)
    queues = []
    for spk in order:
        us = list(by_spk[spk])
        rng.shuffle(us)
        queues.append(us)
    chosen: list[str] = []
    acc = 0.0
    turn = 0
    while acc < seconds:
        queues = [q for q in queues if q]
        if not queues:  # only float rounding can get here: everything is taken
            break
        q = queues[turn % len(queues)]
        u = q.pop(0)
        chosen.append(u)
        acc += d.utt2dur[u]
        turn = turn % len(queues) + (1 if q else 0)
    keep = set(chosen)
    write_utterances(dst, d, keep)
    n_spk = len({d.utt2spk[u] for u in keep})
    log.info(
        "%s: %.1f s (%.2f h) in %d utterances from %d speakers (asked %.1f s)",
        dst, acc, acc / 3600, len(keep), n_spk, seconds,
    )
    return load_data_dir(dst)
