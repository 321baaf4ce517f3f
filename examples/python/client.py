#!/usr/bin/env python3
"""Calling school.v1 from Python the way a production client should. Copy what you need.

It shows:
  * a channel that loads ../service_config.json (per-method timeouts and retry policies) through
    the channel option "grpc.service_config", with retries switched on ("grpc.enable_retries");
  * a deadline on every call (timeout=...): the shorter of it and the service config's wins;
  * TLS (--ca-cert, and --client-cert/--client-key for mutual TLS) and a bearer token (--token or
    SCHOOL_TOKEN), sent as "authorization: Bearer TOKEN" by call credentials over TLS, or as
    plain metadata on a plaintext channel;
  * deciding what to do from the google.rpc.ErrorInfo reason the server attaches to every error
    (COURSE_FULL vs COURSE_NOT_FOUND vs STUDENT_NOT_FOUND), and reading google.rpc.BadRequest;
  * paging with next_page_token until it comes back empty;
  * deletes that accept NOT_FOUND as "already gone" (what a retried delete answers).

Scenario: create two students and two courses (one with a single seat), enroll, try the second
student on the full course, try an unknown course and an unknown student, list the student's
courses one per page, search the catalogue, then clean up. Every run uses a random suffix in
e-mails, codes and titles, so it can run any number of times against the same server. Prints what
happens and a last line "python-example: N passed, N failed"; exits 1 if an expectation failed,
2 if the scenario could not run at all (no server, TLS or token refused, ...).

Needs: python3 -m pip install grpcio grpcio-status googleapis-common-protos grpcio-tools
Stubs (once, from the repository root; or let this script make them, see --generate):
  mkdir -p examples/python/gen && python3 -m grpc_tools.protoc -I proto \
      --python_out=examples/python/gen --grpc_python_out=examples/python/gen proto/school/v1/*.proto
Run:
  python3 examples/python/client.py --target localhost:50051
  SCHOOL_TOKEN=... python3 examples/python/client.py --target localhost:50051 --ca-cert ca.pem
"""

import argparse
import atexit
import glob
import importlib
import json
import os
import secrets
import shutil
import sys
import tempfile
import types
import uuid

import grpc
from google.rpc import error_details_pb2  # googleapis-common-protos: ErrorInfo, BadRequest
from grpc_status import rpc_status  # grpcio-status: the google.rpc.Status of a failed call

HERE = os.path.dirname(os.path.abspath(__file__))
DOMAIN = "school.v1"  # the ErrorInfo domain of every error this service sends
NO_SUCH_ID = 2**63 - 1  # a valid id (> 0) that no student or course will ever have


# --- stubs -------------------------------------------------------------------------------------


def load_stubs(stubs_dir, proto_dir, generate):
    """Imports the generated modules: from stubs_dir, or (with --generate, or when stubs_dir has
    none) generated now by grpcio-tools from proto_dir into a temporary directory."""
    if not generate:
        sys.path.insert(0, stubs_dir)
        try:
            return import_stubs()
        except ImportError:
            sys.path.remove(stubs_dir)
            print(f"(no stubs in {stubs_dir}: generating them from {proto_dir})")
    from grpc_tools import protoc  # only needed to generate

    out = tempfile.mkdtemp(prefix="school-v1-stubs-")
    atexit.register(shutil.rmtree, out, ignore_errors=True)
    well_known = os.path.join(os.path.dirname(protoc.__file__), "_proto")  # google/protobuf/*
    protos = sorted(glob.glob(os.path.join(proto_dir, "school", "v1", "*.proto")))
    if not protos:
        sys.exit(f"no .proto files under {proto_dir}/school/v1 (use --proto)")
    args = ["protoc", f"-I{proto_dir}", f"-I{well_known}",
            f"--python_out={out}", f"--grpc_python_out={out}", *protos]
    if protoc.main(args) != 0:
        sys.exit("grpcio-tools could not compile the protos")
    sys.path.insert(0, out)
    return import_stubs()


