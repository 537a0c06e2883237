"""The pipelining flood of tests/hostile/ and bench/pipelining.py, as a process of its own.

``python tests/hostile/flood.py --port P --path /MEow.. --connections 4 --batch 2000 --seconds 4``:
each connection writes ``batch`` pipelined GETs of ``path`` per write, in a loop, for
``seconds``, while a thread reads (and counts) the answers; it prints one JSON line and
ends by itself. Standard library only, so that it starts in milliseconds: the tests'
phases are short. It connects to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import threading
import time


def flood(port: int, path: str, connections: int, batch: int, seconds: float) -> dict[str, float]:
    """Write ``batch`` pipelined GETs of ``path`` per write on each connection for ``seconds``."""
    data = f"GET {path} HTTP/1.1\r\nHost: ocsp.test\r\n\r\n".encode() * batch
    answers = [0] * connections
    stop = time.monotonic() + seconds
    socks = [socket.create_connection(("127.0.0.1", port), timeout=seconds + 5) for _ in range(connections)]

    def read(i: int) -> None:
        sock, tail = socks[i], b""
        while True:
            try:
                chunk = sock.recv(1 << 20)
            except OSError:
                return
            if not chunk:
                return
            seen = tail + chunk
            answers[i] += seen.count(b"HTTP/1.1 200 ")
            tail = seen[-16:]  # a status line cut in two is counted once, in the next chunk
            answers[i] -= tail.count(b"HTTP/1.1 200 ")

    def write(i: int) -> None:
        while time.monotonic() < stop:
            try:
                socks[i].sendall(data)
            except OSError:
                return

    readers = [threading.Thread(target=read, args=(i,), daemon=True) for i in range(connections)]
    writers = [threading.Thread(target=write, args=(i,)) for i in range(connections)]
    started = time.monotonic()
    for thread in (*readers, *writers):
        thread.start()
    for thread in writers:
        thread.join()
    elapsed = time.monotonic() - started
    for sock in socks:
        sock.close()
    return {"answers": sum(answers), "seconds": elapsed, "connections": connections}


def main() -> int:
    parser = argparse.ArgumentParser(description="the pipelining flood (tests/hostile/flood.py)")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", required=True)
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--batch", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    print(json.dumps(flood(args.port, args.path, args.connections, args.batch, args.seconds)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
