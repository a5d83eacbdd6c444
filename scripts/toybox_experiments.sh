#!/usr/bin/env bash
# The toybox findings committed under reports/results/: the generation-method comparison (paper §4.2)
# and the CFG sweep (4 / 5 / 7.5), run in parts over the toybox test instances. Part K is the K-th test
# instance of every category (K = 0: mug_06, bottle_06, ...; K = 1: mug_07, ...), saved as
# reports/results/toybox-<name>/parts/<its number>/; the report merges a result's parts.
# Each experiment: `prpg exp NAME -j JOBS` writes its overrides into params.yaml (DVC's own -S parser) and
# runs the instance chains side by side (prpg repro), then `prpg results save NAME --part` snapshots
# its tracked metrics. Unchanged stages come from DVC's run-cache (the first experiment is the default
# run's settings: DreamBooth, CFG 5).
# Usage: [JOBS=3] scripts/toybox_experiments.sh K [NAME ...]   (default: all seven, as in the case below)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
K=${1:?usage: scripts/toybox_experiments.sh K [NAME ...]  (K: 0 for the *_06 test instances, 1 for *_07, ...)}
shift
JOBS=${JOBS:-3}
PART=$(printf '%02d' $((6 + K)))  # toybox: instances 00-05 of a category are val, 06-19 test
pick=(--instances test --per-category 1 --offset "$K")  # from params.yaml: outputs/data/toybox
one() {  # one experiment on part K; any failure stops the script (set -e)
  git checkout -- params.yaml  # every experiment starts from the committed defaults
  local t=$SECONDS
  case $1 in
    dreambooth) prpg exp toybox-dreambooth -j "$JOBS" "${pick[@]}"
                prpg results save toybox-dreambooth --part "$PART" --headline \
                  --description "filtered DreamBooth positives (the default run)" ;;
    real|masked_dreambooth|cut_paste|combined)
                prpg exp "toybox-$1" -j "$JOBS" "${pick[@]}"
                prpg results save "toybox-$1" --part "$PART" --description "positives: $1" ;;
    cfg4|cfg7.5) prpg exp toybox-dreambooth -j "$JOBS" "${pick[@]}" -S "synthesize.positives.guidance=${1#cfg}"
                prpg results save "toybox-$1" --part "$PART" \
                  --description "filtered DreamBooth positives at CFG ${1#cfg}" ;;
    *) echo "unknown experiment $1" >&2; exit 2 ;;
  esac
  echo "toybox-$1 part $PART: $((SECONDS - t)) s"
}
git checkout -- params.yaml
dvc repro data  # the parts' instances are picked from the world the data stage builds (a fresh clone has none)
for name in "${@:-dreambooth real cut_paste cfg4 cfg7.5 masked_dreambooth combined}"; do
  for n in $name; do one "$n"; done
done
git checkout -- params.yaml
dvc repro  # back to the default run (from the run-cache); the report now shows every saved result
