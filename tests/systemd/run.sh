#!/usr/bin/env bash
# The service under a real systemd: boots systemd as PID 1 in a throw-away container, installs
# dropdeploy the way README.md's "Install as a service" says (by hand), runs the fake Scalingo
# API inside the container, and checks the unit step by step (one PASS/FAIL line each).
#
#   tests/systemd/run.sh              # builds the release binaries it needs first
#   DROPDEPLOY_BIN=… FAKE_SCALINGO_BIN=… tests/systemd/run.sh   # or takes them as they are
#
# When `cargo deb` works (or DROPDEPLOY_DEB names a .deb), the package is checked as well.
#
# Needs: root with CAP_SYS_ADMIN, overlayfs, systemd at /usr/lib/systemd/systemd on this root,
# and systemd-nspawn (taken from $SYSTEMD_NSPAWN, from the PATH, or unpacked from the Debian
# packages systemd-container and libsystemd-shared fetched with `apt-get download`, without
# installing them). Where any of this is missing it prints one "skipped: <why>" line and exits 0.
#
# How: inside a private mount namespace, an overlay (read-only bind of / below, tmpfs above) is
# the container's root, so nothing the container writes reaches the disk; systemd-nspawn boots
# it with a private network (only its own loopback: host services enabled in this root cannot
# take the host's ports, and the fake API runs inside). The nspawn process lives in a cgroup
# subtree of its own, to find the container's PID 1 and to kill whatever is left at the end.
# An EXIT trap powers the container off and removes the subtree, the mounts and the scratch
# directory, whether the steps passed or not. Exit status: 0 when every step passed (or
# skipped), 1 when one failed, 2 when the container could not be set up.
#
# What differs from a real install, on purpose: a drop-in points the daemon at the fake API
# and shortens WatchdogSec= to 3 s (30 s in the unit) so that the watchdog step takes seconds;
# `sudoedit` is replaced by installing tests/systemd/dropdeploy.toml; the token is a random one.
set -uo pipefail

REPO=$(cd "$(dirname "$0")/../.." && pwd)
NAME=dropdeploy-systemd-test-$$
CG_HIERS=()

skip() {
    echo "skipped: $*"
    exit 0
}

# ---------------------------------------------------------------------------------------------
# Outside the mount namespace: can this machine do it at all? Then build, then re-enter.
if [[ -z ${DROPDEPLOY_SYSTEMD_INNER:-} ]]; then
    [[ $(id -u) == 0 ]] || skip "not root"
    capeff=$(awk '/^CapEff:/ {print $2}' /proc/self/status)
    (((0x$capeff >> 21) & 1)) || skip "no CAP_SYS_ADMIN"
    grep -qw overlay /proc/filesystems || modprobe overlay 2>/dev/null
    grep -qw overlay /proc/filesystems || skip "no overlayfs in this kernel"
    [[ -x /usr/lib/systemd/systemd ]] || skip "no systemd at /usr/lib/systemd/systemd"
    for tool in unshare nsenter mount runuser; do
        command -v "$tool" >/dev/null || skip "no $tool"
    done
    if [[ -z ${SYSTEMD_NSPAWN:-} ]] && ! command -v systemd-nspawn >/dev/null; then
        command -v apt-get >/dev/null && command -v dpkg >/dev/null ||
            skip "no systemd-nspawn, and no apt-get/dpkg to fetch it"
    fi
    if [[ -z ${DROPDEPLOY_BIN:-} || -z ${FAKE_SCALINGO_BIN:-} ]]; then
        target=${CARGO_TARGET_DIR:-$REPO/target}
        echo "building: cargo build --release --locked --bin dropdeploy --bin fake-scalingo"
        (cd "$REPO" && cargo build --release --locked --bin dropdeploy --bin fake-scalingo) ||
            {
                echo "FAIL build"
                exit 1
            }
        export DROPDEPLOY_BIN=$target/release/dropdeploy
        export FAKE_SCALINGO_BIN=$target/release/fake-scalingo
    fi
    for bin in "$DROPDEPLOY_BIN" "$FAKE_SCALINGO_BIN"; do
        [[ -x $bin ]] || {
            echo "FAIL: no executable $bin"
            exit 1
        }
    done
    # The package too, when the packaging tool is there (cargo install cargo-deb).
    if [[ -z ${DROPDEPLOY_DEB:-} ]] && (cd "$REPO" && cargo deb --version) >/dev/null 2>&1; then
        echo "building: scripts/deb-assets.sh, cargo deb"
        (cd "$REPO" && DROPDEPLOY_BIN=$DROPDEPLOY_BIN scripts/deb-assets.sh && cargo deb) || {
            echo "FAIL cargo deb"
            exit 1
        }
        DROPDEPLOY_DEB=$(ls -t "${CARGO_TARGET_DIR:-$REPO/target}"/debian/dropdeploy_*.deb | head -n 1)
    fi
    export DROPDEPLOY_BIN FAKE_SCALINGO_BIN DROPDEPLOY_DEB=${DROPDEPLOY_DEB:-} DROPDEPLOY_SYSTEMD_INNER=1
    exec unshare -m --propagation private -- "$0" "$@"
