//! Integrity checks for `student-service verify`: each query returns one row per violation.

use super::Backend;
use std::fmt;

use super::{Store, with_reader};

/// One broken rule, described for an operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub check: &'static str,
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.check, self.detail)
    }
}

/// (name, query returning one text column per violation), valid on both backends.
const CHECKS: &[(&str, &str)] = &[
    (
        "orphan enrollment",
        "SELECT 'student ' || CAST(sc.student_id AS TEXT) || ' in course ' \
         || CAST(sc.course_id AS TEXT) FROM student_courses sc \
         WHERE NOT EXISTS (SELECT 1 FROM students s WHERE s.id = sc.student_id) \
         OR NOT EXISTS (SELECT 1 FROM courses c WHERE c.id = sc.course_id)",
    ),
    (
        "enrolled count",
        "SELECT 'course ' || CAST(c.id AS TEXT) || ' says ' || CAST(c.enrolled AS TEXT) \
         || ' enrolled but has ' || CAST(COUNT(sc.student_id) AS TEXT) \
         FROM courses c LEFT JOIN student_courses sc ON sc.course_id = c.id \
         GROUP BY c.id, c.enrolled HAVING c.enrolled <> COUNT(sc.student_id)",
    ),
    (
        "over capacity",
        "SELECT 'course ' || CAST(c.id AS TEXT) || ' has ' || CAST(COUNT(*) AS TEXT) \
         || ' students for ' || CAST(c.capacity AS TEXT) || ' seats' \
         FROM courses c JOIN student_courses sc ON sc.course_id = c.id \
         WHERE c.capacity <> 0 GROUP BY c.id, c.capacity HAVING COUNT(*) > c.capacity",
    ),
    // `ß` in an address and `ẞ` in a code are what the fold before migration 0006 left, where
    // that migration could not refold without merging two rows.
    (
        "email not normalised",
        "SELECT 'student ' || CAST(id AS TEXT) FROM students \
         WHERE email <> lower(email) OR email LIKE '%ß%'",
    ),
    (
        "code not normalised",
        "SELECT 'course ' || CAST(id AS TEXT) FROM courses WHERE code LIKE '%ẞ%'",
    ),
];

/// SQLite's own checks of the file and of foreign keys (which SQLite only enforces on
/// connections that enabled them).
const SQLITE_CHECKS: &[(&str, &str)] = &[
    (
        "sqlite integrity_check",
        "SELECT integrity_check FROM pragma_integrity_check WHERE integrity_check <> 'ok'",
    ),
    (
        "sqlite foreign_key_check",
        "SELECT \"table\" || ' row ' || COALESCE(CAST(rowid AS TEXT), '?') || ' -> ' || parent \
         FROM pragma_foreign_key_check",
    ),
];

impl Store {
    /// Runs every check; an empty list means the database is sound.
    pub async fn verify(&self) -> Result<Vec<Violation>, sqlx::Error> {
        let backend_checks: &[(&str, &str)] = match &self.0 {
            Backend::Sqlite { .. } => SQLITE_CHECKS,
            Backend::Postgres(..) => &[],
        };
        let mut violations = Vec::new();
        for &(check, sql) in backend_checks.iter().chain(CHECKS) {
            let details: Vec<String> = with_reader!(self, "verify", pool => sqlx::query_scalar(sql).fetch_all(pool).await)?;
            violations.extend(
                details
                    .into_iter()
                    .map(|detail| Violation { check, detail }),
            );
        }
        Ok(violations)
    }
}
