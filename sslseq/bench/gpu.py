"""``sslseq bench gpu``: every GPU claim of sslseq checked by one command, sized for a short GPU
loan (at most 8 minutes on one H100/H200: a global deadline of 7 by default).

Steps, in this order (each a subprocess with its own timeout, all under the global deadline; a
step that fails or times out is recorded and the next one runs; the report is rewritten after
every step, so a run killed from outside still leaves the figures of the steps it finished):

  env                 versions, the GPU, the driver, what is importable
  tests               pytest -m cuda tests/test_cuda.py: the compiled Triton kernels against the
                      reference path (fp32, bf16, small and Base shapes), fbank/MFCC and k-means on
                      CUDA against the CPU, wav2vec 2.0 / w2v-BERT steps on both implementations
  nccl                an NCCL process group of world size 1: init, all_reduce / broadcast /
                      all_gather, and sslseq's own collectives through it (the quantizer's
                      diversity statistics and DinoSR's codebook sums, forced onto the collective
                      path; k-means with distributed=True)
  kernels             sslseq bench kernels --shapes base (time and peak memory per implementation, vs reference)
  train               sslseq bench train --size base --dtype bf16 (sslseq vs transformers)
  throughput          sslseq train pretrain_wav2vec2_base.yaml for a few dozen steps on synthetic
                      audio: audio seconds per second on one GPU, bf16, compile=false
  throughput_compile  the same with compile=true (torch.compile, inductor)

Multi-GPU NCCL (2+ processes, tests/test_distributed.py with NCCL) needs a machine of several
GPUs: NCCL refuses two ranks on one GPU, so world size 1 is all one GPU can check.

Output (``--out``, default ``$OUT`` when set, else ``gpu_check/``): ``gpu_check.json`` (every
step: status, seconds, command, results, the log's tail on failure), ``gpu_check.md`` (the same
as tables, with lines ready for the README) and ``gpu_check.log`` (each step's output). Scratch
files go to ``--work`` (default a temporary dir).

``--dry-run`` runs every step on the CPU on tiny shapes (the Triton interpreter, gloo instead of
NCCL, the tiny wav2vec 2.0 config, torch.compile with the ``eager`` backend): it checks the
script, not the GPU, and is part of the test suite (tests/test_gpu_check.py), so the script
cannot rot between GPU loans.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from sslseq.utils import SslseqError, atomic_write_text, get_logger

REPO = Path(__file__).resolve().parents[2]
DEADLINE_S = 420.0  # the global deadline on a GPU: well inside 8 minutes
DRY_DEADLINE_S = 900.0  # a busy CI machine: the dry run takes well under a minute of CPU
MIN_STEP_S = 20.0  # a step is not started with less time than this for it
RESERVE_S = 5.0  # kept back from the deadline for killing a step and writing the report
LOG_CAP = 400_000  # characters of one step's output kept in gpu_check.log (head and tail)
FILES = ("gpu_check.json", "gpu_check.md", "gpu_check.log")

# The dry run's subset of tests/test_cuda.py: every kind of check once, on its cheapest case
# (node ids: a renamed test fails the dry run instead of silently dropping out of it).
DRY_TESTS = [f"tests/test_cuda.py::{t}" for t in (
    "test_triton_rng_matches_torch", "test_gumbel_triton_matches_reference[True-fp32]",
    "test_contrastive_triton_matches_reference[True-fp32]", "test_features_cuda_match_cpu",
    "test_kmeans_lloyd_and_assign_cuda_match_cpu")]  # the pretraining steps: test_kernels.py runs them on the CPU

# The pretraining throughput runs: config, steps, data and the overrides of each mode.
THROUGHPUT = {
    "gpu": dict(config="recipes/conf/pretrain_wav2vec2_base.yaml", steps=30, log_interval=5, utterances=48,
                seconds=(3.0, 16.0), overrides=["device=cuda", "precision=bf16", "optim.update_freq=1",
                                               "optim.sized_for_processes=0"], compile=[]),
    "dry": dict(config="recipes/conf/pretrain_wav2vec2_tiny.yaml", steps=2, log_interval=1, utterances=6,
                seconds=(0.6, 1.5), overrides=["device=cpu", "precision=fp32", "optim.update_freq=1",
                                               "data.max_batch_seconds=3", "data.max_sample_seconds=1.5",
                                               "data.min_sample_seconds=0.5", "data.num_workers=0",
                                               # smaller still: the dry run tests the step, not the model
                                               "model.encoder.encoder.num_layers=1", "model.encoder.encoder.embed_dim=64",
                                               "model.encoder.encoder.ffn_dim=128", "model.latent_vars=32",
                                               "model.num_negatives=5",
                                               "model.encoder.conv_layers=[[32,10,5],[32,3,2],[32,3,2],[32,3,2],"
                                               "[32,3,2],[32,2,2],[32,2,2]]"],
                compile=["compile_backend=eager"]),  # tracing only: inductor's C++ build takes minutes on a CPU
}


@dataclass
class Ctx:
    dry: bool
    work: Path
    out: Path
    python: str = sys.executable

    @property
    def mode(self) -> str:
        return "dry" if self.dry else "gpu"


@dataclass
class Step:
    name: str
    title: str
    timeout: float  # seconds on a GPU
    dry_timeout: float  # seconds in the dry run
    command: Callable[[Ctx], list[str]]
    collect: Callable[[Ctx], dict]  # results from the step's files (also after a timeout)
    env: Callable[[Ctx], dict] | None = None
    shown: Callable[[Ctx], str] | None = None  # the command as a user types it (for the README)


def _child(ctx: Ctx, what: str, *extra: str) -> list[str]:
    return [ctx.python, "-m", "sslseq.bench.gpu", what, str(ctx.work), *(["--dry-run"] if ctx.dry else []), *extra]


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


# ---------------------------------------------------------------- step: env


def _env_collect(ctx: Ctx) -> dict:
    info = _read_json(ctx.work / "env.json") or {}
    problems = []
    if not ctx.dry and not info.get("cuda_available"):
        problems.append("no CUDA GPU visible to torch")
    return {**info, "problems": problems}


# ---------------------------------------------------------------- step: tests


def _tests_command(ctx: Ctx) -> list[str]:
    cmd = [ctx.python, "-m", "pytest", "-v", "-rfEs", "-p", "no:cacheprovider", "--junitxml", str(ctx.work / "pytest.xml"),
           "-m", "cuda", *(DRY_TESTS if ctx.dry else ["tests/test_cuda.py"])]
    if not ctx.dry and _has_module("pytest_timeout"):
        cmd += ["--timeout", "120"]  # a hung test fails alone instead of taking the step's whole time
    return cmd


def _tests_env(ctx: Ctx) -> dict:
    return {"SSLSEQ_TEST_DEVICE": "cpu" if ctx.dry else "cuda"}


_VERBOSE_LINE = re.compile(r"^(tests/\S+::\S+(?:\[[^\]]*\])?) (PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS)")


def _tests_collect(ctx: Ctx) -> dict:
    """Per-test outcomes from the JUnit XML, or, when pytest was killed before writing it, from
    the verbose lines of its output."""
    tests: list[dict] = []
    xml = ctx.work / "pytest.xml"
    if xml.is_file():
        for case in ET.parse(xml).getroot().iter("testcase"):
            tid = f"{case.get('file') or 'tests/test_cuda.py'}::{case.get('name')}"
            outcome, message = "passed", ""
            for kind in ("failure", "error", "skipped"):
                node = case.find(kind)
                if node is not None:
                    outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[kind]
                    message = (node.get("message") or node.text or "").strip()
            tests.append({"id": tid, "outcome": outcome, "seconds": round(float(case.get("time") or 0), 2),
                          "message": message[:600]})
    else:
        log = ctx.work / "tests.log"
        for line in (log.read_text(errors="replace").splitlines() if log.is_file() else []):
            m = _VERBOSE_LINE.match(line)
            if m:
                tests.append({"id": m.group(1), "outcome": m.group(2).lower().replace("xpass", "passed"),
                              "seconds": None, "message": ""})
    counts = {k: sum(t["outcome"] == k for t in tests) for k in ("passed", "failed", "error", "skipped")}
    problems = []
    if not counts["passed"]:
        problems.append("no test passed")
    if counts["failed"] or counts["error"]:
        problems.append(f"{counts['failed']} failed, {counts['error']} errors")
    return {"counts": counts, "tests": tests, "problems": problems, "junit": xml.is_file()}


# ---------------------------------------------------------------- step: nccl


def _nccl_collect(ctx: Ctx) -> dict:
    res = _read_json(ctx.work / "nccl.json") or {"checks": []}
    bad = [c["name"] for c in res.get("checks", []) if not c.get("ok")]
    return {**res, "problems": [f"failed: {', '.join(bad)}"] if bad else []}


# ---------------------------------------------------------------- steps: kernels, train


def _kernels_args(ctx: Ctx) -> list[str]:
    return (["--shapes", "tiny", "--repeats", "1", "--device", "cpu"] if ctx.dry
            else ["--shapes", "base", "--repeats", "10", "--device", "cuda"])


def _kernels_collect(ctx: Ctx) -> dict:
    from sslseq.bench.kernels import GPU_GOALS

    records = _read_json(ctx.work / "kernels.json") or []
    verdicts = []
    for r in records:
        if r["impl"] == "triton" and r["device"] == "cuda":
            goal = GPU_GOALS[r["op"]]
            mem = r["memory_vs_reference"]
            met = r["speedup_vs_reference"] >= goal["speedup"] and mem is not None and mem <= goal["memory"]
            verdicts.append(f"{r['op']} {r.get('size', '')}: triton {r['speedup_vs_reference']:.2f}x faster, memory "
                            f"{mem}x of reference -> GPU goal (>= {goal['speedup']}x, <= {goal['memory']}x) "
                            f"{'met' if met else 'NOT met'}")
    return {"records": records, "verdicts": verdicts, "problems": [] if records else ["no records written"]}


def _train_args(ctx: Ctx) -> list[str]:
    if ctx.dry:
        return ["--size", "tiny", "--dtype", "fp32", "--batch", "1", "--seconds", "0.5", "--steps", "1", "--warmup", "0",
                "--device", "cpu", "--threads", "1"]
    return ["--size", "base", "--dtype", "bf16", "--steps", "10", "--warmup", "3", "--device", "cuda"]


def _train_collect(ctx: Ctx) -> dict:
    from sslseq.bench.train import GOAL

    records = _read_json(ctx.work / "train.json") or []
    verdict = None
    if len(records) == 2:
        ours = records[1]
        met = ours["speedup_vs_transformers"] >= GOAL["speedup"] and ours["memory_vs_transformers"] <= GOAL["memory"]
        verdict = (f"sslseq {ours['speedup_vs_transformers']:.2f}x the speed of transformers, "
                   f"{ours['memory_vs_transformers']:.2f}x its memory -> goal (>= {GOAL['speedup']}x, no more memory) "
                   f"{'met' if met else 'not met'}")
    return {"records": records, "verdict": verdict, "problems": [] if records else ["no records written"]}


# ---------------------------------------------------------------- steps: throughput


def _throughput_overrides(ctx: Ctx, compiled: bool) -> list[str]:
    t = THROUGHPUT[ctx.mode]
    tag = "compile" if compiled else "eager"
    return [f"out_dir={ctx.work / f'tp_{tag}'}", f"data.train={ctx.work / 'tp_data'}", f"optim.max_steps={t['steps']}",
            f"log_interval={t['log_interval']}", "valid_interval=0", "save_interval=1000000", "keep_last=1",
            *t["overrides"], *(t["compile"] if compiled else []), f"compile={'true' if compiled else 'false'}"]


def _throughput_collect(ctx: Ctx, compiled: bool) -> dict:
    """Audio seconds per second from the run's log/train.jsonl (an interval per record): the
    median over the intervals after the first (warm-up, compilation), which is left out."""
    tag = "compile" if compiled else "eager"
    log = ctx.work / f"tp_{tag}" / "log" / "train.jsonl"
    records = []
    for line in (log.read_text().splitlines() if log.is_file() else []):
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill
        if "audio_s_per_s" in r:
            records.append(r)
    extra = _read_json(ctx.work / f"throughput_{tag}.json") or {}
    res: dict[str, Any] = {"config": THROUGHPUT[ctx.mode]["config"], "compile": compiled, **extra,
                           "intervals": [{k: r.get(k) for k in ("step", "loss", "audio_s_per_s", "frames_per_s",
                                                                "padding_ratio")} for r in records]}
    steady = records[1:] or records
    problems = []
    if not records:
        problems.append("no training interval logged")
    else:
        res["audio_s_per_s"] = round(statistics.median(r["audio_s_per_s"] for r in steady), 1)
        res["frames_per_s"] = round(statistics.median(r["frames_per_s"] for r in steady), 1)
        res["steady_intervals"] = len(steady) if len(records) > 1 else 0
        res["last_step"] = records[-1]["step"]
        if not all(isinstance(r.get("loss"), (int, float)) and r["loss"] == r["loss"] and abs(r["loss"]) != float("inf")
                   for r in records):
            problems.append("non-finite loss")
    return {**res, "problems": problems}


def _throughput_shown(ctx: Ctx, compiled: bool) -> str:
    t = THROUGHPUT[ctx.mode]
    return (f"sslseq train {t['config']} out_dir=EXP data.train=DATA optim.max_steps={t['steps']} "
            f"log_interval={t['log_interval']} {' '.join([*t['overrides'], *(t['compile'] if compiled else [])])} "
            f"compile={'true' if compiled else 'false'}")


# ---------------------------------------------------------------- the steps


def _cli(ctx: Ctx, *args: str) -> list[str]:
    return [ctx.python, "-m", "sslseq.cli", *args]


STEPS = [
    Step("env", "versions and the GPU", 60, 300, lambda c: _child(c, "env"), _env_collect),
    Step("tests", "CUDA tests (tests/test_cuda.py -m cuda)", 200, 600, _tests_command, _tests_collect, _tests_env,
         lambda c: "python -m pytest tests/test_cuda.py -m cuda"),
    Step("nccl", "NCCL, world size 1", 60, 300, lambda c: _child(c, "nccl"), _nccl_collect),
    Step("kernels", "sslseq bench kernels", 90, 600,
         lambda c: _cli(c, "bench", "kernels", *_kernels_args(c), "--out", str(c.work / "kernels.json")), _kernels_collect,
         shown=lambda c: "sslseq bench kernels " + " ".join(_kernels_args(c))),
    Step("train", "sslseq bench train vs transformers", 120, 600,
         lambda c: _cli(c, "bench", "train", *_train_args(c), "--out", str(c.work / "train.json")), _train_collect,
         shown=lambda c: "sslseq bench train " + " ".join(_train_args(c))),
    Step("throughput", "pretraining throughput, compile=false", 100, 600, lambda c: _child(c, "throughput"),
         lambda c: _throughput_collect(c, False), shown=lambda c: _throughput_shown(c, False)),
    Step("throughput_compile", "pretraining throughput, compile=true", 240, 600,
         lambda c: _child(c, "throughput", "--compile"), lambda c: _throughput_collect(c, True),
         shown=lambda c: _throughput_shown(c, True)),
]
STEP_NAMES = [s.name for s in STEPS]


# ---------------------------------------------------------------- running


def _has_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def _step_env(ctx: Ctx, step: Step) -> dict:
    env = dict(os.environ)
    env.update(PYTHONUNBUFFERED="1", SSLSEQ_NO_PROGRESS="1",
               PYTHONPATH=os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]))
    if ctx.dry:
        env.update(TRITON_INTERPRET="1", CUDA_VISIBLE_DEVICES="")  # a CPU run, also on a machine with a GPU
    else:
        env.pop("TRITON_INTERPRET", None)  # the compiled kernels, never the interpreter
    if step.env:
        env.update(step.env(ctx))
    return env


def _kill_group(proc: subprocess.Popen) -> None:
    """End the step's process and whatever it started (its own session: pytest, DataLoader workers)."""
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _capped(text: str) -> str:
    if len(text) <= LOG_CAP:
        return text
    head = LOG_CAP // 5
    return f"{text[:head]}\n[... {len(text) - LOG_CAP} characters left out ...]\n{text[-(LOG_CAP - head):]}"


