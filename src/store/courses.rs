use super::Backend;
use super::{
    Store, errors::is_unique_violation, first_row, observe, sqlite_direct, with_reader, with_writer,
};
use crate::{
    domain::{Course, CourseUpdate, Delete, NewCourse, PageRequest, SearchQuery},
    error::{Error, Resource, Result},
};

const INSERT: &str = "INSERT INTO courses (code, title, title_folded, capacity, create_time) \
    VALUES ($1, $2, $3, $4, $5) \
    RETURNING id, code, title, capacity, enrolled, create_time, revision";
/// How often a refused update is tried again when its explanation no longer holds.
const UPDATE_TRIES: usize = 3;

const SELECT: &str =
    "SELECT id, code, title, capacity, enrolled, create_time, revision FROM courses WHERE id = $1";
const SELECT_PAGE: &str = "SELECT id, code, title, capacity, enrolled, create_time, revision FROM courses \
    WHERE id > $1 ORDER BY id LIMIT CAST($2 AS BIGINT)";
// Both patterns arrive folded and escaped (see domain::SearchQuery), so LIKE compares them as
// plain text on both backends: case-insensitivity comes from the folding, not the dialect.
const SEARCH_PAGE: &str = "SELECT id, code, title, capacity, enrolled, create_time, revision FROM courses \
    WHERE id > $1 AND (code LIKE $2 ESCAPE '\\' OR title_folded LIKE $3 ESCAPE '\\') \
    ORDER BY id LIMIT CAST($4 AS BIGINT)";
// Runs only while the revision is the one the client's etag names, if it names one, and the
// new capacity holds the students enrolled. PostgreSQL re-checks both on the latest row
// version once it holds the row lock, the lock the seat trigger's UPDATE also takes, so no
// enrollment on any replica can slip in between the check and the change. The revision moves
// only when a value the API shows does (as in students.rs; `title_folded` follows `title`).
const UPDATE: &str = "UPDATE courses SET code = COALESCE($2, code), title = COALESCE($3, title), \
    title_folded = COALESCE($4, title_folded), capacity = COALESCE($5, capacity), \
    revision = CASE WHEN COALESCE($2, code) <> code OR COALESCE($3, title) <> title \
        OR COALESCE($5, capacity) <> capacity THEN revision + 1 ELSE revision END \
    WHERE id = $1 AND ($6 IS NULL OR revision = $6) AND ($5 IS NULL OR $5 = 0 OR enrolled <= $5) \
    RETURNING id, code, title, capacity, enrolled, create_time, revision";
const REVISION_AND_ENROLLED: &str = "SELECT revision, enrolled FROM courses WHERE id = $1";
const DELETE: &str = "DELETE FROM courses WHERE id = $1 AND ($2 IS NULL OR revision = $2)";
const EXISTS: &str = "SELECT id FROM courses WHERE id = $1";
// The primary key (student_id, course_id) serves this lookup in course order.
const SELECT_PAGE_OF_STUDENT: &str = "SELECT c.id, c.code, c.title, c.capacity, c.enrolled, c.create_time, c.revision \
    FROM student_courses sc JOIN courses c ON c.id = sc.course_id \
    WHERE sc.student_id = $1 AND sc.course_id > $2 ORDER BY sc.course_id LIMIT CAST($3 AS BIGINT)";

impl Store {
    pub async fn create_course(&self, course: &NewCourse, now: i64) -> Result<Course> {
        let created = with_writer!(self, "create_course", pool => sqlx::query_as(INSERT)
            .bind(&course.code)
            .bind(&course.title)
            .bind(&course.title_folded)
            .bind(course.capacity)
            .bind(now)
            .fetch_all(pool)
            .await
            .and_then(|rows| first_row(rows).ok_or(sqlx::Error::RowNotFound)));
        created.map_err(|err| {
            if is_unique_violation(&err) {
                Error::CourseCodeTaken(course.code.clone())
            } else {
                err.into()
            }
        })
    }

    pub async fn get_course(&self, id: i64) -> Result<Course> {
        let found: Option<Course> = with_reader!(self, "get_course", pool => sqlx::query_as(SELECT).bind(id).fetch_optional(pool).await)?;
        found.ok_or(Error::NotFound(Resource::Course, id))
    }

