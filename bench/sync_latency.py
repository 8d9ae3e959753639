#!/usr/bin/env python3
"""Policy-sync latency benchmark for ssq (issue 3, "Must show" item 2).

Starts one master and N slaves as real `ssqd` processes on loopback (each on its own
127.0.x.y, every port 0), applies successive policy changes with the real `ssq` CLI and
reports:

  (a) commit -> all-ACKed latency with --slaves-a slaves (default 100), over --changes
      changes (default 50), measured four ways (see bench/README.md);
  (b) `ssq -o json policy apply FILE --wait` wall time with --slaves-b slaves (default 30),
      --wait-runs runs (default 20), CLI start included.

Python 3.11 standard library only. Every ssqd started here is stopped at the end
(SIGTERM, then SIGKILL after a deadline), also on failure or Ctrl-C.

    python3 bench/sync_latency.py                 # both phases, defaults
    python3 bench/sync_latency.py --slaves-a 20 --changes 10 --phase a
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRUB = ("SSQ_HOME", "SSQ_BIND", "SSQ_KEY_FILE", "SSQ_OPERATOR_KEY", "SSQ_INVENTORY", "SSQ_CONFIG")
MASTER_IP = "127.0.0.2"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def pct(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty list."""
    s = sorted(values)
    k = max(0, min(len(s) - 1, -(-len(s) * p // 100) - 1))
    return s[int(k)]


def summary(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "min": round(min(values), 4),
        "p50": round(pct(values, 50), 4),
        "p99": round(pct(values, 99), 4),
        "max": round(max(values), 4),
        "mean": round(sum(values) / len(values), 4),
    }


def slave_ip(i: int) -> str:
    """127.0.0.(10+i) for the first 240 slaves, then 127.0.x.y."""
    n = 10 + i
    if n < 250:
        return f"127.0.0.{n}"
    n -= 250
    return f"127.0.{1 + n // 250}.{1 + n % 250}"


def machine_info() -> dict:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "nproc_available": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "loadavg_start": os.getloadavg(),
    }


class Cluster:
    """Keys, node folders and the ssqd processes of one master and its slaves."""

    def __init__(self, bin_dir: Path, root: Path, n_slaves: int, timeout: float):
        self.ssq_bin = str(bin_dir / "ssq")
        self.ssqd_bin = str(bin_dir / "ssqd")
        self.root = root
        self.n = n_slaves
        self.timeout = timeout
        self.home = root / "home"
        self.key = root / "activation.key"
        self.op = self.home / "operator.key"
        self.op_pub = self.home / "operator.key.pub"
        self.env = {k: v for k, v in os.environ.items() if k not in SCRUB}
        self.env["SSQ_HOME"] = str(self.home)
        self.procs: dict[str, subprocess.Popen] = {}
        self.master_portal = ""
        self.master_dir = root / "master"
        self.slave_names = [f"slave-{i:03d}" for i in range(n_slaves)]

    # -- the CLI ---------------------------------------------------------------------
    def ssq(self, args: list[str], check: bool = True, timeout: float | None = None):
        cmd = [self.ssq_bin, "--timeout", f"{int(self.timeout)}s", *args]
        p = subprocess.run(cmd, env=self.env, cwd=self.root, stdin=subprocess.DEVNULL,
                           capture_output=True, text=True, timeout=timeout or self.timeout + 30)
        if check and p.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} exited {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}")
        return p

    def ssq_json(self, args: list[str]):
        return json.loads(self.ssq(["-o", "json", *args]).stdout)

    # -- setup -----------------------------------------------------------------------
    def make_keys(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self.ssq(["key", "new", "--out", str(self.key)])
        self.ssq(["key", "new", "--operator", "--out", str(self.op)])

    def write_node(self, name: str, ip: str, extra: str) -> Path:
        d = self.root / name
        d.mkdir(parents=True, exist_ok=True)
        cfg = d / "startup.yaml"
        cfg.write_text(
            f"node: {name}\n"
            f"portal: {{ listen: \"{ip}:0\" }}\n"
            f"proxy: {{ listen: \"{ip}:0\" }}\n"
            "activation_key_file: ../activation.key\n"
            "data_dir: data\n"
            "log_dir: log\n" + extra
        )
        self.ssq(["--local", "--config", str(cfg), "operator", "add", str(self.op_pub)])
        return cfg

    def spawn(self, name: str) -> None:
        d = self.root / name
        out = open(d / "ssqd.stdout", "wb")
        err = open(d / "ssqd.stderr", "wb")
        self.procs[name] = subprocess.Popen(
            [self.ssqd_bin, "--config", str(d / "startup.yaml")],
            env={k: v for k, v in self.env.items() if k != "SSQ_HOME"},
            cwd=d, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        out.close()
        err.close()

    def wait_ready(self, names: list[str], limit: float) -> dict[str, dict]:
        """Poll data_dir/ssqd.addr of each node until all are there."""
        deadline = time.monotonic() + limit
        ready: dict[str, dict] = {}
        while len(ready) < len(names):
            for name in names:
                if name in ready:
                    continue
                p = self.procs[name]
                if p.poll() is not None:
                    err = (self.root / name / "ssqd.stderr").read_text(errors="replace")
                    raise RuntimeError(f"ssqd {name} exited ({p.returncode}) before it was ready:\n{err}")
                f = self.root / name / "data" / "ssqd.addr"
                try:
                    line = f.read_text().strip()
                except FileNotFoundError:
                    continue
                if line:
                    info = json.loads(line)
                    if info.get("pid") == p.pid:
                        ready[name] = info
            if len(ready) < len(names):
                if time.monotonic() > deadline:
                    missing = [n for n in names if n not in ready]
                    raise RuntimeError(f"not ready within {limit}s: {missing[:10]} ({len(missing)} in all)")
                time.sleep(0.05)
        return ready

    def start(self) -> None:
        t = time.monotonic()
        self.make_keys()
        self.write_node("master", MASTER_IP, "role: master\n")
        self.spawn("master")
        self.master_portal = self.wait_ready(["master"], 30)["master"]["portal"]
        log(f"master ready at {self.master_portal}")
        with ThreadPoolExecutor(max_workers=8) as ex:
            list(ex.map(lambda i: self.write_node(self.slave_names[i], slave_ip(i),
                                                  f"master: \"{self.master_portal}\"\n"),
                        range(self.n)))
        log(f"{self.n} slave folders written (operator key added)")
        for name in self.slave_names:
            self.spawn(name)
        self.wait_ready(self.slave_names, 60 + self.n * 0.5)
        log(f"{self.n} slaves ready ({time.monotonic() - t:.1f}s since setup began)")
        # First contact pins the master's certificate (printed on stderr once).
        self.ssq(["status", "--node", self.master_portal])

    def status(self) -> dict:
        return self.ssq_json(["status", "--node", self.master_portal])

    def wait_registered(self, limit: float) -> float:
        t0 = time.monotonic()
        deadline = t0 + limit
        while True:
            st = self.status()
            known = {s["name"] for s in st.get("slaves") or []}
            if known >= set(self.slave_names):
                return time.monotonic() - t0
            if time.monotonic() > deadline:
                missing = sorted(set(self.slave_names) - known)
                raise RuntimeError(f"master knows {len(known)}/{self.n} slaves after {limit}s; missing e.g. {missing[:10]}")
            time.sleep(0.25)

    def wait_all_at(self, revision: int, limit: float) -> float:
        """Poll the master's status until every slave is SYNCED at >= revision."""
        t0 = time.monotonic()
        while True:
            st = self.status()
            rows = st.get("slaves") or []
            if len(rows) >= self.n and all(r["revision"] >= revision and r["state"] == "SYNCED" for r in rows):
                return time.monotonic() - t0
            if time.monotonic() - t0 > limit:
                behind = [(r["name"], r["state"], r["revision"]) for r in rows if r["revision"] < revision or r["state"] != "SYNCED"]
                raise RuntimeError(f"slaves not at revision {revision} after {limit}s: {behind[:10]} ({len(behind)} in all)")
            time.sleep(0.1)

    # -- teardown --------------------------------------------------------------------
    def stop(self, deadline: float = 15.0) -> dict:
        """SIGTERM the slaves, then the master; SIGKILL whatever is left after `deadline`
        seconds in each round."""
        alive = {n: p for n, p in self.procs.items() if p.poll() is None}
        killed: list[str] = []
        slaves = {n: p for n, p in alive.items() if n != "master"}
        master = {n: p for n, p in alive.items() if n == "master"}
        for group in (slaves, master):
            for p in group.values():
                try:
                    p.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    pass
            end = time.monotonic() + deadline
            for name, p in group.items():
                try:
                    p.wait(timeout=max(0.0, end - time.monotonic()))
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
                    killed.append(name)
        bad_exit = {n: p.returncode for n, p in self.procs.items() if p.returncode not in (0, None) and n not in killed}
        return {"stopped": len(alive), "sigkilled": killed, "nonzero_exit": bad_exit}


# -- policy documents ---------------------------------------------------------------
def policy_text(tag: str) -> str:
    """A valid policy whose content differs for every tag (a rule's domain names it)."""
    return (
        "categories:\n"
        "  social: [social.example]\n"
        "rules:\n"
        f"  - name: bench-{tag}\n"
        f"    domains: [bench-{tag}.example.com]\n"
        "    action: deny\n"
        "  - name: no-social\n"
        "    categories: [social]\n"
        "    action: deny\n"
    )


def write_policy(c: Cluster, tag: str) -> str:
    p = c.root / "policies" / f"policy-{tag}.yaml"
    p.parent.mkdir(exist_ok=True)
    p.write_text(policy_text(tag))
    return str(p)


def run_timed(c: Cluster, args: list[str]) -> tuple[float, subprocess.CompletedProcess]:
    cmd = [c.ssq_bin, "--timeout", f"{int(c.timeout)}s", *args]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, env=c.env, cwd=c.root, stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, timeout=c.timeout + 30)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {p.returncode} after {wall:.3f}s\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}")
    return wall, p


def run_table_wait(c: Cluster, file: str) -> dict:
    """`ssq policy apply FILE --wait` in table mode: it prints the stored revision as soon
    as the master answers the apply, then waits. The gap between that first line and the
    process's last line is commit -> all-ACKed as seen by the CLI (Rust's stdout is
    line-buffered, so each line arrives when printed)."""
    cmd = [c.ssq_bin, "--timeout", f"{int(c.timeout)}s", "policy", "apply", file,
           "--master", c.master_portal, "--wait"]
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, env=c.env, cwd=c.root, stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)
    stamps: list[tuple[float, str]] = []
    assert p.stdout is not None
    for line in p.stdout:
        stamps.append((time.perf_counter(), line.rstrip("\n")))
    err = p.stderr.read() if p.stderr else ""
    rc = p.wait()
    t_end = time.perf_counter()
    if rc != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {rc}\nstdout:\n{stamps}\nstderr:\n{err}")
    first = next((t for t, l in stamps if l.startswith("revision ")), None)
    last = next((t for t, l in reversed(stamps) if l.startswith("every slave")), None)
    rev_line = next((l for _, l in stamps if l.startswith("revision ")), "")
    m = re.match(r"revision (\d+)", rev_line)
    if first is None or last is None or m is None:
        raise RuntimeError(f"unexpected output of {' '.join(cmd)}: {stamps}")
    return {"revision": int(m.group(1)), "wall": t_end - t0, "commit_to_acked": last - first,
            "to_commit_answer": first - t0}


