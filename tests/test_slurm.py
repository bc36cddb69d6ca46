"""tools/run_jobs.sh: the local and Slurm paths of the parallel job runner.

Two layers:
- with fake ``sbatch`` / ``squeue`` / ``scancel`` on PATH (always run): the fake sbatch records
  its arguments and runs the array tasks of the generated batch script locally, expanding
  ``--output`` the way Slurm does; this checks the script, the options taken from the config,
  argument quoting, the failure listing, reruns of failed ranks only, polling and cancelling.
- against a real single-node Slurm started by tools/slurm/start_local_slurm.sh (needs root and
  Debian's slurmctld, slurmd, slurm-client and munge: ``bash tools/install.sh --test`` installs
  them as root): a rank that fails and its rerun, a cancelled task, GPU requests (two stand-in
  GPUs), and the recipe's --nj stages 2 (features) and 3 (k-means labels) through Slurm.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
RUN_JOBS = ROOT / "tools" / "run_jobs.sh"
START = ROOT / "tools" / "slurm" / "start_local_slurm.sh"
STOP = ROOT / "tools" / "slurm" / "stop_local_slurm.sh"

# Arguments a shell would mangle or execute if the runner evaluated them.
NASTY = ["a b", "$(touch pwned1)", "`touch pwned2`", "it's \"quoted\"", "line1\nline2",
         "x; touch pwned3", "*", "out.JOB.txt", "--mem", "%a %% 100%", ""]
DUMP_ARGV = ["python3", "-c", "import json, sys; json.dump(sys.argv[2:], open(sys.argv[1], 'w'))"]


def expected_argv(rank: int) -> list[str]:
    return [a.replace("JOB", str(rank)) for a in NASTY]


def run(args, cwd: Path, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(RUN_JOBS), *map(str, args)], cwd=cwd, env=env or os.environ.copy(),
                          capture_output=True, text=True, timeout=timeout)


# ---------------------------------------------------------------- fake Slurm

FAKE_SBATCH = r'''#!/usr/bin/env python3
"""Fake sbatch: records argv, runs every array task of the script now, prints a job id."""
import json, os, re, subprocess, sys
from pathlib import Path
state = Path(os.environ["FAKE_SLURM_DIR"])
argv = sys.argv[1:]
with open(state / "sbatch.jsonl", "a") as f:
    f.write(json.dumps({"argv": argv, "cwd": os.getcwd()}) + "\n")
if (state / "sbatch_fails").exists():
    sys.exit("sbatch: error: invalid partition specified: nope")
array = [a.split("=", 1)[1] for a in argv if a.startswith("--array=")][0]
script = argv[-1]
ranks = []
for part in array.split("%")[0].split(","):
    a, _, b = part.partition("-")
    ranks += range(int(a), int(b or a) + 1)
opts = [line[len("#SBATCH "):].strip() for line in open(script) if line.startswith("#SBATCH ")]
output = [o.split("=", 1)[1] for o in opts if o.startswith("--output=")][0]
counter = state / "next_id"
job = int(counter.read_text()) if counter.exists() else 100
counter.write_text(str(job + 1))
for r in ranks:  # Slurm's filename patterns: %a is the array index, %% a literal %
    out = re.sub(r"%([%a])", lambda m: "%" if m[1] == "%" else str(r), output)
    with open(out, "w") as f:
        subprocess.run(["bash", script], stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                       env={**os.environ, "SLURM_ARRAY_TASK_ID": str(r), "SLURM_ARRAY_JOB_ID": str(job)})
print(job)
'''

# squeue: FAKE_SLURM_DIR/squeue_busy holds how many more polls list the job ("forever": always);
# after that it answers as Slurm does once the job is purged.
FAKE_SQUEUE = r'''#!/usr/bin/env bash
d=$FAKE_SLURM_DIR
echo "$*" >> "$d/squeue.log"
busy=$(cat "$d/squeue_busy" 2>/dev/null || echo 0)
if [ "$busy" = forever ]; then echo 100; exit 0; fi
if [ "$busy" -gt 0 ]; then echo $((busy - 1)) > "$d/squeue_busy"; echo 100; exit 0; fi
echo "slurm_load_jobs error: Invalid job id specified" >&2; exit 1
'''

FAKE_SCANCEL = r'''#!/usr/bin/env bash
echo "$*" >> "$FAKE_SLURM_DIR/scancel.log"
'''


@pytest.fixture
def fake_slurm(tmp_path: Path):
    """(env, state dir): PATH starts with fake sbatch/squeue/scancel."""
    bindir, state = tmp_path / "fakebin", tmp_path / "fakestate"
    bindir.mkdir()
    state.mkdir()
    for name, text in (("sbatch", FAKE_SBATCH), ("squeue", FAKE_SQUEUE), ("scancel", FAKE_SCANCEL)):
        (bindir / name).write_text(text)
        (bindir / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}", "FAKE_SLURM_DIR": str(state)}
    env.pop("SSLSEQ_SLURM_JOB_CONF", None)
    env.pop("SLURM_CONF", None)
    return env, state


def sbatch_calls(state: Path) -> list[dict]:
    f = state / "sbatch.jsonl"
    return [json.loads(line) for line in f.read_text().splitlines()] if f.exists() else []


def write_conf(path: Path, **kv) -> Path:
    path.write_text("# test config\n" + "".join(f"{k} = {v}   # a comment\n" for k, v in kv.items()))
    return path


def test_sbatch_script_takes_config_options_and_passes_arguments_unevaluated(fake_slurm, tmp_path):
    env, state = fake_slurm
    work = tmp_path / "work"
    work.mkdir()
    conf = write_conf(tmp_path / "slurm.conf", partition="gpuq", mem="4G", cpus=4, gpu=2, time="1:00:00",
                      extra="--account=proj --qos=low", poll_interval=0)
    r = run(["--cmd", "slurm", "--config", conf, "--mem", "8G", "--max-parallel", 2,
             "JOB=0:2", "exp/log/dump.JOB.log", *DUMP_ARGV, "argv.JOB.json", *NASTY], work, env)
    assert r.returncode == 0, r.stderr
    assert "all 3 rank(s) succeeded" in r.stderr
    for rank in range(3):
        assert json.loads((work / f"argv.{rank}.json").read_text()) == expected_argv(rank)
        log = (work / f"exp/log/dump.{rank}.log").read_text()
        assert f"(Slurm job 100_{rank})" in log and "rc=0" in log
        assert (work / f"exp/log/dump.{rank}.log.ok").exists()
    assert not list(work.glob("pwned*")), "an argument was evaluated by a shell"

    [call] = sbatch_calls(state)
    script = work / "exp/log/q/dump.sh"
    assert call["argv"] == ["--parsable", "--array=0-2%2", "exp/log/q/dump.sh"]
    assert call["cwd"] == str(work)
    sbatch_lines = [line for line in script.read_text().splitlines() if line.startswith("#SBATCH ")]
    assert sbatch_lines == [
        "#SBATCH --job-name=dump", f"#SBATCH --output={work}/exp/log/dump.%a.log", "#SBATCH --open-mode=truncate",
        "#SBATCH --partition=gpuq", "#SBATCH --mem=8G", "#SBATCH --cpus-per-task=4", "#SBATCH --gres=gpu:2",
        "#SBATCH --time=1:00:00", "#SBATCH --account=proj", "#SBATCH --qos=low"]
    assert (work / "exp/log/q/dump.jobid").read_text().strip() == "100"


def test_failed_ranks_are_listed_and_only_they_are_resubmitted(fake_slurm, tmp_path):
    env, state = fake_slurm
    conf = write_conf(tmp_path / "slurm.conf", poll_interval=0)
    # rank 1 and 3 fail until the file "fixed" exists
    job = ["--cmd", "slurm", "--config", conf, "JOB=0:4", "log/t.JOB.log",
           "bash", "-c", 'echo "rank $1"; case $1 in 1|3) [ -f fixed ] || { echo "boom $1"; exit 3; } ;; esac', "_", "JOB"]
    r = run(job, tmp_path, env)
    assert r.returncode == 1
    assert "2 of 5 rank(s) failed" in r.stderr
    assert "rank 1: log/t.1.log" in r.stderr and "rank 3: log/t.3.log" in r.stderr
    assert "boom 3" in r.stderr  # the tail of the failed log
    assert "rank 0:" not in r.stderr
    assert "rc=3" in (tmp_path / "log/t.1.log").read_text()
    assert sorted(p.name for p in (tmp_path / "log").glob("*.ok")) == ["t.0.log.ok", "t.2.log.ok", "t.4.log.ok"]
    first_log0 = (tmp_path / "log/t.0.log").read_text()

    (tmp_path / "fixed").touch()
    r = run(job, tmp_path, env)
    assert r.returncode == 0, r.stderr
    assert "3 of 5 rank(s) already done, skipped: 0 2 4" in r.stderr
    assert [c["argv"][1] for c in sbatch_calls(state)] == ["--array=0-4", "--array=1,3"]
    assert (tmp_path / "log/t.0.log").read_text() == first_log0  # not rerun
    assert "(Slurm job 101_3)" in (tmp_path / "log/t.3.log").read_text()

    # everything done: no submission at all
    r = run(job, tmp_path, env)
    assert r.returncode == 0 and "5 of 5 rank(s) already done" in r.stderr
    assert len(sbatch_calls(state)) == 2
    # a changed command is new work for every rank; --skip-done false redoes finished ranks
    r = run([*job, "extra-arg"], tmp_path, env)
    assert r.returncode == 0 and [c["argv"][1] for c in sbatch_calls(state)[2:]] == ["--array=0-4"]
    r = run(["--skip-done", "false", *job, "extra-arg"], tmp_path, env)
    assert r.returncode == 0 and [c["argv"][1] for c in sbatch_calls(state)[2:]] == ["--array=0-4"] * 2


def test_waits_while_squeue_lists_the_job(fake_slurm, tmp_path):
    env, state = fake_slurm
    (state / "squeue_busy").write_text("3")
    conf = write_conf(tmp_path / "slurm.conf", poll_interval=0.05)
    r = run(["--cmd", "slurm", "--config", conf, "JOB=0:1", "log/w.JOB.log", "true"], tmp_path, env)
    assert r.returncode == 0, r.stderr
    assert (state / "squeue.log").read_text().splitlines() == ["-h -j 100 -o %i"] * 4


def test_interrupt_cancels_the_job_array(fake_slurm, tmp_path):
    env, state = fake_slurm
    (state / "squeue_busy").write_text("forever")
    conf = write_conf(tmp_path / "slurm.conf", poll_interval=0.1)
    p = subprocess.Popen(["bash", str(RUN_JOBS), "--cmd", "slurm", "--config", str(conf), "JOB=0:1",
                          "log/i.JOB.log", "true"], cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not (state / "squeue.log").exists():
        assert time.time() < deadline and p.poll() is None, "the runner never polled squeue"
        time.sleep(0.05)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=30)
    assert p.returncode == 130, err
    assert (state / "scancel.log").read_text().split() == ["100"]
    assert "cancelling Slurm job 100" in err


def test_percent_in_log_path_is_escaped_for_slurm(fake_slurm, tmp_path):
    env, state = fake_slurm
    conf = write_conf(tmp_path / "slurm.conf", poll_interval=0)
    r = run(["--cmd", "slurm", "--config", conf, "JOB=3:4", "log%a/x.JOB.log", "echo", "hi", "JOB"], tmp_path, env)
    assert r.returncode == 0, r.stderr
    assert f"#SBATCH --output={tmp_path}/log%%a/x.%a.log" in (tmp_path / "log%a/q/x.sh").read_text()
    assert "hi 4" in (tmp_path / "log%a/x.4.log").read_text()


def test_rank_killed_without_exit_code_is_failed_after_log_wait(fake_slurm, tmp_path):
    env, state = fake_slurm
    conf = write_conf(tmp_path / "slurm.conf", poll_interval=0, log_wait=2)
    # rank 1 kills its batch script (as Slurm does at a time limit): no exit code, no marker
    t0 = time.time()
    r = run(["--cmd", "slurm", "--config", conf, "JOB=0:1", "log/k.JOB.log",
             "bash", "-c", '[ "$1" = 0 ] || kill -9 $PPID', "_", "JOB"], tmp_path, env)
    assert r.returncode == 1 and "1 of 2 rank(s) failed" in r.stderr and "rank 1: log/k.1.log" in r.stderr
    assert 2 <= time.time() - t0 < 30  # waited log_wait seconds for a late marker
    assert "rc=" not in (tmp_path / "log/k.1.log").read_text()


@pytest.mark.parametrize("conf_text, flags, message", [
    ("memory = 4G\n", [], "slurm.conf:1: unknown key 'memory'"),
    ("mem 4G\n", [], "slurm.conf:1: expected 'key = value'"),
    ("gpu = two\n", [], "gpu='two': a number is needed"),
    ("", ["--gpu", "1 2"], "contains whitespace"),
    ("", ["--cmd", "pbs"], "--cmd pbs: use local or slurm"),
])
def test_bad_options_are_clear_errors(fake_slurm, tmp_path, conf_text, flags, message):
    env, state = fake_slurm
    (tmp_path / "slurm.conf").write_text(conf_text)
    r = run(["--cmd", "slurm", "--config", tmp_path / "slurm.conf", *flags, "JOB=0:1", "log/e.JOB.log", "true"],
            tmp_path, env)
    assert r.returncode == 1 and message in r.stderr, r.stderr
    assert not sbatch_calls(state)


def test_sbatch_error_is_reported(fake_slurm, tmp_path):
    env, state = fake_slurm
    (state / "sbatch_fails").touch()
    r = run(["--cmd", "slurm", "--config", write_conf(tmp_path / "c.conf", poll_interval=0),
             "JOB=0:1", "log/e.JOB.log", "true"], tmp_path, env)
    assert r.returncode == 1
    assert "sbatch --array=0-1 log/q/e.sh failed: sbatch: error: invalid partition specified: nope" in r.stderr


def test_rank_that_never_starts_is_not_reported_with_its_old_log(fake_slurm, tmp_path):
    env, state = fake_slurm
    conf = write_conf(tmp_path / "slurm.conf", poll_interval=0, log_wait=0)
    job = ["--cmd", "slurm", "--config", conf, "JOB=0:0", "log/n.JOB.log", "bash", "-c", "echo old run; exit 2"]
    assert run(job, tmp_path, env).returncode == 1
    # the array is accepted but its task never runs (cancelled while pending)
    fake = Path(env["PATH"].split(":")[0]) / "sbatch"
    fake.write_text("#!/usr/bin/env bash\necho 555\n")
    r = run(job, tmp_path, env)
    assert r.returncode == 1 and "(no log: the rank never started)" in r.stderr and "old run" not in r.stderr


def test_default_config_is_the_recipes_one(fake_slurm, tmp_path):
    env, state = fake_slurm
    (state / "squeue_busy").write_text("0")
    r = run(["--cmd", "slurm", "JOB=0:0", "log/d.JOB.log", "true"], tmp_path, env)
    assert r.returncode == 0, r.stderr
    text = (tmp_path / "log/q/d.sh").read_text()
    assert "#SBATCH --mem=4G" in text and "#SBATCH --time=4:00:00" in text and "--gres" not in text


def test_local_reruns_only_failed_ranks(tmp_path):
    job = ["--cmd", "local", "--max-parallel", 2, "JOB=0:3", "log/l.JOB.log",
           "bash", "-c", 'echo "$1" >> runs; [ "$1" != 2 ] || [ -f fixed ]', "_", "JOB"]
    r = run(job, tmp_path)
    assert r.returncode == 1 and "1 of 4 rank(s) failed" in r.stderr and "rank 2: log/l.2.log" in r.stderr
    assert "rc=1" in (tmp_path / "log/l.2.log").read_text()
    (tmp_path / "fixed").touch()
    r = run(job, tmp_path)
    assert r.returncode == 0, r.stderr
    assert sorted((tmp_path / "runs").read_text().split()) == ["0", "1", "2", "2", "3"]
    r = run([*job[:4], "JOB=0:3", "log/l.JOB.log", *DUMP_ARGV, "argv.JOB.json", *NASTY], tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "argv.3.json").read_text()) == expected_argv(3)
    assert not list(tmp_path.glob("pwned*"))


# ---------------------------------------------------------------- real Slurm

SLURM_PROGRAMS = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "sinfo")


def free_port_pair() -> int:
    for _ in range(100):
        port = random.randrange(20000, 40000)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 1))
            return port
        except OSError:
            continue
    raise RuntimeError("no two free consecutive TCP ports found")


@pytest.fixture(scope="session")
def real_slurm():
    """Environment for a running single-node Slurm (SLURM_CONF set); stopped after the session."""
    if os.geteuid() != 0:
        pytest.skip("a real Slurm needs root (slurmd and munged run as root here); the fake-sbatch tests cover the logic")
    missing = [p for p in SLURM_PROGRAMS if shutil.which(p) is None]
    if missing:
        pytest.skip(f"Slurm is not installed (no {' '.join(missing)}): "
                    "apt-get install slurmctld slurmd slurm-client munge, or bash tools/install.sh --test as root")
    # a short path: munge's socket lives under it and unix socket paths must fit in 108 bytes
    d = Path(tempfile.mkdtemp(prefix="sslseq-slurm-", dir="/tmp"))
    # two stand-in GPUs, so --gpu requests are really scheduled by Slurm
    env = {**os.environ, "SSLSEQ_SLURM_PORT": str(free_port_pair()), "SSLSEQ_SLURM_GPUS": "fake:2"}
    r = subprocess.run([str(START), str(d)], env=env, capture_output=True, text=True, timeout=180)
    if r.returncode != 0:
        subprocess.run([str(STOP), str(d)], timeout=60)
        pytest.fail(f"start_local_slurm.sh failed although Slurm is installed:\n{r.stderr[-4000:]}")
    assert r.stdout.strip() == f"export SLURM_CONF={d}/slurm.conf"
    env["SLURM_CONF"] = f"{d}/slurm.conf"
    job_conf = d / "jobs.conf"
    write_conf(job_conf, mem="500M", cpus=1, time="10", poll_interval=1, log_wait=3)
    env["SSLSEQ_SLURM_JOB_CONF"] = str(job_conf)
    try:
        yield env
    finally:
        subprocess.run([str(STOP), str(d)], timeout=60)


def test_real_slurm_lists_failed_rank_and_reruns_only_it(real_slurm, tmp_path):
    job = ["--cmd", "slurm", "JOB=0:2", "log/t.JOB.log",
           "bash", "-c", 'echo "rank $1 on $(hostname)"; [ "$1" != 1 ] || [ -f fixed ]', "_", "JOB"]
    r = run(job, tmp_path, real_slurm, timeout=300)
    assert r.returncode == 1, r.stderr
    assert "1 of 3 rank(s) failed" in r.stderr and "rank 1: log/t.1.log" in r.stderr
    first_job = (tmp_path / "log/q/t.jobid").read_text().strip()
    assert f"(Slurm job {first_job}_1)" in (tmp_path / "log/t.1.log").read_text()
    assert "rc=1" in (tmp_path / "log/t.1.log").read_text()
    assert sorted(p.name for p in (tmp_path / "log").glob("*.ok")) == ["t.0.log.ok", "t.2.log.ok"]
    log0 = (tmp_path / "log/t.0.log").read_text()
    assert f"(Slurm job {first_job}_0)" in log0 and "rc=0" in log0

    (tmp_path / "fixed").touch()
    r = run(job, tmp_path, real_slurm, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "skipped: 0 2" in r.stderr and "(--array=1," in r.stderr
    second_job = (tmp_path / "log/q/t.jobid").read_text().strip()
    assert second_job != first_job
    assert f"(Slurm job {second_job}_1)" in (tmp_path / "log/t.1.log").read_text()
    assert (tmp_path / "log/t.0.log").read_text() == log0  # rank 0 was not resubmitted


def test_real_slurm_cancelled_rank_is_listed_with_slurms_message(real_slurm, tmp_path):
    p = subprocess.Popen(["bash", str(RUN_JOBS), "--cmd", "slurm", "JOB=0:1", "log/c.JOB.log",
                          "bash", "-c", '[ "$1" = 0 ] || sleep 120', "_", "JOB"],
                         cwd=tmp_path, env=real_slurm, stderr=subprocess.PIPE, text=True)
    log1 = tmp_path / "log/c.1.log"
    deadline = time.time() + 120
    while not (log1.exists() and "# started" in log1.read_text()):
        assert time.time() < deadline and p.poll() is None, "rank 1 never started"
        time.sleep(0.5)
    jobid = (tmp_path / "log/q/c.jobid").read_text().strip()
    subprocess.run(["scancel", f"{jobid}_1"], env=real_slurm, check=True, timeout=30)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 1 and "1 of 2 rank(s) failed" in err and "rank 1: log/c.1.log" in err, err
    assert "CANCELLED" in log1.read_text()  # Slurm's own message lands in the rank's log
    assert (tmp_path / "log/c.0.log.ok").exists() and not (tmp_path / "log/c.1.log.ok").exists()


def test_real_slurm_gives_each_rank_the_gpus_it_asks_for(real_slurm, tmp_path):
    r = run(["--cmd", "slurm", "--gpu", 1, "JOB=0:3", "log/g.JOB.log",
             "bash", "-c", 'echo "$CUDA_VISIBLE_DEVICES" > "gpu.$1"', "_", "JOB"], tmp_path, real_slurm, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "#SBATCH --gres=gpu:1" in (tmp_path / "log/q/g.sh").read_text()
    for rank in range(4):  # one of the node's two GPUs each
        assert (tmp_path / f"gpu.{rank}").read_text().strip() in ("0", "1")
    # more GPUs than the node has: Slurm refuses the array, and the runner says why
    r = run(["--cmd", "slurm", "--gpu", 3, "JOB=0:1", "log/h.JOB.log", "true"], tmp_path, real_slurm, timeout=120)
    assert r.returncode == 1 and "sbatch --array=0-1 log/q/h.sh failed: sbatch: error:" in r.stderr, r.stderr


@pytest.mark.skipif(shutil.which("espeak-ng") is None or shutil.which("bible") is None,
                    reason="espeak-ng and bible-kjv are needed to synthesize the corpus (bash tools/install.sh)")
def test_real_slurm_runs_the_recipe_feature_and_label_stages(real_slurm, tmp_path):
    env = {**real_slurm, "SSLSEQ_NO_PROGRESS": "1"}
    r = subprocess.run(["bash", str(ROOT / "egs/synth_en/run.sh"), "--tiny", "true", "--cmd", "slurm", "--nj", "2",
                        "--stage", "0", "--stop-stage", "3", "--workdir", str(tmp_path)],
                       env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-6000:]
    for subset in ("train", "dev", "test"):
        out = tmp_path / "dump/mfcc" / subset
        assert (out / ".done").exists()
        assert (out / "log/q/dump.sh").exists()
        for rank in range(2):
            log = (out / f"log/dump.{rank}.log").read_text()
            assert "(Slurm job " in log and "rc=0" in log, log
            assert (out / f"{rank}_2.npy").exists() and (out / f"log/dump.{rank}.log.ok").exists()
        labels = tmp_path / "dump/labels/mfcc_k20"  # stage 3: k-means labelling in --nj blocks
        assert (labels / f"{subset}.km").exists()
        for rank in range(2):
            log = (labels / f"log/label_{subset}.{rank}.log").read_text()
            assert "(Slurm job " in log and "rc=0" in log, log
    assert r.stderr.count("as Slurm job array") == 6  # 3 sets x (features, labels)

    # stage 4 as one Slurm job whose task runs torchrun with 2 (CPU) processes
    r = subprocess.run(["bash", str(ROOT / "egs/synth_en/run.sh"), "--tiny", "true", "--cmd", "slurm", "--ngpu", "2",
                        "--device", "cpu", "--pretrain-steps", "4", "--stage", "4", "--stop-stage", "4",
                        "--workdir", str(tmp_path)], env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-6000:]
    pretrain = tmp_path / "exp/pretrain_hubert_cpu_mfcc_k20"
    log = (pretrain / "log/train.log").read_text()
    assert "(Slurm job " in log and "rc=0" in log and "launch_train.sh 2 train" in log, log[-3000:]
    assert "#SBATCH --cpus-per-task=2" in (pretrain / "log/q/train.sh").read_text()
    summary = yaml.safe_load((pretrain / "train_summary.yaml").read_text())
    assert summary["processes"] == 2 and summary["steps"] == 4


def test_nodes_option_asks_one_task_per_node(fake_slurm, tmp_path):
    """--nodes N (multi-node training): one task per node; the command starts its processes."""
    env, state = fake_slurm
    conf = write_conf(tmp_path / "slurm.conf", poll_interval=0)
    r = run(["--cmd", "slurm", "--config", conf, "--nodes", 4, "JOB=0:0", "log/train.log", "true"], tmp_path, env)
    assert r.returncode == 0, r.stderr
    lines = (tmp_path / "log/q/train.sh").read_text().splitlines()
    assert "#SBATCH --nodes=4" in lines and "#SBATCH --ntasks-per-node=1" in lines
    r = run(["--cmd", "slurm", "--config", conf, "--nodes", "two", "JOB=0:0", "log/x.log", "true"], tmp_path, env)
    assert r.returncode == 1 and "nodes='two': a number is needed" in r.stderr, r.stderr


def test_launch_train_on_several_nodes_starts_torchrun_on_each_through_srun(tmp_path):
    """In a 2-node allocation tools/launch_train.sh runs `srun ... torchrun` with the rendezvous
    on the first node (stand-in srun/scontrol record what they are given)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$OUT"\n')
    (bin_dir / "scontrol").write_text('#!/bin/sh\nprintf "gpu-a\\ngpu-b\\n"\n')
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "OUT": str(tmp_path / "argv"),
           "SLURM_NNODES": "2", "SLURM_JOB_NODELIST": "gpu-[a-b]", "SLURM_JOB_ID": "77", "SSLSEQ_RDZV_PORT": "29611"}
    r = subprocess.run(["bash", str(ROOT / "tools/launch_train.sh"), "8", "train", "c.yaml", "out_dir=exp/x"],
                       env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "argv").read_text().split("\n")[:-1] == [
        "--nodes", "2", "--ntasks-per-node", "1", "torchrun", "--nnodes", "2", "--nproc-per-node", "8",
        "--rdzv-backend", "c10d", "--rdzv-endpoint", "gpu-a:29611", "--rdzv-id", "77",
        "-m", "sslseq.cli", "train", "c.yaml", "out_dir=exp/x"]
    r = subprocess.run(["bash", str(ROOT / "tools/launch_train.sh"), "0", "train"], capture_output=True, text=True)
    assert r.returncode == 1 and "NPROC >= 1" in r.stderr
