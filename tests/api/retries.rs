//! Safe retries of creates (AIP-155 `request_id`): a retry gets the first answer instead of a
//! conflict, racing retries create once, another request under the same id is refused, a
//! malformed id is named, and the id is forgotten after its retention.

use student_service::api::pb::{self, student_service_client::StudentServiceClient};
use tonic::{Code, Status, transport::Channel};

use crate::helpers::{
    Backend, TestApp, assert_error, error_metadata, on_both_backends, pool_settings, start_app,
    stop_app, violated_fields,
};

const REQUEST_ID: &str = "6f1c2a3b-4d5e-4f60-8a7b-9c0d1e2f3a4b";

on_both_backends!(
    a_retried_create_student_answers_the_student_it_created,
    a_retried_create_course_answers_the_course_it_created,
    a_retried_batch_answers_what_the_first_call_answered,
    racing_retries_create_once,
    only_a_create_that_succeeded_is_remembered,
    request_ids_are_forgotten_after_their_retention,
);

fn student(name: &str, email: &str, request_id: &str) -> pb::CreateStudentRequest {
    pb::CreateStudentRequest {
        name: name.into(),
        email: email.into(),
        request_id: request_id.into(),
    }
}

async fn create(
    channel: &Channel,
    request: pb::CreateStudentRequest,
) -> Result<pb::Student, Status> {
    StudentServiceClient::new(channel.clone())
        .create_student(request)
        .await
        .map(tonic::Response::into_inner)
}

async fn student_count(app: &TestApp) -> usize {
    app.students
        .clone()
        .list_students(pb::ListStudentsRequest::default())
        .await
        .expect("list")
        .into_inner()
        .students
        .len()
}

async fn a_retried_create_student_answers_the_student_it_created(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let first = create(&app.channel, student("Ada", "ada@example.com", REQUEST_ID))
        .await
        .expect("created");
    // The same request again, the id in upper case: the same student, not ALREADY_EXISTS.
    let retry = create(
        &app.channel,
        student("Ada", "ada@example.com", &REQUEST_ID.to_uppercase()),
    )
    .await
    .expect("the retry answers the first result");
    assert_eq!(retry, first);
    assert_eq!(student_count(&app).await, 1);

    // The same id with another request, or for another method, is a client's mistake.
    let status = assert_error(
        create(
            &app.channel,
            student("Ada", "ada.l@example.com", REQUEST_ID),
        )
        .await,
        Code::InvalidArgument,
        "REQUEST_ID_REUSED",
        "a retry must repeat its request exactly",
    );
    assert_eq!(error_metadata(&status, "request_id"), REQUEST_ID);
    assert_eq!(
        error_metadata(&status, "method"),
        "school.v1.StudentService/CreateStudent"
    );
    let course = app
        .courses
        .clone()
        .create_course(pb::CreateCourseRequest {
            code: "CS-1".into(),
            title: "Engines".into(),
            capacity: 3,
            request_id: REQUEST_ID.into(),
        })
        .await;
    assert_error(
        course,
        Code::InvalidArgument,
        "REQUEST_ID_REUSED",
        "StudentService/CreateStudent",
    );

    // Without an id, or with another one, the e-mail is taken as before.
    for request_id in ["", "0b7e1f2c-3a4d-4e5f-8a6b-7c8d9e0f1a2b"] {
        assert_error(
            create(&app.channel, student("Ada", "ada@example.com", request_id)).await,
            Code::AlreadyExists,
            "EMAIL_TAKEN",
            "already exists",
        );
    }

    // A malformed id is named, together with the request's other mistakes.
    let status = assert_error(
        create(&app.channel, student(" ", "ada@example.com", "retry-1")).await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
        "request_id: must be a UUID",
    );
    assert_eq!(violated_fields(&status), ["name", "request_id"]);
    app.stop().await;
}

async fn a_retried_create_course_answers_the_course_it_created(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let request = pb::CreateCourseRequest {
        code: "MATH-101".into(),
        title: "Calculus".into(),
        capacity: 30,
        request_id: REQUEST_ID.into(),
    };
    let mut courses = app.courses.clone();
    let first = courses
        .create_course(request.clone())
        .await
        .expect("created")
        .into_inner();
    let retry = courses
        .create_course(request.clone())
        .await
        .expect("the retry answers the first result")
        .into_inner();
    assert_eq!(retry, first);
    let changed = pb::CreateCourseRequest {
        capacity: 31,
        ..request
    };
    assert_error(
        courses.create_course(changed).await,
        Code::InvalidArgument,
        "REQUEST_ID_REUSED",
        REQUEST_ID,
    );
    app.stop().await;
}

