#!/usr/bin/env python3
"""Runs README.md's first two commands exactly as written, as a newcomer would on a fresh clone.

The first ```sh block of README.md holds them: the first line runs the service, the second the
tests. The service command runs until the server answers a gRPC health check on the address
the README names (localhost:50051), then the server is sent SIGTERM and the command must exit
cleanly; the test command must pass. Each line is run by the shell as written (its `# ...`
comment is shell syntax too). Whatever the service wrote to the working tree (its database file) is removed.

usage: front_door.py
"""

import os
import re
import signal
import subprocess
import sys
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
ADDRESS = "localhost:50051"
# The first run compiles the whole tree.
START_TIMEOUT_SECONDS = 30 * 60


def readme_commands():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as readme:
        block = re.search(r"```sh\n(.*?)```", readme.read(), flags=re.S)
    if block is None:
        sys.exit("README.md has no ```sh block with the commands to run")
    lines = [line for line in block.group(1).splitlines() if line.strip()]
    if len(lines) != 2:
        sys.exit(f"README.md's first ```sh block should hold two commands, found {lines}")
    return lines


def healthy():
    check = subprocess.run(
        ["grpcurl", "-plaintext", "-max-time", "2", ADDRESS, "grpc.health.v1.Health/Check"],
        capture_output=True,
        text=True,
    )
    return check.returncode == 0 and '"SERVING"' in check.stdout


def run_service(command):
    print(f"$ {command}", flush=True)
    started = time.monotonic()
    created = {name for name in os.listdir(ROOT)}
    service = subprocess.Popen(command, shell=True, cwd=ROOT, start_new_session=True)
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    try:
        while not healthy():
            if service.poll() is not None:
                sys.exit(f"`{command}` exited with {service.returncode} before serving")
            if time.monotonic() > deadline:
                sys.exit(f"`{command}` did not answer a health check on {ADDRESS} in time")
            time.sleep(1)
        print(
            f"front door: the service answers Health/Check SERVING on {ADDRESS}, "
            f"{time.monotonic() - started:.0f} s after the command (build included)",
            flush=True,
        )
        # SIGTERM goes to the server alone, as an orchestrator sends it; the shell and cargo
        # above it pass its exit status on (signalled themselves, they would die of it).
        server = subprocess.run(
            ["pgrep", "-s", str(service.pid), "-x", "student-service"],
            capture_output=True,
            text=True,
        ).stdout.split()
        if len(server) != 1:
            sys.exit(f"expected one student-service process under `{command}`, found {server}")
        os.kill(int(server[0]), signal.SIGTERM)
        code = service.wait(timeout=60)
        if code != 0:
            sys.exit(f"`{command}` exited with {code} after SIGTERM, not 0")
    finally:
        if service.poll() is None:
            os.killpg(service.pid, signal.SIGKILL)
            service.wait()
        for name in set(os.listdir(ROOT)) - created:
            if name.startswith("student-service.db"):
                os.remove(os.path.join(ROOT, name))


def run_tests(command):
    print(f"$ {command}", flush=True)
    started = time.monotonic()
    tests = subprocess.run(command, shell=True, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    sys.stdout.write(tests.stdout)
    print(f"front door: `{command}` took {time.monotonic() - started:.0f} s (build included)", flush=True)
    if tests.returncode != 0:
        sys.exit(f"`{command}` failed with {tests.returncode}")
    # CI has PostgreSQL and nats-server: nothing may be left out as ignored here.
    ignored = re.findall(r"test result: .*?; (\d+) ignored", tests.stdout)
    if not ignored or any(count != "0" for count in ignored):
        sys.exit(f"`{command}` ignored tests in CI, where everything they need runs: {ignored}")
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as readme:
        counts = re.search(
            r"runs (\d+) tests on SQLite alone\. The (\d+) that need a PostgreSQL server, and the"
            r"\s+(\d+)\s+that start PostgreSQL clusters",
            readme.read(),
        )
    if counts is None:
        sys.exit("README.md no longer says how many tests run on SQLite alone and with PostgreSQL")
    passed = sum(int(count) for count in re.findall(r"test result: ok\. (\d+) passed", tests.stdout))
    counted = [int(count) for count in counts.groups()]
    if passed != sum(counted):
        sys.exit(f"README.md counts {' + '.join(map(str, counted))} tests, {passed} ran")


def main():
    serve, test = readme_commands()
    run_service(serve)
    run_tests(test)


if __name__ == "__main__":
    main()