# -- log-based (second-resolution) latency ------------------------------------------
LOG_TIME = r"^(\S+) \S+ \S+ "
STORED_RE = re.compile(LOG_TIME + r"config: policy revision (\d+) \(sha256 \S+\).* stored by")
APPLIED_RE = re.compile(LOG_TIME + r"sync: (\S+) applied revision (\d+) ")


def parse_ts(s: str) -> float:
    return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


def log_latencies(c: Cluster, revisions: list[int]) -> dict:
    text = (c.master_dir / "log" / "extended.log").read_text(errors="replace")
    stored: dict[int, float] = {}
    applied: dict[int, dict[str, float]] = {}
    for line in text.splitlines():
        m = STORED_RE.match(line)
        if m:
            stored[int(m.group(2))] = parse_ts(m.group(1))
            continue
        m = APPLIED_RE.match(line)
        if m:
            applied.setdefault(int(m.group(3)), {}).setdefault(m.group(2), parse_ts(m.group(1)))
    out, incomplete = [], []
    for r in revisions:
        acks = applied.get(r, {})
        if r not in stored or len(acks) < c.n:
            incomplete.append((r, len(acks)))
            continue
        out.append(max(acks.values()) - stored[r])
    return {"seconds": out, "incomplete": incomplete}


# -- phases -------------------------------------------------------------------------
def phase_a(c: Cluster, changes: int) -> dict:
    log(f"phase a: {changes} changes x 3 ways with {c.n} slaves")
    plain, json_wait, table = [], [], []
    plain_sync_poll, revs = [], []
    for i in range(changes):
        # 1. plain apply (no --wait): the cost of the CLI + commit alone.
        wall, p = run_timed(c, ["-o", "json", "policy", "apply", write_policy(c, f"{i}-p"),
                                "--master", c.master_portal])
        out = json.loads(p.stdout)
        assert out["changed"], out
        plain.append(wall)
        revs.append(out["revision"])
        # Let it settle (and check it does) before the next change; not a measurement.
        plain_sync_poll.append(wall + c.wait_all_at(out["revision"], c.timeout))
        # 2. --wait -o json: what the operator sees, CLI start included.
        wall, p = run_timed(c, ["-o", "json", "policy", "apply", write_policy(c, f"{i}-w"),
                                "--master", c.master_portal, "--wait"])
        out = json.loads(p.stdout)
        assert out["changed"] and out["wait"]["done"] and len(out["wait"]["slaves"]) == c.n, out
        json_wait.append(wall)
        revs.append(out["revision"])
        # 3. --wait in table mode: commit answer -> all-ACKed answer, timed in the CLI's output.
        t = run_table_wait(c, write_policy(c, f"{i}-t"))
        table.append(t)
        revs.append(t["revision"])
        if (i + 1) % 10 == 0 or i == 0:
            log(f"  change {i + 1}/{changes}: plain {plain[-1]:.3f}s, --wait json {json_wait[-1]:.3f}s, "
                f"commit->all-ACKed {t['commit_to_acked'] * 1000:.1f} ms")
    p50_plain = pct(plain, 50)
    ll = log_latencies(c, revs)
    return {
        "slaves": c.n,
        "changes": changes,
        "commit_to_all_acked_cli_s": summary([t["commit_to_acked"] for t in table]),
        "wait_wall_json_s": summary(json_wait),
        "wait_wall_table_s": summary([t["wall"] for t in table]),
        "plain_apply_wall_s": summary(plain),
        "wait_minus_plain_p50_s": summary([w - p50_plain for w in json_wait]),
        "log_based_stored_to_last_ack_s": summary(ll["seconds"]),
        "log_based_histogram_s": {str(int(k)): ll["seconds"].count(k) for k in sorted(set(ll["seconds"]))},
        "log_incomplete_revisions": ll["incomplete"],
        "plain_apply_then_status_poll_s": summary(plain_sync_poll),
        "samples_ms": {
            "commit_to_all_acked_cli": [round(t["commit_to_acked"] * 1000, 1) for t in table],
            "wait_wall_json": [round(w * 1000, 1) for w in json_wait],
            "plain_apply_wall": [round(w * 1000, 1) for w in plain],
        },
    }


