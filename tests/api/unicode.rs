//! Text that Unicode lets a client write several ways is one value: look-alike codes and
//! e-mails are duplicates, lengths hold for what is stored, invisible-only text is refused, and
//! search folds case and spelling. What is stored is what folding gives back, old rows included.

use sqlx::{Connection, PgConnection, SqliteConnection};
use student_service::api::pb;
use tonic::Code;

use crate::{
    courses::search,
    helpers::{Backend, TestApp, assert_error, on_both_backends, violated_fields},
};

on_both_backends!(
    codes_and_emails_that_grow_when_case_changes_are_refused_by_their_stored_length,
    look_alike_codes_and_emails_are_duplicates,
    invisible_only_names_titles_and_codes_are_refused,
    search_folds_case_and_unicode_spelling,
    capital_sharp_s_is_one_spelling_of_ss,
    migration_refolds_what_the_old_fold_stored,
);

async fn create_course(
    app: &TestApp,
    code: &str,
    title: &str,
) -> Result<pb::Course, tonic::Status> {
    app.courses
        .clone()
        .create_course(pb::CreateCourseRequest {
            code: code.into(),
            title: title.into(),
            capacity: 5,
            request_id: String::new(),
        })
        .await
        .map(tonic::Response::into_inner)
}

async fn create_student(
    app: &TestApp,
    name: &str,
    email: &str,
) -> Result<pb::Student, tonic::Status> {
    app.students
        .clone()
        .create_student(pb::CreateStudentRequest {
            name: name.into(),
            email: email.into(),
            request_id: String::new(),
        })
        .await
        .map(tonic::Response::into_inner)
}

async fn codes_and_emails_that_grow_when_case_changes_are_refused_by_their_stored_length(
    backend: Backend,
) {
    let app = TestApp::spawn(backend).await;

    // 17 characters sent, 34 once upper-cased ("ß" -> "SS"); likewise "ﬃ" -> "FFI", "ŉ" -> "ʼN".
    for code in ["ß".repeat(17), "ﬃ".repeat(11), "ŉ".repeat(20)] {
        let status = assert_error(
            create_course(&app, &code, "Grows").await,
            Code::InvalidArgument,
            "INVALID_ARGUMENT",
            "once normalised and upper-cased",
        );
        assert_eq!(violated_fields(&status), ["code"]);
    }
    // "İ" lower-cases to two code points: 32 of them are 96 bytes before the @.
    let status = assert_error(
        create_student(&app, "Long", &format!("{}@example.com", "İ".repeat(32))).await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
        "at most 64 bytes before the @",
    );
    assert_eq!(violated_fields(&status), ["email"]);

    let fits = create_course(&app, &"ß".repeat(16), "Fits")
        .await
        .expect("32 once upper-cased");
    assert_eq!(fits.code, "SS".repeat(16));
    let student = create_student(&app, "Fits", &format!("{}@example.com", "İ".repeat(21)))
        .await
        .expect("63 bytes once lower-cased");
    assert_eq!(
        student.email,
        format!("{}@example.com", "i\u{307}".repeat(21))
    );
    assert_eq!(
        app.students
            .clone()
            .get_student(pb::GetStudentRequest {
                student_id: student.id
            })
            .await
            .expect("read back")
            .into_inner(),
        student
    );
    app.assert_integrity().await;
    app.stop().await;
}

async fn look_alike_codes_and_emails_are_duplicates(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let cafe = create_course(&app, "CAF\u{c9}", "Coffee")
        .await
        .expect("NFC");
    create_course(&app, "CS1", "Computing")
        .await
        .expect("ASCII");
    create_student(&app, "José", "jos\u{e9}@example.com")
        .await
        .expect("NFC");

    // The same code with the accent as a combining mark (NFD), in full-width letters, with ß.
    for (code, stored) in [("CAFE\u{301}", "CAF\u{c9}"), ("ｃｓ１", "CS1")] {
        assert_error(
            create_course(&app, code, "Again").await,
            Code::AlreadyExists,
            "COURSE_CODE_TAKEN",
            stored,
        );
    }
    assert_error(
        create_student(&app, "José again", "JOSE\u{301}@EXAMPLE.COM").await,
        Code::AlreadyExists,
        "EMAIL_TAKEN",
        "jos\u{e9}@example.com",
    );
    create_course(&app, "STRASSE", "Roads")
        .await
        .expect("first");
    assert_error(
        create_course(&app, "straße", "Roads again").await,
        Code::AlreadyExists,
        "COURSE_CODE_TAKEN",
        "STRASSE",
    );
    // Names and titles are stored in NFC: one spelling for one visible string.
    let nfd = create_course(&app, "NFD", "Cafe\u{301} au lait")
        .await
        .expect("NFD title");
    assert_eq!(nfd.title, "Caf\u{e9} au lait");
    assert_eq!(cafe.code, "CAF\u{c9}");
    app.stop().await;
}

async fn invisible_only_names_titles_and_codes_are_refused(backend: Backend) {
    let app = TestApp::spawn(backend).await;

    for invisible in ["\u{200B}", "\u{3164}", "\u{200D}\u{FEFF}"] {
        let status = assert_error(
            create_course(&app, invisible, invisible).await,
            Code::InvalidArgument,
            "INVALID_ARGUMENT",
            "invisible",
        );
        assert_eq!(violated_fields(&status), ["code", "title"]);
        let status = assert_error(
            create_student(&app, invisible, "a@example.com").await,
            Code::InvalidArgument,
            "INVALID_ARGUMENT",
            "visible character",
        );
        assert_eq!(violated_fields(&status), ["name"]);
    }
    // A code may not hide an invisible character beside visible ones either.
    assert_error(
        create_course(&app, "CS\u{200B}1", "Hidden").await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
        "invisible",
    );
    app.stop().await;
}

