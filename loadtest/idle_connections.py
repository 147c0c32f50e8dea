#!/usr/bin/env python3
"""Memory per idle keepalive connection.

Opens N HTTP/1.1 client connections to 127.0.0.1:PORT, sends one request on each and reads its
answer, then leaves them all idle, and prints how much the resident memory of the processes
PIDS grew (their VmRSS summed, as /proc reports it), per connection.

    idle_connections.py [--h2] PORT N PID [PID...]

With --h2 each connection speaks HTTP/2 with prior knowledge (h2c): the preface, SETTINGS,
and one GET on stream 1 whose whole answer is read before the connection is left idle.
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


# HTTP/2 frame types and flags used here (RFC 9113).
DATA, HEADERS, SETTINGS = 0, 1, 4
END_STREAM, ACK, END_HEADERS = 0x1, 0x1, 0x4


def frame(kind, flags, stream, payload=b""):
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload


def recv_exact(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise RuntimeError("the proxy closed a connection")
        data += chunk
    return data


def h2_request(sock):
    """One GET / on stream 1 over h2c; returns once the answer's last frame is read."""
    # HPACK, static table only: :method GET, :scheme http, :path /, :authority "idle".
    block = bytes([0x82, 0x86, 0x84, 0x41, 4]) + b"idle"
    sock.sendall(
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
        + frame(SETTINGS, 0, 0)
        + frame(HEADERS, END_STREAM | END_HEADERS, 1, block)
    )
    while True:
        head = recv_exact(sock, 9)
        length, kind, flags = int.from_bytes(head[:3], "big"), head[3], head[4]
        stream = int.from_bytes(head[5:9], "big") & 0x7FFFFFFF
        recv_exact(sock, length)
        if kind == SETTINGS and not flags & ACK:
            sock.sendall(frame(SETTINGS, ACK, 0))
        if stream == 1 and kind in (DATA, HEADERS) and flags & END_STREAM:
            return


def main():
    args = sys.argv[1:]
    h2 = args[0] == "--h2"
    if h2:
        args = args[1:]
    port, count, pids = int(args[0]), int(args[1]), [int(p) for p in args[2:]]
    resource.setrlimit(resource.RLIMIT_NOFILE, (count + 1024, count + 1024))
    before = rss(pids)
    request = b"GET / HTTP/1.1\r\nhost: idle\r\n\r\n"
    held = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        if h2:
            h2_request(sock)
        else:
            sock.sendall(request)
            read_head(sock)
        held.append(sock)
    time.sleep(1.0)
    after = rss(pids)
    print(
        f"{count} idle {'HTTP/2' if h2 else 'HTTP/1.1'} connections: RSS {before / 2**20:.1f} MiB -> {after / 2**20:.1f} MiB, "
        f"{(after - before) / count:.0f} bytes per connection"
    )


if __name__ == "__main__":
    main()
