//! BatchAssignCourses: one student enrolled in a set of courses, all or nothing.
//!
//! Each attempt is one transaction (`BEGIN IMMEDIATE` on SQLite's single writer). It inserts
//! the pairs in course-id order and lets the seat trigger and the foreign keys judge them, as
//! AssignCourse does; any refusal rolls the whole transaction back, so a batch is never half
//! written. Only then does it read why (which courses are missing, which are full), so the
//! client hears of every culprit at once and the common case costs no extra read.
//!
//! On PostgreSQL the rows go in with one statement, whose AFTER triggers run at its end in row
//! order: the batch locks its student (the foreign key's check) and then its course rows in
//! ascending id order, the global order every write keeps (migrations/postgres/0003), so racing
//! batches, AssignCourse and DeleteStudent calls queue instead of deadlocking. (Its new enrollment
//! rows, written before those locks, can make only an insert of the same pair wait, and every
//! insert writes its rows in course-id order too.) That statement is the only one of an attempt
//! that locks anything. A pair it skipped as existing can be unassigned before the batch reads it;
//! inserting that pair in a second statement would lock its course after courses of higher id, out
//! of the order: a batch holding course 3 waited for course 1, held by a batch or a DeleteStudent
//! waiting for course 3, and PostgreSQL aborted one of them (`deadlock detected`; 1-3 batches
//! ABORTED in 7 of 8 five-second runs of the mixed race in tests/api/races.rs). So the attempt is
//! rolled back, releasing every lock, and started over. If the reasons read after a refusal no
//! longer hold (a seat was freed meanwhile), the batch is tried again as well.

use super::Backend;
use std::collections::HashMap;

use sqlx::{Connection, PgConnection, SqliteConnection};

use super::{
    Store,
    enrollments::{Assigned, INSERT, SELECT, after_insert},
    errors::{full_course, is_course_full, is_foreign_key_violation},
    observe,
    request_ids::{Earlier, claim, record},
    students,
};
use crate::{
    domain::{BatchAssign, Enrollment, Once},
    error::{Error, Resource, Result},
};

const INSERT_ALL_POSTGRES: &str = "INSERT INTO student_courses (student_id, course_id, enroll_time) \
    SELECT $1, course_id, $3 FROM unnest($2::bigint[]) AS course_id ORDER BY course_id \
    ON CONFLICT (student_id, course_id) DO NOTHING RETURNING course_id, enroll_time";
const SELECT_ALL_POSTGRES: &str = "SELECT course_id, enroll_time FROM student_courses \
    WHERE student_id = $1 AND course_id = ANY($2)";
// Per requested course that exists: whether it is full, and whether the student is in it
// already (a pair already enrolled never counts as refused).
const SEATS_POSTGRES: &str = "SELECT c.id, c.capacity <> 0 AND c.enrolled >= c.capacity, \
    EXISTS (SELECT 1 FROM student_courses sc WHERE sc.student_id = $1 AND sc.course_id = c.id) \
    FROM courses c WHERE c.id = ANY($2)";
const SEATS_SQLITE: &str = "SELECT c.id, c.capacity <> 0 AND c.enrolled >= c.capacity, \
    EXISTS (SELECT 1 FROM student_courses sc WHERE sc.student_id = $1 AND sc.course_id = c.id) \
    FROM courses c WHERE c.id IN (SELECT value FROM json_each($2))";

/// Attempts of one batch before it answers ABORTED. A batch touches up to 100 pairs, so more of
/// them can change under it than under one AssignCourse: with AssignCourse's 3 attempts, the
/// mixed race of tests/api/races.rs saw a batch run out (CONCURRENT_CHANGE, no deadlock in
/// PostgreSQL's log) in about 1 of 10 five-second runs. Each attempt is one short transaction.
const BATCH_TRIES: usize = 6;

/// Enroll time and whether this call created the pair, by course id.
type Enrolled = HashMap<i64, (i64, bool)>;