def phase_b(c: Cluster, runs: int) -> dict:
    log(f"phase b: {runs} x `ssq -o json policy apply --wait` with {c.n} slaves")
    walls, table = [], []
    for i in range(runs):
        wall, p = run_timed(c, ["-o", "json", "policy", "apply", write_policy(c, f"b{i}"),
                                "--master", c.master_portal, "--wait"])
        out = json.loads(p.stdout)
        assert out["changed"] and out["wait"]["done"] and len(out["wait"]["slaves"]) == c.n, out
        walls.append(wall)
    for i in range(runs):
        table.append(run_table_wait(c, write_policy(c, f"bt{i}")))
    return {
        "slaves": c.n,
        "runs": runs,
        "wait_wall_json_s": summary(walls),
        "commit_to_all_acked_cli_s": summary([t["commit_to_acked"] for t in table]),
        "wait_wall_table_s": summary([t["wall"] for t in table]),
        "samples_ms": {
            "wait_wall_json": [round(w * 1000, 1) for w in walls],
            "commit_to_all_acked_cli": [round(t["commit_to_acked"] * 1000, 1) for t in table],
        },
    }


def run_phase(args, bin_dir: Path, n: int, fn, count: int, name: str) -> dict:
    root = Path(tempfile.mkdtemp(prefix=f"ssq-bench-{name}-"))
    c = Cluster(bin_dir, root, n, args.timeout)
    result: dict = {}
    try:
        c.start()
        reg = c.wait_registered(args.register_timeout)
        log(f"master lists all {n} slaves ({reg:.2f}s after the last was ready)")
        # Warm-up revision: every slave syncs once (first sync, pins, TLS sessions).
        wall, p = run_timed(c, ["-o", "json", "policy", "apply", write_policy(c, "warmup"),
                                "--master", c.master_portal, "--wait"])
        log(f"warm-up apply --wait: {wall:.3f}s")
        result = fn(c, count)
        result["register_s"] = round(reg, 3)
        result["warmup_wait_wall_s"] = round(wall, 3)
        st = c.status()
        result["final_states"] = {s: sum(1 for r in st["slaves"] if r["state"] == s)
                                  for s in {r["state"] for r in st["slaves"]}}
        result["master_warnings"] = sum(1 for l in (c.master_dir / "log" / "extended.log")
                                        .read_text(errors="replace").splitlines() if " WARN " in l)
    finally:
        stop = c.stop()
        result["teardown"] = stop
        log(f"stopped {stop['stopped']} ssqd ({len(stop['sigkilled'])} needed SIGKILL)")
        if args.keep:
            log(f"kept {root}")
            result["dir"] = str(root)
        else:
            shutil.rmtree(root, ignore_errors=True)
    return result


