#!/usr/bin/env python3
"""`ssq verify` over many slaves (issue 6, "Must show" item 3: 50 slaves in under 3 s).

Starts one master and N slaves (default 50) as real `ssqd` processes on loopback, each
on its own 127.0.x.y with port 0 (the Cluster of bench/sync_latency.py), applies a
policy with --wait, then times `ssq -o json verify` end to end (process start to exit)
--runs times (default 10), plain and with --probe-traffic, and with --probe-policy too.
Every run must exit 0 with every check PASS, or the benchmark fails.

    python3 bench/verify_bench.py                  # 50 slaves, 10 runs each
    python3 bench/verify_bench.py --slaves 20 --runs 3 --no-build
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sync_latency import ROOT, Cluster, log, machine_info, summary, write_policy  # noqa: E402


def timed_verify(c: Cluster, extra: list[str]) -> tuple[float, dict]:
    cmd = [c.ssq_bin, "-o", "json", "--timeout", "30s", "verify", "--master", c.master_portal, *extra]
    t = time.monotonic()
    p = subprocess.run(cmd, env=c.env, cwd=c.root, stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, timeout=90)
    wall = time.monotonic() - t
    try:
        report = json.loads(p.stdout)
    except json.JSONDecodeError:
        raise RuntimeError(f"{' '.join(cmd)} printed no JSON (exit {p.returncode}):\n{p.stdout}\n{p.stderr}")
    if p.returncode != 0:
        bad = [(s["name"], c2["check"], c2["reason"]) for s in report["slaves"]
               for c2 in s["checks"] if c2["status"] != "PASS"]
        raise RuntimeError(f"verify exited {p.returncode}: {bad[:5]} ({len(bad)} in all)")
    n = len(report["slaves"])
    if n != c.n:
        raise RuntimeError(f"verify checked {n} slaves, not {c.n}")
    return wall, report


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slaves", type=int, default=50)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--no-build", action="store_true", help="use target/release as built last")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs)")
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 64 * (args.slaves + 1) + 1024
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))
    if not args.no_build:
        log("cargo build --release --bins")
        subprocess.run(["cargo", "build", "--release", "--bins"], cwd=ROOT, check=True)
    root = Path(tempfile.mkdtemp(prefix="ssq-bench-verify-"))
    c = Cluster(ROOT / "target" / "release", root, args.slaves, 30)
    results: dict = {"bench": "ssq verify", "slaves": args.slaves, "machine": machine_info()}
    try:
        c.start()
        c.wait_registered(60)
        c.ssq(["policy", "apply", write_policy(c, "verify"), "--master", c.master_portal, "--wait"])
        log(f"{args.slaves} slaves synced; timing ssq verify")
        for label, extra in [("plain", []), ("probe_traffic", ["--probe-traffic"]),
                             ("probe_both", ["--probe-traffic", "--probe-policy"])]:
            walls, inner, probe = [], [], []
            for _ in range(args.runs):
                wall, rep = timed_verify(c, extra)
                walls.append(wall)
                inner.append(rep["elapsed_ms"] / 1000)
                if rep.get("probe_policy"):
                    probe.append(rep["probe_policy"]["all_ms"] / 1000)
            results[label] = {"wall_s": summary(walls), "elapsed_s": summary(inner)}
            if probe:
                results[label]["probe_policy_all_applied_s"] = summary(probe)
            log(f"{label}: p50 {summary(walls)['p50']:.3f}s max {summary(walls)['max']:.3f}s")
    finally:
        results["teardown"] = c.stop()
        if args.keep:
            results["dir"] = str(root)
        else:
            shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(results, indent=2))
    print(f"\nssq verify over {args.slaves} slaves, {args.runs} runs each (seconds, process start to exit)")
    for label in ("plain", "probe_traffic", "probe_both"):
        if label in results:
            s = results[label]["wall_s"]
            print(f"  {label:14} p50 {s['p50']:.3f}  max {s['max']:.3f}")
    ok = all(results[k]["wall_s"]["max"] < 3.0 for k in ("plain", "probe_traffic") if k in results)
    print("target (< 3 s for 50 slaves):", "met" if ok else "NOT met")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
