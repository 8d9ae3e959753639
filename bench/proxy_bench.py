#!/usr/bin/env python3
"""Forward-proxy benchmark for ssqd (issue 4, "Must show" items 2 and 3).

Runs nginx (origin, two static files of 1 KiB and 100 KiB), Squid (no cache), ssqd
(standalone node, policy applied) and a second nginx as a reverse proxy in front of the
origin (upstream keep-alive; the reference for what a mature C proxy costs here) on
loopback and measures with wrk, in one run:

  * target: direct to nginx, through ssqd, through Squid, through nginx-proxy;
  * body: 1 KiB and 100 KiB; connections: 64 and 256; and, for information, 1 KiB
    over one connection (requests one at a time: each one's whole cost, nothing shared
    with others; where the issue's per-request figures for Squid come from);
  * req/s, body MiB/s, p50/p99 latency (wrk), each proxy's CPU time per request
    (utime+stime from /proc over its whole process tree / requests wrk completed) and
    RSS (VmRSS, idle before the runs and peak sampled every 200 ms during each run);
  * item 3: a second ssqd holding 100,000 blocked domains and 100 URL regexes (none
    matching), run next to the small-policy ssqd in every cell, and at 1 KiB/64 in
    --item3-pairs pairs per round (order alternating): CPU per request.

Targets are interleaved (their order rotates each round) over several rounds; the
report gives medians (ratios: median of the per-round ratios). Python 3.11 standard
library only; installs wrk, nginx and squid from Debian when missing (root needed).
Every process started here is stopped at the end, also on failure or Ctrl-C.

    python3 bench/proxy_bench.py                       # build, install if needed, 5 rounds of 8 s
    python3 bench/proxy_bench.py --rounds 3 --duration 10
    python3 bench/proxy_bench.py --no-build --quick    # smoke test: 1 round of 2 s
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
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRUB = ("SSQ_HOME", "SSQ_BIND", "SSQ_KEY_FILE", "SSQ_OPERATOR_KEY", "SSQ_INVENTORY", "SSQ_CONFIG")
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
BODIES = {"1k": 1024, "100k": 100 * 1024}
NGINX_IP = "127.0.0.1"
SQUID_IP = "127.0.0.1"
SSQD_IP = "127.0.0.2"        # small policy
SSQD_BIG_IP = "127.0.0.3"    # 100,000 domains + 100 regexes
NGINX_PROXY_IP = "127.0.0.4" # nginx as a reverse proxy in front of the origin (reference)
MB = 1_000_000               # the issue's "8 MB" / "32 MB" are read as 10^6 bytes (stricter than MiB)
PORTAL_BODY_LIMIT = 1 << 20  # proxy/portal.rs MAX_BODY: an apply request larger than this gets 413


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def median(xs: list[float]) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def rnd(x, n=3):
    return None if x is None else round(x, n)


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
    return {
        "nproc": os.cpu_count(),
        "nproc_available": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "loadavg_start": loadavg(),
    }


def free_port(ip: str) -> int:
    """A port the kernel just handed out for `ip` (bound to port 0, then closed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((ip, 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------
# /proc: CPU and RSS of a process tree

def _stat(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Fields after "(comm)"; comm may hold spaces and parentheses.
    return raw[raw.rindex(")") + 2:].split()


def tree(root: int) -> list[int]:
    """root and all its live descendants (ppid links of /proc/*/stat)."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        f = _stat(int(d))
        if f:
            children.setdefault(int(f[1]), []).append(int(d))
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu_split(root: int) -> tuple[float, float]:
    """(user, system) CPU seconds of the tree: every thread of each live process (the
    process-wide counters of /proc/PID/stat), plus the reaped children of the root."""
    user = system = 0
    for pid in tree(root):
        f = _stat(pid)
        if not f:
            continue
        # after comm: state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14)
        user += int(f[11])
        system += int(f[12])
        if pid == root:
            user += int(f[13])
            system += int(f[14])
    return user / CLK_TCK, system / CLK_TCK


def cpu_seconds(root: int) -> float:
    """user+sys CPU seconds of the tree (see cpu_split)."""
    return sum(cpu_split(root))


def rss_bytes(root: int) -> int:
    total = 0
    for pid in tree(root):
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
                    break
        except OSError:
            pass
    return total


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine from /proc/stat."""
    f = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = f[3] + f[4]
    total = sum(f[:8])
    return (total - idle) / CLK_TCK, total / CLK_TCK


class RssSampler(threading.Thread):
    """Peak RSS of some process trees, sampled every `period` seconds."""

    def __init__(self, roots: dict[str, int], period: float = 0.2):
        super().__init__(daemon=True)
        self.roots = roots
        self.period = period
        self.peak = {k: 0 for k in roots}
        self.halt = threading.Event()

    def run(self) -> None:
        while True:
            for k, pid in self.roots.items():
                self.peak[k] = max(self.peak[k], rss_bytes(pid))
            if self.halt.wait(self.period):
                break

    def stop(self) -> dict[str, int]:
        self.halt.set()
        self.join()
        for k, pid in self.roots.items():  # one last sample
            self.peak[k] = max(self.peak[k], rss_bytes(pid))
        return self.peak


# ------------------------------------------------------------------------------------
# Set-up: packages, build, processes

def ensure_packages() -> dict:
    need = {"wrk": "wrk", "nginx": "nginx", "squid": "squid"}
    missing = [pkg for exe, pkg in need.items()
               if not (shutil.which(exe) or Path(f"/usr/sbin/{exe}").exists())]
    if missing:
        if os.geteuid() != 0:
            raise RuntimeError(f"missing {missing}: run as root (apt-get install -y wrk nginx squid)")
        log(f"installing {missing} from Debian: apt-get update; apt-get install -y wrk nginx squid")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-q"], check=True, env=env, stdout=subprocess.DEVNULL)
        subprocess.run(["apt-get", "install", "-y", "-q", "wrk", "nginx", "squid"], check=True, env=env,
                       stdout=subprocess.DEVNULL)
    versions = {}
    for pkg in need.values():
        p = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", pkg], capture_output=True, text=True)
        versions[pkg] = p.stdout.strip() or "?"
    return {"installed_now": missing, "versions": versions}


def exe(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


class Procs:
    """Every child started here, each in its own session, stopped at the end."""

    def __init__(self):
        self.items: list[tuple[str, subprocess.Popen, int]] = []  # name, proc, stop signal

    def spawn(self, name: str, cmd: list[str], cwd: Path, env=None, stop_sig=signal.SIGTERM) -> subprocess.Popen:
        out = open(cwd / f"{name}.stdout", "wb")
        err = open(cwd / f"{name}.stderr", "wb")
        p = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                             start_new_session=True)
        out.close()
        err.close()
        self.items.append((name, p, stop_sig))
        return p

    def stop_all(self, deadline: float = 15.0) -> dict:
        res = {"stopped": [], "sigkilled": [], "exit": {}}
        for name, p, sig in reversed(self.items):
            if p.poll() is None:
                try:
                    p.send_signal(sig)
                except ProcessLookupError:
                    pass
        for name, p, sig in reversed(self.items):
            try:
                p.wait(timeout=deadline)
            except subprocess.TimeoutExpired:
                # The process group is the one created for this child (start_new_session).
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait(timeout=10)
                res["sigkilled"].append(name)
            else:
                # Anything its tree left behind in its own group (e.g. squid helpers).
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            res["stopped"].append(name)
            res["exit"][name] = p.returncode
        return res


def wait_http(url: str, proxy: str | None, expect_size: int, limit: float, proc: subprocess.Popen,
              what: str, errfile: Path) -> None:
    deadline = time.monotonic() + limit
    last = ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited ({proc.returncode}):\n{read_tail(errfile)}")
        code, size, err = curl(url, proxy)
        if code == 200 and size == expect_size:
            return
        last = f"code {code} size {size} {err}"
        time.sleep(0.1)
    raise RuntimeError(f"{what} not answering {url} (proxy {proxy}) within {limit}s: {last}\n{read_tail(errfile)}")


def read_tail(f: Path, n: int = 3000) -> str:
    try:
        return f.read_text(errors="replace")[-n:]
    except OSError:
        return "(no file)"


def curl(url: str, proxy: str | None) -> tuple[int, int, str]:
    cmd = ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{size_download}", "--max-time", "5",
           "--noproxy", "" if proxy else "*"]
    if proxy:
        cmd += ["-x", f"http://{proxy}"]
    p = subprocess.run(cmd + [url], capture_output=True, text=True,
                       env={k: v for k, v in os.environ.items() if "proxy" not in k.lower()})
    try:
        code, size = p.stdout.split()
        return int(code), int(size), p.stderr.strip()
    except ValueError:
        return 0, 0, p.stderr.strip() or f"curl exit {p.returncode}"


def raw_request(proxy: str, path: str, host: str, expect_size: int) -> dict:
    """The exact request wrk sends through a proxy (absolute-form target, Host header),
    over a raw socket; checks status 200 and the body length."""
    ip, port = proxy.rsplit(":", 1)
    req = f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    with socket.create_connection((ip, int(port)), timeout=5) as s:
        s.sendall(req)
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
        head, _, body = buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for l in lines[1:]:
            k, _, v = l.partition(":")
            headers[k.strip().lower()] = v.strip()
        want = int(headers.get("content-length", "-1"))
        while want >= 0 and len(body) < want:
            chunk = s.recv(65536)
            if not chunk:
                break
            body += chunk
    ok = status == 200 and len(body) == expect_size
    if not ok:
        raise RuntimeError(f"{proxy}: GET {path} (Host {host}) answered {lines[0]!r}, body {len(body)} bytes "
                           f"(want 200 and {expect_size}); headers {headers}")
    return {"status": status, "body": len(body), "via": headers.get("via"),
            "transfer_encoding": headers.get("transfer-encoding"), "content_length": want}


class Nginx:
    """nginx with its own prefix and config. Without `origin`: the origin, serving the two
    static files. With `origin` (the origin's Nginx): a reverse proxy in front of it, with
    keep-alive connections to it (`nginx-proxy`, the reference for what a mature C proxy
    costs on this machine); wrk's absolute-form requests are accepted as they are."""

    def __init__(self, root: Path, procs: Procs, workers: str, name: str = "nginx", ip: str = NGINX_IP,
                 origin: Nginx | None = None):
        self.name = name
        self.dir = root / name
        self.procs = procs
        self.workers = workers
        self.origin = origin
        self.port = free_port(ip)
        self.addr = f"{ip}:{self.port}"

    def start(self) -> None:
        d = self.dir
        (d / "tmp").mkdir(parents=True)
        if self.origin:
            upstream = f"upstream origin {{ server {self.origin.addr}; keepalive 512; }}"
            site = ("location / {\n"
                    "            proxy_pass http://origin;\n"
                    "            proxy_http_version 1.1;\n"
                    "            proxy_set_header Connection \"\";\n"
                    "        }")
        else:
            upstream = ""
            (d / "html").mkdir()
            rng = random.Random(4)
            for name, size in BODIES.items():
                (d / "html" / name).write_bytes(bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz0123456789")
                                                      for _ in range(size)))
            for p in (d / "html").iterdir():
                p.chmod(0o644)
            site = f"root {d}/html;\n        location / {{ }}"
        # Workers run as nobody: the document root and the temp dirs must be reachable.
        for p in (d.parent, d, d / "tmp", *([d / "html"] if not self.origin else [])):
            p.chmod(0o755)
        conf = d / "nginx.conf"
        conf.write_text(f"""
worker_processes {self.workers};
daemon off;
master_process on;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
worker_rlimit_nofile 16384;
events {{ worker_connections 8192; }}
http {{
    {f"access_log {d}/access.log combined buffer=64k flush=1s;" if self.origin else "access_log off;"}
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_requests 10000000;
    keepalive_timeout 120s;
    default_type application/octet-stream;
    client_body_temp_path {d}/tmp/body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    {upstream}
    server {{
        listen {self.addr} backlog=4096;
        {site}
    }}
}}
""")
        self.proc = self.procs.spawn(self.name, [exe("nginx"), "-p", str(d), "-e", str(d / "error.log"),
                                                 "-c", str(conf)], d, stop_sig=signal.SIGQUIT)
        probe, via = (self.origin.url("1k"), self.addr) if self.origin else (self.url("1k"), None)
        wait_http(probe, via, BODIES["1k"], 15, self.proc, self.name, d / "error.log")

    def url(self, body: str) -> str:
        return f"http://{self.addr}/{body}"

    def log_warnings(self) -> dict:
        """Its error.log (level warn: e.g. a response buffered to a temp file)."""
        lines = [l for l in read_tail(self.dir / "error.log", 1 << 20).splitlines() if l.strip()]
        return {"lines": len(lines), "sample": lines[:5]}


class Squid:
    def __init__(self, root: Path, procs: Procs, log: bool = True, name: str = "squid"):
        self.dir = root / name
        self.name = name
        self.log = log
        self.procs = procs
        self.port = free_port(SQUID_IP)
        self.addr = f"{SQUID_IP}:{self.port}"

    def start(self, probe_url: str) -> None:
        d = self.dir
        d.mkdir()
        conf = d / "squid.conf"
        conf.write_text(f"""
http_port {self.addr}
workers 1
acl bench_clients src 127.0.0.0/8
http_access allow bench_clients
http_access deny all
cache deny all
cache_mem 0 MB
access_log {f"stdio:{d}/access.log squid" if self.log else "none"}
cache_store_log none
cache_log {d}/cache.log
pid_filename {d}/squid.pid
coredump_dir {d}
netdb_filename none
pinger_enable off
logfile_rotate 0
shutdown_lifetime 1 seconds
max_filedescriptors 16384
""")
        # Squid drops root for the `proxy` user (Debian's cache_effective_user).
        try:
            shutil.chown(d, "proxy", "proxy")
        except (LookupError, PermissionError):
            d.chmod(0o777)
        self.proc = self.procs.spawn(self.name, [exe("squid"), "-N", "-f", str(conf)], d,
                                     stop_sig=signal.SIGTERM)
        wait_http(probe_url, self.addr, BODIES["1k"], 30, self.proc, self.name, d / "cache.log")

    def version(self) -> str:
        p = subprocess.run([exe("squid"), "-v"], capture_output=True, text=True)
        return p.stdout.splitlines()[0] if p.stdout else "?"


class Ssqd:
    """One standalone ssqd node (no master:/role:), its keys, its policy."""

    def __init__(self, bin_dir: Path, root: Path, name: str, ip: str, procs: Procs, timeout: float,
                 workers: int = 0):
        self.ssq_bin = str(bin_dir / "ssq")
        self.ssqd_bin = str(bin_dir / "ssqd")
        self.root = root
        self.name = name
        self.ip = ip
        self.dir = root / name
        self.procs = procs
        self.timeout = timeout
        self.home = root / "home"
        self.env = {k: v for k, v in os.environ.items() if k not in SCRUB}
        self.env["SSQ_HOME"] = str(self.home)
        self.env.pop("SSQD_WORKER_THREADS", None)
        if workers:
            self.env["SSQD_WORKER_THREADS"] = str(workers)
        self.policy_n = 0

    def ssq(self, args: list[str], timeout: float | None = None) -> subprocess.CompletedProcess:
        cmd = [self.ssq_bin, "--timeout", f"{int(timeout or self.timeout)}s", *args]
        p = subprocess.run(cmd, env=self.env, cwd=self.root, stdin=subprocess.DEVNULL,
                           capture_output=True, text=True, timeout=(timeout or self.timeout) + 30)
        if p.returncode != 0:
            raise SsqError(cmd, p)
        return p

    def start(self) -> None:
        self.home.mkdir(exist_ok=True)
        key = self.root / "activation.key"
        op = self.home / "operator.key"
        if not key.exists():
            self.ssq(["key", "new", "--out", str(key)])
        if not op.exists():
            self.ssq(["key", "new", "--operator", "--out", str(op)])
        self.dir.mkdir()
        cfg = self.dir / "startup.yaml"
        cfg.write_text(
            f"node: {self.name}\n"
            f"portal: {{ listen: \"{self.ip}:0\" }}\n"
            f"proxy: {{ listen: \"{self.ip}:0\" }}\n"
            "activation_key_file: ../activation.key\n"
            "data_dir: data\n"
            "log_dir: log\n")
        self.ssq(["--local", "--config", str(cfg), "operator", "add", str(self.home / "operator.key.pub")])
        self.proc = self.procs.spawn(f"ssqd-{self.name}", [self.ssqd_bin, "--config", str(cfg)], self.dir,
                                     env={k: v for k, v in self.env.items() if k != "SSQ_HOME"})
        f = self.dir / "data" / "ssqd.addr"
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ssqd {self.name} exited ({self.proc.returncode}):\n"
                                   f"{read_tail(self.dir / f'ssqd-{self.name}.stderr')}")
            try:
                info = json.loads(f.read_text().strip() or "{}")
            except (FileNotFoundError, json.JSONDecodeError):
                info = {}
            if info.get("pid") == self.proc.pid:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"ssqd {self.name} not ready in 30 s")
            time.sleep(0.05)
        self.portal = info["portal"]
        self.addr = info["proxy"]
        self.ssq(["status", "--node", self.portal])  # first contact: pins the node's certificate

    def apply(self, text: str, timeout: float | None = None) -> dict:
        """`ssq -o json policy apply FILE --master PORTAL`; its wall time and output."""
        self.policy_n += 1
        file = self.root / f"policy-{self.name}-{self.policy_n}.yaml"
        file.write_text(text)
        t = time.monotonic()
        p = self.ssq(["-o", "json", "policy", "apply", str(file), "--master", self.portal], timeout=timeout)
        wall = time.monotonic() - t
        out = json.loads(p.stdout)
        return {"wall_s": round(wall, 3), "revision": out.get("revision"), "file_bytes": file.stat().st_size,
                "request_body_bytes_approx": len(json.dumps({"text": text}))}

    def access_log(self) -> Path:
        return self.dir / "log" / "access.log"


