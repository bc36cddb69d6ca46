"""lhotse manifests <-> Kaldi data dirs (``sslseq data from-lhotse`` / ``sslseq data to-lhotse``).

lhotse (an optional extra: ``pip install lhotse``) is imported only inside these functions.

from-lhotse: one utterance per supervision (a recording without supervisions, or a cut without
any, is one unlabeled utterance). sslseq's data dirs have no Kaldi ``segments`` file, so an
utterance is a whole audio entry of wav.scp:
- a supervision that covers all of a one-channel recording whose audio is one file (``file``
  source) or one command (``command`` source: a ``cmd |`` entry, read only with --allow-pipes)
  and that has no lhotse transforms (speed perturbation, resampling) maps to that entry;
- anything else (part of a recording, another channel than the only one, several channels,
  URL / memory / shar sources, transforms) is read with lhotse and written as the utterance's
  own file under ``OUT_DIR/lhotse_audio/`` (FLAC when the samples are exactly 16-bit, else float WAV),
  so sslseq reads the very samples lhotse reads. Several channels (a supervision's or cut's
  channel list, or an unlabeled multi-channel recording) are averaged into one.
The audio keeps its sampling rate: sslseq's reader resamples when it reads (``sslseq/audio.py``).
"""

from __future__ import annotations

import gzip
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from sslseq.audio import audio_info, is_pipe
from sslseq.data.kaldi import (
    DUR_TOLERANCE, _check_speakers, _has_escapes, c_sorted, load_data_dir, read_kaldi_map, write_data_dir,
)
from sslseq.utils import SslseqError, atomic_path, get_logger, progress

log = get_logger(__name__)

AUDIO_SUBDIR = "lhotse_audio"  # OUT_DIR/lhotse_audio/: the utterances from-lhotse had to cut or mix itself
_EDGE = 1e-3  # seconds: a supervision this close to a recording's ends covers it


def _lhotse():
    try:
        import lhotse
    except ImportError:
        raise SslseqError("lhotse is not installed; pip install lhotse (or pip install 'sslseq[lhotse]')") from None
    return lhotse


# ---------------------------------------------------------------- reading manifests


def _manifest_items(path: Path, kind: str) -> list[tuple[str, object]]:
    """(where, object) of each item of a lhotse manifest of ``kind`` (recording, supervision, cut);
    ``where`` is ``file:line`` for JSON lines manifests (``.jsonl``, ``.jsonl.gz``)."""
    lhotse = _lhotse()
    from lhotse.serialization import deserialize_item

    path = Path(path)
    if not path.is_file():
        raise SslseqError(f"{path}: {kind} manifest not found")
    if not path.name.endswith((".jsonl", ".jsonl.gz")):  # .json / .yaml: lhotse reads it whole
        try:
            return [(f"{path}: item {i}", x) for i, x in enumerate(lhotse.load_manifest(path), 1)]
        except Exception as e:  # lhotse raises anything from KeyError to ValueError on a bad file
            raise SslseqError(f"{path}: not a lhotse manifest ({type(e).__name__}: {e})") from None
    items = []
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for no, line in enumerate(f, 1):
                where = f"{path}:{no}"
                if not line.strip():
                    continue
                try:
                    data = json.loads(line)
                except json.JSONDecodeError as e:
                    raise SslseqError(f"{where}: not JSON ({e}); is {path.name} a lhotse {kind} manifest?") from None
                if not isinstance(data, dict):
                    raise SslseqError(f"{where}: a JSON {type(data).__name__}, not a lhotse {kind}")
                items.append((where, _deserialize(deserialize_item, data, kind, where)))
    except (OSError, EOFError, UnicodeDecodeError) as e:  # not gzip, cut short, not UTF-8
        raise SslseqError(f"{path}: unreadable ({e}); re-create the manifest") from None
    return items


