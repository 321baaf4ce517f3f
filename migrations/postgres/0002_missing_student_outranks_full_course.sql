-- The twin of migrations/sqlite/0002: a missing student outranks a full course. Nothing to change
-- here: PostgreSQL fires a row's AFTER triggers in name order, and the foreign-key triggers
-- ("RI_ConstraintTrigger_...") sort before student_courses_count_seats, so a missing student
-- (or course) is reported before the seat is counted. Kept so both folders carry the same versions.
SELECT 1;
