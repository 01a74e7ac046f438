#!/usr/bin/env python3
"""The HTTP intake bench (bench/intake.sh builds the binaries and runs this).

1. Throughput: archives PUT to the daemon's `[intake] listen` (`PUT /v1/apps/{app}/archives/
   {name}`, bearer token), each answered 202 once the archive and its job are durable in the
   local spool, against the same uploads to a plain file server as the reference: a small
   PUT-accepting server written here (Python's http.server takes no PUT), which streams the
   body to a file and fsyncs it before answering 201, as the intake syncs before its 202. One
   client for both: curl, one process for all the uploads of a run (`-K`, connections kept
   alive, `--parallel-max PARALLEL`), so that the figures compare servers, not clients.
   Two shapes: many small archives, and a few large ones (random bytes: nothing to compress).
2. Peak RSS of the daemon (VmHWM from /proc, a fresh daemon per size) once it has received one
   archive of 10 MiB, 100 MiB and 1 GiB: it streams to disk, so the figure stays flat.

The daemon's apps deploy to the fake API with builds that last an hour: the first archive's
job waits in its deployment and the others queue behind it (queue = "all"), so the figures
are intake alone, not deployments.

`--pg URL` (or DROPDEPLOY_DATABASE_URL in the environment) adds a column: the same uploads to a
daemon in fleet mode (`[cluster]`, DROPDEPLOY_DATABASE_URL=URL), whose intake also streams each
archive into PostgreSQL before its 202. `--pg` alone starts a throw-away server for it (the
`testpg` program). A build without fleet mode refuses `[cluster]`: that column then says the
daemon did not start, and the exit status is 1.

Environment: SMOKE=1 (tiny sizes), SMALL (200 archives), SMALL_KIB (64), LARGE (3), LARGE_MIB
(200), PARALLEL (4), RSS_MIB ("10 100 1024"), KEEP=1. Exit status: 0 when every run ended with
all its answers, 1 otherwise, 2 on setup errors.
"""

import gzip
import http.server
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import perf  # noqa: E402  (the helpers of bench/run.sh: processes, the fake, the table)
from perf import MiB, PROCS, say, toml_str  # noqa: E402

SMOKE = perf.SMOKE
SMALL = perf.env_int("SMALL", 10 if SMOKE else 200)
SMALL_KIB = perf.env_int("SMALL_KIB", 16 if SMOKE else 64)
LARGE = perf.env_int("LARGE", 2 if SMOKE else 3)
LARGE_MIB = perf.env_int("LARGE_MIB", 2 if SMOKE else 200)
PARALLEL = perf.env_int("PARALLEL", 4)
RSS_MIB = [int(s) for s in os.environ.get("RSS_MIB", "1 4" if SMOKE else "10 100 1024").split()]
TOKEN = "bench-intake-token-7f3a0c"
APP = "bench-app"


def archive(path, size, seed):
    """A .tar.gz of `size` random bytes in one file (gzip level 0: stored blocks, made at disk
    speed; random bytes would not compress anyway). `seed` makes each archive distinct."""
    with gzip.open(path, "wb", compresslevel=0) as gz, tarfile.open(fileobj=gz, mode="w|") as t:
        info = tarfile.TarInfo(f"app/data-{seed}.bin")
        info.size = size
        t.addfile(info, RandomReader(size))


class RandomReader:
    def __init__(self, size):
        self.left = size

    def read(self, n=-1):
        n = self.left if n < 0 else min(n, self.left)
        self.left -= n
        return os.urandom(n)


