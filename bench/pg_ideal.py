#!/usr/bin/env python3
"""How close the service gets to what gRPC and PostgreSQL allow, on one settled PostgreSQL
database.

The ideal of an RPC is what a server adding no cost of its own between gRPC and PostgreSQL
would reach: 1 / (1/pgbench + 1/health), where `health` is Health/Check through the server (the
gRPC cost alone) and `pgbench` the rate of the store's own SQL run by pgbench on the same data.

1. Starts the release server on a fresh database; the load generator seeds it (1,000 students
   with 10 courses each, plus open courses).
2. Then, ROUNDS times, alternating, each phase on a settled database (VACUUM ANALYZE and a
   CHECKPOINT before it: measured right after a write load, unvacuumed tables once made pgbench
   4.6x slower than minutes later and the ratio 2.41, a broken baseline):
   - Health/Check and ListCourses through the server with h2load, 16 in flight over 4
     connections, ListCourses asking for the 10 courses of a student nothing else enrolls;
   - pgbench with ListCourses' SQL for that same student, prepared, 8 clients (the pool's size);
   - AssignCourse through the load generator (16 in flight; every call a new pair);
   - pgbench with AssignCourse's INSERT (and its triggers) over 2,000 courses of its own, so
     that nearly every call inserts a row; its rate is the rows it inserted per second.
   The SQL is read from the Rust sources at run time (src/store/courses.rs
   SELECT_PAGE_OF_STUDENT, src/store/enrollments.rs INSERT).
3. Prints every round, the spread, and the median ratio of each RPC to its ideal, and exits 1
   when any ratio is above 1: a service faster than its own parts is a measuring error.

usage: bench/pg_ideal.py [POSTGRES_BASE_URL] [SECONDS] [ROUNDS]
  POSTGRES_BASE_URL: postgres://USER@HOST:PORT (default postgres://postgres@127.0.0.1:5432);
  a database bench_ideal is dropped and created there. SECONDS per phase (default 8), ROUNDS
  (default 2). Needs cargo build --release, pgbench and h2load (nghttp2-client).
"""

import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
POOL_CONNECTIONS = 8


def rust_string(source, i):
    """The Rust string literal starting at source[i] (a `"`), escapes and line continuations
    resolved as rustc does, and the index after it."""
    assert source[i] == '"'
    i, out = i + 1, []
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
    return "".join(out), i + 1


def course_columns(source, alias):
    """What `course_columns!(alias)` expands to, from the macro's definition."""
    match = re.search(r"macro_rules! course_columns \{(.*?)\n\}", source, re.S)
    columns = re.findall(r'\$\(\$alias, "\.",\)\? "(\w+)', match.group(1)) if match else []
    if not columns:
        sys.exit("course_columns! not understood: the store changed, update this script")
    return ", ".join(f"{alias}.{c}" if alias else c for c in columns)


def rust_const(path, name):
    """The value of `const NAME: &str = "...";` or `= concat!("...", course_columns!(...), ...)`
    in a Rust file."""
    source = open(os.path.join(ROOT, path)).read()
    match = re.search(rf'const {name}: &str =\s*(concat!\(\s*)?"', source)
    if not match:
        sys.exit(f"{name} not found in {path}: the store changed, update this script")
    i = match.end() - 1
    if not match.group(1):
        return rust_string(source, i)[0]
    parts = []
    while True:
        while source[i] in " \t\n,":
            i += 1
        if source[i] == ")":
            return "".join(parts)
        if source[i] == '"':
            text, i = rust_string(source, i)
            parts.append(text)
            continue
        call = re.match(r'course_columns!\(\s*(?:"(\w*)")?\s*\)', source[i:])
        if not call:
            sys.exit(f"{name} in {path} is not understood: update this script")
        parts.append(course_columns(source, call.group(1) or ""))
        i += call.end()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def psql(url, *commands):
    args = ["psql", url, "-v", "ON_ERROR_STOP=1", "-qAt"]
    for command in commands:
        args += ["-c", command]
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout.strip()


def settle(url):
    """What autovacuum and the checkpointer would do a few minutes later, now."""
    psql(url, "VACUUM ANALYZE")
    psql(url, "CHECKPOINT")


def h2load(port, path, body, seconds):
    """req/s of `path` with one fixed message, 16 in flight over 4 connections."""
    with tempfile.NamedTemporaryFile("wb", suffix=".bin", delete=False) as f:
        f.write(body)
    try:
        run = subprocess.run(
            ["h2load", "-D", str(seconds), "--warm-up-time", "1", "-c", "4", "-m", "4",
             "-H", "content-type: application/grpc", "-H", "te: trailers", "-d", f.name,
             f"http://127.0.0.1:{port}{path}"], check=True, capture_output=True, text=True)
    finally:
        os.unlink(f.name)
    if " 0 failed, 0 errored" not in run.stdout:
        sys.exit(f"h2load saw failures on {path}:\n{run.stdout}")
    return float(re.search(r"finished in [\d.]+s, ([\d.]+) req/s", run.stdout).group(1))


def loadgen(port, rpc, seconds):
    """req/s of one RPC through the load generator."""
    run = subprocess.run(
        [os.path.join(ROOT, "target/release/loadgen"), "--target", f"http://127.0.0.1:{port}",
         "--rpc", rpc, "--duration", f"{seconds}s"], check=True, capture_output=True, text=True)
    for line in run.stdout.splitlines():
        parts = line.split()
        if len(parts) > 2 and parts[0] in ("Health", "ListCourses", "AssignCourse"):
            return float(parts[2])
    sys.exit(f"no figures in loadgen's output:\n{run.stdout}")


