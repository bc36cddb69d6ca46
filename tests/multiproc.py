"""Helpers for tests that run several processes (gloo on the CPU), in one place.

- ``gloo_group``: a process group that every worker leaves cleanly: a barrier once its work is
  done (no process tears its connections down while a peer still talks to it: gloo then aborts
  with "terminate called without an active exception"), then ``destroy_process_group`` in
  ``finally``. It rendezvouses through a file, not a TCP port another process may take.
- ``spawn``: start the workers and wait for them with a deadline, so a hung collective fails
  the test instead of hanging it.
- ``torchrun``: the ``torch.distributed.run`` command line of N local processes
  (``--standalone``: it picks a free port itself).
Timeouts are generous: the test machine has 2 cores that a training run may be using.
"""

from __future__ import annotations

import contextlib
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

TIMEOUT = 300  # seconds for one multi-process run (or one collective) on a loaded 2-core machine


@contextlib.contextmanager
def gloo_group(rank: int, world: int, init_file: str | Path, timeout: float = TIMEOUT) -> Iterator[None]:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=timeout))
    done = False
    try:
        yield
        done = True
    finally:
        try:
            if done:  # after a failure a peer may never arrive: leave at once (the test fails anyway)
                dist.barrier()
        finally:
            dist.destroy_process_group()


def spawn(fn: Callable[..., Any], args: tuple, nprocs: int = 2, timeout: float = TIMEOUT) -> None:
    """Run ``fn(rank, *args)`` in ``nprocs`` fresh processes; a worker's exception or a non-zero
    exit fails the test (``ProcessRaisedException`` / ``ProcessExitedException``), so does the deadline."""
    import torch.multiprocessing as mp

    ctx = mp.start_processes(fn, args=args, nprocs=nprocs, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=2):  # False until every process has exited
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            for p in ctx.processes:
                p.join()
            pytest.fail(f"{nprocs} processes of {fn.__name__} did not finish within {timeout} s")


def torchrun(nproc: int = 2) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc)]


def free_port() -> int:
    """A port free now (for launchers that need one given, e.g. ``accelerate launch``)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
