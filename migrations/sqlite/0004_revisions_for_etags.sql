-- Etags (AIP-154): every student and course carries a revision, which UpdateStudent and
-- UpdateCourse raise by one in the statement that changes the row. The etag the API shows is
-- built from (id, revision), and an update or delete that names an etag runs only
-- `WHERE revision = $expected`, so of two writers holding the same etag exactly one wins.
-- Enrollments change `enrolled`, never the revision. Twin of migrations/postgres/0004.
ALTER TABLE students ADD COLUMN revision INTEGER NOT NULL DEFAULT 1 CHECK (revision >= 1);
ALTER TABLE courses ADD COLUMN revision INTEGER NOT NULL DEFAULT 1 CHECK (revision >= 1);