def fmt(s: dict) -> str:
    if not s.get("n"):
        return "(no data)"
    return f"{s['p50']*1000:8.1f} {s['p99']*1000:8.1f} {s['max']*1000:8.1f}   n={s['n']}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slaves-a", type=int, default=100, help="slaves for phase a (default 100)")
    ap.add_argument("--changes", type=int, default=50, help="changes in phase a (default 50)")
    ap.add_argument("--slaves-b", type=int, default=30, help="slaves for phase b (default 30)")
    ap.add_argument("--wait-runs", type=int, default=20, help="apply --wait runs in phase b (default 20)")
    ap.add_argument("--phase", choices=["a", "b", "both"], default="both")
    ap.add_argument("--timeout", type=float, default=30, help="ssq --timeout, seconds (default 30)")
    ap.add_argument("--register-timeout", type=float, default=60)
    ap.add_argument("--no-build", action="store_true",
                    help="use the binaries of the last build as they are (target/release)")
    ap.add_argument("--git-rev", metavar="REV",
                    help="benchmark this commit (git archive into a temp dir, built with "
                         "CARGO_TARGET_DIR=target/bench) instead of the working tree; with "
                         "--no-build, use target/bench/release as built last")
    ap.add_argument("--keep", action="store_true", help="keep the temp dirs (logs) for inspection")
    args = ap.parse_args()

    def on_term(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_term)

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 64 * (max(args.slaves_a, args.slaves_b) + 1) + 1024
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))
    target = ROOT / "target" / ("bench" if args.git_rev else "")
    bin_dir = target / "release"
    stamp = bin_dir / ".ssq-bench-source"
    if args.no_build:
        commit = (stamp.read_text().strip() if stamp.exists() else "unknown") + " (prebuilt, --no-build)"
    else:
        src = ROOT
        if args.git_rev:
            commit = subprocess.run(["git", "rev-parse", "--short", args.git_rev], cwd=ROOT, check=True,
                                    capture_output=True, text=True).stdout.strip()
            src = Path(tempfile.mkdtemp(prefix=f"ssq-src-{commit}-"))
            archive = subprocess.run(["git", "archive", "--format=tar", args.git_rev], cwd=ROOT,
                                     check=True, capture_output=True).stdout
            subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
        else:
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                                   capture_output=True, text=True).stdout.strip()
            commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                    capture_output=True, text=True).stdout.strip() + ("+dirty" if dirty else "")
        try:
            log(f"cargo build --release --bins ({commit})")
            subprocess.run(["cargo", "build", "--release", "--bins"], cwd=src, check=True,
                           env={**os.environ, "CARGO_TARGET_DIR": str(target)})
        finally:
            if src != ROOT:
                shutil.rmtree(src, ignore_errors=True)
        stamp.write_text(commit + "\n")

    report: dict = {"bench": "ssq policy sync latency", "machine": machine_info(),
                    "nofile": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
                    "commit": commit}
    failed = None
    try:
        if args.phase in ("a", "both"):
            report["a"] = run_phase(args, bin_dir, args.slaves_a, phase_a, args.changes, "a")
        if args.phase in ("b", "both"):
            report["b"] = run_phase(args, bin_dir, args.slaves_b, phase_b, args.wait_runs, "b")
    except Exception as e:  # report what was measured, then fail
        failed = f"{type(e).__name__}: {e}"
        report["error"] = failed
    report["machine"]["loadavg_end"] = os.getloadavg()

    m = report["machine"]
    print(f"\nssq policy sync benchmark — {m['nproc']} CPUs ({m['cpu_model']}), commit {report['commit']}")
    print(f"{'measurement (ms)':58} {'p50':>8} {'p99':>8} {'max':>8}")
    rows = []
    if "a" in report and "commit_to_all_acked_cli_s" in report["a"]:
        a = report["a"]
        n = a["slaves"]
        rows += [
            (f"a: commit -> all {n} ACKed (CLI-observed)", a["commit_to_all_acked_cli_s"]),
            (f"a: apply --wait -o json wall, {n} slaves", a["wait_wall_json_s"]),
            (f"a: apply --wait (table) wall, {n} slaves", a["wait_wall_table_s"]),
            ("a: plain apply -o json wall (no --wait)", a["plain_apply_wall_s"]),
            ("a: --wait wall minus p50(plain) (estimate)", a["wait_minus_plain_p50_s"]),
            ("a: log stored -> last ACK (1 s resolution)", a["log_based_stored_to_last_ack_s"]),
        ]
    if "b" in report and "wait_wall_json_s" in report["b"]:
        b = report["b"]
        rows += [
            (f"b: apply --wait -o json wall, {b['slaves']} slaves", b["wait_wall_json_s"]),
            (f"b: commit -> all {b['slaves']} ACKed (CLI-observed)", b["commit_to_all_acked_cli_s"]),
        ]
    for label, s in rows:
        print(f"{label:58} {fmt(s)}")
    if failed:
        print(f"FAILED: {failed}")
    print(json.dumps(report, separators=(",", ":")))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