def run_step(ctx: Ctx, step: Step, timeout: float) -> dict:
    import resource

    argv = step.command(ctx)
    log_path = ctx.work / f"{step.name}.log"
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    timed_out, rc, error = False, None, None
    with open(log_path, "wb") as log:
        try:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO,
                                    env=_step_env(ctx, step), start_new_session=True)
        except OSError as e:
            error = f"could not start: {e}"
        else:
            try:
                rc = proc.wait(timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
                _kill_group(proc)
            except BaseException:  # Ctrl-C or a kill of this process: take the step down with it
                _kill_group(proc)
                raise
    seconds = time.monotonic() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)  # of the processes waited for
    text = log_path.read_text(errors="replace") if log_path.is_file() else ""
    try:
        results = step.collect(ctx)
    except Exception as e:  # noqa: BLE001 - a broken result file is this step's failure, not the run's
        results = {"problems": [f"reading the results: {type(e).__name__}: {e}"]}
    problems = list(results.pop("problems", []))
    if timed_out:
        status = "timeout"
        problems.insert(0, f"killed after {timeout:.0f} s (the results are what it wrote before)")
    elif error or rc != 0:
        status = "failed"
        problems.insert(0, error or f"exit status {rc}")
    else:
        status = "failed" if problems else "ok"
    rec = {"name": step.name, "title": step.title, "status": status, "seconds": round(seconds, 1), "cpu_s": round(cpu, 1),
           "timeout_s": round(timeout),
           "rc": rc, "command": " ".join(argv), "problems": problems, "results": results}
    if step.shown:
        rec["shown"] = step.shown(ctx)
    if status != "ok":
        rec["log_tail"] = text[-4000:]
    with open(ctx.out / "gpu_check.log", "a", encoding="utf-8") as combined:
        combined.write(f"\n===== {step.name}: {status} in {seconds:.1f} s (rc {rc}) =====\n$ {' '.join(argv)}\n")
        combined.write(_capped(text))
    return rec


