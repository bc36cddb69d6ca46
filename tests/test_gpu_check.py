"""The GPU check (``sslseq bench gpu``, tools/gpu_check.sh) between GPU loans: its dry run (every
step on the CPU on tiny shapes: the Triton interpreter, gloo, torch.compile's eager backend) and
the step runner (a failing, a hanging and a late step are recorded and the run goes on)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import pytest

from sslseq.bench import gpu
from sslseq.utils import SslseqError

REPO = Path(__file__).resolve().parents[1]


def test_dry_run_runs_every_step(tmp_path):
    """The whole script through tools/gpu_check.sh, as on the GPU machine but with --dry-run
    (about 30-40 s of CPU time; minutes of wall time when the cores are shared)."""
    pytest.importorskip("transformers")  # the train step's reference
    pytest.importorskip("soundfile")
    out, work, no_wheels = tmp_path / "out", tmp_path / "work", tmp_path / "no_wheels"
    no_wheels.mkdir()
    env = {**os.environ, "PYTHON": sys.executable, "SSLSEQ_WHEELS": str(no_wheels), "OUT": str(out)}
    r = subprocess.run(["bash", str(REPO / "tools" / "gpu_check.sh"), "--dry-run", "--work", str(work)], cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=1500)
    report = json.loads((out / "gpu_check.json").read_text())
    steps = {s["name"]: s for s in report["steps"]}
    assert r.returncode == 0, {n: (s["status"], s["problems"], s.get("log_tail", "")[-1500:]) for n, s in steps.items()}
    assert report["finished"] and report["dry_run"] and list(steps) == gpu.STEP_NAMES
    assert all(s["status"] == "ok" for s in steps.values())

    env_info = steps["env"]["results"]
    assert env_info["cuda_available"] is False and env_info["env"]["TRITON_INTERPRET"] == "1"
    tests = steps["tests"]["results"]
    assert tests["junit"] and tests["counts"] == {"passed": len(gpu.DRY_TESTS), "failed": 0, "error": 0, "skipped": 0}
    nccl = steps["nccl"]["results"]
    assert nccl["backend"] == "gloo" and len(nccl["checks"]) == 6 and all(c["ok"] for c in nccl["checks"])
    assert "all_reduce calls" in nccl["checks"][2]["detail"]  # the collective path really ran
    kernels = steps["kernels"]["results"]["records"]
    assert {(k["op"], k["impl"]) for k in kernels} >= {(op, p) for op in ("gumbel_quantize", "contrastive_loss")
                                                       for p in ("reference", "chunked", "triton")}
    assert {k["size"] for k in kernels} == {"tiny"}
    train = steps["train"]["results"]["records"]
    assert [t["impl"] for t in train] == ["transformers", "sslseq"]
    for name, compiled in (("throughput", False), ("throughput_compile", True)):
        res = steps[name]["results"]
        assert res["compile"] is compiled and res["audio_s_per_s"] > 0 and res["last_step"] == 2 and res["rc"] == 0
        assert res["train_summary"]["steps"] == 2

    md = (out / "gpu_check.md").read_text()
    assert "DRY RUN" in md and "## For the README" in md and "audio s/s" in md
    log = (out / "gpu_check.log").read_text()
    assert all(f"===== {n}: ok" in log for n in gpu.STEP_NAMES)
    assert "[gpu-check] throughput_compile: ok" in r.stdout and "# sslseq GPU check" in r.stdout


def _step(name: str, code: str, timeout: float = 30) -> gpu.Step:
    def collect(ctx):
        f = ctx.work / f"{name}.txt"
        return {"wrote": f.read_text() if f.is_file() else None, "problems": []}

    return gpu.Step(name, name, timeout, timeout, lambda c: [sys.executable, "-c", code.replace("WORK", str(c.work))],
                    collect)


def test_steps_are_isolated_and_the_deadline_holds(tmp_path, monkeypatch):
    """A failing step is recorded and the next one runs; a step running into the global deadline
    is killed there with its partial results kept; a step with too little time left is skipped."""
    write = "open('WORK/{0}.txt', 'w').write('{0}')"
    steps = [
        _step("env", write.format("env")),
        _step("fails", write.format("fails") + "; raise SystemExit(3)"),
        _step("fine", write.format("fine")),
        _step("hangs", write.format("hangs") + "; import time; time.sleep(600)", timeout=600),
        _step("late", write.format("late")),
    ]
    monkeypatch.setattr(gpu, "STEPS", steps)
    monkeypatch.setattr(gpu, "STEP_NAMES", [s.name for s in steps])
    monkeypatch.setattr(gpu, "MIN_STEP_S", 4.0)
    # 16 s: "hangs" starts with about 10 s (16 - the first steps - 5 kept back) and is killed then,
    # which leaves "late" less than 4 s
    args = Namespace(dry_run=True, out=str(tmp_path / "out"), work=str(tmp_path / "work"), deadline=16.0, only=None,
                     skip=None)
    with pytest.raises(SslseqError, match="3 of 5 steps not ok"):
        gpu.main(args)
    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    got = {s["name"]: s for s in report["steps"]}
    assert [got[n]["status"] for n in gpu.STEP_NAMES] == ["ok", "failed", "ok", "timeout", "skipped"]
    assert got["fails"]["rc"] == 3 and got["fails"]["results"]["wrote"] == "fails"
    assert got["fine"]["results"]["wrote"] == "fine"
    assert got["hangs"]["results"]["wrote"] == "hangs" and got["hangs"]["seconds"] < 16  # killed, results kept
    assert "deadline" in got["late"]["problems"][0] and not (tmp_path / "work" / "late.txt").exists()
    assert report["finished"] and "| hangs | timeout |" in (tmp_path / "out" / "gpu_check.md").read_text()
    with pytest.raises(SslseqError, match="not one of"):
        gpu.main(Namespace(**{**vars(args), "only": ["nope"]}))
