//! Safe retries of creates (AIP-155): the optional `request_id` a client sends again with every
//! retry of one logical request, so that the service can answer the retry with the first
//! answer instead of a conflict.

use std::time::Duration;

use crate::error::{Error, FieldViolation, Result};

/// How long a request_id is remembered after the call that used it (at least this long; expired
/// ids are deleted in the background).
pub const REQUEST_ID_RETENTION: Duration = Duration::from_secs(24 * 3600);

/// A request to be done at most once: its request_id (a UUID, lower-cased), the method, and a
/// digest of the request without the id, to tell a retry from a reuse of the id for another
/// request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Once {
    pub request_id: String,
    /// `package.Service/Method`.
    pub method: &'static str,
    /// Hex SHA-256 of the request as sent, its request_id left out.
    pub digest: String,
}

/// A parsed request and its request_id (`None` when none was sent), every violation of either
/// reported together.
pub fn with_request_id<T>(parsed: Result<T>, request_id: &str) -> Result<(T, Option<String>)> {
    match (parsed, parse_request_id(request_id)) {
        (Ok(value), Ok(id)) => Ok((value, id)),
        (Err(Error::InvalidArgument(mut violations)), Err(violation)) => {
            violations.push(violation);
            Err(Error::InvalidArgument(violations))
        }
        (Err(err), _) => Err(err),
        (Ok(_), Err(violation)) => Err(Error::InvalidArgument(vec![violation])),
    }
}

/// A UUID in its canonical text form, 8-4-4-4-12 hex digits in either case; empty is none.
fn parse_request_id(text: &str) -> Result<Option<String>, FieldViolation> {
    if text.is_empty() {
        return Ok(None);
    }
    let groups: Vec<&str> = text.split('-').collect();
    let lengths: Vec<usize> = groups.iter().map(|group| group.len()).collect();
    let hex = groups
        .iter()
        .all(|group| group.bytes().all(|b| b.is_ascii_hexdigit()));
    if lengths != [8, 4, 4, 4, 12] || !hex {
        return Err(FieldViolation::new(
            "request_id",
            "must be a UUID such as 123e4567-e89b-12d3-a456-426614174000 (or empty)",
        ));
    }
    Ok(Some(text.to_ascii_lowercase()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::tests::violations;

    #[test]
    fn a_request_id_is_a_uuid_in_either_case_or_nothing() {
        let id = |text: &str| with_request_id(Ok(()), text).map(|(_, id)| id);
        assert_eq!(id("").expect("none"), None);
        assert_eq!(
            id("123E4567-E89B-12D3-A456-426614174000").expect("a UUID"),
            Some("123e4567-e89b-12d3-a456-426614174000".into())
        );
        for bad in [
            "123e4567e89b12d3a456426614174000",
            "123e4567-e89b-12d3-a456-42661417400",
            "123e4567-e89b-12d3-a456-42661417400g",
            "{123e4567-e89b-12d3-a456-426614174000}",
            " 123e4567-e89b-12d3-a456-426614174000",
            "retry-1",
        ] {
            let found = violations(id(bad).expect_err(bad));
            assert_eq!(found.len(), 1, "{bad}");
            assert_eq!(found[0].0, "request_id");
        }
    }

    #[test]
    fn its_violation_joins_those_of_the_request() {
        let invalid = Err(Error::InvalidArgument(vec![FieldViolation::new(
            "name", "empty",
        )]));
        let found = violations(with_request_id::<()>(invalid, "nope").expect_err("invalid"));
        let fields: Vec<&str> = found.iter().map(|(field, _)| field.as_str()).collect();
        assert_eq!(fields, ["name", "request_id"]);
    }
}