async fn a_retried_batch_answers_what_the_first_call_answered(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let ada = app.create_student("Ada", "ada@example.com").await.id;
    let a = app.create_course("A-1", "A", 5).await.id;
    let b = app.create_course("B-1", "B", 5).await.id;
    let batch = |request_id: &str| pb::BatchAssignCoursesRequest {
        student_id: ada,
        course_ids: vec![b, a],
        request_id: request_id.into(),
    };
    let mut students = app.students.clone();
    let first = students
        .batch_assign_courses(batch(REQUEST_ID))
        .await
        .expect("enrolled")
        .into_inner();
    assert!(first.results.iter().all(|result| result.created));
    // The retry says what the first call did (created), where a new call says the pairs exist.
    let retry = students
        .batch_assign_courses(batch(REQUEST_ID))
        .await
        .expect("the retry")
        .into_inner();
    assert_eq!(retry, first);
    let again = students
        .batch_assign_courses(batch(""))
        .await
        .expect("a new call")
        .into_inner();
    assert!(again.results.iter().all(|result| !result.created));
    let mut other = batch(REQUEST_ID);
    other.course_ids.pop();
    assert_error(
        students.batch_assign_courses(other).await,
        Code::InvalidArgument,
        "REQUEST_ID_REUSED",
        REQUEST_ID,
    );
    app.stop().await;
}

async fn racing_retries_create_once(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let attempts: Vec<_> = (0..8)
        .map(|_| {
            let channel = app.channel.clone();
            tokio::spawn(async move {
                create(&channel, student("Ada", "ada@example.com", REQUEST_ID)).await
            })
        })
        .collect();
    let mut answers = Vec::new();
    for attempt in attempts {
        answers.push(
            attempt
                .await
                .expect("joined")
                .expect("every attempt succeeds"),
        );
    }
    assert!(
        answers.iter().all(|answer| *answer == answers[0]),
        "{answers:?}"
    );
    assert_eq!(student_count(&app).await, 1);
    app.stop().await;
}

async fn only_a_create_that_succeeded_is_remembered(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let blocker = app.create_student("Grace", "ada@example.com").await;
    assert_error(
        create(&app.channel, student("Ada", "ada@example.com", REQUEST_ID)).await,
        Code::AlreadyExists,
        "EMAIL_TAKEN",
        "already exists",
    );
    app.students
        .clone()
        .delete_student(pb::DeleteStudentRequest {
            student_id: blocker.id,
            ..Default::default()
        })
        .await
        .expect("deleted");
    let created = create(&app.channel, student("Ada", "ada@example.com", REQUEST_ID))
        .await
        .expect("the failed attempt left nothing behind");
    assert_eq!(created.name, "Ada");
    app.stop().await;
}

async fn request_ids_are_forgotten_after_their_retention(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    create(&app.channel, student("Ada", "ada@example.com", REQUEST_ID))
        .await
        .expect("created");
    // Nothing is old enough yet.
    assert_eq!(app.store.expire_request_ids(0).await.expect("expire"), 0);
    // Everything created before now is.
    let now = student_service::domain::now_micros() + 1;
    assert_eq!(app.store.expire_request_ids(now).await.expect("expire"), 1);
    assert_error(
        create(&app.channel, student("Ada", "ada@example.com", REQUEST_ID)).await,
        Code::AlreadyExists,
        "EMAIL_TAKEN",
        "already exists",
    );
    app.stop().await;
}

/// Every replica answers a retry the same: the second server was not the one that created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(test_postgres),
    ignore = "needs PostgreSQL: set TEST_DATABASE_URL (README)"
)]
async fn a_retry_on_another_replica_answers_the_first_result() {
    let app = TestApp::spawn(Backend::postgres()).await;
    let first = create(&app.channel, student("Ada", "ada@example.com", REQUEST_ID))
        .await
        .expect("created");
    let other = start_app(
        &app.database.url,
        student_service::server::ServerSettings::default(),
        pool_settings(),
    )
    .await;
    let channel = Channel::from_shared(format!("http://{}", other.address()))
        .expect("uri")
        .connect()
        .await
        .expect("connect to the second replica");
    let retry = create(&channel, student("Ada", "ada@example.com", REQUEST_ID))
        .await
        .expect("the other replica answers the first result");
    assert_eq!(retry, first);
    stop_app(other).await;
    app.stop().await;
}
