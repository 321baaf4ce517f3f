-- The seat trigger's refusal gets a SQLSTATE of its own, so the service recognises it by code
-- (src/store/refusals.rs, the one place that names it) instead of by its message text. It was
-- raised as check_violation (23514), which the capacity CHECK of 0001 also raises, so only the
-- text told the two apart. 'SS001' is in class SS, which PostgreSQL does not use.
--
-- Only the code changes: the message stays COURSE_FULL and the DETAIL the course id, because a
-- replica still running the release before this migration recognises the refusal by its
-- message while a newer replica has already migrated the database. The body is otherwise the
-- one of 0005. Twin of migrations/sqlite/0007, which has nothing to change.
CREATE OR REPLACE FUNCTION student_courses_count_seats() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        UPDATE courses SET enrolled = enrolled + 1
        WHERE id = NEW.course_id AND (capacity = 0 OR enrolled < capacity);
        IF NOT FOUND AND EXISTS (SELECT 1 FROM courses WHERE id = NEW.course_id) THEN
            RAISE EXCEPTION 'COURSE_FULL' USING ERRCODE = 'SS001',
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
