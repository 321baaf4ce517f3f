#!/usr/bin/env python3
"""Half-open connections against a running server: opens N connections to the gRPC port that
send half an HTTP/2 preface and stop, then reports the server's open descriptors and CPU while
they are held, the latency of a normal client's Health/Check (grpcurl) at the same time, and how
long the server takes to close them all (--handshake-timeout).

usage: half_open.py PID HOST:PORT [N]    (docs/reliability.md has the figures)
"""

import os
import socket
import subprocess
import sys
import time

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def descriptors(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def health_check_ms(address):
    started = time.monotonic()
    subprocess.run(
        ["grpcurl", "-plaintext", address, "grpc.health.v1.Health/Check"],
        check=True,
        capture_output=True,
    )
    return (time.monotonic() - started) * 1000


def main():
    pid, address = int(sys.argv[1]), sys.argv[2]
    count = int(sys.argv[3]) if len(sys.argv) > 3 else 1000
    host, port = address.rsplit(":", 1)
    baseline = sorted(health_check_ms(address) for _ in range(5))[2]
    idle_fds = descriptors(pid)
    cpu_before = cpu_seconds(pid)
    time.sleep(2)
    idle_cpu = (cpu_seconds(pid) - cpu_before) / 2
    held = []
    for _ in range(count):
        connection = socket.create_connection((host, int(port)))
        connection.sendall(b"PRI * HTTP/2.0\r\n")
        held.append(connection)
    opened = time.monotonic()
    time.sleep(0.5)
    fds = descriptors(pid)
    cpu_before = cpu_seconds(pid)
    time.sleep(2)
    cpu = (cpu_seconds(pid) - cpu_before) / 2
    during = sorted(health_check_ms(address) for _ in range(5))[2]
    for connection in held:
        connection.settimeout(60)
        try:
            while connection.recv(1024):
                pass
        except (ConnectionResetError, socket.timeout):
            pass
    closed_after = time.monotonic() - opened
    time.sleep(0.5)
    print(
        f"{count} half-open connections: server descriptors {idle_fds} idle -> {fds} held; "
        f"CPU {idle_cpu:.3f} cores idle, {cpu:.3f} while held; Health/Check by grpcurl {baseline:.0f} ms before, "
        f"{during:.0f} ms during (median of 5); all closed by the server after "
        f"{closed_after:.1f} s; descriptors after {descriptors(pid)}"
    )


if __name__ == "__main__":
    main()
