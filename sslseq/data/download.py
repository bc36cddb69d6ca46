"""Resumable, checksummed archive downloads and atomic extraction (LibriSpeech, Libri-light).

An archive is fetched into ``<name>.part`` (a rerun resumes it), checked against its published
MD5, and only then renamed to its final name; a bad checksum names the archive, throws it away and
fetches it again once, then fails. Extraction goes to a scratch dir beside the destination
(``tarfile``'s "data" filter: no absolute paths, no links out of it), whose directories are then
renamed into place, and a ``.<name>.extracted`` marker is written last: an extraction killed
mid-way is redone from the archive by the next run, never half-used.
"""

from __future__ import annotations

import hashlib
import shutil
import tarfile
import urllib.request
from pathlib import Path

from sslseq.data.librispeech import MINI_SETS
from sslseq.utils import SslseqError, atomic_write_text, get_logger

log = get_logger(__name__)

OPENSLR_12 = "https://www.openslr.org/resources/12"
OPENSLR_31 = "https://www.openslr.org/resources/31"  # Mini LibriSpeech (librispeech.MINI_SETS)
LIBRILIGHT_FT = "https://dl.fbaipublicfiles.com/librilight/data/librispeech_finetuning.tgz"
# openslr.org/resources/12/md5sum.txt (the same values in PaddlePaddle's data/librispeech/librispeech.py)
LIBRISPEECH_MD5 = {
    "train-clean-100": "2a93770f6d5c6c964bc36631d331a522",
    "train-clean-360": "c0e676e450a7ff2f54aeade5171606fa",
    "train-other-500": "d1a0fd59409feb2c614ce4d30c387708",
    "dev-clean": "42e2234ba48799c1f50f24a7926300a1",
    "dev-other": "c8d0bcc9cca99d4f8b62fcc847357931",
    "test-clean": "32fa31d27d2e1cad72775fee3f4849a9",
    "test-other": "fb5a50374b501bb3bac4815ee91d3135",
    # openslr.org/resources/31/md5sum.txt (as in PaddleSpeech's dataset/mini_librispeech)
    "train-clean-5": "5df7d4e78065366204ca6845bb08f490",
    "dev-clean-2": "6d7ab67ac6a1d2c993d050e16d61080d",
}
_CHUNK = 1 << 20


def md5sum(path: Path) -> str:
    h = hashlib.md5()  # the publisher's checksum, not a security measure
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            h.update(block)
    return h.hexdigest()


def _copy_from(url: str, part: Path) -> None:
    """Append the bytes of ``url`` after those ``part`` already holds (http Range, or a seek for file://)."""
    have = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            status = getattr(r, "status", None)
            if have and url.startswith("file:"):
                r.seek(have) if hasattr(r, "seek") else r.read(have)
            elif have and status != 206:  # the server ignored the range: start over
                have = 0
            with open(part, "ab" if have else "wb") as f:
                while block := r.read(_CHUNK):
                    f.write(block)
    except OSError as e:
        raise SslseqError(f"{url}: download failed ({e}); rerun to resume it ({part} keeps what arrived)") from None


def fetch(url: str, dest: Path, md5: str | None, *, attempts: int = 2) -> Path:
    """``dest`` holding ``url``'s bytes with MD5 ``md5`` (None: not published, not checked)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    for attempt in range(1, attempts + 1):
        if not dest.exists():
            log.info("%s -> %s%s", url, dest, f" (resuming after {part.stat().st_size} bytes)" if part.exists() else "")
            _copy_from(url, part)
            part.rename(dest)
        if md5 is None:
            return dest
        got = md5sum(dest)
        if got == md5:
            return dest
        log.warning("%s: MD5 %s, published %s: corrupt or partial; fetching it again (attempt %d of %d)",
                    dest, got, md5, attempt, attempts)
        dest.unlink()
    raise SslseqError(f"{dest} ({url}): MD5 differs from the published {md5} after {attempts} downloads; "
                      "the source or a proxy serves a damaged file: try a mirror (e.g. us.openslr.org)")


def _move_into(src: Path, dst: Path) -> None:
    """Rename each entry of ``src`` into ``dst``, merging directories that exist in both."""
    dst.mkdir(parents=True, exist_ok=True)
    for p in sorted(src.iterdir()):
        target = dst / p.name
        if p.is_dir() and target.is_dir():
            _move_into(p, target)
        else:
            if target.is_dir():
                shutil.rmtree(target)
            p.replace(target)


def extract(archive: Path, dest: Path, name: str) -> None:
    """Unpack ``archive`` into ``dest`` once; ``dest/.<name>.extracted`` says it is complete."""
    marker = dest / f".{name}.extracted"
    if marker.is_file():
        return
    scratch = dest / f".{name}.extracting"
    if scratch.exists():
        shutil.rmtree(scratch)  # a killed extraction: start it again
    scratch.mkdir(parents=True)
    try:
        with tarfile.open(archive) as t:
            t.extractall(scratch, filter="data")
    except (tarfile.TarError, EOFError, OSError) as e:
        shutil.rmtree(scratch, ignore_errors=True)
        raise SslseqError(f"{archive}: cannot be extracted ({e}); delete it and rerun to fetch it again") from None
    _move_into(scratch, dest)
    shutil.rmtree(scratch)
    atomic_write_text(marker, f"{archive.name}\n")


def download_librispeech(corpus_dir: Path, sets: list[str], *, finetune: bool, base_url: str = OPENSLR_12,
                         mini_url: str = OPENSLR_31, finetune_url: str = LIBRILIGHT_FT,
                         md5s: dict[str, str | None] | None = None) -> None:
    """Fetch and extract the LibriSpeech ``sets`` (Mini LibriSpeech's from ``mini_url``; and
    Libri-light's fine-tuning sets) into corpus_dir."""
    corpus_dir = Path(corpus_dir)
    md5s = LIBRISPEECH_MD5 if md5s is None else md5s
    jobs = [(s, f"{mini_url if s in MINI_SETS else base_url}/{s}.tar.gz", md5s.get(s), corpus_dir / "LibriSpeech" / s)
            for s in sets]
    if finetune:  # Libri-light publishes no checksum for it: the tar is still read whole
        jobs.append(("librispeech_finetuning", finetune_url, md5s.get("librispeech_finetuning"),
                     corpus_dir / "librispeech_finetuning"))
    for name, url, md5, target in jobs:
        # extracted here, or a copy the user has: an extraction renames whole set dirs into place
        if (corpus_dir / f".{name}.extracted").is_file() or target.is_dir():
            continue
        archive = fetch(url, corpus_dir / "downloads" / url.rsplit("/", 1)[-1], md5)
        extract(archive, corpus_dir, name)
        log.info("%s: extracted into %s", archive, corpus_dir)
