use super::Backend;
use super::{
    Store,
    errors::is_unique_violation,
    first_row, observe,
    request_ids::{self, Claimed},
    sqlite_direct, with_reader, with_writer,
};
use crate::{
    domain::{Course, CourseUpdate, Delete, NewCourse, Once, PageRequest, SearchQuery},
    error::{Error, Resource, Result},
};

/// The columns of a course, named as `domain::Course` names its fields: the one select list of
/// every statement below that returns courses. sqlx (`FromRow`) and the direct reader
/// (`sqlite_direct::courses`) both find each field's column by its name, so the order here is
/// free and two fields of one type (capacity and enrolled, create_time and revision) cannot swap.
/// `course_columns!("c")` qualifies each with a table alias.
macro_rules! course_columns {
    ($($alias:literal)?) => {
        concat!(
            $($alias, ".",)? "id, ",
            $($alias, ".",)? "code, ",
            $($alias, ".",)? "title, ",
            $($alias, ".",)? "capacity, ",
            $($alias, ".",)? "enrolled, ",
            $($alias, ".",)? "create_time, ",
            $($alias, ".",)? "revision"
        )
    };
}

const INSERT: &str = concat!(
    "INSERT INTO courses (code, title, title_folded, capacity, create_time) \
    VALUES ($1, $2, $3, $4, $5) RETURNING ",
    course_columns!()
);
/// How often a refused update is tried again when its explanation no longer holds.
const UPDATE_TRIES: usize = 3;

const SELECT: &str = concat!("SELECT ", course_columns!(), " FROM courses WHERE id = $1");
const SELECT_PAGE: &str = concat!(
    "SELECT ",
    course_columns!(),
    " FROM courses WHERE id > $1 ORDER BY id LIMIT CAST($2 AS BIGINT)"
);
// Both patterns arrive folded and escaped (see domain::SearchQuery), so LIKE compares them as
// plain text on both backends: case-insensitivity comes from the folding, not the dialect.
const SEARCH_PAGE: &str = concat!(
    "SELECT ",
    course_columns!(),
    " FROM courses \
    WHERE id > $1 AND (code LIKE $2 ESCAPE '\\' OR title_folded LIKE $3 ESCAPE '\\') \
    ORDER BY id LIMIT CAST($4 AS BIGINT)"
);
// Runs only while the revision is the one the client's etag names, if it names one, and the
// new capacity holds the students enrolled. PostgreSQL re-checks both on the latest row
// version once it holds the row lock, the lock the seat trigger's UPDATE also takes, so no
// enrollment on any replica can slip in between the check and the change. The revision moves
// only when a value the API shows does (as in students.rs; `title_folded` follows `title`).
const UPDATE: &str = concat!(
    "UPDATE courses SET code = COALESCE($2, code), title = COALESCE($3, title), \
    title_folded = COALESCE($4, title_folded), capacity = COALESCE($5, capacity), \
    revision = CASE WHEN COALESCE($2, code) <> code OR COALESCE($3, title) <> title \
        OR COALESCE($5, capacity) <> capacity THEN revision + 1 ELSE revision END \
    WHERE id = $1 AND ($6 IS NULL OR revision = $6) AND ($5 IS NULL OR $5 = 0 OR enrolled <= $5) \
    RETURNING ",
    course_columns!()
);
const REVISION_AND_ENROLLED: &str = "SELECT revision, enrolled FROM courses WHERE id = $1";
const DELETE: &str = "DELETE FROM courses WHERE id = $1 AND ($2 IS NULL OR revision = $2)";
const EXISTS: &str = "SELECT id FROM courses WHERE id = $1";
// The primary key (student_id, course_id) serves this lookup in course order.
const SELECT_PAGE_OF_STUDENT: &str = concat!(
    "SELECT ",
    course_columns!("c"),
    " FROM student_courses sc JOIN courses c ON c.id = sc.course_id \
    WHERE sc.student_id = $1 AND sc.course_id > $2 ORDER BY sc.course_id LIMIT CAST($3 AS BIGINT)"
);