    /// Up to `page.fetch_limit()` matching courses after `page.after`, by id.
    pub async fn search_courses(
        &self,
        query: &SearchQuery,
        page: &PageRequest,
    ) -> Result<Vec<Course>> {
        let courses = if query.is_everything() {
            with_reader!(self, "search_courses", pool => sqlx::query_as(SELECT_PAGE)
                .bind(page.after)
                .bind(page.fetch_limit())
                .fetch_all(pool)
                .await)
        } else {
            with_reader!(self, "search_courses", pool => sqlx::query_as(SEARCH_PAGE)
                .bind(page.after)
                .bind(&query.code_prefix)
                .bind(&query.title_contains)
                .bind(page.fetch_limit())
                .fetch_all(pool)
                .await)
        };
        Ok(courses?)
    }

    /// Changes the fields the update names, in one statement; NOT_FOUND, ETAG_MISMATCH, or
    /// CAPACITY_BELOW_ENROLLED when the new capacity would not hold the students enrolled.
    pub async fn update_course(&self, update: &CourseUpdate) -> Result<Course> {
        // A refused update is explained by a second read, which a concurrent change can
        // overtake (a seat freed, say): then the update is simply tried again.
        for _ in 0..UPDATE_TRIES {
            let updated = with_writer!(self, "update_course", pool => sqlx::query_as(UPDATE)
                .bind(update.id)
                .bind(&update.code)
                .bind(&update.title)
                .bind(&update.title_folded)
                .bind(update.capacity)
                .bind(update.expected_revision)
                .fetch_all(pool)
                .await
                .map(first_row));
            match updated {
                Ok(Some(course)) => return Ok(course),
                Ok(None) => {}
                Err(err) if is_unique_violation(&err) => {
                    return Err(Error::CourseCodeTaken(
                        update.code.clone().unwrap_or_default(),
                    ));
                }
                Err(err) => return Err(err.into()),
            }
            let found: Option<(i64, i32)> = with_reader!(self, "update_course", pool => sqlx::query_as(REVISION_AND_ENROLLED)
                .bind(update.id)
                .fetch_optional(pool)
                .await)?;
            let Some((revision, enrolled)) = found else {
                return Err(Error::NotFound(Resource::Course, update.id));
            };
            if update
                .expected_revision
                .is_some_and(|expected| expected != revision)
            {
                return Err(Error::EtagMismatch(Resource::Course, update.id));
            }
            if let Some(capacity) = update.capacity.filter(|&c| c != 0 && enrolled > c) {
                return Err(Error::CapacityBelowEnrolled {
                    course_id: update.id,
                    capacity,
                    enrolled,
                });
            }
        }
        Err(Error::Conflict(
            "the course kept changing between the update and its check".into(),
        ))
    }

    /// Deletes the course; the foreign keys cascade to its enrollments in the same statement.
    pub async fn delete_course(&self, delete: Delete) -> Result<()> {
        self.delete_by_id(DELETE, Resource::Course, delete).await
    }

    pub async fn course_exists(&self, id: i64) -> Result<bool> {
        self.id_exists(EXISTS, id).await
    }

    /// Up to `page.fetch_limit()` courses of a student after `page.after`, by id; NOT_FOUND when
    /// the student does not exist. One statement per call unless the page is empty.
    pub async fn list_courses_of(
        &self,
        student_id: i64,
        page: &PageRequest,
    ) -> Result<Vec<Course>> {
        let courses = match self.courses_of_directly(student_id, page).await? {
            Some(courses) => courses,
            None => {
                with_reader!(self, "list_courses", pool => sqlx::query_as(SELECT_PAGE_OF_STUDENT)
                .bind(student_id)
                .bind(page.after)
                .bind(page.fetch_limit())
                .fetch_all(pool)
                .await)?
            }
        };
        // Rows prove the student exists; only an empty page needs the extra look-up.
        if courses.is_empty() && !self.student_exists(student_id).await? {
            return Err(Error::NotFound(Resource::Student, student_id));
        }
        Ok(courses)
    }

    /// The page through SQLite's direct readers (see `sqlite_direct`); `None` when there are
    /// none (PostgreSQL, memory) or they could not read without waiting.
    async fn courses_of_directly(
        &self,
        student_id: i64,
        page: &PageRequest,
    ) -> Result<Option<Vec<Course>>> {
        let Backend::Sqlite {
            direct: Some(direct),
            ..
        } = &self.0
        else {
            return Ok(None);
        };
        let (after, limit) = (page.after, page.fetch_limit());
        let read = direct.read(limit, move |connection| {
            sqlite_direct::courses(
                connection,
                SELECT_PAGE_OF_STUDENT,
                (student_id, after, limit),
            )
        });
        observe::statement(observe::SQLITE_SYSTEM, "list_courses", read).await
    }
}
