use super::{Store, errors::is_unique_violation, first_row, with_reader, with_writer};
use crate::{
    domain::{Course, NewCourse, PageRequest, SearchQuery},
    error::{Error, Resource, Result},
};

const INSERT: &str = "INSERT INTO courses (code, title, title_folded, capacity, create_time) \
    VALUES ($1, $2, $3, $4, $5) \
    RETURNING id, code, title, capacity, enrolled, create_time";
const SELECT: &str =
    "SELECT id, code, title, capacity, enrolled, create_time FROM courses WHERE id = $1";
const SELECT_PAGE: &str = "SELECT id, code, title, capacity, enrolled, create_time FROM courses \
    WHERE id > $1 ORDER BY id LIMIT CAST($2 AS BIGINT)";
// Both patterns arrive folded and escaped (see domain::SearchQuery), so LIKE compares them as
// plain text on both backends: case-insensitivity comes from the folding, not the dialect.
const SEARCH_PAGE: &str = "SELECT id, code, title, capacity, enrolled, create_time FROM courses \
    WHERE id > $1 AND (code LIKE $2 ESCAPE '\\' OR title_folded LIKE $3 ESCAPE '\\') \
    ORDER BY id LIMIT CAST($4 AS BIGINT)";
const DELETE: &str = "DELETE FROM courses WHERE id = $1";
const EXISTS: &str = "SELECT id FROM courses WHERE id = $1";
// The primary key (student_id, course_id) serves this lookup in course order.
const SELECT_PAGE_OF_STUDENT: &str = "SELECT c.id, c.code, c.title, c.capacity, c.enrolled, c.create_time \
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

    /// Deletes the course; the foreign keys cascade to its enrollments in the same statement.
    pub async fn delete_course(&self, id: i64) -> Result<()> {
        self.delete_by_id(DELETE, Resource::Course, id).await
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
        let courses: Vec<Course> = with_reader!(self, "list_courses", pool => sqlx::query_as(SELECT_PAGE_OF_STUDENT)
            .bind(student_id)
            .bind(page.after)
            .bind(page.fetch_limit())
            .fetch_all(pool)
            .await)?;
        // Rows prove the student exists; only an empty page needs the extra look-up.
        if courses.is_empty() && !self.student_exists(student_id).await? {
            return Err(Error::NotFound(Resource::Student, student_id));
        }
        Ok(courses)
    }
}