fi

# ---------------------------------------------------------------------------------------------
# Inside the private mount namespace. Every mount below vanishes with it.
START=$(date +%s.%N)
W=$(mktemp -d /tmp/dropdeploy-systemd.XXXXXX)
NSPAWN_PID=
STEP_PID=
PID1=
FAILED=0
STEPS=0

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [[ -n ${STEP_PID:-} ]]; then
        kill "$STEP_PID" 2>/dev/null
        wait "$STEP_PID" 2>/dev/null
        echo "interrupted during a step"
    fi
    if [[ -n $PID1 ]] && [[ -d /proc/$PID1 ]]; then
        # What the journal says about the unit when a step failed: the first thing to read.
        if ((FAILED > 0)); then
            echo "--- journalctl -u dropdeploy (last 40 lines) ---"
            in_ct journalctl -u dropdeploy --no-pager -n 40 -o short-monotonic 2>&1 | sed 's/^/    /'
        fi
        in_ct systemctl poweroff --no-block >/dev/null 2>&1
    fi
    if [[ -n $NSPAWN_PID ]]; then
        for _ in $(seq 100); do
            kill -0 "$NSPAWN_PID" 2>/dev/null || break
            sleep 0.1
        done
    fi
    # Whatever is left in the subtree is killed, then the subtree removed.
    local h pids
    for _ in $(seq 50); do
        pids=$(cg_pids)
        [[ -z $pids ]] && break
        kill -9 $pids 2>/dev/null
        sleep 0.1
    done
    for h in "${CG_HIERS[@]}"; do
        find "$h/$NAME" -depth -type d -exec rmdir {} + 2>/dev/null
    done
    umount -R "$W" 2>/dev/null || umount -lR "$W" 2>/dev/null
    rmdir "$W" 2>/dev/null
    if [[ -n ${RUN_SYSTEMD_TMPFS:-} ]]; then
        umount /run/systemd 2>/dev/null
    fi
    # A skip (exit 0 before any step) says its one line and nothing more.
    if ((STEPS > 0 || rc != 0)); then
        printf 'systemd run: %d step(s), %d failed, %s s\n' "$STEPS" "$FAILED" \
            "$(awk -v a="$START" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')"
    fi
    if ((rc == 0 && FAILED > 0)); then rc=1; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 2' INT TERM

die() {
    echo "FAIL setup: $*"
    exit 2
}

# The pids in the cgroup subtree, in every hierarchy.
cg_pids() {
    local h
    for h in "${CG_HIERS[@]}"; do
        [[ -d $h/$NAME ]] && find "$h/$NAME" -name cgroup.procs -exec cat {} + 2>/dev/null
    done | sort -un | tr '\n' ' '
}

# Runs a command inside the container, as root, with a clean environment.
in_ct() {
    nsenter -t "$PID1" -a env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        LANG=C.UTF-8 SYSTEMD_COLORS=0 SYSTEMD_PAGER= SYSTEMD_LOG_COLOR=0 "$@"
}
sh_ct() { in_ct bash -c "$1"; }

# wait_for SECONDS COMMAND: polls COMMAND (a shell line run inside) every 0.1 s.
wait_for() {
    local deadline=$(($(date +%s%N) + $1 * 1000000000))
    while (($(date +%s%N) < deadline)); do
        sh_ct "$2" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    return 1
}