class PutHandler(http.server.BaseHTTPRequestHandler):
    """The reference: PUT streams the body into a file, synced, then 201."""

    protocol_version = "HTTP/1.1"
    root = "."

    def do_PUT(self):
        left = int(self.headers.get("Content-Length", "0"))
        name = os.path.basename(self.path)
        with open(os.path.join(self.root, name), "wb") as f:
            while left:
                chunk = self.rfile.read(min(left, MiB))
                if not chunk:
                    break
                f.write(chunk)
                left -= len(chunk)
            f.flush()
            os.fsync(f.fileno())
        self.send_response(201 if left == 0 else 400)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def reference_server(root):
    handler = type("Handler", (PutHandler,), {"root": root})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def upload_all(files, url_of, headers, codes_ok):
    """One curl for every file; returns (seconds, bytes, answers not in codes_ok)."""
    cfg = tempfile.NamedTemporaryFile("w", suffix=".curl", delete=False)
    with cfg:
        for f in files:
            cfg.write(f'upload-file = "{f}"\nurl = "{url_of(f)}"\noutput = "/dev/null"\n')
    cmd = ["curl", "-sS", "--parallel", "--parallel-max", str(PARALLEL), "-K", cfg.name,
           "-w", "%{http_code}\n"]
    for h in headers:
        cmd += ["-H", h]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - t0
    os.remove(cfg.name)
    codes = out.stdout.split()
    bad = [c for c in codes if c not in codes_ok] + ["none"] * (len(files) - len(codes))
    if out.returncode != 0:
        say(f"  curl exited {out.returncode}: {out.stderr.strip()[:300]}")
    return elapsed, sum(os.path.getsize(f) for f in files), bad


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Daemon:
    """`dropdeploy run` with the intake on a free port and one app on the fake API."""

    def __init__(self, work, name, fake_env, database_url=None):
        self.state = os.path.join(work, name, "state")
        os.makedirs(self.state)
        self.port = free_port()
        cfg = os.path.join(work, name, "dropdeploy.toml")
        cluster = f'[cluster]\nnode = "bench-{name}"\n' if database_url else ""
        with open(cfg, "w") as f:
            f.write(f"state_dir = {toml_str(self.state)}\nmax_archive_size = {perf.HUGE}\n"
                    f'shutdown_grace = "2s"\n[scalingo]\napi_rate_limit = 1000000\n'
                    f'[intake]\nlisten = "127.0.0.1:{self.port}"\n{cluster}'
                    f'[[app]]\nname = "{APP}"\nqueue = "all"\n'
                    f'drop_dir = {toml_str(os.path.join(work, name, "drops"))}\n')
        env = dict(fake_env, DROPDEPLOY_INTAKE_TOKEN=TOKEN, RUST_LOG="info")
        if database_url:
            env["DROPDEPLOY_DATABASE_URL"] = database_url
        self.log = os.path.join(work, name, "daemon.log")
        self.p = PROCS.start([perf.BIN, "--log-format", "json", "--config", cfg, "run"],
                             stderr=self.log, env=env)
        perf.wait_for(self.running, 120, f"the daemon {name} to start")
        self.url = f"http://127.0.0.1:{self.port}"

    def running(self):
        if self.p.poll() is not None:
            raise RuntimeError(f"dropdeploy run exited ({self.p.returncode}); see {self.log}")
        return any(perf.message(e) == "dropdeploy is running" for e in perf.log_events(self.log))

    def put(self, files):
        return upload_all(files, lambda f: f"{self.url}/v1/apps/{APP}/archives/"
                                           f"{os.path.basename(f)}",
                          [f"Authorization: Bearer {TOKEN}"], {"202"})

    def hwm(self):
        return perf.proc_status(self.p.pid, "VmHWM")

    def stop(self):
        perf.stop_daemon(self.p)


def start_fake(work):
    """The fake API, its builds an hour long; returns it and the daemon's environment."""
    os.makedirs(os.path.join(work, "logs"), exist_ok=True)
    out = os.path.join(work, "logs", "fake.out")
    p = PROCS.start([perf.FAKE, "--listen", "127.0.0.1:0", "--step", "3600s", "--quiet",
                     "--app", APP], stdout=out, stderr=os.path.join(work, "logs", "fake.err"))

    def export_line():
        if p.poll() is not None:
            raise RuntimeError(f"fake-scalingo exited ({p.returncode}); see {out}")
        return next((l for l in open(out) if l.startswith("export ")), None)

    line = perf.wait_for(export_line, 30, "the fake API's export line")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SCALINGO_", "DROPDEPLOY_"))}
    for pair in line.split()[1:]:
        k, v = pair.split("=", 1)
        env[k] = v
    return p, env


def rate(elapsed, count, nbytes):
    return f"{count / elapsed:.1f} archives/s, {nbytes / MiB / elapsed:.1f} MiB/s"


def throughput(work, fake_env, table, database_url):
    say(f"== throughput: {SMALL} archives of {SMALL_KIB} KiB, {LARGE} of {LARGE_MIB} MiB, "
        f"{PARALLEL} uploads at a time")
    corpus = os.path.join(work, "corpus")
    os.makedirs(corpus)
    shapes = [
        ("small", [(f"small-{i:04}.tar.gz", SMALL_KIB * 1024) for i in range(SMALL)]),
        ("large", [(f"large-{i:02}.tar.gz", LARGE_MIB * MiB) for i in range(LARGE)]),
    ]
    # One archive first, so that the lane is busy with its hour-long build from the start.
    first = os.path.join(corpus, "first.tar.gz")
    archive(first, 1024, "first")
    targets = [("local spool", None)] + ([("PostgreSQL", database_url)] if database_url else [])
    ok = True
    for shape, specs in shapes:
        files = []
        for name, size in specs:
            files.append(os.path.join(corpus, name))
            archive(files[-1], size, name)
        sink = os.path.join(work, f"reference-{shape}")
        os.makedirs(sink)
        server, ref_url = reference_server(sink)
        try:
            ref = upload_all(files, lambda f: f"{ref_url}/{os.path.basename(f)}", [], {"201"})
        finally:
            server.shutdown()
            server.server_close()
        shutil.rmtree(sink, ignore_errors=True)
        cells = []
        for label, url in targets:
            try:
                d = Daemon(work, f"{shape}-{label.split()[0].lower()}", fake_env, url)
            except RuntimeError as e:  # fleet mode unknown to this build, say
                say(f"  {label}: {e}")
                cells.append(f"did not start: {e}")
                ok = False
                continue
            try:
                d.put([first])
                got = d.put(files)
            finally:
                d.stop()
            if got[2] or ref[2]:
                ok = False
                say(f"  {label}: answers not 202: {got[2][:5]}; reference not 201: {ref[2][:5]}")
            # The ratio: dropdeploy's rate over the reference's (1.00x: as fast).
            cells.append(f"{rate(got[0], len(files), got[1])} ({ref[0] / got[0]:.2f}x)")
        table.add(f"intake: {len(files)} × {specs[0][1] // 1024} KiB"
                  if shape == "small" else f"intake: {len(files)} × {LARGE_MIB} MiB",
                  *cells, rate(ref[0], len(files), ref[1]))
        for f in files:
            os.remove(f)
    return ok


