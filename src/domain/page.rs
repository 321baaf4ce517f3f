//! Keyset pagination. A page token carries the last key of the previous page, so every page is an
//! index range scan whose cost does not depend on how deep it is. Tokens are opaque to clients
//! and bound to the listing they came from: a token that this service did not issue for the same
//! listing is rejected instead of silently returning another listing's rows.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};

use crate::error::FieldViolation;

const DEFAULT_PAGE_SIZE: u32 = 50;
const MAX_PAGE_SIZE: u32 = 1000;
const TOKEN_VERSION: u8 = 1;
const TOKEN_BYTES: usize = 17;
/// Tokens are 23 characters; anything much longer is not ours and is not worth decoding.
const MAX_TOKEN_CHARS: usize = 64;
/// Mixed into the checksum so that a token is not just a base64 id anyone can produce by
/// accident. It is not a secret: tokens only let a client resume a listing it could read anyway.
const TOKEN_DOMAIN: &[u8] = b"school.v1 page token";

/// What is being listed; a token is only valid for the listing that issued it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listing<'a> {
    Students,
    /// The courses of one student.
    CoursesOf(i64),
    /// The students of one course.
    StudentsIn(i64),
    /// A catalogue search with this (trimmed) query text.
    Search(&'a str),
}

impl Listing<'_> {
    fn fingerprint(&self, payload: &[u8]) -> u64 {
        let (tag, key): (u8, &[u8]) = match self {
            Listing::Students => (1, &[]),
            Listing::CoursesOf(id) => (2, &id.to_be_bytes()),
            Listing::StudentsIn(id) => (3, &id.to_be_bytes()),
            Listing::Search(query) => (4, query.as_bytes()),
        };
        fnv1a([TOKEN_DOMAIN, &[tag], key, payload])
    }

    /// The token for the page after the row whose key is `last_key`.
    fn token_after(&self, last_key: i64) -> String {
        let mut bytes = [0u8; TOKEN_BYTES];
        bytes[0] = TOKEN_VERSION;
        bytes[1..9].copy_from_slice(&last_key.to_be_bytes());
        let check = self.fingerprint(&bytes[..9]);
        bytes[9..].copy_from_slice(&check.to_be_bytes());
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// The last key a token carries, if this listing issued it.
    fn key_in(&self, token: &str) -> Option<i64> {
        if token.len() > MAX_TOKEN_CHARS {
            return None;
        }
        let bytes: [u8; TOKEN_BYTES] = URL_SAFE_NO_PAD.decode(token).ok()?.try_into().ok()?;
        let (payload, check) = bytes.split_at(9);
        let key = i64::from_be_bytes(payload[1..].try_into().ok()?);
        let genuine = payload[0] == TOKEN_VERSION
            && check == self.fingerprint(payload).to_be_bytes()
            && key > 0;
        genuine.then_some(key)
    }
}

/// FNV-1a, 64-bit: stable across builds and platforms, so every replica accepts every other
/// replica's tokens.
fn fnv1a<const N: usize>(parts: [&[u8]; N]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in parts.iter().flat_map(|part| part.iter()) {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// Which page a list request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRequest {
    /// Rows per page, 1..=1000.
    pub size: u32,
    /// Return rows whose key is greater than this; 0 for the first page.
    pub after: i64,
}

impl Default for PageRequest {
    fn default() -> Self {
        PageRequest {
            size: DEFAULT_PAGE_SIZE,
            after: 0,
        }
    }
}

impl PageRequest {
    /// Checks `page_size` and `page_token`, reporting each bad field separately.
    pub(crate) fn parse(
        page_size: i32,
        page_token: &str,
        listing: Listing<'_>,
    ) -> (Result<u32, FieldViolation>, Result<i64, FieldViolation>) {
        let size = match u32::try_from(page_size) {
            Ok(0) => Ok(DEFAULT_PAGE_SIZE),
            Ok(size) => Ok(size.min(MAX_PAGE_SIZE)),
            Err(_) => Err(FieldViolation::new(
                "page_size",
                format!("must not be negative, got {page_size}"),
            )),
        };
        let after = if page_token.is_empty() {
            Ok(0)
        } else {
            listing.key_in(page_token).ok_or_else(|| {
                FieldViolation::new(
                    "page_token",
                    "is not a token this service issued for this request; \
                     pass the next_page_token of the previous page with the same parameters",
                )
            })
        };
        (size, after)
    }

    /// How many rows to fetch: one more than the page, to learn whether another page follows.
    pub fn fetch_limit(&self) -> i64 {
        i64::from(self.size) + 1
    }
}

/// One page of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Empty on the last page.
    pub next_page_token: String,
}

impl<T> Page<T> {
    /// Builds a page from up to `request.fetch_limit()` rows ordered by `key`.
    pub fn from_rows(
        mut rows: Vec<T>,
        request: &PageRequest,
        listing: Listing<'_>,
        key: impl Fn(&T) -> i64,
    ) -> Self {
        let size = request.size as usize;
        let next_page_token = if rows.len() > size {
            rows.truncate(size);
            rows.last()
                .map(|row| listing.token_after(key(row)))
                .unwrap_or_default()
        } else {
            String::new()
        };
        Page {
            items: rows,
            next_page_token,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_round_trips_within_its_listing_only() {
        let token = Listing::CoursesOf(7).token_after(42);
        assert_eq!(Listing::CoursesOf(7).key_in(&token), Some(42));
        assert_eq!(Listing::CoursesOf(8).key_in(&token), None);
        assert_eq!(Listing::StudentsIn(7).key_in(&token), None);
    }

    #[test]
    fn forged_or_damaged_tokens_are_rejected() {
        let token = Listing::Students.token_after(42);
        let mut damaged = token.clone().into_bytes();
        damaged[3] = if damaged[3] == b'A' { b'B' } else { b'A' };
        let damaged = String::from_utf8(damaged).expect("ascii");
        for forged in [damaged.as_str(), "", "abc", "NDI", &"A".repeat(1000), "!!!"] {
            assert_eq!(
                Listing::Students.key_in(forged),
                None,
                "{forged:?} accepted"
            );
        }
    }

    #[test]
    fn page_sizes_default_and_clamp() {
        let size = |n| PageRequest::parse(n, "", Listing::Students).0;
        assert_eq!(size(0), Ok(50));
        assert_eq!(size(7), Ok(7));
        assert_eq!(size(5000), Ok(1000));
        assert!(size(-1).is_err());
    }

    #[test]
    fn the_last_page_has_no_token() {
        let request = PageRequest { size: 2, after: 0 };
        let full = Page::from_rows(vec![1, 2, 3], &request, Listing::Students, |k| *k);
        assert_eq!(full.items, [1, 2]);
        assert_eq!(Listing::Students.key_in(&full.next_page_token), Some(2));
        let last = Page::from_rows(vec![3], &request, Listing::Students, |k| *k);
        assert_eq!(last.next_page_token, "");
    }
}
