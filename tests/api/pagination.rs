use student_service::api::pb;
use tonic::Code;

use crate::helpers::{Backend, TestApp, assert_error, on_both_backends, violated_fields};

on_both_backends!(
    list_courses_walks_every_page_once,
    list_students_and_search_walk_every_page_once,
    page_tokens_from_elsewhere_are_invalid_argument,
    page_size_defaults_clamps_and_rejects_negatives,
    pages_of_any_size_list_the_same_courses,
);

async fn list_courses_walks_every_page_once(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let ada = app.create_student("Ada", "ada@example.com").await;
    let mut expected = Vec::new();
    for i in 0..10 {
        let course = app.create_course(&format!("C-{i}"), "Course", 0).await;
        app.assign(ada.id, course.id).await.expect("assign");
        expected.push(course.id);
    }

    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = app
            .list_courses(ada.id, 3, &token)
            .await
            .expect("ListCourses");
        pages += 1;
        assert!(page.courses.len() <= 3);
        seen.extend(page.courses.iter().map(|c| c.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }

    assert_eq!(seen, expected);
    assert_eq!(pages, 4, "3 + 3 + 3 + 1");
    app.stop().await;
}

async fn list_students_and_search_walk_every_page_once(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let students = app.create_students(7).await;
    let mut courses = Vec::new();
    for i in 0..5 {
        courses.push(app.create_course(&format!("CS-{i}"), "Course", 0).await.id);
    }
    app.create_course("MATH-1", "Not a match", 0).await;

    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = app
            .students
            .clone()
            .list_students(pb::ListStudentsRequest {
                page_size: 2,
                page_token: token,
            })
            .await
            .expect("ListStudents")
            .into_inner();
        seen.extend(page.students.iter().map(|s| s.id));
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(seen, students);

    let mut found = Vec::new();
    let mut token = String::new();
    loop {
        let page = app
            .courses
            .clone()
            .search_courses(pb::SearchCoursesRequest {
                query: "cs-".into(),
                page_size: 2,
                page_token: token,
            })
            .await
            .expect("SearchCourses")
            .into_inner();
        found.extend(page.courses.iter().map(|c| c.id));
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(found, courses);
    app.stop().await;
}

async fn page_tokens_from_elsewhere_are_invalid_argument(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let ada = app.create_student("Ada", "ada@example.com").await;
    let grace = app.create_student("Grace", "grace@example.com").await;
    for i in 0..3 {
        let course = app.create_course(&format!("C-{i}"), "Course", 0).await;
        app.assign(ada.id, course.id).await.expect("assign");
        app.assign(grace.id, course.id).await.expect("assign");
    }
    let token = app
        .list_courses(ada.id, 1, "")
        .await
        .expect("first page")
        .next_page_token;
    assert!(!token.is_empty());

    let other_student = app.list_courses(grace.id, 1, &token).await;
    let other_rpc = app
        .students
        .clone()
        .list_students(pb::ListStudentsRequest {
            page_size: 1,
            page_token: token.clone(),
        })
        .await;

    assert_error(
        other_student,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
        "page_token",
    );
    assert_error(
        other_rpc,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
        "page_token",
    );
    let mut tampered = token.clone();
    tampered.replace_range(2..3, if &token[2..3] == "A" { "B" } else { "A" });
    for forged in [
        tampered.as_str(),
        "garbage",
        "AAAAAAAAAAAAAAAAAAAAAAA",
        "💥",
        &"x".repeat(100_000),
    ] {
        let result = app.list_courses(ada.id, 1, forged).await;
        assert_error(
            result,
            Code::InvalidArgument,
            "INVALID_ARGUMENT",
            "page_token",
        );
    }
    app.stop().await;
}

async fn page_size_defaults_clamps_and_rejects_negatives(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let ada = app.create_student("Ada", "ada@example.com").await;
    for i in 0..3 {
        let course = app.create_course(&format!("C-{i}"), "Course", 0).await;
        app.assign(ada.id, course.id).await.expect("assign");
    }

    let default = app
        .list_courses(ada.id, 0, "")
        .await
        .expect("page_size 0 means 50");
    let huge = app
        .list_courses(ada.id, i32::MAX, "")
        .await
        .expect("clamped to 1000");
    let negative = app.list_courses(-1, -1, "not-a-token").await;

    assert_eq!(default.courses.len(), 3);
    assert_eq!(huge.courses.len(), 3);
    let status = assert_error(
        negative,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
        "page_size",
    );
    assert_eq!(
        violated_fields(&status),
        ["student_id", "page_size", "page_token"]
    );
    app.stop().await;
}

/// Small pages of a SQLite file are read on the calling thread, large ones on the blocking pool
/// (see `store::sqlite_direct`); every size lists the same courses, in order.
async fn pages_of_any_size_list_the_same_courses(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let ada = app.create_student("Ada", "ada@example.com").await;
    let mut expected = Vec::new();
    for i in 0..150 {
        let course = app.create_course(&format!("C-{i}"), "Course", 0).await;
        app.assign(ada.id, course.id).await.expect("assign");
        expected.push(course.id);
    }

    for page_size in [1, 50, 100, 101, 149, 150, 1000] {
        let mut seen = Vec::new();
        let mut token = String::new();
        loop {
            let page = app
                .list_courses(ada.id, page_size, &token)
                .await
                .expect("ListCourses");
            seen.extend(page.courses.iter().map(|c| c.id));
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        assert_eq!(seen, expected, "page_size {page_size}");
    }
    app.stop().await;
}
