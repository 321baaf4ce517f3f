//! UpdateStudent and UpdateCourse with field masks (AIP-134), and etags on updates and deletes
//! (AIP-154).

use prost_types::FieldMask;
use student_service::api::pb;
use tonic::{Code, Status};

use crate::helpers::{
    Backend, TestApp, assert_error, error_metadata, on_both_backends, violated_fields,
};

on_both_backends!(
    update_student_changes_only_the_masked_fields,
    an_empty_mask_changes_the_fields_that_are_set,
    update_student_validates_like_create,
    bad_masks_are_invalid_argument_on_update_mask,
    updating_a_missing_resource_is_not_found,
    a_stale_etag_is_refused_and_nothing_changes,
    one_of_two_updates_with_the_same_etag_wins,
    deletes_honour_the_etag,
    update_course_changes_code_title_and_capacity,
    capacity_cannot_drop_below_the_students_enrolled,
    enrollments_do_not_change_a_course_etag,
    an_update_that_changes_nothing_keeps_the_etag,
);

fn mask(paths: &[&str]) -> Option<FieldMask> {
    Some(FieldMask {
        paths: paths.iter().map(|p| (*p).to_owned()).collect(),
    })
}

impl TestApp {
    pub(crate) async fn update_student(
        &self,
        student: pb::Student,
        paths: &[&str],
    ) -> Result<pb::Student, Status> {
        let request = pb::UpdateStudentRequest {
            student: Some(student),
            update_mask: mask(paths),
        };
        let answer = self.students.clone().update_student(request).await;
        answer.map(tonic::Response::into_inner)
    }

    pub(crate) async fn update_course(
        &self,
        course: pb::Course,
        paths: &[&str],
    ) -> Result<pb::Course, Status> {
        let request = pb::UpdateCourseRequest {
            course: Some(course),
            update_mask: mask(paths),
        };
        let answer = self.courses.clone().update_course(request).await;
        answer.map(tonic::Response::into_inner)
    }

    async fn get_student(&self, student_id: i64) -> pb::Student {
        let request = pb::GetStudentRequest { student_id };
        let answer = self.students.clone().get_student(request).await;
        answer.expect("GetStudent").into_inner()
    }
}

async fn update_student_changes_only_the_masked_fields(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let ada = app.create_student("Ada", "ada@example.com").await;
    assert!(ada.etag.starts_with("W/\""), "a weak etag: {}", ada.etag);

    // The email in the request is ignored: only the name is in the mask.
    let sent = pb::Student {
        id: ada.id,
        name: "  Ada Lovelace ".into(),
        email: "ignored@example.com".into(),
        ..Default::default()
    };
    let updated = app
        .update_student(sent, &["name"])
        .await
        .expect("UpdateStudent");

    assert_eq!(updated.name, "Ada Lovelace");
    assert_eq!(updated.email, "ada@example.com");
    assert_eq!(
        (updated.id, &updated.create_time),
        (ada.id, &ada.create_time)
    );
    assert_ne!(updated.etag, ada.etag, "the etag changes with the name");
    assert_eq!(app.get_student(ada.id).await, updated);

    let sent = pb::Student {
        id: ada.id,
        email: "ADA@Lovelace.org".into(),
        ..Default::default()
    };
    let updated = app
        .update_student(sent, &["email"])
        .await
        .expect("UpdateStudent");
    assert_eq!(updated.email, "ada@lovelace.org", "normalised as on create");
    assert_eq!(updated.name, "Ada Lovelace");
    app.stop().await;
}

async fn an_empty_mask_changes_the_fields_that_are_set(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let ada = app.create_student("Ada", "ada@example.com").await;
    let course = app.create_course("CS-1", "Intro", 30).await;

    let sent = pb::Student {
        id: ada.id,
        email: "countess@example.com".into(),
        ..Default::default()
    };
    let updated = app.update_student(sent, &[]).await.expect("UpdateStudent");
    assert_eq!(
        (updated.name.as_str(), updated.email.as_str()),
        ("Ada", "countess@example.com")
    );

    // `*` changes every updatable field, to 0 (unlimited) included.
    let sent = pb::Course {
        id: course.id,
        code: "cs-2".into(),
        title: "Intro II".into(),
        capacity: 0,
        ..Default::default()
    };
    let updated = app.update_course(sent, &["*"]).await.expect("UpdateCourse");
    assert_eq!(
        (
            updated.code.as_str(),
            updated.title.as_str(),
            updated.capacity
        ),
        ("CS-2", "Intro II", 0)
    );

    // Nothing set and no mask: nothing to do is a mistake worth telling.
    let sent = pb::Student {
        id: ada.id,
        ..Default::default()
    };
    let status = assert_error(
        app.update_student(sent, &[]).await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
        "update_mask",
    );
    assert_eq!(violated_fields(&status), ["update_mask"]);
    app.stop().await;
}