def import_stubs():
    """The generated modules; in your own code: from school.v1 import student_service_pb2, ..."""
    def module(name):
        return importlib.import_module(f"school.v1.{name}")

    return types.SimpleNamespace(
        students=module("student_service_pb2"), students_grpc=module("student_service_pb2_grpc"),
        courses=module("course_service_pb2"), courses_grpc=module("course_service_pb2_grpc"))


# --- channel -----------------------------------------------------------------------------------


def read_file(path):
    if not path:
        return None
    with open(path, "rb") as f:
        return f.read()


def make_channel(args):
    """The channel, and the metadata every call must carry (empty when the credentials add it).

    One channel per server, shared by every stub and thread: it holds the HTTP/2 connection(s),
    the service config and the retry budget."""
    with open(args.service_config, encoding="utf-8") as f:
        service_config = f.read()
    json.loads(service_config)  # a JSON syntax error is clearer here than from the channel
    options = [
        # Per-method timeouts and retry policies. gRPC checks it when the channel is created: an
        # invalid config makes every call fail with INVALID_ARGUMENT "Failed to create channel"
        # (but an unknown, e.g. misspelt, key is silently ignored).
        ("grpc.service_config", service_config),
        ("grpc.enable_retries", 1),  # the default in recent grpcio; explicit, so it cannot be off
    ]
    tls = args.tls or args.ca_cert or args.client_cert
    if tls:
        # root_certificates=None means the system's CAs (a server with a public certificate).
        credentials = grpc.ssl_channel_credentials(
            root_certificates=read_file(args.ca_cert),
            private_key=read_file(args.client_key),  # mutual TLS only
            certificate_chain=read_file(args.client_cert))
        if args.token:
            # Sends "authorization: Bearer TOKEN" with every call on this channel. gRPC sends call
            # credentials only over a secure channel, which is the point.
            credentials = grpc.composite_channel_credentials(
                credentials, grpc.access_token_call_credentials(args.token))
        return grpc.secure_channel(args.target, credentials, options), ()
    if args.token:
        print("warning: sending the token over plaintext: anyone on the path can read it")
        metadata = (("authorization", f"Bearer {args.token}"),)
        return grpc.insecure_channel(args.target, options), metadata
    return grpc.insecure_channel(args.target, options), ()


# --- errors ------------------------------------------------------------------------------------


def error_info(err):
    """The google.rpc.ErrorInfo the server attached to a failed call, or None when the error was
    made by the client library itself (deadline passed, server unreachable, TLS failed...)."""
    status = rpc_status.from_call(err)  # None without a grpc-status-details-bin trailer
    for detail in status.details if status else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            if info.domain == DOMAIN:
                return info
    return None


def reason(err):
    info = error_info(err)
    return info.reason if info else None


def bad_request(err):
    """The field violations of an INVALID_ARGUMENT: [(field, description)], every field at once."""
    status = rpc_status.from_call(err)
    for detail in status.details if status else ():
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            request = error_details_pb2.BadRequest()
            detail.Unpack(request)
            return [(v.field, v.description) for v in request.field_violations]
    return []


def describe(err):
    text = f"{err.code().name}: {err.details()}"
    info = error_info(err)
    if info:
        text += f" [{info.reason} {dict(info.metadata)}]"
    elif "Failed to create channel" in (err.details() or ""):
        text += " [the channel refused its options: is the service config valid?]"
    return text


# --- the service, one method per thing an application wants to do ------------------------------


