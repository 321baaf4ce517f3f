-- Enrollment events, a transactional outbox: every committed change to an enrollment is one row
-- here, written by a trigger inside the statement that makes the change, so a change without its
-- event (or an event without its change) cannot exist, whatever crashes when. Twin of
-- migrations/sqlite/0005.
--
-- The public `sequence` must be gap-free and never skip an event, but PostgreSQL commits
-- concurrent transactions in any order: a number taken at insert time (an identity, a
-- sequence) becomes visible out of order, and a reader polling "above the last number I saw"
-- would miss the transaction that commits late. So rows are written unnumbered, with the id
-- of their transaction (`xid`), and one sequencer (the replica holding an advisory lock; see
-- store/events.rs) numbers, in (xid, position) order, only the rows whose transaction is older
-- than every transaction still running: nothing can commit before them any more. A counter row
-- keeps the last number, so retention never makes a number come back.
CREATE TABLE enrollment_events (
    -- Insertion order, private: ties within one transaction.
    position    BIGINT   GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    xid         xid8     NOT NULL DEFAULT pg_current_xact_id(),
    -- NULL until the sequencer numbers the row.
    sequence    BIGINT   UNIQUE,
    -- A UUID (version 4), unique forever: what consumers deduplicate on.
    id          UUID     NOT NULL UNIQUE DEFAULT gen_random_uuid(),
    -- 1 CREATED, 2 DELETED (school.v1.EnrollmentEvent.Type).
    type        SMALLINT NOT NULL CHECK (type IN (1, 2)),
    -- 0 for CREATED; 1 UNASSIGNED, 2 STUDENT_DELETED, 3 COURSE_DELETED.
    cause       SMALLINT NOT NULL CHECK (cause BETWEEN 0 AND 3),
    student_id  BIGINT   NOT NULL,
    course_id   BIGINT   NOT NULL,
    enroll_time BIGINT   NOT NULL,
    -- Microseconds since the Unix epoch, like every stored time.
    event_time  BIGINT   NOT NULL
        DEFAULT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint,
    -- Set once a broker acknowledged the event (NATS JetStream, when configured).
    published   BOOLEAN  NOT NULL DEFAULT false
);

CREATE TABLE enrollment_event_sequencer (
    singleton     BOOLEAN PRIMARY KEY DEFAULT true CHECK (singleton),
    last_sequence BIGINT  NOT NULL
);
INSERT INTO enrollment_event_sequencer (last_sequence) VALUES (0);

-- The sequencer's work list, and the relay's.
CREATE INDEX enrollment_events_to_number ON enrollment_events (xid, position) WHERE sequence IS NULL;
CREATE INDEX enrollment_events_unpublished ON enrollment_events (sequence)
    WHERE NOT published AND sequence IS NOT NULL;
-- Filtered watches.
CREATE INDEX enrollment_events_by_student ON enrollment_events (student_id, sequence);
CREATE INDEX enrollment_events_by_course ON enrollment_events (course_id, sequence);

-- The cause of a deletion: a cascade from DeleteStudent or DeleteCourse runs after the parent
-- row is gone, so the missing parent names it; otherwise the pair was unassigned. (No NOTIFY
-- here: it takes a global lock at commit and would serialise every writer.)
CREATE FUNCTION student_courses_record_event() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO enrollment_events (type, cause, student_id, course_id, enroll_time)
        VALUES (1, 0, NEW.student_id, NEW.course_id, NEW.enroll_time);
        RETURN NEW;
    END IF;
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

CREATE TRIGGER student_courses_record_event AFTER INSERT OR DELETE ON student_courses
FOR EACH ROW EXECUTE FUNCTION student_courses_record_event();