class SsqError(RuntimeError):
    def __init__(self, cmd, p):
        super().__init__(f"{' '.join(cmd[:6])} ... exited {p.returncode}\nstdout:\n{p.stdout[-2000:]}\n"
                         f"stderr:\n{p.stderr[-2000:]}")
        self.stdout = p.stdout
        self.stderr = p.stderr
        self.returncode = p.returncode


# ------------------------------------------------------------------------------------
# Policies

ACCESS = """access:
  default: deny
  allow:
    - clients: [127.0.0.0/8]
      comment: the benchmark's clients
"""
HARMLESS = """  - name: harmless
    domains: [blocked.example]
    action: deny
    message: not the benchmark's host
"""
SMALL_POLICY = ACCESS + "rules:\n" + HARMLESS


def b36(n: int) -> str:
    s = ""
    while True:
        n, r = divmod(n, 36)
        s = "0123456789abcdefghijklmnopqrstuvwxyz"[r] + s
        if n == 0:
            return s


def regexes() -> list[str]:
    out = []
    for i in range(100):
        k = i % 4
        if k == 0:
            out.append(rf"^https?://([a-z0-9-]+\.)*tracker{i}\.example(:[0-9]+)?/")
        elif k == 1:
            out.append(rf"/banners?/ad{i}[-_][0-9]+\.(gif|png|jpe?g)$")
        elif k == 2:
            out.append(rf"[?&]utm_campaign=promo{i}(&|$)")
        else:
            out.append(rf"\.(exe|scr|msi)\?dl={i}[a-f0-9]{{8}}$")
    return out