impl Store {
    /// Creates the course; with a request_id, at most once (`request_ids`): a repeat answers
    /// the course first created.
    pub async fn create_course(
        &self,
        course: &NewCourse,
        now: i64,
        once: Option<&Once>,
    ) -> Result<Course> {
        macro_rules! insert {
            ($executor:expr) => {
                sqlx::query_as(INSERT)
                    .bind(&course.code)
                    .bind(&course.title)
                    .bind(&course.title_folded)
                    .bind(course.capacity)
                    .bind(now)
                    .fetch_all($executor)
                    .await
                    .and_then(|rows| first_row(rows).ok_or(sqlx::Error::RowNotFound))
            };
        }
        let created = match once {
            None => with_writer!(self, "create_course", pool => insert!(pool)),
            Some(once) => {
                match request_ids::once!(self, "create_course", once, now, tx => insert!(tx)) {
                    Ok(Claimed::Done(course)) => Ok(course),
                    Ok(Claimed::Earlier(earlier)) => return earlier.answer(once),
                    Err(err) => Err(err),
                }
            }
        };
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
            None => self.courses_of_through_pool(student_id, page).await?,
        };
        // Rows prove the student exists; only an empty page needs the extra look-up.
        if courses.is_empty() && !self.student_exists(student_id).await? {
            return Err(Error::NotFound(Resource::Student, student_id));
        }
        Ok(courses)
    }

    /// The page through the reader pool (sqlx).
    async fn courses_of_through_pool(
        &self,
        student_id: i64,
        page: &PageRequest,
    ) -> Result<Vec<Course>> {
        let courses = with_reader!(self, "list_courses", pool => sqlx::query_as(SELECT_PAGE_OF_STUDENT)
            .bind(student_id)
            .bind(page.after)
            .bind(page.fetch_limit())
            .fetch_all(pool)
            .await)?;
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::store::PoolSettings;

    /// Nine courses whose capacities, counts of students, revisions and creation times all
    /// differ, student 1 enrolled in each: course `c` has capacity `20 + c`, `c` students
    /// (1..=c), revision `100 + 3c`, and was created at `T0 + 7c`.
    const COURSES: i64 = 9;
    const T0: i64 = 1_764_000_000_000_000;

    fn expected(c: i64) -> Course {
        let small = |n: i64| i32::try_from(n).expect("a small number");
        Course {
            id: c,
            code: format!("C{c}"),
            title: format!("Course {c}"),
            capacity: small(20 + c),
            enrolled: small(c),
            create_time: T0 + 7 * c,
            revision: 100 + 3 * c,
        }
    }

    async fn seed(store: &Store) {
        let Backend::Sqlite { writer, .. } = &store.0 else {
            unreachable!("a SQLite store")
        };
        let run = |sql: String| async move {
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .execute(writer)
                .await
                .expect("the seed applies");
        };
        for c in 1..=COURSES {
            let Course {
                code,
                title,
                capacity,
                create_time,
                revision,
                ..
            } = expected(c);
            run(format!(
                "INSERT INTO students (name, email, create_time) VALUES ('S{c}', 's{c}@example.com', {T0})"
            ))
            .await;
            run(format!(
                "INSERT INTO courses (code, title, title_folded, capacity, create_time, revision) \
                 VALUES ('{code}', '{title}', '{}', {capacity}, {create_time}, {revision})",
                title.to_lowercase()
            ))
            .await;
        }
        run(format!(
            "INSERT INTO student_courses (student_id, course_id, enroll_time) \
             SELECT s.id, c.id, {T0} FROM students s JOIN courses c ON s.id <= c.id"
        ))
        .await;
    }

    /// A store on a new SQLite file holding [`COURSES`] courses, and the file's directory.
    async fn seeded(settings: PoolSettings) -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let url = format!("sqlite:{}", dir.path().join("school.db").display());
        let store = Store::connect(&url, &settings)
            .await
            .expect("the store opens");
        store.migrate().await.expect("migrations apply");
        seed(&store).await;
        (dir, store)
    }

    /// The direct reader and the pool (sqlx) read every page of a student's courses alike,
    /// whole courses compared field by field, and both read what the database holds: a field
    /// read from another column of its type (capacity for enrolled, revision for create_time)
    /// shows here.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_direct_reader_and_the_pool_read_the_same_courses_page_after_page() {
        let (_dir, store) = seeded(PoolSettings::for_tests()).await;

        let mut read = Vec::new();
        let mut page = PageRequest { size: 2, after: 0 };
        for _ in 0..COURSES {
            let direct = store
                .courses_of_directly(1, &page)
                .await
                .expect("the direct read")
                .expect("the direct readers are free");
            let pooled = store
                .courses_of_through_pool(1, &page)
                .await
                .expect("the pooled read");
            assert_eq!(direct, pooled, "the page after {}", page.after);
            // Each read takes one row more than the page, to tell whether another follows.
            let more = direct.len() > 2;
            read.extend(direct.into_iter().take(2));
            match read.last() {
                Some(last) if more => page.after = last.id,
                _ => break,
            }
        }
        let all: Vec<Course> = (1..=COURSES).map(expected).collect();
        assert_eq!(read, all);
        store.close().await;
    }

    /// With `sqlite_direct_reads` off, ListCourses reads through the reader pool: with every
    /// pooled connection held, it waits for one and fails UNAVAILABLE, where the direct readers
    /// (on) answer without the pool.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn list_courses_reads_through_the_pool_when_direct_reads_are_off() {
        let all: Vec<Course> = (1..=COURSES).map(expected).collect();
        let page = PageRequest { size: 20, after: 0 };
        for direct_reads in [true, false] {
            let settings = PoolSettings {
                acquire_timeout: Duration::from_millis(200),
                sqlite_direct_reads: direct_reads,
                ..PoolSettings::for_tests()
            };
            let (_dir, store) = seeded(settings.clone()).await;
            let Backend::Sqlite { readers, .. } = &store.0 else {
                unreachable!("a SQLite store")
            };
            let mut held = Vec::new();
            for _ in 0..settings.max_connections {
                held.push(readers.acquire().await.expect("a pooled reader"));
            }

            let listed = store.list_courses_of(1, &page).await;
            if direct_reads {
                assert_eq!(listed.expect("read directly"), all);
            } else {
                let timed_out = matches!(&listed, Err(Error::Unavailable(cause))
                    if matches!(cause.downcast_ref(), Some(sqlx::Error::PoolTimedOut)));
                assert!(timed_out, "{listed:?}");
            }
            drop(held);
            let listed = store.list_courses_of(1, &page).await;
            assert_eq!(
                listed.expect("read with the pool free"),
                all,
                "{direct_reads}"
            );
            store.close().await;
        }
    }
}