# ---- nspawn -----------------------------------------------------------------------------------
mount -t tmpfs -o mode=700 tmpfs "$W" || die "tmpfs on $W"
NSPAWN=${SYSTEMD_NSPAWN:-$(command -v systemd-nspawn)}
NSPAWN_ENV=()
if [[ -z $NSPAWN ]]; then
    mkdir "$W/nspawn"
    (cd "$W/nspawn" && apt-get download -q systemd-container libsystemd-shared >/dev/null 2>&1) ||
        skip "systemd-nspawn not obtainable (apt-get download systemd-container libsystemd-shared failed)"
    for deb in "$W"/nspawn/*.deb; do dpkg -x "$deb" "$W/nspawn/x" || die "dpkg -x $deb"; done
    NSPAWN=$W/nspawn/x/usr/bin/systemd-nspawn
    NSPAWN_ENV=(LD_LIBRARY_PATH="$W/nspawn/x/usr/lib/x86_64-linux-gnu/systemd:$W/nspawn/x/usr/lib/$(uname -m)-linux-gnu/systemd")
fi
[[ -x $NSPAWN ]] || die "no $NSPAWN"

# ---- the root: an overlay of this one ---------------------------------------------------------
L=$W/lower R=$W/root U=$W/upper S=$W/src
mkdir -p "$L" "$R" "$U/up" "$U/work" "$S/repo/target/release" "$S/test"
mount --bind / "$L" && mount -o remount,bind,ro "$L" || die "read-only bind of /"
mount -t overlay overlay -o "lowerdir=$L,upperdir=$U/up,workdir=$U/work" "$R" || die "overlay"
# journald will not link journals without a machine id of the container's own.
rm -f "$R/etc/machine-id"
tr -d '-' </proc/sys/kernel/random/uuid >"$R/etc/machine-id"
# Nothing this root enables on the host starts in the container: services, timers, gettys.
for unit in "$R"/etc/systemd/system/*.wants/* console-getty.service; do
    ln -sf /dev/null "$R/etc/systemd/system/$(basename "$unit")"
done
# A leftover install in this root would make the test pass for the wrong reason.
rm -rf "$R/usr/bin/dropdeploy" "$R/etc/dropdeploy" "$R/srv/deploy" "$R/var/lib/dropdeploy" \
    "$R/etc/systemd/system/dropdeploy.service"* "$R/etc/sysusers.d/dropdeploy.conf" \
    "$R/etc/tmpfiles.d/dropdeploy.conf"
mkdir -p "$R/etc/systemd/system.conf.d"
printf '[Manager]\nDefaultTimeoutStopSec=10s\n' >"$R/etc/systemd/system.conf.d/zz-test.conf"
# nspawn keeps state under the host's /run/systemd: a tmpfs of this namespace takes it.
if [[ -d /run/systemd ]]; then
    mount -t tmpfs tmpfs /run/systemd && RUN_SYSTEMD_TMPFS=1
fi

# What the README's commands use, as in a checkout: the repository's files and the binaries.
cp -a "$REPO/README.md" "$REPO/systemd" "$REPO/config" "$S/repo/"
cp "$DROPDEPLOY_BIN" "$S/repo/target/release/dropdeploy"
cp "$FAKE_SCALINGO_BIN" "$S/repo/target/release/fake-scalingo"
cp "$REPO/tests/systemd/"*.toml "$S/test/"
if [[ -n ${DROPDEPLOY_DEB:-} ]]; then
    mkdir -p "$S/repo/target/debian" && cp "$DROPDEPLOY_DEB" "$S/repo/target/debian/" || die "no $DROPDEPLOY_DEB"
fi

# ---- boot -------------------------------------------------------------------------------------
for h in /sys/fs/cgroup/unified /sys/fs/cgroup/systemd /sys/fs/cgroup/*; do
    [[ -d $h && ! -d $h/$NAME ]] || continue
    [[ -f $h/cgroup.procs ]] || continue
    mkdir "$h/$NAME" || continue
    if [[ -f $h/cpuset.cpus ]]; then
        cat "$h/cpuset.cpus" >"$h/$NAME/cpuset.cpus"
        cat "$h/cpuset.mems" >"$h/$NAME/cpuset.mems"
    fi
    CG_HIERS+=("$h")
done
((${#CG_HIERS[@]} > 0)) || die "no cgroup hierarchy to make a subtree in"

(
    for h in "${CG_HIERS[@]}"; do echo "$BASHPID" >"$h/$NAME/cgroup.procs"; done
    exec env "${NSPAWN_ENV[@]}" SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1 "$NSPAWN" -D "$R" -M "$NAME" \
        --boot --register=no --keep-unit --console=passive --private-network \
        --system-call-filter=bpf --bind-ro="$S:/src" systemd.firstboot=off
) >"$W/console.log" 2>&1 &
NSPAWN_PID=$!
disown "$NSPAWN_PID"

for _ in $(seq 200); do
    for p in $(cg_pids); do
        [[ $p == "$NSPAWN_PID" ]] && continue
        # PID 1 of the container, once nspawn's child has become systemd.
        if [[ $(awk '/^NSpid:/ {print $NF}' "/proc/$p/status" 2>/dev/null) == 1 &&
            $(cat "/proc/$p/comm" 2>/dev/null) == systemd ]]; then
            PID1=$p
            break 2
        fi
    done
    kill -0 "$NSPAWN_PID" 2>/dev/null || break
    sleep 0.05
done
[[ -n $PID1 ]] || {
    sed 's/^/    /' "$W/console.log"
    die "the container did not start"
}
# Until the manager has set up /run/systemd and its bus socket, systemctl says "offline" or
# cannot connect.
for _ in $(seq 300); do
    booted=$(timeout 30 nsenter -t "$PID1" -a systemctl is-system-running --wait 2>&1)
    [[ $booted == offline || $booted == *"Failed to connect"* ]] || break
    sleep 0.1
done
case $booted in
running | degraded) echo "booted: systemd $(in_ct systemctl --version | awk 'NR==1 {print $2}'), $booted" ;;
*)
    sed 's/^/    /' "$W/console.log" | tail -n 30
    die "the container's systemd says: $booted"
    ;;
esac

# ---- steps --------------------------------------------------------------------------------------
# step NAME FUNCTION: runs it, prints PASS or FAIL (with the reason the function printed).
step() {
    local name=$1 out rc t0
    t0=$(date +%s%N)
    STEPS=$((STEPS + 1))
    # In the background, so that a signal interrupts `wait` and the trap runs at once.
    "$2" >"$W/step.out" 2>&1 &
    STEP_PID=$!
    wait "$STEP_PID"
    rc=$?
    STEP_PID=
    out=$(cat "$W/step.out")
    local ms=$((($(date +%s%N) - t0) / 1000000))
    if ((rc == 0)); then
        printf 'PASS %s (%d ms)\n' "$name" "$ms"
    else
        FAILED=$((FAILED + 1))
        printf 'FAIL %s (%d ms)\n' "$name" "$ms"
    fi
    [[ -n $out ]] && printf '%s\n' "$out" | sed 's/^/    /'
    return 0
}

# Ends the step (each step runs in a subshell) with its reason.
fail() {
    echo "$*"
    exit 1
}

# The commands of the README's first ```sh block after the line matching $1, one per line,
# comments dropped.
readme_block() {
    awk -v pat="$1" '
        found == 0 && $0 ~ pat { found = 1; next }
        found == 1 && /^```sh/ { found = 2; next }
        found == 2 && /^```/ { exit }
        found == 2 { print }
    ' "$REPO/README.md" | sed -E 's/^[[:space:]]*#.*$//; s/[[:space:]]+#[[:space:]].*$//' | grep -v '^[[:space:]]*$'
}

TOKEN=tk-us-systemdtest-$(tr -dc 'a-z0-9' </dev/urandom | head -c 24)
START_LINE=

# The README's "By hand" and "Then, either way" blocks, run in the container as root from the
# checkout; `systemctl … --now` is kept for step 1.
readme_block '^By hand:' >"$W/readme-by-hand"
readme_block '^With a package' >"$W/readme-package"
readme_block '^Then, either way' >"$W/readme-then"
START_LINE=$(grep -m1 'systemctl' "$W/readme-then" | sed 's/sudo //g')

# Runs the README commands in FILE inside the container, as root from the checkout: `sudo`
# dropped, the build left to the host, `sudoedit` replaced by installing the test config, the
# token fed on stdin, and the `systemctl … --now` line kept for step 1.
run_readme_lines() {
    local line cmd
    [[ -s $1 ]] || fail "no commands found in README.md's service section ($(basename "$1"))"
    while IFS= read -r line; do
        cmd=${line//sudo /}
        case $cmd in
        cargo\ * | scripts/deb-assets.sh*)
            echo "(run on the host: $line)"
            continue
            ;;
        *systemctl*)
            echo "(kept for the start: $line)"
            continue
            ;;
        sudoedit\ *)
            cmd="install -m 644 /src/test/dropdeploy.toml ${cmd#sudoedit }"
            ;;
        esac
        echo "# $line"
        if [[ $cmd == */dev/stdin* ]]; then
            printf '%s\n' "$TOKEN" | nsenter -t "$PID1" -a env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
                bash -c "cd /src/repo && $cmd" || fail "failed: $line"
        else
            sh_ct "cd /src/repo && $cmd" || fail "failed: $line"
        fi
    done <"$1"
}

