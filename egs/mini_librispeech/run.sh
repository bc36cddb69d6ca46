#!/usr/bin/env bash
# Mini LibriSpeech (openslr.org/31: train-clean-5, 5 h; dev-clean-2) + LibriSpeech's test-clean: the
# set people try first on one GPU. Pretrain on train-clean-5, fine-tune on 10min and 1h subsets of
# it (drawn by the shared stage 1, balanced over speakers: Libri-light's folds are not part of this
# corpus), tune the LM on dev-clean-2, score dev-clean-2 and test-clean. It is egs/librispeech/run.sh
# with --pretrain-set train-clean-5, writing under this dir.
#   bash run.sh --corpus-dir /data/mini                    # holds LibriSpeech/{train-clean-5,dev-clean-2,test-clean}
#   bash run.sh --corpus-dir /data/mini --download true    # fetch what is missing first (MD5-checked)
#   bash run.sh --corpus-dir /data/mini --device cuda \
#     --pretrain-config conf/pretrain_hubert_1gpu.yaml --ctc-config conf/ctc_1gpu.yaml   # sized for one GPU
#   bash run.sh --corpus-dir /data/mini --tiny true        # a few steps (what the tests run on a fake tree)
# All options: bash run.sh --help
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
exec "$here/../librispeech/run.sh" --pretrain-set train-clean-5 --workdir "$here" "$@"
