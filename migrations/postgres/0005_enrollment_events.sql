-- Enrollment events, a transactional outbox: every committed change to an enrollment is one row
-- here, written by the seat trigger inside the statement that makes the change, so a change
-- without its event (or an event without its change) cannot exist, whatever crashes when. Twin
-- of migrations/sqlite/0005.
--
-- The public `sequence` must be gap-free and never skip an event, but PostgreSQL commits
-- concurrent transactions in any order: a number taken at insert time (an identity, a
-- sequence) becomes visible out of order, and a reader polling "above the last number I saw"
-- would miss the transaction that commits late. So rows are written unnumbered, with the id of
-- their transaction (`xid`), and one sequencer (the replica holding an advisory lock; see
-- store/events.rs) numbers, in (xid, position) order, only the rows whose transaction is older
-- than every transaction still running: nothing can commit before them any more. The feed row
-- keeps the last number, so retention never makes a number come back. The event's id is not
-- stored: it is derived from the feed's namespace and the sequence (a UUID, see
-- store/events.rs).
CREATE TABLE enrollment_events (
    -- Insertion order, private: ties within one transaction.
    position    BIGINT   GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    xid         xid8     NOT NULL DEFAULT pg_current_xact_id(),
    -- NULL until the sequencer numbers the row.
    sequence    BIGINT,
    -- 1 CREATED, 2 DELETED (school.v1.EnrollmentEvent.Type).
    type        SMALLINT NOT NULL CHECK (type IN (1, 2)),
    -- 0 for CREATED; 1 UNASSIGNED, 2 STUDENT_DELETED, 3 COURSE_DELETED.
    cause       SMALLINT NOT NULL CHECK (cause BETWEEN 0 AND 3),
    student_id  BIGINT   NOT NULL,
    course_id   BIGINT   NOT NULL,
    enroll_time BIGINT   NOT NULL,
    -- Microseconds since the Unix epoch, like every stored time.
    event_time  BIGINT   NOT NULL
        DEFAULT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint
);

-- Readers find events by sequence; partial, so that writing an event (unnumbered) costs no
-- entry here, only numbering it does.
CREATE UNIQUE INDEX enrollment_events_by_sequence ON enrollment_events (sequence)
    WHERE sequence IS NOT NULL;
-- The sequencer's work list.
CREATE INDEX enrollment_events_to_number ON enrollment_events (xid, position) WHERE sequence IS NULL;

-- The feed itself: a random namespace for the event ids of this database, the last number the
-- sequencer handed out, and how far a broker has acknowledged the events (the relay publishes in
-- order, so one number says it).
CREATE TABLE event_feed (
    singleton      BOOLEAN PRIMARY KEY DEFAULT true CHECK (singleton),
    namespace      TEXT    NOT NULL,
    last_sequence  BIGINT  NOT NULL DEFAULT 0,
    last_published BIGINT  NOT NULL DEFAULT 0
);
INSERT INTO event_feed (namespace) VALUES (replace(gen_random_uuid()::text, '-', ''));

-- The seat trigger of 0001 again, now also writing the event: one trigger call per change
-- instead of two. The cause of a deletion: a cascade from DeleteStudent or DeleteCourse runs
-- after the parent row is gone, so the missing parent names it; otherwise the pair was
-- unassigned. (No NOTIFY here: it takes a global lock at commit and would serialise every writer.)
-- COURSE_FULL now names the course in its DETAIL: a batch refused for a course whose seat
-- frees up before the refusal can be explained still reports the course it met full.
CREATE OR REPLACE FUNCTION student_courses_count_seats() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        UPDATE courses SET enrolled = enrolled + 1
        WHERE id = NEW.course_id AND (capacity = 0 OR enrolled < capacity);
        IF NOT FOUND AND EXISTS (SELECT 1 FROM courses WHERE id = NEW.course_id) THEN
            RAISE EXCEPTION 'COURSE_FULL' USING ERRCODE = 'check_violation',
                DETAIL = NEW.course_id::text;
        END IF;
        INSERT INTO enrollment_events (type, cause, student_id, course_id, enroll_time)
        VALUES (1, 0, NEW.student_id, NEW.course_id, NEW.enroll_time);
        RETURN NEW;
    END IF;
    -- DELETE, also when the row goes because its student or course was deleted.
    UPDATE courses SET enrolled = enrolled - 1 WHERE id = OLD.course_id;
    INSERT INTO enrollment_events (type, cause, student_id, course_id, enroll_time)
    VALUES (
        2,
        CASE
            WHEN NOT EXISTS (SELECT 1 FROM students WHERE id = OLD.student_id) THEN 2
            WHEN NOT EXISTS (SELECT 1 FROM courses WHERE id = OLD.course_id) THEN 3
            ELSE 1
        END,
        OLD.student_id, OLD.course_id, OLD.enroll_time
    );
    RETURN OLD;
END;
$$;
