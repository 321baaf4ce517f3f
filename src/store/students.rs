use super::{
    Store,
    errors::is_unique_violation,
    first_row,
    request_ids::{self, Claimed},
    with_reader, with_writer,
};
use crate::{
    domain::{Delete, NewStudent, Once, PageRequest, Student, StudentUpdate},
    error::{Error, Resource, Result},
};

const INSERT: &str = "INSERT INTO students (name, email, create_time) VALUES ($1, $2, $3) \
                      RETURNING id, name, email, create_time, revision";
const SELECT: &str = "SELECT id, name, email, create_time, revision FROM students WHERE id = $1";
const SELECT_PAGE: &str = "SELECT id, name, email, create_time, revision FROM students \
                           WHERE id > $1 ORDER BY id LIMIT CAST($2 AS BIGINT)";
// Both run only while the revision is the one the client's etag names, if it names one. The
// revision moves only when a value does, so a resource sent back as read keeps its etag; the
// row is still taken and returned by the one statement, so a stale etag is refused as before.
// (The columns are NOT NULL, so `<>` is exact: it compares bytes on both backends.)
const UPDATE: &str = "UPDATE students \
    SET name = COALESCE($2, name), email = COALESCE($3, email), \
    revision = CASE WHEN COALESCE($2, name) <> name OR COALESCE($3, email) <> email \
        THEN revision + 1 ELSE revision END \
    WHERE id = $1 AND ($4 IS NULL OR revision = $4) \
    RETURNING id, name, email, create_time, revision";
const DELETE: &str = "DELETE FROM students WHERE id = $1 AND ($2 IS NULL OR revision = $2)";
pub(super) const EXISTS: &str = "SELECT id FROM students WHERE id = $1";
// The primary key (student_id, course_id) does not serve this lookup; the index
// student_courses_by_course (course_id, student_id) does, already in student order.
const SELECT_PAGE_IN_COURSE: &str = "SELECT s.id, s.name, s.email, s.create_time, s.revision \
    FROM student_courses sc JOIN students s ON s.id = sc.student_id \
    WHERE sc.course_id = $1 AND sc.student_id > $2 ORDER BY sc.student_id LIMIT CAST($3 AS BIGINT)";

impl Store {
    /// Creates the student; with a request_id, at most once (`request_ids`): a repeat answers
    /// the student first created.
    pub async fn create_student(
        &self,
        student: &NewStudent,
        now: i64,
        once: Option<&Once>,
    ) -> Result<Student> {
        macro_rules! insert {
            ($executor:expr) => {
                sqlx::query_as(INSERT)
                    .bind(&student.name)
                    .bind(&student.email)
                    .bind(now)
                    .fetch_all($executor)
                    .await
                    .and_then(|rows| first_row(rows).ok_or(sqlx::Error::RowNotFound))
            };
        }
        let created = match once {
            None => with_writer!(self, "create_student", pool => insert!(pool)),
            Some(once) => {
                match request_ids::once!(self, "create_student", once, now, tx => insert!(tx)) {
                    Ok(Claimed::Done(student)) => Ok(student),
                    Ok(Claimed::Earlier(earlier)) => return earlier.answer(once),
                    Err(err) => Err(err),
                }
            }
        };
        created.map_err(|err| {
            if is_unique_violation(&err) {
                Error::EmailTaken(student.email.clone())
            } else {
                err.into()
            }
        })
    }

    pub async fn get_student(&self, id: i64) -> Result<Student> {
        let found: Option<Student> = with_reader!(self, "get_student", pool => sqlx::query_as(SELECT).bind(id).fetch_optional(pool).await)?;
        found.ok_or(Error::NotFound(Resource::Student, id))
    }

    /// Up to `page.fetch_limit()` students after `page.after`, by id.
    pub async fn list_students(&self, page: &PageRequest) -> Result<Vec<Student>> {
        Ok(
            with_reader!(self, "list_students", pool => sqlx::query_as(SELECT_PAGE)
            .bind(page.after)
            .bind(page.fetch_limit())
            .fetch_all(pool)
            .await)?,
        )
    }

    /// Changes the fields the update names, in one statement; NOT_FOUND, or ETAG_MISMATCH when
    /// the update names an etag that is no longer current.
    pub async fn update_student(&self, update: &StudentUpdate) -> Result<Student> {
        let updated = with_writer!(self, "update_student", pool => sqlx::query_as(UPDATE)
            .bind(update.id)
            .bind(&update.name)
            .bind(&update.email)
            .bind(update.expected_revision)
            .fetch_all(pool)
            .await
            .map(first_row));
        match updated {
            Ok(Some(student)) => Ok(student),
            Ok(None) => Err(self.gone_or_changed(Resource::Student, update.id).await),
            Err(err) if is_unique_violation(&err) => {
                Err(Error::EmailTaken(update.email.clone().unwrap_or_default()))
            }
            Err(err) => Err(err.into()),
        }
    }

    /// Deletes the student; the foreign keys cascade to their enrollments and the seat trigger
    /// frees each seat, all in this one statement.
    pub async fn delete_student(&self, delete: Delete) -> Result<()> {
        self.delete_by_id(DELETE, Resource::Student, delete).await
    }

    pub async fn student_exists(&self, id: i64) -> Result<bool> {
        self.id_exists(EXISTS, id).await
    }

    /// Up to `page.fetch_limit()` students of a course after `page.after`, by id; NOT_FOUND when
    /// the course does not exist.
    pub async fn list_students_in(
        &self,
        course_id: i64,
        page: &PageRequest,
    ) -> Result<Vec<Student>> {
        let students: Vec<Student> = with_reader!(self, "list_enrolled_students", pool => sqlx::query_as(SELECT_PAGE_IN_COURSE)
            .bind(course_id)
            .bind(page.after)
            .bind(page.fetch_limit())
            .fetch_all(pool)
            .await)?;
        // Rows prove the course exists; only an empty page needs the extra look-up.
        if students.is_empty() && !self.course_exists(course_id).await? {
            return Err(Error::NotFound(Resource::Course, course_id));
        }
        Ok(students)
    }
}
