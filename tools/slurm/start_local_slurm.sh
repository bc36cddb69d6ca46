#!/usr/bin/env bash
# Start a single-node Slurm cluster on this machine (tests and CI; needs root and Debian's
# slurmctld, slurmd, slurm-client and munge packages). Everything lives under one directory:
#   eval "$(sudo tools/slurm/start_local_slurm.sh [DIR])"   # DIR default /tmp/sslseq-slurm
#   sbatch --wrap hostname ...                                 # SLURM_CONF=DIR/slurm.conf is exported
#   tools/slurm/stop_local_slurm.sh [DIR]
# It writes DIR/slurm.conf (this host as the only node, in partition "debug"), a fresh munge key
# and socket, starts munged, slurmctld and slurmd, waits until the node is idle, and prints
# `export SLURM_CONF=...` on stdout (diagnostics go to stderr). Nothing outside DIR is written,
# so an existing /etc/slurm setup is left alone. Made for containers: no systemd, no cgroups
# (proctrack/linuxproc, task/none), no accounting database.
# Environment: SSLSEQ_SLURM_PORT (slurmctld port, default 6817; slurmd uses the next one),
#              SSLSEQ_SLURM_TIMEOUT (seconds to wait for the node, default 60),
#              SSLSEQ_SLURM_GPUS: auto (default: the /dev/nvidiaN devices, if any, as gres gpu),
#                none, or fake:N (N stand-in device files, so jobs asking --gres=gpu:K are scheduled
#                and get CUDA_VISIBLE_DEVICES as on a GPU node; tests use this without GPUs).
set -euo pipefail
dir=${1:-/tmp/sslseq-slurm}
port=${SSLSEQ_SLURM_PORT:-6817}
wait_s=${SSLSEQ_SLURM_TIMEOUT:-60}
gpus=${SSLSEQ_SLURM_GPUS:-auto}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

err() { echo "start_local_slurm: $*" >&2; }
fail() {
  err "$*"
  for f in munged.log slurmctld.log slurmd.log; do
    [ -s "$dir/log/$f" ] && { err "--- last lines of $dir/log/$f:"; tail -n 15 "$dir/log/$f" >&2; }
  done
  "$here/stop_local_slurm.sh" "$dir" >&2 || true
  exit 1
}

[ "$(id -u)" = 0 ] || { err "needs root (slurmd runs jobs as their users; munged and slurmd need root here)"; exit 1; }
for p in munged mungekey slurmctld slurmd sbatch sinfo scontrol; do
  command -v "$p" >/dev/null || { err "$p not found: apt-get install slurmctld slurmd slurm-client munge"; exit 1; }
done
if [ -f "$dir/slurmctld.pid" ] && kill -0 "$(cat "$dir/slurmctld.pid")" 2>/dev/null; then
  err "a cluster is already running from $dir (stop it with $here/stop_local_slurm.sh $dir)"; exit 1
fi

rm -rf "$dir"
mkdir -p "$dir"/{state,spool,log,munge}
chmod 755 "$dir"; chmod 700 "$dir/munge"
node=$(hostname -s)
# The node's real CPUs/memory as slurmd sees them (slurmd refuses a node larger than the machine).
hw=$(slurmd -C | head -1 | sed -E 's/^NodeName=[^ ]+ //')
[ -n "$hw" ] || fail "slurmd -C printed no node description"

# munge: its own key and socket, so a system munged (if any) is not touched.
mungekey --create --keyfile="$dir/munge/munge.key" --force 2>/dev/null \
  || { dd if=/dev/urandom of="$dir/munge/munge.key" bs=1 count=1024 status=none; }
chmod 400 "$dir/munge/munge.key"
munged --force --key-file="$dir/munge/munge.key" --socket="$dir/munge/munge.socket" \
  --pid-file="$dir/munge/munged.pid" --log-file="$dir/log/munged.log" \
  --seed-file="$dir/munge/munged.seed" 2>>"$dir/log/munged.log" || fail "munged did not start"

# GPUs as generic resources (gres.conf next to slurm.conf).
gpu_files=()
case "$gpus" in
  auto) for f in /dev/nvidia[0-9]*; do [ -c "$f" ] && gpu_files+=("$f"); done ;;
  none) ;;
  fake:[1-9]*)
    for ((i = 0; i < ${gpus#fake:}; i++)); do
      mknod "$dir/fakegpu$i" c 1 3 || fail "mknod $dir/fakegpu$i failed (fake GPUs need a character device)"
      gpu_files+=("$dir/fakegpu$i")
    done ;;
  *) fail "SSLSEQ_SLURM_GPUS=$gpus: use auto, none or fake:N" ;;
esac
gres_node='' gres_types=''
if [ ${#gpu_files[@]} -gt 0 ]; then
  gres_node="Gres=gpu:${#gpu_files[@]}" gres_types="GresTypes=gpu"
  { echo "AutoDetect=off"; for f in "${gpu_files[@]}"; do echo "Name=gpu File=$f"; done; } > "$dir/gres.conf"
fi

cat > "$dir/slurm.conf" <<CONF
# Written by tools/slurm/start_local_slurm.sh: a single-node test cluster.
ClusterName=sslseq
$gres_types
SlurmctldHost=$node(127.0.0.1)
SlurmctldPort=$port
SlurmdPort=$((port + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/munge/munge.socket
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
ReturnToService=2
MinJobAge=300
SlurmdTimeout=60
InactiveLimit=0
KillWait=5
NodeName=$node NodeAddr=127.0.0.1 $hw $gres_node State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
CONF
export SLURM_CONF=$dir/slurm.conf

slurmctld -f "$SLURM_CONF" -i 2>>"$dir/log/slurmctld.log" || fail "slurmctld did not start"
slurmd -f "$SLURM_CONF" -N "$node" 2>>"$dir/log/slurmd.log" || fail "slurmd did not start"

for ((i = 0; i < wait_s; i++)); do
  state=$(sinfo -h -n "$node" -o %t 2>/dev/null || true)
  case "$state" in
    idle*) err "node $node idle after ${i}s (SLURM_CONF=$SLURM_CONF, GPUs: ${#gpu_files[@]})"; echo "export SLURM_CONF=$SLURM_CONF"; exit 0 ;;
    down*|drain*|fail*)
      # After a restart a node can come back "down"; it is healthy if slurmd answers.
      scontrol update nodename="$node" state=resume >/dev/null 2>&1 || true ;;
  esac
  sleep 1
done
fail "node $node not idle after ${wait_s}s (sinfo state: '${state:-none}')"