/// The connection a batch runs on.
enum Writer<'a> {
    Sqlite(&'a mut SqliteConnection),
    Postgres(&'a mut PgConnection),
}

/// What one attempt did.
enum Attempt {
    Enrolled(Enrolled),
    /// The seat trigger or a foreign key refused a pair; the transaction was rolled back. On
    /// PostgreSQL a full course is named (the trigger's detail).
    Refused(Option<i64>),
    /// A pair found existing was gone when read (PostgreSQL only); rolled back, to start over.
    Vanished,
    /// The batch's request_id was used before; nothing was written.
    Earlier(Earlier),
}

impl Store {
    /// Enrolls the student in every course of the batch, or in none; one result per course, in
    /// the order of the request. With a request_id, a repeat answers what the first call did
    /// (`request_ids`).
    pub async fn batch_assign(
        &self,
        batch: &BatchAssign,
        now: i64,
        once: Option<&Once>,
    ) -> Result<Vec<(Enrollment, bool)>> {
        let mut courses = batch.course_ids.clone();
        courses.sort_unstable();
        let student = batch.student_id;
        let enrolled = match &self.0 {
            Backend::Sqlite { writer, .. } => {
                let mut connection = observe::acquire(writer, observe::SQLITE_WRITER).await?;
                let writer = Writer::Sqlite(&mut connection);
                let work = run(writer, student, &courses, now, once);
                observe::statement(observe::SQLITE_SYSTEM, "batch_assign_courses", work).await
            }
            Backend::Postgres(pool, _) => {
                let mut connection = observe::acquire(pool, observe::POSTGRES).await?;
                let writer = Writer::Postgres(&mut connection);
                let work = run(writer, student, &courses, now, once);
                let enrolled =
                    observe::statement(observe::POSTGRESQL_SYSTEM, "batch_assign_courses", work)
                        .await;
                observe::settle(&mut connection, &enrolled);
                enrolled
            }
        }?;
        let enrolled = match enrolled {
            Ran::Now(enrolled) => {
                let created = enrolled.values().filter(|(_, created)| *created).count();
                metrics::counter!(crate::telemetry::catalogue::ENROLLMENTS_CREATED.name)
                    .increment(created as u64);
                enrolled
            }
            // Counted when it was first answered.
            Ran::Before(earlier) => earlier.answer(once.ok_or_else(|| {
                Error::Internal("an earlier batch without a request_id".into())
            })?)?,
        };
        batch
            .course_ids
            .iter()
            .map(|&course_id| {
                let &(enroll_time, created) = enrolled.get(&course_id).ok_or_else(|| {
                    Error::Internal(format!("batch lost course {course_id}").into())
                })?;
                let enrollment = Enrollment {
                    student_id: student,
                    course_id,
                    enroll_time,
                };
                Ok((enrollment, created))
            })
            .collect()
    }
}

/// A batch run now, or answered before under its request_id.
enum Ran {
    Now(Enrolled),
    Before(Earlier),
}

/// Attempts the batch until it is enrolled or refused for reasons that still hold.
async fn run(
    mut writer: Writer<'_>,
    student: i64,
    courses: &[i64],
    now: i64,
    once: Option<&Once>,
) -> Result<Ran> {
    let mut met_full = None;
    let mut conflict = "the courses kept changing between the batch and the check of its refusal";
    for _ in 0..BATCH_TRIES {
        let attempt = match &mut writer {
            Writer::Sqlite(connection) => {
                attempt_on_sqlite(connection, student, courses, now, once).await
            }
            Writer::Postgres(connection) => {
                attempt_on_postgres(connection, student, courses, now, once).await
            }
        }?;
        match attempt {
            Attempt::Enrolled(enrolled) => return Ok(Ran::Now(enrolled)),
            Attempt::Earlier(earlier) => return Ok(Ran::Before(earlier)),
            Attempt::Refused(full) => {
                if let Some(refusal) = why_refused(&mut writer, student, courses).await? {
                    return Err(refusal);
                }
                met_full = full.or(met_full);
            }
            Attempt::Vanished => {
                conflict = "enrollments of the batch kept vanishing between insert and read";
            }
        }
    }
    // Seats kept coming free between each refusal and its explanation (courses near full under
    // churn): the course the last attempt met full was full then, which is the answer.
    match met_full {
        Some(course) => {
            metrics::counter!(crate::telemetry::catalogue::ENROLLMENTS_REFUSED_FULL.name)
                .increment(1);
            Err(Error::CoursesFull(vec![course]))
        }
        None => Err(Error::Conflict(conflict.into())),
    }
}

async fn attempt_on_sqlite(
    connection: &mut SqliteConnection,
    student: i64,
    courses: &[i64],
    now: i64,
    once: Option<&Once>,
) -> Result<Attempt> {
    let mut transaction = connection.begin_with("BEGIN IMMEDIATE").await?;
    if let Some(once) = once
        && let Some(earlier) = claim!(transaction, once, now)
    {
        transaction.rollback().await?;
        return Ok(Attempt::Earlier(earlier));
    }
    let mut enrolled = Enrolled::with_capacity(courses.len());
    for &course in courses {
        let inserted = sqlx::query_scalar(INSERT)
            .bind(student)
            .bind(course)
            .bind(now)
            .fetch_all(&mut *transaction)
            .await;
        match after_insert(inserted)? {
            Some(Assigned::Created(enroll_time)) => enrolled.insert(course, (enroll_time, true)),
            // SQLite's single writer keeps the explanation consistent: no course to name.
            Some(Assigned::Full | Assigned::Missing) => {
                transaction.rollback().await?;
                return Ok(Attempt::Refused(None));
            }
            // The pair exists and stays: this transaction is the only writer until it ends.
            Some(Assigned::Existing(_)) | None => {
                let enroll_time: i64 = sqlx::query_scalar(SELECT)
                    .bind(student)
                    .bind(course)
                    .fetch_one(&mut *transaction)
                    .await?;
                enrolled.insert(course, (enroll_time, false))
            }
        };
    }
    if let Some(once) = once {
        record!(transaction, once, &enrolled);
    }
    transaction.commit().await?;
    Ok(Attempt::Enrolled(enrolled))
}

async fn attempt_on_postgres(
    connection: &mut PgConnection,
    student: i64,
    courses: &[i64],
    now: i64,
    once: Option<&Once>,
) -> Result<Attempt> {
    let mut transaction = connection.begin().await?;
    // Before the insert locks anything: a retry racing its first attempt waits here.
    if let Some(once) = once
        && let Some(earlier) = claim!(transaction, once, now)
    {
        transaction.rollback().await?;
        return Ok(Attempt::Earlier(earlier));
    }
    let inserted: Result<Vec<(i64, i64)>, _> = sqlx::query_as(INSERT_ALL_POSTGRES)
        .bind(student)
        .bind(courses)
        .bind(now)
        .fetch_all(&mut *transaction)
        .await;
    let mut enrolled: Enrolled = match inserted {
        Ok(rows) => rows
            .into_iter()
            .map(|(course, enroll_time)| (course, (enroll_time, true)))
            .collect(),
        Err(err) if is_course_full(&err) || is_foreign_key_violation(&err) => {
            transaction.rollback().await?;
            return Ok(Attempt::Refused(full_course(&err)));
        }
        Err(err) => return Err(err.into()),
    };
    let existing: Vec<i64> = courses
        .iter()
        .copied()
        .filter(|course| !enrolled.contains_key(course))
        .collect();
    if !existing.is_empty() {
        let found: Vec<(i64, i64)> = sqlx::query_as(SELECT_ALL_POSTGRES)
            .bind(student)
            .bind(&existing)
            .fetch_all(&mut *transaction)
            .await?;
        for (course, enroll_time) in found {
            enrolled.entry(course).or_insert((enroll_time, false));
        }
    }
    // Never inserted again here: see the module comment.
    if !courses.iter().all(|course| enrolled.contains_key(course)) {
        transaction.rollback().await?;
        return Ok(Attempt::Vanished);
    }
    if let Some(once) = once {
        record!(transaction, once, &enrolled);
    }
    transaction.commit().await?;
    Ok(Attempt::Enrolled(enrolled))
}

/// Why the batch was refused: the student first, then every missing course, then every full
/// one the student is not in; `None` when nothing stands in the way any more.
async fn why_refused(
    writer: &mut Writer<'_>,
    student: i64,
    courses: &[i64],
) -> Result<Option<Error>> {
    let (student_exists, seats): (Option<i64>, Vec<(i64, bool, bool)>) = match writer {
        Writer::Sqlite(connection) => {
            let exists = sqlx::query_scalar(students::EXISTS)
                .bind(student)
                .fetch_optional(&mut **connection)
                .await?;
            let json = format!(
                "[{}]",
                courses
                    .iter()
                    .map(i64::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            );
            let seats = sqlx::query_as(SEATS_SQLITE)
                .bind(student)
                .bind(json)
                .fetch_all(&mut **connection)
                .await?;
            (exists, seats)
        }
        Writer::Postgres(connection) => {
            let exists = sqlx::query_scalar(students::EXISTS)
                .bind(student)
                .fetch_optional(&mut **connection)
                .await?;
            let seats = sqlx::query_as(SEATS_POSTGRES)
                .bind(student)
                .bind(courses)
                .fetch_all(&mut **connection)
                .await?;
            (exists, seats)
        }
    };
    Ok(refusal(student_exists.is_some(), student, courses, &seats))
}

/// The error a batch gets from what the database holds: `seats` has one (course, full,
/// already enrolled) row per requested course that exists.
fn refusal(
    student_exists: bool,
    student: i64,
    courses: &[i64],
    seats: &[(i64, bool, bool)],
) -> Option<Error> {
    if !student_exists {
        return Some(Error::NotFound(Resource::Student, student));
    }
    let missing: Vec<i64> = courses
        .iter()
        .copied()
        .filter(|course| !seats.iter().any(|(id, _, _)| id == course))
        .collect();
    if !missing.is_empty() {
        return Some(Error::CoursesNotFound(missing));
    }
    let mut full: Vec<i64> = seats
        .iter()
        .filter(|(_, full, enrolled)| *full && !*enrolled)
        .map(|(id, _, _)| *id)
        .collect();
    if full.is_empty() {
        return None;
    }
    full.sort_unstable();
    metrics::counter!(crate::telemetry::catalogue::ENROLLMENTS_REFUSED_FULL.name)
        .increment(full.len() as u64);
    Some(Error::CoursesFull(full))
}
