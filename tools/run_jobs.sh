#!/usr/bin/env bash
# Run one command for JOB=START:END, Kaldi's run.pl style:
#   tools/run_jobs.sh [--max-parallel N] JOB=0:3 exp/log/dump.JOB.log sslseq feats dump --rank JOB ...
# Every "JOB" in the log path and the command is replaced by the job index. Jobs run locally,
# at most N at a time (default: number of cores); each writes its own log. Exits 1 listing
# the failed jobs and their logs if any failed (rerunning redoes only unfinished work, since
# the tools skip finished shards).
set -euo pipefail
max_parallel=$(nproc)
while [ $# -gt 0 ]; do
  case "$1" in
    --max-parallel) max_parallel=$2; shift 2 ;;
    --cmd) [ "$2" = local ] || { echo "$0: --cmd $2 is not supported yet (local only)" >&2; exit 1; }; shift 2 ;;
    *) break ;;
  esac
done
[ $# -ge 3 ] || { echo "usage: $0 [--max-parallel N] JOB=START:END LOG CMD..." >&2; exit 1; }
range=${1#JOB=}; logpat=$2; shift 2
start=${range%%:*}; end=${range##*:}
mkdir -p "$(dirname "$logpat")"

declare -A pids
failed=()
for ((j = start; j <= end; j++)); do
  while [ "$(jobs -rp | wc -l)" -ge "$max_parallel" ]; do wait -n || true; done
  logf=${logpat//JOB/$j}
  args=()
  for a in "$@"; do args+=("${a//JOB/$j}"); done
  ( echo "# ${args[*]}"; echo "# started $(date)"; "${args[@]}"; rc=$?; echo "# ended $(date) rc=$rc"; exit $rc ) > "$logf" 2>&1 &
  pids[$j]=$!
done
for j in "${!pids[@]}"; do
  wait "${pids[$j]}" || failed+=("$j")
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "$0: ${#failed[@]} of $((end - start + 1)) job(s) failed:" >&2
  for j in "${failed[@]}"; do echo "  job $j: ${logpat//JOB/$j}" >&2; tail -n 5 "${logpat//JOB/$j}" | sed 's/^/    /' >&2; done
  exit 1
fi