def big_policy(realistic: bool) -> str:
    """100,000 blocked domains in four categories and 100 URL regexes in one rule, then
    the small policy's rule. `realistic`: names like real block lists (~20 characters);
    else the shortest unique names (base36 + .io), to fit the portal's 1 MiB body limit."""
    rng = random.Random(7)
    words = ["ads", "cdn", "track", "pixel", "stat", "metric", "promo", "click", "bet", "casino",
             "win", "free", "media", "img", "static", "api", "tag", "beacon", "sync", "count"]
    tlds = ["com", "net", "org", "io", "info", "biz", "xyz", "ru", "cn", "top"]
    cats = {"ads": [], "malware": [], "gambling": [], "adult": []}
    names = list(cats)
    for i in range(100_000):
        if realistic:
            d = f"{rng.choice(words)}{b36(i)}.{rng.choice(words)}-{rng.choice(words)}.{rng.choice(tlds)}"
        else:
            d = f"{b36(i)}.io"
        cats[names[i % 4]].append(d)
    lines = [ACCESS, "categories:\n"]
    for c, ds in cats.items():
        lines.append(f"  {c}: [{', '.join(ds)}]\n")
    lines.append("rules:\n")
    lines.append("  - name: blocklists\n    categories: [ads, malware, gambling, adult]\n"
                 "    action: deny\n    message: blocked by category\n")
    rx = ", ".join("'" + r.replace("'", "''") + "'" for r in regexes())
    lines.append(f"  - name: blocked-urls\n    url_regex: [{rx}]\n    action: deny\n"
                 "    message: blocked by URL\n")
    lines.append(HARMLESS)
    return "".join(lines)


# ------------------------------------------------------------------------------------
# wrk

LUA_DONE = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCHJSON {\"requests\":%.0f,\"bytes\":%.0f,\"duration_us\":%.0f,\"err_connect\":%.0f," ..
    "\"err_read\":%.0f,\"err_write\":%.0f,\"err_status\":%.0f,\"err_timeout\":%.0f," ..
    "\"p50_us\":%.1f,\"p90_us\":%.1f,\"p99_us\":%.1f,\"max_us\":%.1f,\"mean_us\":%.1f}\n",
    summary.requests, summary.bytes, summary.duration, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean))
