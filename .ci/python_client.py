#!/usr/bin/env python3
"""A client no one here wrote: Python stubs generated from proto/ by grpcio-tools, driving a live
server through a short scenario. Exits non-zero on the first surprise.

usage: python_client.py BINARY DATABASE_URL
"""

import importlib
import os
import socket
import subprocess
import sys
import tempfile
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_tools import protoc

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
PROTOS = ["school/v1/resources.proto", "school/v1/student_service.proto",
          "school/v1/course_service.proto"]


def generate(out_dir):
    well_known = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    args = ["protoc", f"-I{os.path.join(ROOT, 'proto')}", f"-I{well_known}",
            f"--python_out={out_dir}", f"--grpc_python_out={out_dir}", *PROTOS]
    if protoc.main(args) != 0:
        sys.exit("grpcio-tools could not compile proto/")
    sys.path.insert(0, out_dir)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def expect_error(call, code, text):
    try:
        call()
    except grpc.RpcError as err:
        assert err.code() == code, f"expected {code}, got {err.code()}: {err.details()}"
        assert text in err.details(), f"{text!r} not in {err.details()!r}"
        return
    raise AssertionError(f"expected {code}, the call succeeded")


def scenario(channel):
    pb = importlib.import_module("school.v1.student_service_pb2")
    course_pb = importlib.import_module("school.v1.course_service_pb2")
    students = importlib.import_module("school.v1.student_service_pb2_grpc").StudentServiceStub(channel)
    courses = importlib.import_module("school.v1.course_service_pb2_grpc").CourseServiceStub(channel)
    checks = []

    ada = students.CreateStudent(pb.CreateStudentRequest(name="Ada", email="Ada@Example.com"))
    checks.append(ada.id > 0 and ada.email == "ada@example.com")
    zoe = students.CreateStudent(pb.CreateStudentRequest(name="Zoë 学生", email="zoe@example.com"))
    checks.append(zoe.name == "Zoë 学生")
    course = courses.CreateCourse(course_pb.CreateCourseRequest(code="py-1", title="Python", capacity=1))
    checks.append(course.code == "PY-1" and course.capacity == 1)

    first = students.AssignCourse(pb.AssignCourseRequest(student_id=ada.id, course_id=course.id))
    again = students.AssignCourse(pb.AssignCourseRequest(student_id=ada.id, course_id=course.id))
    checks.append(first.created and not again.created and first.enrollment == again.enrollment)
    expect_error(lambda: students.AssignCourse(pb.AssignCourseRequest(student_id=zoe.id, course_id=course.id)),
                 grpc.StatusCode.FAILED_PRECONDITION, "is full")
    listed = students.ListCourses(pb.ListCoursesRequest(student_id=ada.id))
    checks.append([c.id for c in listed.courses] == [course.id] and listed.courses[0].enrolled == 1)
    expect_error(lambda: students.ListCourses(pb.ListCoursesRequest(student_id=987654)),
                 grpc.StatusCode.NOT_FOUND, "student 987654 not found")
    expect_error(lambda: students.GetStudent(pb.GetStudentRequest(student_id=-3)),
                 grpc.StatusCode.INVALID_ARGUMENT, "student_id")
    students.UnassignCourse(pb.UnassignCourseRequest(student_id=ada.id, course_id=course.id))
    checks.append(courses.GetCourse(course_pb.GetCourseRequest(course_id=course.id)).enrolled == 0)

    health = health_pb2_grpc.HealthStub(channel)
    for service in ["", "school.v1.StudentService", "school.v1.CourseService"]:
        status = health.Check(health_pb2.HealthCheckRequest(service=service)).status
        checks.append(status == health_pb2.HealthCheckResponse.SERVING)
    return checks


def main():
    binary, database_url = sys.argv[1], sys.argv[2]
    address = f"127.0.0.1:{free_port()}"
    with tempfile.TemporaryDirectory() as out_dir:
        generate(out_dir)
        env = dict(os.environ, DATABASE_URL=database_url, LISTEN_ADDR=address, RUST_LOG="warn")
        server = subprocess.Popen([binary], env=env)
        try:
            channel = grpc.insecure_channel(address)
            grpc.channel_ready_future(channel).result(timeout=30)
            checks = scenario(channel)
        finally:
            server.terminate()
            server.wait(timeout=15)
    failed = checks.count(False)
    print(f"python-client: {len(checks) - failed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
