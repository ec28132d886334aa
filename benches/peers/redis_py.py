"""The `redis-py` peer of lease-bench: redis-py's `Lock` as a user would write it.

Started by the harness as `python3 -c <this file> <job JSON>`, one process per contender, it
speaks the worker protocol of `benches/src/worker.rs`: commands (`go`, `release`, `stop`) on
stdin, one JSON report per stdout line, timestamps in CLOCK_BOOTTIME nanoseconds. The lock is
redis-py's default: `r.lock(key, timeout=lease)` and `acquire(blocking=True)`, which polls every
0.1 s (`sleep=0.1`). The job's store location is the plain server URL (the harness strips our
store's own URL options before it starts this process).
"""

import json
import os
import random
import sys
import time

import redis


def now_ns():
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME)


def send(msg, **fields):
    fields["msg"] = msg
    try:
        sys.stdout.write(json.dumps(fields) + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        sys.exit(3)


def command():
    line = sys.stdin.readline()
    return line.strip() if line else "stop"


def lock_of(r, job, key):
    lease_s = (job.get("lease_ms") or 10_000) / 1000
    return r.lock(f"bench-redis-py:{key}", timeout=lease_s)


def uncontended(r, job, role):
    lock = lock_of(r, job, f"uncontended/{os.getpid()}")
    acquire, release = [], []
    n = role["samples"] + role["warmup"]
    for i in range(n):
        t0 = now_ns()
        lock.acquire(blocking=True)
        t1 = now_ns()
        lock.release()
        t2 = now_ns()
        if i >= role["warmup"]:
            acquire.append(t1 - t0)
            release.append(t2 - t1)
    send("result", data={"acquire": acquire, "release": release, "iterations": n})


def driven(r, job, role):
    lock = lock_of(r, job, role["key"])
    while True:
        t_req = now_ns()
        send("waiting", t_req=t_req)
        lock.acquire(blocking=True)
        send("acquired", t_req=t_req, t_acq=now_ns())
        cmd = command()
        if cmd == "release":
            time.sleep(role["hold_us"] / 1e6)
        t_rel = now_ns()
        lock.release()
        send("released", t_rel=t_rel)
        if cmd == "stop":
            return
        cmd = command()
        if cmd == "stop":
            return
        if cmd != "go":
            raise RuntimeError(f"expected `go` or `stop`, got `{cmd}`")


def free_run(r, job, role):
    keys = max(role["keys"], 1)
    locks = {}
    t_start = now_ns()
    deadline = t_start + role["duration_ms"] * 1_000_000
    count, worst_wait, waits = 0, 0, []
    while True:
        if now_ns() >= deadline:
            break
        k = 0 if keys == 1 else random.randrange(keys)
        lock = locks.get(k)
        if lock is None:
            lock = locks[k] = lock_of(r, job, f"{role['key']}/{k}")
        t_req = now_ns()
        left_s = max(deadline - t_req, 0) / 1e9
        got = lock.acquire(blocking=True, blocking_timeout=left_s)
        t_acq = now_ns()
        worst_wait = max(worst_wait, t_acq - t_req)
        if not got:
            break
        count += 1
        waits.append(t_acq - t_req)
        if role["hold_us"] > 0:
            time.sleep(role["hold_us"] / 1e6)
        lock.release()
    elapsed = now_ns() - t_start
    step = max(-(-len(waits) // 2000), 1)
    send(
        "result",
        data={
            "count": count,
            "elapsed_ns": elapsed,
            "worst_wait_ns": worst_wait,
            "waits": waits[::step],
            "store_ops": 0,
            "waits_for_change": 0,
        },
    )


def crash_holder(r, job, role):
    lock = lock_of(r, job, role["key"])
    t_req = now_ns()
    lock.acquire(blocking=True)
    send("acquired", t_req=t_req, t_acq=now_ns())
    # Held until the parent SIGKILLs this process.
    while command() != "stop":
        pass


ROLES = {
    "uncontended": uncontended,
    "driven": driven,
    "free-run": free_run,
    "crash-holder": crash_holder,
}


def main():
    try:
        job = json.loads(sys.argv[1])
        ((name, role),) = job["role"].items()
        run = ROLES.get(name)
        if run is None:
            raise RuntimeError(f"redis-py does not measure the `{name}` role")
        r = redis.Redis.from_url(job["store"]["location"])
        r.ping()
    except Exception as e:  # reported to the parent, as the Rust worker does
        send("error", error=f"redis-py worker: {e!r}")
        return 2
    send("ready")
    cmd = command()
    if cmd == "stop":
        return 0
    if cmd != "go":
        send("error", error=f"expected `go`, got `{cmd}`")
        return 1
    try:
        run(r, job, role)
    except Exception as e:
        send("error", error=f"redis-py {name}: {e!r}")
        return 1
    # Like the harness's own workers, stay until told to stop: the parent counts an exit before
    # it has every worker's result as a failure.
    while command() != "stop":
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
