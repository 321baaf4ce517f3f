-- The school schema for SQLite. migrations/postgres/0001_schema.sql is its twin: the same tables,
-- columns and rules, written in PostgreSQL's dialect. Keep the two in step.
--
-- Times are stored as microseconds since the Unix epoch (UTC) in a 64-bit integer on both
-- backends, so the service reads and writes them with the same code and the same precision.

-- AUTOINCREMENT: an id is never handed out twice, even after the newest row is deleted, so a
-- client holding a stale id gets NOT_FOUND instead of silently addressing someone else.
CREATE TABLE students (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    name        TEXT    NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    -- Lower-cased by the service before it gets here; UNIQUE makes "one student per address"
    -- hold even when two replicas race to create the same student.
    email       TEXT    NOT NULL UNIQUE,
    create_time INTEGER NOT NULL
);

CREATE TABLE courses (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    -- Upper-cased by the service, so uniqueness is case-insensitive.
    code        TEXT    NOT NULL UNIQUE CHECK (length(code) BETWEEN 1 AND 32),
    title       TEXT    NOT NULL CHECK (length(title) BETWEEN 1 AND 200),
    -- The title lower-cased by the service (Unicode-aware, identically on both backends), so a
    -- case-insensitive substring search needs no per-row function call.
    title_folded TEXT   NOT NULL,
    -- 0 means unlimited.
    capacity    INTEGER NOT NULL CHECK (capacity >= 0),
    -- The number of rows in student_courses for this course, kept by the triggers below in the
    -- same statement that changes those rows, so it can never drift from the real count.
    enrolled    INTEGER NOT NULL DEFAULT 0 CHECK (enrolled >= 0),
    create_time INTEGER NOT NULL,
    -- The capacity rule, as a last line of defence behind the trigger that reports COURSE_FULL.
    CHECK (capacity = 0 OR enrolled <= capacity)
);

-- The junction table. The primary key (student_id, course_id) makes an enrollment unique, which
-- is what lets AssignCourse be idempotent with a single INSERT ... ON CONFLICT DO NOTHING, and it
-- also serves the student-side lookup (ListCourses) in course order. WITHOUT ROWID stores the
-- rows in that key's order, so the lookup reads one contiguous range.
CREATE TABLE student_courses (
    student_id  INTEGER NOT NULL REFERENCES students (id) ON DELETE CASCADE,
    course_id   INTEGER NOT NULL REFERENCES courses (id) ON DELETE CASCADE,
    enroll_time INTEGER NOT NULL,
    PRIMARY KEY (student_id, course_id)
) WITHOUT ROWID;

-- The course-side lookup (ListEnrolledStudents, and the cascade when a course is deleted) in
-- student order.
CREATE INDEX student_courses_by_course ON student_courses (course_id, student_id);

-- Seat accounting. Running in the database, inside the statement that inserts or deletes the
-- enrollment, makes it atomic without an application-side transaction: SQLite serialises writers,
-- so two racing AssignCourse calls can never both take the last seat. The check runs AFTER the
-- insert, so a duplicate pair skipped by ON CONFLICT DO NOTHING never reaches it: re-assigning an
-- existing pair on a full course still succeeds, as the API promises. RAISE(ABORT) undoes the
-- whole statement, the inserted row included; the service maps the message COURSE_FULL to
-- FAILED_PRECONDITION.
CREATE TRIGGER student_courses_take_seat AFTER INSERT ON student_courses
BEGIN
    SELECT RAISE(ABORT, 'COURSE_FULL')
    FROM courses
    WHERE id = NEW.course_id AND capacity <> 0 AND enrolled >= capacity;
    UPDATE courses SET enrolled = enrolled + 1 WHERE id = NEW.course_id;
END;

-- Frees the seat, also when the row goes because its student or course was deleted (cascades
-- fire this trigger too).
CREATE TRIGGER student_courses_free_seat AFTER DELETE ON student_courses
BEGIN
    UPDATE courses SET enrolled = enrolled - 1 WHERE id = OLD.course_id;
END;
