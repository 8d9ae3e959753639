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
    python3 bench/proxy_instructions.py --no-build --nginx-proxy --cache-sim  # nginx too; cache misses

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


def wait_port(addr: str, proc: subprocess.Popen, what: str, seconds: float = 60) -> None:
    host, port = addr.rsplit(":", 1)
    deadline = time.monotonic() + seconds
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"{what} ended before it listened (under valgrind)")
        try:
            socket.create_connection((host, int(port)), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit(f"{what} did not listen on {addr} in {seconds:g} s")
            time.sleep(0.2)


# Set by --cache-sim: callgrind also simulates the caches (first level, last level).
CACHE_SIM: list[str] = []
# Its event names in callgrind's output, and what this script calls them.
CACHE_EVENTS = {"I1mr": "l1i_misses", "D1mr": "l1d_read_misses", "D1mw": "l1d_write_misses",
                "ILmr": "ll_instr_misses", "DLmr": "ll_read_misses", "DLmw": "ll_write_misses"}


def under_callgrind(label: str, argv: list[str], home: Path, origin: Origin, conns: int,
                    seconds: float, top: int, ready, env: dict | None = None) -> dict:
    """Run `argv` under callgrind; `ready(proc)` returns the proxy's address once it
    serves. wrk warms it up, then callgrind counts a measured run of 1 KiB requests."""
    out = home / "callgrind.out"
    proc = subprocess.Popen(["valgrind", "--tool=callgrind", "--instr-atstart=no", *CACHE_SIM,
                             f"--callgrind-out-file={out}", *argv],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    try:
        proxy = ready(proc)
        lua = home / "wrk.lua"
        lua.write_text(f'wrk.path = "http://{origin.addr}/1k"\nwrk.headers["Host"] = "{origin.addr}"\n')
        wrk = ["wrk", f"-t{min(2, conns)}", f"-c{conns}", "-s", str(lua), f"http://{proxy}/"]
        # Warm-up: the upstream pool filled, the maps grown, the code paged in.
        run(*wrk[:1], "-d2s", *wrk[1:])
        time.sleep(0.3)
        run("callgrind_control", "-i", "on", str(proc.pid))
        w = run(*wrk[:1], f"-d{max(1, round(seconds))}s", *wrk[1:])
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
    totals: dict[str, int] = {}
    for f in home.glob("callgrind.out*"):
        events: list[str] = []
        for line in f.read_text(errors="replace").splitlines():
            if line.startswith("events:"):
                events = line.split()[1:]
            elif line.startswith("totals:"):
                for name, v in zip(events, line.split()[1:]):
                    totals[name] = totals.get(name, 0) + int(v)
                break
    total = totals.get("Ir", 0)
    if reqs == 0 or total == 0:
        raise SystemExit(f"nothing measured ({reqs} requests, {total} instructions)")
    result = {"bin": label, "requests": reqs, "instructions": total,
              "per_request": round(total / reqs), "home": str(home)}
    for name, key in CACHE_EVENTS.items():
        if name in totals:
            result[f"{key}_per_request"] = round(totals[name] / reqs, 1)
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

    def ready(proc: subprocess.Popen) -> str:
        info = None
        while info is None:
            line = proc.stdout.readline()
            if not line:
                raise SystemExit("ssqd ended before it was ready (under valgrind)")
            if line.startswith(b"{"):
                info = json.loads(line)
        pol = home / "policy.yaml"
        pol.write_text("access:\n  allow:\n    - clients: [127.0.0.0/8]\n"
                       "rules:\n  - name: x\n    domains: [blocked.example]\n    action: deny\n")
        run(ssq, "policy", "apply", str(pol), "--master", info["portal"], env=env)
        return info["proxy"]

    return under_callgrind(str(bin_dir), [str(bin_dir / "ssqd"), "--config", str(conf)], home, origin,
                           conns, seconds, top, ready, env)


def measure_nginx_proxy(origin: Origin, tmp: Path, conns: int, seconds: float, top: int,
                        logged: bool) -> dict:
    """nginx as a reverse proxy to the origin (proxy_bench.py's nginx-proxy: one worker,
    a keep-alive upstream pool), in one process (master_process off) so that callgrind
    sees its worker. `logged`: an access-log line per request, buffered (64 KiB, flushed
    every second) as ssqd's writer batches its lines; else no access log, as in
    proxy_bench.py."""
    name = "nginx-proxy-logged" if logged else "nginx-proxy"
    d = tmp / name
    (d / "tmp").mkdir(parents=True)
    d.chmod(0o777)
    addr = f"127.0.0.1:{free_port('127.0.0.1')}"
    access = f"access_log {d}/access.log combined buffer=64k flush=1s;" if logged else "access_log off;"
    (d / "nginx.conf").write_text(
        f"worker_processes 1; daemon off; master_process off; pid {d}/nginx.pid;\n"
        f"error_log {d}/error.log warn;\nevents {{ worker_connections 4096; }}\n"
        f"http {{ {access} keepalive_requests 100000000; keepalive_timeout 120s;\n"
        f"client_body_temp_path {d}/tmp/b; proxy_temp_path {d}/tmp/p; fastcgi_temp_path {d}/tmp/f;\n"
        f"uwsgi_temp_path {d}/tmp/u; scgi_temp_path {d}/tmp/s;\n"
        f"upstream origin {{ server {origin.addr}; keepalive 512; }}\n"
        f"server {{ listen {addr}; location / {{ proxy_pass http://origin; proxy_http_version 1.1;\n"
        '  proxy_set_header Connection ""; } } }\n')
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"

    def ready(proc: subprocess.Popen) -> str:
        wait_port(addr, proc, name)
        return addr

    return under_callgrind(name, [nginx, "-p", str(d), "-e", str(d / "error.log"), "-c", str(d / "nginx.conf")],
                           d, origin, conns, seconds, top, ready)


def misses(r: dict) -> str:
    """The simulated cache misses per request of a result, as text ('' without them)."""
    parts = [f"{key.replace('_', ' ')} {r[key + '_per_request']:g}" for key in CACHE_EVENTS.values()
             if key + "_per_request" in r]
    return "; per request: " + ", ".join(parts) if parts else ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--no-build", action="store_true", help="use target/release as it is")
    ap.add_argument("--no-install", action="store_true", help="do not apt-get install missing packages")
    ap.add_argument("--seconds", type=float, default=6, help="measured wrk run (default 6)")
    ap.add_argument("--conns", type=int, default=64, help="wrk connections (default 64)")
    ap.add_argument("--top", type=int, default=0, help="also list the N costliest functions")
    ap.add_argument("--compare", type=Path, help="another build's directory (holding ssq, ssqd)")
    ap.add_argument("--cache-sim", action="store_true",
                    help="also simulate the caches: misses per request (slower; a model, not the CPU)")
    ap.add_argument("--nginx-proxy", action="store_true",
                    help="also count nginx as a reverse proxy, without and with an access log (reference)")
    ap.add_argument("--keep", type=Path,
                    help="copy each build's callgrind profile here (for callgrind_annotate --tree=caller)")
    a = ap.parse_args()
    if a.cache_sim:
        CACHE_SIM.append("--cache-sim=yes")
    ensure_packages(not a.no_install)
    if not a.no_build:
        log("cargo build --release --bins")
        subprocess.run(["cargo", "build", "--release", "--bins"], cwd=ROOT, check=True)
    tmp = Path(tempfile.mkdtemp(prefix="ssq-instr-"))
    origin = Origin(tmp)
    results = []
    out_ref: list[dict] = []
    try:
        time.sleep(0.3)
        for bin_dir in [ROOT / "target" / "release", *([a.compare] if a.compare else [])]:
            log(f"{bin_dir}: {a.seconds:g} s of 1 KiB requests at {a.conns} connections, under callgrind")
            r = measure(bin_dir, origin, tmp, a.conns, a.seconds, a.top)
            log(f"  {r['requests']} requests, {r['per_request']} instructions per request{misses(r)}")
            for cost, name in r.get("top", []):
                log(f"    {cost:7d}  {name}")
            results.append(r)
            if a.keep:
                a.keep.mkdir(parents=True, exist_ok=True)
                for i, f in enumerate(sorted(Path(r["home"]).glob("callgrind.out*"))):
                    kept = a.keep / f"callgrind.{len(results)}.{i}.out"
                    shutil.copyfile(f, kept)
                    log(f"  kept {kept}")
            del r["home"]
        if a.nginx_proxy:
            for logged in (False, True):
                log(f"nginx as a reverse proxy{', logging each request' if logged else ''}: "
                    f"{a.seconds:g} s under callgrind")
                r = measure_nginx_proxy(origin, tmp, a.conns, a.seconds, a.top, logged)
                log(f"  {r['requests']} requests, {r['per_request']} instructions per request{misses(r)}")
                for cost, name in r.get("top", []):
                    log(f"    {cost:7d}  {name}")
                del r["home"]
                out_ref.append(r)
    finally:
        origin.proc.terminate()
        origin.proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    out = {"conns": a.conns, "body": "1k", "results": results}
    if out_ref:
        out["nginx_proxy"] = out_ref
    if len(results) == 2:
        out["ratio"] = round(results[0]["per_request"] / results[1]["per_request"], 3)
        log(f"this build / the other: {out['ratio']}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