install_by_hand() {
    [[ -n $START_LINE ]] || fail "no systemctl line in README.md's service section"
    in_ct useradd --create-home ci || fail "useradd ci"
    run_readme_lines "$W/readme-by-hand"
    run_readme_lines "$W/readme-then"
    # What a reader adapts to their site, and the test to the fake API (see the header).
    sh_ct "mkdir -p /etc/systemd/system/dropdeploy.service.d && cat >/etc/systemd/system/dropdeploy.service.d/test.conf" <<EOF
[Service]
Environment=SCALINGO_API_URL=http://127.0.0.1:4567 SCALINGO_AUTH_URL=http://127.0.0.1:4567
WatchdogSec=3s
EOF
    # The fake API, inside (the host's loopback is not reachable), taking the same token from
    # a file so that it shows in no command line or journal entry.
    in_ct systemd-run --quiet --unit=fake-scalingo --description="fake Scalingo API" \
        -p StandardOutput=null -p StandardError=journal \
        /src/repo/target/release/fake-scalingo --listen 127.0.0.1:4567 --step 1s \
        --app my-app --app my-app2 --token-file /etc/dropdeploy/token || fail "fake API"
    wait_for 10 "exec 3<>/dev/tcp/127.0.0.1/4567" || fail "the fake API does not listen"
}

