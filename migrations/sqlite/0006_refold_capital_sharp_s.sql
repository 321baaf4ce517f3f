-- Stored e-mail addresses, course codes and folded titles become fixed points of the service's
-- folding (src/domain/text.rs). One fold pass used to lower-case `ẞ` (U+1E9E, capital sharp s)
-- to `ß` (U+00DF) and stop, and a code kept `ẞ` as sent, while `ß` and `ss` fold to `ss`: so
-- `straße@x.org` could be stored beside `strasse@x.org`, `STRAẞE` beside `STRASSE`, and a search
-- for "strasse" missed a title written `STRAẞE`. `ẞ` is the only character whose fold was not
-- stable (all characters, and all pairs of cased, compatibility and combining characters, were
-- checked), and only from it could the old rules store `ß` in an address or a folded title, or
-- `ẞ` in a code. So `ß` -> `ss` and `ẞ` -> `SS` in those columns gives what the service now
-- stores for the same input. The one exception is `ẞ` followed by a combining mark that
-- composes with `s` (an acute, say): the service now stores the composed letter, `replace`
-- leaves the two code points; an address or code no one is likely to have sent.
--
-- A refolded address or code that another row already holds, or that two rows would share, goes
-- to the row that holds it or to the older of the two; the others keep their old value, since
-- merging two students or two courses is not a migration's call, and so does a code that would
-- grow past 32 characters. `student-service verify` lists each one ("email not normalised",
-- "code not normalised"); updating it to a free value settles it.
-- Twin of migrations/postgres/0006: the same statements.

WITH refolded AS (
    SELECT id, replace(email, 'ß', 'ss') AS email FROM students WHERE email LIKE '%ß%'
)
UPDATE students SET email = (SELECT r.email FROM refolded r WHERE r.id = students.id)
WHERE id IN (
    SELECT r.id FROM refolded r
    WHERE NOT EXISTS (SELECT 1 FROM students s WHERE s.email = r.email)
      AND NOT EXISTS (SELECT 1 FROM refolded o WHERE o.email = r.email AND o.id < r.id)
);

WITH refolded AS (
    SELECT id, replace(code, 'ẞ', 'SS') AS code FROM courses WHERE code LIKE '%ẞ%'
)
UPDATE courses SET code = (SELECT r.code FROM refolded r WHERE r.id = courses.id)
WHERE id IN (
    SELECT r.id FROM refolded r
    WHERE length(r.code) <= 32
      AND NOT EXISTS (SELECT 1 FROM courses c WHERE c.code = r.code)
      AND NOT EXISTS (SELECT 1 FROM refolded o WHERE o.code = r.code AND o.id < r.id)
);

UPDATE courses SET title_folded = replace(title_folded, 'ß', 'ss') WHERE title_folded LIKE '%ß%';