def _commit() -> str:
    if os.environ.get("SSLSEQ_COMMIT"):
        return os.environ["SSLSEQ_COMMIT"]
    try:
        r = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10)
        if r.returncode == 0:
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                                   capture_output=True, text=True, timeout=10).stdout.strip()
            return r.stdout.strip() + ("+changes" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return "unknown (no git here: set SSLSEQ_COMMIT)"


def _write(ctx: Ctx, report: dict) -> None:
    atomic_write_text(ctx.out / "gpu_check.json", json.dumps(report, indent=1, default=str) + "\n")
    atomic_write_text(ctx.out / "gpu_check.md", render_markdown(report))


def main(args) -> None:
    dry = bool(getattr(args, "dry_run", False))
    out = getattr(args, "out", None) or os.environ.get("OUT") or "gpu_check"
    deadline = float(getattr(args, "deadline", None) or (DRY_DEADLINE_S if dry else DEADLINE_S))
    only = list(getattr(args, "only", None) or [])
    skip = set(getattr(args, "skip", None) or [])
    for name in [*only, *skip]:
        if name not in STEP_NAMES:
            raise SslseqError(f"step {name!r} is not one of {', '.join(STEP_NAMES)}")
    steps = [s for s in STEPS if (not only or s.name in only or s.name == "env") and s.name not in skip]
    work = Path(getattr(args, "work", None) or tempfile.mkdtemp(prefix="sslseq_gpu_check_"))
    work.mkdir(parents=True, exist_ok=True)
    ctx = Ctx(dry=dry, work=work, out=Path(out))
    ctx.out.mkdir(parents=True, exist_ok=True)
    (ctx.out / "gpu_check.log").write_text("")
    t_start = time.monotonic()
    report: dict[str, Any] = {
        "started": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"), "dry_run": dry, "commit": _commit(),
        "deadline_s": deadline, "work": str(work), "steps": [], "finished": False,
    }
    _write(ctx, report)
    print(f"[gpu-check] {'DRY RUN (CPU, tiny shapes)' if dry else 'GPU run'}: {len(steps)} steps, deadline {deadline:.0f} s; "
          f"writing {', '.join(str(ctx.out / f) for f in FILES)}", flush=True)
    for step in steps:
        left = deadline - (time.monotonic() - t_start)
        budget = left - RESERVE_S
        if budget < MIN_STEP_S:
            rec = {"name": step.name, "title": step.title, "status": "skipped", "seconds": 0.0,
                   "problems": [f"not started: {max(left, 0):.0f} s left of the {deadline:.0f} s deadline"], "results": {}}
        else:
            timeout = min(step.dry_timeout if dry else step.timeout, budget)
            print(f"[gpu-check] {step.name}: {step.title} (timeout {timeout:.0f} s, {left:.0f} s left)", flush=True)
            rec = run_step(ctx, step, timeout)
        report["steps"].append(rec)
        report["elapsed_s"] = round(time.monotonic() - t_start, 1)
        _write(ctx, report)
        print(f"[gpu-check] {step.name}: {rec['status']} in {rec['seconds']:.1f} s"
              + (f" -- {'; '.join(rec['problems'])}" if rec["problems"] else ""), flush=True)
        if rec["status"] in ("failed", "timeout"):
            tail = rec.get("log_tail", "").splitlines()[-25:]
            print("\n".join(f"    | {line}" for line in tail), flush=True)
    report["finished"] = True
    report["elapsed_s"] = round(time.monotonic() - t_start, 1)
    _write(ctx, report)
    print("\n" + render_markdown(report), flush=True)
    bad = [s["name"] for s in report["steps"] if s["status"] != "ok"]
    if bad:
        raise SslseqError(f"gpu check: {len(bad)} of {len(report['steps'])} steps not ok ({', '.join(bad)}); "
                          f"see {ctx.out / 'gpu_check.md'} and {ctx.out / 'gpu_check.log'}")


# ---------------------------------------------------------------- the markdown summary


def _fmt(x: Any, spec: str = ".1f") -> str:
    return "–" if x is None else format(x, spec) if isinstance(x, (int, float)) else str(x)


def render_markdown(report: dict) -> str:
    steps = {s["name"]: s for s in report["steps"]}
    env = steps.get("env", {}).get("results", {})
    gpu = env.get("gpu_name") or ("none (dry run)" if report["dry_run"] else "none visible")
    lines = [f"# sslseq GPU check{' (DRY RUN: CPU, tiny shapes; no figure here is a GPU figure)' if report['dry_run'] else ''}",
             "",
             f"{report['started']}, commit {report['commit']}; GPU {gpu}; torch {env.get('torch', '?')} "
             f"(CUDA {env.get('torch_cuda', '?')}), triton {env.get('triton', '?')}, transformers "
             f"{env.get('transformers', '?')}, driver {env.get('driver', '?')}; "
             f"{report.get('elapsed_s', 0):.0f} s of the {report['deadline_s']:.0f} s deadline"
             f"{'' if report['finished'] else ' (UNFINISHED: still running, or cut off)'}.",
             "", "| step | status | seconds | CPU s | problems |", "| --- | --- | ---: | ---: | --- |"]
    for s in report["steps"]:
        lines.append(f"| {s['name']} | {s['status']} | {s['seconds']:.1f} | {_fmt(s.get('cpu_s'))} | "
                     f"{'; '.join(s['problems']) or ''} |")
    readme: list[str] = []

    t = steps.get("tests")
    if t:
        c = t["results"].get("counts", {})
        lines += ["", f"## CUDA tests: {c.get('passed', 0)} passed, {c.get('failed', 0)} failed, {c.get('error', 0)} errors, "
                      f"{c.get('skipped', 0)} skipped", ""]
        for x in t["results"].get("tests", []):
            if x["outcome"] != "passed":
                lines.append(f"- {x['outcome']}: `{x['id']}`: {x['message'].splitlines()[0] if x['message'] else ''}")
        readme.append(f"- CUDA tests (`{t.get('shown', '')}`): {c.get('passed', 0)} passed, {c.get('failed', 0)} failed, "
                      f"{c.get('skipped', 0)} skipped")
    n = steps.get("nccl")
    if n:
        r = n["results"]
        lines += ["", f"## NCCL ({r.get('backend', '?')}, world size 1; NCCL {r.get('nccl_version', '?')})", ""]
        for ch in r.get("checks", []):
            lines.append(f"- {'ok' if ch.get('ok') else 'FAILED'}: {ch['name']}: {ch.get('detail', '')}")
        readme.append(f"- NCCL, world size 1 (`sslseq bench gpu --only nccl`): {n['status']}")
    k = steps.get("kernels")
    if k and k["results"].get("records"):
        lines += ["", f"## `{k.get('shown', '')}`", "", "| op | shape | impl | ms | speed-up | peak MB | memory |",
                  "| --- | --- | --- | ---: | ---: | ---: | ---: |"]
        for r in k["results"]["records"]:
            lines.append(f"| {r['op']} | {r['shape']} | {r['impl']} | {_fmt(r['time_ms'], '.2f')} | "
                         f"{_fmt(r['speedup_vs_reference'], '.2f')}x | {_fmt(r['peak_mb'], '.1f')} | "
                         f"{_fmt(r['memory_vs_reference'], '.3f')} |")
        lines += [f"- {v}" for v in k["results"].get("verdicts", [])]
        tri = [r for r in k["results"]["records"] if r["impl"] == "triton"]
        refs = {(r["op"], r["shape"]): r for r in k["results"]["records"] if r["impl"] == "reference"}
        readme.append(f"- `{k.get('shown', '')}`: " + "; ".join(
            f"{r['op']} {r['shape']}: reference {_fmt(refs[(r['op'], r['shape'])]['time_ms'], '.2f')} ms / "
            f"{_fmt(refs[(r['op'], r['shape'])]['peak_mb'], '.0f')} MB, triton {_fmt(r['time_ms'], '.2f')} ms "
            f"(**{_fmt(r['speedup_vs_reference'], '.2f')}x**) / {_fmt(r['peak_mb'], '.1f')} MB "
            f"(**{_fmt(r['memory_vs_reference'], '.3f')}x**)" for r in tri if (r["op"], r["shape"]) in refs))
    tr = steps.get("train")
    if tr and tr["results"].get("records"):
        recs = tr["results"]["records"]
        lines += ["", f"## `{tr.get('shown', '')}` ({recs[0]['shape']})", "",
                  "| implementation | step ms | frames/s | peak MB | speed-up | memory |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
        for r in recs:
            lines.append(f"| {r['impl']} | {_fmt(r['step_ms'])} | {_fmt(r['frames_per_s'], '.0f')} | {_fmt(r['peak_mb'])} | "
                         f"{_fmt(r['speedup_vs_transformers'], '.2f')}x | {_fmt(r['memory_vs_transformers'], '.2f')}x |")
        if tr["results"].get("verdict"):
            lines.append(f"- {tr['results']['verdict']}")
        if len(recs) == 2:
            readme.append(f"- `{tr.get('shown', '')}` ({recs[0]['shape']}): sslseq {_fmt(recs[1]['step_ms'])} ms per step "
                          f"against transformers' {_fmt(recs[0]['step_ms'])} ms (**{_fmt(recs[1]['speedup_vs_transformers'], '.2f')}x**), "
                          f"peak memory {_fmt(recs[1]['peak_mb'], '.0f')} MB against {_fmt(recs[0]['peak_mb'], '.0f')} MB "
                          f"(**{_fmt(recs[1]['memory_vs_transformers'], '.2f')}x**)")
    tps = [steps[x] for x in ("throughput", "throughput_compile") if x in steps]
    if tps:
        lines += ["", "## Pretraining throughput (one GPU, `sslseq train`, synthetic audio)", "",
                  "| compile | audio s/s | frames/s | steady intervals | last step | peak GPU MB | status |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | --- |"]
        for s in tps:
            r = s["results"]
            lines.append(f"| {'true' if r.get('compile') else 'false'} | {_fmt(r.get('audio_s_per_s'))} | "
                         f"{_fmt(r.get('frames_per_s'), '.0f')} | {_fmt(r.get('steady_intervals'), 'd')} | "
                         f"{_fmt(r.get('last_step'), 'd')} | {_fmt(r.get('peak_gpu_mb'), '.0f')} | {s['status']} |")
            readme.append(f"- `{s.get('shown', '')}`: **{_fmt(r.get('audio_s_per_s'))} audio s/s** per GPU "
                          f"(median of {_fmt(r.get('steady_intervals'), 'd')} intervals after the first)")
    lines += ["", "## For the README (command: figure)", "",
              *(readme or ["- nothing measured"]), ""]
    return "\n".join(lines)


# ---------------------------------------------------------------- the step processes


def _write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=1, default=str) + "\n")


