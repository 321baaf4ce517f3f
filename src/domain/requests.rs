//! Validation of incoming requests. Each parser checks every field and reports all violations at
//! once, so a client fixes its request in one round trip.

use super::{Listing, PageRequest, text};
use crate::error::{Error, FieldViolation, Result};

const MAX_NAME_CHARS: usize = 200;
const MAX_TITLE_CHARS: usize = 200;
const MAX_CODE_CHARS: usize = 32;
const MAX_QUERY_CHARS: usize = 200;
const MAX_EMAIL_BYTES: usize = 254;
const MAX_EMAIL_LOCAL_BYTES: usize = 64;

/// Collects field violations while a request is parsed.
#[derive(Default)]
pub(crate) struct Checks(Vec<FieldViolation>);

impl Checks {
    /// The parsed value, or a placeholder when it is invalid (the violation is kept and
    /// `finish` will fail, so the placeholder is never used).
    pub(crate) fn take<T: Default>(&mut self, parsed: Result<T, FieldViolation>) -> T {
        parsed.unwrap_or_else(|violation| {
            self.0.push(violation);
            T::default()
        })
    }

    fn take_page(
        &mut self,
        (size, after): (Result<u32, FieldViolation>, Result<i64, FieldViolation>),
    ) -> PageRequest {
        PageRequest {
            size: self.take(size),
            after: self.take(after),
        }
    }

    pub(crate) fn finish<T>(self, value: T) -> Result<T> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(Error::InvalidArgument(self.0))
        }
    }
}

/// A resource id: ids are assigned by the database and always positive.
pub(crate) fn parse_id(field: &'static str, id: i64) -> Result<i64, FieldViolation> {
    if id > 0 {
        Ok(id)
    } else {
        Err(FieldViolation::new(
            field,
            format!("must be a positive id, got {id}"),
        ))
    }
}

/// A single id as a whole request (Get / Delete).
pub fn parse_single_id(field: &'static str, id: i64) -> Result<i64> {
    let mut checks = Checks::default();
    let id = checks.take(parse_id(field, id));
    checks.finish(id)
}

/// The (student, course) pair of AssignCourse and UnassignCourse.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StudentCourse {
    pub student_id: i64,
    pub course_id: i64,
}

pub fn parse_student_course(student_id: i64, course_id: i64) -> Result<StudentCourse> {
    let mut checks = Checks::default();
    let pair = StudentCourse {
        student_id: checks.take(parse_id("student_id", student_id)),
        course_id: checks.take(parse_id("course_id", course_id)),
    };
    checks.finish(pair)
}

/// A valid CreateStudent request, in the form it is stored (see `text` for the Unicode rules).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewStudent {
    /// NFC.
    pub name: String,
    /// NFKC and case-folded (lower case).
    pub email: String,
}

impl NewStudent {
    pub fn parse(name: &str, email: &str) -> Result<Self> {
        let mut checks = Checks::default();
        let student = NewStudent {
            name: checks.take(parse_name("name", name)),
            email: checks.take(parse_email("email", email)),
        };
        checks.finish(student)
    }
}

/// A valid CreateCourse request, in the form it is stored (see `text` for the Unicode rules).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewCourse {
    /// NFKC and upper-cased.
    pub code: String,
    /// NFC.
    pub title: String,
    /// The title case-folded, for case-insensitive search.
    pub title_folded: String,
    pub capacity: i32,
}

impl NewCourse {
    pub fn parse(code: &str, title: &str, capacity: i32) -> Result<Self> {
        let mut checks = Checks::default();
        let code = checks.take(parse_code("code", code));
        let title = checks.take(parse_title("title", title));
        let capacity = checks.take(parse_capacity("capacity", capacity));
        checks.finish(NewCourse {
            code,
            title_folded: text::fold(&title),
            title,
            capacity,
        })
    }
}

/// A SearchCourses query, folded as codes and titles are and escaped for `LIKE ... ESCAPE '\'`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SearchQuery {
    /// The trimmed query as the client sent it; empty means the whole catalogue.
    pub text: String,
    /// `CODE%`: normalised as codes are, LIKE-escaped, matches codes that start with the query.
    pub code_prefix: String,
    /// `%title%`: case-folded, LIKE-escaped, matches titles that contain the query.
    pub title_contains: String,
}

