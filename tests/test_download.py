"""--download's pieces against local file:// archives: resume, checksums, truncation, killed extraction."""

from __future__ import annotations

import hashlib
import logging
import tarfile
from pathlib import Path

import pytest

from librispeech_fake import make_fake_librispeech
from sslseq.data.download import download_librispeech, extract, fetch
from sslseq.data.librispeech import read_chapters
from sslseq.utils import SslseqError


@pytest.fixture(scope="module")
def archive(tiny_corpus: Path, tmp_path_factory) -> tuple[Path, str]:
    """dev-clean.tar.gz of the fake tree (LibriSpeech/dev-clean/...) and its MD5."""
    tree = make_fake_librispeech(tiny_corpus, tmp_path_factory.mktemp("tree"))
    src = tmp_path_factory.mktemp("mirror")
    with tarfile.open(src / "dev-clean.tar.gz", "w:gz") as t:
        t.add(tree / "LibriSpeech" / "dev-clean", arcname="LibriSpeech/dev-clean")
    return src / "dev-clean.tar.gz", hashlib.md5((src / "dev-clean.tar.gz").read_bytes()).hexdigest()


def _n_utts(corpus: Path) -> int:
    return len(read_chapters(corpus / "LibriSpeech" / "dev-clean")[0])


def test_checksum_good_and_resume(archive, tmp_path: Path):
    arc, md5 = archive
    corpus = tmp_path / "corpus"
    part = corpus / "downloads" / "dev-clean.tar.gz.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(arc.read_bytes()[: arc.stat().st_size // 2])  # a download killed half-way
    download_librispeech(corpus, ["dev-clean"], finetune=False, base_url=arc.parent.as_uri(), md5s={"dev-clean": md5})
    assert (corpus / "downloads" / "dev-clean.tar.gz").read_bytes() == arc.read_bytes()
    assert (corpus / ".dev-clean.extracted").is_file() and _n_utts(corpus) == 3
    assert not part.exists()


def test_checksum_bad_named_retried_then_error(archive, tmp_path: Path):
    arc, _ = archive
    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    logging.getLogger("sslseq.data.download").addHandler(handler)
    try:
        with pytest.raises(SslseqError) as e:
            download_librispeech(tmp_path / "c", ["dev-clean"], finetune=False, base_url=arc.parent.as_uri(),
                                 md5s={"dev-clean": "0" * 32})
    finally:
        logging.getLogger("sslseq.data.download").removeHandler(handler)
    assert "dev-clean.tar.gz" in str(e.value) and "after 2 downloads" in str(e.value)
    err = "\n".join(seen)
    assert "attempt 1 of 2" in err and "attempt 2 of 2" in err and "published 000" in err
    assert not (tmp_path / "c" / "LibriSpeech").exists()  # never extracted


def test_truncated_archive(archive, tmp_path: Path):
    arc, md5 = archive
    bad = tmp_path / "mirror" / "dev-clean.tar.gz"
    bad.parent.mkdir()
    bad.write_bytes(arc.read_bytes()[:-5000])
    with pytest.raises(SslseqError, match="MD5 differs"):  # with a published MD5: never extracted
        fetch(bad.as_uri(), tmp_path / "a" / "dev-clean.tar.gz", md5)
    got = fetch(bad.as_uri(), tmp_path / "b" / "dev-clean.tar.gz", None)  # without one: the tar itself fails
    with pytest.raises(SslseqError, match=r"dev-clean.tar.gz: cannot be extracted.*delete it and rerun"):
        extract(got, tmp_path / "b", "dev-clean")
    assert not (tmp_path / "b" / ".dev-clean.extracted").exists() and not (tmp_path / "b" / "LibriSpeech").exists()


def test_rerun_after_kill_during_extraction(archive, tmp_path: Path):
    arc, md5 = archive
    corpus = tmp_path / "corpus"
    # what a kill leaves: the archive, a half-filled scratch dir, no marker
    (corpus / "downloads").mkdir(parents=True)
    (corpus / "downloads" / "dev-clean.tar.gz").write_bytes(arc.read_bytes())
    junk = corpus / ".dev-clean.extracting" / "LibriSpeech" / "dev-clean" / "1" / "2"
    junk.mkdir(parents=True)
    (junk / "1-2-0000.flac").write_bytes(b"half")
    download_librispeech(corpus, ["dev-clean"], finetune=False, base_url="file:///nonexistent", md5s={"dev-clean": md5})
    assert _n_utts(corpus) == 3 and not (corpus / ".dev-clean.extracting").exists()
    assert not (corpus / "LibriSpeech" / "dev-clean" / "1").exists()


def test_sets_present_are_not_fetched(archive, tmp_path: Path):
    arc, md5 = archive
    corpus = tmp_path / "corpus"
    download_librispeech(corpus, ["dev-clean"], finetune=False, base_url=arc.parent.as_uri(), md5s={"dev-clean": md5})
    (corpus / ".dev-clean.extracted").unlink()  # a copy the user brought: no marker, the set dir is there
    download_librispeech(corpus, ["dev-clean"], finetune=False, base_url="file:///nonexistent", md5s={})
    assert _n_utts(corpus) == 3


def test_mini_librispeech_sets_come_from_their_own_url(tiny_corpus: Path, tmp_path: Path):
    """train-clean-5 and dev-clean-2 are openslr.org/31's, the other sets openslr.org/12's."""
    tree = make_fake_librispeech(tiny_corpus, tmp_path / "tree", mini=True)
    mirrors = {"12": tmp_path / "r12", "31": tmp_path / "r31"}
    for name, res in (("dev-clean-2", "31"), ("test-clean", "12")):
        mirrors[res].mkdir(exist_ok=True)
        with tarfile.open(mirrors[res] / f"{name}.tar.gz", "w:gz") as t:
            t.add(tree / "LibriSpeech" / name, arcname=f"LibriSpeech/{name}")
    md5s = {n: hashlib.md5((mirrors[r] / f"{n}.tar.gz").read_bytes()).hexdigest()
            for n, r in (("dev-clean-2", "31"), ("test-clean", "12"))}
    corpus = tmp_path / "corpus"
    download_librispeech(corpus, ["dev-clean-2", "test-clean"], finetune=False, base_url=mirrors["12"].as_uri(),
                         mini_url=mirrors["31"].as_uri(), md5s=md5s)
    for name in ("dev-clean-2", "test-clean"):
        assert read_chapters(corpus / "LibriSpeech" / name)[0]
