#!/usr/bin/env bash
# The toybox findings committed under reports/results/: the generation-method comparison (paper §4.2)
# and the CFG sweep (4 / 5 / 7.5), each one named `dvc exp run` on the instances in params.yaml, then a
# snapshot of its tracked metrics (prpg results save). Unchanged stages come from DVC's run-cache, so
# run the default pipeline (`make demo`) first: it is the "dreambooth, CFG 5" point.
# Usage: scripts/toybox_experiments.sh [NAME ...]   (default: all; names as in the case below)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
save() { prpg results save "$@"; }
one() {
  git checkout -- params.yaml  # every experiment starts from the committed defaults
  case $1 in
    dreambooth) dvc repro && save toybox-dreambooth --headline --description "filtered DreamBooth positives (the default run)" ;;
    real|masked_dreambooth|cut_paste|combined) prpg exp "toybox-$1" && save "toybox-$1" --description "positives: $1" ;;
    cfg4|cfg7.5) dvc exp run -n "toybox-$1" -S "synthesize.positives.guidance=${1#cfg}" \
                   && save "toybox-$1" --description "filtered DreamBooth positives at CFG ${1#cfg}" ;;
    *) echo "unknown experiment $1" >&2; exit 2 ;;
  esac
}
for name in "${@:-dreambooth real cut_paste cfg4 cfg7.5 masked_dreambooth combined}"; do
  for n in $name; do one "$n"; done
done
git checkout -- params.yaml
dvc exp show --only-changed --md > reports/experiments.md  # what `dvc exp show` lists
dvc repro  # back to the default run (from the run-cache); the report now shows every saved result