async fn update_student_validates_like_create(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let ada = app.create_student("Ada", "ada@example.com").await;
    app.create_student("Bob", "bob@example.com").await;

    let sent = pb::Student {
        id: ada.id,
        name: " ".into(),
        email: "not-an-email".into(),
        ..Default::default()
    };
    let status = assert_error(
        app.update_student(sent, &["name", "email"]).await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
        "student.name",
    );
    assert_eq!(violated_fields(&status), ["student.name", "student.email"]);

    let sent = pb::Student {
        id: ada.id,
        email: "BOB@example.com".into(),
        ..Default::default()
    };
    let status = assert_error(
        app.update_student(sent, &["email"]).await,
        Code::AlreadyExists,
        "EMAIL_TAKEN",
        "bob@example.com",
    );
    assert_eq!(error_metadata(&status, "email"), "bob@example.com");
    assert_eq!(
        app.get_student(ada.id).await,
        ada,
        "a refused update writes nothing"
    );

    let status = assert_error(
        app.update_student(pb::Student::default(), &["name"]).await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
        "student.id",
    );
    assert_eq!(violated_fields(&status), ["student.id", "student.name"]);
    app.stop().await;
}

async fn bad_masks_are_invalid_argument_on_update_mask(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let ada = app.create_student("Ada", "ada@example.com").await;
    let course = app.create_course("CS-1", "Intro", 30).await;

    for paths in [
        &["id"][..],
        &["create_time"],
        &["etag"],
        &["nickname"],
        &["name", "name"],
        &["*", "email"],
    ] {
        let sent = pb::Student {
            id: ada.id,
            name: "New".into(),
            ..Default::default()
        };
        let status = assert_error(
            app.update_student(sent, paths).await,
            Code::InvalidArgument,
            "INVALID_ARGUMENT",
            "update_mask",
        );
        assert_eq!(violated_fields(&status), ["update_mask"], "{paths:?}");
    }
    for paths in [&["enrolled"][..], &["id"], &["capacity.value"]] {
        let sent = pb::Course {
            id: course.id,
            ..Default::default()
        };
        let status = assert_error(
            app.update_course(sent, paths).await,
            Code::InvalidArgument,
            "INVALID_ARGUMENT",
            "update_mask",
        );
        assert_eq!(violated_fields(&status), ["update_mask"], "{paths:?}");
    }
    assert_eq!(app.get_student(ada.id).await, ada);
    app.stop().await;
}

async fn updating_a_missing_resource_is_not_found(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let sent = pb::Student {
        id: 999,
        name: "Nobody".into(),
        ..Default::default()
    };
    assert_error(
        app.update_student(sent, &[]).await,
        Code::NotFound,
        "STUDENT_NOT_FOUND",
        "student 999 not found",
    );
    let sent = pb::Course {
        id: 999,
        title: "Nothing".into(),
        etag: "W/\"999.1\"".into(),
        ..Default::default()
    };
    // Missing outranks a stale etag: there is nothing to be stale about.
    assert_error(
        app.update_course(sent, &[]).await,
        Code::NotFound,
        "COURSE_NOT_FOUND",
        "course 999 not found",
    );
    app.stop().await;
}

async fn a_stale_etag_is_refused_and_nothing_changes(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let ada = app.create_student("Ada", "ada@example.com").await;
    let read = ada.clone();

    let first = pb::Student {
        name: "Ada L.".into(),
        ..read.clone()
    };
    let updated = app
        .update_student(first, &["name"])
        .await
        .expect("the etag is current");

    let second = pb::Student {
        name: "Ada Byron".into(),
        ..read.clone()
    };
    let status = assert_error(
        app.update_student(second, &["name"]).await,
        Code::FailedPrecondition,
        "ETAG_MISMATCH",
        "has changed",
    );
    assert_eq!(error_metadata(&status, "student_id"), ada.id.to_string());
    assert_eq!(app.get_student(ada.id).await, updated);

    // The etag of another student is never current here; a made-up one is not an etag at all.
    let bob = app.create_student("Bob", "bob@example.com").await;
    let borrowed = pb::Student {
        name: "Bobby".into(),
        etag: updated.etag.clone(),
        ..bob.clone()
    };
    assert_error(
        app.update_student(borrowed, &["name"]).await,
        Code::FailedPrecondition,
        "ETAG_MISMATCH",
        "student",
    );
    let forged = pb::Student {
        name: "Bobby".into(),
        etag: "v2".into(),
        ..bob.clone()
    };
    let status = assert_error(
        app.update_student(forged, &["name"]).await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
        "student.etag",
    );
    assert_eq!(violated_fields(&status), ["student.etag"]);
    // Bob's own etag with its numbers spelt another way was never issued either.
    let id = bob.id;
    for spelt in [
        format!("W/\"+{id}.+1\""),
        format!("W/\"0{id}.0001\""),
        format!("\"+000{id}.1\""),
    ] {
        let respelt = pb::Student {
            name: "Bobby".into(),
            etag: spelt.clone(),
            ..bob.clone()
        };
        let status = assert_error(
            app.update_student(respelt, &["name"]).await,
            Code::InvalidArgument,
            "INVALID_ARGUMENT",
            "not an etag this service issued",
        );
        assert_eq!(violated_fields(&status), ["student.etag"], "{spelt}");
    }
    assert_eq!(app.get_student(bob.id).await, bob);
    app.stop().await;
}

