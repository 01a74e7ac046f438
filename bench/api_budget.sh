#!/usr/bin/env bash
# API budget bench: how many requests dropdeploy makes to the platform, against the fake
# Scalingo API (its counters, GET /_fake/stats), in real time (no fast clock).
#
#   bench/api_budget.sh                    # about 4 minutes
#   STEP=5s bench/api_budget.sh            # shorter builds, to try the script (about 1 minute)
#
# 1. One deployment whose build lasts 2 minutes (the fake spends STEP, 30 s, in each of queued,
#    building, pushing and starting): API requests with the deployments stream ("after"), and
#    the same scenario in the same run with the stream refused, so that the deployment is
#    followed by polling every 3 s as before the stream ("before"). Goal: at most 8 after.
# 2. Six apps deploying at once through one daemon against a fake limited to 60 API requests a
#    minute (429 with Retry-After beyond): with the stream, and with it refused (polling,
#    stretched by the budget). Goal: no 429, every deployment succeeds.
#
# Prints one table. Needs cargo, curl, python3, tar. Exit status: 0 when every goal is met, 1
# otherwise, 2 on setup errors.
set -euo pipefail
cd "$(dirname "$0")/.."

STEP="${STEP:-30s}"
MANY_STEP="${MANY_STEP:-10s}"
for tool in cargo curl python3 tar; do
    command -v "$tool" >/dev/null || { echo "bench/api_budget.sh: $tool is missing" >&2; exit 2; }
done
cargo build --locked --bin dropdeploy --bin fake-scalingo >&2
bin="${CARGO_TARGET_DIR:-target}/debug"

work="$(mktemp -d)"
pids=()
cleanup() {
    # A fake is started inside `$(start_fake …)`, a subshell: its pid comes back in a file.
    for file in "$work"/*.pid; do
        [[ -e $file ]] && pids+=("$(cat "$file")")
    done
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
    "$bin/fake-scalingo" --listen 127.0.0.1:0 --token-file "$work/token" --quiet "$@" \
        >"$work/$name.fake.out" 2>"$work/$name.fake.err" &
    echo $! >"$work/$name.pid"
    local url=""
    for _ in $(seq 200); do
        url="$(sed -n 's/^fake Scalingo API listening on \(http[^ ]*\).*/\1/p' "$work/$name.fake.out")"
        [[ -n "$url" ]] && break
        sleep 0.05
    done
    [[ -n "$url" ]] || { echo "bench/api_budget.sh: the fake $name did not start" >&2; exit 2; }
    printf '%s' "$url"
}

stat_of() { curl -fsS "$1/_fake/stats" | python3 -c "import json,sys; print(json.load(sys.stdin)$2)"; }

# 1. One deployment of 2 minutes, stream and polling side by side.
one_deploy() {
    local name="$1" url="$2"
    SCALINGO_API_URL="$url" SCALINGO_AUTH_URL="$url" SCALINGO_API_TOKEN="$token" \
        "$bin/dropdeploy" deploy --app my-app --state-dir "$work/$name.state" "$work/demo.tar.gz" \
        >"$work/$name.out" 2>"$work/$name.err"
}
after_url="$(start_fake after --step "$STEP")"
before_url="$(start_fake before --step "$STEP" --no-stream)"
echo "1. one deployment, 4 x $STEP of build, with and without the stream (in parallel)..." >&2
one_deploy after "$after_url" &
after_pid=$!
one_deploy before "$before_url" &
before_pid=$!
ok_after=yes ok_before=yes
wait "$after_pid" || ok_after=no
wait "$before_pid" || ok_before=no
after_requests="$(stat_of "$after_url" "['api_requests']")"
before_requests="$(stat_of "$before_url" "['api_requests']")"
after_detail="$(stat_of "$after_url" "['by_endpoint']")"
before_detail="$(stat_of "$before_url" "['by_endpoint']")"

