"""Reading audio from files and Kaldi ``cmd |`` pipes as float32 mono.

Every failure is an SslseqError that starts with ``where`` (e.g. ``data/train/wav.scp:12: utt_003``)
and says how to fix the input.
"""

from __future__ import annotations

import io
import os
import shlex
import struct
import subprocess
import threading

import numpy as np
import soundfile as sf

from sslseq.utils import SslseqError, get_logger

log = get_logger(__name__)

# One 25 ms analysis window: shorter audio has no MFCC / fbank frame at all.
MIN_AUDIO_SECONDS = 0.025
_MAX_RESAMPLE_WARNINGS = 10
_warned_lock = threading.Lock()
_warned: set[str] = set()
# WAV writers that stream (sox, espeak --stdout) put a huge placeholder in the size
# fields; such a file is not "truncated", its real length is simply unknown.
_STREAMING_SIZE = 0x7FFF0000


def is_pipe(spec: str) -> bool:
    return spec.rstrip().endswith("|")


def _prefix(where: str) -> str:
    return f"{where}: " if where else ""


def _run_pipe(spec: str, *, allow_pipes: bool, where: str) -> bytes:
    cmd = spec.rstrip()[:-1].strip()
    if not allow_pipes:
        raise SslseqError(
            f"{_prefix(where)}'{spec}' is a pipe command; pass --allow-pipes to run it "
            "(only for wav.scp files you trust)"
        )
    try:
        res = subprocess.run(cmd, shell=True, capture_output=True, check=False)
    except OSError as e:
        raise SslseqError(f"{_prefix(where)}could not run pipe '{cmd}': {e}") from None
    if res.returncode != 0:
        err = res.stderr.decode(errors="replace").strip().splitlines()[-3:]
        raise SslseqError(f"{_prefix(where)}pipe '{cmd}' failed with exit status {res.returncode}: {' | '.join(err)}")
    if not res.stdout:
        raise SslseqError(f"{_prefix(where)}pipe '{cmd}' produced no output (empty audio)")
    return res.stdout


