-- Enrollment events, a transactional outbox: every committed change to an enrollment is one row
-- here, written by the seat triggers inside the statement that makes the change, so a change
-- without its event (or an event without its change) cannot exist, whatever crashes when. Twin
-- of migrations/postgres/0005.
--
-- `sequence` is the public, gap-free position of the event. SQLite runs one write transaction at
-- a time and gives a new row the largest rowid plus one, so sequences come in commit order, and
-- a statement or transaction that is undone takes its number back with it. Retention never
-- deletes the newest event (store/events.rs), so no number is ever handed out twice. The event's
-- id is not stored: it is derived from the feed's namespace and the sequence (a UUID, see
-- store/events.rs), which keeps each event to one small row and one index entry.
CREATE TABLE enrollment_events (
    sequence    INTEGER PRIMARY KEY,
    -- 1 CREATED, 2 DELETED (school.v1.EnrollmentEvent.Type).
    type        INTEGER NOT NULL CHECK (type IN (1, 2)),
    -- 0 for CREATED; 1 UNASSIGNED, 2 STUDENT_DELETED, 3 COURSE_DELETED.
    cause       INTEGER NOT NULL CHECK (cause BETWEEN 0 AND 3),
    student_id  INTEGER NOT NULL,
    course_id   INTEGER NOT NULL,
    enroll_time INTEGER NOT NULL,
    -- Microseconds since the Unix epoch, like every stored time.
    event_time  INTEGER NOT NULL
);

-- The feed itself: a random namespace for the event ids of this database, and how far a broker
-- has acknowledged the events (the relay publishes in order, so one number says it).
CREATE TABLE event_feed (
    singleton      INTEGER PRIMARY KEY CHECK (singleton = 1),
    namespace      TEXT    NOT NULL,
    last_published INTEGER NOT NULL DEFAULT 0
);
INSERT INTO event_feed (singleton, namespace) VALUES (1, lower(hex(randomblob(16))));

-- The seat triggers of 0002 and 0001 again, each now also writing the event: one trigger per
-- change instead of two.
DROP TRIGGER student_courses_take_seat;
DROP TRIGGER student_courses_free_seat;

CREATE TRIGGER student_courses_take_seat AFTER INSERT ON student_courses
WHEN EXISTS (SELECT 1 FROM students WHERE id = NEW.student_id)
BEGIN
    SELECT RAISE(ABORT, 'COURSE_FULL')
    FROM courses
    WHERE id = NEW.course_id AND capacity <> 0 AND enrolled >= capacity;
    UPDATE courses SET enrolled = enrolled + 1 WHERE id = NEW.course_id;
    INSERT INTO enrollment_events (type, cause, student_id, course_id, enroll_time, event_time)
    VALUES (1, 0, NEW.student_id, NEW.course_id, NEW.enroll_time,
            CAST(unixepoch('subsec') * 1000000 AS INTEGER));
END;

-- The cause: a cascade from DeleteStudent or DeleteCourse runs after the parent row is gone, so
-- the missing parent names it; otherwise the pair was unassigned.
CREATE TRIGGER student_courses_free_seat AFTER DELETE ON student_courses
BEGIN
    UPDATE courses SET enrolled = enrolled - 1 WHERE id = OLD.course_id;
    INSERT INTO enrollment_events (type, cause, student_id, course_id, enroll_time, event_time)
    VALUES (
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