# 2. Six apps at once through one daemon, against a fake limited to 60 requests a minute.
many() {
    local name="$1" url="$2"
    local state="$work/$name.state" config="$work/$name.toml"
    {
        printf 'state_dir = "%s"\nmax_parallel = 6\n\n[scalingo]\ntoken_file = "%s"\n' \
            "$state" "$work/token"
        for i in 1 2 3 4 5 6; do
            printf '\n[[app]]\nname = "app-%s"\ndrop_dir = "%s/%s.drop/app-%s"\n' \
                "$i" "$work" "$name" "$i"
        done
    } >"$config"
    SCALINGO_API_URL="$url" SCALINGO_AUTH_URL="$url" \
        "$bin/dropdeploy" --config "$config" run >"$work/$name.daemon.out" 2>"$work/$name.daemon.err" &
    local daemon=$!
    pids+=("$daemon")
    for _ in $(seq 400); do
        grep -q "dropdeploy is running" "$work/$name.daemon.err" && break
        sleep 0.05
    done
    for i in 1 2 3 4 5 6; do
        cp "$work/demo.tar.gz" "$work/$name.drop/app-$i/.r.tar.gz.part"
        mv "$work/$name.drop/app-$i/.r.tar.gz.part" "$work/$name.drop/app-$i/release.tar.gz"
    done
    for _ in $(seq 6000); do
        [[ -f "$state/history.jsonl" ]] && (($(wc -l <"$state/history.jsonl") >= 6)) && break
        sleep 0.1
    done
    kill -TERM "$daemon" 2>/dev/null || true
    wait "$daemon" 2>/dev/null || true
}
many_stream_url="$(start_fake many-stream --step "$MANY_STEP" --rate-limit 60 \
    --app app-1 --app app-2 --app app-3 --app app-4 --app app-5 --app app-6)"
many_poll_url="$(start_fake many-poll --step "$MANY_STEP" --rate-limit 60 --no-stream \
    --app app-1 --app app-2 --app app-3 --app app-4 --app app-5 --app app-6)"
echo "2. six apps at once, fake limited to 60 requests a minute, 4 x $MANY_STEP builds..." >&2
many many-stream "$many_stream_url" &
m1=$!
many many-poll "$many_poll_url" &
m2=$!
wait "$m1" "$m2" || true
succeeded() {
    local h="$work/$1.state/history.jsonl"
    [[ -f "$h" ]] && grep -c '"outcome":"succeeded"' "$h" || echo 0
}
stream_ok="$(succeeded many-stream)"
poll_ok="$(succeeded many-poll)"
stream_429="$(stat_of "$many_stream_url" "['rate_limited']")"
poll_429="$(stat_of "$many_poll_url" "['rate_limited']")"
stream_total="$(stat_of "$many_stream_url" "['api_requests']")"
poll_total="$(stat_of "$many_poll_url" "['api_requests']")"

met() { if eval "$1"; then echo yes; else echo NO; fi; }
goal1="$(met "[[ $ok_after == yes && $after_requests -le 8 ]]")"
goal2="$(met "[[ $stream_429 -eq 0 && $stream_ok -eq 6 ]]")"
goal3="$(met "[[ $poll_429 -eq 0 && $poll_ok -eq 6 ]]")"

cat <<EOF

| measure | before (stream refused: polling) | after (stream) | goal | met? |
|---|---|---|---|---|
| API requests for one deployment building 4 x $STEP | $before_requests (succeeded: $ok_before) | $after_requests (succeeded: $ok_after) | at most 8 | $goal1 |
| 6 apps at once, fake limited to 60/min: 429 answers | $poll_429 | $stream_429 | 0 | $goal2 / $goal3 |
| 6 apps at once: deployments succeeded | $poll_ok of 6 | $stream_ok of 6 | 6 of 6 | |
| 6 apps at once: API requests in all | $poll_total | $stream_total | | |

Requests by endpoint, one deployment, after: $after_detail
Requests by endpoint, one deployment, before: $before_detail
Timing: real time (the fake's steps are real sleeps; no fast clock).
EOF
[[ $goal1 == yes && $goal2 == yes && $goal3 == yes ]]