def varint(value):
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def grpc_message(payload):
    return b"\x00" + len(payload).to_bytes(4, "big") + payload


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
    seconds = int(sys.argv[2]) if len(sys.argv) > 2 else 8
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 2
    psql(f"{base}/postgres", "DROP DATABASE IF EXISTS bench_ideal WITH (FORCE)",
         "CREATE DATABASE bench_ideal")
    url = f"{base}/bench_ideal"
    port = free_port()
    env = dict(os.environ, DATABASE_URL=url, LISTEN_ADDR=f"127.0.0.1:{port}", RUST_LOG="warn")
    server = subprocess.Popen([os.path.join(ROOT, "target/release/student-service")], env=env)
    try:
        time.sleep(1.5)
        loadgen(port, "health", 1)  # seeds the database
        rows = measure(url, port, seconds, rounds)
    finally:
        server.terminate()
        server.wait(timeout=15)
    report(rows, seconds)


def measure(url, port, seconds, rounds):
    # pgbench's INSERT enrolls the load generator's students; ListCourses asks for a student of
    # the script's own, in 10 of the seeded courses, whom nothing else enrolls: his page is the
    # same in every round (it once grew from 10 to 51 courses under the INSERT phase, and the
    # second round measured another query).
    students = psql(url, "SELECT min(id) || ' ' || max(id) FROM students").split()
    student = int(psql(url, "INSERT INTO students (name, email, create_time) "
                            "VALUES ('pg_ideal', 'pg_ideal@example.com', 0) RETURNING id"))
    psql(url, "INSERT INTO student_courses (student_id, course_id, enroll_time) "
              f"SELECT {student}, id, 0 FROM courses WHERE capacity = 0 ORDER BY id LIMIT 10")
    if int(psql(url, f"SELECT count(*) FROM student_courses WHERE student_id = {student}")) != 10:
        sys.exit("could not enroll the measured student in 10 courses")
    # Courses of pgbench's own, so that its random pairs are almost all new enrollments, as the
    # load generator's are.
    psql(url, "INSERT INTO courses (code, title, title_folded, capacity, create_time) "
              "SELECT 'PGBENCH-' || g, 'pgbench ' || g, 'PGBENCH ' || g, 0, 0 "
              "FROM generate_series(1, 2000) AS g")
    courses = psql(url, "SELECT min(id) || ' ' || max(id) FROM courses WHERE code LIKE 'PGBENCH-%'").split()
    list_sql = rust_const("src/store/courses.rs", "SELECT_PAGE_OF_STUDENT")
    insert_sql = rust_const("src/store/enrollments.rs", "INSERT")
    # $1 student, $2 the page's keyset (0: first page), $3 the fetch limit (page of 50, plus one)
    list_script = (list_sql.replace("$1", str(student)).replace("$2", "0").replace("$3", "51")
                   + ";\n")
    # $1 student, $2 course (random pairs over pgbench's courses), $3 enroll time
    insert_script = (f"\\set student random({students[0]}, {students[1]})\n"
                     f"\\set course random({courses[0]}, {courses[1]})\n"
                     + insert_sql.replace("$1", ":student").replace("$2", ":course")
                     .replace("$3", "0") + ";\n")
    health_body = grpc_message(b"")
    list_body = grpc_message(b"\x08" + varint(student))
    count = "SELECT count(*) FROM student_courses"
    rows = []
    for round_ in range(1, rounds + 1):
        row = {}
        settle(url)
        row["health"] = h2load(port, "/grpc.health.v1.Health/Check", health_body, seconds)
        settle(url)
        row["ListCourses"] = h2load(port, "/school.v1.StudentService/ListCourses", list_body, seconds)
        settle(url)
        row["pg ListCourses"] = pgbench(url, list_script, seconds)
        settle(url)
        row["AssignCourse"] = loadgen(port, "assign-course", seconds)
        settle(url)
        before = int(psql(url, count))
        pgbench(url, insert_script, seconds)
        # A random pair may exist already (DO NOTHING: no row, nothing to make durable), while
        # every AssignCourse of the load generator creates one: count what was inserted.
        row["pg AssignCourse"] = (int(psql(url, count)) - before) / seconds
        print(f"round {round_}: " + ", ".join(f"{k} {v:,.0f}" for k, v in row.items()), flush=True)
        rows.append(row)
    return rows


def report(rows, seconds):
    print(f"{'rpc':<13} {'round':>5} {'health':>9} {'pgbench':>9} {'ideal':>9} {'service':>9} {'ratio':>6}")
    broken = []
    for rpc in ("ListCourses", "AssignCourse"):
        ratios = []
        for number, row in enumerate(rows, 1):
            ideal = 1 / (1 / row[f"pg {rpc}"] + 1 / row["health"])
            ratio = row[rpc] / ideal
            ratios.append(ratio)
            print(f"{rpc:<13} {number:>5} {row['health']:>9,.0f} {row[f'pg {rpc}']:>9,.0f} "
                  f"{ideal:>9,.0f} {row[rpc]:>9,.0f} {ratio:>6.2f}")
            if ratio > 1:
                broken.append(f"{rpc} round {number}: {ratio:.2f}")
        print(f"{rpc:<13} median ratio {statistics.median(ratios):.2f}, spread "
              f"{min(ratios):.2f}-{max(ratios):.2f}")
    print(f"(h2load and loadgen: 16 in flight over 4 connections; pgbench: the store's own SQL, "
          f"prepared, {POOL_CONNECTIONS} clients; {seconds} s per phase, each on a settled database)")
    if broken:
        sys.exit("a ratio above 1 means the baseline is wrong, not that the service beats its "
                 "own parts: " + "; ".join(broken))


if __name__ == "__main__":
    main()