def child_env(work: Path, dry: bool) -> None:
    import platform

    info: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform(), "host": platform.node()}
    import torch

    info.update(torch=torch.__version__, torch_cuda=torch.version.cuda, cuda_available=torch.cuda.is_available(),
                cpu_threads=torch.get_num_threads())
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(gpu_name=p.name, gpu_count=torch.cuda.device_count(), capability=f"{p.major}.{p.minor}",
                    gpu_memory_gib=round(p.total_memory / 2**30, 1), multiprocessors=p.multi_processor_count,
                    bf16=torch.cuda.is_bf16_supported(), cudnn=torch.backends.cudnn.version())
        info["nccl"] = _nccl_version(torch)
    from importlib import metadata

    for dist_name, key in (("triton", "triton"), ("transformers", "transformers"), ("numpy", "numpy"),
                           ("accelerate", "accelerate"), ("PyYAML", "yaml"), ("safetensors", "safetensors"),
                           ("pytest", "pytest"), ("pytest-timeout", "pytest_timeout"), ("soundfile", "soundfile")):
        try:  # versions without importing (transformers takes seconds)
            info[key] = metadata.version(dist_name)
        except metadata.PackageNotFoundError:
            info[key] = "MISSING"
    try:  # soundfile must load libsndfile too: the throughput runs read wav files with it
        import soundfile  # noqa: F401
    except Exception as e:  # noqa: BLE001
        info["soundfile"] = f"MISSING ({type(e).__name__}: {e}; carry the wheels of tools/gpu_wheels.sh)"
    smi = shutil.which("nvidia-smi")
    if smi:
        r = subprocess.run([smi, "--query-gpu=name,driver_version,memory.total,clocks.max.sm", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=30)
        info["nvidia_smi"] = r.stdout.strip() or r.stderr.strip()
        if r.returncode == 0 and r.stdout.strip():
            info["driver"] = r.stdout.split(",")[1].strip()
    info["env"] = {k: v for k, v in os.environ.items() if k.startswith(("SSLSEQ_", "TRITON_", "CUDA_", "NCCL_"))}
    print(json.dumps(info, indent=1))
    _write_json(work / "env.json", info)


def _nccl_version(torch) -> str:
    try:
        v = torch.cuda.nccl.version()
    except Exception as e:  # noqa: BLE001
        return f"unknown ({type(e).__name__}: {e})"
    return ".".join(map(str, v)) if isinstance(v, (tuple, list)) else str(v)


def child_nccl(work: Path, dry: bool) -> int:
    """World-size-1 checks of the process group sslseq's distributed code uses (NCCL on the GPU,
    gloo in the dry run), each recorded in nccl.json as soon as it is done."""
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    backend = "gloo" if dry else "nccl"
    dev = torch.device("cpu") if dry else torch.device("cuda", 0)
    res: dict[str, Any] = {"backend": backend, "device": str(dev), "checks": []}
    if not dry:
        torch.cuda.set_device(dev)
        res["nccl_version"] = _nccl_version(torch)

    def check(name: str, fn: Callable[[], str]) -> bool:
        t0 = time.perf_counter()
        try:
            detail, ok = fn(), True
        except Exception as e:  # noqa: BLE001 - recorded, the next check runs
            detail, ok = f"{type(e).__name__}: {e}", False
        res["checks"].append({"name": name, "ok": ok, "detail": detail, "seconds": round(time.perf_counter() - t0, 3)})
        print(f"{'ok' if ok else 'FAILED'}: {name}: {detail}", flush=True)
        _write_json(work / "nccl.json", res)
        return ok

    store = work / "nccl_store"
    store.unlink(missing_ok=True)

    def init() -> str:
        kw = {} if dry else {"device_id": dev}  # NCCL: make the communicator now, not at the first collective
        dist.init_process_group(backend, init_method=f"file://{store}", rank=0, world_size=1,
                                timeout=timedelta(seconds=60), **kw)
        return f"{dist.get_backend()} group of {dist.get_world_size()} process"

    if not check("init_process_group", init):
        return 1
    try:
        check("all_reduce / broadcast / all_gather", lambda: _nccl_basic(dist, torch, dev))
        check("quantizer diversity statistics through the collective (sslseq.objectives.collective)",
              lambda: _nccl_quantizer(torch, dev))
        check("DinoSR codebook sums through the collective", lambda: _nccl_codebooks(torch, dev))
        check("k-means fit with distributed=True under the group", lambda: _nccl_kmeans(torch, dev))
        check("barrier", lambda: (dist.barrier(), "passed")[1])
    finally:
        dist.destroy_process_group()
    return 0 if all(c["ok"] for c in res["checks"]) else 1


def _nccl_basic(dist, torch, dev) -> str:
    done = []
    for dtype in (torch.float32, torch.bfloat16, torch.int64):
        t = torch.arange(4096, device=dev).to(dtype)
        want = t.clone()
        dist.all_reduce(t)
        assert torch.equal(t, want), f"all_reduce {dtype} changed the tensor"
        done.append(str(dtype).replace("torch.", ""))
    b = torch.full((1000,), 3.0, device=dev)
    dist.broadcast(b, src=0)
    assert torch.equal(b, torch.full_like(b, 3.0))
    parts = [torch.empty(7, device=dev)]
    dist.all_gather(parts, torch.arange(7.0, device=dev))
    assert torch.equal(parts[0], torch.arange(7.0, device=dev))
    big = torch.ones(64 * 2**20 // 4, device=dev)  # 64 MB
    dist.all_reduce(big)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    assert float(big.sum()) == big.numel()
    return f"all_reduce ({', '.join(done)}, 64 MB fp32), broadcast, all_gather: unchanged, as with one process"


class _ForcedCollective:
    """sslseq's collectives as under 2+ processes (``world_size`` patched), counting the
    all-reduces: in a real group of one process their sums equal the input, so every result must
    be what the one-process code (no collective) gives."""

    def __init__(self, torch):
        import torch.distributed as dist

        from sslseq.objectives import collective

        self.collective, self.dist, self.calls = collective, dist, 0

    def __enter__(self):
        self.saved_ws, self.saved_ar = self.collective.world_size, self.dist.all_reduce

        def counted(*a, **kw):
            self.calls += 1
            return self.saved_ar(*a, **kw)

        self.collective.world_size = lambda: 2
        self.dist.all_reduce = counted
        return self

    def __exit__(self, *exc):
        self.collective.world_size, self.dist.all_reduce = self.saved_ws, self.saved_ar


def _nccl_quantizer(torch, dev) -> str:
    from sslseq.objectives.quantizer import GumbelVectorQuantizer

    def run(forced: bool):
        torch.manual_seed(0)
        qz = GumbelVectorQuantizer(12, num_vars=8, groups=2, vq_dim=8).to(dev).eval()  # eval: no Gumbel noise
        x = torch.randn(1, 40, 12, generator=torch.Generator().manual_seed(1)).to(dev)
        ctx = _ForcedCollective(torch) if forced else None
        if ctx:
            ctx.__enter__()
        try:
            q = qz(x)
            ((q.num_vars - q.prob_perplexity) / q.num_vars * x.shape[1]).backward()
        finally:
            if ctx:
                ctx.__exit__()
        grads = [p.grad.detach().clone() for p in qz.parameters() if p.grad is not None]
        return q.prob_perplexity.detach(), q.code_perplexity, grads, ctx.calls if ctx else 0

    a, b = run(False), run(True)
    assert b[3] > 0, "no all_reduce was called: the collective path did not run"
    torch.testing.assert_close(b[0], a[0])
    torch.testing.assert_close(b[1], a[1])
    assert len(a[2]) == len(b[2]) > 0
    for x, y in zip(a[2], b[2]):
        torch.testing.assert_close(y, x)
    return (f"{b[3]} all_reduce calls (forward and the differentiable one's backward); perplexities and "
            f"{len(b[2])} gradients equal the one-process values")


def _nccl_codebooks(torch, dev) -> str:
    from sslseq.objectives.codebook import OnlineCodebooks

    def run(forced: bool):
        torch.manual_seed(0)
        cb = OnlineCodebooks(2, 8, 4, decay=0.9).to(dev)
        z = torch.randn(2, 12, 4, generator=torch.Generator().manual_seed(1)).to(dev)
        ctx = _ForcedCollective(torch) if forced else None
        if ctx:
            ctx.__enter__()
        try:
            cb.update(z, cb.assign(z))
        finally:
            if ctx:
                ctx.__exit__()
        return cb.sums.clone(), cb.counts.clone(), ctx.calls if ctx else 0

    a, b = run(False), run(True)
    assert b[2] > 0, "no all_reduce was called"
    torch.testing.assert_close(b[0], a[0])
    torch.testing.assert_close(b[1], a[1])
    return f"{b[2]} all_reduce call(s); EMA sums and counts equal the one-process update"


def _nccl_kmeans(torch, dev) -> str:
    from sslseq.cluster.kmeans import fit_kmeans

    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(300, 4, generator=g) + 8 * i for i in range(3)])
    init = x[[0, 300, 600]].clone()
    one = fit_kmeans(x, 3, init=init, device=dev, verbose=False)
    dist_ = fit_kmeans(x, 3, init=init, device=dev, verbose=False, distributed=True)
    torch.testing.assert_close(dist_[0], one[0])
    assert dist_[2] == one[2]
    return (f"centroids and {one[2]} iterations equal the one-process fit (at world size 1 its all-reduces are skipped: "
            "only the group's device handling runs)")


