#!/usr/bin/env python3
"""How long a dropped archive waits before the daemon claims it.

Starts the fake Scalingo API and `dropdeploy run` (release build), then drops the same small
archive N times in each of two ways, waiting for each to be deployed before the next:
  - rename-in: written elsewhere, renamed into the drop folder (ready at once);
  - in-place:  written in the folder and closed (ready after `settle`, here 1 s).
The latency is the time from the drop (just before the rename, or just after the close) to
the daemon's "claimed" log line, read from the log's own timestamps. Prints min/median/max.

Usage: bench/pickup.py [N]   (default 20; PROFILE=debug uses debug binaries, as the smoke does)
"""
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from datetime import datetime

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N = int(sys.argv[1]) if len(sys.argv) > 1 else 20
SETTLE = 1.0


def wait_for(pred, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.002)
    raise SystemExit("timed out")


PROFILE = os.environ.get("PROFILE") or "release"
TARGET = os.path.join(os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target"), PROFILE)


def main():
    release = [] if PROFILE == "debug" else ["--release"]
    subprocess.run(
        ["cargo", "build", *release, "--locked", "--quiet", "--bin", "dropdeploy",
         "--bin", "fake-scalingo"],
        cwd=ROOT, check=True)
    work = tempfile.mkdtemp(prefix="dropdeploy-pickup-")
    fake = daemon = None
    try:
        fake_log = open(os.path.join(work, "fake.log"), "w+")
        fake = subprocess.Popen(
            [os.path.join(TARGET, "fake-scalingo"),
             "--listen", "127.0.0.1:0", "--step", "10ms"],
            stdout=fake_log, stderr=subprocess.DEVNULL)
        line = wait_for(lambda: next((l for l in open(fake_log.name) if l.startswith("export ")), None))
        env = dict(os.environ)
        for pair in line.split()[1:]:
            k, v = pair.split("=", 1)
            env[k] = v
        drop = os.path.join(work, "drop")
        config = os.path.join(work, "dropdeploy.toml")
        with open(config, "w") as f:
            f.write(f'state_dir = "{work}/state"\n[scalingo]\nfollow_interval = "20ms"\n'
                    f'[[app]]\nname = "my-app"\ndrop_dir = "{drop}"\nsettle = "{SETTLE}s"\n')
        env["RUST_LOG"] = "info"
        env.pop("DROPDEPLOY_CONFIG", None)
        log_path = os.path.join(work, "daemon.log")
        daemon = subprocess.Popen(
            [os.path.join(TARGET, "dropdeploy"), "--log-format", "json",
             "--config", config, "run"],
            env=env, stdout=subprocess.DEVNULL, stderr=open(log_path, "w"))
        wait_for(lambda: "dropdeploy is running" in open(log_path).read())

        src = os.path.join(work, "src", "app")
        os.makedirs(src)
        with open(os.path.join(src, "index.js"), "w") as f:
            f.write("console.log('hi')\n" * 100)
        archive = os.path.join(work, "a.tar.gz")
        with tarfile.open(archive, "w:gz") as t:
            t.add(src, arcname="app")
        data = open(archive, "rb").read()

        def claimed_times():
            out = []
            for l in open(log_path):
                try:
                    e = json.loads(l)
                except ValueError:
                    continue
                if e.get("fields", {}).get("message") == "claimed":
                    ts = re.sub(r"(\.\d{6})\d*Z$", r"\1+00:00", e["timestamp"])
                    out.append(datetime.fromisoformat(ts).timestamp())
            return out

        def history_len():
            p = os.path.join(work, "state", "history.jsonl")
            return sum(1 for _ in open(p)) if os.path.exists(p) else 0

        results = {"rename-in": [], "in-place": []}
        count = 0
        for i in range(N):
            for how in ("rename-in", "in-place"):
                name = f"r{i}-{how}.tar.gz"
                if how == "rename-in":
                    tmp = os.path.join(work, name)
                    with open(tmp, "wb") as f:
                        f.write(data)
                    t0 = time.time()
                    os.rename(tmp, os.path.join(drop, name))
                else:
                    with open(os.path.join(drop, name), "wb") as f:
                        f.write(data)
                    t0 = time.time()
                count += 1
                claimed = wait_for(lambda: len(claimed_times()) >= count and claimed_times())
                results[how].append(claimed[count - 1] - t0)
                wait_for(lambda: history_len() >= count)

        print(f"pick-up latency, drop → claimed, {N} drops each, settle = {SETTLE:g} s")
        print(f"{'how':<10} {'min ms':>8} {'median ms':>10} {'max ms':>8}")
        for how, xs in results.items():
            ms = [x * 1000 for x in xs]
            print(f"{how:<10} {min(ms):8.1f} {statistics.median(ms):10.1f} {max(ms):8.1f}")
    finally:
        for p in (daemon, fake):
            if p:
                p.terminate()
                p.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
