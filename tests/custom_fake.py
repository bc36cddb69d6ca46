"""A user's folder of audio built from the tiny synthesized corpus (espeak-ng speech, so CTC has
something to learn): one dir per speaker, files in turn written as WAV at 16 kHz mono, FLAC at
8 kHz mono, OGG at 44.1 kHz stereo, WAV at 44.1 kHz stereo and OGG at 16 kHz mono; and a transcript file naming the
files in the ways a user would (relative path, path without extension, stem)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

# (extension, soundfile format, sample rate, channels), used in turn
KINDS = [("wav", "WAV", 16000, 1), ("flac", "FLAC", 8000, 1), ("ogg", "OGG", 44100, 2), ("wav", "WAV", 44100, 2),
         ("ogg", "OGG", 16000, 1)]


def make_audio_folder(synth_corpus: Path, out: Path) -> tuple[Path, dict[str, str], dict[str, tuple[int, int]]]:
    """Write ``out/<spk>/<utt>.<ext>``; returns (out, relative path -> transcript, relative path ->
    (sample rate, channels))."""
    with open(synth_corpus / "corpus.tsv", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    texts, kinds = {}, {}
    for i, r in enumerate(rows):
        ext, fmt, sr, ch = KINDS[i % len(KINDS)]
        x, r_sr = sf.read(synth_corpus / r["wav"], dtype="float32")
        if sr != r_sr:
            x = soxr.resample(x, r_sr, sr, quality="HQ").astype(np.float32)
        if ch == 2:  # the second channel quieter, so the downmix is a real mix
            x = np.stack([x, 0.5 * x], axis=1)
        rel = f"{r['spk']}/{r['utt']}.{ext}"
        (out / r["spk"]).mkdir(parents=True, exist_ok=True)
        sf.write(out / rel, x, sr, format=fmt)
        texts[rel], kinds[rel] = r["text"], (sr, ch)
    return out, texts, kinds


def write_transcripts(path: Path, texts: dict[str, str]) -> Path:
    """One line per file, keyed in turn by relative path, relative path without extension and stem;
    the transcripts lower-cased with punctuation, as a user might have them."""
    lines = []
    for i, (rel, t) in enumerate(sorted(texts.items())):
        key = [rel, rel.rsplit(".", 1)[0], Path(rel).stem][i % 3]
        lines.append(f"{key} {t.capitalize()}.\n")
    path.write_text("".join(lines), encoding="utf-8")
    return path


# Spanish sentences, so the units hold letters outside A-Z (Ñ, Á, É, Í, Ó) and the recipe must keep them.
SPANISH = ["el niño come pan con su mamá", "la canción del corazón es bonita", "mañana será otro día en el campo",
           "el árbol está junto al río", "qué pasó ayer en la montaña", "mi niña canta una canción"]


def add_espeak_speaker(out: Path, spk: str, voice: str, sentences: list[str], sample_rate: int = 22050) -> dict[str, str]:
    """``out/<spk>/<spk>-<n>.flac`` read by espeak-ng's ``voice`` (its own rate, mono); relative path -> sentence."""
    import io
    import subprocess

    texts = {}
    (out / spk).mkdir(parents=True, exist_ok=True)
    for n, t in enumerate(sentences):
        wav = subprocess.run(["espeak-ng", "-v", voice, "--stdout", t], capture_output=True, check=True).stdout
        x, sr = sf.read(io.BytesIO(wav), dtype="float32")
        rel = f"{spk}/{spk}-{n:02d}.flac"
        sf.write(out / rel, soxr.resample(x, sr, sample_rate).astype(np.float32), sample_rate, format="FLAC")
        texts[rel] = t
    return texts
