-- What the server's runtime role needs, and nothing more: read and write rows. Run in the
-- service's database as the schema's owner (the role `student-service migrate` runs as), after
-- the migrations, and again after any release whose migrations add a table (docs/operations.md,
-- "A runtime role that cannot change the schema"). The role itself is created by the operator:
--   CREATE ROLE student_service_app LOGIN PASSWORD '...';
-- The server then starts with --migrations check (it applies nothing; it reads the versions).
-- Nothing else is needed: identity columns take their next id with the table's INSERT
-- privilege, and advisory locks, LISTEN and pg_current_snapshot() need no grant.

DO $$ BEGIN
  EXECUTE format('GRANT CONNECT ON DATABASE %I TO student_service_app', current_database());
END $$;
GRANT USAGE ON SCHEMA public TO student_service_app;
-- Every table of the schema, as far as the database has been migrated: the same script serves a
-- database still at an older release (a table of a later one is granted when it exists).
DO $$
DECLARE
  name text;
BEGIN
  FOREACH name IN ARRAY ARRAY[
    'students', 'courses', 'student_courses', 'enrollment_events', 'event_feed', 'request_ids'
  ] LOOP
    IF to_regclass(format('public.%I', name)) IS NOT NULL THEN
      EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON public.%I TO student_service_app', name);
    END IF;
  END LOOP;
END $$;
-- --migrations check reads which migrations are applied.
GRANT SELECT ON _sqlx_migrations TO student_service_app;