async fn search_folds_case_and_unicode_spelling(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    create_course(&app, "ROADS", "Straße und Weg")
        .await
        .expect("German");
    create_course(&app, "GREEK", "ΟΔΟΣ ΚΑΙ ΔΡΟΜΟΣ")
        .await
        .expect("Greek");
    create_course(&app, "COFFEE", "Caf\u{e9} culture")
        .await
        .expect("NFC");

    assert_eq!(search(&app, "strasse").await, ["ROADS"]);
    assert_eq!(search(&app, "STRASSE").await, ["ROADS"]);
    assert_eq!(search(&app, "οδοσ").await, ["GREEK"]);
    assert_eq!(search(&app, "οδος").await, ["GREEK"]);
    assert_eq!(search(&app, "cafe\u{301}").await, ["COFFEE"]);
    assert_eq!(search(&app, "ｒｏａｄ").await, ["ROADS"]);
    app.stop().await;
}

async fn capital_sharp_s_is_one_spelling_of_ss(backend: Backend) {
    let app = TestApp::spawn(backend).await;

    // U+1E9E lower-cases to `ß`, which folds again to `ss`: stored is the form that stays.
    let student = create_student(&app, "Capital", "STRA\u{1E9E}E@X.ORG")
        .await
        .expect("first");
    assert_eq!(student.email, "strasse@x.org");
    assert_error(
        create_student(&app, "Small", "strasse@x.org").await,
        Code::AlreadyExists,
        "EMAIL_TAKEN",
        "strasse@x.org",
    );
    // Sending back what was read changes nothing and collides with nobody.
    let updated = app
        .update_student(student.clone(), &["*"])
        .await
        .expect("UpdateStudent with the student as read");
    assert_eq!(updated.email, student.email);

    let course = create_course(&app, "STRA\u{1E9E}E", "Roads")
        .await
        .expect("first");
    assert_eq!(course.code, "STRASSE");
    assert_error(
        create_course(&app, "STRASSE", "Roads again").await,
        Code::AlreadyExists,
        "COURSE_CODE_TAKEN",
        "STRASSE",
    );
    let updated = app
        .update_course(course.clone(), &["*"])
        .await
        .expect("UpdateCourse with the course as read");
    assert_eq!(updated.code, course.code);
    create_course(&app, "ROADS", "STRA\u{1E9E}E UND WEG")
        .await
        .expect("a title with U+1E9E");
    assert_eq!(search(&app, "strasse").await, ["STRASSE", "ROADS"]);
    assert_eq!(search(&app, "stra\u{1E9E}e").await, ["STRASSE", "ROADS"]);
    app.assert_integrity().await;
    app.stop().await;
}

/// Rows as the service stored them before migration 0006, written behind its back.
const STORED_BY_THE_OLD_FOLD: &str = "\
    INSERT INTO students (name, email, create_time) VALUES ('Alone', 'straße@x.org', 0); \
    INSERT INTO students (name, email, create_time) VALUES ('Sharp', 'maße@x.org', 0); \
    INSERT INTO students (name, email, create_time) VALUES ('Plain', 'masse@x.org', 0); \
    INSERT INTO courses (code, title, title_folded, capacity, create_time) \
        VALUES ('STRAẞE', 'STRAẞE', 'straße', 0, 0); \
    DELETE FROM _sqlx_migrations WHERE version = 6;";

async fn migration_refolds_what_the_old_fold_stored(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let url = app.database.url.as_str();
    if url.starts_with("sqlite:") {
        let mut connection = SqliteConnection::connect(url).await.expect("connect");
        sqlx::raw_sql(STORED_BY_THE_OLD_FOLD)
            .execute(&mut connection)
            .await
            .expect("old rows");
    } else {
        let mut connection = PgConnection::connect(url).await.expect("connect");
        sqlx::raw_sql(STORED_BY_THE_OLD_FOLD)
            .execute(&mut connection)
            .await
            .expect("old rows");
    }

    let applied = app.store.migrate().await.expect("migrate");

    assert_eq!(
        applied.iter().map(|m| m.version).collect::<Vec<_>>(),
        [6],
        "{applied:?}"
    );
    let alone = app
        .students
        .clone()
        .get_student(pb::GetStudentRequest { student_id: 1 })
        .await
        .expect("GetStudent")
        .into_inner();
    assert_eq!(alone.email, "strasse@x.org");
    assert_error(
        create_student(&app, "Again", "STRA\u{1E9E}E@X.ORG").await,
        Code::AlreadyExists,
        "EMAIL_TAKEN",
        "strasse@x.org",
    );
    assert_eq!(app.get_course(1).await.code, "STRASSE");
    assert_eq!(search(&app, "strasse").await, ["STRASSE"]);
    // `masse@x.org` is taken: the student who would merge into it keeps the old form, and
    // verify names them for the operator.
    let left = app.store.verify().await.expect("verify runs");
    assert_eq!(
        left.iter().map(ToString::to_string).collect::<Vec<_>>(),
        ["email not normalised: student 2"]
    );
    app.stop().await;
}
