// A client no one here wrote, in Go: stubs generated from proto/ by protoc-gen-go and
// protoc-gen-go-grpc with no import-path flags (the protos' go_package says where they go), driving
// a live server through a short scenario, error details read with errdetails. Exits non-zero on
// any mismatch. .ci/go_client.sh generates the stubs, builds this and runs it.
//
// usage: go_client BINARY DATABASE_URL
package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	schoolv1 "github.com/school/student-service/gen/go/school/v1"
)

type checker struct{ passed, failed int }

func (c *checker) check(ok bool, what string, args ...interface{}) {
	if ok {
		c.passed++
		return
	}
	c.failed++
	fmt.Fprintf(os.Stderr, "go-client: FAILED: "+what+"\n", args...)
}

// fatal stops the scenario on an unexpected error (later steps depend on the earlier ones); run
// recovers it, so the server is stopped either way.
type fatal string

func must(err error, what string) {
	if err != nil {
		panic(fatal(fmt.Sprintf("%s: %v", what, err)))
	}
}

// expectError checks an error's code, message and google.rpc.ErrorInfo (domain school.v1, reason),
// and returns its details for further checks.
func (c *checker) expectError(err error, code codes.Code, text, reason string) []interface{} {
	st, ok := status.FromError(err)
	if !c.checkf(err != nil && ok, "expected %v (%s), got %v", code, reason, err) {
		return nil
	}
	c.check(st.Code() == code, "expected %v, got %v: %s", code, st.Code(), st.Message())
	c.check(strings.Contains(st.Message(), text), "%q not in %q", text, st.Message())
	var info *errdetails.ErrorInfo
	for _, d := range st.Details() {
		if i, ok := d.(*errdetails.ErrorInfo); ok {
			info = i
		}
	}
	if c.checkf(info != nil, "no ErrorInfo in the details of %v: %v", code, st.Details()) {
		c.check(info.GetReason() == reason && info.GetDomain() == "school.v1",
			"ErrorInfo %s/%s, expected school.v1/%s", info.GetDomain(), info.GetReason(), reason)
	}
	return st.Details()
}

func (c *checker) checkf(ok bool, what string, args ...interface{}) bool {
	c.check(ok, what, args...)
	return ok
}

