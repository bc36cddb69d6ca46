#!/usr/bin/env bash
# Start `sslseq ARGS...` (a training verb) with NPROC processes per node:
#   - one process on one node: sslseq itself;
#   - several processes on one node: torchrun --standalone (data parallel, gloo on CPU, NCCL on GPUs);
#   - inside a Slurm allocation of several nodes: srun starts torchrun once per node, with the
#     rendezvous on the allocation's first node (port $SSLSEQ_RDZV_PORT, default 29500).
#   tools/launch_train.sh NPROC train CONFIG key=value ...
# Recipes call it directly (--cmd local) or as the task of a Slurm job (--cmd slurm --num-nodes N).
set -euo pipefail
[ $# -ge 2 ] && [[ "$1" =~ ^[1-9][0-9]*$ ]] || { echo "usage: $0 NPROC VERB ARGS... (NPROC >= 1)" >&2; exit 1; }
nproc=$1; shift
nodes=${SLURM_NNODES:-1}
if [ "$nodes" -gt 1 ]; then
  head=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
  exec srun --nodes "$nodes" --ntasks-per-node 1 torchrun --nnodes "$nodes" --nproc-per-node "$nproc" \
    --rdzv-backend c10d --rdzv-endpoint "$head:${SSLSEQ_RDZV_PORT:-29500}" --rdzv-id "${SLURM_JOB_ID:-sslseq}" \
    -m sslseq.cli "$@"
elif [ "$nproc" -gt 1 ]; then
  exec torchrun --standalone --nproc-per-node "$nproc" -m sslseq.cli "$@"
fi
exec sslseq "$@"