def _wav_truncation(path: str) -> str | None:
    """A message if a RIFF/WAVE file's data chunk claims more bytes than the file holds."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        pos = 12
        while pos + 8 <= size:
            f.seek(pos)
            cid, clen = struct.unpack("<4sI", f.read(8))
            if cid == b"data":
                present = size - pos - 8
                if present < clen < _STREAMING_SIZE:
                    return f"truncated WAV: header declares {clen} bytes of audio but only {present} are present"
                return None
            pos += 8 + clen + (clen & 1)
    return "truncated WAV: no data chunk before end of file"


def _fs_path(path: str) -> bytes:
    """The file name as bytes: soundfile encodes a str strictly, so a name that is not UTF-8 (read
    from wav.scp with surrogate escapes, as Python's os functions do) would not open otherwise."""
    return os.fsencode(path)


def _check_file(path: str, where: str) -> None:
    if not os.path.exists(path):
        raise SslseqError(f"{_prefix(where)}audio file not found: {path} (fix the path in wav.scp)")
    if os.path.isdir(path):
        raise SslseqError(f"{_prefix(where)}{path} is a directory, not an audio file")
    if os.path.getsize(path) == 0:
        raise SslseqError(f"{_prefix(where)}audio file is empty (0 bytes): {path}; re-create it or drop the utterance")
    trunc = _wav_truncation(path)
    if trunc:
        raise SslseqError(f"{_prefix(where)}{trunc}: {path}; the file was cut short, re-create it or drop the utterance")


def _unreadable(where: str, what: str, e: Exception) -> SslseqError:
    return SslseqError(f"{_prefix(where)}unreadable or corrupt audio {what}: {e}; check the file with 'soxi' or re-create it")


def _decode(spec: str, *, allow_pipes: bool, where: str) -> tuple[np.ndarray, int]:
    """(frames, channels) float32 samples and the sample rate, with no conversion."""
    if is_pipe(spec):
        source: object = io.BytesIO(_run_pipe(spec, allow_pipes=allow_pipes, where=where))
        what = f"from pipe '{spec}'"
    else:
        _check_file(spec, where)
        source, what = _fs_path(spec), spec
    try:
        data, sr = sf.read(source, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, ValueError, TypeError) as e:
        raise _unreadable(where, what, e) from None
    if data.shape[0] == 0:
        raise SslseqError(f"{_prefix(where)}audio {what} holds no samples (empty); drop the utterance or re-create it")
    return data, int(sr)


def _mono_error(where: str, spec: str, channels: int) -> SslseqError:
    path = spec.rstrip("| ") if not is_pipe(spec) else "in.wav"
    return SslseqError(
        f"{_prefix(where)}audio has {channels} channels, sslseq needs mono; downmix it, e.g. "
        f"'sox {shlex.quote(path)} -c 1 out.wav' (average) or 'sox {shlex.quote(path)} out.wav remix 1' "
        f"(first channel), or use the pipe 'sox {shlex.quote(path)} -t wav - remix 1 |' with --allow-pipes"
    )


def _warn_resample(spec: str, where: str, sr: int, target: int) -> None:
    with _warned_lock:
        if spec in _warned:
            return
        _warned.add(spec)
        n = len(_warned)
    if n <= _MAX_RESAMPLE_WARNINGS:
        log.warning("%saudio is %d Hz, resampling to %d Hz (pass --no-resample to refuse)", _prefix(where), sr, target)
    if n == _MAX_RESAMPLE_WARNINGS:
        log.warning("further resampling warnings are not shown")


def read_audio(
    spec: str, *, sample_rate: int = 16000, allow_pipes: bool = False, resample: bool = True, where: str = "",
    downmix: bool = False, warn_resample: bool = True,
) -> np.ndarray:
    """Float32 mono 1-D samples in [-1, 1] at ``sample_rate`` from a path or a ``cmd |`` pipe.

    Audio of several channels is an error unless ``downmix`` (the channels' mean; the caller says
    so: corpus preparation warns naming the file). ``warn_resample``: log the resampling (the
    readers of data dirs do; a caller that reports it itself does not)."""
    data, sr = _decode(spec, allow_pipes=allow_pipes, where=where)
    if data.shape[1] != 1 and not downmix:
        raise _mono_error(where, spec, data.shape[1])
    x = data.mean(axis=1, dtype=np.float32) if data.shape[1] != 1 else data[:, 0]
    if not np.isfinite(x).all():
        named = "" if is_pipe(spec) else f" ({spec})"
        raise SslseqError(f"{_prefix(where)}audio contains NaN or infinite samples{named}; re-create the file")
    if sr != sample_rate:
        if not resample:
            raise SslseqError(
                f"{_prefix(where)}audio is {sr} Hz but {sample_rate} Hz is expected and --no-resample was given; "
                f"resample it (e.g. 'sox in.wav -r {sample_rate} out.wav') or drop --no-resample"
            )
        import soxr

        if warn_resample:
            _warn_resample(spec, where, sr, sample_rate)
        x = soxr.resample(x, sr, sample_rate, quality="HQ").astype(np.float32, copy=False)
    # Float formats may exceed full scale; the models expect [-1, 1].
    return np.clip(x, -1.0, 1.0)


def speed_perturb(x: np.ndarray, factor: float, sample_rate: int = 16000) -> np.ndarray:
    """``x`` played ``factor`` times faster (Kaldi's speed perturbation: tempo and pitch change
    together, ``len / factor`` samples): ``x`` resampled as if it were at ``sample_rate * factor``."""
    if factor <= 0:
        raise SslseqError(f"speed perturbation factor must be positive, got {factor}")
    if factor == 1.0:
        return x
    import soxr

    return soxr.resample(x, sample_rate * factor, sample_rate, quality="HQ").astype(np.float32, copy=False)


def audio_info(spec: str, *, allow_pipes: bool = False, where: str = "") -> tuple[int, int, int]:
    """(sample_rate, channels, num_samples) from the header; pipes are run and decoded fully."""
    if is_pipe(spec):
        data, sr = _decode(spec, allow_pipes=allow_pipes, where=where)
        return sr, int(data.shape[1]), int(data.shape[0])
    _check_file(spec, where)
    try:
        info = sf.info(_fs_path(spec))
    except (sf.LibsndfileError, RuntimeError, ValueError) as e:
        raise _unreadable(where, spec, e) from None
    if info.frames <= 0:
        raise SslseqError(f"{_prefix(where)}audio file holds no samples (empty): {spec}; drop the utterance or re-create it")
    return int(info.samplerate), int(info.channels), int(info.frames)
