#!/usr/bin/env bash
# Try dropdeploy without a Scalingo account: builds it, starts the fake Scalingo API on
# loopback, packs examples/demo-app with GNU tar, checks it, and deploys it.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --locked --bin dropdeploy --example fake-scalingo
work=$(mktemp -d)
target/release/examples/fake-scalingo --listen 127.0.0.1:0 --step 1s >"$work/fake.log" 2>&1 &
fake=$!
trap 'kill "$fake" 2>/dev/null || true; rm -rf "$work"' EXIT

# Wait (at most 10 s) for the fake to say where it listens and what to export.
for _ in $(seq 100); do
  grep -q '^export ' "$work/fake.log" && break
  sleep 0.1
done
grep -q '^export ' "$work/fake.log" || { cat "$work/fake.log"; exit 1; }
head -n 1 "$work/fake.log"
eval "$(grep '^export ' "$work/fake.log")"

tar -C examples -czf "$work/demo.tar.gz" demo-app
target/release/dropdeploy check "$work/demo.tar.gz"
DROPDEPLOY_STATE_DIR="$work/state" target/release/dropdeploy deploy --interval 300ms --app my-app "$work/demo.tar.gz"
