//! The refusals the migrations' triggers raise, named once: the contract between the SQL in
//! `migrations/` and the code that reads it. `errors.rs` recognises a refusal through these
//! constants only, and `tests/api/schema.rs` checks that a freshly migrated database of each
//! kind raises exactly these.
//!
//! PostgreSQL identifies a refusal by its SQLSTATE, which the trigger sets with
//! `RAISE EXCEPTION ... USING ERRCODE`: a code of our own, in class `SS` ("student service"),
//! which PostgreSQL does not use (its classes are listed in its manual, appendix A), so no
//! error of the database itself can be mistaken for a refusal. SQLite's `RAISE(ABORT, 'TEXT')`
//! carries no code of ours (every such error is SQLITE_CONSTRAINT_TRIGGER), so there the
//! message is the identifier. The message is the same on both backends and must not change: a
//! replica still running the release before migration 0007 recognises PostgreSQL's refusal by
//! it while a newer replica has already migrated the database.

/// A full course: the seat trigger refuses an enrollment beyond the course's capacity. The
/// message on both backends; raised by `student_courses_take_seat` on SQLite (as of
/// migrations/sqlite/0005) and by `student_courses_count_seats` on PostgreSQL (as of
/// migrations/postgres/0007).
pub const COURSE_FULL: &str = "COURSE_FULL";

/// The SQLSTATE of [`COURSE_FULL`] on PostgreSQL (migrations/postgres/0007; `check_violation`,
/// 23514, before it). Its DETAIL is the id of the full course (as of migrations/postgres/0005).
pub const COURSE_FULL_SQLSTATE: &str = "SS001";
