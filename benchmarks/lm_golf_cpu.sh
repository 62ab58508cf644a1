#!/usr/bin/env bash
# The CPU equal-bytes study of docs/results/lm.md (issue 22): every cell of configs/lm_golf_cpu.toml that the
# tables use, one worker, resumable (a finished cell is skipped by its run id). Usage:
#   bash benchmarks/lm_golf_cpu.sh main        # submission vs sltlab preset vs edge-popup+scales, 2 corpora x 3 seeds
#                                              # (or `tinyshakespeare` / `wikitext-2`: one corpus)
#   bash benchmarks/lm_golf_cpu.sh probe       # the dense partner's lr: 3e-3 vs 1e-2 (TinyShakespeare, seed 0)
#   DENSE_LR=... bash benchmarks/lm_golf_cpu.sh dense      # the equal-bytes dense partners, 2 corpora x 3 seeds
#   bash benchmarks/lm_golf_cpu.sh ablate      # one difference of the submission's preset at a time (TinyShakespeare)
# then: python benchmarks/lm_golf_figures.py runs/lm_golf_cpu.db --out docs/results
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" OMP_NUM_THREADS=1
PY="${PYTHON:-python}"
lm() { "$PY" -m sltlab.cli lm configs/lm_golf_cpu.toml --workers 1 --quiet --seeds "${SEEDS:-0,1,2}" "$@"; }
CORPORA=(tinyshakespeare wikitext-2)
DENSE_D=${DENSE_D:-56}           # int8 + zlib under the challenge's rules ~ the ticket's bytes (docs/results/lm.md)
DENSE_D_MATRICES=${DENSE_D_MATRICES:-}   # optional: the width whose every-matrix-int8 artifact matches instead
case "${1:-main}" in
  main|tinyshakespeare|wikitext-2)
    [ "${1:-main}" = main ] || CORPORA=("$1")    # one corpus only: two shells can split the study
    for c in "${CORPORA[@]}"; do
      lm --set dataset="$c"                                   # the submission's preset (the config's)
      lm --set dataset="$c" --set preset=sltlab --methods annealed+scales,edge-popup+scales
    done ;;
  probe)
    for lr in 3e-3 1e-2; do
      SEEDS=0 lm --set preset=sltlab --methods dense --set dense_d_model="$DENSE_D" \
        --set lr_dense="$lr"
    done ;;
  dense)
    for c in "${CORPORA[@]}"; do
      lm --set dataset="$c" --set preset=sltlab --methods dense --set dense_d_model="$DENSE_D" \
        --set lr_dense="${DENSE_LR:?set DENSE_LR from the probe}"
      if [ -n "$DENSE_D_MATRICES" ]; then
        lm --set dataset="$c" --set preset=sltlab --methods dense --set dense_d_model="$DENSE_D_MATRICES" \
          --set lr_dense="$DENSE_LR"
      fi
    done ;;
  ablate)
    c=tinyshakespeare
    # scores from a seeded centred draw (sltlab's), everything else the submission's
    lm --set dataset="$c" --set preset=sltlab --set temperature_schedule=linear --set lr_annealed=0.1 \
      --set lr_scales=0.1 --set warmup=0 --set warmdown_steps=200 --set scale_groups=golf --set data_order=stream
    # sltlab's scale groups
    lm --set dataset="$c" --set scale_groups=sltlab
    # sltlab's learning rates (masks 0.02, scales 0.01)
    lm --set dataset="$c" --set lr_annealed=0.02 --set lr_scales=0.01 ;;
  *) echo "usage: $0 main|tinyshakespeare|wikitext-2|probe|dense|ablate" >&2; exit 2 ;;
esac