def peak_rss(work, fake_env, table):
    say(f"== peak RSS while receiving one archive of {', '.join(f'{m} MiB' for m in RSS_MIB)}")
    ok = True
    first = os.path.join(work, "rss-first.tar.gz")
    archive(first, 1024, "rss-first")
    for mib_size in RSS_MIB:
        path = os.path.join(work, f"rss-{mib_size}.tar.gz")
        archive(path, mib_size * MiB, f"rss-{mib_size}")
        d = Daemon(work, f"rss-{mib_size}", fake_env)
        try:
            d.put([first])
            before = d.hwm()
            _, _, bad = d.put([path])
            after = d.hwm()
        finally:
            d.stop()
        os.remove(path)
        ok = ok and not bad
        table.add(f"daemon peak RSS (VmHWM), one {mib_size} MiB archive",
                  f"{perf.mib(after)} ({perf.mib(before)} before it)")
    return ok


class Table(perf.Table):
    """measure | local spool (ratio) | [PostgreSQL (ratio)] | reference: curl -T to a file
    server. The ratio is the reference's time over dropdeploy's: 1.00x is as fast."""

    def __init__(self, pg):
        super().__init__()
        self.pg = pg

    def add(self, measure, *cells):
        cells = list(cells) + ["—"] * ((3 if self.pg else 2) - len(cells))
        self.rows.append((measure, *cells))
        say(f"  → {measure}: {' | '.join(cells)}")

    def markdown(self):
        head = ["measure", "into the local spool (ratio)"]
        head += ["into PostgreSQL (ratio)"] if self.pg else []
        head += ["reference: curl -T to a file server"]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in self.rows:
            lines.append("| " + " | ".join(str(c) for c in r) + " |")
        return "\n".join(lines)


def main():
    args = sys.argv[1:]
    database_url = os.environ.get("DROPDEPLOY_DATABASE_URL") or None
    testpg = None
    if args == ["--pg"]:
        # A throw-away server of its own: the `testpg` program prints its URL, and stops it
        # and removes it when its standard input closes.
        testpg = subprocess.Popen([os.path.join(perf.TARGET, "testpg")], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)
        database_url = testpg.stdout.readline().strip() or None
        if not database_url:
            say("bench/intake.sh: testpg printed no URL")
            return 2
    elif args[:1] == ["--pg"] and len(args) == 2:
        database_url = args[1]
    elif args:
        say("usage: bench/intake.sh [--pg [DATABASE_URL]]")
        return 2
    try:
        return measure(database_url)
    finally:
        if testpg:
            testpg.stdin.close()
            testpg.wait(60)


def measure(database_url):
    for b in (perf.BIN, perf.FAKE):
        if not os.access(b, os.X_OK):
            say(f"missing {b}: run bench/intake.sh, which builds it")
            return 2
    if not shutil.which("curl"):
        say("bench/intake.sh: curl is missing")
        return 2
    signal.signal(signal.SIGINT, perf.on_signal)
    signal.signal(signal.SIGTERM, perf.on_signal)
    work = tempfile.mkdtemp(prefix="dropdeploy-intake-")
    say(f"work directory: {work}" + (" (kept)" if perf.KEEP else ""))
    table = Table(database_url is not None)
    ok = True
    try:
        # Builds of an hour: the first job waits in its deployment, the others queue.
        fake, fake_env = start_fake(work)
        try:
            ok = throughput(work, fake_env, table, database_url) and ok
            ok = peak_rss(work, fake_env, table) and ok
        finally:
            PROCS.stop(fake)
    except (KeyboardInterrupt, perf.Interrupted) as e:
        say(f"interrupted ({e or 'Ctrl-C'}); cleaning up")
        return 130
    finally:
        PROCS.stop_all()
        if not perf.KEEP:
            shutil.rmtree(work, ignore_errors=True)
    command = os.environ.get("BENCH_COMMAND") or "bench/intake.sh"
    print()
    print(perf.header(command) + f"; {PARALLEL} uploads at a time\n")
    print(table.markdown())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
