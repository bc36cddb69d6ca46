#!/usr/bin/env bash
# Stop the cluster started by start_local_slurm.sh from DIR (default /tmp/sslseq-slurm):
# slurmd, slurmctld and munged, by the pids they recorded; then remove DIR.
#   tools/slurm/stop_local_slurm.sh [DIR] [--keep]   # --keep leaves DIR (logs) in place
set -uo pipefail
dir=${1:-/tmp/sslseq-slurm}
keep=${2:-}
stop_pid() {  # pidfile name
  local f=$1 pid i
  [ -f "$f" ] || return 0
  pid=$(cat "$f")
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
  kill "$pid" 2>/dev/null
  for ((i = 0; i < 50; i++)); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.2; done
  echo "stop_local_slurm: pid $pid ($f) did not stop on TERM; sending KILL" >&2
  kill -9 "$pid" 2>/dev/null
}
[ -d "$dir" ] || exit 0
stop_pid "$dir/slurmd.pid"
stop_pid "$dir/slurmctld.pid"
stop_pid "$dir/munge/munged.pid"
[ "$keep" = --keep ] || rm -rf "$dir"
