#!/usr/bin/env bash
# dropdeploy's performance bench: builds the release binaries, then runs bench/perf.py, which
# measures and prints ONE Markdown table (measure | dropdeploy | reference | ratio | bar | met?).
#
#   bench/run.sh                         # everything (about 15 minutes on 2 cores)
#   bench/run.sh pack upload             # only these sections, among:
#                                        #   pack memory upload latency watch drop
#   QUICK=1 IDLE=5 bench/run.sh          # smaller sizes, to try the script (a few minutes)
#   SMOKE=1 PROFILE=debug bench/run.sh   # every section at tiny sizes with debug binaries, to
#                                        # show that it runs (bench/smoke.sh, .ci/run)
#   OUT=bench.md bench/run.sh            # also write the table to bench.md
#
# Environment: PROFILE (release; debug builds the debug binaries), DROPDEPLOY_BIN and FAKE_BIN
# (measure these binaries instead of the ones built), IDLE (idle seconds of the watch section, 60), KEEP=1 (keep the temporary work
# directory and its corpora), BENCH_DIR=path (work there and keep it: corpora already built
# there are reused), PACK_RUNS (3), UPLOAD_RUNS (5), EDITS (20), PACK_ALONE_RUNS (7),
# DROP_JOBS (1000), DROP_APPS (50), DROP_PARALLEL (16).
#
# Needs: cargo, python3, tar, gzip, pigz, curl, GNU time; optional: go (bench/gzcheck.go), watchexec.
# Exit status: 0 when every section ran (bars missed or not), 1 when one failed, 2 on setup
# errors.
set -euo pipefail
cd "$(dirname "$0")/.."

for section in "$@"; do
    case "$section" in
        pack | memory | upload | latency | watch | drop) ;;
        *)
            echo "bench/run.sh: unknown section '$section'" \
                "(choose among: pack memory upload latency watch drop)" >&2
            exit 2
            ;;
    esac
done

missing=()
for tool in cargo python3 tar gzip pigz curl; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
[[ -x /usr/bin/time ]] || missing+=("/usr/bin/time (GNU time)")
if ((${#missing[@]})); then
    echo "bench/run.sh: missing required tools: ${missing[*]}" >&2
    exit 2
fi
command -v go >/dev/null || echo "bench/run.sh: go not found: the Go gzip check will be skipped" >&2
if ! command -v watchexec >/dev/null && [[ ! -x "$HOME/.cargo/bin/watchexec" ]]; then
    echo "bench/run.sh: watchexec not found: its column will say 'not installed'" >&2
fi

export PROFILE="${PROFILE:-release}"
if [[ $PROFILE == debug ]]; then
    cargo build --locked --bin dropdeploy --bin fake-scalingo
else
    cargo build --release --locked --bin dropdeploy --bin fake-scalingo
fi

# exec: Ctrl-C and SIGTERM reach perf.py itself, which stops every child it started.
BENCH_COMMAND="${BENCH_COMMAND:-$(
    for v in SMOKE PROFILE QUICK IDLE KEEP BENCH_DIR OUT PACK_RUNS UPLOAD_RUNS EDITS PACK_ALONE_RUNS \
        DROP_JOBS DROP_APPS DROP_PARALLEL; do
        [[ -n "${!v:-}" ]] && printf '%s=%q ' "$v" "${!v}"
    done
    printf 'bench/run.sh'
    (($#)) && printf ' %q' "$@"
)}" exec python3 bench/perf.py "$@"
