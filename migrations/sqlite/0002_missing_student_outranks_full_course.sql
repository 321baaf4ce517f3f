-- A missing student outranks a full course: AssignCourse for a student that does not exist is
-- NOT_FOUND STUDENT_NOT_FOUND on both backends, whether or not the course has a free seat.
--
-- SQLite checks immediate foreign keys at the end of the statement, after this trigger has run,
-- so the seat trigger of 0001 refused COURSE_FULL before the foreign key could say the student
-- was missing (PostgreSQL's foreign-key triggers fire before its seat trigger: they sort first by
-- name). The WHEN clause skips seat accounting for a student that does not exist; the foreign key
-- then refuses the statement, which undoes it whole. A missing course needs no clause: the
-- trigger finds no course row to refuse or count, and the foreign key reports it.
DROP TRIGGER student_courses_take_seat;

CREATE TRIGGER student_courses_take_seat AFTER INSERT ON student_courses
WHEN EXISTS (SELECT 1 FROM students WHERE id = NEW.student_id)
BEGIN
    SELECT RAISE(ABORT, 'COURSE_FULL')
    FROM courses
    WHERE id = NEW.course_id AND capacity <> 0 AND enrolled >= capacity;
    UPDATE courses SET enrolled = enrolled + 1 WHERE id = NEW.course_id;
END;
