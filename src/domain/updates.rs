//! Changes to existing resources: updates with field masks (AIP-134), etags (AIP-154), and
//! deletes that name an etag.

use super::requests::{
    Checks, parse_capacity, parse_code, parse_email, parse_id, parse_name, parse_title,
};
use super::text;
use crate::error::{FieldViolation, Result};

/// The etag of a resource at a revision: weak (RFC 7232), since it says "same updatable
/// fields", not "same bytes" (`enrolled` moves without it). The id is part of it so an etag of
/// one resource never passes as current for another.
pub fn etag(id: i64, revision: i64) -> String {
    format!("W/\"{id}.{revision}\"")
}

/// The revision an etag sent for resource `id` expects: `None` when no etag was sent. A
/// well-formed etag of another resource expects revision 0, which no row has, so it is a
/// mismatch like any stale etag. A string this service never issues is INVALID_ARGUMENT.
fn expected_revision(
    field: &'static str,
    sent: &str,
    id: i64,
) -> Result<Option<i64>, FieldViolation> {
    if sent.is_empty() {
        return Ok(None);
    }
    // Weak comparison (RFC 7232 2.3.2): W/"x" and "x" name the same version.
    let quoted = sent.strip_prefix("W/").unwrap_or(sent);
    let parsed = quoted
        .strip_prefix('"')
        .and_then(|rest| rest.strip_suffix('"'))
        .and_then(|inner| inner.split_once('.'))
        .and_then(|(of, revision)| Some((issued_number(of)?, issued_number(revision)?)));
    match parsed {
        Some((of, revision)) if of == id => Ok(Some(revision)),
        Some(_) => Ok(Some(0)),
        None => Err(FieldViolation::new(
            field,
            "is not an etag this service issued: send back the etag of the resource as read, \
             such as W/\"12.3\", or leave it empty",
        )),
    }
}

/// A number as `etag` writes it: decimal digits, no sign, no leading zero, positive and within
/// i64. `str::parse` alone would also take `+1` and `0001`, spellings that were never issued and
/// would pass as current.
fn issued_number(text: &str) -> Option<i64> {
    let canonical = text.bytes().all(|b| b.is_ascii_digit()) && !text.starts_with('0');
    canonical.then(|| text.parse().ok()).flatten()
}

/// A delete that may name the etag the client read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delete {
    pub id: i64,
    /// Delete only if the resource is still at this revision.
    pub expected_revision: Option<i64>,
}

impl Delete {
    pub fn parse(id_field: &'static str, id: i64, etag: &str) -> Result<Self> {
        let mut checks = Checks::default();
        let id = checks.take(parse_id(id_field, id));
        let expected_revision = checks.take(expected_revision("etag", etag, id));
        checks.finish(Delete {
            id,
            expected_revision,
        })
    }
}

/// A resource's fields as an update request carries them.
struct Mask<'a> {
    /// The request field that holds the resource (`student`), for violation paths.
    resource: &'static str,
    /// Fields an update may change.
    updatable: &'static [&'static str],
    /// Fields the server sets and no update may.
    output_only: &'static [&'static str],
    /// The mask's paths as sent.
    paths: &'a [String],
}

impl Mask<'_> {
    /// The fields to change: the paths named, every updatable field for `*`, or with an empty
    /// mask those the request sets to a non-default value (`is_set`).
    fn fields(&self, checks: &mut Checks, is_set: impl Fn(&str) -> bool) -> Vec<&'static str> {
        let invalid = |checks: &mut Checks, why: String| {
            checks.take::<()>(Err(FieldViolation::new("update_mask", why)));
        };
        let updatable = self.updatable.join(", ");
        if self.paths.is_empty() {
            let set: Vec<_> = self
                .updatable
                .iter()
                .copied()
                .filter(|f| is_set(f))
                .collect();
            if set.is_empty() {
                invalid(
                    checks,
                    format!(
                        "is empty and {} sets no field to change: set one of {updatable}, or \
                         name the fields to change in update_mask",
                        self.resource
                    ),
                );
            }
            return set;
        }
        if self.paths.iter().any(|p| p == "*") {
            if self.paths.len() > 1 {
                invalid(
                    checks,
                    "\"*\" must be the only path when present".to_owned(),
                );
                return Vec::new();
            }
            return self.updatable.to_vec();
        }
        let mut fields = Vec::new();
        for path in self.paths {
            if let Some(field) = self.updatable.iter().find(|f| **f == path) {
                if fields.contains(field) {
                    invalid(checks, format!("names the path {path:?} twice"));
                }
                fields.push(*field);
            } else if self.output_only.contains(&path.as_str()) {
                invalid(
                    checks,
                    format!("names {path:?}, which is output only and cannot be changed"),
                );
            } else {
                invalid(
                    checks,
                    format!(
                        "names {path:?}, which is not an updatable field of {} (updatable: \
                         {updatable})",
                        self.resource
                    ),
                );
            }
        }
        fields
    }
}

