//! Migrations as a contract: both dialects carry the same migrations, build the same schema but
//! for the differences listed here with their reasons, raise the refusals `store::refusals`
//! names, and upgrade a database of any earlier version, with its data, to one that verifies.

use std::collections::BTreeSet;

use sqlx::{PgPool, SqlitePool, postgres::PgDatabaseError};
use student_service::{
    domain::StudentCourse,
    error::Error,
    store::{Store, refusals},
};

use crate::helpers::{Backend, Peek, TestDatabase, on_both_backends, pool_settings, read_with};

on_both_backends!(
    the_seat_trigger_raises_the_named_refusal,
    every_earlier_version_upgrades_with_its_data_to_a_sound_database,
);

/// Schema facts only a fresh SQLite database has, each for the reason its comment gives.
const ONLY_SQLITE: &[&str] = &[
    // SQLite numbers an event as it writes it: the rowid (an INTEGER PRIMARY KEY) is the public
    // sequence, in commit order because one writer commits at a time (sqlite/0005).
    "column enrollment_events.sequence: integer not null",
    "primary key enrollment_events (sequence)",
    // No boolean type: the feed's one row is the integer 1.
    "column event_feed.singleton: integer not null",
];

/// Schema facts only a fresh PostgreSQL database has, each for the reason its comment gives.
const ONLY_POSTGRES: &[&str] = &[
    // Transactions commit in any order, so events are written unnumbered (`sequence` NULL), in
    // insertion order (`position`) with their transaction's id (`xid`), and numbered later by
    // the sequencer, which keeps the last number in the feed (postgres/0005).
    "column enrollment_events.position: integer not null",
    "primary key enrollment_events (position)",
    "column enrollment_events.xid: xid8 not null",
    "column enrollment_events.sequence: integer null",
    "unique enrollment_events (sequence) partial",
    "index enrollment_events (xid, position) partial",
    "column event_feed.last_sequence: integer not null",
    "column event_feed.singleton: boolean not null",
    // Deletes lock the student's courses first, so they cannot deadlock with enrollments;
    // SQLite runs one writer at a time and needs no lock order (postgres/0003).
    "trigger students BEFORE DELETE",
];

/// `ONLY_SQLITE` and `ONLY_POSTGRES` are exactly what sets the two apart: a new difference fails
/// this test until it is listed with its reason, and so does a listed one that is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(test_postgres),
    ignore = "needs PostgreSQL: set TEST_DATABASE_URL (README)"
)]
async fn fresh_schemas_differ_only_as_listed() {
    let sqlite = schema_of_a_fresh(&Backend::Sqlite).await;
    let postgres = schema_of_a_fresh(&Backend::postgres()).await;

    let only_sqlite: Vec<&str> = sqlite.difference(&postgres).map(String::as_str).collect();
    let only_postgres: Vec<&str> = postgres.difference(&sqlite).map(String::as_str).collect();

    assert_eq!(only_sqlite, sorted(ONLY_SQLITE), "only on SQLite");
    assert_eq!(only_postgres, sorted(ONLY_POSTGRES), "only on PostgreSQL");
    // The comparison saw the schema: the shared tables, keys, indexes and triggers.
    for fact in [
        "table student_courses",
        "primary key student_courses (student_id, course_id)",
        "unique students (email)",
        "index student_courses (course_id, student_id)",
        "foreign key student_courses (course_id) -> courses (id) on delete cascade",
        "trigger student_courses AFTER INSERT",
        "trigger student_courses AFTER DELETE",
    ] {
        assert!(sqlite.contains(fact), "{fact} missing: {sqlite:#?}");
    }
}

/// sqlx applies each folder on its own: a version one dialect lacks would go unnoticed.
#[test]
fn both_dialects_carry_the_same_migrations() {
    let sqlite = migration_files("sqlite");
    let postgres = migration_files("postgres");

    assert_eq!(sqlite, postgres);
    assert_eq!(sqlite.len(), versions().len(), "{sqlite:?}");
}

