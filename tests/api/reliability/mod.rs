//! Reliability (issue 3): deadlines and cancellation, overload, hostile input. Each scenario is
//! bounded in time and checks the stored data with the same integrity rules as `verify`.

mod deadlines;
mod half_open;
mod hostile;
mod isolation;
mod overload;
pub(crate) mod raw;

use sqlx::{Connection, Executor, PgConnection, SqliteConnection};

use crate::helpers::{Peek, read_with};

/// Makes writes wait, from a connection of the test's own, without mocks. On SQLite it takes the
/// database's write lock (`BEGIN IMMEDIATE`), so every write waits in SQLite's busy handler; on
/// PostgreSQL it locks one course row (`SELECT ... FOR UPDATE`), so an enrollment in that course
/// waits inside the seat trigger's `UPDATE`.
pub(crate) enum WriteBlock {
    Sqlite(SqliteConnection),
    Postgres(PgConnection),
}

impl WriteBlock {
    pub(crate) async fn hold(database_url: &str, course_id: i64) -> WriteBlock {
        if database_url.starts_with("sqlite:") {
            let mut connection = SqliteConnection::connect(database_url)
                .await
                .expect("open the SQLite file");
            connection
                .execute("BEGIN IMMEDIATE")
                .await
                .expect("take the write lock");
            WriteBlock::Sqlite(connection)
        } else {
            let mut connection = PgConnection::connect(database_url)
                .await
                .expect("connect to PostgreSQL");
            connection.execute("BEGIN").await.expect("begin");
            sqlx::query("SELECT id FROM courses WHERE id = $1 FOR UPDATE")
                .bind(course_id)
                .execute(&mut connection)
                .await
                .expect("lock the course row");
            WriteBlock::Postgres(connection)
        }
    }

    /// Rolls back, which lets the waiting writes go on.
    pub(crate) async fn release(self) {
        match self {
            WriteBlock::Sqlite(mut connection) => {
                connection.execute("ROLLBACK").await.expect("rollback");
                connection.close().await.expect("close");
            }
            WriteBlock::Postgres(mut connection) => {
                connection.execute("ROLLBACK").await.expect("rollback");
                connection.close().await.expect("close");
            }
        }
    }
}

/// Every row of every table, as text, in key order: equal snapshots mean no stored data changed.
pub(crate) async fn snapshot(peek: &Peek) -> Vec<String> {
    const TABLES: [&str; 3] = [
        "SELECT 'student|' || CAST(id AS TEXT) || '|' || name || '|' || email || '|' \
         || CAST(create_time AS TEXT) FROM students ORDER BY id",
        "SELECT 'course|' || CAST(id AS TEXT) || '|' || code || '|' || title || '|' \
         || title_folded || '|' || CAST(capacity AS TEXT) || '|' || CAST(enrolled AS TEXT) \
         || '|' || CAST(create_time AS TEXT) FROM courses ORDER BY id",
        "SELECT 'enrollment|' || CAST(student_id AS TEXT) || '|' || CAST(course_id AS TEXT) \
         || '|' || CAST(enroll_time AS TEXT) FROM student_courses ORDER BY student_id, course_id",
    ];
    let mut rows = Vec::new();
    for sql in TABLES {
        let table: Vec<String> =
            read_with!(peek, pool => sqlx::query_scalar(sql).fetch_all(pool).await)
                .expect("read a table");
        rows.extend(table);
    }
    rows
}

/// Whether the database holds an enrollment row for the pair.
pub(crate) async fn is_enrolled(peek: &Peek, student_id: i64, course_id: i64) -> bool {
    const SQL: &str =
        "SELECT COUNT(*) FROM student_courses WHERE student_id = $1 AND course_id = $2";
    let count: i64 = read_with!(peek, pool => sqlx::query_scalar(SQL)
        .bind(student_id)
        .bind(course_id)
        .fetch_one(pool)
        .await)
    .expect("count rows");
    count == 1
}
