#!/usr/bin/env bash
# Stream and budget bench: what one deployment costs when the deployments stream behaves as the
# platform's documentation allows (issue 22), and how a storm of archives fares against the
# platform's rate limit. Real time, against the fake Scalingo API (its counters,
# GET /_fake/stats).
#
#   bench/stream_budget.sh                       # about 3 minutes
#   DROPDEPLOY=/path/to/dropdeploy bench/stream_budget.sh   # another build (e.g. main's)
#   NO_BUILD=1 FAKE=/path/to/fake-scalingo ...   # no cargo build; binaries given
#   STORM_ONLY=1 SEED=8 ...                       # only the storm, with another fault seed
#   STEP=300ms STORM_STEP=300ms STORM_RATE=600 ... # tiny and fast (the bench smoke)
#
# For one `deploy` of a build lasting 4 x STEP (20 s), with `deploy --interval 3s`:
#   polling: the stream refused (404), the deployment polled: the reference cost;
#   (a) every stream auth answered by a plain close (no close frame);
#   (b) the stream cut every 2 s, the log so far replayed on each connection.
# Each row: stream dials, API requests (dials included), seconds from start to exit, and how
# many times the build's first line was printed (1 is right).
# Then the storm: 12 archives over 4 apps (3 each, queue = "all"), the fake limited to 60
# requests a minute (the client's budget 60 too), 30 % of API requests failing transiently
# (500, 503, dropped connections), a retry budget of 20 s: how many jobs failed, and why.
#
# Needs cargo, curl, python3, tar. Exit status 0, or 2 on setup errors.
set -euo pipefail
cd "$(dirname "$0")/.."

STEP="${STEP:-5s}"
for tool in cargo curl python3 tar; do
    command -v "$tool" >/dev/null || { echo "bench/stream_budget.sh: $tool is missing" >&2; exit 2; }
done
[[ -n "${NO_BUILD:-}" ]] || cargo build --locked --bin dropdeploy --bin fake-scalingo >&2
bin="${CARGO_TARGET_DIR:-target}/debug"
dropdeploy="${DROPDEPLOY:-$bin/dropdeploy}"
fake="${FAKE:-$bin/fake-scalingo}"