end
"""


def wrk_script(root: Path, name: str, path: str | None, host: str | None) -> Path:
    f = root / f"wrk-{name}.lua"
    head = ""
    if path:
        head += f'wrk.path = "{path}"\n'
    if host:
        head += f'wrk.headers["Host"] = "{host}"\n'
    f.write_text(head + LUA_DONE)
    return f


def run_wrk(url: str, script: Path, conns: int, threads: int, duration: float) -> dict:
    cmd = ["wrk", f"-t{min(threads, conns)}", f"-c{conns}", f"-d{max(1, round(duration))}s", "--timeout", "10s", "--latency",
           "-s", str(script), url]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60)
    m = re.search(r"BENCHJSON (\{.*\})", p.stdout)
    if p.returncode != 0 or not m:
        raise RuntimeError(f"{' '.join(cmd)} exited {p.returncode}\n{p.stdout}\n{p.stderr}")
    return json.loads(m.group(1))


# ------------------------------------------------------------------------------------
# The measurement

# Keys of a summary cell holding the ratios of two targets (per-round a/b, median).
RATIO_KEYS = {("ssqd", "squid"): "ssqd_vs_squid", ("ssqd", "nginx-proxy"): "ssqd_vs_nginx_proxy",
              ("nginx-proxy", "squid"): "nginx_proxy_vs_squid"}


class Bench:
    def __init__(self, args, root: Path, nginx: Nginx, squid: Squid, ssqd: Ssqd, big: Ssqd | None,
                 nginx_proxy: Nginx | None = None):
        self.args = args
        self.root = root
        self.nginx = nginx
        self.targets = {"direct": None, "ssqd": ssqd, "squid": squid}
        if nginx_proxy:
            self.targets["nginx-proxy"] = nginx_proxy
        if big:
            self.targets["ssqd_big"] = big
        self.runs: list[dict] = []
        self.item3_runs: list[dict] = []  # item 3's further pairs (not in the cells' summary)
        self.rejected: list[dict] = []
        self.scripts = {}
        for body in BODIES:
            origin = nginx.url(body)
            self.scripts[("direct", body)] = (origin, wrk_script(root, f"direct-{body}", None, None))
            for t, obj in self.targets.items():
                if obj is None:
                    continue
                self.scripts[(t, body)] = (f"http://{obj.addr}/",
                                           wrk_script(root, f"{t}-{body}", origin, nginx.addr))

    def proxy_pids(self) -> dict[str, int]:
        return {t: o.proc.pid for t, o in self.targets.items() if o is not None}

    def ours(self) -> float:
        """CPU seconds of every long-lived process started here (both ssqd, squid, both
        nginx) and of this script."""
        pids = [o.proc.pid for o in self.targets.values() if o is not None] + [self.nginx.proc.pid]
        me = resource.getrusage(resource.RUSAGE_SELF)  # this script (the RSS sampler)
        return sum(cpu_seconds(p) for p in pids) + me.ru_utime + me.ru_stime

    def wait_quiet(self) -> float | None:
        """Wait (up to --quiet-wait s) until CPU use by others (the machine's busy time
        less ours) stays under --max-other-cpus over a 2 s window; the last reading."""
        deadline = time.monotonic() + self.args.quiet_wait
        while True:
            b0, o0, t0 = machine_busy()[0], self.ours(), time.monotonic()
            time.sleep(2)
            other = (machine_busy()[0] - b0 - (self.ours() - o0)) / (time.monotonic() - t0)
            if other <= self.args.max_other_cpus or time.monotonic() > deadline:
                return other
            log(f"  waiting for other work to end: {other:.2f} CPUs busy outside the benchmark")

    def one(self, target: str, body: str, conns: int, duration: float, rnd_i: int, record: bool = True,
            into: list | None = None) -> dict:
        """One wrk run; repeated (up to --retries times, after waiting for quiet) when other
        work on the machine took more than --max-other-cpus during it. Recorded in `into`
        (default: the runs the summary is made of)."""
        for attempt in range(self.args.retries + 1):
            row = self._one(target, body, conns, duration, rnd_i)
            row["attempt"] = attempt
            row["noisy"] = row["other_cpus"] > self.args.max_other_cpus
            if not row["noisy"] or not record:
                break
            if attempt == self.args.retries:
                log(f"  {target} {body}/{conns}: {row['other_cpus']:.2f} CPUs used by other work during the run; "
                    f"kept (no retries left), marked noisy")
                break
            self.rejected.append(row)
            log(f"  {target} {body}/{conns}: {row['other_cpus']:.2f} CPUs used by other work during the run "
                f"(limit {self.args.max_other_cpus}): rejected, again")
            self.wait_quiet()
        if record:
            (self.runs if into is None else into).append(row)
        return row

    def _one(self, target: str, body: str, conns: int, duration: float, rnd_i: int) -> dict:
        url, script = self.scripts[(target, body)]
        proxy = self.targets[target]
        pid = proxy.proc.pid if proxy else None
        ng = self.nginx.proc.pid
        sampler = RssSampler({"proxy": pid} if pid else {})
        load = loadavg()
        split0 = cpu_split(pid) if pid else (0.0, 0.0)
        cpu0 = sum(split0)
        ng0 = cpu_seconds(ng)
        ours0 = self.ours()
        kids0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        busy0, tot0 = machine_busy()
        sampler.start()
        t0 = time.monotonic()
        res = run_wrk(url, script, conns, self.args.threads, duration)
        wall = time.monotonic() - t0
        busy1, tot1 = machine_busy()
        kids1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        ours1 = self.ours()
        peak = sampler.stop()
        split1 = cpu_split(pid) if pid else (0.0, 0.0)
        cpu1 = sum(split1)
        ng1 = cpu_seconds(ng)
        wrk_cpu = (kids1.ru_utime + kids1.ru_stime) - (kids0.ru_utime + kids0.ru_stime)
        n = res["requests"]
        secs = res["duration_us"] / 1e6
        errors = {k[4:]: res[k] for k in res if k.startswith("err_") and res[k]}
        row = {
            "round": rnd_i, "target": target, "body": body, "conns": conns,
            "requests": n, "req_s": n / secs if secs else 0.0,
            "body_mib_s": n * BODIES[body] / secs / 2**20 if secs else 0.0,
            "wire_mib_s": res["bytes"] / secs / 2**20 if secs else 0.0,
            "p50_ms": res["p50_us"] / 1000, "p90_ms": res["p90_us"] / 1000,
            "p99_ms": res["p99_us"] / 1000, "max_ms": res["max_us"] / 1000,
            "errors": errors,
            "proxy_cpu_s": cpu1 - cpu0 if pid else None,
            "proxy_cpu_us_per_req": (cpu1 - cpu0) / n * 1e6 if pid and n else None,
            # Of which in the kernel (system calls, TCP on loopback, wake-ups).
            "proxy_sys_us_per_req": (split1[1] - split0[1]) / n * 1e6 if pid and n else None,
            "proxy_rss_peak": peak.get("proxy"),
            "nginx_cpu_us_per_req": (ng1 - ng0) / n * 1e6 if n else None,
            # Everything the machine did during the run, in CPUs (2.0 = both cores busy).
            "machine_busy_cpus": (busy1 - busy0) / wall,
            "wrk_cpus": wrk_cpu / wall,
            # The machine's busy CPUs less wrk, nginx, both ssqd, squid, nginx-proxy: other work.
            "other_cpus": (busy1 - busy0 - wrk_cpu - (ours1 - ours0)) / wall,
            "loadavg_1m": load[0],
        }
        return row

    def warm_up(self) -> None:
        for t in self.targets:
            for body in BODIES:
                self.one(t, body, 256, self.args.warmup, -1, record=False)

    def measure(self) -> None:
        configs = [("1k", 64), ("1k", 256), ("100k", 64), ("100k", 256)]
        if self.args.one_conn:
            configs.append(("1k", 1))
        base = [t for t in ("direct", "ssqd", "squid", "nginx-proxy") if t in self.targets]
        for r in range(self.args.rounds):
            for body, conns in configs:
                k = r % len(base)
                order = base[k:] + base[:k]  # rotate: A B C, B C A, C A B, ...
                if "ssqd_big" in self.targets:
                    # item 3: ssqd and ssqd_big next to each other, alternating which goes first;
                    # in every cell, so both nodes have the same history (allocator state)
                    i = order.index("ssqd")
                    order.insert(i + 1 if r % 2 == 0 else i, "ssqd_big")
                for t in order:
                    self.log_row(r, self.one(t, body, conns, self.args.duration, r))
                if "ssqd_big" in self.targets and (body, conns) == ("1k", 64):
                    # item 3's further pairs, first of each alternating: its figure is a
                    # difference of a few per cent, and one pair per round moves by ten.
                    for j in range(1, self.args.item3_pairs):
                        pair = ["ssqd", "ssqd_big"] if (r + j) % 2 == 0 else ["ssqd_big", "ssqd"]
                        rows = {t: self.one(t, body, conns, self.args.duration, r, into=self.item3_runs)
                                for t in pair}
                        for t in pair:
                            self.log_row(r, rows[t], f"item 3 pair {j + 1}")

    def log_row(self, r: int, row: dict, what: str = "") -> None:
        log(f"round {r + 1}/{self.args.rounds} {row['body']:>4}/{row['conns']:<3} {row['target']:11} "
            f"{row['req_s']:9.0f} req/s {row['body_mib_s']:8.1f} MiB/s "
            f"p50 {row['p50_ms']:6.2f} p99 {row['p99_ms']:7.2f} ms"
            + (f"  cpu {row['proxy_cpu_us_per_req']:6.1f} us/req rss {row['proxy_rss_peak'] / 2**20:6.1f} MiB"
               if row["proxy_cpu_us_per_req"] is not None else "")
            + f"  busy {row['machine_busy_cpus']:.2f} other {row['other_cpus']:.2f} load {row['loadavg_1m']}"
            + (f"  ERRORS {row['errors']}" if row["errors"] else "")
            + (f"  ({what})" if what else ""))

    def item3_diffs(self) -> list[float]:
        """Item 3: `big/small - 1` of CPU per request at 1 KiB/64, in per cent, for every
        pair: the one of each round's cell, then the further ones, in the order run."""
        out = []
        rows = self.cell("ssqd", "1k", 64) + self.cell("ssqd_big", "1k", 64)
        for r in range(self.args.rounds):
            small = [x for x in rows if x["round"] == r and x["target"] == "ssqd"]
            big = [x for x in rows if x["round"] == r and x["target"] == "ssqd_big"]
            pairs = list(zip(small, big))
            extra = [x for x in self.item3_runs if x["round"] == r]
            pairs += zip([x for x in extra if x["target"] == "ssqd"], [x for x in extra if x["target"] == "ssqd_big"])
            out += [(b["proxy_cpu_us_per_req"] / a["proxy_cpu_us_per_req"] - 1) * 100
                    for a, b in pairs if a["proxy_cpu_us_per_req"] and b["proxy_cpu_us_per_req"] is not None]
        return out

    # -- summaries ---------------------------------------------------------------------
    def cell(self, target: str, body: str, conns: int) -> list[dict]:
        return [r for r in self.runs if r["target"] == target and r["body"] == body and r["conns"] == conns]

    def med(self, target, body, conns, key):
        return median([r[key] for r in self.cell(target, body, conns)])

    def ratio(self, a: str, b: str, body: str, conns: int, key: str) -> float | None:
        """Median over rounds of a/b (same round)."""
        ra = {r["round"]: r[key] for r in self.cell(a, body, conns)}
        rb = {r["round"]: r[key] for r in self.cell(b, body, conns)}
        xs = [ra[k] / rb[k] for k in ra if k in rb and ra[k] is not None and rb[k]]
        return median(xs)

    def cross(self, a: str, key_a: str, b: str, key_b: str, body: str, conns: int) -> float | None:
        """Median over rounds of a's key_a / b's key_b (same round)."""
        ra = {r["round"]: r[key_a] for r in self.cell(a, body, conns)}
        rb = {r["round"]: r[key_b] for r in self.cell(b, body, conns)}
        return median([ra[k] / rb[k] for k in ra if k in rb and ra[k] is not None and rb[k]])

    def diff(self, a: str, b: str, body: str, conns: int, key: str) -> float | None:
        """Median over rounds of a-b (same round)."""
        ra = {r["round"]: r[key] for r in self.cell(a, body, conns)}
        rb = {r["round"]: r[key] for r in self.cell(b, body, conns)}
        return median([ra[k] - rb[k] for k in ra if k in rb and ra[k] is not None and rb[k] is not None])

    def ratios(self, a: str, b: str, body: str, conns: int) -> dict:
        return {
            "req_s": rnd(self.ratio(a, b, body, conns, "req_s")),
            "body_mib_s": rnd(self.ratio(a, b, body, conns, "body_mib_s")),
            "p50": rnd(self.ratio(a, b, body, conns, "p50_ms")),
            "p99": rnd(self.ratio(a, b, body, conns, "p99_ms")),
            "cpu_per_req": rnd(self.ratio(a, b, body, conns, "proxy_cpu_us_per_req")),
            # a's kernel CPU per request alone, over b's whole CPU per request.
            "sys_vs_cpu": rnd(self.cross(a, "proxy_sys_us_per_req", b, "proxy_cpu_us_per_req", body, conns)),
        }

    def summary(self) -> dict:
        out = {}
        for body in BODIES:
            for conns in (1, 64, 256):
                key = f"{body}/{conns}"
                cell = {}
                for t in self.targets:
                    rows = self.cell(t, body, conns)
                    if not rows:
                        continue
                    c = {
                        "n": len(rows),
                        "req_s": rnd(self.med(t, body, conns, "req_s"), 0),
                        "body_mib_s": rnd(self.med(t, body, conns, "body_mib_s"), 1),
                        "p50_ms": rnd(self.med(t, body, conns, "p50_ms")),
                        "p99_ms": rnd(self.med(t, body, conns, "p99_ms")),
                        "errors": sum(sum(r["errors"].values()) for r in rows),
                        "nginx_cpu_us_per_req": rnd(self.med(t, body, conns, "nginx_cpu_us_per_req"), 1),
                        "machine_busy_cpus": rnd(self.med(t, body, conns, "machine_busy_cpus"), 2),
                        "other_cpus": rnd(self.med(t, body, conns, "other_cpus"), 2),
                        "noisy_runs": sum(1 for r in rows if r.get("noisy")),
                    }
                    if t != "direct":
                        c.update({
                            "cpu_us_per_req": rnd(self.med(t, body, conns, "proxy_cpu_us_per_req"), 1),
                            "sys_us_per_req": rnd(self.med(t, body, conns, "proxy_sys_us_per_req"), 1),
                            "rss_peak_mib": rnd(max(r["proxy_rss_peak"] for r in rows) / 2**20, 1),
                            "req_s_vs_direct": rnd(self.ratio(t, "direct", body, conns, "req_s")),
                            "mib_s_vs_direct": rnd(self.ratio(t, "direct", body, conns, "body_mib_s")),
                            "p99_vs_direct": rnd(self.ratio(t, "direct", body, conns, "p99_ms")),
                        })
                        if conns == 1:
                            # One request at a time: what the proxy adds to each one's wait.
                            added = self.diff(t, "direct", body, conns, "p50_ms")
                            c["p50_added_us"] = None if added is None else rnd(added * 1000, 0)
                    cell[t] = c
                # ssqd/squid (the targets), then, for information, ssqd/nginx-proxy and
                # nginx-proxy/squid: where a mature C proxy lands on this machine.
                for (a, b), k in RATIO_KEYS.items():
                    if a in cell and b in cell:
                        cell[k] = self.ratios(a, b, body, conns)
                if cell:
                    out[key] = cell
        return out


