# Shared by bench/fleet_takeover.sh and bench/fleet_rate.sh (sourced, not run): a fake
# Scalingo API, a throw-away PostgreSQL from the `testpg` program (or $DATABASE_URL), and
# dropdeploy nodes in fleet mode, all under one temporary directory removed at exit.
#
# Expects: $script (the caller's name, for messages). Sets: $bin, $work, $token, $db_url.

for tool in cargo curl python3 psql tar; do
    command -v "$tool" >/dev/null || { echo "$script: $tool is missing" >&2; exit 2; }
done
PROFILE="${PROFILE:-release}"
profile_flag=()
[[ $PROFILE == release ]] && profile_flag=(--release)
cargo build --locked "${profile_flag[@]}" --bin dropdeploy --bin fake-scalingo >&2
cargo build --locked "${profile_flag[@]}" -p testpg >&2
bin="${CARGO_TARGET_DIR:-target}/$PROFILE"

work="$(mktemp -d)"
chmod 755 "$work"
pids=()
node_pids=()
cleanup() {
    # testpg stops its server once its standard input closes.
    [[ -n ${PG[1]:-} ]] && exec {PG[1]}>&-
    for pid in "${node_pids[@]}" "${pids[@]}"; do
        kill -CONT "$pid" 2>/dev/null || true
        kill "$pid" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

token="tk-us-bench-0123456789abcdefghij"
printf '%s\n' "$token" >"$work/token"
chmod 600 "$work/token"

# Milliseconds on the monotonic clock.
now_ms() { python3 -c 'import time; print(int(time.monotonic() * 1000))'; }

# Starts the fake (flags in "$@") and sets $fake_url.
start_fake() {
    "$bin/fake-scalingo" --listen 127.0.0.1:0 --token-file "$work/token" --quiet "$@" \
        >"$work/fake.out" 2>"$work/fake.err" &
    pids+=($!)
    fake_url=""
    for _ in $(seq 200); do
        fake_url="$(sed -n 's/^fake Scalingo API listening on \(http[^ ]*\).*/\1/p' "$work/fake.out")"
        [[ -n "$fake_url" ]] && break
        sleep 0.05
    done
    [[ -n "$fake_url" ]] || { echo "$script: the fake did not start" >&2; exit 2; }
}

# A database: a throw-away one from `testpg` (a fresh database on $DATABASE_URL's server when
# that is set), which lives until its standard input closes. Sets $db_url.
start_db() {
    coproc PG { exec "$bin/testpg" 2>"$work/testpg.err"; }
    pids+=("$PG_PID")
    db_url=""
    read -r -t 120 db_url <&"${PG[0]}" || true
    [[ $db_url == postgres* ]] || { echo "$script: testpg did not start: $(cat "$work/testpg.err")" >&2; exit 2; }
}

sql() { psql "$db_url" -X -At -v ON_ERROR_STOP=1 -c "$1" 2>/dev/null; }

# The node holding an app's lease now (empty if none).
holder() { sql "SELECT node FROM lanes WHERE app = '$1' AND expires_at > now()" || true; }

# Writes node $1's config: lease $2, poll $3, api_rate_limit $4, apps "${@:5}" (each with a
# drop folder under the node's directory).
node_config() {
    local name=$1 lease=$2 poll=$3 rate=$4
    shift 4
    mkdir -p "$work/$name"
    {
        printf 'state_dir = "%s"\nshutdown_grace = "5s"\nmax_parallel = 8\n\n' "$work/$name/state"
        printf '[scalingo]\napi_rate_limit = %s\n\n' "$rate"
        printf '[cluster]\nnode = "%s"\nlease = "%s"\npoll = "%s"\n' "$name" "$lease" "$poll"
        for app in "$@"; do
            mkdir -p "$work/$name/drop/$app"
            printf '\n[[app]]\nname = "%s"\ndrop_dir = "%s"\nsettle = "200ms"\nqueue = "all"\nkeep_done = 100000\n' \
                "$app" "$work/$name/drop/$app"
        done
    } >"$work/$name/dropdeploy.toml"
}

# Starts node $1 (config written before) and waits until it runs; its pid in node_pid[$1].
declare -A node_pid=()
start_node() {
    local name=$1 log="$work/$1/run.$SECONDS.$RANDOM.stderr"
    SCALINGO_API_URL="$fake_url" SCALINGO_AUTH_URL="$fake_url" SCALINGO_API_TOKEN="$token" \
        DROPDEPLOY_DATABASE_URL="$db_url" \
        "$bin/dropdeploy" --config "$work/$name/dropdeploy.toml" run >/dev/null 2>"$log" &
    node_pid[$name]=$!
    node_pids+=($!)
    for _ in $(seq 600); do
        grep -q "dropdeploy is running" "$log" 2>/dev/null && return 0
        kill -0 "${node_pid[$name]}" 2>/dev/null || break
        sleep 0.1
    done
    echo "$script: node $name did not start:" >&2
    tail -n 30 "$log" >&2
    exit 2
}

# Drops a small archive named $3 for app $2 into node $1's folder (made aside, renamed in).
drop_archive() {
    local dir="$work/made.$RANDOM"
    mkdir -p "$dir/app"
    printf '{"name":"demo"}' >"$dir/app/package.json"
    printf '%s\n' "$3" >"$dir/app/version.txt"
    tar -C "$dir" -czf "$dir/a.tar.gz" app
    mv "$dir/a.tar.gz" "$work/$1/drop/$2/$3.partial"
    mv "$work/$1/drop/$2/$3.partial" "$work/$1/drop/$2/$3"
    rm -rf "$dir"
}

stat_of() { curl -fsS "$fake_url/_fake/stats" | python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }

median() { sort -n | awk '{a[NR]=$1} END {if (NR) print a[int((NR+1)/2)]; else print "n/a"}'; }
