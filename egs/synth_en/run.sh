#!/usr/bin/env bash
# The embedded English corpus: synthesized offline with espeak-ng from public-domain
# sentences (King James Bible, Debian's bible-kjv), 40+ speakers, 16 kHz.
#   bash run.sh                       # the whole recipe (10 h of audio; 35-45 min on 2 cores with native bf16)
#   bash run.sh --tiny true           # a few minutes of audio, a few steps (what the tests run)
#   bash run.sh --stage 6 --subsets 10min
# All options: bash run.sh --help
set -euo pipefail
cd "$(dirname "$0")"
exec ../../recipes/ssl.sh --train-set train --dev-set dev --test-sets "dev test" "$@"