/// Many updates race with the etag they all read: exactly one is applied.
async fn one_of_two_updates_with_the_same_etag_wins(backend: Backend) {
    const RACERS: usize = 8;
    let app = TestApp::spawn(backend).await;
    let course = app.create_course("CS-1", "Intro", 30).await;

    let mut racers = Vec::new();
    for i in 0..RACERS {
        let sent = pb::Course {
            title: format!("Title {i}"),
            ..course.clone()
        };
        let request = pb::UpdateCourseRequest {
            course: Some(sent),
            update_mask: mask(&["title"]),
        };
        let mut client = app.courses.clone();
        racers.push(tokio::spawn(
            async move { client.update_course(request).await },
        ));
    }
    let mut winners = Vec::new();
    for racer in racers {
        match racer.await.expect("racer") {
            Ok(updated) => winners.push(updated.into_inner()),
            Err(status) => {
                assert_error::<()>(Err(status), Code::FailedPrecondition, "ETAG_MISMATCH", "");
            }
        }
    }
    assert_eq!(winners.len(), 1, "exactly one update wins: {winners:?}");
    assert_eq!(app.get_course(course.id).await, winners[0]);
    app.stop().await;
}

async fn deletes_honour_the_etag(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let ada = app.create_student("Ada", "ada@example.com").await;
    let course = app.create_course("CS-1", "Intro", 30).await;
    let renamed = pb::Course {
        title: "Intro to CS".into(),
        ..course.clone()
    };
    let renamed = app
        .update_course(renamed, &["title"])
        .await
        .expect("UpdateCourse");

    let stale = pb::DeleteCourseRequest {
        course_id: course.id,
        etag: course.etag.clone(),
    };
    assert_error(
        app.courses.clone().delete_course(stale).await,
        Code::FailedPrecondition,
        "ETAG_MISMATCH",
        "course",
    );
    assert_eq!(app.get_course(course.id).await, renamed, "still there");
    let current = pb::DeleteCourseRequest {
        course_id: course.id,
        etag: renamed.etag.clone(),
    };
    app.courses
        .clone()
        .delete_course(current)
        .await
        .expect("the etag is current");

    let request = pb::DeleteStudentRequest {
        student_id: ada.id,
        etag: ada.etag.clone(),
    };
    app.students
        .clone()
        .delete_student(request.clone())
        .await
        .expect("DeleteStudent");
    assert_error(
        app.students.clone().delete_student(request).await,
        Code::NotFound,
        "STUDENT_NOT_FOUND",
        "not found",
    );
    let forged = pb::DeleteStudentRequest {
        student_id: ada.id,
        etag: "W/\"x\"".into(),
    };
    let status = assert_error(
        app.students.clone().delete_student(forged).await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
        "etag",
    );
    assert_eq!(violated_fields(&status), ["etag"]);
    app.stop().await;
}

async fn update_course_changes_code_title_and_capacity(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let course = app.create_course("CS-1", "Intro", 1).await;
    let other = app.create_course("MA-1", "Calculus", 10).await;
    let students = app.create_students(2).await;
    app.assign(students[0], course.id)
        .await
        .expect("the only seat");
    assert_error(
        app.assign(students[1], course.id).await,
        Code::FailedPrecondition,
        "COURSE_FULL",
        "full",
    );

    // Raising the capacity frees a seat at once.
    let bigger = pb::Course {
        capacity: 2,
        ..course.clone()
    };
    let updated = app
        .update_course(bigger, &["capacity"])
        .await
        .expect("UpdateCourse");
    assert_eq!((updated.capacity, updated.enrolled), (2, 1));
    app.assign(students[1], course.id)
        .await
        .expect("the new seat");

    let sent = pb::Course {
        id: course.id,
        code: " ma-1 ".into(),
        ..Default::default()
    };
    let status = assert_error(
        app.update_course(sent, &["code"]).await,
        Code::AlreadyExists,
        "COURSE_CODE_TAKEN",
        "MA-1",
    );
    assert_eq!(error_metadata(&status, "code"), "MA-1");

    let sent = pb::Course {
        id: course.id,
        code: "cs-101".into(),
        title: "Straße".into(),
        ..Default::default()
    };
    let updated = app
        .update_course(sent, &["code", "title"])
        .await
        .expect("UpdateCourse");
    assert_eq!(
        (
            updated.code.as_str(),
            updated.title.as_str(),
            updated.capacity
        ),
        ("CS-101", "Straße", 2)
    );
    // Search sees the new title, folded like a created one.
    let found = app
        .courses
        .clone()
        .search_courses(pb::SearchCoursesRequest {
            query: "strasse".into(),
            ..Default::default()
        })
        .await
        .expect("SearchCourses")
        .into_inner();
    assert_eq!(found.courses, [app.get_course(course.id).await]);

    let sent = pb::Course {
        id: course.id,
        capacity: -1,
        title: "\u{7}".into(),
        ..Default::default()
    };
    let status = assert_error(
        app.update_course(sent, &["capacity", "title"]).await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
        "course.capacity",
    );
    assert_eq!(
        violated_fields(&status),
        ["course.capacity", "course.title"]
    );
    assert_eq!(app.get_course(other.id).await, other);
    app.assert_integrity().await;
    app.stop().await;
}