func scenario(ctx context.Context, conn *grpc.ClientConn) *checker {
	c := &checker{}
	students := schoolv1.NewStudentServiceClient(conn)
	courses := schoolv1.NewCourseServiceClient(conn)

	ada, err := students.CreateStudent(ctx, &schoolv1.CreateStudentRequest{Name: "Ada", Email: "Ada@Example.com"})
	must(err, "CreateStudent Ada")
	c.check(ada.GetId() > 0 && ada.GetEmail() == "ada@example.com", "CreateStudent returned %v", ada)
	c.check(ada.GetCreateTime().IsValid() && ada.GetCreateTime().AsTime().After(time.Now().Add(-time.Hour)),
		"create_time %v", ada.GetCreateTime())
	zoe, err := students.CreateStudent(ctx, &schoolv1.CreateStudentRequest{Name: "Zoë 学生", Email: "zoe@example.com"})
	must(err, "CreateStudent Zoë")
	c.check(zoe.GetName() == "Zoë 学生", "name %q", zoe.GetName())
	_, err = students.CreateStudent(ctx, &schoolv1.CreateStudentRequest{Name: "Ada again", Email: "ADA@example.com"})
	c.expectError(err, codes.AlreadyExists, "", "EMAIL_TAKEN")

	course, err := courses.CreateCourse(ctx, &schoolv1.CreateCourseRequest{Code: "go-1", Title: "Go", Capacity: 1})
	must(err, "CreateCourse")
	c.check(course.GetCode() == "GO-1" && course.GetCapacity() == 1, "CreateCourse returned %v", course)

	first, err := students.AssignCourse(ctx, &schoolv1.AssignCourseRequest{StudentId: ada.GetId(), CourseId: course.GetId()})
	must(err, "AssignCourse")
	again, err := students.AssignCourse(ctx, &schoolv1.AssignCourseRequest{StudentId: ada.GetId(), CourseId: course.GetId()})
	must(err, "AssignCourse again")
	c.check(first.GetCreated() && !again.GetCreated() && proto.Equal(first.GetEnrollment(), again.GetEnrollment()),
		"AssignCourse twice: %v then %v", first, again)

	// The course is full: FAILED_PRECONDITION, ErrorInfo COURSE_FULL with the course in its metadata.
	_, err = students.AssignCourse(ctx, &schoolv1.AssignCourseRequest{StudentId: zoe.GetId(), CourseId: course.GetId()})
	for _, d := range c.expectError(err, codes.FailedPrecondition, "is full", "COURSE_FULL") {
		if info, ok := d.(*errdetails.ErrorInfo); ok {
			want := fmt.Sprint(course.GetId())
			c.check(info.GetMetadata()["course_id"] == want, "COURSE_FULL metadata %v, course_id %s", info.GetMetadata(), want)
		}
	}

	listed, err := students.ListCourses(ctx, &schoolv1.ListCoursesRequest{StudentId: ada.GetId()})
	must(err, "ListCourses")
	c.check(len(listed.GetCourses()) == 1 && listed.GetCourses()[0].GetId() == course.GetId() &&
		listed.GetCourses()[0].GetEnrolled() == 1 && listed.GetNextPageToken() == "", "ListCourses returned %v", listed)
	_, err = students.ListCourses(ctx, &schoolv1.ListCoursesRequest{StudentId: 987654})
	c.expectError(err, codes.NotFound, "student 987654 not found", "STUDENT_NOT_FOUND")

	// INVALID_ARGUMENT carries a google.rpc.BadRequest naming the field.
	_, err = students.GetStudent(ctx, &schoolv1.GetStudentRequest{StudentId: -3})
	var fields []string
	for _, d := range c.expectError(err, codes.InvalidArgument, "student_id", "INVALID_ARGUMENT") {
		if br, ok := d.(*errdetails.BadRequest); ok {
			for _, v := range br.GetFieldViolations() {
				fields = append(fields, v.GetField())
			}
		}
	}
	c.check(len(fields) == 1 && fields[0] == "student_id", "BadRequest fields %v", fields)

	_, err = students.UnassignCourse(ctx, &schoolv1.UnassignCourseRequest{StudentId: ada.GetId(), CourseId: course.GetId()})
	must(err, "UnassignCourse")
	got, err := courses.GetCourse(ctx, &schoolv1.GetCourseRequest{CourseId: course.GetId()})
	must(err, "GetCourse")
	c.check(got.GetEnrolled() == 0, "enrolled after UnassignCourse: %d", got.GetEnrolled())

	health := healthpb.NewHealthClient(conn)
	for _, service := range []string{"", "school.v1.StudentService", "school.v1.CourseService"} {
		resp, err := health.Check(ctx, &healthpb.HealthCheckRequest{Service: service})
		c.check(err == nil && resp.GetStatus() == healthpb.HealthCheckResponse_SERVING,
			"health of %q: %v %v", service, resp, err)
	}
	return c
}

func freeAddress() string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	must(err, "free port")
	defer l.Close()
	return l.Addr().String()
}

// run starts the server on DATABASE_URL and a free port, plays the scenario against it and stops
// the server (SIGTERM) whatever happens.
func run(binary, databaseURL string) (c *checker, err error) {
	defer func() {
		if r := recover(); r != nil {
			f, ok := r.(fatal)
			if !ok {
				panic(r)
			}
			err = fmt.Errorf("%s", string(f))
		}
	}()
	address := freeAddress()
	server := exec.Command(binary)
	server.Env = append(os.Environ(), "DATABASE_URL="+databaseURL, "LISTEN_ADDR="+address, "RUST_LOG=warn")
	server.Stdout, server.Stderr = os.Stdout, os.Stderr
	must(server.Start(), "starting the server")
	defer func() {
		_ = server.Process.Signal(syscall.SIGTERM)
		_ = server.Wait()
	}()

	dialCtx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := grpc.DialContext(dialCtx, address, grpc.WithInsecure(), grpc.WithBlock())
	must(err, "connecting to "+address)
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	return scenario(ctx, conn), nil
}

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: go_client BINARY DATABASE_URL")
		os.Exit(2)
	}
	c, err := run(os.Args[1], os.Args[2])
	if err != nil {
		fmt.Fprintf(os.Stderr, "go-client: %v\n", err)
		os.Exit(1)
	}
	fmt.Printf("go-client: %d passed, %d failed\n", c.passed, c.failed)
	if c.failed > 0 {
		os.Exit(1)
	}
}
