use student_service::api::pb;
use tonic::Code;

use crate::helpers::{Backend, TestApp, assert_error, on_both_backends, violated_fields};

on_both_backends!(
    create_course_returns_the_stored_course,
    create_course_rejects_every_invalid_field_at_once,
    course_codes_are_unique_ignoring_case,
    search_matches_code_prefix_or_title_substring_ignoring_case,
    search_treats_like_wildcards_literally,
    delete_course_removes_its_enrollments,
    list_enrolled_students_shows_the_course_side,
);

async fn create_course_returns_the_stored_course(backend: Backend) {
    let app = TestApp::spawn(backend).await;

    let created = app
        .create_course(" cs-101 ", "  Analytical Engines ", 30)
        .await;

    assert!(created.id > 0);
    assert_eq!(created.code, "CS-101");
    assert_eq!(created.title, "Analytical Engines");
    assert_eq!((created.capacity, created.enrolled), (30, 0));
    assert!(created.create_time.is_some());
    assert_eq!(app.get_course(created.id).await, created);
    let unknown = app
        .courses
        .clone()
        .get_course(pb::GetCourseRequest { course_id: 999 })
        .await;
    assert_error(
        unknown,
        Code::NotFound,
        "COURSE_NOT_FOUND",
        "course 999 not found",
    );
    app.stop().await;
}

async fn create_course_rejects_every_invalid_field_at_once(backend: Backend) {
    let app = TestApp::spawn(backend).await;

    let result = app
        .courses
        .clone()
        .create_course(pb::CreateCourseRequest {
            code: "C".repeat(33),
            title: "".into(),
            capacity: -1,
            request_id: String::new(),
        })
        .await;

    let status = assert_error(
        result,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
        "capacity",
    );
    assert_eq!(violated_fields(&status), ["code", "title", "capacity"]);
    let spaced = app
        .courses
        .clone()
        .create_course(pb::CreateCourseRequest {
            code: "CS 101".into(),
            title: "Engines".into(),
            capacity: 0,
            request_id: String::new(),
        })
        .await;
    assert_error(
        spaced,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
        "whitespace",
    );
    app.stop().await;
}

async fn course_codes_are_unique_ignoring_case(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.create_course("CS-101", "Engines", 0).await;

    let result = app
        .courses
        .clone()
        .create_course(pb::CreateCourseRequest {
            code: "cs-101".into(),
            title: "Other".into(),
            capacity: 0,
            request_id: String::new(),
        })
        .await;

    assert_error(result, Code::AlreadyExists, "COURSE_CODE_TAKEN", "CS-101");
    app.stop().await;
}

pub(crate) async fn search(app: &TestApp, query: &str) -> Vec<String> {
    let response = app
        .courses
        .clone()
        .search_courses(pb::SearchCoursesRequest {
            query: query.into(),
            page_size: 0,
            page_token: String::new(),
        })
        .await
        .expect("SearchCourses")
        .into_inner();
    response.courses.into_iter().map(|c| c.code).collect()
}

async fn search_matches_code_prefix_or_title_substring_ignoring_case(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.create_course("CS-101", "Analytical Engines", 0).await;
    app.create_course("MATH-200", "Linear Algebra", 0).await;
    app.create_course("ÉCO-1", "Économie générale", 0).await;
    app.create_course("BIO-1", "Cells and CS history", 0).await;

    assert_eq!(
        search(&app, "").await,
        ["CS-101", "MATH-200", "ÉCO-1", "BIO-1"]
    );
    assert_eq!(search(&app, "cs").await, ["CS-101", "BIO-1"]);
    assert_eq!(search(&app, "ALGEBRA").await, ["MATH-200"]);
    assert_eq!(search(&app, "éco").await, ["ÉCO-1"]);
    assert_eq!(search(&app, "GÉNÉRALE").await, ["ÉCO-1"]);
    assert_eq!(
        search(&app, "101").await,
        Vec::<String>::new(),
        "codes match by prefix only"
    );
    assert_eq!(search(&app, "nothing like it").await, Vec::<String>::new());
    let too_long = app
        .courses
        .clone()
        .search_courses(pb::SearchCoursesRequest {
            query: "q".repeat(201),
            ..Default::default()
        })
        .await;
    assert_error(too_long, Code::InvalidArgument, "INVALID_ARGUMENT", "query");
    app.stop().await;
}

async fn search_treats_like_wildcards_literally(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.create_course("A-1", "100% practical", 0).await;
    app.create_course("A-2", "1000 practical exercises", 0)
        .await;
    app.create_course("A_3", "Underscores", 0).await;

    assert_eq!(search(&app, "100%").await, ["A-1"]);
    assert_eq!(search(&app, "%").await, ["A-1"]);
    assert_eq!(search(&app, "A_").await, ["A_3"]);
    app.stop().await;
}

async fn delete_course_removes_its_enrollments(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let ada = app.create_student("Ada", "ada@example.com").await;
    let engines = app.create_course("CS-101", "Engines", 0).await;
    let algebra = app.create_course("MATH-1", "Algebra", 0).await;
    app.assign(ada.id, engines.id).await.expect("assign");
    app.assign(ada.id, algebra.id).await.expect("assign");

    app.courses
        .clone()
        .delete_course(pb::DeleteCourseRequest {
            course_id: engines.id,
            ..Default::default()
        })
        .await
        .expect("DeleteCourse");

    let courses = app
        .list_courses(ada.id, 0, "")
        .await
        .expect("ListCourses")
        .courses;
    assert_eq!(
        courses.iter().map(|c| c.id).collect::<Vec<_>>(),
        [algebra.id]
    );
    assert_eq!(app.enrollment_rows(engines.id).await, 0);
    let again = app
        .courses
        .clone()
        .delete_course(pb::DeleteCourseRequest {
            course_id: engines.id,
            ..Default::default()
        })
        .await;
    assert_error(again, Code::NotFound, "COURSE_NOT_FOUND", "not found");
    app.assert_integrity().await;
    app.stop().await;
}

async fn list_enrolled_students_shows_the_course_side(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let course = app.create_course("CS-101", "Engines", 0).await;
    let empty = app.create_course("CS-102", "Nobody here", 0).await;
    let mut enrolled = Vec::new();
    for i in 0..3 {
        let student = app
            .create_student(&format!("S{i}"), &format!("s{i}@example.com"))
            .await;
        app.assign(student.id, course.id).await.expect("assign");
        enrolled.push(student);
    }
    app.create_student("Bystander", "b@example.com").await;
    let mut courses = app.courses.clone();

    let listed = courses
        .list_enrolled_students(pb::ListEnrolledStudentsRequest {
            course_id: course.id,
            ..Default::default()
        })
        .await
        .expect("ListEnrolledStudents")
        .into_inner();

    assert_eq!(listed.students, enrolled);
    assert_eq!(listed.next_page_token, "");
    let nobody = courses
        .list_enrolled_students(pb::ListEnrolledStudentsRequest {
            course_id: empty.id,
            ..Default::default()
        })
        .await
        .expect("an empty course lists nobody");
    assert!(nobody.into_inner().students.is_empty());
    let unknown = courses
        .list_enrolled_students(pb::ListEnrolledStudentsRequest {
            course_id: 777,
            ..Default::default()
        })
        .await;
    assert_error(
        unknown,
        Code::NotFound,
        "COURSE_NOT_FOUND",
        "course 777 not found",
    );
    app.stop().await;
}
