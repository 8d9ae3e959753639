#!/usr/bin/env python3
"""Report-pipeline benchmark for ssq (issue 5, "Must show" item 2).

(a) Master ingest rate: a master and S slaves (default 4) as real `ssqd` processes on
    loopback. The policy is applied while the master runs; the master is stopped; R
    requests (default 50,000) are driven through each slave's proxy with wrk (1 KiB from
    nginx), so each slave's spool holds a backlog; the master is started again on the
    same address and timed from its ready line (data_dir/ssqd.addr) until
    `ssq report summary` counts every request the slaves logged (polled every 100 ms).
    records/s = records acknowledged in that time (`report nodes` acked: requests,
    events and statistics records) / elapsed; also the master's CPU seconds.
(b) Shipping overhead: a slave (with its master running and receiving) vs a standalone
    node (no master: no spool, no shipper), same policy, 1 KiB at 64 connections,
    interleaved A B A B for --rounds rounds: each ssqd's CPU time per request
    (utime+stime from /proc/PID/stat / requests), medians and the difference; the
    slave's spool pending after each run.

Python 3.11 standard library only; installs wrk and nginx from Debian when missing
(root needed). Every process started here is stopped at the end, also on failure.

    python3 bench/report_bench.py                      # build, both parts
    python3 bench/report_bench.py --git-rev HEAD       # measure a commit, not the working tree
    python3 bench/report_bench.py --part a --slaves 8 --records 100000
    python3 bench/report_bench.py --no-build --quick   # smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRUB = ("SSQ_HOME", "SSQ_BIND", "SSQ_KEY_FILE", "SSQ_OPERATOR_KEY", "SSQ_INVENTORY", "SSQ_CONFIG")
CLK_TCK = os.sysconf("SC_CLK_TCK")
NGINX_IP = "127.0.0.1"
MASTER_IP = "127.0.0.2"
BODY = 1024

POLICY = """access:
  default: deny
  allow:
    - clients: [127.0.0.0/8]
      comment: the benchmark's clients
rules:
  - name: harmless
    domains: [blocked.example]
    action: deny
    message: not the benchmark's host
"""

LUA_DONE = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCHJSON {\"requests\":%.0f,\"bytes\":%.0f,\"duration_us\":%.0f,\"err_connect\":%.0f," ..
    "\"err_read\":%.0f,\"err_write\":%.0f,\"err_status\":%.0f,\"err_timeout\":%.0f," ..
    "\"p50_us\":%.1f,\"p99_us\":%.1f,\"max_us\":%.1f}\n",
    summary.requests, summary.bytes, summary.duration, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(99), latency.max))
end
"""


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def rnd(x, n=3):
    return None if x is None else round(x, n)


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def machine_info() -> dict:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "cpu_model": model, "kernel": platform.release(),
            "python": platform.python_version(), "loadavg_start": loadavg()}


