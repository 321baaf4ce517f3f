//! BatchAssignCourses (all or nothing) and GetEnrollment.

use student_service::api::pb;
use tonic::{Code, Status};

use crate::helpers::{
    Backend, TestApp, assert_error, error_metadata, on_both_backends, violated_fields,
};

on_both_backends!(
    a_batch_enrolls_in_every_course_in_request_order,
    repeating_a_batch_is_ok_and_creates_nothing,
    a_batch_with_a_full_course_writes_nothing_and_names_every_full_course,
    a_batch_with_missing_courses_names_every_one,
    a_missing_student_is_named_first,
    invalid_batches_report_every_violation,
    an_oversized_batch_costs_one_short_error,
    get_enrollment_returns_the_pair_or_says_why_not,
);

impl TestApp {
    async fn batch_assign(
        &self,
        student_id: i64,
        course_ids: &[i64],
    ) -> Result<Vec<pb::AssignCourseResponse>, Status> {
        let request = pb::BatchAssignCoursesRequest {
            student_id,
            course_ids: course_ids.to_vec(),
            request_id: String::new(),
        };
        let answer = self.students.clone().batch_assign_courses(request).await;
        answer.map(|response| response.into_inner().results)
    }

    async fn get_enrollment(
        &self,
        student_id: i64,
        course_id: i64,
    ) -> Result<pb::Enrollment, Status> {
        let request = pb::GetEnrollmentRequest {
            student_id,
            course_id,
        };
        let answer = self.students.clone().get_enrollment(request).await;
        answer.map(tonic::Response::into_inner)
    }

    /// The ids of the courses a student is enrolled in.
    async fn course_ids_of(&self, student_id: i64) -> Vec<i64> {
        let page = self
            .list_courses(student_id, 0, "")
            .await
            .expect("ListCourses");
        page.courses.iter().map(|c| c.id).collect()
    }
}

async fn a_batch_enrolls_in_every_course_in_request_order(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let student = app.create_students(1).await[0];
    let a = app.create_course("A", "A", 1).await.id;
    let b = app.create_course("B", "B", 0).await.id;
    let c = app.create_course("C", "C", 5).await.id;
    app.assign(student, b).await.expect("already in b");

    let results = app
        .batch_assign(student, &[c, a, b])
        .await
        .expect("BatchAssignCourses");

    let got: Vec<(i64, bool)> = results
        .iter()
        .map(|r| {
            (
                r.enrollment.as_ref().expect("an enrollment").course_id,
                r.created,
            )
        })
        .collect();
    assert_eq!(got, [(c, true), (a, true), (b, false)]);
    for result in &results {
        let enrollment = result.enrollment.expect("an enrollment");
        assert_eq!(enrollment.student_id, student);
        assert_eq!(
            app.get_enrollment(student, enrollment.course_id)
                .await
                .expect("stored"),
            enrollment
        );
    }
    assert_eq!(app.course_ids_of(student).await, [a, b, c]);
    assert_eq!(app.get_course(a).await.enrolled, 1);
    app.assert_integrity().await;
    app.stop().await;
}

async fn repeating_a_batch_is_ok_and_creates_nothing(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let student = app.create_students(1).await[0];
    let full = app.create_course("FULL", "Full", 1).await.id;
    let open = app.create_course("OPEN", "Open", 0).await.id;
    let first = app
        .batch_assign(student, &[full, open])
        .await
        .expect("first");

    // `full` is now full, but the student is in it: the repeat still succeeds.
    let again = app
        .batch_assign(student, &[full, open])
        .await
        .expect("repeat");

    assert!(again.iter().all(|r| !r.created), "{again:?}");
    let times = |results: &[pb::AssignCourseResponse]| -> Vec<_> {
        results.iter().map(|r| r.enrollment).collect()
    };
    assert_eq!(
        times(&again),
        times(&first),
        "the original enrollments come back"
    );
    app.stop().await;
}

async fn a_batch_with_a_full_course_writes_nothing_and_names_every_full_course(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let students = app.create_students(2).await;
    let open = app.create_course("OPEN", "Open", 10).await.id;
    let full_1 = app.create_course("FULL-1", "Full", 1).await.id;
    let full_2 = app.create_course("FULL-2", "Full", 1).await.id;
    let mine = app.create_course("MINE", "Mine", 1).await.id;
    app.assign(students[1], full_1)
        .await
        .expect("takes the seat");
    app.assign(students[1], full_2)
        .await
        .expect("takes the seat");
    app.assign(students[0], mine).await.expect("mine, now full");

    let status = assert_error(
        app.batch_assign(students[0], &[open, full_2, mine, full_1])
            .await,
        Code::FailedPrecondition,
        "COURSE_FULL",
        &format!("courses {full_1}, {full_2} are full"),
    );

    assert_eq!(
        error_metadata(&status, "course_ids"),
        format!("{full_1},{full_2}")
    );
    assert_eq!(
        app.course_ids_of(students[0]).await,
        [mine],
        "nothing was written"
    );
    assert_eq!(app.get_course(open).await.enrolled, 0);
    app.assert_integrity().await;
    app.stop().await;
}