/// The `Student` of an UpdateStudent request, as sent.
#[derive(Debug, Clone, Copy, Default)]
pub struct StudentFields<'a> {
    pub id: i64,
    pub name: &'a str,
    pub email: &'a str,
    pub etag: &'a str,
}

/// A valid UpdateStudent: the fields to change, in their stored form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StudentUpdate {
    pub id: i64,
    pub name: Option<String>,
    pub email: Option<String>,
    pub expected_revision: Option<i64>,
}

impl StudentUpdate {
    pub fn parse(sent: StudentFields<'_>, paths: &[String]) -> Result<Self> {
        let mut checks = Checks::default();
        let id = checks.take(parse_id("student.id", sent.id));
        let expected_revision = checks.take(expected_revision("student.etag", sent.etag, id));
        let mask = Mask {
            resource: "student",
            updatable: &["name", "email"],
            output_only: &["id", "create_time", "etag"],
            paths,
        };
        let fields = mask.fields(&mut checks, |field| match field {
            "name" => !sent.name.is_empty(),
            _ => !sent.email.is_empty(),
        });
        let mut update = StudentUpdate {
            id,
            name: None,
            email: None,
            expected_revision,
        };
        for field in fields {
            match field {
                "name" => update.name = Some(checks.take(parse_name("student.name", sent.name))),
                _ => update.email = Some(checks.take(parse_email("student.email", sent.email))),
            }
        }
        checks.finish(update)
    }
}

/// The `Course` of an UpdateCourse request, as sent.
#[derive(Debug, Clone, Copy, Default)]
pub struct CourseFields<'a> {
    pub id: i64,
    pub code: &'a str,
    pub title: &'a str,
    pub capacity: i32,
    pub etag: &'a str,
}

/// A valid UpdateCourse: the fields to change, in their stored form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CourseUpdate {
    pub id: i64,
    pub code: Option<String>,
    pub title: Option<String>,
    /// The new title case-folded for search; set with `title`.
    pub title_folded: Option<String>,
    pub capacity: Option<i32>,
    pub expected_revision: Option<i64>,
}

