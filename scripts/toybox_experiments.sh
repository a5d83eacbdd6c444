#!/usr/bin/env bash
# The toybox findings committed under reports/results/: the generation-method comparison (paper §4.2)
# and the CFG sweep (4 / 5 / 7.5), each one named `dvc exp run` on the instances in params.yaml, then a
# snapshot of its tracked metrics (prpg results save). Unchanged stages come from DVC's run-cache.
# Usage: scripts/toybox_experiments.sh   (from the repo root, after `make install`)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
run() {  # run <result name> <description> <prpg exp name | -- dvc exp run args...>
  local name=$1 description=$2; shift 2
  git checkout -- params.yaml  # every experiment starts from the committed defaults
  if [ "$1" = "--" ]; then shift; dvc exp run -n "$name" "$@"; else prpg exp "$1"; fi
  local extra=(); [ "$name" = toybox-dreambooth ] && extra=(--headline)
  prpg results save "$name" --description "$description" "${extra[@]}"
}
run toybox-real "real images only (augmented) as positives" toybox-real
run toybox-dreambooth "filtered DreamBooth positives (the default pipeline)" toybox-dreambooth
run toybox-masked_dreambooth "filtered masked-DreamBooth positives" toybox-masked_dreambooth
run toybox-cut_paste "cut-and-paste composites" toybox-cut_paste
run toybox-combined "masked DreamBooth + cut-and-paste" toybox-combined
for g in 4 7.5; do
  run "toybox-cfg$g" "filtered DreamBooth positives at CFG $g" -- -S synthesize.positives.guidance=$g
done
git checkout -- params.yaml
dvc exp show --only-changed --md > reports/experiments.md  # what `dvc exp show` lists
dvc repro  # back to the default run (restored from the run-cache), then the report with every result
