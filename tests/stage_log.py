"""What a recipe's log says of each stage dir (tools/common.sh): ``skip: DIR is done`` for a
finished one, ``done: DIR in N s`` once work in it is recorded. Tests that rerun a recipe assert
on these lines instead of guessing from timings."""

from __future__ import annotations

import re
from pathlib import Path

_SKIP = re.compile(r"\) skip: (\S+) is done ")
_DONE = re.compile(r"\) done: (\S+) in \d+ s$", re.M)


def skipped(stderr: str) -> set[str]:
    return set(_SKIP.findall(stderr))


def done(stderr: str) -> set[str]:
    """The stage dirs whose work ran (and finished) in this run."""
    return set(_DONE.findall(stderr))


def markers(workdir: Path, *under: str) -> set[str]:
    """The finished stage dirs of ``workdir`` (those holding a ``.done`` marker), relative to it;
    with ``under``, only those below these dirs."""
    found = {str(m.parent.relative_to(workdir)) for m in workdir.rglob(".done")}
    return {d for d in found if not under or any(d == u or d.startswith(u + "/") for u in under)}


def assert_nothing_redone(stderr: str, expected_skips: set[str]) -> None:
    """The run did no stage's work, and said so of each of ``expected_skips``."""
    assert not done(stderr), f"finished stages were redone: {sorted(done(stderr))}"
    missing = expected_skips - skipped(stderr)
    assert expected_skips and not missing, f"stages neither skipped nor redone: {sorted(missing)}"
