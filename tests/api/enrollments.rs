use student_service::api::pb;
use tonic::Code;

use crate::helpers::{Backend, TestApp, assert_error, on_both_backends};

on_both_backends!(
    assign_course_enrolls_and_list_courses_shows_it,
    assigning_twice_returns_the_original_enrollment,
    assigning_an_existing_pair_succeeds_even_when_the_course_is_full,
    a_new_pair_on_a_full_course_is_failed_precondition,
    assign_names_the_missing_student_or_course,
    unassign_frees_the_seat_and_unknown_pairs_are_not_found,
    list_courses_of_an_unknown_student_is_not_found,
);

async fn assign_course_enrolls_and_list_courses_shows_it(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let ada = app.create_student("Ada", "ada@example.com").await;
    let course = app.create_course("CS-101", "Engines", 10).await;

    let assigned = app.assign(ada.id, course.id).await.expect("AssignCourse");

    assert!(assigned.created);
    let enrollment = assigned.enrollment.expect("enrollment");
    assert_eq!(
        (enrollment.student_id, enrollment.course_id),
        (ada.id, course.id)
    );
    assert!(enrollment.enroll_time.is_some());
    let listed = app.list_courses(ada.id, 0, "").await.expect("ListCourses");
    let expected = pb::Course {
        enrolled: 1,
        ..course.clone()
    };
    assert_eq!(listed.courses, [expected]);
    assert_eq!(listed.next_page_token, "");
    assert_eq!(app.enrollment_rows(course.id).await, 1);
    app.stop().await;
}

async fn assigning_twice_returns_the_original_enrollment(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let ada = app.create_student("Ada", "ada@example.com").await;
    let course = app.create_course("CS-101", "Engines", 10).await;
    let first = app.assign(ada.id, course.id).await.expect("first");

    let second = app.assign(ada.id, course.id).await.expect("second");

    assert!(!second.created);
    assert_eq!(second.enrollment, first.enrollment);
    assert_eq!(app.get_course(course.id).await.enrolled, 1);
    assert_eq!(app.enrollment_rows(course.id).await, 1);
    app.stop().await;
}

async fn assigning_an_existing_pair_succeeds_even_when_the_course_is_full(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let ada = app.create_student("Ada", "ada@example.com").await;
    let course = app.create_course("CS-101", "Engines", 1).await;
    let first = app
        .assign(ada.id, course.id)
        .await
        .expect("takes the only seat");

    let again = app
        .assign(ada.id, course.id)
        .await
        .expect("idempotent on a full course");

    assert!(!again.created);
    assert_eq!(again.enrollment, first.enrollment);
    app.stop().await;
}

async fn a_new_pair_on_a_full_course_is_failed_precondition(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let ada = app.create_student("Ada", "ada@example.com").await;
    let grace = app.create_student("Grace", "grace@example.com").await;
    let course = app.create_course("CS-101", "Engines", 1).await;
    app.assign(ada.id, course.id)
        .await
        .expect("takes the only seat");

    let result = app.assign(grace.id, course.id).await;

    assert_error(
        result,
        Code::FailedPrecondition,
        "COURSE_FULL",
        &format!("course {} is full", course.id),
    );
    assert_eq!(app.get_course(course.id).await.enrolled, 1);
    assert_eq!(app.enrollment_rows(course.id).await, 1);
    assert!(
        app.list_courses(grace.id, 0, "")
            .await
            .expect("ListCourses")
            .courses
            .is_empty()
    );
    app.assert_integrity().await;
    app.stop().await;
}

async fn assign_names_the_missing_student_or_course(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let ada = app.create_student("Ada", "ada@example.com").await;
    let course = app.create_course("CS-101", "Engines", 0).await;

    let no_course = app.assign(ada.id, 4242).await;
    let no_student = app.assign(4343, course.id).await;

    assert_error(
        no_course,
        Code::NotFound,
        "COURSE_NOT_FOUND",
        "course 4242 not found",
    );
    assert_error(
        no_student,
        Code::NotFound,
        "STUDENT_NOT_FOUND",
        "student 4343 not found",
    );
    assert_eq!(app.get_course(course.id).await.enrolled, 0);
    app.stop().await;
}

async fn unassign_frees_the_seat_and_unknown_pairs_are_not_found(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let ada = app.create_student("Ada", "ada@example.com").await;
    let grace = app.create_student("Grace", "grace@example.com").await;
    let course = app.create_course("CS-101", "Engines", 1).await;
    app.assign(ada.id, course.id).await.expect("assign");
    let mut students = app.students.clone();
    let unassign = |student_id, course_id| pb::UnassignCourseRequest {
        student_id,
        course_id,
    };

    students
        .unassign_course(unassign(ada.id, course.id))
        .await
        .expect("UnassignCourse");

    assert_eq!(app.get_course(course.id).await.enrolled, 0);
    assert!(
        app.assign(grace.id, course.id)
            .await
            .expect("the seat is free again")
            .created
    );
    assert_error(
        students.unassign_course(unassign(ada.id, course.id)).await,
        Code::NotFound,
        "NOT_ENROLLED",
        &format!("student {} is not enrolled in course {}", ada.id, course.id),
    );
    assert_error(
        students.unassign_course(unassign(999, course.id)).await,
        Code::NotFound,
        "STUDENT_NOT_FOUND",
        "student 999 not found",
    );
    assert_error(
        students.unassign_course(unassign(ada.id, 998)).await,
        Code::NotFound,
        "COURSE_NOT_FOUND",
        "course 998 not found",
    );
    app.assert_integrity().await;
    app.stop().await;
}

async fn list_courses_of_an_unknown_student_is_not_found(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let loner = app.create_student("Loner", "loner@example.com").await;

    let unknown = app.list_courses(31337, 0, "").await;
    let empty = app
        .list_courses(loner.id, 0, "")
        .await
        .expect("an existing student");

    assert_error(
        unknown,
        Code::NotFound,
        "STUDENT_NOT_FOUND",
        "student 31337 not found",
    );
    assert!(empty.courses.is_empty());
    assert_eq!(empty.next_page_token, "");
    app.stop().await;
}
