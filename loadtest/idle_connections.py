#!/usr/bin/env python3
"""Memory per idle keepalive connection.

Opens N HTTP/1.1 client connections to 127.0.0.1:PORT, sends one request on each and reads its
answer, then leaves them all idle, and prints how much the resident memory of the processes
PIDS grew (their VmRSS summed, as /proc reports it), per connection.

    idle_connections.py PORT N PID [PID...]
"""
import resource
import socket
import sys
import time


def rss(pids):
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
    return total


def read_head(sock):
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise RuntimeError("the proxy closed a connection")
        data += chunk


def main():
    port, count, pids = int(sys.argv[1]), int(sys.argv[2]), [int(p) for p in sys.argv[3:]]
    resource.setrlimit(resource.RLIMIT_NOFILE, (count + 1024, count + 1024))
    before = rss(pids)
    request = b"GET / HTTP/1.1\r\nhost: idle\r\n\r\n"
    held = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(request)
        read_head(sock)
        held.append(sock)
    time.sleep(1.0)
    after = rss(pids)
    print(
        f"{count} idle connections: RSS {before / 2**20:.1f} MiB -> {after / 2**20:.1f} MiB, "
        f"{(after - before) / count:.0f} bytes per connection"
    )


if __name__ == "__main__":
    main()