async fn the_seat_trigger_raises_the_named_refusal(backend: Backend) {
    let (database, store) = migrated(&backend, None).await;
    let peek = Peek::open(&database.url).await;
    execute(&peek, &[
        "INSERT INTO students (name, email, create_time) VALUES ('Ada', 'ada@example.org', 0)",
        "INSERT INTO students (name, email, create_time) VALUES ('Alan', 'alan@example.org', 0)",
        "INSERT INTO courses (code, title, title_folded, capacity, create_time) \
         VALUES ('ONE', 'One seat', 'one seat', 1, 0)",
        "INSERT INTO student_courses (student_id, course_id, enroll_time) VALUES (1, 1, 0)",
    ])
    .await;

    let refused = read_with!(&peek, pool => sqlx::raw_sql(
        "INSERT INTO student_courses (student_id, course_id, enroll_time) VALUES (2, 1, 0)",
    )
    .execute(pool)
    .await
    .map(drop));

    let Err(sqlx::Error::Database(refusal)) = refused else {
        panic!("the second seat of a one-seat course: {refused:?}");
    };
    assert_eq!(refusal.message(), refusals::COURSE_FULL);
    if let Some(postgres) = refusal.try_downcast_ref::<PgDatabaseError>() {
        assert_eq!(postgres.code(), refusals::COURSE_FULL_SQLSTATE);
        assert_eq!(postgres.detail(), Some("1"), "the full course");
    }
    store.close().await;
}

/// For each version before the latest: a database migrated only that far, holding what a
/// release of that version would have stored, is migrated the normal way, verifies clean,
/// still holds its data, and takes and refuses enrollments as a fresh one does.
async fn every_earlier_version_upgrades_with_its_data_to_a_sound_database(backend: Backend) {
    let versions = versions();
    let latest = *versions.last().expect("at least one migration");
    for &version in versions.iter().filter(|&&v| v < latest) {
        let (database, store) = migrated(&backend, Some(version)).await;
        let peek = Peek::open(&database.url).await;
        execute(&peek, &rows_stored_at(version)).await;

        let applied = store.migrate().await.expect("migrate to the latest");

        let expected: Vec<i64> = versions.iter().copied().filter(|&v| v > version).collect();
        let applied: Vec<i64> = applied.iter().map(|m| m.version).collect();
        assert_eq!(applied, expected, "from {version}");
        let violations = store.verify().await.expect("verify runs");
        assert!(violations.is_empty(), "from {version}: {violations:?}");
        assert_eq!(holds(&peek).await, expected_rows(version));
        assert_enrollments_work(&store, version).await;
        assert_eq!(
            events(&peek).await.len(),
            if version >= 5 { EVENTS_WRITTEN + 1 } else { 1 },
            "from {version}: the events kept, and the one written since"
        );
        store.close().await;
        drop(database);
    }
}

/// The rows a release at `version` would have stored, as it stored them. Ids are those a fresh
/// database hands out: students 1..=4, courses 1..=3.
fn rows_stored_at(version: i64) -> Vec<&'static str> {
    let mut rows = vec![
        "INSERT INTO students (name, email, create_time) \
         VALUES ('Ada Lovelace', 'ada@example.org', 1700000000000000)",
        "INSERT INTO students (name, email, create_time) \
         VALUES ('Alan Turing', 'alan@example.org', 1700000000000001)",
        "INSERT INTO students (name, email, create_time) \
         VALUES ('Grace Hopper', 'grace@example.org', 1700000000000002)",
        "INSERT INTO courses (code, title, title_folded, capacity, create_time) \
         VALUES ('MATH101', 'Analysis I', 'analysis i', 2, 1700000000000003)",
        "INSERT INTO courses (code, title, title_folded, capacity, create_time) \
         VALUES ('CS101', 'Computing', 'computing', 0, 1700000000000004)",
    ];
    // Before 0006 the fold stored `ß` in an address and a folded title, `ẞ` in a code; 0006
    // refolds them.
    rows.extend(if version < 6 {
        [
            "INSERT INTO students (name, email, create_time) \
             VALUES ('Jörg Straße', 'straße@example.org', 1700000000000005)",
            "INSERT INTO courses (code, title, title_folded, capacity, create_time) \
             VALUES ('STRAẞE1', 'Straßenbau', 'straßenbau', 5, 1700000000000006)",
        ]
    } else {
        [
            "INSERT INTO students (name, email, create_time) \
             VALUES ('Jörg Straße', 'strasse@example.org', 1700000000000005)",
            "INSERT INTO courses (code, title, title_folded, capacity, create_time) \
             VALUES ('STRASSE1', 'Straßenbau', 'strassenbau', 5, 1700000000000006)",
        ]
    });
    // MATH101 full; Grace unassigned from CS101 (from 0005 on, each change is an event).
    rows.extend([
        "INSERT INTO student_courses (student_id, course_id, enroll_time) \
         VALUES (1, 1, 1700000000000010), (2, 1, 1700000000000011), \
         (1, 2, 1700000000000012), (3, 2, 1700000000000013), (4, 2, 1700000000000014), \
         (4, 3, 1700000000000015)",
        "DELETE FROM student_courses WHERE student_id = 3 AND course_id = 2",
    ]);
    if version >= 4 {
        rows.extend([
            "UPDATE students SET revision = 3 WHERE id = 2",
            "UPDATE courses SET revision = 2 WHERE id = 1",
        ]);
    }
    rows
}

