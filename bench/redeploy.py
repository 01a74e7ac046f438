#!/usr/bin/env python3
"""Save → upload start, for a watched source directory of about 10,000 files.

Builds a tree of 10,000 small files in 100 directories (plus an ignored node_modules/ of
2,000 files in 200 directories that must cost no watch), starts the fake Scalingo API and
`dropdeploy run` (release build) with quiet = 200 ms, then edits one file N times, waiting for
each deployment to finish. For each edit it reads, from the daemon's JSON log, when the upload
step started, and prints:
  - save → upload start (wall), and the same minus the 200 ms quiet period;
  - the pack time the daemon logged for that job;
  - the inotify watches the daemon holds (from /proc/<pid>/fdinfo) and the directories that
    are not ignored.

Usage: bench/redeploy.py [N]   (default 20)
"""
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N = int(sys.argv[1]) if len(sys.argv) > 1 else 20
QUIET = 0.2


def wait_for(pred, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.002)
    raise SystemExit("timed out")


def stamp(ts):
    return datetime.fromisoformat(re.sub(r"(\.\d{6})\d*Z$", r"\1+00:00", ts)).timestamp()


def inotify_watches(pid):
    total = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if "inotify" in os.readlink(f"/proc/{pid}/fd/{fd}"):
                with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                    total += sum(1 for l in f if l.startswith("inotify wd:"))
        except OSError:
            pass
    return total


def main():
    subprocess.run(
        ["cargo", "build", "--release", "--locked", "--quiet", "--bin", "dropdeploy",
         "--example", "fake-scalingo"],
        cwd=ROOT, check=True)
    work = tempfile.mkdtemp(prefix="dropdeploy-redeploy-")
    procs = []
    try:
        tree = os.path.join(work, "tree")
        for d in range(100):
            os.makedirs(os.path.join(tree, f"pkg{d:03}"))
            for f in range(100):
                with open(os.path.join(tree, f"pkg{d:03}", f"mod{f:03}.js"), "w") as fh:
                    fh.write(f"export const v = {d * 100 + f};\n" * 10)
        for d in range(200):
            nm = os.path.join(tree, "node_modules", f"dep{d:03}")
            os.makedirs(nm)
            for f in range(10):
                open(os.path.join(nm, f"{f}.js"), "w").write("x\n")
        with open(os.path.join(tree, ".gitignore"), "w") as fh:
            fh.write("node_modules/\n")
        with open(os.path.join(tree, "index.js"), "w") as fh:
            fh.write("console.log(0)\n")

        fake_log = os.path.join(work, "fake.log")
        procs.append(subprocess.Popen(
            [os.path.join(ROOT, "target/release/examples/fake-scalingo"),
             "--listen", "127.0.0.1:0", "--step", "10ms"],
            stdout=open(fake_log, "w"), stderr=subprocess.DEVNULL))
        line = wait_for(lambda: next((l for l in open(fake_log) if l.startswith("export ")), None))
        env = dict(os.environ)
        for pair in line.split()[1:]:
            k, v = pair.split("=", 1)
            env[k] = v
        env["RUST_LOG"] = "dropdeploy=debug"
        env.pop("DROPDEPLOY_CONFIG", None)
        config = os.path.join(work, "dropdeploy.toml")
        with open(config, "w") as f:
            f.write(f'state_dir = "{work}/state"\n[scalingo]\nfollow_interval = "20ms"\n'
                    f'[[app]]\nname = "my-app"\nsource_dir = "{tree}"\nquiet = "{QUIET}s"\n'
                    f'deploy_on_start = false\n')
        log_path = os.path.join(work, "daemon.log")
        t_start = time.time()
        daemon = subprocess.Popen(
            [os.path.join(ROOT, "target/release/dropdeploy"), "--log-format", "json",
             "--config", config, "run"],
            env=env, stdout=subprocess.DEVNULL, stderr=open(log_path, "w"))
        procs.append(daemon)
        wait_for(lambda: "dropdeploy is running" in open(log_path).read())
        t_ready = time.time()

        def events():
            out = []
            for l in open(log_path):
                try:
                    out.append(json.loads(l))
                except ValueError:
                    pass
            return out

        def history_len():
            p = os.path.join(work, "state", "history.jsonl")
            return sum(1 for _ in open(p)) if os.path.exists(p) else 0

        latencies, packs = [], []
        for i in range(N):
            t0 = time.time()
            with open(os.path.join(tree, "index.js"), "w") as fh:
                fh.write(f"console.log({i + 1})\n")
            wait_for(lambda: history_len() >= i + 1)
            uploads = [e for e in events()
                       if e.get("fields", {}).get("message") == "step"
                       and e["fields"].get("step") == "upload"]
            packed = [e for e in events() if e.get("fields", {}).get("message") == "packed"]
            latencies.append(stamp(uploads[i]["timestamp"]) - t0)
            packs.append(packed[i]["fields"]["elapsed_ms"] / 1000)

        dirs = sum(1 for _ in os.walk(tree)) - 201  # node_modules/ and its 200 dirs ignored
        ms = lambda xs: [x * 1000 for x in xs]
        lat, pk = ms(latencies), ms(packs)
        print(f"watched tree: 10,001 files in {dirs} directories not ignored "
              f"(+ node_modules/: 2,000 files, 201 directories, ignored)")
        print(f"start → watching: {(t_ready - t_start) * 1000:.0f} ms; inotify watches held: "
              f"{inotify_watches(daemon.pid)}")
        print(f"{N} edits, quiet = {QUIET * 1000:.0f} ms   median    min    max")
        print(f"save → upload start (ms)         {statistics.median(lat):7.0f} {min(lat):6.0f} {max(lat):6.0f}")
        print(f"  minus quiet (ms)               {statistics.median(lat) - QUIET * 1000:7.0f}")
        print(f"  pack time in it (ms)           {statistics.median(pk):7.0f} {min(pk):6.0f} {max(pk):6.0f}")
        print(f"  minus quiet and pack (ms)      "
              f"{statistics.median([l - QUIET * 1000 - p for l, p in zip(lat, pk)]):7.0f}")
    finally:
        for p in reversed(procs):
            p.terminate()
            p.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
