#!/usr/bin/env bash
# Generates what the .deb installs besides the binary: shell completions (bash, zsh, fish) and
# the man page, from the release binary's own command-line definition, into target/assets/.
# Run after `cargo build --release`, before `cargo deb` (cargo deb --no-build then packs them).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
BIN=${DROPDEPLOY_BIN:-${CARGO_TARGET_DIR:-$REPO/target}/release/dropdeploy}
# Under the repository's target/ and, when CARGO_TARGET_DIR moves it, there too: cargo deb may
# read a target/ asset path from either.
for dir in "$REPO/target" ${CARGO_TARGET_DIR:+"$CARGO_TARGET_DIR"}; do
    OUT=$dir/assets
    mkdir -p "$OUT"
    "$BIN" completions bash >"$OUT/dropdeploy.bash"
    "$BIN" completions zsh >"$OUT/_dropdeploy"
    "$BIN" completions fish >"$OUT/dropdeploy.fish"
    "$BIN" manpage >"$OUT/dropdeploy.1"
    echo "$OUT: dropdeploy.bash _dropdeploy dropdeploy.fish dropdeploy.1"
done
