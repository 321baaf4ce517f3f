-- The twin of migrations/postgres/0003: deletes and enrollments lock rows in one order so they
-- cannot deadlock. Nothing to change here: SQLite runs one writer at a time, so writes never
-- wait for each other's row locks. Kept so both folders carry the same versions.
SELECT 1;
