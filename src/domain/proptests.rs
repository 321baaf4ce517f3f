//! Property tests of request validation over arbitrary input: it never panics, and every refusal
//! is INVALID_ARGUMENT naming only fields of the request, at least one of them. And of the text
//! rules: what is stored is a fixed point of the folding that made it.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use proptest::prelude::*;

use super::{NewCourse, NewStudent, parse_list_of, parse_list_students, parse_search, text};
use crate::{
    domain::{Listing, parse_student_course},
    error::Error,
};

/// Any Unicode text, control characters included, up to `max` characters.
fn text(max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(any::<char>(), 0..max).prop_map(|chars| chars.into_iter().collect())
}

/// Characters whose case mappings are not round trips, or that normalisation changes, or that
/// compose with a neighbour: where a fold that is not a fixed point would show.
#[rustfmt::skip]
const UNSTABLE: &[char] = &[
    '\u{1E9E}',                              // ẞ: its own upper case, lower-cases to ß
    'ß', 'ſ', 'ﬅ', 'ﬃ', 'ŉ', 'ǰ', 'ΐ', 'ẛ',  // grow or change when case changes
    '\u{212A}', '\u{2126}',                  // KELVIN SIGN, OHM SIGN
    'İ', 'ı', 'i', 'I',                      // Turkish dotted and dotless i
    'ς', 'σ', 'Σ', 'ϐ', 'ϑ', 'ϕ', 'ϰ', 'ϱ', 'ϵ', 'ᾳ', 'ᾼ', // Greek variants, iota subscript
    '\u{345}',                               // COMBINING GREEK YPOGEGRAMMENI: upper-cases to Ι
    'Ꭰ', 'ꭰ', 'Ᏸ', 'ᏸ',                      // Cherokee: Unicode folds it to upper case
    'ǅ', 'ǈ', 'ǋ', 'ǲ',                      // title-case digraphs
    's', 'S', 'e', '\u{301}', '\u{307}', '\u{323}', '@', '.', // what they compose with
];

/// Text mostly of `UNSTABLE` characters, with any others among them.
fn unstable_text(max: usize) -> impl Strategy<Value = String> {
    let one = prop_oneof![4 => prop::sample::select(UNSTABLE), 1 => any::<char>()];
    prop::collection::vec(one, 0..max).prop_map(|chars| chars.into_iter().collect())
}

/// `sent` with each character written another way that folds the same (its upper, lower or
/// folded case), chosen by `ways`.
fn spelled_otherwise(sent: &str, ways: &[u8]) -> String {
    sent.chars()
        .zip(ways.iter().cycle())
        .map(|(c, way)| match way % 4 {
            0 => c.to_string(),
            1 => c.to_uppercase().collect(),
            2 => c.to_lowercase().collect(),
            _ => text::fold(&c.to_string()),
        })
        .collect()
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

    #[test]
    fn folding_a_stored_form_gives_it_back(sent in unstable_text(40)) {
        let folded = text::fold(&sent);
        prop_assert_eq!(text::fold(&folded), folded.clone());
        let code = text::code(&sent);
        prop_assert_eq!(text::code(&code), code.clone());
        // A code is its fold upper-cased, nothing lost.
        prop_assert_eq!(text::fold(&code), folded);
    }

    #[test]
    fn spellings_that_fold_alike_have_one_code(sent in unstable_text(40), ways in prop::collection::vec(any::<u8>(), 1..8)) {
        let other = spelled_otherwise(&sent, &ways);
        if text::fold(&other) == text::fold(&sent) {
            prop_assert_eq!(text::code(&other), text::code(&sent));
        }
        prop_assert_eq!(text::code(&text::fold(&sent)), text::code(&sent));
    }

    #[test]
    fn what_is_stored_parses_to_itself(local in unstable_text(20), code in unstable_text(20)) {
        // A client that sends back the student or course it read changes nothing.
        if let Ok(student) = NewStudent::parse("A", &format!("{local}@x.org")) {
            let again = NewStudent::parse("A", &student.email).expect("a stored address is valid");
            prop_assert_eq!(again.email, student.email);
        }
        if let Ok(course) = NewCourse::parse(&code, "T", 0) {
            let again = NewCourse::parse(&course.code, "T", 0).expect("a stored code is valid");
            prop_assert_eq!(again.code, course.code);
        }
    }
}