def access_log_info(node: Ssqd) -> dict:
    f = node.access_log()
    try:
        size = f.stat().st_size
        with f.open("rb") as fh:
            lines = sum(buf.count(b"\n") for buf in iter(lambda: fh.read(1 << 20), b""))
    except OSError:
        return {"path": str(f), "exists": False}
    ext = node.dir / "log" / "extended.log"
    warns = [l for l in read_tail(ext, 1 << 20).splitlines() if " WARN " in l]
    return {"path": str(f), "bytes": size, "lines": lines,
            "bytes_per_line": round(size / lines, 1) if lines else None,
            "extended_log_warnings": len(warns), "warnings_sample": warns[:5]}


def check_targets(s: dict, idle: dict, item3: dict | None) -> list[dict]:
    out = []

    def add(name, value, limit, ok, unit=""):
        out.append({"target": name, "value": value, "limit": limit, "unit": unit,
                    "result": "n/a" if ok is None else ("PASS" if ok else "FAIL")})

    c = s.get("1k/64", {})
    ss, sq = c.get("ssqd", {}), c.get("squid", {})
    v = ss.get("req_s_vs_direct")
    add("ssqd req/s >= 0.5x direct (1 KiB, 64 conns)", v, ">= 0.5", None if v is None else v >= 0.5, "x")
    v = c.get("ssqd_vs_squid", {}).get("req_s")
    add("ssqd req/s >= 3x Squid (1 KiB, 64 conns)", v, ">= 3", None if v is None else v >= 3, "x")
    v = c.get("ssqd_vs_squid", {}).get("cpu_per_req")
    add("ssqd CPU/request <= 1/4 of Squid's (1 KiB, 64 conns)", v, "<= 0.25",
        None if v is None else v <= 0.25, "x")
    v = c.get("ssqd_vs_squid", {}).get("p99")
    add("ssqd p99 <= 1/2 of Squid's (1 KiB, 64 conns)", v, "<= 0.5", None if v is None else v <= 0.5, "x")
    for conns in (64, 256):
        v = s.get(f"100k/{conns}", {}).get("ssqd", {}).get("mib_s_vs_direct")
        add(f"ssqd MiB/s >= 0.5x direct (100 KiB, {conns} conns)", v, ">= 0.5",
            None if v is None else v >= 0.5, "x")
    v = idle.get("ssqd")
    add("ssqd RSS idle <= 8 MB", rnd(v / MB, 2) if v else None, "<= 8", None if v is None else v <= 8 * MB, "MB")
    peaks = [s.get(f"{b}/256", {}).get("ssqd", {}).get("rss_peak_mib") for b in BODIES]
    peaks = [p for p in peaks if p is not None]
    v = max(peaks) * 2**20 if peaks else None
    add("ssqd RSS peak <= 32 MB at 256 conns", rnd(v / MB, 2) if v else None, "<= 32",
        None if v is None else v <= 32 * MB, "MB")
    if item3:
        v = item3.get("cpu_per_req_diff_pct")
        add("100k-domain/100-regex policy: CPU/request <= +5% (1 KiB, 64 conns)", v, "<= 5",
            None if v is None else v <= 5, "%")
        add("100k-domain policy with realistic names can be applied", item3.get("realistic_apply", {}).get("ok"),
            "applies", item3.get("realistic_apply", {}).get("ok"))
    return out


