//! Property tests of request validation over arbitrary input: it never panics, and every refusal
//! is INVALID_ARGUMENT naming only fields of the request, at least one of them.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use proptest::prelude::*;

use super::{NewCourse, NewStudent, parse_list_of, parse_list_students, parse_search};
use crate::{
    domain::{Listing, parse_student_course},
    error::Error,
};

/// Any Unicode text, control characters included, up to `max` characters.
fn text(max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(any::<char>(), 0..max).prop_map(|chars| chars.into_iter().collect())
}

/// Page tokens nobody issued: arbitrary bytes in the token encoding, or arbitrary text.
fn forged_token() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 1..40).prop_map(|bytes| URL_SAFE_NO_PAD.encode(bytes)),
        text(100).prop_filter("non-empty", |t| !t.is_empty()),
    ]
}

/// The fields an error names, checking that it is an InvalidArgument naming at least one.
fn fields<T: std::fmt::Debug>(result: Result<T, Error>) -> Option<Vec<String>> {
    match result {
        Ok(_) => None,
        Err(Error::InvalidArgument(violations)) => {
            assert!(
                !violations.is_empty(),
                "an InvalidArgument names its fields"
            );
            Some(violations.iter().map(|v| v.field.to_string()).collect())
        }
        Err(other) => panic!("validation failed with {other:?}, not InvalidArgument"),
    }
}

proptest! {
    #[test]
    fn new_students_never_panic(name in text(300), email in text(300)) {
        match fields(NewStudent::parse(&name, &email)) {
            None => {
                let student = NewStudent::parse(&name, &email).expect("valid");
                prop_assert!(!student.name.is_empty() && student.name.chars().count() <= 200);
                prop_assert_eq!(student.email.to_lowercase(), student.email);
            }
            Some(named) => prop_assert!(named.iter().all(|f| ["name", "email"].contains(&f.as_str()))),
        }
    }

    #[test]
    fn new_courses_never_panic(code in text(60), title in text(300), capacity in any::<i32>()) {
        if let Some(named) = fields(NewCourse::parse(&code, &title, capacity)) {
            prop_assert!(named.iter().all(|f| ["code", "title", "capacity"].contains(&f.as_str())));
            prop_assert_eq!(capacity < 0, named.iter().any(|f| f == "capacity"));
        }
    }

    #[test]
    fn searches_never_panic(query in text(300), page_size in any::<i32>(), token in forged_token()) {
        let named = fields(parse_search(&query, page_size, &token)).expect("a forged token is refused");
        prop_assert!(named.iter().any(|f| f == "page_token"));
        prop_assert!(named.iter().all(|f| ["query", "page_size", "page_token"].contains(&f.as_str())));
        prop_assert_eq!(page_size < 0, named.iter().any(|f| f == "page_size"));
    }

    #[test]
    fn forged_page_tokens_are_refused(page_size in any::<i32>(), token in forged_token()) {
        let named = fields(parse_list_students(page_size, &token)).expect("a forged token is refused");
        prop_assert!(named.iter().any(|f| f == "page_token"));
        prop_assert_eq!(page_size < 0, named.iter().any(|f| f == "page_size"));
    }

    #[test]
    fn page_sizes_are_clamped_or_refused(page_size in any::<i32>()) {
        match parse_list_students(page_size, "") {
            Ok(page) => prop_assert!(page_size >= 0 && (1..=1000).contains(&page.size)),
            Err(err) => prop_assert_eq!(fields::<()>(Err(err)), Some(vec!["page_size".to_owned()])),
        }
    }

    #[test]
    fn ids_must_be_positive(id in any::<i64>(), other in any::<i64>(), token in forged_token()) {
        let pair = fields(parse_student_course(id, other));
        prop_assert_eq!(pair.is_none(), id > 0 && other > 0);
        let named = fields(parse_list_of("student_id", id, 1, &token, Listing::CoursesOf))
            .expect("a forged token is refused");
        prop_assert_eq!(id <= 0, named.iter().any(|f| f == "student_id"));
    }
}
