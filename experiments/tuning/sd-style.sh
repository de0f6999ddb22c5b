#!/bin/bash
# Defender tuning on sd-style (issue 21): does any candidate of a defense's declared search space release a model
# that is usable (allowed-prompt utility >= half the released model's) and resists longer than its defaults?
# Validation seeds 100,101 (never the reported 0,1,2); the two fastest families of the default suite against the
# undefended model (text-encoder, collapse: 36 and 41 steps on seed 0); each defense's declared search space; the
# selection rule of bench/run/tuning_record.py. A tuned preset (defenses/tuned/<defense>.yaml, tuned-sd-style) is
# written only where some candidate is usable at release. Resumable: rerun to continue; completed runs are kept.
#   bash experiments/tuning/sd-style.sh RESULTS_DIR [DEFENSE ...]
set -euo pipefail
results=${1:-results/tuning-sd-style}
shift || true
defenses=${*:-"imma vaccine booster repnoise tar tar.sophon ga-retain"}
for d in $defenses; do
  status=0
  bench tune --defense "$d" --task sd-style --families text-encoder,collapse --results "$results" --write-preset \
    || status=$?
  if [ "$status" -eq 1 ]; then  # nothing selected: no candidate usable at release, a finding rather than a failure
    echo "$d: no preset written"
  elif [ "$status" -ne 0 ]; then
    exit "$status"
  fi
done