/// Six enrollments and one unassignment.
const EVENTS_WRITTEN: usize = 7;

/// (students: id, email, revision; courses: id, code, title_folded, enrolled, revision;
/// enrollments: student, course, enroll_time)
type Rows = (
    Vec<(i64, String, i64)>,
    Vec<(i64, String, String, i32, i64)>,
    Vec<(i64, i64, i64)>,
);

fn expected_rows(version: i64) -> Rows {
    let revised = |revision: i64| if version >= 4 { revision } else { 1 };
    let text = |s: &str| s.to_owned();
    (
        vec![
            (1, text("ada@example.org"), 1),
            (2, text("alan@example.org"), revised(3)),
            (3, text("grace@example.org"), 1),
            (4, text("strasse@example.org"), 1),
        ],
        vec![
            (1, text("MATH101"), text("analysis i"), 2, revised(2)),
            (2, text("CS101"), text("computing"), 2, 1),
            (3, text("STRASSE1"), text("strassenbau"), 1, 1),
        ],
        vec![
            (1, 1, 1700000000000010),
            (1, 2, 1700000000000012),
            (2, 1, 1700000000000011),
            (4, 2, 1700000000000014),
            (4, 3, 1700000000000015),
        ],
    )
}

/// Through the store, as the service calls it: the full course refuses with the course it
/// names, and Grace enrolls again.
async fn assert_enrollments_work(store: &Store, version: i64) {
    let full = store
        .assign(
            StudentCourse {
                student_id: 3,
                course_id: 1,
            },
            1800000000000000,
        )
        .await;
    assert!(
        matches!(full, Err(Error::CourseFull(1))),
        "from {version}: {full:?}"
    );
    let (_, created) = store
        .assign(
            StudentCourse {
                student_id: 3,
                course_id: 2,
            },
            1800000000000001,
        )
        .await
        .expect("AssignCourse on a course with free seats");
    assert!(created, "from {version}");
}

/// A fresh database of `backend` with every migration, or those up to `version`.
async fn migrated(backend: &Backend, version: Option<i64>) -> (TestDatabase, Store) {
    let database = TestDatabase::create(backend).await;
    let store = Store::connect(&database.url, &pool_settings())
        .await
        .expect("connect");
    let applied = match version {
        Some(version) => store.migrate_to(version).await,
        None => store.migrate().await,
    }
    .expect("migrate");
    let applied: Vec<i64> = applied.iter().map(|m| m.version).collect();
    let expected: Vec<i64> = versions()
        .into_iter()
        .filter(|&v| version.is_none_or(|version| v <= version))
        .collect();
    assert_eq!(applied, expected);
    (database, store)
}