def reference_info(s: dict) -> list[dict]:
    """Information, not targets: ssqd against nginx as a reverse proxy, and nginx-proxy's
    CPU per request against Squid's (is "a quarter of Squid's CPU" reachable by nginx
    itself on this machine?), at the targets' cell (1 KiB, 64 conns)."""
    c = s.get("1k/64", {})
    sn, ns = c.get("ssqd_vs_nginx_proxy"), c.get("nginx_proxy_vs_squid")
    out = []
    if sn:
        out += [{"what": "ssqd req/s / nginx-proxy's (1 KiB, 64 conns)", "value": sn["req_s"], "unit": "x"},
                {"what": "ssqd CPU/request / nginx-proxy's (1 KiB, 64 conns)", "value": sn["cpu_per_req"],
                 "unit": "x"},
                {"what": "ssqd p99 / nginx-proxy's (1 KiB, 64 conns)", "value": sn["p99"], "unit": "x"}]
    if ns:
        out += [{"what": "nginx-proxy CPU/request / Squid's (1 KiB, 64 conns; ssqd's target: <= 0.25)",
                 "value": ns["cpu_per_req"], "unit": "x"},
                {"what": "nginx-proxy req/s / Squid's (1 KiB, 64 conns; ssqd's target: >= 3)",
                 "value": ns["req_s"], "unit": "x"}]
    # The kernel's share: a proxy's system CPU per request (its socket calls, TCP on
    # loopback, waking the other side) is paid whatever the proxy's own code costs.
    for t in ("ssqd", "squid", "nginx-proxy"):
        v = c.get(t, {}).get("sys_us_per_req")
        if v is not None:
            out.append({"what": f"{t} kernel (system) CPU/request (1 KiB, 64 conns)", "value": v, "unit": "us"})
    for k, what in (("ssqd_vs_squid", "ssqd"), ("nginx_proxy_vs_squid", "nginx-proxy")):
        v = (c.get(k) or {}).get("sys_vs_cpu")
        if v is not None:
            out.append({"what": f"{what} kernel CPU/request / Squid's whole CPU/request (1 KiB, 64 conns; "
                                f"ssqd's target for the whole: <= 0.25)", "value": v, "unit": "x"})
    # One request at a time: each request pays for its own wake-ups (no batching), which
    # is where the issue's "Squid ≈ 225–295 µs per 1 KiB request" is reproduced here.
    one = s.get("1k/1", {})
    for t in ("ssqd", "squid", "nginx-proxy"):
        c = one.get(t)
        if c:
            out.append({"what": f"{t} CPU/request, 1 KiB over one connection", "value": c["cpu_us_per_req"],
                        "unit": "us"})
            out.append({"what": f"{t} p50 added to a request, 1 KiB over one connection",
                        "value": c.get("p50_added_us"), "unit": "us"})
    for k, what in (("ssqd_vs_squid", "ssqd/Squid"), ("ssqd_vs_nginx_proxy", "ssqd/nginx-proxy"),
                    ("nginx_proxy_vs_squid", "nginx-proxy/Squid")):
        v = one.get(k)
        if v:
            out.append({"what": f"{what} CPU/request, 1 KiB over one connection", "value": v["cpu_per_req"],
                        "unit": "x"})
    return out


