#!/usr/bin/env python3
"""ssqd's CONNECT tunnels: throughput and CPU per GB, and memory per open tunnel.

Starts a standalone ssqd the way proxy_bench.py does (its helpers are reused), an
in-process origin that sends N bytes on each connection it accepts, and one that never
sends. A client opens a CONNECT tunnel through ssqd to the first and reads everything,
several times: the figures are ssqd's CPU seconds (utime+stime) per GB moved and the
wall-clock rate. Then it opens M quiet tunnels (to the second: nothing in flight), then
M tunnels whose origins stream into them while the clients read nothing (the socket
buffers fill, the tunnels stall), and reads ssqd's VmRSS before and after each set:
user-space memory only (what a stalled tunnel keeps in its pipes or socket buffers is
kernel memory, not in it). Needs the release binaries (`cargo build --release`);
Python 3.11 standard library only; no root needed.

    python3 bench/tunnel_bench.py                      # 2 GB x 3, 256 stalled tunnels
    python3 bench/tunnel_bench.py --gb 5 --reps 5 --tunnels 1024
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import proxy_bench as pb  # noqa: E402  (its Procs, Ssqd, rss_bytes, cpu_seconds, ACCESS)


def origin(size: int) -> tuple[socket.socket, int]:
    """A listener that sends `size` bytes on every connection, then closes it."""
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(1024)
    chunk = b"x" * (1 << 20)

    def serve(c: socket.socket) -> None:
        left = size
        try:
            while left > 0:
                left -= c.send(chunk[: min(left, len(chunk))])
        except OSError:
            pass
        c.close()

    def accept() -> None:
        while True:
            try:
                c, _ = ls.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(c,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return ls, ls.getsockname()[1]


def silent() -> tuple[socket.socket, int]:
    """A listener that accepts connections and never sends (a quiet tunnel's far end)."""
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(4096)
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                held.append(ls.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    return ls, ls.getsockname()[1]


def open_tunnel(proxy: tuple[str, int], port: int) -> socket.socket:
    """A CONNECT tunnel to 127.0.0.1:`port`, its 200 read."""
    s = socket.create_connection(proxy, timeout=30)
    s.sendall(f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        b = s.recv(1)
        if not b:
            raise RuntimeError("the proxy closed the connection before answering the CONNECT")
        head += b
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"CONNECT not answered 200: {head.splitlines()[0]!r}")
    return s


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gb", type=float, default=2.0, help="GB (10^9 bytes) per transfer (default 2)")
    ap.add_argument("--reps", type=int, default=3, help="transfers (default 3)")
    ap.add_argument("--tunnels", type=int, default=256, help="stalled tunnels for the memory figure (default 256)")
    ap.add_argument("--bin-dir", type=Path, default=pb.ROOT / "target" / "release",
                    help="where ssq and ssqd are (default target/release)")
    args = ap.parse_args()
    # ssq runs in the node's directory: a relative --bin-dir would name nothing there.
    args.bin_dir = args.bin_dir.resolve()
    for b in ("ssq", "ssqd"):
        if not (args.bin_dir / b).exists():
            print(f"error: {args.bin_dir / b} is missing: run `cargo build --release` first", file=sys.stderr)
            return 2

    size = int(args.gb * 1e9)
    big, big_port = origin(size)
    quiet, quiet_port = silent()
    procs = pb.Procs()
    socks: list[socket.socket] = []
    try:
        with tempfile.TemporaryDirectory(prefix="ssq-tunnel-bench-") as tmp:
            ssqd = pb.Ssqd(args.bin_dir, Path(tmp), "tunnel-bench", pb.SSQD_IP, procs, timeout=30)
            ssqd.start()
            ssqd.apply(pb.ACCESS + f"connect: {{ ports: [443, {big_port}, {quiet_port}] }}\nrules: []\n")
            host, port = ssqd.addr.rsplit(":", 1)
            proxy = (host, int(port))
            pid = ssqd.proc.pid
            runs = []
            buf = bytearray(1 << 20)
            for _ in range(args.reps):
                s = open_tunnel(proxy, big_port)
                c0, t0, got = pb.cpu_seconds(pid), time.monotonic(), 0
                while True:
                    n = s.recv_into(buf)
                    if not n:
                        break
                    got += n
                wall, cpu = time.monotonic() - t0, pb.cpu_seconds(pid) - c0
                s.close()
                if got != size:
                    raise RuntimeError(f"the tunnel carried {got} bytes of {size}")
                runs.append({"gb_s": got / wall / 1e9, "cpu_s_per_gb": cpu / (got / 1e9)})
                print(f"  {got / 1e9:.2f} GB in {wall:.2f} s: {runs[-1]['gb_s']:.2f} GB/s, "
                      f"ssqd {runs[-1]['cpu_s_per_gb']:.3f} CPU-s/GB", flush=True)
            time.sleep(1)
            idle = pb.rss_bytes(pid) / 2**20
            for _ in range(args.tunnels):
                socks.append(open_tunnel(proxy, quiet_port))
            time.sleep(2)
            with_quiet = pb.rss_bytes(pid) / 2**20
            for _ in range(args.tunnels):
                socks.append(open_tunnel(proxy, big_port))
            time.sleep(2)
            stalled = pb.rss_bytes(pid) / 2**20
            per_quiet = (with_quiet - idle) * 1024 / args.tunnels
            per = (stalled - with_quiet) * 1024 / args.tunnels
            med = lambda k: statistics.median(r[k] for r in runs)  # noqa: E731
            print(f"ssqd CONNECT tunnels: median {med('gb_s'):.2f} GB/s, {med('cpu_s_per_gb'):.3f} CPU-s/GB "
                  f"over {args.reps} x {args.gb:g} GB")
            print(f"  RSS {idle:.2f} MiB -> {with_quiet:.2f} MiB with {args.tunnels} quiet tunnels "
                  f"(+{per_quiet:.1f} KiB per tunnel)")
            print(f"  -> {stalled:.2f} MiB with {args.tunnels} stalled tunnels more "
                  f"(+{per:.1f} KiB of user-space memory per tunnel)")
            print(json.dumps({"gb": args.gb, "reps": args.reps, "gb_s": round(med("gb_s"), 3),
                              "cpu_s_per_gb": round(med("cpu_s_per_gb"), 3), "runs": runs,
                              "tunnels": args.tunnels, "rss_idle_mib": round(idle, 2),
                              "rss_quiet_mib": round(with_quiet, 2), "kib_per_quiet_tunnel": round(per_quiet, 1),
                              "rss_stalled_mib": round(stalled, 2), "kib_per_stalled_tunnel": round(per, 1)}))
    finally:
        for s in socks:
            s.close()
        procs.stop_all()
        big.close()
        quiet.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
