#!/usr/bin/env bash
# Try dropdeploy without a Scalingo account: builds it, starts the fake Scalingo API on
# loopback, then
#   1. deploys examples/demo-app once with the one-shot CLI (`dropdeploy deploy`);
#   2. runs the daemon (`dropdeploy run`) on a drop folder, drops the archive into it,
#      waits for the outcome, shows `dropdeploy history` and `status`, and stops it (SIGTERM).
# Everything lives in a temporary directory, removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --locked --bin dropdeploy --bin fake-scalingo
bin=target/release/dropdeploy
work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# Poll (at most 30 s) until a file contains a pattern.
wait_for() {
  for _ in $(seq 300); do
    grep -q "$2" "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "timed out waiting for '$2' in $1" >&2
  cat "$1" >&2
  return 1
}

target/release/fake-scalingo --listen 127.0.0.1:0 --step 1s >"$work/fake.log" 2>&1 &
pids+=($!)
wait_for "$work/fake.log" '^export '
head -n 1 "$work/fake.log"
eval "$(grep '^export ' "$work/fake.log")"

tar -C examples -czf "$work/demo.tar.gz" demo-app

echo
echo "== 1. one-shot: dropdeploy deploy --app my-app demo.tar.gz"
DROPDEPLOY_STATE_DIR="$work/cli-state" "$bin" deploy --interval 300ms --app my-app "$work/demo.tar.gz"

echo
echo "== 2. daemon: dropdeploy run, then a file dropped into its folder"
cat >"$work/dropdeploy.toml" <<TOML
state_dir = "$work/state"

[scalingo]
follow_interval = "300ms"

[[app]]
name = "my-app"
drop_dir = "$work/drop/my-app"
TOML
"$bin" --config "$work/dropdeploy.toml" run 2>"$work/daemon.log" &
pids+=($!)
wait_for "$work/daemon.log" 'dropdeploy is running'
cp "$work/demo.tar.gz" "$work/drop/my-app/.demo.tar.gz.part"
mv "$work/drop/my-app/.demo.tar.gz.part" "$work/drop/my-app/demo.tar.gz"
wait_for "$work/daemon.log" 'deployed demo.tar.gz'
kill -TERM "${pids[1]}"
wait "${pids[1]}" || true
sed -e 's/^/  log: /' "$work/daemon.log"
echo
"$bin" --config "$work/dropdeploy.toml" history
echo
"$bin" --config "$work/dropdeploy.toml" status
echo
echo "done/ now holds: $(ls "$work/drop/my-app/done")"