def print_report(report: dict, bench: Bench | None) -> None:
    m = report["machine"]
    print(f"\nssqd forward-proxy benchmark — {m['nproc']} CPUs ({m['cpu_model']}), commit {report['commit']}, "
          f"load avg start {m['loadavg_start']} end {m.get('loadavg_end')}")
    cfg = report.get("config", {})
    print(f"wrk -t{cfg.get('threads')} --latency, {cfg.get('duration_s')} s per run, {cfg.get('rounds')} rounds "
          f"interleaved; nginx worker_processes {cfg.get('nginx_workers')}; "
          f"ssqd SSQD_WORKER_THREADS {cfg.get('ssqd_workers') or 'unset (one per core)'}; medians (ratios: median of per-round ratios)")
    s = report.get("summary") or {}
    hdr = (f"{'body/conns':10} {'target':11} {'req/s':>8} {'MiB/s':>7} {'p50 ms':>7} {'p99 ms':>8} "
           f"{'x direct':>8} {'MiB x dir':>9} {'cpu us/req':>10} {'rss peak MiB':>12} {'errors':>6}")
    if s:
        print(hdr)
        for key, cell in s.items():
            for t, c in cell.items():
                if t in RATIO_KEYS.values():
                    continue
                print(f"{key:10} {t:11} {c['req_s']:8.0f} {c['body_mib_s']:7.1f} {c['p50_ms']:7.2f} {c['p99_ms']:8.2f} "
                      f"{c.get('req_s_vs_direct') if c.get('req_s_vs_direct') is not None else '':>8} "
                      f"{c.get('mib_s_vs_direct') if c.get('mib_s_vs_direct') is not None else '':>9} "
                      f"{c.get('cpu_us_per_req') if c.get('cpu_us_per_req') is not None else '':>10} "
                      f"{c.get('rss_peak_mib') if c.get('rss_peak_mib') is not None else '':>12} {c['errors']:>6}")
            for (a, b), k in RATIO_KEYS.items():
                v = cell.get(k)
                if v:
                    label = f"{a}/{b}"
                    print(f"{key:10} {label:11} req/s x{v['req_s']}  p50 x{v['p50']}  p99 x{v['p99']}  "
                          f"cpu/req x{v['cpu_per_req']}")
    idle = report.get("rss_idle_mib", {})
    if idle:
        print("RSS idle (MiB, before any request): " + ", ".join(f"{k} {v}" for k, v in idle.items()))
    for key, label in (("rss_end_idle_mib", "right after the last run"),
                       ("rss_settled_idle_mib", f"{report.get('config', {}).get('settle_s')} s later")):
        v = report.get(key)
        if v:
            print(f"RSS idle (MiB, {label}): " + ", ".join(f"{k} {x}" for k, x in v.items()))
    i3 = report.get("item3")
    if i3:
        print(f"item 3: ssqd cpu/req small policy {i3.get('small_cpu_us_per_req')} us, 100k domains + 100 regexes "
              f"{i3.get('big_cpu_us_per_req')} us: {i3.get('cpu_per_req_diff_pct')}% (median of {i3.get('pairs')} interleaved pairs' diffs); "
              f"req/s x{i3.get('big_vs_small_req_s')}; apply {i3.get('apply', {}).get('wall_s')} s "
              f"({i3.get('apply', {}).get('file_bytes')} bytes); realistic-name apply: {i3.get('realistic_apply')}")
    al = report.get("access_log")
    if al:
        print(f"ssqd access.log: {al}")
    for t in report.get("targets", []):
        print(f"{t['result']:4}  {t['target']}: {t['value']} {t['unit']} (target {t['limit']})")
    for t in report.get("reference", []):
        print(f"info  {t['what']}: {t['value']} {t['unit']} (information, not a target)")
    if report.get("error"):
        print(f"FAILED: {report['error']}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5, at least 3 for the report)")
    ap.add_argument("--duration", type=float, default=8, help="seconds per wrk run (default 8)")
    ap.add_argument("--warmup", type=float, default=2, help="seconds of warm-up per target and body (default 2)")
    ap.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    ap.add_argument("--max-other-cpus", type=float, default=0.2,
                    help="reject and repeat a run during which other work used more CPUs than this (default 0.2)")
    ap.add_argument("--retries", type=int, default=3, help="repeats of a rejected run (default 3)")
    ap.add_argument("--quiet-wait", type=float, default=300,
                    help="longest wait for other work to end before a repeat, seconds (default 300)")
    ap.add_argument("--nginx-workers", default="1", help="nginx worker_processes (default 1; 'auto' = one per CPU)")
    ap.add_argument("--ssqd-workers", type=int, default=1,
                    help="ssqd's proxy worker threads (SSQD_WORKER_THREADS; default 1, as Squid runs with "
                         "'workers 1' and nginx with worker_processes 1 here; 0 = ssqd's own default, one per CPU)")
    ap.add_argument("--no-big", action="store_true", help="skip item 3 (the 100,000-domain policy)")
    ap.add_argument("--item3-pairs", type=int, default=3,
                    help="item 3: pairs of small- and big-policy ssqd runs at 1 KiB/64 per round (default 3)")
    ap.add_argument("--no-one-conn", dest="one_conn", action="store_false",
                    help="skip the information cell 1 KiB over one connection")
    ap.add_argument("--no-nginx-proxy", action="store_true",
                    help="skip the reference target nginx-proxy (nginx as a reverse proxy to the origin)")
    ap.add_argument("--settle", type=float, default=75,
                    help="after the last run, wait this many seconds and read each proxy's RSS again (0: skip)")
    ap.add_argument("--quick", action="store_true", help="smoke test: 1 round of 2 s, 1 s warm-up")
    ap.add_argument("--no-build", action="store_true",
                    help="use the binaries of the last build (target/release, or target/bench with --git-rev)")
    ap.add_argument("--git-rev", metavar="REV",
                    help="benchmark this commit (git archive into a temp dir, built with "
                         "CARGO_TARGET_DIR=target/bench) instead of the working tree")
    ap.add_argument("--pgo", action="store_true",
                    help="build with scripts/build-pgo (profile-guided) instead of cargo build --release")
    ap.add_argument("--no-install", action="store_true", help="do not apt-get install missing packages")
    ap.add_argument("--perf", action="store_true",
                    help="after the measurement, profile ssqd with perf during one more 1 KiB/64 run")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (configs, logs)")
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.duration, args.warmup = 1, 2, 1

    def on_term(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_term)

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 65536:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(65536, hard), hard))

    report: dict = {"bench": "ssqd forward proxy vs nginx direct vs Squid", "machine": machine_info(),
                    "config": {"rounds": args.rounds, "duration_s": args.duration, "threads": args.threads,
                               "max_other_cpus": args.max_other_cpus,
                               "warmup_s": args.warmup, "nginx_workers": args.nginx_workers,
                               "ssqd_workers": args.ssqd_workers, "pgo": args.pgo,
                               "nginx_proxy": not args.no_nginx_proxy,
                               "rss_sample_period_s": 0.2, "wrk_timeout_s": 10, "settle_s": args.settle}}
    target = ROOT / "target" / ("bench" if args.git_rev else "")
    bin_dir = target / "release"
    stamp = bin_dir / ".ssq-proxy-bench-source"
    if args.git_rev:
        report["commit"] = subprocess.run(["git", "rev-parse", "--short", args.git_rev], cwd=ROOT, check=True,
                                          capture_output=True, text=True).stdout.strip()
    else:
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True).stdout.strip()
        report["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                          text=True).stdout.strip() + ("+dirty" if dirty else "")
    if args.no_build:
        # The stamp names the source of the last build made here; a binary newer than it
        # was built some other way (cargo by hand), from a source not known.
        ssqd_bin = bin_dir / "ssqd"
        if stamp.exists() and ssqd_bin.exists() and ssqd_bin.stat().st_mtime <= stamp.stat().st_mtime:
            source = stamp.read_text().strip()
        else:
            source = "unknown" + (f" (newer than the build of {stamp.read_text().strip()})" if stamp.exists() else "")
        report["commit"] = source + " (prebuilt, --no-build)"
    procs = Procs()
    root = Path(tempfile.mkdtemp(prefix="ssq-proxy-bench-"))
    bench = None
    idle: dict = {}
    failed = None
    try:
        if not args.no_install:
            report["packages"] = ensure_packages()
        if not args.no_build:
            build(args.git_rev, target, report["commit"], args.pgo)
            stamp.write_text(report["commit"] + "\n")

        nginx = Nginx(root, procs, args.nginx_workers)
        nginx.start()
        log(f"nginx on {nginx.addr} (worker_processes {args.nginx_workers})")
        squid = Squid(root, procs)
        squid.start(nginx.url("1k"))
        report["squid_version"] = squid.version()
        log(f"squid on {squid.addr}")
        nginx_proxy = None
        if not args.no_nginx_proxy:
            nginx_proxy = Nginx(root, procs, args.nginx_workers, "nginx-proxy", NGINX_PROXY_IP, origin=nginx)
            nginx_proxy.start()
            log(f"nginx-proxy on {nginx_proxy.addr} (reverse proxy to {nginx.addr}, upstream keepalive, "
                f"worker_processes {args.nginx_workers})")

        ssqd = Ssqd(bin_dir, root, "bench-small", SSQD_IP, procs, 60, args.ssqd_workers)
        ssqd.start()
        time.sleep(0.5)
        report["rss_at_start_no_policy_mib"] = {"ssqd": rnd(rss_bytes(ssqd.proc.pid) / 2**20, 2)}
        report["apply_small"] = ssqd.apply(SMALL_POLICY)
        log(f"ssqd (small policy) on {ssqd.addr}, applied in {report['apply_small']['wall_s']} s")

        big = None
        item3: dict | None = None
        if not args.no_big:
            item3 = {}
            big = Ssqd(bin_dir, root, "bench-big", SSQD_BIG_IP, procs, 300, args.ssqd_workers)
            big.start()
            # First with names like a real block list; the portal refuses bodies over 1 MiB.
            text = big_policy(realistic=True)
            try:
                a = big.apply(text, timeout=300)
                item3["realistic_apply"] = {"ok": True, **a}
                item3["apply"] = a
                item3["names"] = "realistic"
            except SsqError as e:
                item3["realistic_apply"] = {"ok": False, "file_bytes": len(text.encode()), "exit": e.returncode,
                                            "error": ((e.stdout.strip() + " " + e.stderr.strip()).strip()[-400:]
                                                      or f"ssq killed by signal {-e.returncode}, no message")}
                log(f"the realistic 100,000-domain policy ({len(text.encode())} bytes) was refused: "
                    f"{item3['realistic_apply']['error']}")
                text = big_policy(realistic=False)
                a = big.apply(text, timeout=300)
                item3["apply"] = a
                item3["names"] = "compact (base36.io) to fit the portal's 1 MiB request limit"
            log(f"ssqd (100,000 domains + 100 regexes) on {big.addr}, applied in {item3['apply']['wall_s']} s "
                f"({item3['apply']['file_bytes']} bytes, {item3['names']})")

        targets = {"ssqd": ssqd, "squid": squid}
        if nginx_proxy:
            targets["nginx-proxy"] = nginx_proxy
        if big:
            targets["ssqd_big"] = big
        # Idle RSS: every process started and configured (ssqd: policy applied, its
        # certificate pinned by `ssq status`), before any proxied request.
        time.sleep(2)
        idle = {k: rss_bytes(t.proc.pid) for k, t in targets.items()}
        report["rss_idle_mib"] = {k: rnd(v / 2**20, 2) for k, v in idle.items()}

        # Verify the exact requests wrk will send: curl, then a raw socket with wrk's request.
        checks = {}
        for body, size in BODIES.items():
            code, got, err = curl(nginx.url(body), None)
            assert code == 200 and got == size, f"direct {body}: {code} {got} {err}"
            for name, t in targets.items():
                code, got, err = curl(nginx.url(body), t.addr)
                if code != 200 or got != size:
                    raise RuntimeError(f"curl -x {t.addr} {nginx.url(body)}: {code}, {got} bytes {err}")
                checks[f"{name}/{body}"] = raw_request(t.addr, nginx.url(body), nginx.addr, size)
        report["request_checks"] = checks
        log("curl and wrk's exact request through each proxy: 200 with the right body size")

        pids = {k: t.proc.pid for k, t in targets.items()}
        report["squid_processes"] = len(tree(squid.proc.pid))
        if nginx_proxy:
            report["nginx_proxy_processes"] = len(tree(nginx_proxy.proc.pid))
        log(f"RSS idle (MiB): {report['rss_idle_mib']}")

        bench = Bench(args, root, nginx, squid, ssqd, big, nginx_proxy)
        other = bench.wait_quiet()
        log(f"other work on the machine: {other:.2f} CPUs")
        log(f"warm-up: {args.warmup} s per target and body at 256 conns")
        bench.warm_up()
        report["rss_after_warmup_idle_mib"] = {k: rnd(rss_bytes(p) / 2**20, 2) for k, p in pids.items()}
        n_runs = args.rounds * (5 if args.one_conn else 4) * len(bench.targets)
        if big:
            n_runs += args.rounds * 2 * max(0, args.item3_pairs - 1)
        log(f"measuring: {n_runs} runs of {args.duration} s (~{n_runs * (args.duration + 0.6) / 60:.1f} min)")
        bench.measure()
        report["summary"] = s = bench.summary()
        report["rss_end_idle_mib"] = {k: rnd(rss_bytes(p) / 2**20, 2) for k, p in pids.items()}
        if args.settle > 0:
            # ssqd closes idle upstream connections after 30 s (checked every 30 s) and
            # hands freed memory back every 10 s: what it keeps once the load is gone.
            log(f"settling: RSS again after {args.settle} s without load")
            time.sleep(args.settle)
            report["rss_settled_idle_mib"] = {k: rnd(rss_bytes(p) / 2**20, 2) for k, p in pids.items()}
        if item3 is not None:
            diffs = bench.item3_diffs()
            item3.update({
                "small_cpu_us_per_req": rnd(bench.med("ssqd", "1k", 64, "proxy_cpu_us_per_req"), 1),
                "big_cpu_us_per_req": rnd(bench.med("ssqd_big", "1k", 64, "proxy_cpu_us_per_req"), 1),
                "cpu_per_req_diff_pct": rnd(median(diffs), 2),
                "pairs": len(diffs),
                "per_pair_diff_pct": [rnd(d, 2) for d in diffs],
                "big_vs_small_req_s": rnd(bench.ratio("ssqd_big", "ssqd", "1k", 64, "req_s")),
                "big_vs_small_p99": rnd(bench.ratio("ssqd_big", "ssqd", "1k", 64, "p99_ms")),
                "rss_idle_mib": report["rss_idle_mib"].get("ssqd_big"),
                "cpu_per_req_diff_pct_by_cell": {
                    f"{b}/{c}": rnd((bench.ratio("ssqd_big", "ssqd", b, c, "proxy_cpu_us_per_req") or 0) * 100 - 100, 2)
                    for b in BODIES for c in (64, 256)},
            })
            report["item3"] = item3
            report["item3_runs"] = bench.item3_runs
        report["access_log"] = access_log_info(ssqd)
        if big:
            report["access_log_big"] = access_log_info(big)
        report["targets"] = check_targets(s, idle, item3)
        report["reference"] = reference_info(s)
        if nginx_proxy:
            report["nginx_proxy_error_log"] = nginx_proxy.log_warnings()
        if args.perf:
            report["perf"] = profile(bench, root)
        report["runs"] = [{k: (rnd(v, 3) if isinstance(v, float) else v) for k, v in r.items()} for r in bench.runs]
        report["rejected_runs"] = [{k: (rnd(v, 3) if isinstance(v, float) else v) for k, v in r.items()}
                                   for r in bench.rejected]
    except BaseException as e:  # report what was measured, then fail
        failed = f"{type(e).__name__}: {e}"
        report["error"] = failed
        if bench is not None and bench.runs and "runs" not in report:
            # Interrupted (e.g. Ctrl-C): summarize the runs that were completed.
            report["runs"] = bench.runs
            report["rejected_runs"] = bench.rejected
            try:
                report["summary"] = bench.summary()
                report["targets"] = check_targets(report["summary"], idle, None)
                report["reference"] = reference_info(report["summary"])
            except Exception:
                pass
    finally:
        stop = procs.stop_all()
        report["teardown"] = stop
        log(f"stopped {stop['stopped']} ({len(stop['sigkilled'])} needed SIGKILL)")
        report["machine"]["loadavg_end"] = loadavg()
        if args.keep:
            log(f"kept {root}")
            report["dir"] = str(root)
        else:
            shutil.rmtree(root, ignore_errors=True)
    print_report(report, bench)
    print(json.dumps(report, separators=(",", ":")))
    return 1 if failed else 0


def build(rev: str | None, target: Path, commit: str, pgo: bool = False) -> None:
    """cargo build --release --bins (with `pgo`: scripts/build-pgo, the profile-guided
    build) of the working tree, or of `rev` (git archive into a temp dir,
    CARGO_TARGET_DIR=target/bench: the working tree may be mid-edit)."""
    src = ROOT
    if rev:
        src = Path(tempfile.mkdtemp(prefix=f"ssq-src-{commit}-"))
        archive = subprocess.run(["git", "archive", "--format=tar", rev], cwd=ROOT, check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
    try:
        cmd = [str(src / "scripts" / "build-pgo")] if pgo else ["cargo", "build", "--release", "--bins"]
        log(f"{' '.join(cmd)} ({commit})")
        subprocess.run(cmd, cwd=src, check=True, env={**os.environ, "CARGO_TARGET_DIR": str(target)})
    finally:
        if src != ROOT:
            shutil.rmtree(src, ignore_errors=True)


def profile(bench: Bench, root: Path) -> dict:
    """perf record -g on ssqd during one 1 KiB/64 run; the top symbols (self time)."""
    if not shutil.which("perf"):
        return {"error": "perf not installed (apt-get install -y linux-perf)"}
    pid = bench.targets["ssqd"].proc.pid
    data = root / "perf.data"
    rec = subprocess.Popen(["perf", "record", "-F", "999", "-g", "-p", str(pid), "-o", str(data)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        bench.one("ssqd", "1k", 64, bench.args.duration, -2, record=False)
    finally:
        rec.send_signal(signal.SIGINT)
        rec.wait(timeout=60)
    p = subprocess.run(["perf", "report", "-i", str(data), "--stdio", "--no-children", "--percent-limit", "0.7",
                        "-g", "none", "--sort", "dso,symbol"], capture_output=True, text=True)
    lines = [l for l in p.stdout.splitlines() if l.strip() and not l.startswith("#")]
    for l in lines[:40]:
        log("perf: " + l)
    return {"top": lines[:40]}


if __name__ == "__main__":
    sys.exit(main())
