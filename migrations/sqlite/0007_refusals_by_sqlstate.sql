-- The twin of migrations/postgres/0007, which gives PostgreSQL's COURSE_FULL a SQLSTATE of its
-- own. Nothing to change here: SQLite's RAISE(ABORT, 'COURSE_FULL') cannot carry a code (every
-- such error is SQLITE_CONSTRAINT_TRIGGER), so its message stays the identifier, named in
-- src/store/refusals.rs. Kept so both folders carry the same versions.
SELECT 1;