# 10. The package: what the by-hand install put in place is removed (user and /srv/deploy
# too), then the README's "With a package" and "Then, either way" steps, and a deploy.
step10_package() {
    local deb
    deb=$(cd "$S/repo" && ls target/debian/dropdeploy_*.deb 2>/dev/null | head -n 1)
    [[ -n $deb ]] || fail "no .deb was built"
    sh_ct "systemctl disable --now dropdeploy &&
        rm -rf /usr/bin/dropdeploy /etc/systemd/system/dropdeploy.service /etc/dropdeploy \
            /etc/sysusers.d/dropdeploy.conf /etc/tmpfiles.d/dropdeploy.conf /srv/deploy &&
        gpasswd -d ci dropdeploy >/dev/null; userdel dropdeploy; groupdel dropdeploy 2>/dev/null
        systemctl daemon-reload" || fail "cannot remove the by-hand install"
    # apt resolves nothing over the network here (private network): the dependencies are met.
    run_readme_lines "$W/readme-package"
    sh_ct "id dropdeploy && test -d /srv/deploy" || fail "the package did not create the user and /srv/deploy"
    run_readme_lines "$W/readme-then"
    sh_ct "$START_LINE" || fail "failed: $START_LINE"
    [[ $(in_ct systemctl is-active dropdeploy) == active ]] || fail "not active"
    drop my-app packaged || fail "drop"
    wait_for 30 "test -e /srv/deploy/my-app/done/packaged.tar.gz" || fail "packaged.tar.gz not in done/"
}

