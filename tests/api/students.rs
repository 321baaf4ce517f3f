use student_service::api::pb;
use tonic::Code;

use crate::helpers::{Backend, TestApp, assert_error, on_both_backends, violated_fields};

on_both_backends!(
    create_student_returns_the_stored_student,
    create_student_rejects_every_invalid_field_at_once,
    create_student_with_a_taken_email_is_already_exists,
    hostile_and_unicode_names_are_stored_verbatim,
    get_student_of_an_unknown_id_is_not_found,
    ids_must_be_positive,
    delete_student_frees_their_seats,
);

async fn create_student_returns_the_stored_student(backend: Backend) {
    let app = TestApp::spawn(backend).await;

    let created = app
        .create_student("  Ada Lovelace ", "Ada@Example.COM")
        .await;

    assert!(created.id > 0);
    assert_eq!(created.name, "Ada Lovelace");
    assert_eq!(created.email, "ada@example.com");
    assert!(created.create_time.is_some());
    let fetched = app
        .students
        .clone()
        .get_student(pb::GetStudentRequest {
            student_id: created.id,
        })
        .await
        .expect("GetStudent")
        .into_inner();
    assert_eq!(fetched, created);
    app.stop().await;
}

async fn create_student_rejects_every_invalid_field_at_once(backend: Backend) {
    let app = TestApp::spawn(backend).await;

    let result = app
        .students
        .clone()
        .create_student(pb::CreateStudentRequest {
            name: "   ".into(),
            email: "not-an-email".into(),
            request_id: String::new(),
        })
        .await;

    let status = assert_error(
        result,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
        "name: must not be empty",
    );
    assert_eq!(violated_fields(&status), ["name", "email"]);
    let too_long = app
        .students
        .clone()
        .create_student(pb::CreateStudentRequest {
            name: "x".repeat(201),
            email: "a@example.com".into(),
            request_id: String::new(),
        })
        .await;
    assert_error(
        too_long,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
        "at most 200 characters",
    );
    let listed = app
        .students
        .clone()
        .list_students(pb::ListStudentsRequest::default())
        .await;
    assert!(
        listed
            .expect("ListStudents")
            .into_inner()
            .students
            .is_empty(),
        "nothing was stored"
    );
    app.stop().await;
}

async fn create_student_with_a_taken_email_is_already_exists(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.create_student("Ada", "ada@example.com").await;

    let result = app
        .students
        .clone()
        .create_student(pb::CreateStudentRequest {
            name: "Another Ada".into(),
            email: "ADA@example.com".into(),
            request_id: String::new(),
        })
        .await;

    assert_error(
        result,
        Code::AlreadyExists,
        "EMAIL_TAKEN",
        "ada@example.com",
    );
    app.stop().await;
}

async fn hostile_and_unicode_names_are_stored_verbatim(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let names = [
        "Robert'); DROP TABLE students;--",
        "Zoë Ñúñez-Ångström",
        "学生 🎓 طالب",
        "100% _wild_ \\ chars \" ' `",
    ];

    for (i, name) in names.iter().enumerate() {
        let created = app.create_student(name, &format!("s{i}@example.com")).await;
        let fetched = app
            .students
            .clone()
            .get_student(pb::GetStudentRequest {
                student_id: created.id,
            })
            .await
            .expect("GetStudent")
            .into_inner();
        assert_eq!(fetched.name, *name);
    }

    let listed = app
        .students
        .clone()
        .list_students(pb::ListStudentsRequest::default())
        .await;
    assert_eq!(
        listed
            .expect("the students table still exists")
            .into_inner()
            .students
            .len(),
        names.len()
    );
    app.stop().await;
}

async fn get_student_of_an_unknown_id_is_not_found(backend: Backend) {
    let app = TestApp::spawn(backend).await;

    let result = app
        .students
        .clone()
        .get_student(pb::GetStudentRequest { student_id: 42 })
        .await;

    assert_error(
        result,
        Code::NotFound,
        "STUDENT_NOT_FOUND",
        "student 42 not found",
    );
    app.stop().await;
}

async fn ids_must_be_positive(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let mut students = app.students.clone();
    let mut courses = app.courses.clone();

    for id in [0, -1, i64::MIN] {
        let status = assert_error(
            students
                .get_student(pb::GetStudentRequest { student_id: id })
                .await,
            Code::InvalidArgument,
            "INVALID_ARGUMENT",
            "student_id: must be a positive id",
        );
        assert_eq!(violated_fields(&status), ["student_id"]);
        assert_error(
            courses
                .get_course(pb::GetCourseRequest { course_id: id })
                .await,
            Code::InvalidArgument,
            "INVALID_ARGUMENT",
            "course_id",
        );
        assert_error(
            students
                .delete_student(pb::DeleteStudentRequest {
                    student_id: id,
                    ..Default::default()
                })
                .await,
            Code::InvalidArgument,
            "INVALID_ARGUMENT",
            "student_id",
        );
        assert_error(
            courses
                .delete_course(pb::DeleteCourseRequest {
                    course_id: id,
                    ..Default::default()
                })
                .await,
            Code::InvalidArgument,
            "INVALID_ARGUMENT",
            "course_id",
        );
    }
    let status = assert_error(
        app.assign(0, -5).await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
        "student_id",
    );
    assert_eq!(violated_fields(&status), ["student_id", "course_id"]);
    app.stop().await;
}

async fn delete_student_frees_their_seats(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let ada = app.create_student("Ada", "ada@example.com").await;
    let course = app.create_course("CS-101", "Engines", 1).await;
    app.assign(ada.id, course.id).await.expect("assign");

    app.students
        .clone()
        .delete_student(pb::DeleteStudentRequest {
            student_id: ada.id,
            ..Default::default()
        })
        .await
        .expect("DeleteStudent");

    assert_eq!(app.get_course(course.id).await.enrolled, 0);
    assert_eq!(app.enrollment_rows(course.id).await, 0);
    let again = app
        .students
        .clone()
        .delete_student(pb::DeleteStudentRequest {
            student_id: ada.id,
            ..Default::default()
        })
        .await;
    assert_error(
        again,
        Code::NotFound,
        "STUDENT_NOT_FOUND",
        &format!("student {} not found", ada.id),
    );
    let grace = app.create_student("Grace", "grace@example.com").await;
    assert!(
        app.assign(grace.id, course.id)
            .await
            .expect("the seat is free")
            .created
    );
    app.assert_integrity().await;
    app.stop().await;
}
