#!/usr/bin/env python3
"""How close the service gets to what gRPC and PostgreSQL allow, on one PostgreSQL database.

1. Starts the release server on a fresh database and runs the load generator (it seeds 1,000
   students with 10 courses each plus open courses, then drives Health/Check, ListCourses and
   AssignCourse, 16 calls in flight over 4 connections).
2. Runs pgbench on that same database with the very SQL the store runs, read from the Rust
   sources at run time (src/store/courses.rs SELECT_PAGE_OF_STUDENT, src/store/enrollments.rs
   INSERT), prepared, with as many clients as the server's pool has connections (8). The INSERT
   enrolls random pairs over 2,000 courses of its own, so that nearly every one creates a row as
   the load generator's calls do, and its rate is the rows it inserted per second.
3. Prints, for each RPC, the ideal a server adding no cost of its own between the two would
   reach, 1 / (1/pgbench + 1/health), and the service's ratio to it.

usage: bench/pg_ideal.py [POSTGRES_BASE_URL] [SECONDS]
  POSTGRES_BASE_URL: postgres://USER@HOST:PORT (default postgres://postgres@127.0.0.1:5432);
  a database bench_ideal is dropped and created there. Needs cargo build --release and pgbench.
"""

import os
import re
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
POOL_CONNECTIONS = 8


def rust_const(path, name):
    """The value of `const NAME: &str = "...";` in a Rust file, escapes and line continuations
    resolved as rustc does."""
    source = open(os.path.join(ROOT, path)).read()
    match = re.search(rf'const {name}: &str =\s*"', source)
    if not match:
        sys.exit(f"{name} not found in {path}: the store changed, update this script")
    i, out = match.end(), []
    while source[i] != '"':
        if source[i] == "\\":
            following = source[i + 1]
            if following == "\n":  # a continuation: skip the newline and leading whitespace
                i += 2
                while source[i] in " \t\n":
                    i += 1
                continue
            out.append({"n": "\n", "t": "\t", "\\": "\\", '"': '"', "'": "'"}[following])
            i += 2
            continue
        out.append(source[i])
        i += 1
    return "".join(out)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def psql(url, *commands):
    args = ["psql", url, "-v", "ON_ERROR_STOP=1", "-qAt"]
    for command in commands:
        args += ["-c", command]
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout.strip()


def service_figures(url, seconds):
    port = free_port()
    env = dict(os.environ, DATABASE_URL=url, LISTEN_ADDR=f"127.0.0.1:{port}", RUST_LOG="warn")
    server = subprocess.Popen([os.path.join(ROOT, "target/release/student-service")], env=env)
    try:
        time.sleep(1.5)
        run = subprocess.run(
            [os.path.join(ROOT, "target/release/loadgen"), "--target", f"http://127.0.0.1:{port}",
             "--rpc", "health,list-courses,assign-course", "--duration", f"{seconds}s"],
            check=True, capture_output=True, text=True)
    finally:
        server.terminate()
        server.wait(timeout=15)
    figures = {}
    for line in run.stdout.splitlines():
        parts = line.split()
        if parts and parts[0] in ("Health", "ListCourses", "AssignCourse"):
            figures[parts[0]] = float(parts[2])
    return figures


def pgbench(url, script, seconds):
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as f:
        f.write(script)
    try:
        run = subprocess.run(
            ["pgbench", "-n", "-M", "prepared", "-c", str(POOL_CONNECTIONS), "-j", "2",
             "-T", str(seconds), "-f", f.name, url], check=True, capture_output=True, text=True)
    finally:
        os.unlink(f.name)
    match = re.search(r"tps = ([\d.]+) \(without initial connection time\)", run.stdout)
    if not match:
        sys.exit(f"no tps in pgbench's output:\n{run.stdout}\n{run.stderr}")
    if "aborted" in run.stdout + run.stderr:
        sys.exit(f"pgbench clients aborted:\n{run.stdout}\n{run.stderr}")
    return float(match.group(1))


def main():
    base = sys.argv[1] if len(sys.argv) > 1 else "postgres://postgres@127.0.0.1:5432"
    seconds = int(sys.argv[2]) if len(sys.argv) > 2 else 10
    psql(f"{base}/postgres", "DROP DATABASE IF EXISTS bench_ideal WITH (FORCE)",
         "CREATE DATABASE bench_ideal")
    url = f"{base}/bench_ideal"

    service = service_figures(url, seconds)
    # The students the load generator enrolled in 10 courses, and its open courses.
    students = psql(url, "SELECT min(student_id) || ' ' || max(student_id) FROM student_courses "
                         "WHERE course_id IN (SELECT id FROM courses WHERE code LIKE 'C%')").split()
    # Courses of pgbench's own, so that its random pairs are almost all new enrollments, as the
    # load generator's are (the load generator's 200 open courses are mostly taken by then).
    psql(url, "INSERT INTO courses (code, title, title_folded, capacity, create_time) "
              "SELECT 'PGBENCH-' || g, 'pgbench ' || g, 'PGBENCH ' || g, 0, 0 "
              "FROM generate_series(1, 2000) AS g")
    courses = psql(url, "SELECT min(id) || ' ' || max(id) FROM courses WHERE code LIKE 'PGBENCH-%'").split()

    list_sql = rust_const("src/store/courses.rs", "SELECT_PAGE_OF_STUDENT")
    insert_sql = rust_const("src/store/enrollments.rs", "INSERT")
    # $1 student, $2 the page's keyset (0: first page), $3 the fetch limit (page of 50, plus one)
    list_script = (f"\\set student random({students[0]}, {students[1]})\n"
                   + list_sql.replace("$1", ":student").replace("$2", "0").replace("$3", "51") + ";\n")
    # $1 student, $2 course (random pairs of pgbench's courses), $3 enroll time
    insert_script = (f"\\set student random({students[0]}, {students[1]})\n"
                     f"\\set course random({courses[0]}, {courses[1]})\n"
                     + insert_sql.replace("$1", ":student").replace("$2", ":course")
                     .replace("$3", "0") + ";\n")
    count = "SELECT count(*) FROM student_courses"
    database = {"ListCourses": pgbench(url, list_script, seconds)}
    before = int(psql(url, count))
    inserts = pgbench(url, insert_script, seconds)
    # A random pair may exist already (DO NOTHING: no row, no write to make durable; a few
    # percent of them here), while every AssignCourse of the load generator creates one: count
    # only what was inserted.
    database["AssignCourse"] = (int(psql(url, count)) - before) / seconds
    print(f"pgbench INSERT: {inserts:,.0f} tps, of which {database['AssignCourse']:,.0f} "
          f"inserted a row")

    health = service["Health"]
    print(f"Health/Check through the server: {health:,.0f} req/s")
    print(f"{'rpc':<13} {'pgbench tps':>12} {'ideal req/s':>12} {'service req/s':>14} {'ratio':>6}")
    for rpc in ("ListCourses", "AssignCourse"):
        ideal = 1 / (1 / database[rpc] + 1 / health)
        print(f"{rpc:<13} {database[rpc]:>12,.0f} {ideal:>12,.0f} {service[rpc]:>14,.0f} "
              f"{service[rpc] / ideal:>6.2f}")
    print(f"(pgbench: the store's own SQL, read from the sources, prepared, {POOL_CONNECTIONS} "
          f"clients, {seconds} s; the service: loadgen, 16 in flight over 4 connections)")


if __name__ == "__main__":
    main()
