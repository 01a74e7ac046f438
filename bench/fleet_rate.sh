#!/usr/bin/env bash
# Fleet request-rate bench: three nodes share one PostgreSQL and one API token, all busy (six
# apps, archives dropped into every node's folders), against the fake API without a limit of
# its own; the fleet's API requests per minute as the platform sees them (each wall-clock
# minute, and the most in any sliding 60 s), against `api_rate_limit`. Goal: never over.
#
#   bench/fleet_rate.sh                            # 3 minutes at the platform's 60 a minute
#   DURATION=12 LIMIT=120 bench/fleet_rate.sh      # the smoke's size
#
# Needs cargo, curl, python3, psql, tar. Exit status 0 when no minute is over the limit, 1
# otherwise, 2 on setup errors.
set -euo pipefail
cd "$(dirname "$0")/.."
script=bench/fleet_rate.sh

DURATION="${DURATION:-180}"
LIMIT="${LIMIT:-60}"
PER_NODE="${PER_NODE:-20}"
STEP="${STEP:-500ms}"
source bench/fleet_common.sh

apps=(rate-a rate-b rate-c rate-d rate-e rate-f)
fake_apps=()
for a in "${apps[@]}"; do fake_apps+=(--app "$a"); done
start_fake --step "$STEP" "${fake_apps[@]}"
start_db
for n in n1 n2 n3; do
    node_config "$n" 15s 2s "$LIMIT" "${apps[@]}"
    start_node "$n"
done
for n in n1 n2 n3; do
    for i in $(seq "$PER_NODE"); do
        drop_archive "$n" "${apps[$(((i - 1) % ${#apps[@]}))]}" "$n-$i.tar.gz"
    done
done
echo "3 nodes, ${#apps[@]} apps, $((3 * PER_NODE)) archives, limit $LIMIT a minute; measuring for $DURATION s..." >&2
sleep "$DURATION"

curl -fsS "$fake_url/_fake/stats" >"$work/stats.json"
python3 - "$LIMIT" "$DURATION" "$PROFILE" "$work/stats.json" <<'EOF'
import json, sys
limit, duration, profile = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
with open(sys.argv[4]) as f:
    s = json.load(f)
t = s["timeline"]
minutes = list(t["api_requests_per_minute"].values())
# The first and last minutes are partial; a full one shows the steady rate.
full = minutes[1:-1] if len(minutes) > 2 else minutes
rows = [
    ("API requests", s["api_requests"]),
    ("API requests per wall-clock minute", minutes),
    ("max in a wall-clock minute", max(minutes, default=0)),
    ("max in any sliding 60 s", t["max_api_requests_in_60s"]),
    ("steady rate (full minutes), max", max(full, default=0)),
    ("api_rate_limit (the fleet's)", limit),
    ("answers 429", s["rate_limited"]),
    ("deployments created / finished", f'{s["deployments_created"]} / {s["deployments_finished"]}'),
    ("overlapping deployments of an app", t["overlapping_deployments"]),
    ("max deployments per git_ref", t["max_deployments_per_git_ref"]),
]
print(f"\nfleet request rate: 3 nodes busy for {duration} s ({profile})")
for k, v in rows:
    print(f"  {k:<40} {v}")
ok = max(minutes, default=0) <= limit and t["overlapping_deployments"] == 0 and t["max_deployments_per_git_ref"] <= 1
sys.exit(0 if ok else 1)
EOF
