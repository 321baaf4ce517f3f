use super::{
    Store,
    errors::{is_course_full, is_foreign_key_violation},
    first_row, with_reader, with_writer,
};
use crate::{
    domain::{Enrollment, StudentCourse},
    error::{Error, Resource, Result},
};

// One atomic statement: the primary key makes a duplicate pair a no-op (no row returned), and
// the seat trigger of the migrations counts the seat or aborts with COURSE_FULL.
const INSERT: &str = "INSERT INTO student_courses (student_id, course_id, enroll_time) \
    VALUES ($1, $2, $3) ON CONFLICT (student_id, course_id) DO NOTHING RETURNING enroll_time";
const SELECT: &str =
    "SELECT enroll_time FROM student_courses WHERE student_id = $1 AND course_id = $2";
const DELETE: &str = "DELETE FROM student_courses WHERE student_id = $1 AND course_id = $2";

/// An existing pair can vanish between the INSERT that found it and the SELECT that reads it
/// (a concurrent UnassignCourse); each such race costs one more try.
const ASSIGN_TRIES: usize = 3;

impl Store {
    /// Enrolls the student; returns the enrollment and whether this call created it.
    pub async fn assign(&self, pair: StudentCourse, now: i64) -> Result<(Enrollment, bool)> {
        let enrollment = |enroll_time| Enrollment {
            student_id: pair.student_id,
            course_id: pair.course_id,
            enroll_time,
        };
        for _ in 0..ASSIGN_TRIES {
            let inserted: Result<Option<i64>, sqlx::Error> = with_writer!(self, pool =>
                sqlx::query_scalar(INSERT)
                    .bind(pair.student_id)
                    .bind(pair.course_id)
                    .bind(now)
                    .fetch_all(pool)
                    .await
                    .map(first_row));
            match inserted {
                Ok(Some(enroll_time)) => return Ok((enrollment(enroll_time), true)),
                Ok(None) => match self.enroll_time(pair).await? {
                    Some(enroll_time) => return Ok((enrollment(enroll_time), false)),
                    None => continue,
                },
                Err(err) if is_course_full(&err) => return Err(Error::CourseFull(pair.course_id)),
                Err(err) if is_foreign_key_violation(&err) => return Err(self.missing(pair).await),
                Err(err) => return Err(err.into()),
            }
        }
        Err(Error::Conflict(
            "the enrollment kept vanishing between insert and read".into(),
        ))
    }

    /// Removes the enrollment; the seat trigger frees the seat in the same statement.
    pub async fn unassign(&self, pair: StudentCourse) -> Result<()> {
        let deleted = with_writer!(self, pool => sqlx::query(DELETE)
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

    async fn enroll_time(&self, pair: StudentCourse) -> Result<Option<i64>> {
        Ok(with_reader!(self, pool => sqlx::query_scalar(SELECT)
            .bind(pair.student_id)
            .bind(pair.course_id)
            .fetch_optional(pool)
            .await)?)
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