def _deserialize(deserialize_item, data: dict, kind: str, where: str):
    from lhotse import Recording, SupervisionSegment
    from lhotse.cut import Cut

    got = "cut" if "type" in data else "recording" if "sources" in data else "supervision"
    if got != kind:
        flag = {"cut": "--cuts", "recording": "--recordings", "supervision": "--supervisions"}[got]
        raise SslseqError(f"{where}: a lhotse {got}, not a {kind} (pass this manifest with {flag})")
    try:
        item = deserialize_item(dict(data))
    except Exception as e:  # a missing field is a KeyError, a wrong one a TypeError or ValueError
        raise SslseqError(f"{where}: not a valid lhotse {kind} ({type(e).__name__}: {e}); "
                          f"id {data.get('id')!r}") from None
    want = {"recording": Recording, "supervision": SupervisionSegment, "cut": Cut}[kind]
    if not isinstance(item, want):
        raise SslseqError(f"{where}: a {type(item).__name__}, not a lhotse {kind}")
    return item


# ---------------------------------------------------------------- manifests -> utterances


@dataclass
class _Utt:
    """One utterance to be: a span of a recording's channels."""

    utt: str
    spk: str
    text: str | None
    recording: object  # lhotse.Recording
    start: float
    duration: float
    channels: list[int]
    where: str  # the manifest line it comes from
    rec_where: str  # the line of its recording

    @property
    def rec_name(self) -> str:
        """The recording, and its manifest line where that is another line than ``where``'s."""
        other = "" if self.where.startswith(self.rec_where) else f" ({self.rec_where})"
        return f"recording {self.recording.id}{other}"


def _channels(channel, rec, where: str) -> list[int]:
    chans = list(channel) if isinstance(channel, (list, tuple)) else [int(channel)]
    bad = [c for c in chans if c not in rec.channel_ids]
    if bad:
        raise SslseqError(f"{where}: channel {bad[0]} is not one of recording {rec.id}'s channels {rec.channel_ids}")
    return chans


def _span(start: float, duration: float, lo: float, hi: float, where: str, of: str) -> tuple[float, float]:
    """(start, duration) clipped to [lo, hi]; more than DUR_TOLERANCE outside it is an error."""
    end = start + duration
    if duration <= 0 or start < lo - DUR_TOLERANCE or end > hi + DUR_TOLERANCE:
        raise SslseqError(f"{where}: span {start:.3f}-{end:.3f} s is not inside {of} ({lo:.3f}-{hi:.3f} s); "
                          "fix the manifest (lhotse: fix_manifests / trim_supervisions_to_recordings)")
    start, end = max(start, lo), min(end, hi)
    return start, end - start


def _from_supervision(sup, rec, where: str, rec_where: str, cut=None) -> _Utt:
    """The utterance of a supervision (times relative to ``cut``'s start when it is in one)."""
    if cut is None:
        start, duration = _span(sup.start, sup.duration, 0.0, rec.duration, where, f"recording {rec.id}")
    else:
        start, duration = _span(cut.start + sup.start, sup.duration, cut.start, cut.end, where,
                                f"cut {cut.id} (a supervision that a cut holds only part of has text that is not all in "
                                "the audio: convert cuts that hold whole supervisions, e.g. trim_to_supervisions())")
    text = " ".join(sup.text.split()) if sup.text is not None else None  # no newline may end up in `text`
    if text == "":
        raise SslseqError(f"{where}: supervision {sup.id} has an empty text; give it one or drop the supervision")
    return _Utt(sup.id, sup.speaker or rec.id, text, rec, start, duration, _channels(sup.channel, rec, where), where,
                rec_where)


