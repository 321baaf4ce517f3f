use super::Backend;
use super::{
    Connections, Store,
    errors::{is_course_full, is_foreign_key_violation},
    first_row, observe, with_reader, with_writer,
};
use crate::{
    domain::{Enrollment, StudentCourse},
    error::{Error, Resource, Result},
};

// One atomic statement: the primary key makes a duplicate pair a no-op (no row returned), and
// the seat trigger of the migrations counts the seat or aborts with COURSE_FULL.
pub(super) const INSERT: &str = "INSERT INTO student_courses (student_id, course_id, enroll_time) \
    VALUES ($1, $2, $3) ON CONFLICT (student_id, course_id) DO NOTHING RETURNING enroll_time";
pub(super) const SELECT: &str =
    "SELECT enroll_time FROM student_courses WHERE student_id = $1 AND course_id = $2";
const DELETE: &str = "DELETE FROM student_courses WHERE student_id = $1 AND course_id = $2";
// PostgreSQL: the course row is locked before the enrollment row, the order every write keeps
// there (migrations/postgres/0003), or this would deadlock with DeleteCourse, which holds the
// course while its cascade waits for the enrollment. A joined row exists only once the CTE has
// locked the course, and the enrollment is locked only when that row is deleted.
const DELETE_AFTER_LOCKING_COURSE: &str = "WITH course AS \
    (SELECT id FROM courses WHERE id = $2 FOR NO KEY UPDATE) \
    DELETE FROM student_courses sc USING course WHERE sc.student_id = $1 AND sc.course_id = course.id";

/// On PostgreSQL an existing pair can vanish between the INSERT that found it and the SELECT
/// that reads it (a concurrent UnassignCourse); each such race costs one more try.
pub(super) const ASSIGN_TRIES: usize = 3;

/// What an AssignCourse did.
#[derive(Debug)]
pub(super) enum Assigned {
    /// A new enrollment, at this time.
    Created(i64),
    /// The pair was enrolled already, at this time.
    Existing(i64),
    /// The seat trigger refused: the course is full.
    Full,
    /// A foreign key refused: the student or the course does not exist.
    Missing,
}

/// What the INSERT's outcome says, or `None` when the pair exists and must be read.
pub(super) fn after_insert(
    inserted: Result<Vec<i64>, sqlx::Error>,
) -> Result<Option<Assigned>, sqlx::Error> {
    match inserted {
        Ok(rows) => Ok(first_row(rows).map(Assigned::Created)),
        Err(err) if is_course_full(&err) => Ok(Some(Assigned::Full)),
        Err(err) if is_foreign_key_violation(&err) => Ok(Some(Assigned::Missing)),
        Err(err) => Err(err),
    }
}

impl Store {
    /// Enrolls the student; returns the enrollment and whether this call created it.
    pub async fn assign(&self, pair: StudentCourse, now: i64) -> Result<(Enrollment, bool)> {
        let assigned = match &self.0 {
            Backend::Sqlite { assigner, .. } => assigner.assign(pair, now).await?,
            Backend::Postgres(pool, _) => assign_on_postgres(pool, pair, now).await?,
        };
        let enrollment = |enroll_time| Enrollment {
            student_id: pair.student_id,
            course_id: pair.course_id,
            enroll_time,
        };
        match assigned {
            Assigned::Created(enroll_time) => {
                metrics::counter!(crate::telemetry::catalogue::ENROLLMENTS_CREATED.name)
                    .increment(1);
                Ok((enrollment(enroll_time), true))
            }
            Assigned::Existing(enroll_time) => Ok((enrollment(enroll_time), false)),
            Assigned::Full => {
                metrics::counter!(crate::telemetry::catalogue::ENROLLMENTS_REFUSED_FULL.name)
                    .increment(1);
                Err(Error::CourseFull(pair.course_id))
            }
            Assigned::Missing => Err(self.missing(pair).await),
        }
    }

    /// The enrollment of the pair; NOT_FOUND saying which side is missing, or NOT_ENROLLED.
    pub async fn get_enrollment(&self, pair: StudentCourse) -> Result<Enrollment> {
        let found: Option<i64> = with_reader!(self, "get_enrollment", pool => sqlx::query_scalar(SELECT)
            .bind(pair.student_id)
            .bind(pair.course_id)
            .fetch_optional(pool)
            .await)?;
        match found {
            Some(enroll_time) => Ok(Enrollment {
                student_id: pair.student_id,
                course_id: pair.course_id,
                enroll_time,
            }),
            None => Err(self.missing(pair).await),
        }
    }

    /// Removes the enrollment; the seat trigger frees the seat in the same statement.
    pub async fn unassign(&self, pair: StudentCourse) -> Result<()> {
        let delete = match &self.0 {
            Backend::Sqlite { .. } => DELETE,
            Backend::Postgres(..) => DELETE_AFTER_LOCKING_COURSE,
        };
        let deleted = with_writer!(self, "unassign_course", pool => sqlx::query(delete)
            .bind(pair.student_id)
            .bind(pair.course_id)
            .execute(pool)
            .await
            .map(|r| r.rows_affected()))?;
        if deleted == 0 {
            return Err(self.missing(pair).await);
        }
        Ok(())
    }

    /// Why a pair is not enrolled: a side that does not exist (the student is named first when
    /// both are gone), or else simply not enrolled.
    async fn missing(&self, pair: StudentCourse) -> Error {
        match self.student_exists(pair.student_id).await {
            Ok(false) => return Error::NotFound(Resource::Student, pair.student_id),
            Err(err) => return err,
            Ok(true) => {}
        }
        match self.course_exists(pair.course_id).await {
            Ok(false) => Error::NotFound(Resource::Course, pair.course_id),
            Err(err) => err,
            Ok(true) => Error::NotEnrolled {
                student_id: pair.student_id,
                course_id: pair.course_id,
            },
        }
    }
}

/// PostgreSQL runs many writers at once: each enrollment commits on its own.
async fn assign_on_postgres(pool: &Connections, pair: StudentCourse, now: i64) -> Result<Assigned> {
    let mut connection = observe::acquire(pool, observe::POSTGRES).await?;
    let assigned = observe::statement(observe::POSTGRESQL_SYSTEM, "assign_course", async {
        for _ in 0..ASSIGN_TRIES {
            let inserted = sqlx::query_scalar(INSERT)
                .bind(pair.student_id)
                .bind(pair.course_id)
                .bind(now)
                .fetch_all(&mut *connection)
                .await;
            if let Some(assigned) = after_insert(inserted)? {
                return Ok(assigned);
            }
            let existing: Option<i64> = sqlx::query_scalar(SELECT)
                .bind(pair.student_id)
                .bind(pair.course_id)
                .fetch_optional(&mut *connection)
                .await?;
            if let Some(enroll_time) = existing {
                return Ok(Assigned::Existing(enroll_time));
            }
        }
        Err(Error::Conflict(
            "the enrollment kept vanishing between insert and read".into(),
        ))
    })
    .await;
    observe::settle(&mut connection, &assigned);
    assigned
}
