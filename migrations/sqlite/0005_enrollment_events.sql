-- Enrollment events, a transactional outbox: every committed change to an enrollment is one row
-- here, written by triggers inside the statement that makes the change, so a change without its
-- event (or an event without its change) cannot exist, whatever crashes when. Twin of
-- migrations/postgres/0005.
--
-- `sequence` is the public, gap-free position of the event. SQLite runs one write transaction at
-- a time, so AUTOINCREMENT hands out sequences in commit order; a statement or transaction that
-- is undone takes its number back with it (sqlite_sequence is written in the same transaction),
-- and AUTOINCREMENT never reuses a number, even after retention deleted every row.
CREATE TABLE enrollment_events (
    sequence    INTEGER PRIMARY KEY AUTOINCREMENT,
    -- A UUID (version 4), unique forever: what consumers deduplicate on.
    id          TEXT    NOT NULL UNIQUE,
    -- 1 CREATED, 2 DELETED (school.v1.EnrollmentEvent.Type).
    type        INTEGER NOT NULL CHECK (type IN (1, 2)),
    -- 0 for CREATED; 1 UNASSIGNED, 2 STUDENT_DELETED, 3 COURSE_DELETED.
    cause       INTEGER NOT NULL CHECK (cause BETWEEN 0 AND 3),
    student_id  INTEGER NOT NULL,
    course_id   INTEGER NOT NULL,
    enroll_time INTEGER NOT NULL,
    -- Microseconds since the Unix epoch, like every stored time.
    event_time  INTEGER NOT NULL,
    -- Set once a broker acknowledged the event (NATS JetStream, when configured).
    published   INTEGER NOT NULL DEFAULT 0
);

CREATE TRIGGER student_courses_event_created AFTER INSERT ON student_courses
BEGIN
    INSERT INTO enrollment_events (id, type, cause, student_id, course_id, enroll_time, event_time)
    VALUES (
        lower(hex(randomblob(4)) || '-' || hex(randomblob(2)) || '-4'
            || substr(hex(randomblob(2)), 2) || '-'
            || substr('89ab', 1 + (abs(random()) % 4), 1) || substr(hex(randomblob(2)), 2)
            || '-' || hex(randomblob(6))),
        1, 0, NEW.student_id, NEW.course_id, NEW.enroll_time,
        CAST(unixepoch('subsec') * 1000000 AS INTEGER)
    );
END;

-- The cause: a cascade from DeleteStudent or DeleteCourse runs after the parent row is gone, so
-- the missing parent names it; otherwise the pair was unassigned.
CREATE TRIGGER student_courses_event_deleted AFTER DELETE ON student_courses
BEGIN
    INSERT INTO enrollment_events (id, type, cause, student_id, course_id, enroll_time, event_time)
    VALUES (
        lower(hex(randomblob(4)) || '-' || hex(randomblob(2)) || '-4'
            || substr(hex(randomblob(2)), 2) || '-'
            || substr('89ab', 1 + (abs(random()) % 4), 1) || substr(hex(randomblob(2)), 2)
            || '-' || hex(randomblob(6))),
        2,
        CASE
            WHEN NOT EXISTS (SELECT 1 FROM students WHERE id = OLD.student_id) THEN 2
            WHEN NOT EXISTS (SELECT 1 FROM courses WHERE id = OLD.course_id) THEN 3
            ELSE 1
        END,
        OLD.student_id, OLD.course_id, OLD.enroll_time,
        CAST(unixepoch('subsec') * 1000000 AS INTEGER)
    );
END;

-- What the relay to a broker has left to send, in order.
CREATE INDEX enrollment_events_unpublished ON enrollment_events (sequence) WHERE published = 0;
-- Filtered watches.
CREATE INDEX enrollment_events_by_student ON enrollment_events (student_id, sequence);
CREATE INDEX enrollment_events_by_course ON enrollment_events (course_id, sequence);