def _from_recordings(recordings: Path, supervisions: Path | None) -> list[_Utt]:
    recs: dict[str, tuple[object, str]] = {}
    for where, rec in _manifest_items(recordings, "recording"):
        if rec.id in recs:
            raise SslseqError(f"{where}: recording id {rec.id} repeated (first at {recs[rec.id][1]})")
        recs[rec.id] = (rec, where)
    if supervisions is None:  # unlabeled: every recording, all its channels
        return [_Utt(r.id, r.id, None, r, 0.0, r.duration, list(r.channel_ids), w, w) for r, w in recs.values()]
    utts, used = [], set()
    for where, sup in _manifest_items(supervisions, "supervision"):
        if sup.recording_id not in recs:
            raise SslseqError(f"{where}: supervision {sup.id}: recording {sup.recording_id!r} is not in {recordings}")
        used.add(sup.recording_id)
        rec, rec_where = recs[sup.recording_id]
        utts.append(_from_supervision(sup, rec, where, rec_where))
    unused = [r for r in recs if r not in used]
    if unused:
        log.warning("%s: %d recording(s) have no supervision in %s and are left out (e.g. %s)",
                    recordings, len(unused), supervisions, ", ".join(unused[:3]))
    return utts


def _from_cuts(cuts: Path) -> list[_Utt]:
    from lhotse.cut import MixedCut

    utts = []
    for where, cut in _manifest_items(cuts, "cut"):
        if isinstance(cut, MixedCut):
            raise SslseqError(f"{where}: cut {cut.id} is a MixedCut (padded or mixed audio); from-lhotse takes cuts of "
                              "one recording (MonoCut, MultiCut): convert the cuts before padding or mixing them")
        rec = cut.recording
        if rec is None:
            raise SslseqError(f"{where}: cut {cut.id} has no recording (features only); sslseq needs the audio")
        if not cut.supervisions:
            utts.append(_Utt(cut.id, rec.id, None, rec, cut.start, cut.duration, _channels(cut.channel, rec, where),
                             where, where))
            continue
        for sup in cut.supervisions:
            utts.append(_from_supervision(sup, rec, f"{where}: cut {cut.id}", where, cut))
    return utts


def _check_utts(utts: list[_Utt], source: Path) -> None:
    if not utts:
        raise SslseqError(f"{source}: no utterances (no supervisions, recordings or cuts)")
    for u in utts:
        for what, v in (("utterance", u.utt), ("speaker", u.spk)):
            if not v or any(c.isspace() for c in v):
                raise SslseqError(f"{u.where}: {what} id {v!r} is empty or holds whitespace, which Kaldi data dirs "
                                  "cannot have; rename it in the manifest")
    labeled = [u for u in utts if u.text is not None]
    if labeled and len(labeled) != len(utts):
        missing = [u for u in utts if u.text is None]
        raise SslseqError(f"{missing[0].where}: {missing[0].utt} has no text while {len(labeled)} other supervision(s) "
                          f"have one ({len(missing)} without); a data dir's text covers every utterance or none: give "
                          "them texts or leave them out of the manifest")


def _kaldi_ids(utts: list[_Utt]) -> list[str]:
    """Utterance ids that start with their speaker id, as Kaldi sorting needs (the speaker is put
    in front of an id that does not start with it); repeated ids are an error."""
    ids, first = [], {}
    for u in utts:
        uid = u.utt if u.utt.startswith(u.spk) else f"{u.spk}-{u.utt}"
        if uid in first:
            raise SslseqError(f"{u.where}: utterance id {uid} repeated (first at {first[uid]}); ids must be unique "
                              "(overlapping cuts hold the same supervision: use cuts that do not overlap)")
        first[uid] = u.where
        ids.append(uid)
    return ids


# ---------------------------------------------------------------- utterances -> audio entries


def _whole_entry(u: _Utt) -> str | None:
    """The wav.scp entry that is this utterance as it stands, if there is one (see module doc)."""
    rec = u.recording
    if rec.transforms or len(rec.sources) != 1 or rec.num_channels != 1:
        return None
    src = rec.sources[0]
    if src.type not in ("file", "command") or not isinstance(src.source, str):
        return None
    if u.start > _EDGE or abs(u.start + u.duration - rec.duration) > _EDGE:
        return None
    if src.type == "command":
        return f"{src.source.strip()} |"
    path = os.path.abspath(src.source)  # lhotse opens a relative path from the working dir, as sslseq does
    _check_source_file(u, path)
    return path


