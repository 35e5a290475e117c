#!/usr/bin/env bash
# The MNIST study (configs/experiments/mnist-question.yaml): build, verify, cross-check, collate,
# and copy the report into docs/results/mnist-question/. Every step skips finished work, so a
# killed run resumes where it stopped: run the script again.
#
#   scripts/mnist_question.sh                 # everything, 2 workers
#   WORK=/scratch/mq WORKERS=4 scripts/mnist_question.sh
#
# alpha-beta-CROWN (`bench verifiers install abcrown`) checks a random 1/40 of the instances
# (`--shard 1/40`: a hash-chosen subset that does not depend on order), without the cascade,
# where it is installed; `bench check-results` then compares it with milp on every instance
# both decided.
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH=${BENCH:-.venv/bin/bench}
WORK=${WORK:-experiments/mnist-question}
WORKERS=${WORKERS:-2}
REPORT=docs/results/mnist-question
TIMEFORMAT='    %R s wall, %U s user, %S s system'

step() { echo "== $*"; }

step "build: 4 experiments x 3 seeds x 4 levels, 200 properties each"
time "$BENCH" build-instances --config configs/experiments/mnist-question.yaml \
    --out "$WORK/instances" --runs-dir "$WORK/runs" --quiet

step "verify: the cascade, then milp, on every instance"
time "$BENCH" run --instances "$WORK/instances" --verifier milp --workers "$WORKERS" \
    --results "$WORK/results.db" --quiet

if "$BENCH" verifiers | grep -Eq '^abcrown +[a-z]+ +installed'; then
    step "verify: alpha-beta-CROWN on a random 1/40 of the instances, no cascade"
    time "$BENCH" run --instances "$WORK/instances" --verifier abcrown --no-cascade \
        --shard 1/40 --results "$WORK/results.db" --quiet
fi

step "collate"
time "$BENCH" tables --results "$WORK/results.db" --out "$WORK/tables"
"$BENCH" check-results --results "$WORK/results.db" | tee "$WORK/check-results.txt"

step "copy the report to $REPORT"
rm -rf "$REPORT"
mkdir -p "$REPORT"
cp "$WORK/check-results.txt" "$REPORT/"
(cd "$WORK/tables" && find . -name '*.md' -o -name '*.png' -o -name '*.csv') | while read -r file; do
    mkdir -p "$REPORT/$(dirname "$file")"
    cp "$WORK/tables/$file" "$REPORT/$file"
done
echo "Report: $REPORT/report.md"
