#!/usr/bin/env bash
# Runs each fuzz target of fuzz/ (cargo-fuzz, libFuzzer) for SECONDS (default 60) and prints,
# per target, the runs executed, the coverage reached and the crashes found.
#
#   bench/fuzz.sh [SECONDS]
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`). The machine has a stable toolchain only:
# cargo-fuzz passes nightly flags (-Zsanitizer=address, ...), which RUSTC_BOOTSTRAP=1 lets
# stable accept. The exact command, per target:
#
#   cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run inspect target/corpus/inspect corpus/inspect \
#       -- -max_total_time=60 -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
#
# The first build takes about 9 minutes on 2 cores (everything is rebuilt with the sanitizer).
# New inputs go to fuzz/target/corpus/<target> (ignored); the committed seeds in
# fuzz/corpus/<target> are only read. A crash or timeout is written to
# fuzz/artifacts/<target>/; minimise it with
#   RUSTC_BOOTSTRAP=1 cargo fuzz tmin <target> artifacts/<target>/<file>
# then keep it in tests/fuzz_inputs/<target>/ (replayed by tests/library/fuzz_regressions.rs).
# If the sanitizer fails to link somewhere, add `--sanitizer none` after `run`.
set -uo pipefail
cd "$(dirname "$0")/../fuzz"

seconds="${1:-60}"
targets=(inspect config)
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "cargo-fuzz is missing: cargo install cargo-fuzz" >&2
    exit 2
fi

cargo fuzz build || exit 2

status=0
summary=()
for target in "${targets[@]}"; do
    mkdir -p "target/corpus/$target" "artifacts/$target"
    log="target/fuzz-$target.log"
    before=$(find "artifacts/$target" -type f | wc -l)
    echo "== $target: ${seconds}s (log: fuzz/$log)"
    cargo fuzz run "$target" "target/corpus/$target" "corpus/$target" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        >"$log" 2>&1
    code=$?
    after=$(find "artifacts/$target" -type f | wc -l)
    runs=$(grep -o 'stat::number_of_executed_units: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*$')
    # The last status line of libFuzzer: "#N DONE cov: C ft: F corp: ..." (or the last pulse).
    last=$(grep -E '^#[0-9]+' "$log" | tail -1)
    cov=$(grep -o 'cov: [0-9]*' <<<"$last" | grep -o '[0-9]*$')
    ft=$(grep -o 'ft: [0-9]*' <<<"$last" | grep -o '[0-9]*$')
    crashes=$((after - before))
    line="$target: runs=${runs:-?} cov=${cov:-?} features=${ft:-?} new_artifacts=$crashes exit=$code"
    if [ "$code" -ne 0 ] || [ "$crashes" -ne 0 ]; then
        status=1
        line="$line  <-- see fuzz/artifacts/$target/ and fuzz/$log"
        grep -E 'panicked at|ERROR: libFuzzer|SUMMARY' "$log" | head -5
    fi
    summary+=("$line")
done

echo
echo "== fuzz summary (${seconds}s per target)"
printf '%s\n' "${summary[@]}"
exit "$status"
