#!/usr/bin/env bash
# HTTP intake bench: archives PUT to the daemon's `[intake] listen` against `curl -T` to a plain
# file server (archives/s, MiB/s, the ratio), and the daemon's peak RSS (VmHWM) while receiving
# one archive of 10 MiB, 100 MiB and 1 GiB: flat, as the intake streams to disk. See
# bench/intake.py for what is measured and how.
#
#   bench/intake.sh                       # about 5 minutes; needs 3 GiB free under TMPDIR
#   bench/intake.sh --pg                  # adds a column: the same uploads in fleet mode, into
#                                         # a throw-away PostgreSQL (the testpg program)
#   bench/intake.sh --pg postgres://...   # the same into that database (or set
#                                         # DROPDEPLOY_DATABASE_URL in the environment)
#   SMOKE=1 PROFILE=debug bench/intake.sh # tiny sizes, to show that it runs (bench/smoke.sh)
#
# Environment: PROFILE (release; debug), DROPDEPLOY_BIN and FAKE_BIN, SMALL (200 archives),
# SMALL_KIB (64), LARGE (3), LARGE_MIB (200), PARALLEL (4 uploads at a time), RSS_MIB
# ("10 100 1024"), KEEP=1. Needs cargo, python3, curl. Exit status: 0 when every upload was
# answered as it should be, 1 otherwise, 2 on setup errors.
set -euo pipefail
cd "$(dirname "$0")/.."

for tool in cargo python3 curl; do
    command -v "$tool" >/dev/null || { echo "bench/intake.sh: $tool is missing" >&2; exit 2; }
done
export PROFILE="${PROFILE:-release}"
bins=(--bin dropdeploy --bin fake-scalingo)
[[ "${1:-}" == --pg ]] && bins+=(--bin testpg)
if [[ $PROFILE == debug ]]; then
    cargo build --locked "${bins[@]}" >&2
else
    cargo build --release --locked "${bins[@]}" >&2
fi
BENCH_COMMAND="${BENCH_COMMAND:-$(
    for v in SMOKE PROFILE SMALL SMALL_KIB LARGE LARGE_MIB PARALLEL RSS_MIB; do
        [[ -n "${!v:-}" ]] && printf '%s=%q ' "$v" "${!v}"
    done
    printf 'bench/intake.sh'
    (($#)) && printf ' %q' "$@"
)}" exec python3 bench/intake.py "$@"