async fn a_batch_with_missing_courses_names_every_one(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let student = app.create_students(1).await[0];
    let open = app.create_course("OPEN", "Open", 10).await.id;
    let full = app.create_course("FULL", "Full", 1).await.id;
    let gone = app.create_course("GONE", "Gone", 1).await.id;
    let request = pb::DeleteCourseRequest {
        course_id: gone,
        ..Default::default()
    };
    app.courses
        .clone()
        .delete_course(request)
        .await
        .expect("DeleteCourse");
    app.assign(app.create_student("X", "x@example.com").await.id, full)
        .await
        .expect("fills it");

    // Missing courses outrank the full one.
    let status = assert_error(
        app.batch_assign(student, &[9_999, open, full, gone]).await,
        Code::NotFound,
        "COURSE_NOT_FOUND",
        &format!("courses {gone}, 9999 not found"),
    );

    assert_eq!(
        error_metadata(&status, "course_ids"),
        format!("{gone},9999")
    );
    assert!(app.course_ids_of(student).await.is_empty());
    let status = assert_error(
        app.batch_assign(student, &[open, 9_999]).await,
        Code::NotFound,
        "COURSE_NOT_FOUND",
        "course 9999 not found",
    );
    assert_eq!(error_metadata(&status, "course_ids"), "9999");
    app.stop().await;
}

async fn a_missing_student_is_named_first(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let open = app.create_course("OPEN", "Open", 10).await.id;

    assert_error(
        app.batch_assign(9_999, &[open, 8_888]).await,
        Code::NotFound,
        "STUDENT_NOT_FOUND",
        "student 9999 not found",
    );
    assert_eq!(app.get_course(open).await.enrolled, 0);
    app.stop().await;
}

async fn invalid_batches_report_every_violation(backend: Backend) {
    let app = TestApp::spawn(backend).await;

    let status = assert_error(
        app.batch_assign(-1, &[4, 0, 4]).await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
        "course_ids[2]: repeats course 4",
    );
    assert_eq!(
        violated_fields(&status),
        ["student_id", "course_ids[1]", "course_ids[2]"]
    );
    let status = assert_error(
        app.batch_assign(1, &[]).await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
        "at least one",
    );
    assert_eq!(violated_fields(&status), ["course_ids"]);
    let too_many: Vec<i64> = (1..=101).collect();
    let status = assert_error(
        app.batch_assign(1, &too_many).await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
        "at most 100 courses, got 101",
    );
    assert_eq!(violated_fields(&status), ["course_ids"]);
    app.stop().await;
}

/// A million zero ids fit in the message limit. The error names the count, not each id, so it
/// costs the server nothing per id and fits in any client's metadata limit (grpc-python refuses
/// trailers over 16 KiB and reports RESOURCE_EXHAUSTED instead); a batch of 100 bad ids lists
/// ten of them and says how many more there were.
async fn an_oversized_batch_costs_one_short_error(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let student = app.create_students(1).await[0];

    let status = assert_error(
        app.batch_assign(student, &vec![0; 1_000_000]).await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
        "course_ids: must name at most 100 courses, got 1000000",
    );
    assert_eq!(violated_fields(&status), ["course_ids"]);

    let status = assert_error(
        app.batch_assign(student, &[0; 100]).await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
        "; and 90 more not listed",
    );
    assert_eq!(violated_fields(&status).len(), 10);
    assert!(status.message().len() < 1024, "{}", status.message());
    app.stop().await;
}

async fn get_enrollment_returns_the_pair_or_says_why_not(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let student = app.create_students(1).await[0];
    let course = app.create_course("CS-1", "Intro", 10).await.id;
    let other = app.create_course("CS-2", "Other", 10).await.id;
    let assigned = app.assign(student, course).await.expect("AssignCourse");

    let found = app
        .get_enrollment(student, course)
        .await
        .expect("GetEnrollment");

    assert_eq!(Some(found), assigned.enrollment);
    assert_error(
        app.get_enrollment(student, other).await,
        Code::NotFound,
        "NOT_ENROLLED",
        "is not enrolled",
    );
    assert_error(
        app.get_enrollment(9_999, 8_888).await,
        Code::NotFound,
        "STUDENT_NOT_FOUND",
        "student 9999",
    );
    assert_error(
        app.get_enrollment(student, 8_888).await,
        Code::NotFound,
        "COURSE_NOT_FOUND",
        "course 8888",
    );
    let status = assert_error(
        app.get_enrollment(0, -1).await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
        "",
    );
    assert_eq!(violated_fields(&status), ["student_id", "course_id"]);
    app.stop().await;
}
