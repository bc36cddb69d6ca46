#!/usr/bin/env bash
# Install what sslseq needs on a fresh machine; skips what is already there.
#   bash tools/install.sh          # runtime: espeak-ng + bible-kjv (Debian), torch, sslseq
#   bash tools/install.sh --test   # also the test extra (pytest, kaldi-native-fbank, ...)
set -euo pipefail
cd "$(dirname "$0")/.."
extra=""
[ "${1:-}" = "--test" ] && extra="[test]"

missing=()
command -v espeak-ng >/dev/null || missing+=(espeak-ng)
command -v bible >/dev/null || missing+=(bible-kjv)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing Debian packages: ${missing[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "missing programs: ${missing[*]}; install them (Debian: sudo apt-get install ${missing[*]})" >&2
    exit 1
  fi
fi

# --test as root: a single-node Slurm for tests/test_slurm.py (it skips its real-Slurm tests without one).
if [ -n "$extra" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null \
    && ! { command -v slurmctld && command -v slurmd && command -v sbatch && command -v munged; } >/dev/null; then
  echo "installing Debian packages: slurmctld slurmd slurm-client munge"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      slurmctld slurmd slurm-client munge >/dev/null; } \
    || echo "warning: could not install Slurm; tests/test_slurm.py will skip its real-Slurm tests" >&2
fi

python3 -m pip --version >/dev/null || { echo "python3 with pip is required" >&2; exit 1; }
# torch first, pinned to the local CPU build: any range asking pip for a newer torch would pull GBs of CUDA.
python3 -c "import torch" 2>/dev/null || python3 -m pip install -q --root-user-action=ignore torch==2.13.0
python3 -m pip install -q --root-user-action=ignore -e ".$extra"
python3 -c "import sslseq, torch; print(f'sslseq {sslseq.__version__} with torch {torch.__version__} ready')"
