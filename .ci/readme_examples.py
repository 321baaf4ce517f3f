#!/usr/bin/env python3
"""Runs every grpcurl example of README.md and docs/*.md against a live server and checks its
output.

Each ```console block whose first line is `$ grpcurl ...` (or `$ curl ...`, for the metrics
endpoint, which the server serves on METRICS_IN_README) is one example: the command, then the
exact output expected (stdout and stderr). Examples run on one fresh database in DOCUMENTS order
(README.md first, whose tour docs/api.md continues, then the other files of docs/ by name), each
file top to bottom, so they may build on each other. Timestamps and event ids (version 8 UUIDs, different in every database) are
the only things normalised before comparing.

usage: readme_examples.py BINARY DATABASE_URL [--write]

--write replaces each example's expected output in its file with what grpcurl printed (for when
the API changes on purpose); review the diff before committing it.
"""

import glob
import os
import re
import socket
import subprocess
import sys
import time

ADDRESS_IN_README = "localhost:50051"
METRICS_IN_README = "localhost:9090"
TIMESTAMP = re.compile(r'"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z"')
# Event ids are version 8 UUIDs derived from a random namespace of the database. Only that form
# is normalised, so an example showing another version (a v4 id) fails the comparison.
UUID = re.compile(r'"[0-9a-f]{8}-[0-9a-f]{4}-8[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"')


BLOCK = re.compile(r"```console\n(\$ (?:grpcurl|curl) .*?)```", flags=re.S)
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def documents():
    """README.md, docs/api.md, then the rest of docs/ by name."""
    first = ["README.md", "docs/api.md"]
    rest = sorted(os.path.relpath(path, ROOT) for path in glob.glob(os.path.join(ROOT, "docs", "*.md")))
    return first + [path for path in rest if path not in first]


def parse(block):
    """(command as the shell runs it, its lines in README, expected output)."""
    lines = block.rstrip("\n").split("\n")
    command_lines = [lines.pop(0)]
    while command_lines[-1].endswith("\\") and lines:
        command_lines.append(lines.pop(0))
    command = " ".join(line.rstrip("\\").strip() for line in command_lines)[2:]
    return command, "\n".join(command_lines), "\n".join(lines)


def tidy(text):
    return "\n".join(line.rstrip() for line in text.strip().split("\n"))


def normalise(text):
    return tidy(UUID.sub('"<uuid>"', TIMESTAMP.sub('"<timestamp>"', text)))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_serving(address, server):
    deadline = time.time() + 30
    while time.time() < deadline:
        if server.poll() is not None:
            sys.exit(f"the server exited with {server.returncode} before serving")
        check = subprocess.run(
            ["grpcurl", "-plaintext", address, "grpc.health.v1.Health/Check"],
            capture_output=True, text=True)
        if '"SERVING"' in check.stdout:
            return
        time.sleep(0.2)
    sys.exit("the server did not become SERVING within 30 s")


def main():
    binary, database_url = sys.argv[1], sys.argv[2]
    write = "--write" in sys.argv
    address = f"127.0.0.1:{free_port()}"
    metrics = f"127.0.0.1:{free_port()}"
    env = dict(os.environ, DATABASE_URL=database_url, LISTEN_ADDR=address, METRICS_LISTEN=metrics,
               RUST_LOG="warn")
    server = subprocess.Popen([binary], env=env)
    passed = failed = 0
    try:
        wait_until_serving(address, server)
        for document in documents():
            path = os.path.join(ROOT, document)

            def check(match):
                nonlocal passed, failed
                command, shown, expected = parse(match.group(1))
                run = subprocess.run(
                    command.replace(ADDRESS_IN_README, address).replace(METRICS_IN_README, metrics),
                    shell=True, capture_output=True, text=True, timeout=30)
                actual = run.stdout + run.stderr
                if normalise(actual) == normalise(expected):
                    passed += 1
                else:
                    failed += 1
                    print(f"MISMATCH in {document}: {command}\n--- {document} says\n{expected}"
                          f"\n--- grpcurl said\n{actual}")
                return f"```console\n{shown}\n{tidy(actual)}\n```"

            updated = BLOCK.sub(check, open(path).read())
            if write:
                open(path, "w").write(updated)
    finally:
        server.terminate()
        server.wait(timeout=15)
    if passed == 0:
        sys.exit("no grpcurl examples found in README.md or docs/")
    print(f"readme-examples: {passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