# The daemon's PID; ends the step when there is none (never `kill 0`).
main_pid() {
    local pid
    pid=$(in_ct systemctl show -P MainPID dropdeploy)
    [[ $pid =~ ^[1-9][0-9]*$ ]] || fail "dropdeploy is not running (MainPID=$pid)" >&2
    echo "$pid"
}

# 1. start returns, active only once READY: the spool recovered and the folders watched.
step1_start() {
    local t0 t1 state pid ino
    t0=$(date +%s%N)
    sh_ct "$START_LINE" || fail "failed: $START_LINE"
    t1=$(date +%s%N)
    echo "$START_LINE: returned in $(((t1 - t0) / 1000000)) ms"
    # Right as start returns, before anything else can happen: the state systemd shows and
    # what the daemon has done.
    state=$(in_ct systemctl show -P ActiveState dropdeploy)
    pid=$(main_pid) || exit 1
    [[ $state == active ]] || fail "ActiveState=$state right after start"
    [[ $(in_ct systemctl show -P Type dropdeploy) == notify ]] || fail "not Type=notify"
    sh_ct "test -d /srv/deploy/.dropdeploy/spool" || fail "active, but no spool in state_dir"
    # The drop folder is watched: the daemon's inotify fds hold a watch on its inode.
    ino=$(printf '%x' "$(in_ct stat -c %i /srv/deploy/my-app)")
    sh_ct "grep -h '^inotify' /proc/$pid/fdinfo/* | grep -q ' ino:$ino '" ||
        fail "active, but /srv/deploy/my-app (ino $ino) is not watched by PID $pid"
    echo "active, MainPID $pid, the spool in place and /srv/deploy/my-app watched (inotify ino:$ino)"
    [[ -n $(in_ct systemctl show -P StatusText dropdeploy) ]] || fail "no STATUS= yet"
    in_ct systemctl is-enabled dropdeploy >/dev/null || fail "not enabled"
}

# 2. systemctl status shows the daemon's status line.
step2_status() {
    local out
    wait_for 5 "systemctl status dropdeploy | grep -q 'Status: \"1 app; idle\"'"
    out=$(in_ct systemctl status dropdeploy --no-pager -n 0 2>&1)
    echo "$out" | grep -E 'Active:|Status:'
    echo "$out" | grep -q 'Status: "1 app; idle"' || fail "no 'Status: \"1 app; idle\"' line"
}

# Drops an archive as the user ci (a member of the group dropdeploy, as the README says),
# written beside and renamed in, as a CI job would. drop APP NAME [CONTENT]
drop() {
    local app=$1 name=$2
    sh_ct "runuser -u ci -- bash -c 'set -e
        mkdir -p /tmp/drop-$name/app && echo $name >/tmp/drop-$name/app/index.html
        tar -C /tmp/drop-$name -czf /srv/deploy/$app/.$name.part app
        mv /srv/deploy/$app/.$name.part /srv/deploy/$app/$name.tar.gz'"
}

# 4. A dropped archive is deployed and lands in done/, under ProtectSystem=strict, with the
# state_dir the README recommends.
step4_deploy() {
    [[ $(in_ct systemctl show -P ProtectSystem dropdeploy) == strict ]] || fail "not ProtectSystem=strict"
    sh_ct "id -nG ci | grep -qw dropdeploy" || fail "ci is not in the group dropdeploy"
    drop my-app first || fail "ci cannot drop into /srv/deploy/my-app"
    wait_for 30 "test -e /srv/deploy/my-app/done/first.tar.gz" || {
        sh_ct "ls -laR /srv/deploy"
        fail "first.tar.gz not in done/ after 30 s"
    }
    sh_ct "ls -l /srv/deploy/my-app/done/"
    sh_ct "grep -q 'POST /v1/apps/my-app/deployments ' <(journalctl -u fake-scalingo -o cat)" ||
        fail "the fake API saw no deployment"
    sh_ct "test -s /srv/deploy/.dropdeploy/history.jsonl" || fail "no history line"
}