class School:
    """Thin wrappers over the generated stubs: every call gets a deadline and the auth metadata."""

    def __init__(self, channel, stubs, deadline, metadata):
        self.pb, self.course_pb = stubs.students, stubs.courses
        self.students = stubs.students_grpc.StudentServiceStub(channel)
        self.courses = stubs.courses_grpc.CourseServiceStub(channel)
        self.deadline = deadline  # seconds; gRPC sends it to the server as grpc-timeout
        self.metadata = metadata

    def create_student(self, name, email):
        # One request_id per student to create: the channel's retries resend the same message, so
        # a retry after a lost answer gets the student the first attempt created (AIP-155).
        request = self.pb.CreateStudentRequest(name=name, email=email, request_id=str(uuid.uuid4()))
        return self.students.CreateStudent(request, timeout=self.deadline, metadata=self.metadata)

    def create_course(self, code, title, capacity=0):
        request = self.course_pb.CreateCourseRequest(code=code, title=title, capacity=capacity,
                                                     request_id=str(uuid.uuid4()))
        return self.courses.CreateCourse(request, timeout=self.deadline, metadata=self.metadata)

    def enroll(self, student_id, course_id):
        """Returns ("enrolled" | "already enrolled", enrollment), or (REASON, None) for the
        refusals an application handles: COURSE_FULL, COURSE_NOT_FOUND, STUDENT_NOT_FOUND.
        Anything else (INVALID_ARGUMENT is a bug in the caller; UNAVAILABLE etc. left after the
        channel's retries) is raised."""
        request = self.pb.AssignCourseRequest(student_id=student_id, course_id=course_id)
        try:
            reply = self.students.AssignCourse(request, timeout=self.deadline,
                                               metadata=self.metadata)
        except grpc.RpcError as err:
            # Switch on the ErrorInfo reason, not on the message (for people) nor on the code
            # alone (NOT_FOUND does not say whether the student or the course is missing).
            why = reason(err)
            if why in ("COURSE_FULL", "COURSE_NOT_FOUND", "STUDENT_NOT_FOUND"):
                return why, None
            raise
        # AssignCourse is idempotent: a repeat (ours, or the channel's retry after a lost reply)
        # answers OK with created=False and the original enrollment.
        return ("enrolled" if reply.created else "already enrolled"), reply.enrollment

    def unenroll(self, student_id, course_id):
        """True if this call removed the enrollment, False if it was not there (NOT_ENROLLED): a
        retried UnassignCourse whose first attempt succeeded answers that too."""
        request = self.pb.UnassignCourseRequest(student_id=student_id, course_id=course_id)
        try:
            self.students.UnassignCourse(request, timeout=self.deadline, metadata=self.metadata)
            return True
        except grpc.RpcError as err:
            if reason(err) == "NOT_ENROLLED":
                return False
            raise

    def courses_of(self, student_id, page_size=0):
        """Yields the student's courses page by page, until next_page_token comes back empty.
        page_size 0 is the server's default (50)."""
        token = ""
        while True:
            request = self.pb.ListCoursesRequest(student_id=student_id, page_size=page_size,
                                                 page_token=token)
            page = self.students.ListCourses(request, timeout=self.deadline, metadata=self.metadata)
            yield page.courses
            token = page.next_page_token
            if not token:
                return

    def search(self, query, page_size=0):
        """Yields every course matching query, fetching pages as needed."""
        token = ""
        while True:
            request = self.course_pb.SearchCoursesRequest(query=query, page_size=page_size,
                                                          page_token=token)
            page = self.courses.SearchCourses(request, timeout=self.deadline,
                                              metadata=self.metadata)
            yield from page.courses
            token = page.next_page_token
            if not token:
                return

    def delete_student(self, student_id):
        """True if deleted now, False if already gone. A retried DeleteStudent whose first attempt
        succeeded answers NOT_FOUND: for a delete, "gone" is the goal either way."""
        request = self.pb.DeleteStudentRequest(student_id=student_id)
        try:
            self.students.DeleteStudent(request, timeout=self.deadline, metadata=self.metadata)
            return True
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.NOT_FOUND:
                return False
            raise

    def delete_course(self, course_id):
        """Like delete_student."""
        request = self.course_pb.DeleteCourseRequest(course_id=course_id)
        try:
            self.courses.DeleteCourse(request, timeout=self.deadline, metadata=self.metadata)
            return True
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.NOT_FOUND:
                return False
            raise


