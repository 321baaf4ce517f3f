//! BatchAssignCourses' request: one student and a set of courses, all checked at once.

use std::collections::HashMap;

use super::requests::{Checks, parse_id};
use crate::error::{FieldViolation, Result};

/// The most courses one BatchAssignCourses may name.
pub const MAX_BATCH_COURSES: usize = 100;

/// A valid BatchAssignCourses: the student and 1 to 100 distinct courses, in request order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchAssign {
    pub student_id: i64,
    pub course_ids: Vec<i64>,
}

impl BatchAssign {
    pub fn parse(student_id: i64, course_ids: &[i64]) -> Result<Self> {
        let mut checks = Checks::default();
        let student_id = checks.take(parse_id("student_id", student_id));
        if course_ids.is_empty() {
            checks.take::<()>(Err(FieldViolation::new(
                "course_ids",
                "must name at least one course",
            )));
        }
        if course_ids.len() > MAX_BATCH_COURSES {
            // Refused on the count alone: checking each id of a request that is refused anyway
            // would make its cost grow with its size (a million ids fit in the message limit).
            checks.take::<()>(Err(FieldViolation::new(
                "course_ids",
                format!(
                    "must name at most {MAX_BATCH_COURSES} courses, got {}",
                    course_ids.len()
                ),
            )));
            return checks.finish(BatchAssign::default());
        }
        let mut first_seen: HashMap<i64, usize> = HashMap::with_capacity(course_ids.len());
        for (index, &id) in course_ids.iter().enumerate() {
            let field = format!("course_ids[{index}]");
            if id <= 0 {
                checks.take::<()>(Err(FieldViolation::new(
                    field,
                    format!("must be a positive id, got {id}"),
                )));
            } else if let Some(first) = first_seen.get(&id) {
                checks.take::<()>(Err(FieldViolation::new(
                    field,
                    format!("repeats course {id}, already at course_ids[{first}]"),
                )));
            } else {
                first_seen.insert(id, index);
            }
        }
        checks.finish(BatchAssign {
            student_id,
            course_ids: course_ids.to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::tests::violations;

    #[test]
    fn batches_report_every_bad_course_id() {
        let found = violations(BatchAssign::parse(0, &[3, 0, 3, -2, 5, 5]).expect_err("invalid"));
        assert_eq!(
            found,
            [
                ("student_id".into(), "must be a positive id, got 0".into()),
                (
                    "course_ids[1]".into(),
                    "must be a positive id, got 0".into()
                ),
                (
                    "course_ids[2]".into(),
                    "repeats course 3, already at course_ids[0]".into()
                ),
                (
                    "course_ids[3]".into(),
                    "must be a positive id, got -2".into()
                ),
                (
                    "course_ids[5]".into(),
                    "repeats course 5, already at course_ids[4]".into()
                ),
            ]
        );
        let too_many: Vec<i64> = (1..=101).collect();
        let found = violations(BatchAssign::parse(1, &too_many).expect_err("too many"));
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].0, "course_ids");
        let found = violations(BatchAssign::parse(1, &[]).expect_err("empty"));
        assert_eq!(found[0].0, "course_ids");
        assert!(BatchAssign::parse(1, &(1..=100).collect::<Vec<_>>()).is_ok());
    }

    #[test]
    fn an_oversized_batch_is_refused_on_its_count_alone() {
        let zeros = vec![0; 1_000_000];
        let found = violations(BatchAssign::parse(0, &zeros).expect_err("too many"));
        assert_eq!(
            found,
            [
                ("student_id".into(), "must be a positive id, got 0".into()),
                (
                    "course_ids".into(),
                    "must name at most 100 courses, got 1000000".into()
                ),
            ]
        );
    }
}