impl CourseUpdate {
    pub fn parse(sent: CourseFields<'_>, paths: &[String]) -> Result<Self> {
        let mut checks = Checks::default();
        let id = checks.take(parse_id("course.id", sent.id));
        let expected_revision = checks.take(expected_revision("course.etag", sent.etag, id));
        let mask = Mask {
            resource: "course",
            updatable: &["code", "title", "capacity"],
            output_only: &["id", "enrolled", "create_time", "etag"],
            paths,
        };
        let fields = mask.fields(&mut checks, |field| match field {
            "code" => !sent.code.is_empty(),
            "title" => !sent.title.is_empty(),
            _ => sent.capacity != 0,
        });
        let mut update = CourseUpdate {
            id,
            code: None,
            title: None,
            title_folded: None,
            capacity: None,
            expected_revision,
        };
        for field in fields {
            match field {
                "code" => update.code = Some(checks.take(parse_code("course.code", sent.code))),
                "title" => {
                    let title = checks.take(parse_title("course.title", sent.title));
                    update.title_folded = Some(text::fold(&title));
                    update.title = Some(title);
                }
                _ => {
                    update.capacity =
                        Some(checks.take(parse_capacity("course.capacity", sent.capacity)));
                }
            }
        }
        checks.finish(update)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::tests::violations;

    fn paths(paths: &[&str]) -> Vec<String> {
        paths.iter().map(|p| (*p).to_owned()).collect()
    }

    #[test]
    fn etags_round_trip_and_compare_weakly() {
        let tag = etag(12, 3);
        assert_eq!(tag, "W/\"12.3\"");
        assert_eq!(expected_revision("etag", &tag, 12), Ok(Some(3)));
        assert_eq!(expected_revision("etag", "\"12.3\"", 12), Ok(Some(3)));
        assert_eq!(expected_revision("etag", "", 12), Ok(None));
        // Another resource's etag is well formed but never current here.
        assert_eq!(expected_revision("etag", &tag, 13), Ok(Some(0)));
        let largest = etag(i64::MAX, i64::MAX);
        assert_eq!(
            expected_revision("etag", &largest, i64::MAX),
            Ok(Some(i64::MAX))
        );
        for forged in [
            "12.3",
            "W/12.3",
            "W/\"12\"",
            "W/\"a.b\"",
            "W/\"0.1\"",
            "W/\"1.0\"",
            // Numbers spelt another way than `etag` writes them.
            "W/\"+12.+3\"",
            "W/\"+1.+1\"",
            "W/\"012.0003\"",
            "\"+0012.3\"",
            "W/\"12.03\"",
            "W/\"12.-3\"",
            "W/\"-12.3\"",
            "W/\" 12.3\"",
            "W/\"12.3 \"",
            "W/\"12.\"",
            "W/\".3\"",
            "W/\"12.3.4\"",
            "W/\"１２.３\"",
            "w/\"12.3\"",
            "W/\"12.3\" ",
            "W/\"12.9223372036854775808\"",
            "W/\"9223372036854775808.3\"",
        ] {
            assert!(
                expected_revision("etag", forged, 12).is_err(),
                "{forged} accepted"
            );
        }
    }

    #[test]
    fn an_empty_mask_changes_the_fields_that_are_set() {
        let sent = StudentFields {
            id: 1,
            name: "Ada",
            ..Default::default()
        };
        let update = StudentUpdate::parse(sent, &[]).expect("valid");
        assert_eq!(update.name.as_deref(), Some("Ada"));
        assert_eq!(update.email, None);
    }

    #[test]
    fn a_named_path_changes_the_field_even_to_its_default() {
        let sent = CourseFields {
            id: 1,
            ..Default::default()
        };
        let update = CourseUpdate::parse(sent, &paths(&["capacity"])).expect("valid");
        assert_eq!(update.capacity, Some(0));
        assert_eq!((update.code, update.title), (None, None));
    }

    #[test]
    fn a_star_changes_every_updatable_field() {
        let sent = CourseFields {
            id: 1,
            code: "cs1",
            title: "Intro",
            capacity: 5,
            etag: "",
        };
        let update = CourseUpdate::parse(sent, &paths(&["*"])).expect("valid");
        assert_eq!(update.code.as_deref(), Some("CS1"));
        assert_eq!(update.title_folded.as_deref(), Some("intro"));
        assert_eq!(update.capacity, Some(5));
    }

    #[test]
    fn bad_masks_name_update_mask() {
        let sent = StudentFields {
            id: 1,
            name: "Ada",
            ..Default::default()
        };
        for mask in [
            &["id"][..],
            &["etag"],
            &["create_time"],
            &["nickname"],
            &["name", "name"],
            &["*", "name"],
            &["name.first"],
        ] {
            let found = violations(StudentUpdate::parse(sent, &paths(mask)).expect_err("invalid"));
            assert!(
                found.iter().any(|(field, _)| field == "update_mask"),
                "{mask:?}: {found:?}"
            );
        }
        let nothing = StudentFields {
            id: 1,
            ..Default::default()
        };
        let found = violations(StudentUpdate::parse(nothing, &[]).expect_err("nothing to change"));
        assert_eq!(found[0].0, "update_mask");
    }

    #[test]
    fn every_invalid_field_of_an_update_is_reported_at_once() {
        let sent = CourseFields {
            id: 0,
            code: "",
            title: " ",
            capacity: -1,
            etag: "nonsense",
        };
        let found = violations(CourseUpdate::parse(sent, &paths(&["*"])).expect_err("invalid"));
        let fields: Vec<&str> = found.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            fields,
            [
                "course.id",
                "course.etag",
                "course.code",
                "course.title",
                "course.capacity"
            ]
        );
    }
}