# --- the scenario ------------------------------------------------------------------------------


class Expectations:
    def __init__(self):
        self.passed = self.failed = 0

    def check(self, ok, what):
        if ok:
            self.passed += 1
            print(f"   ok: {what}")
        else:
            self.failed += 1
            print(f"   FAILED: {what}")


def step(text):
    print(f"\n-- {text}")


def scenario(school, expect, keep):
    run = secrets.token_hex(4)  # unique per run: e-mails and codes must be unique
    print(f"run {run}")

    step("create two students and two courses (one with a single seat)")
    ada = school.create_student("Ada Lovelace", f"Ada.{run}@Example.com")
    bob = school.create_student("Bob Ñúñez", f"bob.{run}@example.com")
    print(f"   student {ada.id} {ada.email!r}, student {bob.id} {bob.email!r}")
    expect.check(ada.email == f"ada.{run}@example.com", "e-mails are stored lower-case")
    small = school.create_course(f"py1-{run}", f"Python seminar {run}", capacity=1)
    big = school.create_course(f"py2-{run}", f"Python lecture {run}")  # capacity 0: unlimited
    for c in (small, big):
        print(f"   course {c.id} {c.code} {c.title!r}, capacity {c.capacity or 'unlimited'}")
    expect.check(small.code == f"PY1-{run.upper()}", "course codes are stored upper-case")

    step("a request with invalid fields: INVALID_ARGUMENT lists every bad field in a BadRequest")
    try:
        school.create_student("", "not-an-email")
        expect.check(False, "an empty name and a bad e-mail are refused")
    except grpc.RpcError as err:
        fields = bad_request(err)
        for field, description in fields:
            print(f"   {field}: {description}")
        expect.check(err.code() == grpc.StatusCode.INVALID_ARGUMENT
                     and {f for f, _ in fields} == {"name", "email"},
                     "INVALID_ARGUMENT names both name and email")

    step(f"enroll Ada in both courses (course {small.id} is then full)")
    for course in (small, big):
        outcome, enrollment = school.enroll(ada.id, course.id)
        print(f"   Ada -> {course.code}: {outcome}")
        expect.check(outcome == "enrolled", f"Ada enrolled in {course.code}")
    outcome, again = school.enroll(ada.id, small.id)
    print(f"   Ada -> {small.code} again: {outcome} (idempotent: safe to retry)")
    expect.check(outcome == "already enrolled", "a repeated AssignCourse answers created=false")

    step("what an application does with each refusal, decided by the ErrorInfo reason")
    attempts = [("Bob", bob.id, small.id, "COURSE_FULL"),
                ("Bob", bob.id, NO_SUCH_ID, "COURSE_NOT_FOUND"),
                ("a student who does not exist", NO_SUCH_ID, small.id, "STUDENT_NOT_FOUND")]
    for who, student_id, course_id, expected in attempts:
        outcome, _ = school.enroll(student_id, course_id)
        if outcome == "COURSE_FULL":
            action = "course full: offer the waiting list"
        elif outcome == "COURSE_NOT_FOUND":
            action = "no such course: show the catalogue again"
        elif outcome == "STUDENT_NOT_FOUND":
            action = "no such student: ask them to register first"
        else:
            action = outcome
        print(f"   {who} -> course {course_id}: {action}")
        expect.check(outcome == expected, f"{expected} is reported as such")

    step("Ada's courses, one per page (page_size=1), following next_page_token")
    seen = []
    for number, page in enumerate(school.courses_of(ada.id, page_size=1), start=1):
        print(f"   page {number}: {[c.code for c in page]}")
        seen.extend(page)
    expect.check([c.id for c in seen] == [small.id, big.id], "two pages, one course each, by id")

    query = run.upper()  # titles hold it in lower case: search ignores case
    step(f"search the catalogue for {query!r} (a code prefix or a title substring)")
    found = list(school.search(query))
    for c in found:
        print(f"   {c.code} {c.title!r}: {c.enrolled} enrolled of {c.capacity or 'unlimited'}")
    expect.check([(c.id, c.enrolled) for c in found] == [(small.id, 1), (big.id, 1)],
                 "search finds both courses with their live enrolled counts")

    if keep:
        print("\n(--keep: leaving the students and courses in place)")
        return
    step("clean up; repeated removals answer NOT_FOUND, which means 'already gone'")
    expect.check(school.unenroll(ada.id, big.id), "UnassignCourse removes the enrollment")
    expect.check(not school.unenroll(ada.id, big.id), "a repeat answers NOT_ENROLLED, accepted")
    for student in (ada, bob):
        expect.check(school.delete_student(student.id), f"student {student.id} deleted")
    expect.check(not school.delete_student(ada.id), "deleting again answers NOT_FOUND, accepted")
    for course in (small, big):
        expect.check(school.delete_course(course.id), f"course {course.code} deleted")


