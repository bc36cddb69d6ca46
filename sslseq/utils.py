"""Small helpers shared by every module: user-facing errors, atomic writes, logging, progress bars."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")


class SslseqError(Exception):
    """An error caused by the user's input (a file, a config, an option).

    The CLI prints its message without a traceback, so the message must say what was
    wrong, where (file, line, utterance) and what to do.
    """


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only on success.

    A reader never sees a half-written file, and a killed process leaves at most a
    ``.tmp`` file behind that the next run overwrites.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_text(path: str | os.PathLike, text: str, errors: str = "strict") -> None:
    """Write ``text`` as UTF-8, atomically (``errors="surrogateescape"`` writes back the undecodable
    bytes of text read with it, e.g. a file name in wav.scp that is not UTF-8)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8", errors=errors)


def fingerprint(*parts: str | bytes, n: int = 20) -> str:
    """``n`` hex digits of the SHA-256 of ``parts`` (text or bytes, in order): sslseq's one way
    to say what a piece of work was made from. A job part, an emissions block and a training
    run keep the fingerprint of their inputs and options, and are done when it matches
    (the recipe's stage markers hold the trainer's: ``sslseq train --fingerprint``)."""
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode() if isinstance(part, str) else part)
    return h.hexdigest()[:n]


def file_stamp(path: str | os.PathLike) -> str:
    """``name size mtime_ns`` of a file: its identity in a fingerprint where hashing its bytes
    (features, a model) on every check would cost too much."""
    st = os.stat(path)
    return f"{Path(path).name} {st.st_size} {st.st_mtime_ns}\n"


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes (read in 1 MiB blocks): the checksum recorded beside the
    outputs of a stage (feature shards, label files, models) and checked by their readers."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_record(path: str | os.PathLike) -> dict:
    """``{"bytes": size, "sha256": hex}`` of a file, as metadata YAMLs record it."""
    return {"bytes": os.path.getsize(path), "sha256": file_sha256(path)}


def check_file_record(path: str | os.PathLike, record: dict, fix: str, *, checksum: bool = True) -> None:
    """SslseqError naming ``path`` unless it exists with the recorded size (and, with ``checksum``,
    the recorded SHA-256); ``fix`` says what to do. A missing or malformed record checks nothing."""
    path = Path(path)
    if not isinstance(record, dict):
        return
    size = record.get("bytes")
    if not path.is_file():
        raise SslseqError(f"{path}: missing (it was written with {size} bytes); {fix}")
    have = path.stat().st_size
    if isinstance(size, int) and have != size:
        cut = "cut short" if have < size else "longer"
        raise SslseqError(f"{path}: {have} bytes, but {size} were written (the file is {cut} or was replaced); {fix}")
    want = record.get("sha256")
    if checksum and isinstance(want, str) and file_sha256(path) != want:
        raise SslseqError(f"{path}: its SHA-256 differs from the one recorded when it was written (the content "
                          f"was changed since); {fix}")


def get_logger(name: str = "sslseq") -> logging.Logger:
    """The package logger: timestamped lines on stderr, set up once."""
    root = logging.getLogger("sslseq")
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
        root.addHandler(handler)
        root.setLevel(os.environ.get("SSLSEQ_LOGLEVEL", "INFO"))
        root.propagate = False
    return logging.getLogger(name)


def run_main(fn: Callable[[], None]) -> int:
    """Run a command-line entry point: an SslseqError is one logged line (no traceback) and exit
    code 1, Ctrl-C exit code 130 (``sslseq``'s verbs and the recipes' own Python scripts)."""
    log = get_logger()
    if hasattr(sys.stdout, "reconfigure"):  # file names that are not UTF-8 print as the bytes they are
        sys.stdout.reconfigure(errors="surrogateescape")
    try:
        fn()
    except SslseqError as e:
        log.error("%s", e)
        return 1
    except KeyboardInterrupt:
        log.error("interrupted")
        return 130
    return 0


def progress(iterable: Iterable[T], desc: str = "", total: int | None = None, unit: str = "it") -> Iterable[T]:
    """A tqdm progress bar on stderr; updates rarely when stderr is not a terminal (logs, CI)."""
    from tqdm import tqdm

    interactive = sys.stderr.isatty()
    return tqdm(
        iterable,
        desc=desc,
        total=total,
        unit=unit,
        mininterval=0.5 if interactive else 30.0,
        disable=os.environ.get("SSLSEQ_NO_PROGRESS") == "1",
        dynamic_ncols=True,
    )


def read_yaml_mapping(path: str | os.PathLike, fix: str, required: Iterable[str] = ()) -> dict:
    """The mapping in a metadata YAML of an on-disk format (``feats.yaml``, ``labels.yaml``);
    unreadable YAML, anything but a mapping, or a missing ``required`` key is an SslseqError
    naming the file, what is wrong and ``fix`` (what to do)."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise SslseqError(f"{path}: not valid YAML ({str(e).splitlines()[0]}); {fix}") from None
    if not isinstance(data, dict):
        got = "an empty file" if data is None else f"a {type(data).__name__}"
        raise SslseqError(f"{path}: expected a mapping of keys to values, got {got}; {fix}")
    missing = [k for k in required if k not in data]
    if missing:
        raise SslseqError(f"{path}: no {', '.join(repr(k) for k in missing)} (needs {', '.join(required)}); {fix}")
    return data
