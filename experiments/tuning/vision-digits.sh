#!/bin/bash
# The defender-tuning campaign behind defenses/tuned/*.yaml (tuned-vision-digits presets) and the vision-digits
# budget curves in docs/leaderboard.md. Validation seeds 100,101 (never the reported 0,1,2), the default suite's
# adam and muon families (the fastest attacks on this task), each defense's declared search space, the selection
# rule of bench/run/tuning_record.py. Resumable: rerun to continue; completed runs are kept.
#   bash experiments/tuning/vision-digits.sh RESULTS_DIR
# Then copy RESULTS_DIR/tuning/ into the leaderboard's results folder to draw the budget curves there.
set -euo pipefail
results=${1:-results/tuning-vision-digits}
defenses="ga-retain tar tar.sophon repnoise booster vaccine condnum"
for d in $defenses; do   # knob tuning at today's training length: writes defenses/tuned/<defense>.yaml
  bench tune --defense "$d" --task vision-digits --families adam,muon --results "$results" --write-preset
done
for d in $defenses; do   # budget curves: today's training length, 4x and 16x, at the default knobs
  bench tune --defense "$d" --task vision-digits --families adam,muon --budgets 1,4,16 --cost-cap 16 \
    --results "$results"
done
