#!/usr/bin/env python3
"""Idle wake-ups of a connected client (docs/benchmarks.md, "Mobile bindings").

Connects one client through the Python SDK to a running server, lets it sit idle for
MINUTES with the default heartbeat (the app's thread asleep, not polling), and counts the
context switches of every thread of this process from /proc (a thread's voluntary
switches are its wake-ups from sleep). Prints them per thread and per hour as JSON.

    FERRY_SERVER=127.0.0.1:8080 PYTHONPATH=sdk/python \
        python3 sdk/python/bench_idle.py USER PASSWORD MINUTES
"""

import asyncio
import json
import os
import sys
import time

import ferry


def switches():
    """{tid: (name, voluntary, involuntary)} for every thread of this process."""
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                name = f.read().strip()
            vol = invol = 0
            with open(f"/proc/self/task/{tid}/status") as f:
                for line in f:
                    if line.startswith("voluntary_ctxt_switches"):
                        vol = int(line.split()[1])
                    elif line.startswith("nonvoluntary_ctxt_switches"):
                        invol = int(line.split()[1])
            out[tid] = (name, vol, invol)
        except FileNotFoundError:
            pass  # the thread ended meanwhile
    return out


def main():
    user, password, minutes = sys.argv[1], sys.argv[2], float(sys.argv[3])
    server = os.environ.get("FERRY_SERVER", "127.0.0.1:8080")
    client = asyncio.run(ferry.connect(ferry.Config(
        servers=[server], username=user, password=password)))
    # Let the login's own traffic (sync, endpoint report) settle first.
    time.sleep(5)
    before, t0 = switches(), time.monotonic()
    time.sleep(minutes * 60)
    after, elapsed = switches(), time.monotonic() - t0
    per_hour = 3600 / elapsed
    threads = []
    for tid, (name, vol, invol) in sorted(after.items()):
        _, vol0, invol0 = before.get(tid, (name, 0, 0))
        threads.append({
            "thread": name,
            "voluntary": vol - vol0,
            "involuntary": invol - invol0,
            "voluntary_per_hour": round((vol - vol0) * per_hour, 1),
        })
    sdk = [t for t in threads if t["thread"].startswith("ferry")]
    print(json.dumps({
        "seconds": round(elapsed, 1),
        "heartbeat_secs": client.heartbeat_secs(),
        "heartbeats_per_hour": round(3600 / max(client.heartbeat_secs(), 1), 1),
        "status": str(client.status()),
        "sdk_threads_wakeups_per_hour": round(sum(t["voluntary"] for t in sdk) * per_hour, 1),
        "process_wakeups_per_hour": round(sum(t["voluntary"] for t in threads) * per_hour, 1),
        "threads": threads,
    }, indent=1))
    asyncio.run(client.close())


if __name__ == "__main__":
    main()