# 5. A reload with a broken configuration keeps the daemon, logs the error with its line; a
# fixed one is taken.
step5_reload() {
    local pid line
    pid=$(main_pid) || exit 1
    sh_ct "install -m 644 /src/test/broken.toml /etc/dropdeploy/dropdeploy.toml"
    line=$(grep -n 'no_such_key' "$REPO/tests/systemd/broken.toml" | cut -d: -f1)
    in_ct systemctl reload dropdeploy || echo "(systemctl reload returned non-zero)"
    wait_for 5 "journalctl -u dropdeploy -p warning -o cat | grep -q 'dropdeploy.toml:$line:'" ||
        fail "no 'dropdeploy.toml:$line:' in journalctl -u dropdeploy -p warning"
    sh_ct "journalctl -u dropdeploy -p warning -o cat | grep -A1 'reload refused' | tail -n 3"
    [[ $(in_ct systemctl is-active dropdeploy) == active && $(main_pid) == "$pid" ]] ||
        fail "not the same running daemon after the refused reload"
    sh_ct "install -m 644 /src/test/fixed.toml /etc/dropdeploy/dropdeploy.toml &&
           install -d -m 2775 -o dropdeploy -g dropdeploy /srv/deploy/my-app2"
    in_ct systemctl reload dropdeploy || fail "systemctl reload failed"
    wait_for 5 "systemctl status dropdeploy | grep -q 'Status: \"2 apps; idle\"'" ||
        fail "the fixed configuration was not taken: $(in_ct systemctl show -P StatusText dropdeploy)"
    [[ $(main_pid) == "$pid" ]] || fail "the daemon was restarted, not reloaded"
    echo "refused, then taken: StatusText=$(in_ct systemctl show -P StatusText dropdeploy)"
}

# 6. A frozen daemon is killed by the watchdog and restarted; the next drop deploys.
step6_watchdog() {
    local pid new
    pid=$(main_pid) || exit 1
    in_ct kill -STOP "$pid"
    wait_for 15 "test \$(systemctl show -P NRestarts dropdeploy) -ge 1 &&
                 test \"\$(systemctl show -P MainPID dropdeploy)\" != $pid &&
                 systemctl is-active -q dropdeploy" ||
        fail "not restarted 15 s after SIGSTOP (WatchdogSec=3s)"
    new=$(main_pid) || exit 1
    sh_ct "journalctl -u dropdeploy -o cat | grep -iE 'watchdog' | tail -n 2"
    sh_ct "journalctl -u dropdeploy -o cat | grep -qi 'watchdog timeout'" || fail "no watchdog timeout logged"
    echo "MainPID $pid -> $new, NRestarts=$(in_ct systemctl show -P NRestarts dropdeploy)"
    drop my-app second || fail "drop"
    wait_for 30 "test -e /srv/deploy/my-app/done/second.tar.gz" || fail "second.tar.gz not in done/"
}

# 7. Stopped during a deployment, then started: the job resumes, one deployment in all.
step7_resume() {
    local t0 ms n
    drop my-app2 resumed || fail "drop"
    wait_for 20 "journalctl -u fake-scalingo -o cat | grep -q 'POST /v1/apps/my-app2/deployments '" ||
        fail "no deployment started"
    wait_for 10 "systemctl show -P StatusText dropdeploy | grep -q 'my-app2 (building)'" ||
        fail "my-app2 never showed as building"
    echo "stopping during: $(in_ct systemctl show -P StatusText dropdeploy)"
    t0=$(date +%s%N)
    in_ct systemctl stop dropdeploy || fail "systemctl stop failed"
    ms=$((($(date +%s%N) - t0) / 1000000))
    echo "systemctl stop: ${ms} ms"
    sh_ct "test -n \"\$(ls -A /srv/deploy/.dropdeploy/spool)\"" || fail "nothing left in the spool"
    sh_ct "test ! -e /srv/deploy/my-app2/done/resumed.tar.gz" || fail "finished before the stop"
    in_ct systemctl start dropdeploy || fail "systemctl start failed"
    wait_for 30 "test -e /srv/deploy/my-app2/done/resumed.tar.gz" || fail "resumed.tar.gz not in done/"
    sh_ct "journalctl -u dropdeploy -o cat | grep 'recovering job' | tail -n 1"
    n=$(sh_ct "journalctl -u fake-scalingo -o cat | grep -c 'POST /v1/apps/my-app2/deployments '")
    echo "deployments created for my-app2: $n"
    ((n == 1)) || fail "expected exactly 1 deployment"
}