def free_port(ip: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((ip, 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """utime+stime of a process (all its threads), from /proc/PID/stat."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    f = raw[raw.rindex(")") + 2:].split()
    return (int(f[11]) + int(f[12])) / CLK_TCK


def machine_busy() -> float:
    """Busy CPU seconds of the whole machine (/proc/stat: user, nice, system, irq,
    softirq, steal)."""
    f = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(f[:8]) - f[3] - f[4]) / CLK_TCK


def softirq_seconds() -> float:
    """irq+softirq CPU seconds (loopback traffic is processed there, charged to no
    process): left out of `other work`."""
    f = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (f[5] + f[6]) / CLK_TCK


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    s = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime + s.ru_utime + s.ru_stime


def count_lines(f: Path) -> int:
    try:
        with f.open("rb") as fh:
            return sum(b.count(b"\n") for b in iter(lambda: fh.read(1 << 20), b""))
    except OSError:
        return 0


def read_tail(f: Path, n: int = 3000) -> str:
    try:
        return f.read_text(errors="replace")[-n:]
    except OSError:
        return "(no file)"


def warnings(f: Path) -> list[str]:
    return [l for l in read_tail(f, 1 << 22).splitlines() if " WARN " in l]


# ------------------------------------------------------------------------------------
# Processes

class Procs:
    """Every child started here (own session each); stopped at the end, slaves first."""

    def __init__(self):
        self.items: list[tuple[str, subprocess.Popen, int]] = []

    def spawn(self, name, cmd, cwd: Path, env=None, stop_sig=signal.SIGTERM) -> subprocess.Popen:
        out = open(cwd / f"{name}.stdout", "ab")
        err = open(cwd / f"{name}.stderr", "ab")
        p = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                             start_new_session=True)
        out.close()
        err.close()
        self.items.append((name, p, stop_sig))
        return p

    @staticmethod
    def stop_one(p: subprocess.Popen, sig=signal.SIGTERM, deadline: float = 15.0) -> str:
        if p.poll() is not None:
            return "exited"
        try:
            p.send_signal(sig)
        except ProcessLookupError:
            return "exited"
        try:
            p.wait(timeout=deadline)
            return "stopped"
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait(timeout=10)
            return "sigkilled"

    def stop_all(self) -> dict:
        res = {"stopped": 0, "sigkilled": [], "nonzero_exit": {}}
        # Slaves and standalone nodes first, then masters, then nginx.
        def rank(item):
            name = item[0]
            return 2 if name == "nginx" else (1 if name.startswith("master") else 0)
        for name, p, sig in sorted(reversed(self.items), key=rank):
            was_alive = p.poll() is None
            how = self.stop_one(p, sig)
            if was_alive:
                res["stopped"] += 1
            if how == "sigkilled":
                res["sigkilled"].append(name)
            elif p.returncode not in (0, None) and was_alive:
                res["nonzero_exit"][name] = p.returncode
        return res


def ensure_packages(no_install: bool) -> dict:
    missing = [pkg for pkg in ("wrk", "nginx") if not (shutil.which(pkg) or Path(f"/usr/sbin/{pkg}").exists())]
    if missing:
        if no_install or os.geteuid() != 0:
            raise RuntimeError(f"missing {missing}: apt-get install -y {' '.join(missing)} (as root)")
        log(f"installing {missing} from Debian")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-q"], check=True, env=env, stdout=subprocess.DEVNULL)
        subprocess.run(["apt-get", "install", "-y", "-q", *missing], check=True, env=env, stdout=subprocess.DEVNULL)
    out = {}
    for pkg in ("wrk", "nginx"):
        p = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", pkg], capture_output=True, text=True)
        out[pkg] = p.stdout.strip() or "?"
    return {"installed_now": missing, "versions": out}


def curl(url: str, proxy: str) -> tuple[int, int, str]:
    cmd = ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{size_download}", "--max-time", "5",
           "-x", f"http://{proxy}", url]
    p = subprocess.run(cmd, capture_output=True, text=True,
                       env={k: v for k, v in os.environ.items() if "proxy" not in k.lower()})
    try:
        code, size = p.stdout.split()
        return int(code), int(size), p.stderr.strip()
    except ValueError:
        return 0, 0, p.stderr.strip() or f"curl exit {p.returncode}"


class Nginx:
    def __init__(self, root: Path, procs: Procs):
        self.dir = root / "nginx"
        self.procs = procs
        self.addr = f"{NGINX_IP}:{free_port(NGINX_IP)}"
        self.url = f"http://{self.addr}/1k"

    def start(self) -> None:
        d = self.dir
        (d / "html").mkdir(parents=True)
        (d / "tmp").mkdir()
        rng = random.Random(4)
        (d / "html" / "1k").write_bytes(bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz0123456789")
                                              for _ in range(BODY)))
        for p in (d.parent, d, d / "html", d / "tmp"):
            p.chmod(0o755)
        (d / "html" / "1k").chmod(0o644)
        conf = d / "nginx.conf"
        conf.write_text(f"""
worker_processes 1;
daemon off;
master_process on;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
worker_rlimit_nofile 16384;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    sendfile on;
    tcp_nodelay on;
    keepalive_requests 10000000;
    keepalive_timeout 120s;
    default_type application/octet-stream;
    client_body_temp_path {d}/tmp/body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    server {{
        listen {self.addr} backlog=4096;
        root {d}/html;
        location / {{ }}
    }}
}}
""")
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        self.proc = self.procs.spawn("nginx", [nginx, "-p", str(d), "-e", str(d / "error.log"), "-c", str(conf)],
                                     d, stop_sig=signal.SIGQUIT)
        deadline = time.monotonic() + 15
        while True:
            p = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--noproxy", "*",
                                self.url], capture_output=True, text=True)
            if p.stdout.strip() == "200":
                return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"nginx did not start:\n{read_tail(d / 'error.log')}")
            time.sleep(0.1)


class Cluster:
    """Keys (one activation key, one operator key) and ssqd nodes in one temp dir."""

    def __init__(self, bin_dir: Path, root: Path, procs: Procs, timeout: float):
        self.ssq_bin = str(bin_dir / "ssq")
        self.ssqd_bin = str(bin_dir / "ssqd")
        self.root = root
        self.procs = procs
        self.timeout = timeout
        self.home = root / "home"
        self.env = {k: v for k, v in os.environ.items() if k not in SCRUB}
        self.env["SSQ_HOME"] = str(self.home)
        self.nodes: dict[str, dict] = {}  # name -> {dir, cfg, proc, portal, proxy, ip}
        self.home.mkdir(parents=True, exist_ok=True)
        self.ssq(["key", "new", "--out", str(root / "activation.key")])
        self.ssq(["key", "new", "--operator", "--out", str(self.home / "operator.key")])
        self.n_policy = 0

    def ssq(self, args: list[str], check: bool = True, timeout: float | None = None):
        cmd = [self.ssq_bin, "--timeout", f"{int(timeout or self.timeout)}s", *args]
        p = subprocess.run(cmd, env=self.env, cwd=self.root, stdin=subprocess.DEVNULL,
                           capture_output=True, text=True, timeout=(timeout or self.timeout) + 30)
        if check and p.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} exited {p.returncode}\nstdout:\n{p.stdout[-2000:]}\n"
                               f"stderr:\n{p.stderr[-2000:]}")
        return p

    def ssq_json(self, args: list[str]):
        return json.loads(self.ssq(["-o", "json", *args]).stdout)

    def add(self, name: str, ip: str, extra: str) -> None:
        d = self.root / name
        d.mkdir()
        cfg = d / "startup.yaml"
        cfg.write_text(f"node: {name}\n"
                       f"portal: {{ listen: \"{ip}:0\" }}\n"
                       f"proxy: {{ listen: \"{ip}:0\" }}\n"
                       "activation_key_file: ../activation.key\n"
                       "data_dir: data\n"
                       "log_dir: log\n" + extra)
        self.ssq(["--local", "--config", str(cfg), "operator", "add", str(self.home / "operator.key.pub")])
        self.nodes[name] = {"dir": d, "cfg": cfg, "ip": ip}

    def start(self, names: list[str], limit: float = 30) -> float:
        """Start the nodes; wait until each names its pid in data_dir/ssqd.addr. Answers
        the time.monotonic() at which the last was seen ready (polled every 5 ms)."""
        for name in names:
            n = self.nodes[name]
            n["proc"] = self.procs.spawn(f"{name}-ssqd", [self.ssqd_bin, "--config", str(n["cfg"])], n["dir"],
                                         env={k: v for k, v in self.env.items() if k != "SSQ_HOME"})
        deadline = time.monotonic() + limit
        todo = set(names)
        while todo:
            for name in list(todo):
                n = self.nodes[name]
                if n["proc"].poll() is not None:
                    raise RuntimeError(f"ssqd {name} exited ({n['proc'].returncode}):\n"
                                       f"{read_tail(n['dir'] / f'{name}-ssqd.stderr')}")
                try:
                    info = json.loads((n["dir"] / "data" / "ssqd.addr").read_text().strip() or "{}")
                except (FileNotFoundError, json.JSONDecodeError):
                    continue
                if info.get("pid") == n["proc"].pid:
                    n["portal"], n["proxy"] = info["portal"], info.get("proxy")
                    todo.discard(name)
            if todo:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"not ready within {limit}s: {sorted(todo)}")
                time.sleep(0.005)
        return time.monotonic()

    def stop(self, name: str) -> str:
        return Procs.stop_one(self.nodes[name]["proc"])

    def pin_address(self, name: str) -> None:
        """Write the node's bound portal port into its startup.yaml, so a restart comes
        back on the same address (the slaves' `master:` names it)."""
        n = self.nodes[name]
        text = n["cfg"].read_text()
        n["cfg"].write_text(text.replace(f"\"{n['ip']}:0\" }}\n", f"\"{n['portal']}\" }}\n", 1))

    def pid(self, name: str) -> int:
        return self.nodes[name]["proc"].pid

    def status(self, name: str) -> dict:
        return self.ssq_json(["status", "--node", self.nodes[name]["portal"]])

    def apply(self, target: str, wait: bool) -> dict:
        self.n_policy += 1
        f = self.root / f"policy-{self.n_policy}.yaml"
        f.write_text(POLICY)
        t = time.monotonic()
        out = self.ssq_json(["policy", "apply", str(f), "--master", self.nodes[target]["portal"],
                             *(["--wait"] if wait else [])])
        return {"wall_s": rnd(time.monotonic() - t), "revision": out.get("revision")}

    def wait_registered(self, master: str, slaves: list[str], limit: float = 60) -> None:
        deadline = time.monotonic() + limit
        while True:
            known = {s["name"] for s in self.status(master).get("slaves") or []}
            if known >= set(slaves):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the master knows {sorted(known)}, not all of {slaves}")
            time.sleep(0.25)

    def report(self, master: str, kind: str) -> dict:
        return self.ssq_json(["report", kind, "--master", self.nodes[master]["portal"], "--limit", "1000"])

    def access_lines(self, name: str) -> int:
        return count_lines(self.nodes[name]["dir"] / "log" / "access.log")

    def ext_log(self, name: str) -> Path:
        return self.nodes[name]["dir"] / "log" / "extended.log"


# ------------------------------------------------------------------------------------
# wrk

def wrk_script(root: Path, name: str, nginx: Nginx, stop_after: int | None = None,
               flag: Path | None = None, delay_ms: float | None = None) -> Path:
    f = root / f"wrk-{name}.lua"
    head = f'wrk.path = "{nginx.url}"\nwrk.headers["Host"] = "{nginx.addr}"\n'
    if delay_ms:
        # Each connection waits this long before each request: a load below saturation,
        # the same for both nodes (about conns / (delay + latency) requests per second).
        head += f"delay = function() return {delay_ms} end\n"
    if stop_after:
        head += f"""
local limit = {stop_after}
local n = 0
response = function(status, headers, body)
  n = n + 1
  if n == limit then
    local fh = io.open("{flag}", "a")
    fh:write("stopped\\n")
    fh:close()
    wrk.thread:stop()
  end
end
"""
    f.write_text(head + LUA_DONE)
    return f


def parse_wrk(out: str, cmd) -> dict:
    m = re.search(r"BENCHJSON (\{.*\})", out)
    if not m:
        raise RuntimeError(f"{' '.join(cmd)}: no summary in its output:\n{out[-2000:]}")
    return json.loads(m.group(1))


def run_wrk(proxy: str, script: Path, conns: int, threads: int, duration: float) -> dict:
    cmd = ["wrk", f"-t{threads}", f"-c{conns}", f"-d{max(1, round(duration))}s", "--timeout", "10s",
           "--latency", "-s", str(script), f"http://{proxy}/"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {p.returncode}\n{p.stdout}\n{p.stderr}")
    return parse_wrk(p.stdout, cmd)


def run_wrk_count(proxy: str, script: Path, flag: Path, conns: int, threads: int, limit_s: float) -> dict:
    """wrk until every thread has had its quota of responses (the Lua script stops the
    thread and writes a line to `flag`), then SIGINT (wrk ends its wait and reports)."""
    flag.write_text("")
    cmd = ["wrk", f"-t{threads}", f"-c{conns}", f"-d{int(limit_s)}s", "--timeout", "10s", "--latency",
           "-s", str(script), f"http://{proxy}/"]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t0 = time.monotonic()
    try:
        while p.poll() is None:
            if flag.read_text().count("stopped") >= threads:
                time.sleep(0.05)
                p.send_signal(signal.SIGINT)
                break
            if time.monotonic() - t0 > limit_s + 30:
                break
            time.sleep(0.02)
        out, err = p.communicate(timeout=30)
    except BaseException:
        p.kill()
        p.wait()
        raise
    res = parse_wrk(out, cmd)
    res["wall_s"] = time.monotonic() - t0
    return res


def wrk_errors(res: dict) -> dict:
    return {k[4:]: res[k] for k in res if k.startswith("err_") and res[k]}


# ------------------------------------------------------------------------------------
# (a) ingest rate

def slave_ip(i: int) -> str:
    return f"127.0.0.{10 + i}"


def part_a(args, bin_dir: Path, root: Path, procs: Procs, nginx: Nginx) -> dict:
    (root / "a").mkdir()
    c = Cluster(bin_dir, root / "a", procs, args.timeout)
    S, R = args.slaves, args.records
    slaves = [f"slave-{i}" for i in range(S)]
    reports = f"reports: {{ fsync_ms: {args.fsync_ms} }}\n" if args.fsync_ms else ""
    c.add("master", MASTER_IP, "role: master\n")
    c.start(["master"])
    master_portal = c.nodes["master"]["portal"]
    c.pin_address("master")
    c.ssq(["status", "--node", master_portal])  # first contact pins the master's certificate
    for i, s in enumerate(slaves):
        c.add(s, slave_ip(i), f"master: \"{master_portal}\"\n" + reports)
    c.start(slaves)
    for s in slaves:
        c.ssq(["status", "--node", c.nodes[s]["portal"]])
    c.wait_registered("master", slaves)
    apply = c.apply("master", wait=True)
    log(f"(a) master {master_portal}, {S} slaves, policy revision {apply['revision']} applied by all ({apply['wall_s']} s)")
    for s in slaves:
        code, size, err = curl(nginx.url, c.nodes[s]["proxy"])
        if code != 200 or size != BODY:
            raise RuntimeError(f"curl -x {c.nodes[s]['proxy']} {nginx.url}: {code}, {size} bytes {err}")
    # Let the first records ship, so the master's store knows every slave's epoch.
    deadline = time.monotonic() + 30
    while any(c.status(s)["report"]["pending"] for s in slaves):
        if time.monotonic() > deadline:
            raise RuntimeError("slaves did not ship their first records within 30 s")
        time.sleep(0.2)
    how = c.stop("master")
    log(f"(a) master stopped ({how}); generating a backlog of {R} requests on each slave (wrk -t{args.threads} -c64)")

    gen = {}
    for s in slaves:
        per_thread = -(-R // args.threads)
        flag = c.root / f"wrk-{s}.flag"
        script = wrk_script(c.root, f"backlog-{s}", nginx, per_thread, flag)
        before = c.access_lines(s)
        res = run_wrk_count(c.nodes[s]["proxy"], script, flag, 64, args.threads, max(60, R / 1000))
        gen[s] = {"wrk_requests": res["requests"], "wall_s": rnd(res["wall_s"]),
                  "req_s": rnd(res["requests"] / (res["duration_us"] / 1e6), 0), "errors": wrk_errors(res),
                  "access_lines_before": before}
        log(f"  {s}: {res['requests']} requests in {res['duration_us'] / 1e6:.2f} s "
            f"({gen[s]['req_s']:.0f} req/s){'  ERRORS ' + str(gen[s]['errors']) if gen[s]['errors'] else ''}")
    time.sleep(max(1.0, 3 * (args.fsync_ms or 200) / 1000))  # the last records fsynced
    snap = {}
    for s in slaves:
        st = c.status(s)["report"]
        lines = c.access_lines(s)
        snap[s] = {"spooled": st["spooled"], "acked": st["acked"], "pending": st["pending"],
                   "bytes_on_disk": st["bytes_on_disk"], "access_lines": lines,
                   "requests_in_backlog": lines - gen[s]["access_lines_before"]}
        gen[s].update(snap[s])
    expected_requests = sum(v["access_lines"] for v in snap.values())
    backlog = sum(v["pending"] for v in snap.values())
    log(f"(a) backlog: {backlog} records pending in {S} spools "
        f"({sum(v['bytes_on_disk'] for v in snap.values()) / 2**20:.1f} MiB on disk); "
        f"the master must count {expected_requests} requests")

    if args.restart_slaves:
        # Stopped now, started again right after the master's ready line: they ship at
        # once (their first attempt is immediate), so no back-off stagger.
        for s in slaves:
            c.stop(s)
    # Start the master again (same address) and time the ingest.
    busy0 = machine_busy()
    t_spawn = time.monotonic()
    t_ready = c.start(["master"])
    slaves_ready_s = None
    if args.restart_slaves:
        slaves_ready_s = c.start(slaves) - t_ready
    mpid = c.pid("master")
    cpu_ready = cpu_seconds(mpid)
    busy_ready = machine_busy()
    polls = []  # (t_start, t_end, summary requests, {node: acked}, {node: requests})
    t_done = None
    summary_done = None
    deadline = t_ready + args.ingest_timeout
    while True:
        ts = time.monotonic()
        if args.poll == "summary":
            # As the issue words it; but every report query runs on the store's one
            # thread, between ingest batches, and scans the requests table: it slows
            # the ingest it measures (see bench/README.md).
            summ = c.report("master", "summary")
            te = time.monotonic()
            nodes = c.report("master", "nodes")
            tn = time.monotonic()
            acked = {r["node"]: r["acked"] or 0 for r in nodes["rows"]}
            done = summ.get("requests", 0) >= expected_requests
        else:
            # The master's status: per slave the acknowledged sequence, from the store's
            # cached progress (no database query).
            st = c.status("master")
            te = tn = time.monotonic()
            acked = {r["name"]: ((r.get("report") or {}).get("acked") or 0) for r in st.get("slaves") or []}
            summ = None
            done = all(acked.get(s, 0) >= snap[s]["spooled"] for s in slaves)
            if done:
                summ = c.report("master", "summary")
                if summ.get("requests", 0) < expected_requests:
                    raise RuntimeError(f"every record acknowledged, but the summary counts "
                                       f"{summ.get('requests')} of {expected_requests} requests")
        polls.append({"t": rnd(te - t_ready, 4), "t_nodes": rnd(tn - t_ready, 4),
                      "requests": summ.get("requests", 0) if summ else None, "acked": acked})
        if done:
            t_done = te
            summary_done = summ
            break
        if tn > deadline:
            break
        time.sleep(max(0.0, 0.1 - (time.monotonic() - ts)))
    cpu_done = cpu_seconds(mpid)
    busy_done = machine_busy()
    if t_done is None:
        raise RuntimeError(f"the master had not acknowledged everything ({polls[-1]['acked']}) or counted "
                           f"every request ({polls[-1]['requests']} of {expected_requests}) "
                           f"after {args.ingest_timeout} s")
    # Every record: the master's acked per slave (also events and statistics).
    time.sleep(0.5)
    final_nodes = {r["node"]: r for r in c.report("master", "nodes")["rows"]}
    records = sum((final_nodes[s]["acked"] or 0) - snap[s]["acked"] for s in slaves)
    requests_ingested = expected_requests - sum(gen[s]["access_lines_before"] for s in slaves)
    acked_at_done = {s: polls[-1]["acked"].get(s, 0) for s in slaves}
    records_at_done = sum(acked_at_done[s] - snap[s]["acked"] for s in slaves)

    # When each slave started and finished shipping, as seen by the 100 ms polls
    # (conservative: start = the last poll that still showed nothing new).
    def first_change(s):
        prev_t = 0.0
        for p in polls:
            if p["acked"].get(s, 0) > snap[s]["acked"]:
                return prev_t, p["t_nodes"]
            prev_t = p["t_nodes"]
        return None, None

    def finished(s):
        for p in polls:
            if p["acked"].get(s, 0) >= snap[s]["spooled"]:
                return p["t_nodes"]
        return None

    per_slave = {}
    for s in slaves:
        lo, hi = first_change(s)
        per_slave[s] = {"first_ack_after_ready_s": [rnd(lo), rnd(hi)], "finished_s": rnd(finished(s)),
                        "records": (final_nodes[s]["acked"] or 0) - snap[s]["acked"],
                        "requests_in_store": final_nodes[s].get("requests"), "gaps": final_nodes[s].get("gaps")}
    elapsed = t_done - t_ready
    starts = [v["first_ack_after_ready_s"][0] for v in per_slave.values() if v["first_ack_after_ready_s"][0] is not None]
    first_start = min(starts) if starts else 0.0
    last_start = max(starts) if starts else 0.0
    window = elapsed - first_start
    # All S slaves shipping at once: from the last slave's (conservative) start to the
    # first slave's finish; the records acknowledged in between, from the polls.
    fins = [v["finished_s"] for v in per_slave.values() if v["finished_s"] is not None]
    concurrent = None
    if fins and len(starts) == S:
        t1 = min(fins)
        p0 = max((p for p in polls if p["t_nodes"] <= last_start), key=lambda p: p["t_nodes"],
                 default={"t_nodes": 0.0, "acked": {s: snap[s]["acked"] for s in slaves}})
        p1 = min((p for p in polls if p["t_nodes"] >= t1), key=lambda p: p["t_nodes"], default=None)
        if p0 and p1 and p1["t_nodes"] - p0["t_nodes"] >= 0.3:
            n = sum(p1["acked"].get(s, 0) - max(p0["acked"].get(s, 0), snap[s]["acked"]) for s in slaves)
            concurrent = {"from_s": rnd(p0["t_nodes"]), "to_s": rnd(p1["t_nodes"]), "records": n,
                          "records_per_s": rnd(n / (p1["t_nodes"] - p0["t_nodes"]), 0)}

    # What the 100 ms polling itself costs the master: the same two calls, now idle.
    cpu_p0 = cpu_seconds(mpid)
    n_probe = 20
    for _ in range(n_probe):
        if args.poll == "summary":
            c.report("master", "summary")
            c.report("master", "nodes")
        else:
            c.status("master")
    poll_cpu = (cpu_seconds(mpid) - cpu_p0) / n_probe
    master_cpu = cpu_done - cpu_ready
    poll_cpu_total = poll_cpu * len(polls)

    warns = {s: warnings(c.ext_log(s)) for s in slaves}
    dropped = {s: [w for w in v if "could not be queued" in w] for s, v in warns.items()}
    res = {
        "slaves": S, "records_per_slave_target": R, "fsync_ms": args.fsync_ms or 200, "poll": args.poll,
        "policy_apply": apply,
        "backlog": {"records_pending": backlog, "requests": requests_ingested,
                    "non_request_records": backlog - requests_ingested,
                    "spool_mib": rnd(sum(v["bytes_on_disk"] for v in snap.values()) / 2**20, 1)},
        "generation": gen,
        "master_start_to_ready_s": rnd(t_ready - t_spawn),
        "restart_slaves": args.restart_slaves, "slaves_ready_after_master_s": rnd(slaves_ready_s),
        "ready_to_all_counted_s": rnd(elapsed),
        "records": records, "records_at_done": records_at_done,
        "records_per_s": rnd(records_at_done / elapsed, 0),
        "first_ingest_s": rnd(first_start), "last_slave_first_ingest_s": rnd(last_start),
        "records_per_s_from_first_ingest": rnd(records_at_done / window, 0) if window > 0 else None,
        "all_slaves_shipping": concurrent,
        "master_cpu_s": rnd(master_cpu), "master_cpus_busy": rnd(master_cpu / elapsed, 2),
        "master_cpu_us_per_record": rnd(master_cpu / records_at_done * 1e6, 1) if records_at_done else None,
        "poll_cpu_s_each": rnd(poll_cpu, 4), "polls": len(polls),
        "master_cpu_s_less_polling": rnd(master_cpu - poll_cpu_total),
        "master_cpu_us_per_record_less_polling": rnd((master_cpu - poll_cpu_total) / records_at_done * 1e6, 1)
        if records_at_done else None,
        "machine_busy_cpus_during_ingest": rnd((busy_done - busy_ready) / elapsed, 2),
        "summary_at_done": {k: summary_done.get(k) for k in ("requests", "blocked", "bytes", "clients")},
        "summary_rows": summary_done.get("rows"),
        "expected_requests": expected_requests,
        "exact": summary_done.get("requests") == expected_requests,
        "per_slave": per_slave,
        "gaps": sum((v.get("gaps") or 0) for v in final_nodes.values()),
        "slave_warnings": {s: len(v) for s, v in warns.items()},
        "slave_warnings_sample": {s: v[:3] for s, v in warns.items() if v},
        "records_dropped_warnings": {s: v for s, v in dropped.items() if v},
        "master_warnings": warnings(c.ext_log("master"))[:5],
        "poll_samples": polls if args.keep_polls else polls[:: max(1, len(polls) // 40)],
        "busy_before_start_cpus": None if t_spawn == t_ready else rnd((busy_ready - busy0) / (t_ready - t_spawn), 2),
    }
    log(f"(a) ingest: {records_at_done} records ({requests_ingested} requests) in {elapsed:.2f} s from the ready line "
        f"= {res['records_per_s']:.0f} records/s; from the first ingest ({first_start:.2f} s): "
        f"{res['records_per_s_from_first_ingest']} records/s; all {S} shipping: "
        f"{concurrent['records_per_s'] if concurrent else 'n/a'} records/s; master CPU {master_cpu:.2f} s")
    return res


# ------------------------------------------------------------------------------------
# (b) shipping on vs off

def part_b(args, bin_dir: Path, root: Path, procs: Procs, nginx: Nginx) -> dict:
    (root / "b").mkdir()
    c = Cluster(bin_dir, root / "b", procs, args.timeout)
    reports = f"reports: {{ fsync_ms: {args.fsync_ms} }}\n" if args.fsync_ms else ""
    c.add("master-b", "127.0.0.3", "role: master\n")
    c.start(["master-b"])
    mp = c.nodes["master-b"]["portal"]
    c.ssq(["status", "--node", mp])
    c.add("ship", "127.0.0.20", f"master: \"{mp}\"\n" + reports)
    c.add("noship", "127.0.0.30", "")
    c.start(["ship", "noship"])
    for n in ("ship", "noship"):
        c.ssq(["status", "--node", c.nodes[n]["portal"]])
    c.wait_registered("master-b", ["ship"])
    a1 = c.apply("master-b", wait=True)
    a2 = c.apply("noship", wait=False)
    for n in ("ship", "noship"):
        code, size, err = curl(nginx.url, c.nodes[n]["proxy"])
        if code != 200 or size != BODY:
            raise RuntimeError(f"curl -x {c.nodes[n]['proxy']} {nginx.url}: {code}, {size} bytes {err}")
    st = c.status("noship")
    if st.get("report"):
        raise RuntimeError(f"the standalone node has a report spool: {st['report']}")
    log(f"(b) slave 'ship' (master {mp}) and standalone 'noship', same policy; "
        f"{args.rounds} rounds of {args.duration} s at 64 conns, A B A B")
    scripts = {n: wrk_script(c.root, f"b-{n}", nginx, delay_ms=args.delay_ms) for n in ("ship", "noship")}
    pids = {n: c.pid(n) for n in ("ship", "noship", "master-b")}
    ours = [pids[n] for n in pids] + [nginx.proc.pid]

    def our_cpu():
        return sum(cpu_seconds(p) for p in ours) + children_cpu()

    def drained() -> float:
        """Seconds until the master's store holds every request the slave logged."""
        t0 = time.monotonic()
        want = c.access_lines("ship")
        while True:
            rows = c.report("master-b", "nodes")["rows"]
            got = next((r.get("requests") or 0 for r in rows if r["node"] == "ship"), 0)
            if got >= want:
                return time.monotonic() - t0
            if time.monotonic() - t0 > 60:
                raise RuntimeError(f"the slave's records did not reach the master: {got} of {want}")
            time.sleep(0.05)

    def one(n: str, rnd_i: int, duration: float) -> dict:
        pid = pids[n]
        cpu0, m0 = cpu_seconds(pid), cpu_seconds(pids["master-b"])
        o0, b0, q0 = our_cpu(), machine_busy(), softirq_seconds()
        t0 = time.monotonic()
        res = run_wrk(c.nodes[n]["proxy"], scripts[n], 64, args.threads, duration)
        wall = time.monotonic() - t0
        o1, b1, q1 = our_cpu(), machine_busy(), softirq_seconds()
        # The slave's status right after the run (one signed call; the same call on the
        # standalone node, so both pay for it).
        rep = c.status(n).get("report") or {}
        drain = drained() if n == "ship" else None
        time.sleep(0.5)
        cpu1, m1 = cpu_seconds(pid), cpu_seconds(pids["master-b"])
        reqs = res["requests"]
        row = {"round": rnd_i, "node": n, "shipping": n == "ship", "requests": reqs,
               "req_s": reqs / (res["duration_us"] / 1e6), "p50_ms": res["p50_us"] / 1000,
               "p99_ms": res["p99_us"] / 1000, "errors": wrk_errors(res),
               "cpu_s": cpu1 - cpu0, "cpu_us_per_req": (cpu1 - cpu0) / reqs * 1e6 if reqs else None,
               "master_cpu_us_per_req": (m1 - m0) / reqs * 1e6 if reqs and n == "ship" else None,
               "pending_after_run": rep.get("pending"), "spooled": rep.get("spooled"),
               "spool_bytes_on_disk": rep.get("bytes_on_disk"), "shipper_error": rep.get("error"),
               "drain_s": drain,
               "machine_busy_cpus": (b1 - b0) / wall, "softirq_cpus": (q1 - q0) / wall,
               "other_cpus": (b1 - b0 - (q1 - q0) - (o1 - o0)) / wall,
               "loadavg_1m": loadavg()[0]}
        return row

    for n in ("ship", "noship"):  # warm-up
        one(n, -1, args.warmup)
    runs, rejected = [], []
    for r in range(args.rounds):
        for n in ("ship", "noship"):
            for attempt in range(args.retries + 1):
                row = one(n, r, args.duration)
                row["attempt"] = attempt
                row["noisy"] = row["other_cpus"] > args.max_other_cpus
                if not row["noisy"] or attempt == args.retries:
                    break
                rejected.append(row)
                log(f"  round {r + 1} {n}: other work used {row['other_cpus']:.2f} CPUs: rejected, again")
                time.sleep(5)
            runs.append(row)
            log(f"round {r + 1}/{args.rounds} {'A ship  ' if n == 'ship' else 'B noship'} {row['req_s']:8.0f} req/s "
                f"cpu {row['cpu_us_per_req']:6.2f} us/req p99 {row['p99_ms']:6.2f} ms"
                + (f"  master {row['master_cpu_us_per_req']:5.2f} us/req, pending {row['pending_after_run']}, "
                   f"drained in {row['drain_s']:.2f} s" if n == "ship" else "")
                + f"  other {row['other_cpus']:.2f}" + (f"  ERRORS {row['errors']}" if row["errors"] else ""))

    def med(n, k):
        return median([x[k] for x in runs if x["node"] == n])

    ship, noship = med("ship", "cpu_us_per_req"), med("noship", "cpu_us_per_req")
    per_round = []
    for r in range(args.rounds):
        a = next((x for x in runs if x["round"] == r and x["node"] == "ship"), None)
        b = next((x for x in runs if x["round"] == r and x["node"] == "noship"), None)
        if a and b and a["cpu_us_per_req"] and b["cpu_us_per_req"]:
            per_round.append((a["cpu_us_per_req"] / b["cpu_us_per_req"] - 1) * 100)
    slave_st = c.status("ship").get("report") or {}
    warns = {n: warnings(c.ext_log(n)) for n in ("ship", "noship", "master-b")}
    return {
        "rounds": args.rounds, "duration_s": args.duration, "conns": 64, "threads": args.threads,
        "delay_ms": args.delay_ms,
        "policy_apply": {"master": a1, "standalone": a2},
        "ship_cpu_us_per_req": rnd(ship, 2), "noship_cpu_us_per_req": rnd(noship, 2),
        "cpu_diff_pct": rnd((ship / noship - 1) * 100, 2) if ship and noship else None,
        "cpu_diff_pct_median_of_rounds": rnd(median(per_round), 2),
        "per_round_diff_pct": [rnd(x, 2) for x in per_round],
        "ship_req_s": rnd(med("ship", "req_s"), 0), "noship_req_s": rnd(med("noship", "req_s"), 0),
        "ship_p99_ms": rnd(med("ship", "p99_ms")), "noship_p99_ms": rnd(med("noship", "p99_ms")),
        "master_cpu_us_per_req": rnd(med("ship", "master_cpu_us_per_req"), 2),
        "pending_after_run": [x["pending_after_run"] for x in runs if x["node"] == "ship"],
        "drain_s": [rnd(x["drain_s"], 2) for x in runs if x["node"] == "ship"],
        "slave_report_status_end": slave_st,
        "errors": sum(sum(x["errors"].values()) for x in runs),
        "noisy_runs": sum(1 for x in runs if x["noisy"]),
        "warnings": {n: len(v) for n, v in warns.items()},
        "warnings_sample": {n: v[:3] for n, v in warns.items() if v},
        "runs": [{k: (rnd(v, 3) if isinstance(v, float) else v) for k, v in x.items()} for x in runs],
        "rejected_runs": [{k: (rnd(v, 3) if isinstance(v, float) else v) for k, v in x.items()} for x in rejected],
    }


# ------------------------------------------------------------------------------------

def build(rev: str | None, target: Path, commit: str) -> None:
    src = ROOT
    if rev:
        src = Path(tempfile.mkdtemp(prefix=f"ssq-src-{commit}-"))
        archive = subprocess.run(["git", "archive", "--format=tar", rev], cwd=ROOT, check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
    try:
        log(f"cargo build --release --bins ({commit})")
        subprocess.run(["cargo", "build", "--release", "--bins"], cwd=src, check=True,
                       env={**os.environ, "CARGO_TARGET_DIR": str(target)})
    finally:
        if src != ROOT:
            shutil.rmtree(src, ignore_errors=True)


def targets(report: dict) -> list[dict]:
    out = []

    def add(name, value, limit, ok, unit):
        out.append({"target": name, "value": value, "limit": limit, "unit": unit,
                    "result": "n/a" if ok is None else ("PASS" if ok else "FAIL")})
    a = report.get("a") or {}
    if "records_per_s" in a:
        v = a.get("records_per_s_from_first_ingest")
        add(f"master ingest from {a['slaves']} slaves, first ingest -> all counted (poll: {a.get('poll')})", v, ">= 50000",
            None if v is None else v >= 50_000, "records/s")
        v = a.get("records_per_s")
        add(f"master ingest from {a['slaves']} slaves, ready line -> all counted "
            f"({'slaves restarted after the master' if a.get('restart_slaves') else 'incl. the slaves back-off'}; "
            f"poll: {a.get('poll')})", v,
            ">= 50000", None if v is None else v >= 50_000, "records/s")
        add(f"the master counts every request exactly once (poll: {a.get('poll')})", a.get("summary_at_done", {}).get("requests"),
            f"== {a.get('expected_requests')}", a.get("exact"), "requests")
    b = report.get("b") or {}
    if "cpu_diff_pct" in b:
        v = b["cpu_diff_pct"]
        load = "full speed" if not b.get("delay_ms") else f"wrk delay {b['delay_ms']} ms"
        add(f"shipping adds <= 5% CPU per request (ratio of medians, {load})", v, "<= 5", None if v is None else v <= 5, "%")
        v = b["cpu_diff_pct_median_of_rounds"]
        add(f"shipping adds <= 5% CPU per request (median of per-round diffs, {load})", v, "<= 5",
            None if v is None else v <= 5, "%")
    return out


def print_report(report: dict) -> None:
    m = report["machine"]
    print(f"\nssq report-pipeline benchmark — {m['nproc']} CPUs ({m['cpu_model']}), commit {report['commit']}, "
          f"load avg start {m['loadavg_start']} end {m.get('loadavg_end')}")
    a = report.get("a") or {}
    if "records_per_s" in a:
        print(f"(a) master ingest, {a['slaves']} slaves x {a['records_per_slave_target']} requests "
              f"(fsync_ms {a['fsync_ms']}, polling {a['poll']} every 100 ms"
              + (f"; slaves restarted after the master, ready {a['slaves_ready_after_master_s']} s after it)"
                 if a.get("restart_slaves") else "; slaves kept running, back-off)"))
        rows = [
            ("backlog records (requests + events/stats)",
             f"{a['backlog']['records_pending']} ({a['backlog']['requests']} + {a['backlog']['non_request_records']}), "
             f"{a['backlog']['spool_mib']} MiB of spool"),
            ("master spawn -> ready line", f"{a['master_start_to_ready_s']} s"),
            ("ready -> first ingest seen", f"{a['first_ingest_s']} s (last slave {a['last_slave_first_ingest_s']} s)"),
            ("ready -> summary counts every request", f"{a['ready_to_all_counted_s']} s"),
            ("records/s, ready line -> all counted", f"{a['records_per_s']:.0f}"),
            ("records/s, first ingest -> all counted", f"{a['records_per_s_from_first_ingest']:.0f}"),
            ("records/s, all slaves shipping at once",
             f"{a['all_slaves_shipping']['records_per_s']:.0f} ({a['all_slaves_shipping']['records']} records, "
             f"{a['all_slaves_shipping']['from_s']}..{a['all_slaves_shipping']['to_s']} s)"
             if a.get("all_slaves_shipping") else "n/a (window too short)"),
            ("master CPU during ingest", f"{a['master_cpu_s']} s ({a['master_cpus_busy']} CPUs, "
             f"{a['master_cpu_us_per_record']} us/record; {a['master_cpu_us_per_record_less_polling']} us/record "
             f"less the {a['polls']} polls)"),
            ("summary requests / expected", f"{a['summary_at_done']['requests']} / {a['expected_requests']} "
             f"(gaps {a['gaps']})"),
        ]
        for k, v in rows:
            print(f"  {k:48} {v}")
    b = report.get("b") or {}
    if "cpu_diff_pct" in b:
        print(f"(b) shipping on (slave + master) vs off (standalone), 1 KiB, 64 conns, {b['rounds']} rounds of "
              f"{b['duration_s']} s, A B A B, "
              f"{'full speed' if not b.get('delay_ms') else 'wrk delay ' + str(b['delay_ms']) + ' ms per request'}; medians")
        print(f"  {'':22} {'req/s':>8} {'cpu us/req':>10} {'p99 ms':>7}")
        print(f"  {'A: slave, shipping':22} {b['ship_req_s']:8.0f} {b['ship_cpu_us_per_req']:10.2f} {b['ship_p99_ms']:7.2f}")
        print(f"  {'B: standalone':22} {b['noship_req_s']:8.0f} {b['noship_cpu_us_per_req']:10.2f} {b['noship_p99_ms']:7.2f}")
        print(f"  CPU per request: {b['cpu_diff_pct']:+.2f}% (ratio of medians), {b['cpu_diff_pct_median_of_rounds']:+.2f}% "
              f"(median of per-round diffs {b['per_round_diff_pct']}); master {b['master_cpu_us_per_req']} us/req")
        print(f"  slave spool pending right after each run: {b['pending_after_run']}; store complete after "
              f"{b['drain_s']} s")
    for t in report.get("targets", []):
        print(f"{t['result']:4}  {t['target']}: {t['value']} {t['unit']} (target {t['limit']})")
    if report.get("error"):
        print(f"FAILED: {report['error']}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=["a", "b", "both"], default="both")
    ap.add_argument("--slaves", type=int, default=4, help="(a) slaves (default 4)")
    ap.add_argument("--records", type=int, default=50_000, help="(a) requests per slave (default 50,000)")
    ap.add_argument("--poll", choices=["status", "summary"], default="status",
                    help="(a) what is polled every 100 ms: the master's status (acked per slave, no "
                         "query; the summary is checked once at the end) or `report summary` + "
                         "`report nodes` (queries on the store's thread: they slow the ingest)")
    ap.add_argument("--restart-slaves", action="store_true",
                    help="(a) stop the slaves once their backlog is spooled and start them again right "
                         "after the master's ready line: all ship at once, without the back-off of a "
                         "slave whose master was away (which staggers their return by 0-5 s)")
    ap.add_argument("--ingest-timeout", type=float, default=300, help="(a) longest wait for the ingest, s")
    ap.add_argument("--rounds", type=int, default=5, help="(b) interleaved rounds (default 5)")
    ap.add_argument("--duration", type=float, default=8, help="(b) seconds per wrk run (default 8)")
    ap.add_argument("--warmup", type=float, default=2, help="(b) warm-up per node, s (default 2)")
    ap.add_argument("--delay-ms", type=float, default=None,
                    help="(b) wrk waits this long before each request on each connection (a fixed load "
                         "below saturation, e.g. 8: about 7,000 req/s at 64 conns); default: none, full speed")
    ap.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    ap.add_argument("--max-other-cpus", type=float, default=0.3,
                    help="(b) repeat a run during which other work used more CPUs (default 0.3)")
    ap.add_argument("--retries", type=int, default=2, help="(b) repeats of a noisy run (default 2)")
    ap.add_argument("--fsync-ms", type=int, default=None, help="slaves' reports.fsync_ms (default: ssqd's, 200)")
    ap.add_argument("--timeout", type=float, default=30, help="ssq --timeout, s")
    ap.add_argument("--quick", action="store_true", help="smoke test: 2 slaves x 5,000, 1 round of 2 s")
    ap.add_argument("--no-build", action="store_true", help="use the last build")
    ap.add_argument("--git-rev", metavar="REV", help="build this commit (CARGO_TARGET_DIR=target/bench)")
    ap.add_argument("--no-install", action="store_true", help="do not apt-get install wrk/nginx")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir")
    ap.add_argument("--keep-polls", action="store_true", help="(a) every poll in the JSON, not a sample")
    args = ap.parse_args()
    if args.quick:
        args.slaves, args.records, args.rounds, args.duration, args.warmup = 2, 5000, 1, 2, 1

    def on_term(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_term)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 65536:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(65536, hard), hard))

    report: dict = {"bench": "ssq report pipeline: master ingest rate, shipping CPU overhead",
                    "machine": machine_info(), "config": {k: v for k, v in vars(args).items()}}
    target = ROOT / "target" / ("bench" if args.git_rev else "")
    bin_dir = target / "release"
    stamp = bin_dir / ".ssq-report-bench-source"
    if args.git_rev:
        commit = subprocess.run(["git", "rev-parse", "--short", args.git_rev], cwd=ROOT, check=True,
                                capture_output=True, text=True).stdout.strip()
    else:
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True).stdout.strip()
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True).stdout.strip() + ("+dirty" if dirty else "")
    report["commit"] = commit
    procs = Procs()
    root = Path(tempfile.mkdtemp(prefix="ssq-report-bench-"))
    root.chmod(0o755)
    failed = None
    try:
        report["packages"] = ensure_packages(args.no_install)
        if args.no_build:
            report["commit"] = (stamp.read_text().strip() if stamp.exists() else "unknown") + " (prebuilt, --no-build)"
        else:
            build(args.git_rev, target, commit)
            stamp.write_text(commit + "\n")
        nginx = Nginx(root, procs)
        nginx.start()
        log(f"nginx on {nginx.addr}")
        if args.part in ("a", "both"):
            report["a"] = part_a(args, bin_dir, root, procs, nginx)
            # Part (a)'s nodes are done: stop them before (b) so they do not disturb it.
            for name, p, sig in procs.items:
                if name != "nginx":
                    Procs.stop_one(p, sig)
        if args.part in ("b", "both"):
            report["b"] = part_b(args, bin_dir, root, procs, nginx)
    except BaseException as e:
        failed = f"{type(e).__name__}: {e}"
        report["error"] = failed
    finally:
        stop = procs.stop_all()
        report["teardown"] = stop
        log(f"stopped {stop['stopped']} processes ({len(stop['sigkilled'])} needed SIGKILL)")
        report["machine"]["loadavg_end"] = loadavg()
        if args.keep:
            log(f"kept {root}")
            report["dir"] = str(root)
        else:
            shutil.rmtree(root, ignore_errors=True)
    report["targets"] = targets(report)
    print_report(report)
    print(json.dumps(report, separators=(",", ":")))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