async fn capacity_cannot_drop_below_the_students_enrolled(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let course = app.create_course("CS-1", "Intro", 10).await;
    for student in app.create_students(3).await {
        app.assign(student, course.id).await.expect("AssignCourse");
    }
    let before = app.get_course(course.id).await;

    let smaller = pb::Course {
        capacity: 2,
        ..before.clone()
    };
    let status = assert_error(
        app.update_course(smaller, &["capacity"]).await,
        Code::FailedPrecondition,
        "CAPACITY_BELOW_ENROLLED",
        "3 students enrolled",
    );
    assert_eq!(error_metadata(&status, "enrolled"), "3");
    assert_eq!(error_metadata(&status, "capacity"), "2");
    assert_eq!(app.get_course(course.id).await, before, "nothing changed");

    // Down to exactly the students enrolled, or to unlimited, is fine.
    let exact = pb::Course {
        id: course.id,
        capacity: 3,
        ..Default::default()
    };
    let updated = app.update_course(exact, &["capacity"]).await.expect("to 3");
    assert_eq!((updated.capacity, updated.enrolled), (3, 3));
    let unlimited = pb::Course {
        id: course.id,
        ..Default::default()
    };
    let updated = app
        .update_course(unlimited, &["capacity"])
        .await
        .expect("to 0");
    assert_eq!(updated.capacity, 0);
    app.assert_integrity().await;
    app.stop().await;
}

async fn enrollments_do_not_change_a_course_etag(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let course = app.create_course("CS-1", "Intro", 10).await;
    let student = app.create_students(1).await[0];

    app.assign(student, course.id).await.expect("AssignCourse");
    let after = app.get_course(course.id).await;

    assert_eq!(after.enrolled, 1);
    assert_eq!(after.etag, course.etag);
    let sent = pb::Course {
        capacity: 20,
        ..course
    };
    app.update_course(sent, &["capacity"])
        .await
        .expect("the etag read before the enrollment is current");
    app.stop().await;
}

async fn an_update_that_changes_nothing_keeps_the_etag(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let ada = app.create_student("Ada", "ada@example.com").await;
    let course = app.create_course("CS-1", "Intro", 10).await;

    // The resource as read, sent back whole: accepted, and nothing moves.
    let same = app
        .update_student(ada.clone(), &["*"])
        .await
        .expect("UpdateStudent with the values it has");
    assert_eq!(same, ada);
    let same = app
        .update_course(course.clone(), &["*"])
        .await
        .expect("UpdateCourse with the values it has");
    assert_eq!(same, course);
    let same = app
        .update_course(course.clone(), &["capacity"])
        .await
        .expect("UpdateCourse with the capacity it has");
    assert_eq!(same.etag, course.etag);
    assert_eq!(app.get_student(ada.id).await, ada);
    assert_eq!(app.get_course(course.id).await, course);

    // A real change moves the etag, and the one read before is stale even for a no-op.
    let renamed = app
        .update_student(
            pb::Student {
                name: "Ada L.".into(),
                ..ada.clone()
            },
            &["name"],
        )
        .await
        .expect("the etag is still current");
    assert_ne!(renamed.etag, ada.etag);
    assert_error(
        app.update_student(ada.clone(), &["*"]).await,
        Code::FailedPrecondition,
        "ETAG_MISMATCH",
        "has changed",
    );
    let resized = app
        .update_course(
            pb::Course {
                capacity: 20,
                ..course.clone()
            },
            &["capacity"],
        )
        .await
        .expect("the etag is still current");
    assert_ne!(resized.etag, course.etag);
    app.stop().await;
}
