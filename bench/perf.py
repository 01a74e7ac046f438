#!/usr/bin/env python3
"""dropdeploy's performance bench: one run, one table. Normally started by bench/run.sh, which
builds the release binaries first; see that file for the environment variables.

Sections (default: all, in this order):
  pack     `dropdeploy pack` of a `cargo vendor` tree vs `tar czf` and `tar -I pigz -cf`:
           wall time (best of PACK_RUNS, warm page cache), compressed size, archive validity
           (gzip -t, tar tzf, Go's compress/gzip through bench/gzcheck.go).
  memory   peak RSS of `dropdeploy pack`, and of a full deploy by `dropdeploy run` (pack, check,
           upload, deploy, follow) to the fake API, on mixed trees of 100 MiB and 1 GiB.
  upload   upload throughput of a ~500 MB archive to the fake API: dropdeploy's `uploaded` log
           event vs `curl -T` to an upload URL of the same server.
  latency  change → upload start in a 10,000-file tree watched by `dropdeploy run`
           (quiet = 200 ms), minus the quiet period and the time of `dropdeploy pack` alone.
  watch    `dropdeploy watch` on 100,000 files in 10,000 directories (+ an ignored
           node_modules/): start → watching, inotify watches, RSS, CPU over IDLE seconds idle;
           the same for watchexec when installed.
  drop     1,000 small tarballs renamed into the drop folders of 50 apps: jobs per second
           (first drop → last history line) and the daemon's peak RSS.

Standard library only. Every child runs in its own process group, which is killed on the way
out (normal end, error, Ctrl-C or SIGTERM).
"""
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from base64 import b64encode
from datetime import datetime, timezone
from io import BytesIO

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The binaries bench/run.sh built (CARGO_TARGET_DIR honoured; PROFILE=debug for the smoke), or
# DROPDEPLOY_BIN / FAKE_BIN to measure other builds of them.
TARGET = os.path.join(os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target"),
                      os.environ.get("PROFILE") or "release")
BIN = os.environ.get("DROPDEPLOY_BIN") or os.path.join(TARGET, "dropdeploy")
FAKE = os.environ.get("FAKE_BIN") or os.path.join(TARGET, "fake-scalingo")
GNU_TIME = "/usr/bin/time"
SECTIONS = ["pack", "memory", "upload", "latency", "watch", "drop"]
MiB = 1 << 20
GiB = 1 << 30


def env_int(name, default):
    v = os.environ.get(name)
    return int(v) if v not in (None, "") else default


QUICK = os.environ.get("QUICK", "") not in ("", "0")
# SMOKE=1: every section at tiny sizes, to show that the bench still runs (.ci/run); its
# figures mean nothing.
SMOKE = os.environ.get("SMOKE", "") not in ("", "0")
QUICK = QUICK or SMOKE
KEEP = os.environ.get("KEEP", "") not in ("", "0")
IDLE = env_int("IDLE", 1 if SMOKE else 5 if QUICK else 60)
PACK_RUNS = env_int("PACK_RUNS", 1 if QUICK else 3)
UPLOAD_RUNS = env_int("UPLOAD_RUNS", 1 if QUICK else 5)
EDITS = env_int("EDITS", 2 if SMOKE else 5 if QUICK else 20)
PACK_ALONE_RUNS = env_int("PACK_ALONE_RUNS", 1 if SMOKE else 3 if QUICK else 7)
MEM_SIZES = ([1 * MiB, 2 * MiB] if SMOKE else [10 * MiB, 100 * MiB] if QUICK
             else [100 * MiB, 1 * GiB])
UPLOAD_BYTES = (2 if SMOKE else 96 if QUICK else 480) * MiB
# Directories under the root, node_modules/ apart.
WATCH_DIRS = 100 if SMOKE else 1_000 if QUICK else 10_000
WATCH_FILES = 10 * WATCH_DIRS
TREE10K_DIRS = 5 if SMOKE else 100  # the latency section's tree: 100 files per directory
DROP_JOBS = env_int("DROP_JOBS", 10 if SMOKE else 100 if QUICK else 1000)
DROP_APPS = env_int("DROP_APPS", 2 if SMOKE else 10 if QUICK else 50)
DROP_PARALLEL = env_int("DROP_PARALLEL", 16)
QUIET_S = 0.2
FOLLOW = "20ms"
HUGE = 64 * GiB  # max_archive_size for the bench: the 300 MB platform limit is raised

# --------------------------------------------------------------------------------------------
# Output


def say(msg):
    print(msg, file=sys.stderr, flush=True)


class Table:
    def __init__(self):
        self.rows = []

    def add(self, measure, dd, ref="—", figure="—", bar="—", met="—"):
        self.rows.append((measure, dd, ref, figure, bar, met))
        say(f"  → {measure}: {dd} | {ref} | {figure} | {bar} | {met}")

    def markdown(self):
        head = ("measure", "dropdeploy", "reference", "ratio / figure", "bar", "met?")
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in self.rows:
            lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |")
        return "\n".join(lines)


def met(ok):
    return "yes" if ok else "**NO**"


def mib(nbytes):
    return f"{nbytes / MiB:.1f} MiB"


def size_label(nbytes):
    return f"{nbytes / GiB:g} GiB" if nbytes >= GiB else f"{nbytes / MiB:g} MiB"


def ms(seconds):
    return f"{seconds * 1000:.0f} ms"


# --------------------------------------------------------------------------------------------
# Processes: each child in its own process group; all of them killed on the way out.


class Interrupted(Exception):
    pass


def on_signal(signum, _frame):
    raise Interrupted(f"signal {signum}")


