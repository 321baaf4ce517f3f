-- The school schema for PostgreSQL. migrations/sqlite/0001_schema.sql is its twin: the same
-- tables, columns and rules, written in SQLite's dialect. Keep the two in step.
--
-- Times are stored as microseconds since the Unix epoch (UTC) in a BIGINT on both backends, so the
-- service reads and writes them with the same code and the same precision.

-- Identity columns never hand out an id twice, so a client holding a stale id gets NOT_FOUND
-- instead of silently addressing someone else.
CREATE TABLE students (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        TEXT   NOT NULL CHECK (char_length(name) BETWEEN 1 AND 200),
    -- Lower-cased by the service before it gets here; UNIQUE makes "one student per address"
    -- hold even when two replicas race to create the same student.
    email       TEXT   NOT NULL UNIQUE,
    create_time BIGINT NOT NULL
);

CREATE TABLE courses (
    id           BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- Upper-cased by the service, so uniqueness is case-insensitive.
    code         TEXT    NOT NULL UNIQUE CHECK (char_length(code) BETWEEN 1 AND 32),
    title        TEXT    NOT NULL CHECK (char_length(title) BETWEEN 1 AND 200),
    -- The title lower-cased by the service (Unicode-aware, identically on both backends), so a
    -- case-insensitive substring search needs no per-row function call.
    title_folded TEXT    NOT NULL,
    -- 0 means unlimited.
    capacity     INTEGER NOT NULL CHECK (capacity >= 0),
    -- The number of rows in student_courses for this course, kept by the trigger below in the
    -- same statement that changes those rows, so it can never drift from the real count.
    enrolled     INTEGER NOT NULL DEFAULT 0 CHECK (enrolled >= 0),
    create_time  BIGINT  NOT NULL,
    -- The capacity rule, as a last line of defence behind the trigger that reports COURSE_FULL.
    CHECK (capacity = 0 OR enrolled <= capacity)
);

-- The junction table. The primary key (student_id, course_id) makes an enrollment unique, which
-- is what lets AssignCourse be idempotent with a single INSERT ... ON CONFLICT DO NOTHING, and its
-- index also serves the student-side lookup (ListCourses) in course order.
CREATE TABLE student_courses (
    student_id  BIGINT NOT NULL REFERENCES students (id) ON DELETE CASCADE,
    course_id   BIGINT NOT NULL REFERENCES courses (id) ON DELETE CASCADE,
    enroll_time BIGINT NOT NULL,
    PRIMARY KEY (student_id, course_id)
);

-- The course-side lookup (ListEnrolledStudents, and the cascade when a course is deleted) in
-- student order.
CREATE INDEX student_courses_by_course ON student_courses (course_id, student_id);

-- Seat accounting, inside the statement that inserts or deletes the enrollment, so it is atomic
-- across any number of replicas without an application-side transaction.
--
-- Taking a seat is a conditional UPDATE: PostgreSQL locks the course row and re-checks
-- "enrolled < capacity" against the latest committed value, so of N racing inserts on a course
-- with C free seats exactly C pass, whichever replica sent them. The trigger runs AFTER the
-- insert, so a duplicate pair skipped by ON CONFLICT DO NOTHING never reaches it: re-assigning an
-- existing pair on a full course still succeeds, as the API promises. Raising undoes the whole
-- statement, the inserted row included; the service maps the message COURSE_FULL to
-- FAILED_PRECONDITION. A missing course is left to the foreign key, which reports it.
CREATE FUNCTION student_courses_count_seats() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        UPDATE courses SET enrolled = enrolled + 1
        WHERE id = NEW.course_id AND (capacity = 0 OR enrolled < capacity);
        IF NOT FOUND AND EXISTS (SELECT 1 FROM courses WHERE id = NEW.course_id) THEN
            RAISE EXCEPTION 'COURSE_FULL' USING ERRCODE = 'check_violation';
        END IF;
        RETURN NEW;
    END IF;
    -- DELETE, also when the row goes because its student or course was deleted.
    UPDATE courses SET enrolled = enrolled - 1 WHERE id = OLD.course_id;
    RETURN OLD;
END;
$$;

CREATE TRIGGER student_courses_count_seats AFTER INSERT OR DELETE ON student_courses
FOR EACH ROW EXECUTE FUNCTION student_courses_count_seats();