impl SearchQuery {
    pub(crate) fn parse(query: &str) -> Result<Self, FieldViolation> {
        let text = query.trim();
        if text.chars().count() > MAX_QUERY_CHARS {
            return Err(FieldViolation::new(
                "query",
                format!("must be at most {MAX_QUERY_CHARS} characters"),
            ));
        }
        if text.chars().any(char::is_control) {
            return Err(FieldViolation::new(
                "query",
                "must not contain control characters",
            ));
        }
        Ok(SearchQuery {
            text: text.to_owned(),
            code_prefix: format!("{}%", escape_like(&text::code(text))),
            title_contains: format!("%{}%", escape_like(&text::fold(text))),
        })
    }

    pub fn is_everything(&self) -> bool {
        self.text.is_empty()
    }
}

/// ListStudents: just a page of the whole table.
pub fn parse_list_students(page_size: i32, page_token: &str) -> Result<PageRequest> {
    let mut checks = Checks::default();
    let page = checks.take_page(PageRequest::parse(page_size, page_token, Listing::Students));
    checks.finish(page)
}

/// A page of what belongs to one resource (ListCourses, ListEnrolledStudents): the owner's id,
/// and the page of the listing `listing(id)`.
pub fn parse_list_of(
    field: &'static str,
    id: i64,
    page_size: i32,
    page_token: &str,
    listing: fn(i64) -> Listing<'static>,
) -> Result<(i64, PageRequest)> {
    let mut checks = Checks::default();
    let id = checks.take(parse_id(field, id));
    let page = checks.take_page(PageRequest::parse(page_size, page_token, listing(id)));
    checks.finish((id, page))
}

/// SearchCourses: the query and the page of its results.
pub fn parse_search(
    query: &str,
    page_size: i32,
    page_token: &str,
) -> Result<(SearchQuery, PageRequest)> {
    let mut checks = Checks::default();
    let query = checks.take(SearchQuery::parse(query));
    let listing = Listing::Search(&query.text);
    let page = checks.take_page(PageRequest::parse(page_size, page_token, listing));
    checks.finish((query, page))
}

fn escape_like(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '\\' | '%' | '_') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

pub(super) fn parse_name(field: &'static str, sent: &str) -> Result<String, FieldViolation> {
    parse_text(field, sent, MAX_NAME_CHARS)
}

pub(super) fn parse_title(field: &'static str, sent: &str) -> Result<String, FieldViolation> {
    parse_text(field, sent, MAX_TITLE_CHARS)
}

/// Free text such as a name or title: trimmed, in NFC, 1..=max characters, something visible,
/// no control characters. Anything else, quotes and SQL included, is kept verbatim.
fn parse_text(field: &'static str, sent: &str, max: usize) -> Result<String, FieldViolation> {
    refuse_surely_too_long(field, sent.trim(), max)?;
    let text = text::display(sent.trim());
    let chars = text.chars().count();
    if chars == 0 {
        return Err(FieldViolation::new(field, "must not be empty"));
    }
    if !text::is_visible(&text) {
        return Err(FieldViolation::new(
            field,
            "must contain a visible character, not only invisible ones such as U+200B",
        ));
    }
    if chars > max {
        return Err(FieldViolation::new(
            field,
            format!("must be at most {max} characters, got {chars}"),
        ));
    }
    if text.chars().any(char::is_control) {
        return Err(FieldViolation::new(
            field,
            "must not contain control characters",
        ));
    }
    Ok(text)
}

/// Normalisation takes time in proportion to the text (a megabyte name, under the message limit,
/// kept a call busy for seconds with the folding repeated until stable), and can shorten text only
/// by composing: one character from at most four (U+1F8F from Α and three marks). Case changes
/// never shorten it. So text of more than four times `max` characters as sent is longer than
/// `max` once stored, and is refused before it is normalised.
fn refuse_surely_too_long(
    field: &'static str,
    sent: &str,
    max: usize,
) -> Result<(), FieldViolation> {
    let chars = sent.chars().count();
    if chars > 4 * max {
        return Err(FieldViolation::new(
            field,
            format!("must be at most {max} characters, got {chars}"),
        ));
    }
    Ok(())
}

/// A course code: trimmed, normalised and upper-cased (see `text`), then 1 to 32 characters
/// of that stored form, none of them invisible.
pub(super) fn parse_code(field: &'static str, sent: &str) -> Result<String, FieldViolation> {
    refuse_surely_too_long(field, sent.trim(), MAX_CODE_CHARS)?;
    let code = text::code(sent.trim());
    let chars = code.chars().count();
    if chars == 0 || chars > MAX_CODE_CHARS {
        let upper_cased = if chars > MAX_CODE_CHARS && sent.trim().chars().count() <= MAX_CODE_CHARS
        {
            " once normalised and upper-cased"
        } else {
            ""
        };
        return Err(FieldViolation::new(
            field,
            format!("must be 1 to {MAX_CODE_CHARS} characters{upper_cased}, got {chars}"),
        ));
    }
    if code.chars().any(text::is_invisible) {
        return Err(FieldViolation::new(
            field,
            "must not contain whitespace, control or invisible characters",
        ));
    }
    Ok(code)
}

