#!/usr/bin/env bash
# Fetch, on a machine with internet, the wheels that tools/gpu_check.sh installs on the GPU
# machine (CPython 3.12, x86-64, no internet there): the Python packages sslseq's GPU check needs
# that the machine's image lacks. They go to .whl/ (git-ignored); carry .whl/ along to the GPU
# machine (device tool: carry [".whl"]).
#   bash tools/gpu_wheels.sh            # PYTHON_VERSION=3.12 by default
set -euo pipefail
cd "$(dirname "$0")/.."
# soundfile reads and writes the wav files of the throughput runs (libsndfile is inside its
# wheel); cffi and pycparser are what it imports. One version of each: pip --target stops on two.
WHEELS=(soundfile==0.13.1 cffi==2.0.0 pycparser==2.23)
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "${PYTHON_VERSION:-3.12}" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any -d .whl "${WHEELS[@]}"
ls -l .whl
du -sh .whl