work="$(mktemp -d)"
pids=()
cleanup() {
    # The fakes are started in command substitutions (subshells): their pids are in a file.
    [[ -f "$work/fake.pids" ]] && while read -r pid; do pids+=("$pid"); done <"$work/fake.pids"
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

token="tk-us-bench-0123456789abcdefghij"
printf '%s\n' "$token" >"$work/token"
chmod 600 "$work/token"
tar -C examples -czf "$work/demo.tar.gz" demo-app

# Starts a fake (extra flags in "$@") and prints its URL.
start_fake() {
    local name="$1"
    shift
    "$fake" --listen 127.0.0.1:0 --token-file "$work/token" --quiet "$@" \
        >"$work/$name.fake.out" 2>"$work/$name.fake.err" &
    echo "$!" >>"$work/fake.pids"
    local url=""
    for _ in $(seq 200); do
        url="$(sed -n 's/^fake Scalingo API listening on \(http[^ ]*\).*/\1/p' "$work/$name.fake.out")"
        [[ -n "$url" ]] && break
        sleep 0.05
    done
    [[ -n "$url" ]] || { echo "bench/stream_budget.sh: the fake $name did not start" >&2; exit 2; }
    printf '%s' "$url"
}

stat_of() { curl -fsS "$1/_fake/stats" | python3 -c "import json,sys; s=json.load(sys.stdin); print($2)"; }

# One `deploy` against a fake started with "$@"; prints one table row.
one_deploy() {
    local name="$1" label="$2"
    shift 2
    local url
    url="$(start_fake "$name" --step "$STEP" "$@")"
    local started ended code=0
    started="$(date +%s.%N)"
    SCALINGO_API_URL="$url" SCALINGO_AUTH_URL="$url" SCALINGO_API_TOKEN="$token" \
        "$dropdeploy" deploy --app my-app --interval 3s --state-dir "$work/$name.state" \
        "$work/demo.tar.gz" >"$work/$name.out" 2>"$work/$name.err" || code=$?
    ended="$(date +%s.%N)"
    local dials requests printed
    dials="$(stat_of "$url" "s['by_endpoint'].get('Stream', 0)")"
    requests="$(stat_of "$url" "s['api_requests']")"
    printed="$(cat "$work/$name.out" "$work/$name.err" | grep -c -- '-----> Build environment' || true)"
    printf '| %s | %s | %s | %s | %.1f | %s |\n' "$label" "$code" "$dials" "$requests" \
        "$(python3 -c "print($ended - $started)")" "$printed"
}

rows="$work/rows"
if [[ -z "${STORM_ONLY:-}" ]]; then
    echo "one deployment of 4 x $STEP, three ways (in parallel)..." >&2
    one_deploy polling "polling (stream refused)" --no-stream >"$rows.1" &
    p1=$!
    one_deploy refused "(a) auth refused by a plain close" --stream-refuse-auth >"$rows.2" &
    p2=$!
    one_deploy replay "(b) cut every 2 s, log replayed" --stream-replay --stream-cut-every 2s >"$rows.3" &
    p3=$!
    wait "$p1" "$p2" "$p3"
else
    : >"$rows.1"; : >"$rows.2"; : >"$rows.3"
fi

# The storm: 12 archives over 4 apps through one daemon.
rate="${STORM_RATE:-60}"
storm_url="$(start_fake storm --step "${STORM_STEP:-2s}" --rate-limit "$rate" --transient-faults 0.3 --fault-seed "${SEED:-7}" \
    --app app-1 --app app-2 --app app-3 --app app-4)"
state="$work/storm.state"
{
    printf 'state_dir = "%s"\nmax_parallel = 4\n\n' "$state"
    printf '[scalingo]\ntoken_file = "%s"\napi_rate_limit = %s\ntimeout = "5s"\n\n' "$work/token" "$rate"
    printf '[retry]\ninitial = "1s"\nmax_delay = "5s"\nbudget = "20s"\n'
    for i in 1 2 3 4; do
        printf '\n[[app]]\nname = "app-%s"\nqueue = "all"\ndrop_dir = "%s/drop/app-%s"\n' \
            "$i" "$work" "$i"
    done
} >"$work/storm.toml"
for i in 1 2 3 4; do mkdir -p "$work/drop/app-$i"; done
echo "the storm: 12 archives over 4 apps, $rate requests a minute, 30 % faults, 20 s budget..." >&2
SCALINGO_API_URL="$storm_url" SCALINGO_AUTH_URL="$storm_url" \
    "$dropdeploy" --config "$work/storm.toml" run >"$work/storm.out" 2>"$work/storm.err" &
daemon=$!
pids+=("$daemon")
for _ in $(seq 400); do
    grep -q "dropdeploy is running" "$work/storm.err" && break
    sleep 0.05
done
storm_started="$(date +%s)"
for n in 1 2 3; do
    for i in 1 2 3 4; do
        cp "$work/demo.tar.gz" "$work/drop/app-$i/.r$n.tar.gz.part"
        mv "$work/drop/app-$i/.r$n.tar.gz.part" "$work/drop/app-$i/release-$n.tar.gz"
    done
done
for _ in $(seq 6000); do
    [[ -f "$state/history.jsonl" ]] && (($(wc -l <"$state/history.jsonl") >= 12)) && break
    sleep 0.1
done
storm_secs=$(($(date +%s) - storm_started))
kill -TERM "$daemon" 2>/dev/null || true
wait "$daemon" 2>/dev/null || true
history="$state/history.jsonl"
succeeded="$(grep -c '"outcome":"succeeded"' "$history" 2>/dev/null || true)"
failed="$(grep -c '"outcome":"failed"' "$history" 2>/dev/null || true)"
faults="$(stat_of "$storm_url" "s.get('faults_injected', '?')")"
limited="$(stat_of "$storm_url" "s['rate_limited']")"
storm_requests="$(stat_of "$storm_url" "s['api_requests']")"

cat <<EOF

dropdeploy: $dropdeploy
| one deployment, build 4 x $STEP | exit | stream dials | API requests | seconds | first build line printed |
|---|---|---|---|---|---|
$(cat "$rows.1" "$rows.2" "$rows.3")

| storm: 12 archives, 4 apps, $rate/min, 30 % faults, retry budget 20 s | |
|---|---|
| succeeded | ${succeeded:-0} |
| failed | ${failed:-0} |
| seconds to the 12th outcome | $storm_secs |
| faults injected / 429 answered / API requests | $faults / $limited / $storm_requests |
EOF
if [[ -f "$history" ]]; then
    python3 - "$history" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    h = json.loads(line)
    if h.get("outcome") == "failed":
        print("failed:", h.get("app"), "-", (h.get("reason") or "")[:300])
PY
fi