class Procs:
    def __init__(self):
        self.live = []

    def start(self, cmd, stdout=None, stderr=None, env=None, cwd=None):
        out = open(stdout, "w") if isinstance(stdout, str) else (stdout or subprocess.DEVNULL)
        err = open(stderr, "w") if isinstance(stderr, str) else (stderr or subprocess.DEVNULL)
        p = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env,
                             cwd=cwd, start_new_session=True)
        self.live.append(p)
        return p

    def stop(self, p, sig=signal.SIGTERM, grace=15.0):
        if p.returncode is None and p.poll() is None:
            try:
                os.killpg(p.pid, sig)
            except ProcessLookupError:
                pass
            try:
                p.wait(grace)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait()
        else:
            # The leader is gone; anything left in its group goes too.
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if p in self.live:
            self.live.remove(p)

    def measure(self, cmd, stdout=None, stderr=None, env=None):
        """Runs to the end under GNU time; returns (wall s, cpu s, peak RSS bytes, exit status).
        Peak RSS is GNU time's %M (not this process's own wait4(): a child forked from Python
        keeps Python's RSS high-water mark across exec)."""
        fd, tfile = tempfile.mkstemp(prefix="time-", suffix=".txt")
        os.close(fd)
        try:
            t0 = time.perf_counter()
            p = self.start([GNU_TIME, "-f", "%U %S %M", "-o", tfile] + cmd, stdout=stdout,
                           stderr=stderr, env=env)
            p.wait()
            wall = time.perf_counter() - t0
            self.live.remove(p)
            with open(tfile) as f:
                last = f.read().strip().splitlines()[-1].split()
            user, system, peak = float(last[0]), float(last[1]), int(last[2]) * 1024
        finally:
            os.remove(tfile)
        return wall, user + system, peak, p.returncode

    def stop_all(self):
        for p in reversed(list(self.live)):
            self.stop(p, grace=5.0)


PROCS = Procs()


def run(cmd, **kw):
    kw.setdefault("check", True)
    return subprocess.run(cmd, **kw)


def wait_for(pred, timeout=120.0, what="a condition", step=0.005):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(step)
    raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")


# --------------------------------------------------------------------------------------------
# /proc


def proc_status(pid, key):
    """A VmHWM/VmRSS-style line of /proc/PID/status, in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return None


def cpu_seconds(pid):
    """utime + stime of every thread of the process, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def inotify_watches(pid):
    total = 0
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return 0
    for fd in fds:
        try:
            if "inotify" in os.readlink(f"/proc/{pid}/fd/{fd}"):
                with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                    total += sum(1 for line in f if line.startswith("inotify wd:"))
        except OSError:
            pass
    return total


# --------------------------------------------------------------------------------------------
# The fake Scalingo API, dropdeploy's environment and logs


def start_fake(work, name, apps, max_archive=HUGE):
    out = os.path.join(work, "logs", f"fake-{name}.out")
    env = dict(os.environ, TMPDIR=os.path.join(work, "fake-storage"))
    os.makedirs(env["TMPDIR"], exist_ok=True)
    cmd = [FAKE, "--listen", "127.0.0.1:0", "--step", "0s", "--quiet",
           "--max-archive-bytes", str(max_archive)]
    for a in apps:
        cmd += ["--app", a]
    p = PROCS.start(cmd, stdout=out, stderr=os.path.join(work, "logs", f"fake-{name}.err"),
                    env=env)

    def export_line():
        if p.poll() is not None:
            raise RuntimeError(f"fake-scalingo exited ({p.returncode}); see {out}")
        return next((l for l in open(out) if l.startswith("export ")), None)

    line = wait_for(export_line, 30, "the fake API's export line")
    dd_env = {k: v for k, v in os.environ.items()
              if not k.startswith(("SCALINGO_", "DROPDEPLOY_"))}
    for pair in line.split()[1:]:
        k, v = pair.split("=", 1)
        dd_env[k] = v
    return p, dd_env


def stop_daemon(p):
    """SIGTERM (a clean stop: the daemon's shutdown_grace is short in the bench configs)."""
    PROCS.stop(p, signal.SIGTERM, grace=20.0)


def log_events(path):
    out = []
    try:
        with open(path) as f:
            for line in f:
                try:
                    e = json.loads(line)
                except ValueError:
                    continue
                out.append(e)
    except FileNotFoundError:
        pass
    return out


def message(e):
    return e.get("fields", {}).get("message")


def stamp(ts):
    """A tracing JSON timestamp (RFC 3339, nanoseconds, Z) as a Unix time."""
    return datetime.fromisoformat(re.sub(r"(\.\d{6})\d*Z$", r"\1+00:00", ts)
                                  .replace("Z", "+00:00")).timestamp()


def history(state_dir):
    p = os.path.join(state_dir, "history.jsonl")
    try:
        with open(p) as f:
            return [json.loads(l) for l in f if l.strip()]
    except FileNotFoundError:
        return []


def history_len(state_dir):
    p = os.path.join(state_dir, "history.jsonl")
    try:
        with open(p, "rb") as f:
            return f.read().count(b"\n")
    except FileNotFoundError:
        return 0


def toml_str(s):
    return json.dumps(str(s))


# --------------------------------------------------------------------------------------------
# Corpora (rebuilt in the work directory; reused there when already complete)


def done_marker(path):
    return path.rstrip("/") + ".complete"


def corpus(path, build):
    if os.path.exists(done_marker(path)):
        say(f"  corpus {path}: reused")
        return path
    if os.path.exists(path):
        shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    t0 = time.monotonic()
    build(path)
    open(done_marker(path), "w").close()
    say(f"  corpus {path}: built in {time.monotonic() - t0:.0f} s")
    return path


def tree_stats(path):
    files = dirs = size = 0
    for d, subdirs, names in os.walk(path):
        dirs += 1
        for n in names:
            files += 1
            size += os.lstat(os.path.join(d, n)).st_size
    return files, dirs, size


def build_vendor(path):
    run(["cargo", "vendor", "--locked", "--quiet", "--manifest-path",
         os.path.join(ROOT, "Cargo.toml"), path], stdout=subprocess.DEVNULL)


WORDS = ("fn let mut struct impl pub use self match return async await Some None Ok Err "
         "String Vec Option Result the of and to in is for with on that this config archive "
         "deploy upload source tree watch pack queue lane spool job state error value").split()


def text_pool(rng, size):
    lines, n = [], 0
    while n < size:
        line = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 14)))
        line = "    " * rng.randint(0, 3) + line + f" // {rng.randint(0, 99999)}\n"
        lines.append(line)
        n += len(line)
    return "".join(lines).encode()[:size]