def _check_source_file(u: _Utt, path: str) -> None:
    if not os.path.isfile(path):
        raise SslseqError(f"{u.where}: {u.rec_name}: audio file not found: {path} "
                          "(fix the path in the recordings manifest)")


def _write_own_audio(u: _Utt, uid: str, out: Path) -> tuple[str, float]:
    """Read the utterance with lhotse and write it as its own file; (path, seconds)."""
    rec = u.recording
    for src in rec.sources:
        if src.type == "file":
            _check_source_file(u, os.path.abspath(src.source))
    try:
        x = rec.load_audio(channels=u.channels, offset=u.start, duration=u.duration)
    except Exception as e:  # lhotse's audio backends raise many kinds
        raise SslseqError(f"{u.where}: {u.rec_name}: lhotse could not read its audio ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''})") from None
    x = np.asarray(x, dtype=np.float32).reshape(len(u.channels), -1).mean(axis=0)
    if x.size == 0:
        raise SslseqError(f"{u.where}: {u.rec_name}: no samples in {u.start:.3f}+{u.duration:.3f} s")
    pcm16 = x * 32768.0
    exact16 = bool(np.all(pcm16 == np.round(pcm16)) and np.all(np.abs(pcm16) <= 32767))
    name = uid.replace("/", "%2F") + (".flac" if exact16 else ".wav")
    path = (out / AUDIO_SUBDIR / name).resolve()
    with atomic_path(path) as tmp:
        if exact16:
            sf.write(tmp, x, rec.sampling_rate, format="FLAC", subtype="PCM_16")
        else:
            sf.write(tmp, x, rec.sampling_rate, format="WAV", subtype="FLOAT")
    return str(path), x.size / rec.sampling_rate


def lhotse_to_data_dir(
    out_dir: str | os.PathLike,
    *,
    recordings: str | os.PathLike | None = None,
    supervisions: str | os.PathLike | None = None,
    cuts: str | os.PathLike | None = None,
) -> int:
    """Write the Kaldi data dir ``out_dir`` from a recordings manifest (+ supervisions) or a cuts
    manifest; returns the number of utterances."""
    if (cuts is None) == (recordings is None):
        raise SslseqError("give either --recordings (with --supervisions for labeled data) or --cuts")
    if supervisions is not None and recordings is None:
        raise SslseqError("--supervisions needs --recordings (the audio they refer to)")
    out = Path(out_dir)
    source = Path(cuts if cuts is not None else recordings)
    if cuts is not None:
        utts = _from_cuts(Path(cuts))
    else:
        utts = _from_recordings(Path(recordings), Path(supervisions) if supervisions is not None else None)
    _check_utts(utts, source)
    ids = _kaldi_ids(utts)
    utt2spk = {uid: u.spk for uid, u in zip(ids, utts)}
    # Kaldi needs utt2spk sorted by utterance to be sorted by speaker too: checked before any file is written
    order = _check_speakers(out, {u: (utt2spk[u], no) for no, u in enumerate(c_sorted(utt2spk), 1)}, None)
    if order:
        named = supervisions if supervisions is not None else source  # where the ids come from
        raise SslseqError(f"{named}: the utterance ids do not sort with their speakers' ids as Kaldi needs (utt2spk to "
                          "be written below; from-lhotse puts a speaker id in front of an id that does not start with "
                          "it, so one speaker id here starts another's ids: rename speakers in the manifest):\n"
                          + "\n".join(order[:5]))
    wav, dur, own = {}, {}, 0
    for uid, u in progress(list(zip(ids, utts)), desc=f"from-lhotse {out.name}", total=len(utts), unit="utt"):
        entry = _whole_entry(u)
        if entry is not None:
            wav[uid], dur[uid] = entry, u.recording.duration
        else:
            wav[uid], dur[uid] = _write_own_audio(u, uid, out)
            own += 1
    text = {uid: u.text for uid, u in zip(ids, utts)} if utts[0].text is not None else None
    write_data_dir(out, wav=wav, text=text, utt2spk=utt2spk, utt2dur=dur)
    pipes = sum(is_pipe(v) for v in wav.values())
    notes = ([f"{own} cut or mixed by lhotse into {out / AUDIO_SUBDIR}/"] if own else []) + \
        ([f"{pipes} 'cmd |' entries: read them with --allow-pipes"] if pipes else [])
    log.info("%s: %d utterances from %s%s", out, len(wav), source, f" ({'; '.join(notes)})" if notes else "")
    return len(wav)