async fn schema_of_a_fresh(backend: &Backend) -> BTreeSet<String> {
    let (database, store) = migrated(backend, None).await;
    store.close().await;
    match Peek::open(&database.url).await {
        Peek::Sqlite(pool) => sqlite_schema(&pool).await,
        Peek::Postgres(pool) => postgres_schema(&pool).await,
    }
}

/// Runs each statement on its own, as written.
async fn execute(peek: &Peek, statements: &[&'static str]) {
    for &statement in statements {
        read_with!(peek, pool => sqlx::raw_sql(statement).execute(pool).await.map(drop))
            .unwrap_or_else(|err| panic!("{statement}: {err}"));
    }
}

async fn holds(peek: &Peek) -> Rows {
    const STUDENTS: &str = "SELECT id, email, revision FROM students ORDER BY id";
    const COURSES: &str =
        "SELECT id, code, title_folded, enrolled, revision FROM courses ORDER BY id";
    const ENROLLMENTS: &str = "SELECT student_id, course_id, enroll_time FROM student_courses \
        ORDER BY student_id, course_id";
    read_with!(peek, pool => (
        sqlx::query_as(STUDENTS).fetch_all(pool).await.expect("students"),
        sqlx::query_as(COURSES).fetch_all(pool).await.expect("courses"),
        sqlx::query_as(ENROLLMENTS).fetch_all(pool).await.expect("enrollments"),
    ))
}

/// (type, cause, student, course) of every event written.
async fn events(peek: &Peek) -> Vec<(i32, i32, i64, i64)> {
    const EVENTS: &str = "SELECT CAST(type AS INTEGER), CAST(cause AS INTEGER), student_id, \
        course_id FROM enrollment_events ORDER BY student_id, course_id, type";
    read_with!(peek, pool => sqlx::query_as(EVENTS).fetch_all(pool).await.expect("events"))
}

/// The migration versions, from the file names (both folders carry the same ones).
fn versions() -> Vec<i64> {
    migration_files("sqlite")
        .iter()
        .map(|name| {
            let digits = name.split('_').next().unwrap_or_default();
            digits
                .parse()
                .unwrap_or_else(|_| panic!("{name}: no version"))
        })
        .collect()
}

fn migration_files(dialect: &str) -> Vec<String> {
    let folder = format!("{}/migrations/{dialect}", env!("CARGO_MANIFEST_DIR"));
    let mut names: Vec<String> = std::fs::read_dir(&folder)
        .unwrap_or_else(|err| panic!("{folder}: {err}"))
        .map(|entry| entry.expect("a directory entry").file_name())
        .map(|name| name.to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn sorted(facts: &[&'static str]) -> Vec<&'static str> {
    let mut facts = facts.to_vec();
    facts.sort_unstable();
    facts
}

/// A declared type, coarsely: integers of any width are one class.
fn type_class(declared: &str) -> String {
    match declared.to_ascii_lowercase().as_str() {
        "integer" | "bigint" | "smallint" => "integer".to_owned(),
        other => other.to_owned(),
    }
}

fn nullability(not_null: bool) -> &'static str {
    if not_null { "not null" } else { "null" }
}

/// "unique T (a, b) partial" and the like; a UNIQUE constraint and a unique index are one.
fn index_fact(
    table: &str,
    columns: &[String],
    primary: bool,
    unique: bool,
    partial: bool,
) -> String {
    let kind = match (primary, unique) {
        (true, _) => "primary key",
        (false, true) => "unique",
        (false, false) => "index",
    };
    let partial = if partial { " partial" } else { "" };
    format!("{kind} {table} ({}){partial}", columns.join(", "))
}

const SQLITE_TABLES: &str = "SELECT name FROM sqlite_schema WHERE type = 'table' \
    AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' AND name <> '_sqlx_migrations'";

/// The schema facts of a SQLite database. `sqlite_sequence` (AUTOINCREMENT's bookkeeping) and
/// sqlx's table are left out, like PostgreSQL's sequences.
async fn sqlite_schema(pool: &SqlitePool) -> BTreeSet<String> {
    let mut facts = BTreeSet::new();
    let tables: Vec<String> = sqlx::query_scalar(SQLITE_TABLES)
        .fetch_all(pool)
        .await
        .expect("tables");
    for table in &tables {
        facts.insert(format!("table {table}"));
        sqlite_columns(pool, table, &mut facts).await;
        sqlite_indexes(pool, table, &mut facts).await;
        sqlite_foreign_keys(pool, table, &mut facts).await;
    }
    let triggers: Vec<(String, String)> =
        sqlx::query_as("SELECT tbl_name, sql FROM sqlite_schema WHERE type = 'trigger'")
            .fetch_all(pool)
            .await
            .expect("triggers");
    for (table, sql) in triggers {
        // `CREATE TRIGGER name AFTER INSERT ON table ...`: the words before ON.
        let sql = sql.to_ascii_uppercase();
        let head = sql.split(" ON ").next().unwrap_or_default();
        let words: Vec<&str> = head.split_whitespace().collect();
        let timing = ["BEFORE", "AFTER", "INSTEAD"]
            .into_iter()
            .find(|t| words.contains(t))
            .unwrap_or_else(|| panic!("no timing in {sql}"));
        let event = ["INSERT", "UPDATE", "DELETE"]
            .into_iter()
            .find(|e| words.contains(e))
            .unwrap_or_else(|| panic!("no event in {sql}"));
        facts.insert(format!("trigger {table} {timing} {event}"));
    }
    facts
}

async fn sqlite_columns(pool: &SqlitePool, table: &str, facts: &mut BTreeSet<String>) {
    let columns: Vec<(String, String, bool, i64)> = sqlx::query_as(
        "SELECT name, type, \"notnull\", pk FROM pragma_table_info($1) ORDER BY cid",
    )
    .bind(table)
    .fetch_all(pool)
    .await
    .expect("columns");
    let primary: Vec<&(String, String, bool, i64)> = {
        let mut key: Vec<_> = columns.iter().filter(|c| c.3 > 0).collect();
        key.sort_by_key(|c| c.3);
        key
    };
    // A lone INTEGER PRIMARY KEY is the rowid, which cannot be NULL though not declared so.
    let rowid = match primary.as_slice() {
        [(name, declared, ..)] if declared.eq_ignore_ascii_case("INTEGER") => Some(name),
        _ => None,
    };
    for (name, declared, not_null, _) in &columns {
        let not_null = *not_null || rowid == Some(name);
        facts.insert(format!(
            "column {table}.{name}: {} {}",
            type_class(declared),
            nullability(not_null)
        ));
    }
    if !primary.is_empty() {
        let names: Vec<String> = primary.iter().map(|c| c.0.clone()).collect();
        facts.insert(index_fact(table, &names, true, true, false));
    }
}

async fn sqlite_indexes(pool: &SqlitePool, table: &str, facts: &mut BTreeSet<String>) {
    let indexes: Vec<(String, bool, String, bool)> =
        sqlx::query_as("SELECT name, \"unique\", origin, partial FROM pragma_index_list($1)")
            .bind(table)
            .fetch_all(pool)
            .await
            .expect("indexes");
    // The primary key's own index (WITHOUT ROWID) is the key, already listed.
    for (index, unique, _, partial) in indexes.iter().filter(|i| i.2 != "pk") {
        let columns: Vec<String> =
            sqlx::query_scalar("SELECT name FROM pragma_index_info($1) ORDER BY seqno")
                .bind(index)
                .fetch_all(pool)
                .await
                .expect("index columns");
        facts.insert(index_fact(table, &columns, false, *unique, *partial));
    }
}

async fn sqlite_foreign_keys(pool: &SqlitePool, table: &str, facts: &mut BTreeSet<String>) {
    let keys: Vec<(i64, String, String, String, String)> = sqlx::query_as(
        "SELECT id, \"table\", \"from\", \"to\", on_delete FROM pragma_foreign_key_list($1) \
         ORDER BY id, seq",
    )
    .bind(table)
    .fetch_all(pool)
    .await
    .expect("foreign keys");
    let ids: BTreeSet<i64> = keys.iter().map(|k| k.0).collect();
    for id in ids {
        let parts: Vec<_> = keys.iter().filter(|k| k.0 == id).collect();
        let from: Vec<&str> = parts.iter().map(|k| k.2.as_str()).collect();
        let to: Vec<&str> = parts.iter().map(|k| k.3.as_str()).collect();
        facts.insert(format!(
            "foreign key {table} ({}) -> {} ({}) on delete {}",
            from.join(", "),
            parts[0].1,
            to.join(", "),
            parts[0].4.to_ascii_lowercase()
        ));
    }
}

/// (table, parent, on delete, columns, parent columns)
type ForeignKey = (String, String, String, Vec<String>, Vec<String>);

/// The schema facts of the `public` schema of a PostgreSQL database, sqlx's table left out.
async fn postgres_schema(pool: &PgPool) -> BTreeSet<String> {
    let mut facts = BTreeSet::new();
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables \
         WHERE table_schema = 'public' AND table_type = 'BASE TABLE' \
         AND table_name <> '_sqlx_migrations'",
    )
    .fetch_all(pool)
    .await
    .expect("tables");
    facts.extend(tables.iter().map(|table| format!("table {table}")));
    let columns: Vec<(String, String, String, bool)> = sqlx::query_as(
        "SELECT table_name::text, column_name::text, data_type::text, is_nullable = 'NO' \
         FROM information_schema.columns \
         WHERE table_schema = 'public' AND table_name <> '_sqlx_migrations'",
    )
    .fetch_all(pool)
    .await
    .expect("columns");
    for (table, name, declared, not_null) in columns {
        facts.insert(format!(
            "column {table}.{name}: {} {}",
            type_class(&declared),
            nullability(not_null)
        ));
    }
    let indexes: Vec<(String, bool, bool, bool, Vec<String>)> = sqlx::query_as(
        "SELECT t.relname::text, i.indisprimary, i.indisunique, i.indpred IS NOT NULL, \
             ARRAY(SELECT a.attname::text \
                   FROM unnest(i.indkey::int2[]) WITH ORDINALITY AS k (attnum, n) \
                   JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
                   ORDER BY k.n) \
         FROM pg_index i JOIN pg_class t ON t.oid = i.indrelid \
         WHERE t.relnamespace = 'public'::regnamespace AND t.relname <> '_sqlx_migrations'",
    )
    .fetch_all(pool)
    .await
    .expect("indexes");
    for (table, primary, unique, partial, columns) in indexes {
        facts.insert(index_fact(&table, &columns, primary, unique, partial));
    }
    let keys: Vec<ForeignKey> = sqlx::query_as(
        "SELECT c.conrelid::regclass::text, c.confrelid::regclass::text, \
             CASE c.confdeltype WHEN 'a' THEN 'no action' WHEN 'r' THEN 'restrict' \
                 WHEN 'c' THEN 'cascade' WHEN 'n' THEN 'set null' ELSE 'set default' END, \
             ARRAY(SELECT a.attname::text FROM unnest(c.conkey) WITH ORDINALITY AS k (attnum, n) \
                   JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum \
                   ORDER BY k.n), \
             ARRAY(SELECT a.attname::text FROM unnest(c.confkey) WITH ORDINALITY AS k (attnum, n) \
                   JOIN pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.attnum \
                   ORDER BY k.n) \
         FROM pg_constraint c \
         WHERE c.contype = 'f' AND c.connamespace = 'public'::regnamespace",
    )
    .fetch_all(pool)
    .await
    .expect("foreign keys");
    for (table, parent, on_delete, from, to) in keys {
        facts.insert(format!(
            "foreign key {table} ({}) -> {parent} ({}) on delete {on_delete}",
            from.join(", "),
            to.join(", ")
        ));
    }
    // One row per event of a trigger; the foreign keys' internal triggers are not listed.
    let triggers: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT event_object_table::text, action_timing::text, event_manipulation::text \
         FROM information_schema.triggers WHERE trigger_schema = 'public'",
    )
    .fetch_all(pool)
    .await
    .expect("triggers");
    for (table, timing, event) in triggers {
        facts.insert(format!("trigger {table} {timing} {event}"));
    }
    facts
}
