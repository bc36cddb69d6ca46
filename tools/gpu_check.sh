#!/usr/bin/env bash
# The GPU check in one command, for a short GPU loan (at most 8 minutes on one H100/H200; the
# deadline is 7): CUDA tests, NCCL at world size 1, `sslseq bench kernels` and `bench train` at
# Base size, and the pretraining throughput with torch.compile off and on. It is `sslseq bench
# gpu` (sslseq/bench/gpu.py, where the steps are described) with the setup a bare GPU machine
# needs: no install of sslseq (this checkout goes on PYTHONPATH) and no internet.
#
#   bash tools/gpu_check.sh                  # on the GPU machine; figures into $OUT or ./gpu_check/
#   bash tools/gpu_check.sh --dry-run        # anywhere: every step on the CPU, tiny shapes (a test does this)
#   bash tools/gpu_check.sh --only tests nccl --deadline 200
#   SSLSEQ_COMMIT=$(git rev-parse --short HEAD) bash tools/gpu_check.sh   # where the tree travels without .git
#
# Wheels: whatever .whl/ (or $SSLSEQ_WHEELS) holds is installed first into /tmp/sslseq_site
# (no index, no deps).
# The GPU machine's image lacks soundfile (the throughput runs read wav files); fetch it on a
# machine with internet with `bash tools/gpu_wheels.sh` (into .whl/, git-ignored, about 2 MB)
# and carry .whl/ along (device tool: carry [".whl"]). Everything else sslseq's GPU steps need
# (torch, triton, transformers, numpy, pyyaml, safetensors, accelerate, tensorboard, pytest) is
# in that image. Without the wheels only the two throughput steps fail.
#
# $PYTHON: the interpreter (default python3, on the GPU machine the one that holds torch).
# Output: gpu_check.json, gpu_check.md, gpu_check.log in --out (default $OUT, else gpu_check/),
# rewritten after every step. Exit status 1 when a step is not ok.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 SSLSEQ_NO_PROGRESS=1
py=${PYTHON:-python3}
wheels=${SSLSEQ_WHEELS:-.whl}
if compgen -G "$wheels/*.whl" >/dev/null; then
  site=/tmp/sslseq_site
  if "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "$wheels"/*.whl; then
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
    echo "[gpu-check] installed $(ls "$wheels"/*.whl | wc -l) wheels from $wheels/ into $site"
  else
    echo "[gpu-check] warning: installing $wheels/*.whl failed; going on without them" >&2
  fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
out=()
[ -n "${OUT:-}" ] && out=(--out "$OUT")
exec "$py" -m sslseq.cli bench gpu ${out[@]+"${out[@]}"} "$@"