def main():
    env = os.environ.get
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--target", default=env("SCHOOL_TARGET", "localhost:50051"),
                        help="host:port of the server (env SCHOOL_TARGET; default %(default)s)")
    parser.add_argument("--ca-cert", default=env("SCHOOL_CA_CERT"),
                        help="PEM CA certificate to verify the server with; turns TLS on "
                             "(env SCHOOL_CA_CERT)")
    parser.add_argument("--tls", action="store_true", help="TLS with the system's CA certificates")
    parser.add_argument("--client-cert", default=env("SCHOOL_CLIENT_CERT"),
                        help="PEM client certificate, for mutual TLS (env SCHOOL_CLIENT_CERT)")
    parser.add_argument("--client-key", default=env("SCHOOL_CLIENT_KEY"),
                        help="PEM key of --client-cert (env SCHOOL_CLIENT_KEY)")
    parser.add_argument("--token", default=env("SCHOOL_TOKEN"),
                        help="bearer token (env SCHOOL_TOKEN, which keeps it out of `ps`)")
    parser.add_argument("--deadline", type=float, default=10.0,
                        help="seconds each call may take, retries included (default %(default)s)")
    parser.add_argument("--service-config",
                        default=os.path.normpath(os.path.join(HERE, "..", "service_config.json")),
                        help="gRPC service config JSON (default ../service_config.json)")
    parser.add_argument("--stubs", default=os.path.join(HERE, "gen"),
                        help="directory of generated stubs (default ./gen next to this file)")
    parser.add_argument("--generate", action="store_true",
                        help="generate the stubs from --proto into a temporary directory")
    parser.add_argument("--proto",
                        default=os.path.normpath(os.path.join(HERE, "..", "..", "proto")),
                        help="the proto/ directory to generate from (default the repository's)")
    parser.add_argument("--keep", action="store_true", help="do not delete what the run created")
    args = parser.parse_args()
    if bool(args.client_cert) != bool(args.client_key):
        parser.error("--client-cert and --client-key go together")

    stubs = load_stubs(os.path.abspath(args.stubs), os.path.abspath(args.proto), args.generate)
    channel, metadata = make_channel(args)
    transport = "TLS" if args.tls or args.ca_cert or args.client_cert else "plaintext"
    print(f"python-example: {args.target} ({transport}, {'token' if args.token else 'no token'}, "
          f"service config {args.service_config})")
    expect = Expectations()
    try:
        with channel:
            scenario(School(channel, stubs, args.deadline, metadata), expect, args.keep)
    except grpc.RpcError as err:
        # Whatever is left after the channel's retries: the scenario cannot go on.
        print(f"\nunexpected error, stopping: {describe(err)}")
        print(f"python-example: {expect.passed} passed, {expect.failed + 1} failed")
        sys.exit(2)
    print(f"\npython-example: {expect.passed} passed, {expect.failed} failed")
    sys.exit(1 if expect.failed else 0)


if __name__ == "__main__":
    main()