# 8. Failures reach the journal at priority warning or worse.
step8_priorities() {
    local out
    sh_ct "runuser -u ci -- bash -c 'echo not gzip >/srv/deploy/my-app/.bad.part &&
           mv /srv/deploy/my-app/.bad.part /srv/deploy/my-app/bad.tar.gz'" || fail "drop"
    wait_for 20 "test -e /srv/deploy/my-app/failed/bad.tar.gz" || fail "bad.tar.gz not in failed/"
    wait_for 5 "journalctl -u dropdeploy -p warning -o cat | grep -q bad.tar.gz" ||
        fail "the failure of bad.tar.gz is not at priority warning or worse"
    out=$(in_ct journalctl -u dropdeploy -p warning -o cat --no-pager)
    echo "journalctl -u dropdeploy -p warning:"
    echo "$out" | sed 's/^/  /'
    echo "$out" | grep -q 'reload refused' || fail "the refused reload is missing"
    echo "$out" | grep -q 'dropdeploy.toml:[0-9]*:[0-9]*' || fail "its reason (file:line:col) is missing"
}

# 3. The token reaches the daemon through the credential, and is nowhere in the journal (run
# last, when the journal holds everything the other steps caused).
step3_token() {
    local pid n
    pid=$(main_pid) || exit 1
    sh_ct "tr '\0' '\n' </proc/$pid/environ | grep -q '^CREDENTIALS_DIRECTORY='" ||
        fail "no \$CREDENTIALS_DIRECTORY in the daemon's environment"
    sh_ct "tr '\0' '\n' </proc/$pid/environ | grep -qF '$TOKEN'" && fail "the token is in the daemon's environment"
    [[ $(in_ct cat /run/credentials/dropdeploy.service/scalingo-token) == "$TOKEN" ]] ||
        fail "the credential does not hold the token"
    in_ct runuser -u dropdeploy -- cat /etc/dropdeploy/token >/dev/null 2>&1 &&
        fail "the user dropdeploy can read /etc/dropdeploy/token"
    sh_ct "journalctl -u fake-scalingo -o cat | grep -q 'POST /v1/tokens/exchange -> 200'" ||
        fail "the fake API never accepted the token"
    n=$(sh_ct "journalctl --all -o export --no-pager | grep -acF '$TOKEN'")
    echo "token exchanged by the daemon; lines of the whole journal (all fields) holding it: $n"
    ((n == 0)) || fail "the token is in the journal"
}

# 9. systemd-analyze security: the exposure score.
step9_security() {
    local out
    out=$(in_ct systemd-analyze security dropdeploy --no-pager 2>&1)
    echo "$out" | grep '✗' | sed 's/  */ /g'
    echo "$out" | grep 'Overall exposure level'
    score=$(echo "$out" | sed -n 's/.*Overall exposure level for dropdeploy.service: \([0-9.]*\).*/\1/p')
    [[ -n $score ]] || fail "no score"
    # 1.6: the unit's one capability, CAP_LEASE (the drop folders' writer check), costs 0.1.
    awk -v s="$score" -v max="${DROPDEPLOY_MAX_EXPOSURE:-1.6}" 'BEGIN { exit !(s <= max) }' ||
        fail "exposure $score above ${DROPDEPLOY_MAX_EXPOSURE:-1.6}"
}

step "0 install by hand as README.md says" install_by_hand
step "1 systemctl start returns, active only after READY" step1_start
step "2 systemctl status shows the status line" step2_status
step "4 a dropped archive is deployed into done/ under ProtectSystem=strict" step4_deploy
step "5 reload: a broken config is refused with its line, a fixed one taken" step5_reload
step "6 a frozen daemon is restarted by the watchdog, and deploys" step6_watchdog
step "7 stop during a deployment, start: resumed, one deployment" step7_resume
step "8 failures reach journalctl -p warning" step8_priorities
step "3 the token comes by credential and is nowhere in the journal" step3_token
step "9 systemd-analyze security" step9_security
if [[ -n ${DROPDEPLOY_DEB:-} ]]; then
    step "10 the .deb, installed as README.md says" step10_package
else
    echo "note: the .deb part is skipped: cargo deb is not available (cargo install cargo-deb)"
fi