def _synth_data_dir(root: Path, n: int, seconds: tuple[float, float], seed: int = 0) -> Path:
    """A Kaldi data dir of ``n`` speech-like noise utterances (harmonics over noise, 16 kHz)."""
    import numpy as np
    import soundfile as sf

    if (root / "wav.scp").is_file():
        return root
    tmp = root.with_name(root.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "wav").mkdir(parents=True)
    rng = np.random.default_rng(seed)
    scp, u2s, u2d = [], [], []
    for i in range(n):
        dur = float(rng.uniform(*seconds))
        s = int(dur * 16000)
        t = np.arange(s) / 16000
        f0 = rng.uniform(90, 220) * (1 + 0.1 * np.sin(2 * np.pi * rng.uniform(0.5, 3) * t))
        phase = 2 * np.pi * np.cumsum(f0) / 16000
        x = sum(0.1 / k * np.sin(k * phase) for k in range(1, 8)) + 0.02 * rng.standard_normal(s)
        utt = f"utt{i:04d}"
        sf.write(tmp / "wav" / f"{utt}.wav", x.astype(np.float32), 16000, subtype="PCM_16")
        scp.append(f"{utt} {root / 'wav' / f'{utt}.wav'}\n")
        u2s.append(f"{utt} spk{i % 4}\n")
        u2d.append(f"{utt} {s / 16000:.4f}\n")
    (tmp / "wav.scp").write_text("".join(scp))
    (tmp / "utt2spk").write_text("".join(u2s))
    (tmp / "utt2dur").write_text("".join(u2d))
    os.replace(tmp, root)
    return root


