#!/usr/bin/env python3
"""Training load for the profile-guided build (scripts/build-pgo).

Runs an instrumented ssqd (standalone node, the benchmark's small policy) in front of a
local nginx and sends it, with wrk, what proxy_bench.py measures: 1 KiB and 100 KiB
bodies at 64 connections, 1 KiB at 256 and over one connection; then a few requests it
refuses (blocked domain, client Host mismatch) so the refusal paths are not laid out as
if never taken. ssqd is stopped with SIGTERM and must exit 0: the profile is written as
it exits.

    python3 bench/pgo_train.py --bin-dir target/pgo-gen/release

Python 3.11 standard library only; uses proxy_bench.py's nginx, ssqd and wrk helpers
(installs wrk, nginx and squid from Debian when missing, as root).
"""

from __future__ import annotations

import argparse
import socket
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import proxy_bench as pb  # noqa: E402

CELLS = (("1k", 64), ("100k", 64), ("1k", 256), ("1k", 1))


def refused(proxy: str, request: bytes) -> int:
    """Send one raw request; the answer's status code (0 if none)."""
    host, port = proxy.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(request)
        head = s.recv(4096).split(b"\r\n", 1)[0].split()
        return int(head[1]) if len(head) > 1 and head[1].isdigit() else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin-dir", required=True, help="the instrumented build (holding ssq and ssqd)")
    ap.add_argument("--seconds", type=float, default=5, help="seconds of wrk per cell (default 5)")
    args = ap.parse_args()
    pb.ensure_packages()
    procs = pb.Procs()
    root = Path(tempfile.mkdtemp(prefix="ssq-pgo-"))
    root.chmod(0o755)
    try:
        nginx = pb.Nginx(root, procs, "1")
        nginx.start()
        ssqd = pb.Ssqd(Path(args.bin_dir).resolve(), root, "pgo", pb.SSQD_IP, procs, 60, 1)
        ssqd.start()
        ssqd.apply(pb.SMALL_POLICY)
        for body, conns in CELLS:
            script = pb.wrk_script(root, f"pgo-{body}", nginx.url(body), nginx.addr)
            r = pb.run_wrk(f"http://{ssqd.addr}/", script, conns, 2, args.seconds)
            pb.log(f"trained {body}/{conns}: {r['requests']} requests")
        blocked = refused(ssqd.addr, b"GET http://blocked.example/ HTTP/1.1\r\nHost: blocked.example\r\n\r\n")
        mismatch = refused(ssqd.addr, f"GET {nginx.url('1k')} HTTP/1.1\r\nHost: other.example\r\n\r\n".encode())
        pb.log(f"refusals: blocked domain {blocked}, Host mismatch {mismatch}")
    finally:
        stopped = procs.stop_all()
    code = stopped["exit"].get("ssqd-pgo")
    if code != 0:
        print(f"pgo_train: ssqd exited {code}, not 0: its profile may be missing", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
