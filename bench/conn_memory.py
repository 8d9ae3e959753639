#!/usr/bin/env python3
"""ssqd's memory per open client connection (what issue 4's RSS-at-256-connections
target is made of).

Starts a standalone ssqd the way proxy_bench.py does (its helpers are reused) and an
in-process origin (HTTP/1.1, kept alive), then opens N client connections through the
proxy, each making one request and staying open, and reads ssqd's VmRSS: idle, with the
N connections open after one request each, after 3 more requests on each, and after
they all closed. Each client connection holds one kept-alive upstream connection too,
so "per connection" is per client/upstream pair. Needs the release binaries
(`cargo build --release`); Python 3.11 standard library only.

    python3 bench/conn_memory.py                      # 256 connections, 1 KiB bodies
    python3 bench/conn_memory.py --conns 512 --body 100k
"""

from __future__ import annotations

import argparse
import http.server
import json
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import proxy_bench as pb  # noqa: E402  (its Procs, Ssqd, rss_bytes, SMALL_POLICY)


class Origin(http.server.BaseHTTPRequestHandler):
    """GET /1k or /100k: that many bytes, Content-Length framed, connection kept."""

    protocol_version = "HTTP/1.1"
    # Head and body go out as two writes: without this, Nagle's algorithm and the
    # proxy's delayed ACK hold each answer for 40 ms.
    disable_nagle_algorithm = True

    def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
        size = pb.BODIES.get(self.path.lstrip("/"))
        if size is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(size))
        self.end_headers()
        self.wfile.write(b"a" * size)

    def log_message(self, *args) -> None:
        pass


def request(s: socket.socket, req: bytes) -> None:
    """One request on `s` and its whole answer; fails on anything but a 200."""
    s.sendall(req)
    got = b""
    while b"\r\n\r\n" not in got:
        chunk = s.recv(65536)
        if not chunk:
            raise RuntimeError("the proxy closed the connection before an answer")
        got += chunk
    head, rest = got.split(b"\r\n\r\n", 1)
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"not a 200: {head.splitlines()[0]!r}")
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    while len(rest) < length:
        chunk = s.recv(65536)
        if not chunk:
            raise RuntimeError("the answer was cut short")
        rest += chunk


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--conns", type=int, default=256, help="client connections held open (default 256)")
    ap.add_argument("--body", choices=sorted(pb.BODIES), default="1k", help="response body (default 1k)")
    ap.add_argument("--bin-dir", type=Path, default=pb.ROOT / "target" / "release",
                    help="where ssq and ssqd are (default target/release)")
    args = ap.parse_args()
    # ssq runs in the node's directory: a relative --bin-dir would name nothing there.
    args.bin_dir = args.bin_dir.resolve()
    for b in ("ssq", "ssqd"):
        if not (args.bin_dir / b).exists():
            print(f"error: {args.bin_dir / b} is missing: run `cargo build --release` first", file=sys.stderr)
            return 2

    origin = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Origin)
    origin.daemon_threads = True
    threading.Thread(target=origin.serve_forever, daemon=True).start()
    host = f"127.0.0.1:{origin.server_address[1]}"
    req = f"GET http://{host}/{args.body} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()

    procs = pb.Procs()
    socks: list[socket.socket] = []
    try:
        with tempfile.TemporaryDirectory(prefix="ssq-conn-memory-") as tmp:
            ssqd = pb.Ssqd(args.bin_dir, Path(tmp), "conn-memory", pb.SSQD_IP, procs, timeout=30)
            ssqd.start()
            ssqd.apply(pb.SMALL_POLICY)
            time.sleep(1)  # the free heap is handed back just after an apply
            mib = lambda: pb.rss_bytes(ssqd.proc.pid) / 2**20  # noqa: E731
            idle = mib()
            proxy_host, proxy_port = ssqd.addr.rsplit(":", 1)
            for _ in range(args.conns):
                s = socket.create_connection((proxy_host, int(proxy_port)), timeout=30)
                request(s, req)
                socks.append(s)
            time.sleep(0.5)
            open_1 = mib()
            for _ in range(3):
                for s in socks:
                    request(s, req)
            time.sleep(0.5)
            open_4 = mib()
            for s in socks:
                s.close()
            socks.clear()
            time.sleep(1)
            closed = mib()
            per = lambda x: (x - idle) * 1024 / args.conns  # noqa: E731
            print(f"ssqd RSS, {args.conns} connections, {args.body} bodies:")
            print(f"  idle                                  {idle:7.2f} MiB")
            print(f"  open, after 1 request each            {open_1:7.2f} MiB  (+{per(open_1):.1f} KiB per connection)")
            print(f"  open, after 4 requests each           {open_4:7.2f} MiB  (+{per(open_4):.1f} KiB per connection)")
            print(f"  all closed                            {closed:7.2f} MiB")
            print(json.dumps({"conns": args.conns, "body": args.body, "idle_mib": round(idle, 2),
                              "open_1_mib": round(open_1, 2), "open_4_mib": round(open_4, 2),
                              "closed_mib": round(closed, 2), "kib_per_conn_1": round(per(open_1), 1),
                              "kib_per_conn_4": round(per(open_4), 1)}))
    finally:
        for s in socks:
            s.close()
        procs.stop_all()
        origin.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