def child_throughput(work: Path, dry: bool, compiled: bool) -> int:
    import torch

    from sslseq.train.trainer import train_from_config

    ctx = Ctx(dry=dry, work=work, out=work)
    t = THROUGHPUT[ctx.mode]
    tag = "compile" if compiled else "eager"
    t0 = time.perf_counter()
    try:
        import soundfile  # noqa: F401 - the trainer reads the wav files with it
    except ImportError as e:
        print(f"soundfile is not importable ({e}): fetch its wheels with `bash tools/gpu_wheels.sh` on a machine with "
              "internet and carry .whl/ to this one (tools/gpu_check.sh installs them)", flush=True)
        return 2
    _synth_data_dir(work / "tp_data", t["utterances"], t["seconds"])
    data_s = time.perf_counter() - t0
    shutil.rmtree(work / f"tp_{tag}", ignore_errors=True)  # a fresh run, never a resumed one
    config, overrides = REPO / t["config"], _throughput_overrides(ctx, compiled)
    print(f"sslseq train {config} " + " ".join(overrides), flush=True)
    t0 = time.perf_counter()
    try:
        train_from_config(config, overrides)
        rc = 0
    except SslseqError as e:  # the step's record says why; the next step runs
        get_logger().error("%s", e)
        rc = 1
    extra = {"rc": rc, "data_seconds": round(data_s, 1), "train_wall_s": round(time.perf_counter() - t0, 1)}
    if torch.cuda.is_available():
        extra["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    summary = work / f"tp_{tag}" / "train_summary.yaml"
    if summary.is_file():
        import yaml

        extra["train_summary"] = yaml.safe_load(summary.read_text())
    _write_json(work / f"throughput_{tag}.json", extra)
    return rc


def child_main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sslseq.bench.gpu", description="one step of `sslseq bench gpu` (internal)")
    ap.add_argument("what", choices=["env", "nccl", "throughput"])
    ap.add_argument("work")
    ap.add_argument("--dry-run", action="store_true")
    ap.add_argument("--compile", action="store_true")
    a = ap.parse_args(argv)
    work = Path(a.work)
    if a.what == "env":
        child_env(work, a.dry_run)
        return 0
    if a.what == "nccl":
        return child_nccl(work, a.dry_run)
    return child_throughput(work, a.dry_run, a.compile)


if __name__ == "__main__":
    sys.exit(child_main())
