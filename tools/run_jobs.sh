#!/usr/bin/env bash
# Run one command for JOB=START:END, Kaldi's run.pl / slurm.pl style:
#   tools/run_jobs.sh [options] JOB=0:3 exp/log/dump.JOB.log sslseq feats dump --rank JOB ...
# Every "JOB" in the log path and in the command's arguments is replaced by the rank. Each rank
# writes its own log (the command line, start/end time, exit code) and, on success, a marker
# LOG.ok holding a hash of its working directory and command. A rank whose marker matches is
# skipped, so rerunning a failed call reruns only the ranks that did not succeed (delete the .ok
# files, or pass --skip-done false, to redo them all). Exits 1 listing the failed ranks and
# their logs. Arguments are passed as they are: nothing in them is evaluated by a shell.
#
# Options:
#   --cmd local|slurm     local: ranks run on this machine, --max-parallel at a time (default:
#                         the number of cores). slurm: one job array (sbatch --array) whose task
#                         i runs rank i; waits for it by polling squeue.
#   --max-parallel N      local: ranks at once; slurm: array throttle (--array=...%N)
#   --skip-done BOOL      skip ranks whose LOG.ok matches (default true)
#   --config FILE         slurm options, lines "key = value" (# comments); keys: partition, mem,
#                         cpus, gpu, time, extra (more sbatch options), poll_interval (seconds
#                         between squeue checks), log_wait (seconds to wait for the .ok marker of
#                         a rank whose log has no exit code yet: shared file systems show files late).
#                         Default: $SSLSEQ_SLURM_JOB_CONF, else conf/slurm.conf in the current
#                         directory, else recipes/conf/slurm.conf.
#   --partition P  --mem M  --cpus N  --gpu N  --time T
#                         override the config for this call (--gpu N requests --gres=gpu:N);
#                         ignored by --cmd local.
#   --nodes N             slurm: N nodes per task, one task per node (multi-node training:
#                         the command starts its processes on every node itself, e.g. srun)
# With --cmd slurm the batch script is written to LOGDIR/q/NAME.sh (resubmit it by hand with
# sbatch --array=RANKS LOGDIR/q/NAME.sh), and Slurm's own messages for a task (time limit,
# out of memory) land in the rank's log.
set -euo pipefail
me=$(basename "$0")
root_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
die() { echo "$me: $*" >&2; exit 1; }

cmd=local max_parallel='' skip_done=true config=''
declare -A over=()
while [ $# -gt 0 ]; do
  case "$1" in
    --cmd|--max-parallel|--skip-done|--config|--partition|--mem|--cpus|--gpu|--time|--nodes)
      [ $# -ge 2 ] || die "option $1 needs a value"
      case "$1" in
        --cmd) cmd=$2 ;;
        --max-parallel) max_parallel=$2 ;;
        --skip-done) skip_done=$2 ;;
        --config) config=$2 ;;
        *) over[${1#--}]=$2 ;;
      esac
      shift 2 ;;
    --*) die "unknown option $1 (options: --cmd --max-parallel --skip-done --config --partition --mem --cpus --gpu --time --nodes)" ;;
    *) break ;;
  esac
done
[ $# -ge 3 ] || die "usage: $me [options] JOB=START:END LOG CMD... (see the top of $0)"
[[ "$1" =~ ^JOB=([0-9]+):([0-9]+)$ ]] || die "bad job range '$1': expected JOB=START:END, e.g. JOB=0:3"
start=$((10#${BASH_REMATCH[1]})) end=$((10#${BASH_REMATCH[2]}))
[ "$start" -le "$end" ] || die "bad job range '$1': START > END"
logpat=$2; shift 2
[[ "$logpat" == *JOB* ]] || [ "$start" = "$end" ] || die "log path '$logpat' has no JOB: the ranks would share one log"
case "$cmd" in local|slurm) ;; *) die "--cmd $cmd: use local or slurm" ;; esac
case "$skip_done" in true|false) ;; *) die "--skip-done $skip_done: use true or false" ;; esac
[ -z "$max_parallel" ] || [[ "$max_parallel" =~ ^[1-9][0-9]*$ ]] || die "--max-parallel $max_parallel: a positive integer is needed"
logdir=$(dirname "$logpat")
mkdir -p "$logdir"
workdir=$PWD