def build_mixed(path, total, seed=7):
    """About `total` bytes: half compressible text, half random bytes (seeded), in files of
    4 KiB to 2 MiB, 50 per directory, plus one big file of total/8 alternating both kinds by
    MiB."""
    rng = random.Random(seed)
    pool = text_pool(rng, 4 * MiB)

    def text(n):
        out, left = [], n
        while left > 0:
            start = rng.randrange(0, len(pool) - 64 * 1024)
            chunk = pool[start:start + min(left, 64 * 1024)]
            out.append(chunk)
            left -= len(chunk)
        return b"".join(out)

    def random_bytes(n):
        return b"".join(rng.randbytes(min(4 * MiB, n - i)) for i in range(0, n, 4 * MiB))

    os.makedirs(path)
    big = total // 8
    with open(os.path.join(path, "big.bin"), "wb") as f:
        for i in range(0, big, MiB):
            f.write((text if (i // MiB) % 2 == 0 else random_bytes)(min(MiB, big - i)))
    sizes = [4 << 10, 32 << 10, 256 << 10, 1 << 20, 2 << 20]
    left, k = total - big, 0
    while left > 0:
        d = os.path.join(path, f"d{k // 50:03}")
        if k % 50 == 0:
            os.makedirs(d)
        n = min(sizes[k % len(sizes)], left)
        kind = text if k % 2 == 0 else random_bytes
        with open(os.path.join(d, f"f{k:05}" + (".txt" if kind is text else ".bin")), "wb") as f:
            f.write(kind(n))
        left -= n
        k += 1


def build_tree10k(path):
    """bench/redeploy.py's tree: 10,000 files in 100 directories, an ignored node_modules/ of
    2,000 files in 200 directories, and index.js to edit."""
    for d in range(TREE10K_DIRS):
        os.makedirs(os.path.join(path, f"pkg{d:03}"))
        for f in range(100):
            with open(os.path.join(path, f"pkg{d:03}", f"mod{f:03}.js"), "w") as fh:
                fh.write(f"export const v = {d * 100 + f};\n" * 10)
    for d in range(200):
        nm = os.path.join(path, "node_modules", f"dep{d:03}")
        os.makedirs(nm)
        for f in range(10):
            with open(os.path.join(nm, f"{f}.js"), "w") as fh:
                fh.write("x\n")
    with open(os.path.join(path, ".gitignore"), "w") as fh:
        fh.write("node_modules/\n")
    with open(os.path.join(path, "index.js"), "w") as fh:
        fh.write("console.log(0)\n")


def build_tree100k(path):
    """WATCH_FILES files in WATCH_DIRS directories (tops of 100 subdirectories each, 10 files
    in every directory), plus node_modules/ (ignored by .gitignore) with 500 directories."""
    tops = WATCH_DIRS // 100
    for t in range(tops):
        top = os.path.join(path, f"t{t:03}")
        for s in range(100):
            d = top if s == 0 else os.path.join(top, f"s{s:02}")
            os.makedirs(d)
            for f in range(10):
                with open(os.path.join(d, f"m{f}.js"), "w") as fh:
                    fh.write(f"export default {t * 1000 + s * 10 + f};\n")
    for d in range(500):
        nm = os.path.join(path, "node_modules", f"dep{d:03}")
        os.makedirs(nm)
        with open(os.path.join(nm, "index.js"), "w") as fh:
            fh.write("module.exports = 1;\n")
    with open(os.path.join(path, ".gitignore"), "w") as fh:
        fh.write("node_modules/\n")


def build_upload_archive(path):
    """A valid tar.gz under one top-level folder, of mostly random bytes, made with pigz -1."""
    src = path + ".src"
    shutil.rmtree(src, ignore_errors=True)
    os.makedirs(os.path.join(src, "up"))
    rng = random.Random(11)
    with open(os.path.join(src, "up", "README.txt"), "wb") as f:
        f.write(text_pool(rng, MiB))
    for i in range(UPLOAD_BYTES // (32 * MiB)):
        with open(os.path.join(src, "up", f"blob{i:02}.bin"), "wb") as f:
            for _ in range(8):
                f.write(rng.randbytes(4 * MiB))
    with open(path, "wb") as out:
        tar = PROCS.start(["tar", "-C", src, "-cf", "-", "up"], stdout=subprocess.PIPE)
        run(["pigz", "-1"], stdin=tar.stdout, stdout=out)
        tar.stdout.close()
        code = tar.wait()
        PROCS.stop(tar)
        if code != 0:
            raise RuntimeError("tar failed")
    shutil.rmtree(src)


# --------------------------------------------------------------------------------------------
# Sections


class Bench:
    def __init__(self, work, table):
        self.work = work
        self.table = table
        self.corpus_dir = os.path.join(work, "corpus")
        self.logs = os.path.join(work, "logs")
        os.makedirs(self.corpus_dir, exist_ok=True)
        os.makedirs(self.logs, exist_ok=True)

    def path(self, *parts):
        return os.path.join(self.work, *parts)

    def fresh(self, *parts):
        p = self.path(*parts)
        shutil.rmtree(p, ignore_errors=True)
        os.makedirs(p)
        return p

    def config(self, name, body, state_dir, parallel=4):
        cfg = self.path(f"{name}.toml")
        with open(cfg, "w") as f:
            f.write(f"state_dir = {toml_str(state_dir)}\nmax_parallel = {parallel}\n"
                    f"max_archive_size = {HUGE}\nshutdown_grace = \"2s\"\n"
                    # The fake has no rate limit here: throughput, not the API budget
                    # (bench/api_budget.sh), is measured.
                    f"[scalingo]\nfollow_interval = \"{FOLLOW}\"\napi_rate_limit = 1000000\n"
                    f"{body}")
        return cfg

    # ---- 1. pack ---------------------------------------------------------------------------

    def pack(self):
        say("== pack: the vendor tree (cargo vendor --locked of this project)")
        if SMOKE:  # no `cargo vendor` (a download when the cache is cold): a small tree
            vendor = corpus(os.path.join(self.corpus_dir, "smoke-tree"),
                            lambda p: build_mixed(p, 2 * MiB))
        else:
            vendor = corpus(os.path.join(self.corpus_dir, "vendor"), build_vendor)
        files, dirs, size = tree_stats(vendor)
        say(f"  vendor: {files} files, {dirs} directories, {size / MiB:.0f} MiB")
        out = self.fresh("pack")
        # Warm the page cache: read every file once.
        for d, _, names in os.walk(vendor):
            for n in names:
                p = os.path.join(d, n)
                if os.path.isfile(p) and not os.path.islink(p):
                    with open(p, "rb") as f:
                        while f.read(1 << 20):
                            pass
        parent, base = os.path.split(vendor)
        tools = {
            "dropdeploy": [BIN, "pack", vendor, "-o", os.path.join(out, "dd.tar.gz")],
            "tar czf": ["tar", "-C", parent, "-czf", os.path.join(out, "tar.tar.gz"), base],
            "tar -I pigz": ["tar", "-C", parent, "-I", "pigz", "-cf",
                            os.path.join(out, "pigz.tar.gz"), base],
        }
        outputs = {"dropdeploy": "dd.tar.gz", "tar czf": "tar.tar.gz", "tar -I pigz": "pigz.tar.gz"}
        walls = {k: [] for k in tools}
        cpus = {k: [] for k in tools}
        rss = {k: 0 for k in tools}
        for r in range(PACK_RUNS):
            for name, cmd in tools.items():  # interleaved, so noise spreads over all three
                os.makedirs(out, exist_ok=True)
                wall, cpu, peak, code = PROCS.measure(
                    cmd, stdout=os.path.join(self.logs, "pack.out"),
                    stderr=os.path.join(self.logs, "pack.err"))
                if code != 0:
                    raise RuntimeError(f"{name} failed ({code}): see {self.logs}/pack.err")
                walls[name].append(wall)
                cpus[name].append(cpu)
                rss[name] = max(rss[name], peak)
                say(f"  run {r + 1}/{PACK_RUNS} {name:<11} {wall:6.2f} s wall, {cpu:6.2f} s CPU, "
                    f"{peak / MiB:5.1f} MiB peak")
        sizes = {k: os.path.getsize(os.path.join(out, v)) for k, v in outputs.items()}
        best = {k: min(v) for k, v in walls.items()}
        for k in tools:
            say(f"  {k:<11} best {best[k]:6.2f} s, median {statistics.median(walls[k]):6.2f} s, "
                f"CPU {min(cpus[k]):6.2f} s, {sizes[k] / MiB:7.1f} MiB "
                f"({size / sizes[k]:.2f}x)")
        dd, tz, pz = best["dropdeploy"], best["tar czf"], best["tar -I pigz"]
        note = f"best of {PACK_RUNS}"
        self.table.add(f"pack {size / MiB:.0f} MiB vendor tree ({files} files): wall time vs "
                       "tar czf",
                       f"{dd:.2f} s ({note})", f"tar czf {tz:.2f} s", f"{dd / tz:.2f}",
                       "≤ 0.45", met(dd / tz <= 0.45))
        self.table.add("pack: wall time vs tar -I pigz -cf", f"{dd:.2f} s",
                       f"tar -I pigz {pz:.2f} s", f"{dd / pz:.2f}", "≤ 1.0", met(dd / pz <= 1.0))
        self.table.add("pack: compressed size vs tar czf", mib(sizes["dropdeploy"]),
                       mib(sizes["tar czf"]), f"{sizes['dropdeploy'] / sizes['tar czf']:.3f}",
                       "≤ 1.02", met(sizes["dropdeploy"] / sizes["tar czf"] <= 1.02))
        self.table.add("pack: CPU time (user+sys)", f"{min(cpus['dropdeploy']):.2f} s",
                       f"tar czf {min(cpus['tar czf']):.2f} s, "
                       f"pigz {min(cpus['tar -I pigz']):.2f} s "
                       f"({min(cpus['tar -I pigz']) / pz:.2f} cores busy)",
                       f"{min(cpus['dropdeploy']) / dd:.2f} cores busy")

        # Validity of dropdeploy's archive.
        dd_file = os.path.join(out, "dd.tar.gz")
        gz = run(["gzip", "-t", dd_file], check=False, capture_output=True)
        gz_ok = gz.returncode == 0
        counts = {}
        for k in ("dropdeploy", "tar czf"):
            lst = run(["tar", "tzf", os.path.join(out, outputs[k])], check=False,
                      capture_output=True)
            counts[k] = (lst.returncode, lst.stdout.count(b"\n"))
        tar_ok = counts["dropdeploy"][0] == 0
        gocheck = os.path.join(ROOT, "bench", "gzcheck.go")
        if not os.path.exists(gocheck):
            go_text, go_ok = "skipped: bench/gzcheck.go not there", None
        elif not shutil.which("go"):
            go_text, go_ok = "skipped: go not installed", None
        else:
            g = run(["go", "run", gocheck, dd_file], check=False, capture_output=True, text=True,
                    cwd=ROOT)
            lines = g.stdout.strip().splitlines() or g.stderr.strip().splitlines()
            said = "; ".join(" ".join(l.split()) for l in lines)[:160]
            go_ok = g.returncode == 0
            go_text = ("ok" if go_ok else f"FAILED (exit {g.returncode})") + (
                f": {said}" if said else "")
            if not go_ok:
                say(f"  go gzcheck stderr: {g.stderr.strip()[-400:]}")
        say(f"  gzip -t: {'ok' if gz_ok else gz.stderr.decode().strip()}; tar tzf: "
            f"dropdeploy {counts['dropdeploy'][1]} entries, tar czf {counts['tar czf'][1]}; "
            f"Go compress/gzip: {go_text}")
        self.table.add("pack: archive valid (gzip -t; tar tzf entries)",
                       f"gzip -t {'ok' if gz_ok else 'FAILED'}; {counts['dropdeploy'][1]} entries",
                       f"tar czf: {counts['tar czf'][1]} entries", "—", "valid",
                       met(gz_ok and tar_ok))
        self.table.add("pack: archive read by Go compress/gzip (bench/gzcheck.go)", go_text, "—",
                       "—", "ok", "skipped" if go_ok is None else met(go_ok))
        if not KEEP:
            shutil.rmtree(out, ignore_errors=True)

    # ---- 2. memory -------------------------------------------------------------------------

    def memory(self):
        say("== memory: peak RSS of pack and of a full deploy, on mixed trees")
        fake, env = start_fake(self.work, "memory", ["mem"])
        results = {}
        try:
            for total in MEM_SIZES:
                label = size_label(total)
                tree = corpus(os.path.join(self.corpus_dir, f"mixed-{total // MiB}M", "app"),
                              lambda p, t=total: build_mixed(p, t))
                out = self.fresh("memory")
                wall, cpu, peak, code = PROCS.measure(
                    [BIN, "pack", tree, "-o", os.path.join(out, "m.tar.gz")],
                    stdout=os.path.join(self.logs, "mem-pack.out"),
                    stderr=os.path.join(self.logs, "mem-pack.err"))
                if code != 0:
                    raise RuntimeError(f"dropdeploy pack failed ({code})")
                gz = os.path.getsize(os.path.join(out, "m.tar.gz"))
                say(f"  pack {label}: {wall:.1f} s wall, {cpu:.1f} s CPU, peak RSS {mib(peak)}, "
                    f"archive {mib(gz)}")
                os.remove(os.path.join(out, "m.tar.gz"))

                # A full deploy: `dropdeploy run`, one watched tree deployed at start.
                state = self.fresh("memory", "state")
                cfg = self.config("memory", f'[[app]]\nname = "mem"\nsource_dir = '
                                  f'{toml_str(tree)}\ndebounce = "200ms"\ndeploy_on_start = true\n',
                                  state)
                log = os.path.join(self.logs, f"mem-run-{total // MiB}M.log")
                t0 = time.monotonic()
                d = PROCS.start([BIN, "--log-format", "json", "--config", cfg, "run"],
                                stderr=log, env=dict(env, RUST_LOG="info"))
                hwm = 0

                def finished():
                    nonlocal hwm
                    if d.poll() is not None:
                        raise RuntimeError(f"dropdeploy run exited ({d.returncode}); see {log}")
                    hwm = max(hwm, proc_status(d.pid, "VmHWM") or 0)
                    return history_len(state) >= 1

                wait_for(finished, 900, "the deploy's history line", step=0.05)
                deploy_wall = time.monotonic() - t0
                stop_daemon(d)
                h = history(state)[0]
                ev = log_events(log)
                packed = next((e["fields"] for e in ev if message(e) == "packed"), {})
                uploaded = next((e["fields"] for e in ev if message(e) == "uploaded"), {})
                say(f"  deploy {label}: {h.get('outcome')} in {deploy_wall:.1f} s (pack "
                    f"{packed.get('elapsed_ms', 0) / 1000:.1f} s, upload "
                    f"{uploaded.get('elapsed_ms', 0) / 1000:.1f} s of "
                    f"{uploaded.get('bytes', 0) / MiB:.0f} MiB), peak RSS {mib(hwm)}")
                if h.get("outcome") != "succeeded":
                    say(f"  deploy {label} did not succeed: {h}")
                results[total] = (peak, hwm, h.get("outcome"), wall, deploy_wall)
        finally:
            PROCS.stop(fake)
        small, large = MEM_SIZES
        for kind, i in (("pack", 0), ("full deploy (run)", 1)):
            for total in MEM_SIZES:
                label = size_label(total)
                r = results[total]
                extra = "" if i == 0 or r[2] == "succeeded" else f" (outcome {r[2]})"
                secs = r[3] if i == 0 else r[4]
                self.table.add(f"peak RSS, {kind}, {label} mixed tree",
                               f"{mib(r[i])}{extra}", "—", f"{secs:.1f} s wall", "≤ 40 MiB",
                               met(r[i] <= 40 * MiB and (i == 0 or r[2] == "succeeded")))
            growth = results[large][i] / results[small][i]
            self.table.add(f"peak RSS, {kind}: {size_label(large)} / {size_label(small)} tree",
                           f"{mib(results[large][i])} / {mib(results[small][i])}", "—",
                           f"{growth:.2f}", "flat (≤ 1.10)", met(growth <= 1.10))
        shutil.rmtree(self.path("memory"), ignore_errors=True)

    # ---- 3. upload -------------------------------------------------------------------------

    def upload(self):
        say("== upload: a ~500 MB archive over loopback, dropdeploy vs curl -T")
        archive = corpus(os.path.join(self.corpus_dir, "upload.tar.gz"), build_upload_archive)
        size = os.path.getsize(archive)
        with open(archive, "rb") as f:  # into the page cache
            while f.read(1 << 24):
                pass
        say(f"  archive: {mib(size)}")
        dd, curl = [], []
        for r in range(UPLOAD_RUNS):
            # A fresh fake API each run, so that the uploads it stores (and their writeback)
            # do not pile up; the first client alternates, so that neither always goes first.
            fake, env = start_fake(self.work, f"upload{r}", ["up"])
            try:
                for who in (("dropdeploy", "curl") if r % 2 == 0 else ("curl", "dropdeploy")):
                    if who == "dropdeploy":
                        dd.append(self.upload_dropdeploy(archive, env, r))
                    else:
                        curl.append(upload_curl(archive, env, r))
            finally:
                PROCS.stop(fake)
        b_dd, b_curl = max(dd), max(curl)
        self.table.add(f"upload {mib(size)} archive to the fake API, throughput (best of "
                       f"{UPLOAD_RUNS})", f"{b_dd / MiB:.0f} MiB/s",
                       f"curl -T {b_curl / MiB:.0f} MiB/s",
                       f"{b_dd / b_curl:.2f} (medians: "
                       f"{statistics.median(dd) / statistics.median(curl):.2f})", "≥ 0.8",
                       met(b_dd / b_curl >= 0.8))
        shutil.rmtree(self.path("upload"), ignore_errors=True)

    def upload_dropdeploy(self, archive, env, r):
        """One upload by the daemon, through a drop folder: its `uploaded` event has the bytes
        and elapsed_ms (`dropdeploy deploy` prints its own lines instead, to 0.1 s)."""
        base_dir = self.fresh("upload", f"run{r}")
        drop_dir = os.path.join(base_dir, "drop")
        state = os.path.join(base_dir, "state")
        cfg = self.config("upload", f'[[app]]\nname = "up"\ndrop_dir = {toml_str(drop_dir)}\n',
                          state)
        log = os.path.join(self.logs, f"upload-{r}.log")
        d = PROCS.start([BIN, "--log-format", "json", "--config", cfg, "run"], stderr=log,
                        env=dict(env, RUST_LOG="info"))
        try:
            wait_for(lambda: any(message(e) == "dropdeploy is running" for e in log_events(log)),
                     60, "the daemon to start")
            # A hard link renamed in: taken at once, and the corpus file stays.
            link = os.path.join(base_dir, "up.tar.gz")
            os.link(archive, link)
            t0 = time.monotonic()
            os.rename(link, os.path.join(drop_dir, "up.tar.gz"))

            def done():
                if d.poll() is not None:
                    raise RuntimeError(f"dropdeploy run exited ({d.returncode}); see {log}")
                return history_len(state) >= 1

            wait_for(done, 600, "the upload's deploy", step=0.02)
            wall = time.monotonic() - t0
        finally:
            stop_daemon(d)
        h = history(state)[0]
        ev = next((e["fields"] for e in log_events(log) if message(e) == "uploaded"), None)
        if h.get("outcome") != "succeeded" or ev is None:
            raise RuntimeError(f"the deploy did not succeed: {h}; see {log}")
        rate = ev["bytes"] / (ev["elapsed_ms"] / 1000)
        say(f"  run {r + 1}/{UPLOAD_RUNS} dropdeploy: {ev['bytes'] / MiB:.0f} MiB in "
            f"{ev['elapsed_ms']} ms = {rate / MiB:.0f} MiB/s (drop → history line {wall:.1f} s)")
        shutil.rmtree(base_dir, ignore_errors=True)
        return rate

    # ---- 4. latency ------------------------------------------------------------------------

    def latency(self):
        say(f"== latency: change → upload start, 10,000-file tree, quiet = {ms(QUIET_S)}, "
            f"{EDITS} edits")
        tree = corpus(os.path.join(self.corpus_dir, "tree10k"), build_tree10k)
        out = self.fresh("latency")
        alone = []
        for r in range(PACK_ALONE_RUNS):
            wall, _, _, code = PROCS.measure(
                [BIN, "pack", tree, "-o", os.path.join(out, "alone.tar.gz")],
                stdout=os.path.join(self.logs, "latency-pack.out"),
                stderr=os.path.join(self.logs, "latency-pack.err"))
            if code != 0:
                raise RuntimeError("dropdeploy pack failed")
            alone.append(wall)
        pack_alone = statistics.median(alone)
        say(f"  dropdeploy pack alone: median {ms(pack_alone)} of {PACK_ALONE_RUNS} "
            f"(min {ms(min(alone))}, max {ms(max(alone))})")

        fake, env = start_fake(self.work, "latency", ["lat"])
        state = os.path.join(out, "state")
        cfg = self.config("latency", f'[[app]]\nname = "lat"\nsource_dir = {toml_str(tree)}\n'
                          f'debounce = "{int(QUIET_S * 1000)}ms"\ndeploy_on_start = false\n', state)
        log = os.path.join(self.logs, "latency.log")
        d = PROCS.start([BIN, "--log-format", "json", "--config", cfg, "run"], stderr=log,
                        env=dict(env, RUST_LOG="dropdeploy=debug"))
        try:
            wait_for(lambda: any(message(e) == "dropdeploy is running" for e in log_events(log)),
                     60, "the daemon to start")
            lat, packs, stages = [], [], []
            for i in range(EDITS):
                time.sleep(0.3)  # let the previous deployment's tail settle
                t0 = time.time()
                with open(os.path.join(tree, "index.js"), "w") as fh:
                    fh.write(f"console.log({os.getpid()}, {i + 1})\n")
                wait_for(lambda: history_len(state) >= i + 1, 120, f"edit {i + 1}'s deploy")
                ev = log_events(log)
                uploads = [e for e in ev if message(e) == "step"
                           and e["fields"].get("step") == "upload"]
                packed = [e for e in ev if message(e) == "packed"]
                lat.append(stamp(uploads[i]["timestamp"]) - t0)
                packs.append(packed[i]["fields"]["elapsed_ms"] / 1000)
                # Where the time goes: save → end of the burst (the quiet period), → packed
                # (pack, fsync, spool commit), → upload start (the lane: inspect, create source).
                changed = next(stamp(e["timestamp"]) for e in ev
                               if message(e) == "source directory changed"
                               and stamp(e["timestamp"]) >= t0)
                stages.append((changed - t0, stamp(packed[i]["timestamp"]) - changed,
                               stamp(uploads[i]["timestamp"]) - stamp(packed[i]["timestamp"])))
        finally:
            stop_daemon(d)
            PROCS.stop(fake)
            with open(os.path.join(tree, "index.js"), "w") as fh:
                fh.write("console.log(0)\n")
        bad = [h for h in history(state) if h.get("outcome") != "succeeded"]
        if bad:
            say(f"  {len(bad)} deploys did not succeed, e.g. {bad[0]}")
        med = statistics.median(lat)
        fig = med - QUIET_S - pack_alone
        rest = statistics.median([l - QUIET_S - p for l, p in zip(lat, packs)])
        say(f"  save → upload start: median {ms(med)} (min {ms(min(lat))}, max {ms(max(lat))}); "
            f"pack time the daemon logged: median {ms(statistics.median(packs))}; "
            f"minus quiet and the logged pack: median {ms(rest)}")
        self.table.add(f"change → upload start, 10k-file tree, quiet 200 ms (median of {EDITS}), "
                       "minus quiet, minus pack alone",
                       f"{ms(med)} − 200 − {ms(pack_alone)}", "—", f"{fig * 1000:.1f} ms",
                       "≤ 50 ms",
                       met(fig <= 0.050))
        self.table.add("  the same, minus the pack time the daemon logged per edit", ms(rest),
                       "—", f"daemon's pack: {ms(statistics.median(packs))} median")
        burst, pack_stage, lane = (statistics.median(x) for x in zip(*stages))
        say(f"  medians: save → burst end {ms(burst)}, → packed {ms(pack_stage)}, "
            f"→ upload start {ms(lane)}")
        self.table.add("  where it goes (medians, from the daemon's log)",
                       f"save → burst end {ms(burst)}; → packed {ms(pack_stage)}; "
                       f"→ upload start {ms(lane)}", "—", "—")
        shutil.rmtree(out, ignore_errors=True)

    # ---- 5. watch --------------------------------------------------------------------------

    def watch(self):
        say(f"== watch: {WATCH_FILES} files in {WATCH_DIRS} directories (+ ignored "
            f"node_modules/), idle {IDLE} s")
        tree = corpus(os.path.join(self.corpus_dir, "tree100k"), build_tree100k)
        files, all_dirs, _ = tree_stats(tree)
        ignored_dirs = sum(1 for _ in os.walk(os.path.join(tree, "node_modules")))
        expected = all_dirs - ignored_dirs
        say(f"  tree: {files} files, {all_dirs} directories with the root, of which "
            f"{ignored_dirs} in node_modules/ (ignored): {expected} to watch")
        fake, env = start_fake(self.work, "watch", ["w"])
        state = self.fresh("watch", "state")
        out = os.path.join(self.logs, "watch.out")
        we_bin = shutil.which("watchexec") or (
            os.path.expanduser("~/.cargo/bin/watchexec")
            if os.path.exists(os.path.expanduser("~/.cargo/bin/watchexec")) else None)
        res = {}
        procs = []
        try:
            t0 = time.monotonic()
            d = PROCS.start([BIN, "watch", "--app", "w", "--no-deploy-on-start", "--state-dir",
                             state, "--debounce", "200ms", tree], stdout=out,
                            stderr=os.path.join(self.logs, "watch.err"), env=env)
            procs.append(d)

            def watching():
                if d.poll() is not None:
                    raise RuntimeError(f"dropdeploy watch exited ({d.returncode})")
                with open(out) as f:
                    return "watching" in f.read()

            wait_for(watching, 60, "dropdeploy watch's 'watching' line", step=0.002)
            res["dropdeploy"] = {"start": time.monotonic() - t0, "pid": d.pid}
            say(f"  dropdeploy: watching after {ms(res['dropdeploy']['start'])}: "
                f"{open(out).read().strip()}")

            if we_bin:
                ver = run([we_bin, "--version"], capture_output=True, text=True, check=False)
                say(f"  {(ver.stdout.strip().splitlines() or ['watchexec'])[0]}")
                t0 = time.monotonic()
                w = PROCS.start([we_bin, "--postpone", "-w", tree, "--", "true"], cwd=tree,
                                stdout=os.path.join(self.logs, "watchexec.out"),
                                stderr=os.path.join(self.logs, "watchexec.err"))
                procs.append(w)
                # Its last new inotify watch, polled: the count unchanged for 2 s ends the wait.
                last_n, last_t = -1, t0
                while time.monotonic() - last_t < 2.0 and time.monotonic() - t0 < 60:
                    if w.poll() is not None:
                        raise RuntimeError(f"watchexec exited ({w.returncode}); see logs")
                    n = inotify_watches(w.pid)
                    if n != last_n:
                        last_n, last_t = n, time.monotonic()
                    time.sleep(0.01)
                res["watchexec"] = {"start": last_t - t0, "pid": w.pid}
                say(f"  watchexec: {last_n} watches, the last one after {ms(last_t - t0)}")

            # Both idle at once (the same IDLE seconds, the same machine noise).
            for name, r in res.items():
                r["watches"] = inotify_watches(r["pid"])
                r["cpu0"] = cpu_seconds(r["pid"])
            time.sleep(IDLE)
            for name, r in res.items():
                r["cpu"] = cpu_seconds(r["pid"]) - r["cpu0"]
                r["hwm"] = proc_status(r["pid"], "VmHWM")
                r["rss"] = proc_status(r["pid"], "VmRSS")
                say(f"  {name}: {r['watches']} watches, peak RSS {mib(r['hwm'])} (now "
                    f"{mib(r['rss'])}), CPU over {IDLE} s idle {r['cpu']:.2f} s")
            # Then someone reads the whole tree (an editor's search, a build): every file is
            # opened and read, nothing changes. A watcher should not pay for that.
            for r in res.values():
                r["cpu0"] = cpu_seconds(r["pid"])
            t = time.monotonic()
            run(["grep", "-r", "-q", "no-such-text-anywhere", tree], check=False)
            grep_s = time.monotonic() - t
            time.sleep(0.5)  # let the watchers drain what the reads queued
            for name, r in res.items():
                r["read_cpu"] = cpu_seconds(r["pid"]) - r["cpu0"]
                say(f"  {name}: CPU while grep -r read the tree ({grep_s:.1f} s): "
                    f"{r['read_cpu']:.2f} s")
        finally:
            for p in procs:
                PROCS.stop(p, signal.SIGINT)
            PROCS.stop(fake)
        dd = res["dropdeploy"]
        we = res.get("watchexec")
        absent = "watchexec: not installed"

        def ref(f):
            return f(we) if we else absent

        self.table.add(f"watch {files} files / {expected} dirs: start → watching",
                       ms(dd["start"]),
                       ref(lambda w: f"watchexec {ms(w['start'])} (its last new inotify "
                           "watch, /proc polled every 10 ms)"),
                       f"{dd['start'] / we['start']:.2f}" if we else "—", "≤ 1 s",
                       met(dd["start"] <= 1.0))
        self.table.add("watch: inotify watches (= directories not ignored)",
                       f"{dd['watches']}", ref(lambda w: f"watchexec {w['watches']}"),
                       f"expected {expected}", f"= {expected}", met(dd["watches"] == expected))
        self.table.add("watch: peak RSS (VmHWM)", mib(dd["hwm"]),
                       ref(lambda w: f"watchexec {mib(w['hwm'])}"),
                       f"{dd['hwm'] / we['hwm']:.2f}" if we else "—", "≤ 64 MiB",
                       met(dd["hwm"] <= 64 * MiB))
        self.table.add(f"watch: CPU time over {IDLE} s idle", f"{dd['cpu']:.2f} s",
                       ref(lambda w: f"watchexec {w['cpu']:.2f} s"), "—",
                       f"≤ 0.3 s (per 60 s)", met(dd["cpu"] <= 0.3 * IDLE / 60))
        self.table.add("watch: CPU while `grep -r` reads every file (nothing changes)",
                       f"{dd['read_cpu']:.2f} s",
                       ref(lambda w: f"watchexec {w['read_cpu']:.2f} s"), "—", "—")
        shutil.rmtree(self.path("watch"), ignore_errors=True)

    # ---- 6. drop ---------------------------------------------------------------------------

    def drop(self):
        say(f"== drop: {DROP_JOBS} tarballs across {DROP_APPS} drop folders, max_parallel "
            f"{DROP_PARALLEL}")
        base = self.fresh("drop")
        apps = [f"drop-{i:02}" for i in range(DROP_APPS)]
        staging = os.path.join(base, "staging")
        os.makedirs(staging)
        names = []
        for k in range(DROP_JOBS):
            app = apps[k % DROP_APPS]
            buf = BytesIO()
            with tarfile.open(fileobj=buf, mode="w:gz") as t:
                for name, body in (("index.js", f"console.log({k})\n" * 20),
                                   ("package.json", '{"name": "app"}\n')):
                    data = body.encode()
                    info = tarfile.TarInfo(f"app/{name}")
                    info.size = len(data)
                    t.addfile(info, BytesIO(data))
            src = os.path.join(staging, f"{app}-j{k:04}.tar.gz")
            with open(src, "wb") as f:
                f.write(buf.getvalue())
            names.append((src, os.path.join(base, "drops", app, f"j{k:04}.tar.gz")))
        state = os.path.join(base, "state")
        body = "".join(f'[[app]]\nname = "{a}"\ndrop_dir = '
                       f'{toml_str(os.path.join(base, "drops", a))}\nqueue = "all"\n'
                       f'follow_interval = "{FOLLOW}"\n' for a in apps)
        cfg = self.config("drop", body, state, parallel=DROP_PARALLEL)
        fake, env = start_fake(self.work, "drop", apps)
        log = os.path.join(self.logs, "drop.log")
        d = PROCS.start([BIN, "--log-format", "json", "--config", cfg, "run"], stderr=log,
                        env=dict(env, RUST_LOG="info"))
        try:
            wait_for(lambda: any(message(e) == "dropdeploy is running" for e in log_events(log)),
                     60, "the daemon to start")
            cpu0 = cpu_seconds(d.pid)
            t0 = time.monotonic()
            for src, dst in names:
                os.rename(src, dst)
            t_renamed = time.monotonic() - t0

            def all_done():
                if d.poll() is not None:
                    raise RuntimeError(f"dropdeploy run exited ({d.returncode}); see {log}")
                return history_len(state) >= DROP_JOBS

            wait_for(all_done, 1800, f"{DROP_JOBS} history lines", step=0.01)
            elapsed = time.monotonic() - t0
            cpu = cpu_seconds(d.pid) - cpu0
            hwm = proc_status(d.pid, "VmHWM")
        finally:
            stop_daemon(d)
            PROCS.stop(fake)
        outcomes = {}
        for h in history(state):
            outcomes[h.get("outcome")] = outcomes.get(h.get("outcome"), 0) + 1
        say(f"  renames took {ms(t_renamed)}; {DROP_JOBS} jobs in {elapsed:.1f} s = "
            f"{DROP_JOBS / elapsed:.1f} jobs/s; daemon CPU {cpu:.1f} s "
            f"({cpu / DROP_JOBS * 1000:.1f} ms per job); peak RSS {mib(hwm)}; outcomes {outcomes}")
        ok = outcomes.get("succeeded", 0) == DROP_JOBS
        self.table.add(f"drop: {DROP_JOBS} tarballs over {DROP_APPS} apps, first drop → last "
                       f"history line (max_parallel {DROP_PARALLEL})",
                       f"{DROP_JOBS / elapsed:.1f} jobs/s", "—",
                       f"{elapsed:.1f} s; {cpu / DROP_JOBS * 1000:.1f} ms CPU/job",
                       f"all {DROP_JOBS} succeed", met(ok))
        self.table.add("drop: daemon peak RSS (VmHWM)", mib(hwm), "—", "—", "—", "—")
        shutil.rmtree(base, ignore_errors=True)


def upload_curl(archive, env, r):
    """One `curl -T` of the archive to an upload URL of the fake API (token exchange with basic
    auth `:TOKEN`, then POST /v1/sources with the bearer)."""
    base = env["SCALINGO_API_URL"]
    jwt = http_json(f"{base}/v1/tokens/exchange", {}, basic=env["SCALINGO_API_TOKEN"])
    src = http_json(f"{base}/v1/sources", {}, bearer=jwt["token"])
    c = run(["curl", "-sS", "-f", "-o", "/dev/null", "-w",
             "%{size_upload} %{time_total} %{time_pretransfer}",
             "-T", archive, "-H", "Content-Type: application/x-gzip",
             src["source"]["upload_url"]], capture_output=True, text=True)
    sent, total, pre = (float(x) for x in c.stdout.split())
    say(f"  run {r + 1}/{UPLOAD_RUNS} curl -T: {sent / MiB:.0f} MiB in {total * 1000:.0f} ms "
        f"(connect {pre * 1000:.0f} ms) = {sent / total / MiB:.0f} MiB/s")
    return sent / total


def http_json(url, body, basic=None, bearer=None):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
    req.add_header("Content-Type", "application/json")
    req.add_header("Accept", "application/json")
    if basic is not None:
        req.add_header("Authorization", "Basic " + b64encode(f":{basic}".encode()).decode())
    if bearer is not None:
        req.add_header("Authorization", f"Bearer {bearer}")
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


# --------------------------------------------------------------------------------------------


def header(command):
    cpu = "unknown CPU"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    rev = run(["git", "-C", ROOT, "describe", "--always", "--dirty"], capture_output=True,
              text=True, check=False).stdout.strip()
    nproc = len(os.sched_getaffinity(0))
    return (f"dropdeploy bench, {now}, {os.cpu_count()} CPUs (nproc {nproc}), "
            f"{cpu}, commit {rev or '?'}; command: `{command}`")


def main():
    args = sys.argv[1:]
    unknown = [a for a in args if a not in SECTIONS]
    if unknown:
        say(f"unknown section(s): {' '.join(unknown)}; choose among: {' '.join(SECTIONS)}")
        return 2
    chosen = [s for s in SECTIONS if not args or s in args]
    command = os.environ.get("BENCH_COMMAND") or " ".join(["bench/perf.py"] + args)
    for b in (BIN, FAKE):
        if not os.access(b, os.X_OK):
            say(f"missing {b}: run bench/run.sh, which builds it")
            return 2
    # SIGINT too: a shell may have started us with it ignored (a background job).
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    fixed = os.environ.get("BENCH_DIR")
    if fixed:
        work = os.path.abspath(fixed)
        os.makedirs(work, exist_ok=True)
    else:
        work = tempfile.mkdtemp(prefix="dropdeploy-bench-")
    say(f"work directory: {work}" + ("" if not fixed and not KEEP else " (kept)"))
    table = Table()
    bench = Bench(work, table)
    started = time.monotonic()
    failed = []
    try:
        for s in chosen:
            t0 = time.monotonic()
            try:
                getattr(bench, s)()
            except (KeyboardInterrupt, Interrupted):
                raise
            except Exception as e:  # one broken section must not hide the others' figures
                failed.append(s)
                say(f"!! section {s} failed: {e}")
                table.add(f"{s}: section failed", str(e)[:120], "—", "—", "—", "**NO**")
                PROCS.stop_all()
            say(f"   ({s}: {time.monotonic() - t0:.0f} s)")
    except (KeyboardInterrupt, Interrupted) as e:
        say(f"interrupted ({e or 'Ctrl-C'}); cleaning up")
        return 130
    finally:
        PROCS.stop_all()
        if not fixed and not KEEP:
            shutil.rmtree(work, ignore_errors=True)
    total = time.monotonic() - started
    text = (header(command) + f"; sections: {' '.join(chosen)}"
            + (" (QUICK=1: smaller sizes)" if QUICK else "") + f"; IDLE={IDLE}; "
            f"wall time {total / 60:.1f} min\n\n" + table.markdown() + "\n")
    print()
    print(text)
    if os.environ.get("OUT"):
        with open(os.environ["OUT"], "w") as f:
            f.write(text)
        say(f"table written to {os.environ['OUT']}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