pub(super) fn parse_capacity(field: &'static str, capacity: i32) -> Result<i32, FieldViolation> {
    if capacity >= 0 {
        Ok(capacity)
    } else {
        Err(FieldViolation::new(
            field,
            format!("must be 0 (unlimited) or more, got {capacity}"),
        ))
    }
}

/// A plausible address: `local@domain.tld`, nothing invisible, within the lengths of RFC 5321,
/// all checked on the stored form (normalised and case-folded, see `text`).
pub(super) fn parse_email(field: &'static str, sent: &str) -> Result<String, FieldViolation> {
    // A stored character takes at least one byte.
    refuse_surely_too_long(field, sent.trim(), MAX_EMAIL_BYTES)?;
    let email = text::fold(sent.trim());
    let invalid = |why: &str| Err(FieldViolation::new(field, why.to_owned()));
    if email.is_empty() {
        return invalid("must not be empty");
    }
    if email.len() > MAX_EMAIL_BYTES {
        return invalid("must be at most 254 bytes once normalised and lower-cased");
    }
    if email.chars().any(text::is_invisible) {
        return invalid("must not contain whitespace, control or invisible characters");
    }
    let Some((local, domain)) = email.split_once('@') else {
        return invalid("must look like name@example.com");
    };
    let domain_ok = !domain.contains('@')
        && domain.contains('.')
        && domain.split('.').all(|label| !label.is_empty());
    if local.len() > MAX_EMAIL_LOCAL_BYTES {
        return invalid("must have at most 64 bytes before the @ once normalised and lower-cased");
    }
    if local.is_empty() || !domain_ok {
        return invalid("must look like name@example.com");
    }
    Ok(email)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(err: Error) -> Vec<String> {
        match err {
            Error::InvalidArgument(violations) => {
                violations.iter().map(|v| v.field.to_string()).collect()
            }
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    #[test]
    fn text_too_long_even_once_composed_is_refused_before_normalising() {
        let megabyte = "a".repeat(1_000_000);
        for refused in [
            parse_name("name", &megabyte),
            parse_code("code", &megabyte),
            parse_email("email", &megabyte),
        ] {
            let violation = refused.expect_err("too long");
            assert!(
                violation.description.ends_with("got 1000000"),
                "{}",
                violation.description
            );
        }
        // Four characters as sent compose to one stored (U+1F8F): 800 sent, 200 stored.
        let composing = "\u{391}\u{314}\u{342}\u{345}".repeat(MAX_NAME_CHARS);
        let name = parse_name("name", &composing).expect("200 characters once composed");
        assert_eq!(name.chars().count(), MAX_NAME_CHARS);
    }

    #[test]
    fn a_student_is_trimmed_and_its_email_lower_cased() {
        let student = NewStudent::parse("  Ada Lovelace ", " Ada@Example.COM").expect("valid");
        assert_eq!(student.name, "Ada Lovelace");
        assert_eq!(student.email, "ada@example.com");
    }

    #[test]
    fn every_invalid_field_is_reported_at_once() {
        let err = NewStudent::parse("   ", "not-an-email").expect_err("invalid");
        assert_eq!(fields(err), ["name", "email"]);
        let err = NewCourse::parse("", &"x".repeat(201), -1).expect_err("invalid");
        assert_eq!(fields(err), ["code", "title", "capacity"]);
    }

    #[test]
    fn implausible_emails_are_rejected() {
        for email in [
            "a@b",
            "@example.com",
            "a@@example.com",
            "a b@example.com",
            "a@example.",
        ] {
            assert!(NewStudent::parse("A", email).is_err(), "{email} accepted");
        }
    }

    #[test]
    fn names_keep_quotes_and_unicode_verbatim() {
        let name = "Robert'); DROP TABLE students;-- 學生 🎓";
        assert_eq!(
            NewStudent::parse(name, "r@example.com")
                .expect("valid")
                .name,
            name
        );
    }

    #[test]
    fn search_queries_escape_like_wildcards() {
        let query = SearchQuery::parse(" 50%_off\\ ").expect("valid");
        assert_eq!(query.code_prefix, "50\\%\\_OFF\\\\%");
        assert_eq!(query.title_contains, "%50\\%\\_off\\\\%");
    }
}
