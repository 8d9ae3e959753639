#!/usr/bin/env python3
"""Instructions per proxied request: ssqd's user-space cost, counted, not timed.

The proxy benchmark (proxy_bench.py) times CPU on a shared, noisy machine: the same
binary's CPU per request moves 20-30% from round to round, so a change of a few percent
takes many interleaved rounds to see. This one runs ssqd under valgrind's callgrind and
counts the instructions it executes (all its threads: workers, access-log writer) per
1 KiB request that wrk sends through it to a local nginx, after a warm-up. The count
moves well under 1% between runs of the same binary. It says nothing of the kernel's
share (system calls, TCP on loopback: about 70% of a request's CPU here), nor of cache
misses: a build that executes 10% fewer instructions is not 10% faster. Compare builds
with it (--compare), then confirm with proxy_bench.py.

Note: callgrind counts each iteration of `rep movsb`/`rep stosb` as one instruction, so
large memset/memcpy calls weigh more here than on the CPU.

    python3 bench/proxy_instructions.py                     # build, 6 s under callgrind
    python3 bench/proxy_instructions.py --no-build --top 25 # and the 25 costliest functions
    python3 bench/proxy_instructions.py --no-build --compare /path/to/other/target/release

Installs valgrind, wrk and nginx from Debian when missing (root needed). Python 3.11
standard library only. The last line of output is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRUB = ("SSQ_HOME", "SSQ_BIND", "SSQ_KEY_FILE", "SSQ_OPERATOR_KEY", "SSQ_INVENTORY", "SSQ_CONFIG")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def ensure_packages(install: bool) -> None:
    want = {"valgrind": "valgrind", "callgrind_control": "valgrind", "wrk": "wrk", "nginx": "nginx"}
    missing = sorted({pkg for exe, pkg in want.items()
                      if not (shutil.which(exe) or Path(f"/usr/sbin/{exe}").exists())})
    if not missing:
        return
    if not install or os.geteuid() != 0:
        raise SystemExit(f"missing {missing}: apt-get install -y {' '.join(missing)}")
    log(f"installing {missing} from Debian")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env, stdout=subprocess.DEVNULL)
    subprocess.run(["apt-get", "install", "-y", "-q", *missing], check=True, env=env,
                   stdout=subprocess.DEVNULL)


def free_port(ip: str) -> int:
    # nginx needs a number in its config: a port the kernel gave out and took back.
    with socket.socket() as s:
        s.bind((ip, 0))
        return s.getsockname()[1]


def run(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(args, check=True, capture_output=True, text=True, **kw)


class Origin:
    """nginx serving 1 KiB on loopback, keep-alive without limit."""

    def __init__(self, tmp: Path):
        d = tmp / "nginx"
        (d / "html").mkdir(parents=True)
        (d / "tmp").mkdir()
        for p in (tmp, d, d / "html", d / "tmp"):
            p.chmod(0o755)
        (d / "html" / "1k").write_bytes(b"a" * 1024)
        (d / "html" / "1k").chmod(0o644)
        self.addr = f"127.0.0.1:{free_port('127.0.0.1')}"
        (d / "nginx.conf").write_text(
            f"worker_processes 1; daemon off; pid {d}/nginx.pid; error_log {d}/error.log warn;\n"
            "events { worker_connections 4096; }\n"
            "http { access_log off; sendfile on; keepalive_requests 100000000; keepalive_timeout 120s;\n"
            f"client_body_temp_path {d}/tmp/b; proxy_temp_path {d}/tmp/p; fastcgi_temp_path {d}/tmp/f;\n"
            f"uwsgi_temp_path {d}/tmp/u; scgi_temp_path {d}/tmp/s;\n"
            f"server {{ listen {self.addr}; root {d}/html; location / {{ }} }} }}\n")
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        self.proc = subprocess.Popen([nginx, "-p", str(d), "-e", str(d / "error.log"),
                                      "-c", str(d / "nginx.conf")])


def measure(bin_dir: Path, origin: Origin, tmp: Path, conns: int, seconds: float,
            top: int) -> dict:
    """ssqd of `bin_dir` under callgrind: instructions per request (and the top functions)."""
    home = tmp / f"node-{abs(hash(str(bin_dir)))}"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in SCRUB}
    env["SSQ_HOME"] = str(home / "home")
    ssq = str(bin_dir / "ssq")
    run(ssq, "key", "new", "--out", str(home / "act.key"), env=env)
    run(ssq, "key", "new", "--operator", "--out", str(home / "home" / "operator.key"), env=env)
    conf = home / "node.yaml"
    conf.write_text('node: cg\nportal: { listen: "127.0.0.2:0" }\nproxy: { listen: "127.0.0.2:0" }\n'
                    "activation_key_file: act.key\ndata_dir: data\nlog_dir: log\n")
    run(ssq, "--local", "--config", str(conf), "operator", "add",
        str(home / "home" / "operator.key.pub"), env=env)
    out = home / "callgrind.out"
    proc = subprocess.Popen(["valgrind", "--tool=callgrind", "--instr-atstart=no",
                             f"--callgrind-out-file={out}", str(bin_dir / "ssqd"),
                             "--config", str(conf)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    try:
        ready = None
        while ready is None:
            line = proc.stdout.readline()
            if not line:
                raise SystemExit("ssqd ended before it was ready (under valgrind)")
            if line.startswith(b"{"):
                ready = json.loads(line)
        pol = home / "policy.yaml"
        pol.write_text("access:\n  allow:\n    - clients: [127.0.0.0/8]\n"
                       "rules:\n  - name: x\n    domains: [blocked.example]\n    action: deny\n")
        run(ssq, "policy", "apply", str(pol), "--master", ready["portal"], env=env)
        lua = home / "wrk.lua"
        lua.write_text(f'wrk.path = "http://{origin.addr}/1k"\nwrk.headers["Host"] = "{origin.addr}"\n')
        target = f"http://{ready['proxy']}/"
        wrk = ["wrk", f"-t{min(2, conns)}", f"-c{conns}", "-s", str(lua), target]
        # Warm-up: the upstream pool filled, the maps grown, the code paged in.
        run(*wrk[:1], "-d2s", *wrk[1:])
        time.sleep(0.3)
        run("callgrind_control", "-i", "on", str(proc.pid))
        w = run(*wrk[:1], f"-d{seconds}s", *wrk[1:])
        time.sleep(0.3)
        run("callgrind_control", "-i", "off", str(proc.pid))
        reqs = int(next(l for l in w.stdout.splitlines() if "requests in" in l).split()[0])
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    total = 0
    for f in home.glob("callgrind.out*"):
        for line in f.read_text(errors="replace").splitlines():
            if line.startswith("totals:"):
                total += int(line.split()[1])
                break
    if reqs == 0 or total == 0:
        raise SystemExit(f"nothing measured ({reqs} requests, {total} instructions)")
    result = {"bin": str(bin_dir), "requests": reqs, "instructions": total,
              "per_request": round(total / reqs)}
    if top:
        ann = run("callgrind_annotate", str(out)).stdout.splitlines()
        rows = []
        for line in ann:
            m = re.match(r"^\s*([\d,]+) \(\s*[\d.]+%\)\s+(\S.*?)(?: \[.*\])?$", line)
            if m and m.group(2) != "PROGRAM TOTALS":
                name = m.group(2).split(":", 1)[-1]
                rows.append((round(int(m.group(1).replace(",", "")) / reqs), name))
        result["top"] = rows[:top]
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--no-build", action="store_true", help="use target/release as it is")
    ap.add_argument("--no-install", action="store_true", help="do not apt-get install missing packages")
    ap.add_argument("--seconds", type=float, default=6, help="measured wrk run (default 6)")
    ap.add_argument("--conns", type=int, default=64, help="wrk connections (default 64)")
    ap.add_argument("--top", type=int, default=0, help="also list the N costliest functions")
    ap.add_argument("--compare", type=Path, help="another build's directory (holding ssq, ssqd)")
    a = ap.parse_args()
    ensure_packages(not a.no_install)
    if not a.no_build:
        log("cargo build --release --bins")
        subprocess.run(["cargo", "build", "--release", "--bins"], cwd=ROOT, check=True)
    tmp = Path(tempfile.mkdtemp(prefix="ssq-instr-"))
    origin = Origin(tmp)
    results = []
    try:
        time.sleep(0.3)
        for bin_dir in [ROOT / "target" / "release", *([a.compare] if a.compare else [])]:
            log(f"{bin_dir}: {a.seconds:g} s of 1 KiB requests at {a.conns} connections, under callgrind")
            r = measure(bin_dir, origin, tmp, a.conns, a.seconds, a.top)
            log(f"  {r['requests']} requests, {r['per_request']} instructions per request")
            for cost, name in r.get("top", []):
                log(f"    {cost:7d}  {name}")
            results.append(r)
    finally:
        origin.proc.terminate()
        origin.proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    out = {"conns": a.conns, "body": "1k", "results": results}
    if len(results) == 2:
        out["ratio"] = round(results[0]["per_request"] / results[1]["per_request"], 3)
        log(f"this build / the other: {out['ratio']}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
