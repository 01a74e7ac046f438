#!/usr/bin/env bash
# Reliability bench: big fault storms (tests/e2e/chaos.rs) against the fake Scalingo platform,
# with and without SIGKILL loops, at fixed seeds. Prints one table per storm.
#
#   bench/reliability.sh                       # 200 archives, 10 apps, 30 kills, p 0.3, 2 seeds
#   CHAOS_ARCHIVES=60 bench/reliability.sh     # a medium run
#   SEEDS="1 2 3" CHAOS_PROBABILITY=0.3 bench/reliability.sh
#
# Exit status: non-zero if any storm broke an invariant (the failing table is printed).
set -euo pipefail
cd "$(dirname "$0")/.."

export CHAOS_ARCHIVES="${CHAOS_ARCHIVES:-200}"
export CHAOS_APPS="${CHAOS_APPS:-10}"
export CHAOS_KILLS="${CHAOS_KILLS:-30}"
export CHAOS_PROBABILITY="${CHAOS_PROBABILITY:-0.3}"
SEEDS="${SEEDS:-20240501 7}"

# PROFILE=debug: a debug build (the smoke, bench/smoke.sh), not worth a release build.
release=(--release)
[[ ${PROFILE:-release} == debug ]] && release=()
cargo test "${release[@]}" --test e2e --no-run
status=0
for seed in $SEEDS; do
    echo "### seed $seed: CHAOS_ARCHIVES=$CHAOS_ARCHIVES CHAOS_APPS=$CHAOS_APPS" \
        "CHAOS_KILLS=$CHAOS_KILLS CHAOS_PROBABILITY=$CHAOS_PROBABILITY"
    # The tables go to stderr; keep them and the verdicts (pipefail: a failed test fails the
    # pipeline even though grep matched).
    if ! CHAOS_SEED="$seed" cargo test "${release[@]}" --test e2e chaos:: -- --nocapture --test-threads 1 \
        2>&1 | grep -E '^(==|  |test |thread |failures|test result)'; then
        status=1
    fi
done
exit "$status"
