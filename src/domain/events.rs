//! What a WatchEnrollmentEvents request asks for.

use super::requests::Checks;
use crate::error::{FieldViolation, Result};

/// Which events a watcher wants: 0 means any.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EventFilter {
    pub student_id: i64,
    pub course_id: i64,
}

/// The cursor (events after it are wanted; 0 for the oldest kept) and the filter.
pub fn parse_watch(after: i64, student_id: i64, course_id: i64) -> Result<(i64, EventFilter)> {
    let mut checks = Checks::default();
    let mut not_negative = |field: &'static str, value: i64, meaning: &str| {
        let checked = if value < 0 {
            Err(FieldViolation::new(
                field,
                format!("must be 0 ({meaning}) or more, got {value}"),
            ))
        } else {
            Ok(value)
        };
        checks.take(checked)
    };
    let after = not_negative("after_sequence", after, "from the oldest event kept");
    let filter = EventFilter {
        student_id: not_negative("student_id", student_id, "any student"),
        course_id: not_negative("course_id", course_id, "any course"),
    };
    checks.finish((after, filter))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

    #[test]
    fn negative_numbers_are_each_named() {
        let Err(Error::InvalidArgument(violations)) = parse_watch(-1, -2, -3) else {
            panic!("negative numbers accepted");
        };
        let fields: Vec<_> = violations.iter().map(|v| v.field.as_ref()).collect();
        assert_eq!(fields, ["after_sequence", "student_id", "course_id"]);
        assert_eq!(
            parse_watch(5, 0, 7).expect("valid"),
            (
                5,
                EventFilter {
                    student_id: 0,
                    course_id: 7
                }
            )
        );
    }
}
