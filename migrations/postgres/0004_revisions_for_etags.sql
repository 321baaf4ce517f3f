-- Etags (AIP-154): every student and course carries a revision, which UpdateStudent and
-- UpdateCourse raise by one in the statement that changes the row. The etag the API shows is
-- built from (id, revision), and an update or delete that names an etag runs only
-- `WHERE revision = $expected`: PostgreSQL re-checks that condition on the latest row version
-- after waiting for its lock, so of two writers holding the same etag exactly one wins, on any
-- number of replicas. Enrollments change `enrolled`, never the revision. A constant default adds
-- the column without rewriting the table. Twin of migrations/sqlite/0004.
ALTER TABLE students ADD COLUMN revision BIGINT NOT NULL DEFAULT 1 CHECK (revision >= 1);
ALTER TABLE courses ADD COLUMN revision BIGINT NOT NULL DEFAULT 1 CHECK (revision >= 1);