# The identity of a rank's work: where it runs and its exact arguments.
signature() { printf '%s\0' "$workdir" "$@" | md5sum | cut -d' ' -f1; }
rank_args() { local a; args=(); for a in "${cmd_tmpl[@]}"; do args+=("${a//JOB/$1}"); done; }
cmd_tmpl=("$@")

# Ranks still to do.
todo=() skipped=()
declare -A sig=()
for ((j = start; j <= end; j++)); do
  rank_args "$j"
  sig[$j]=$(signature "${args[@]}")
  okf=${logpat//JOB/$j}.ok
  if [ "$skip_done" = true ] && [ -f "$okf" ] && [ "$(cat "$okf")" = "${sig[$j]}" ]; then
    skipped+=("$j")
  else
    todo+=("$j")
  fi
done
total=$((end - start + 1))
[ ${#skipped[@]} -eq 0 ] || echo "$me: ${#skipped[@]} of $total rank(s) already done, skipped: ${skipped[*]} (their ${logpat##*/}.ok markers match)" >&2
[ ${#todo[@]} -gt 0 ] || exit 0

report_failures() {  # ranks...
  local j logf
  echo "$me: $# of $total rank(s) failed (rerun the same command to redo only these):" >&2
  for j in "$@"; do
    logf=${logpat//JOB/$j}
    echo "  rank $j: $logf" >&2
    if [ -s "$logf" ]; then tail -n 5 "$logf" | sed 's/^/    /' >&2
    else echo "    (no log: the rank never started)" >&2; fi
  done
  exit 1
}

# The ranks of $todo without a matching .ok marker, into $failed. A rank whose log records no
# nonzero exit code may be on a shared file system that shows files late: up to $1 seconds are
# given for its marker to appear.
find_failed() {
  local wait_s=$1 t j unsure
  for ((t = 0; ; t++)); do
    failed=() unsure=0
    for j in "${todo[@]}"; do
      [ -f "${logpat//JOB/$j}.ok" ] && [ "$(cat "${logpat//JOB/$j}.ok")" = "${sig[$j]}" ] && continue
      failed+=("$j")
      grep -qE '^# ended .* rc=[1-9]' "${logpat//JOB/$j}" 2>/dev/null || unsure=1
    done
    { [ ${#failed[@]} -eq 0 ] || [ "$unsure" = 0 ] || [ "$t" -ge "$wait_s" ]; } && return 0
    sleep 1
  done
}

if [ "$cmd" = local ]; then
  max_parallel=${max_parallel:-$(nproc)}
  for j in "${todo[@]}"; do
    while [ "$(jobs -rp | wc -l)" -ge "$max_parallel" ]; do wait -n || true; done
    logf=${logpat//JOB/$j}
    rank_args "$j"
    (
      rm -f "$logf.ok"
      echo "# $(printf '%q ' "${args[@]}")"
      echo "# started $(date) on $(hostname)"
      rc=0; "${args[@]}" || rc=$?
      echo "# ended $(date) rc=$rc"
      if [ "$rc" -eq 0 ]; then echo "${sig[$j]}" > "$logf.ok.tmp" && mv "$logf.ok.tmp" "$logf.ok"; fi
      exit "$rc"
    ) > "$logf" 2>&1 < /dev/null &
  done
  wait
  find_failed 0
  [ ${#failed[@]} -eq 0 ] || report_failures "${failed[@]}"
  exit 0
fi

# ---------------------------------------------------------------- slurm
for p in sbatch squeue scancel; do
  command -v "$p" >/dev/null || die "--cmd slurm: $p not found (install the Slurm client tools, or use --cmd local)"
done
if [ -z "$config" ]; then
  for c in "${SSLSEQ_SLURM_JOB_CONF:-}" conf/slurm.conf "$root_dir/recipes/conf/slurm.conf"; do
    if [ -n "$c" ] && [ -f "$c" ]; then config=$c; break; fi
  done
  [ -n "$config" ] || die "no Slurm job config: pass --config FILE (or create conf/slurm.conf)"
fi
[ -f "$config" ] || die "Slurm job config $config not found"
declare -A conf=([poll_interval]=10 [log_wait]=10)
n=0
while IFS= read -r line || [ -n "$line" ]; do
  n=$((n + 1))
  line=${line%%#*}
  [[ "$line" =~ ^[[:space:]]*$ ]] && continue
  [[ "$line" =~ ^[[:space:]]*([a-z_]+)[[:space:]]*=[[:space:]]*(.*[^[:space:]])?[[:space:]]*$ ]] \
    || die "$config:$n: expected 'key = value', got '$line'"
  key=${BASH_REMATCH[1]} value=${BASH_REMATCH[2]}
  case "$key" in
    partition|mem|cpus|gpu|time|extra|poll_interval|log_wait) conf[$key]=$value ;;
    *) die "$config:$n: unknown key '$key' (keys: partition mem cpus gpu time extra poll_interval log_wait)" ;;
  esac
done < "$config"
for key in "${!over[@]}"; do conf[$key]=${over[$key]}; done
for key in partition mem cpus gpu time poll_interval log_wait nodes; do
  [[ "${conf[$key]:-}" != *[[:space:]]* ]] || die "slurm option $key='${conf[$key]}' contains whitespace"
done
for key in cpus gpu log_wait nodes; do
  [ -z "${conf[$key]:-}" ] || [[ "${conf[$key]}" =~ ^[0-9]+$ ]] || die "slurm option $key='${conf[$key]}': a number is needed"
done
[[ "${conf[poll_interval]}" =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "slurm option poll_interval='${conf[poll_interval]}': seconds are needed"
[[ "$logpat" != *\\* ]] || die "--cmd slurm: the log path '$logpat' contains a backslash (Slurm would not expand its name)"

sbatch_opts=()
[ -z "${conf[partition]:-}" ] || sbatch_opts+=("--partition=${conf[partition]}")
[ -z "${conf[mem]:-}" ] || sbatch_opts+=("--mem=${conf[mem]}")
[ -z "${conf[cpus]:-}" ] || sbatch_opts+=("--cpus-per-task=${conf[cpus]}")
[ -z "${conf[gpu]:-}" ] || [ "${conf[gpu]}" = 0 ] || sbatch_opts+=("--gres=gpu:${conf[gpu]}")
[ -z "${conf[time]:-}" ] || sbatch_opts+=("--time=${conf[time]}")
[ -z "${conf[nodes]:-}" ] || [ "${conf[nodes]}" = 1 ] || sbatch_opts+=("--nodes=${conf[nodes]}" "--ntasks-per-node=1")
read -r -a extra <<< "${conf[extra]:-}"
sbatch_opts+=("${extra[@]}")

name=$(basename "$logpat"); name=${name%.log}; name=${name//.JOB/}; name=${name//JOB/}; name=${name:-job}
abs_logpat=$logpat; [[ "$abs_logpat" = /* ]] || abs_logpat=$workdir/$logpat
slurm_out=${abs_logpat//%/%%}; slurm_out=${slurm_out//JOB/%a}
mkdir -p "$logdir/q"
script=$logdir/q/$name.sh
{
  echo '#!/usr/bin/env bash'
  echo "# Written by tools/run_jobs.sh; array task i runs rank i. Resubmit: sbatch --array=RANKS $script"
  echo "#SBATCH --job-name=$name"
  echo "#SBATCH --output=$slurm_out"
  echo "#SBATCH --open-mode=truncate"
  for o in "${sbatch_opts[@]}"; do echo "#SBATCH $o"; done
  echo 'set -u'
  # shellcheck disable=SC2016  # expanded by the batch script, not here
  echo 'rank=${SLURM_ARRAY_TASK_ID:?this script runs as a task of a Slurm job array}'
  echo "workdir=$(printf '%q' "$workdir")"
  echo "logpat=$(printf '%q' "$logpat")"
  printf 'cmd=('; printf ' %q' "${cmd_tmpl[@]}"; echo ' )'
  # each rank's signature (signature() above), written to its .ok marker when it succeeds
  printf 'declare -A sig=('; for j in "${!sig[@]}"; do printf ' [%s]=%s' "$j" "${sig[$j]}"; done; echo ' )'
  cat <<'BODY'
cd "$workdir" || exit 1
args=()
for a in "${cmd[@]}"; do args+=("${a//JOB/$rank}"); done
okf=${logpat//JOB/$rank}.ok
rm -f "$okf"
echo "# $(printf '%q ' "${args[@]}")"
echo "# started $(date) on $(hostname) (Slurm job ${SLURM_ARRAY_JOB_ID:-?}_$rank)"
rc=0; "${args[@]}" < /dev/null || rc=$?
echo "# ended $(date) rc=$rc"
if [ "$rc" -eq 0 ]; then
  echo "${sig[$rank]}" > "$okf.tmp" && mv "$okf.tmp" "$okf"
fi
exit "$rc"
BODY
} > "$script.tmp"
mv "$script.tmp" "$script"

# The array spec: runs of consecutive ranks as ranges (0-3,7,9-10), then the throttle.
spec='' prev='' first=''
for j in "${todo[@]}" ""; do
  if [ -n "$prev" ] && { [ -z "$j" ] || [ "$j" -ne $((prev + 1)) ]; }; then
    [ "$first" = "$prev" ] && spec+=",$first" || spec+=",$first-$prev"
    first=
  fi
  [ -z "$j" ] && break
  [ -n "$first" ] || first=$j
  prev=$j
done
spec=${spec#,}
[ -z "$max_parallel" ] || spec+="%$max_parallel"
# Old logs go too, so a task that never starts is reported as such, not by its last run's log.
for j in "${todo[@]}"; do rm -f "${logpat//JOB/$j}.ok" "${logpat//JOB/$j}"; done
out=$(sbatch --parsable --array="$spec" "$script" 2>&1) || die "sbatch --array=$spec $script failed: $out"
jobid=${out##*$'\n'}; jobid=${jobid%%;*}
[[ "$jobid" =~ ^[0-9]+$ ]] || die "sbatch printed no job id: $out"
echo "$jobid" > "$logdir/q/$name.jobid"
echo "$me: submitted ${#todo[@]} rank(s) as Slurm job array $jobid (--array=$spec, script $script)" >&2
trap 'echo "$me: interrupted: cancelling Slurm job $jobid" >&2; scancel "$jobid" || true; exit 130' INT TERM

# Wait until squeue no longer lists the job (finished, or purged: "Invalid job id").
errors=0
while :; do
  rc=0; out=$(squeue -h -j "$jobid" -o %i 2>&1) || rc=$?
  if [ "$rc" -eq 0 ]; then
    [ -n "$out" ] || break
    errors=0
  elif [[ "$out" == *"Invalid job id"* ]]; then
    break
  else
    errors=$((errors + 1))
    [ "$errors" -lt 30 ] || die "squeue failed $errors times in a row (job $jobid may still be running): $out"
    echo "$me: squeue failed (will retry): $out" >&2
  fi
  sleep "${conf[poll_interval]}" & wait $!
done
trap - INT TERM

find_failed "${conf[log_wait]}"
[ ${#failed[@]} -eq 0 ] || report_failures "${failed[@]}"
echo "$me: Slurm job $jobid: all ${#todo[@]} rank(s) succeeded" >&2
