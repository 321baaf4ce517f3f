-- Safe retries of creates (AIP-155): the request_ids of CreateStudent, CreateCourse and
-- BatchAssignCourses calls that succeeded, with what they answered, written in the transaction
-- of the create itself (store/request_ids.rs). A retry finds its row and gets the same answer
-- on any replica; the row is claimed first, so a retry racing its own first attempt waits for it
-- instead of creating twice. Rows older than the retention (24 hours) are deleted in the
-- background. Twin of migrations/postgres/0008.
CREATE TABLE request_ids (
    -- A UUID, lower-cased by the service.
    request_id     TEXT   NOT NULL PRIMARY KEY,
    -- `package.Service/Method` of the call that used it.
    method         TEXT   NOT NULL,
    -- Hex SHA-256 of that request without its request_id: a retry must match it.
    request_digest TEXT   NOT NULL,
    -- The answer, JSON; NULL only inside the transaction that claims the row.
    response       TEXT,
    -- Microseconds since the Unix epoch.
    create_time    INTEGER NOT NULL
);

-- Retention deletes by age.
CREATE INDEX request_ids_by_time ON request_ids (create_time);