# ---------------------------------------------------------------- data dir -> manifests


def _write_jsonl(path: Path, items) -> None:
    """A lhotse JSON lines manifest (gzipped for ``.jsonl.gz``), written atomically."""
    if not path.name.endswith((".jsonl", ".jsonl.gz")):
        raise SslseqError(f"{path}: name the manifest .jsonl.gz (or .jsonl), as lhotse's readers expect")
    with atomic_path(path) as tmp:
        opener = gzip.open if path.name.endswith(".gz") else open
        with opener(tmp, "wt", encoding="utf-8") as f:
            for item in items:
                f.write(json.dumps(item.to_dict(), ensure_ascii=False) + "\n")


def data_dir_to_lhotse(
    data_dir: str | os.PathLike,
    *,
    recordings: str | os.PathLike | None = None,
    supervisions: str | os.PathLike | None = None,
    cuts: str | os.PathLike | None = None,
    allow_pipes: bool = False,
) -> int:
    """lhotse manifests of a data dir: a recording (its wav.scp entry) and a supervision (all of
    it, with its text and speaker) per utterance, and/or their cuts; returns the utterance count.
    A ``cmd |`` entry becomes a ``command`` source (run once here for its length: --allow-pipes)."""
    lhotse = _lhotse()
    from lhotse.audio import AudioSource

    if (recordings is None) != (supervisions is None) or (recordings is None and cuts is None):
        raise SslseqError("give --recordings and --supervisions, or --cuts, or all three")
    d = load_data_dir(data_dir)
    lines = read_kaldi_map(Path(data_dir) / "wav.scp")
    recs, sups = [], []
    for utt in progress(d.utts, desc=f"to-lhotse {d.path.name}", total=len(d.utts), unit="utt"):
        spec, where = d.wav[utt], f"{d.path / 'wav.scp'}:{lines[utt][1]}: {utt}"
        if _has_escapes(spec):
            raise SslseqError(f"{where}: the file name is not UTF-8, which lhotse's JSON manifests cannot hold; rename it")
        sr, channels, frames = audio_info(spec, allow_pipes=allow_pipes, where=where)  # named errors: missing, empty..
        if channels != 1:
            raise SslseqError(f"{where}: audio has {channels} channels; sslseq data dirs are mono (downmix it)")
        if is_pipe(spec):
            source = AudioSource(type="command", channels=[0], source=spec.rstrip()[:-1].strip())
            rec = lhotse.Recording(id=utt, sources=[source], sampling_rate=sr, num_samples=frames,
                                   duration=frames / sr, channel_ids=[0])
        else:
            rec = lhotse.Recording.from_file(os.path.abspath(spec), recording_id=utt)
        recs.append(rec)
        sups.append(lhotse.SupervisionSegment(id=utt, recording_id=utt, start=0.0, duration=rec.duration, channel=0,
                                              text=d.text.get(utt), speaker=d.utt2spk[utt]))
    if recordings is not None:
        _write_jsonl(Path(recordings), recs)
        _write_jsonl(Path(supervisions), sups)
    if cuts is not None:
        cut_set = lhotse.CutSet.from_manifests(recordings=lhotse.RecordingSet.from_recordings(recs),
                                               supervisions=lhotse.SupervisionSet.from_segments(sups))
        _write_jsonl(Path(cuts), cut_set)
    log.info("%s: %d utterances as lhotse manifests: %s", d.path, len(recs),
             " ".join(str(p) for p in (recordings, supervisions, cuts) if p is not None))
    return len(recs)

