#!/usr/bin/env python3
"""A client no one here wrote: Python stubs generated from proto/ by grpcio-tools, driving a live
server through a short scenario, errors read as a Python user would: the google.rpc.ErrorInfo and
BadRequest of the grpc-status-details-bin trailer, decoded by grpcio-status and
googleapis-common-protos. Exits non-zero on the first surprise.

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
from google.protobuf import field_mask_pb2
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from grpc_tools import protoc

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
PROTOS = ["school/v1/resources.proto", "school/v1/student_service.proto",
          "school/v1/course_service.proto", "school/v1/enrollment_event_service.proto"]


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


def expect_error(call, code, text=""):
    try:
        call()
    except grpc.RpcError as err:
        assert err.code() == code, f"expected {code}, got {err.code()}: {err.details()}"
        assert text in err.details(), f"{text!r} not in {err.details()!r}"
        return err
    raise AssertionError(f"expected {code}, the call succeeded")


def expect_reason(call, code, reason, **metadata):
    """Expects the call to fail with code and an ErrorInfo (domain school.v1) of that reason and
    metadata; returns its ErrorInfo and BadRequest (empty if it has none)."""
    err = expect_error(call, code)
    status = rpc_status.from_call(err)
    assert status is not None, f"{code} without a grpc-status-details-bin trailer: {err.details()}"
    info, bad_request = error_details_pb2.ErrorInfo(), error_details_pb2.BadRequest()
    for detail in status.details:
        for message in (info, bad_request):
            if detail.Is(message.DESCRIPTOR):
                detail.Unpack(message)
    assert info.reason, f"{code} without an ErrorInfo: {err.details()}"
    assert (info.domain, info.reason) == ("school.v1", reason), \
        f"expected reason {reason}, got {info.domain}/{info.reason}: {err.details()}"
    for key, value in metadata.items():
        assert info.metadata.get(key) == value, \
            f"{reason}: metadata {key} is {info.metadata.get(key)!r}, not {value!r}"
    return info, bad_request


def id_list(text):
    """The ids of an ErrorInfo metadata value such as "3,7", in id order."""
    return sorted(int(part) for part in text.split(","))


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

    checks.extend(updates(students, courses, ada, zoe))

    health = health_pb2_grpc.HealthStub(channel)
    for service in ["", "school.v1.StudentService", "school.v1.CourseService"]:
        status = health.Check(health_pb2.HealthCheckRequest(service=service)).status
        checks.append(status == health_pb2.HealthCheckResponse.SERVING)
    return checks


def updates(students, courses, ada, zoe):
    """UpdateStudent and UpdateCourse with field masks and etags, DeleteCourse with a stale etag,
    BatchAssignCourses and GetEnrollment."""
    pb = importlib.import_module("school.v1.student_service_pb2")
    course_pb = importlib.import_module("school.v1.course_service_pb2")
    Student = importlib.import_module("school.v1.resources_pb2").Student
    Course = importlib.import_module("school.v1.resources_pb2").Course
    FieldMask = field_mask_pb2.FieldMask
    FAILED_PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
    checks = []

    def check(ok, what):
        assert ok, what
        checks.append(True)

    def update_student(student, *paths):
        mask = FieldMask(paths=paths)
        return students.UpdateStudent(pb.UpdateStudentRequest(student=student, update_mask=mask))

    def update_course(course, *paths):
        mask = FieldMask(paths=paths)
        return courses.UpdateCourse(course_pb.UpdateCourseRequest(course=course, update_mask=mask))

    def delete_course(course_id, etag):
        courses.DeleteCourse(course_pb.DeleteCourseRequest(course_id=course_id, etag=etag))

    def get_course(course_id):
        return courses.GetCourse(course_pb.GetCourseRequest(course_id=course_id))

    def batch(student_id, course_ids):
        request = pb.BatchAssignCoursesRequest(student_id=student_id, course_ids=course_ids)
        return students.BatchAssignCourses(request)

    def enrolled_in(student_id):
        listed = students.ListCourses(pb.ListCoursesRequest(student_id=student_id))
        return sorted(c.id for c in listed.courses)

    # UpdateStudent: the name only, guarded by the etag just read; then the same etag again.
    bob = students.CreateStudent(pb.CreateStudentRequest(name="Bob", email="bob@example.com"))
    check(bob.etag.startswith('W/"'), f"Student.etag {bob.etag!r} is not a weak etag")
    robert = update_student(Student(id=bob.id, name="Robert", email="ignored@example.com",
                                    etag=bob.etag), "name")
    check((robert.name, robert.email) == ("Robert", "bob@example.com"),
          f"the mask [name] changed {robert.name!r} <{robert.email}>")
    check(robert.etag != bob.etag, "UpdateStudent returned the old etag")
    expect_reason(lambda: update_student(Student(id=bob.id, name="Bobby", etag=bob.etag), "name"),
                  FAILED_PRECONDITION, "ETAG_MISMATCH", student_id=str(bob.id))
    now = students.GetStudent(pb.GetStudentRequest(student_id=bob.id))
    check(now.name == "Robert" and now.etag == robert.etag, f"a refused update wrote {now}")
    _, bad = expect_reason(lambda: update_student(Student(id=bob.id, name="Bob"), "nickname"),
                           grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    check([v.field for v in bad.field_violations] == ["update_mask"],
          f"an unknown mask path gave the violations {list(bad.field_violations)}")
    expect_reason(lambda: update_student(Student(id=bob.id, email="ADA@example.com"), "email"),
                  grpc.StatusCode.ALREADY_EXISTS, "EMAIL_TAKEN", email="ada@example.com")

    # UpdateCourse: raise the capacity, fill it, then try to lower it below the students enrolled.
    small = courses.CreateCourse(course_pb.CreateCourseRequest(code="py-2", title="Python II",
                                                               capacity=1))
    raised = update_course(Course(id=small.id, capacity=2, etag=small.etag), "capacity")
    check(raised.capacity == 2 and raised.code == "PY-2" and raised.etag != small.etag,
          f"raising the capacity returned {raised}")
    for student in (ada, zoe):
        students.AssignCourse(pb.AssignCourseRequest(student_id=student.id, course_id=small.id))
    expect_reason(lambda: update_course(Course(id=small.id, capacity=1), "capacity"),
                  FAILED_PRECONDITION, "CAPACITY_BELOW_ENROLLED",
                  enrolled="2", capacity="1", course_id=str(small.id))
    got = get_course(small.id)
    check(got.capacity == 2 and got.enrolled == 2, f"a refused capacity change left {got}")
    check(got.etag == raised.etag, "enrollments changed the course's etag")

    # DeleteCourse with the etag from before the capacity change: refused, nothing deleted.
    expect_reason(lambda: delete_course(small.id, small.etag),
                  FAILED_PRECONDITION, "ETAG_MISMATCH", course_id=str(small.id))
    check(get_course(small.id).enrolled == 2, "DeleteCourse with a stale etag deleted the course")

    # BatchAssignCourses: results in request order, created only where this call enrolled.
    b1, b2, b3 = (courses.CreateCourse(course_pb.CreateCourseRequest(code=f"b-{n}", title="Batch"))
                  for n in (1, 2, 3))
    students.AssignCourse(pb.AssignCourseRequest(student_id=bob.id, course_id=b1.id))
    order = [b3.id, b1.id, b2.id]
    first = batch(bob.id, order)
    check([r.enrollment.course_id for r in first.results] == order,
          f"results not in request order: {[r.enrollment.course_id for r in first.results]}")
    check([r.created for r in first.results] == [True, False, True],
          f"created flags {[r.created for r in first.results]}, expected [True, False, True]")
    again = batch(bob.id, order)
    check(not any(r.created for r in again.results), "a repeated batch created enrollments")
    check([r.enrollment for r in again.results] == [r.enrollment for r in first.results],
          "a repeated batch returned other enrollments")

    # All or nothing: every missing course named; a full course refuses the whole batch.
    cy = students.CreateStudent(pb.CreateStudentRequest(name="Cy", email="cy@example.com"))
    missing = [987655, 987654]
    info, _ = expect_reason(lambda: batch(cy.id, [b1.id, missing[0], b2.id, missing[1]]),
                            grpc.StatusCode.NOT_FOUND, "COURSE_NOT_FOUND")
    check(id_list(info.metadata["course_ids"]) == sorted(missing),
          f"COURSE_NOT_FOUND names {info.metadata['course_ids']!r}, not both of {missing}")
    expect_reason(lambda: batch(cy.id, [b1.id, small.id, b2.id]),
                  FAILED_PRECONDITION, "COURSE_FULL", course_ids=str(small.id))
    check(enrolled_in(cy.id) == [], f"a refused batch enrolled Cy in {enrolled_in(cy.id)}")
    check(get_course(b1.id).enrolled == 1, "a refused batch took a seat of course b-1")

    # GetEnrollment: the enrollment the batch made, and NOT_ENROLLED for a pair that is not.
    enrollment = students.GetEnrollment(pb.GetEnrollmentRequest(student_id=bob.id,
                                                                course_id=b3.id))
    check(enrollment == first.results[0].enrollment,
          f"GetEnrollment returned {enrollment}, the batch made {first.results[0].enrollment}")
    expect_reason(lambda: students.GetEnrollment(pb.GetEnrollmentRequest(student_id=cy.id,
                                                                         course_id=b1.id)),
                  grpc.StatusCode.NOT_FOUND, "NOT_ENROLLED",
                  student_id=str(cy.id), course_id=str(b1.id))

    # DeleteCourse with the etag just read succeeds.
    delete_course(small.id, get_course(small.id).etag)
    expect_reason(lambda: get_course(small.id), grpc.StatusCode.NOT_FOUND, "COURSE_NOT_FOUND")
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
