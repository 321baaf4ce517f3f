#!/usr/bin/env python3
"""The largest BatchAssignCourses a client can send (1,000,000 course ids of 0 in one message,
just under the 1 MiB limit) against a running server: reports the answer (code and message
length), the time it took, the server's CPU time for it and its peak resident memory (VmHWM)
before and after.

usage: oversized_batch.py PID HOST:PORT [IDS]    (docs/reliability.md has the figures)
"""

import json
import os
import subprocess
import sys
import tempfile
import time

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def peak_rss_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise SystemExit(f"no VmHWM for process {pid}")


def main():
    pid, address = int(sys.argv[1]), sys.argv[2]
    ids = int(sys.argv[3]) if len(sys.argv) > 3 else 1_000_000
    with tempfile.NamedTemporaryFile("w", suffix=".json") as request:
        json.dump({"studentId": 1, "courseIds": [0] * ids}, request)
        request.flush()
        rss_before, cpu_before = peak_rss_kib(pid), cpu_seconds(pid)
        started = time.monotonic()
        call = subprocess.run(
            ["grpcurl", "-plaintext", "-max-msg-sz", str(64 << 20), "-d", "@",
             address, "school.v1.StudentService/BatchAssignCourses"],
            stdin=open(request.name),
            capture_output=True,
            text=True,
        )
        elapsed = time.monotonic() - started
        cpu = cpu_seconds(pid) - cpu_before
        rss_after = peak_rss_kib(pid)
    answer = (call.stdout + call.stderr).strip()
    print(f"ids: {ids:,}; answer ({len(answer):,} bytes): {answer[:300]}")
    print(f"client round trip {elapsed * 1000:.0f} ms (grpcurl parsing the JSON included); "
          f"server CPU {cpu * 1000:.0f} ms")
    print(f"server peak RSS (VmHWM): {rss_before / 1024:.1f} MiB before, {rss_after / 1024:.1f} MiB after")


if __name__ == "__main__":
    main()
