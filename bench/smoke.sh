#!/usr/bin/env bash
# The bench smoke: every script of bench/ run at tiny sizes with debug binaries, so that a bench
# can never silently break (a renamed flag, a moved file). Bars are not enforced: the figures of
# so small a run mean nothing; a script that cannot run to its table fails the smoke. .ci/run
# calls it; about a minute or two once the debug build is there.
#
#   bench/smoke.sh
#
# Covered: run.sh (every section: pack memory upload latency watch drop), api_budget.sh,
# pickup.py, reliability.sh, rollback.sh, stream_budget.sh, intake.sh, fleet_takeover.sh,
# fleet_rate.sh; fuzz.sh only as far as it can go without cargo-fuzz
# and a nightly-flag build of several minutes (its syntax, and that the targets it names exist;
# run it in full when cargo-fuzz is there). gzcheck.go is run by run.sh's pack section when go
# is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
export PROFILE=debug

failed=()
step() {
    local name=$1
    shift
    echo "=== bench smoke: $name" >&2
    local started=$SECONDS
    if "$@"; then
        echo "=== bench smoke: $name ran ($((SECONDS - started)) s)" >&2
    else
        echo "=== bench smoke: $name FAILED ($((SECONDS - started)) s)" >&2
        failed+=("$name")
    fi
}

# run.sh installs nothing: pigz (the pack section's reference) comes from apt-get when root.
if ! command -v pigz >/dev/null && [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends pigz >/dev/null ||
        { apt-get update -qq && apt-get install -y -qq --no-install-recommends pigz >/dev/null; }
fi

step "run.sh (every section)" env SMOKE=1 bench/run.sh
# Exit status 1 is a goal missed, which a smoke does not judge; the table must be there.
api_budget() {
    local out status=0
    out=$(STEP=1s MANY_STEP=1s bench/api_budget.sh) || status=$?
    printf '%s\n' "$out"
    ((status <= 1)) && grep -q "API requests for one deployment" <<<"$out"
}
step "api_budget.sh" api_budget
step "pickup.py" python3 bench/pickup.py 2
step "reliability.sh" env SEEDS=7 CHAOS_ARCHIVES=4 CHAOS_APPS=2 CHAOS_KILLS=1 bench/reliability.sh
step "rollback.sh" bench/rollback.sh
step "stream_budget.sh" env STEP=300ms STORM_STEP=300ms STORM_RATE=600 bench/stream_budget.sh
step "intake.sh" env SMOKE=1 bench/intake.sh
fuzz_targets() {
    bash -n bench/fuzz.sh || return 1
    local names
    names=$(sed -n 's/^targets=(\(.*\))$/\1/p' bench/fuzz.sh)
    [[ -n $names ]] || { echo "bench/fuzz.sh names no targets" >&2; return 1; }
    for t in $names; do
        [[ -f fuzz/fuzz_targets/$t.rs ]] || { echo "fuzz target $t is missing" >&2; return 1; }
        grep -q "name = \"$t\"" fuzz/Cargo.toml || { echo "$t not in fuzz/Cargo.toml" >&2; return 1; }
    done
}
step "fuzz.sh (syntax and targets)" fuzz_targets
# The fleet benches (a throw-away PostgreSQL from testpg, nodes in fleet mode): one takeover,
# half a minute of three busy nodes. Exit status 1 is a goal missed; the table must be there.
fleet_takeover() {
    local out status=0
    out=$(ROUNDS=1 LEASE=3s POLL=500ms STEP=1s bench/fleet_takeover.sh) || status=$?
    printf '%s\n' "$out"
    ((status <= 1)) && grep -q "lease taken by the other node" <<<"$out"
}
step "fleet_takeover.sh" fleet_takeover
fleet_rate() {
    local out status=0
    out=$(DURATION=12 LIMIT=120 PER_NODE=4 STEP=300ms bench/fleet_rate.sh) || status=$?
    printf '%s\n' "$out"
    ((status <= 1)) && grep -q "max in a wall-clock minute" <<<"$out"
}
step "fleet_rate.sh" fleet_rate

if ((${#failed[@]})); then
    echo "bench smoke: FAILED: ${failed[*]}" >&2
    exit 1
fi
echo "bench smoke: every bench script ran" >&2
