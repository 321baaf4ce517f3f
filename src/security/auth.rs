//! Token authentication: static bearer tokens read from a file at start, each with a name that
//! logs show instead of the token.
//!
//! Tokens are kept only as SHA-256 digests and a presented token is compared, in constant time,
//! with every digest: the time a check takes depends neither on how much of a token was right
//! nor on which entry (if any) matched, so timing reveals nothing about the secrets.

use std::{
    fmt,
    path::{Path, PathBuf},
    sync::Arc,
};

use http::HeaderMap;
use sha2::{Digest, Sha256};
use subtle::{Choice, ConditionallySelectable, ConstantTimeEq};

use crate::error::AuthFailure;

/// Shorter tokens are refused at start: a static shared secret must not be guessable.
pub const MIN_TOKEN_LENGTH: usize = 16;

/// The tokens the server accepts, and whose they are.
pub struct Tokens {
    entries: Vec<Entry>,
}

struct Entry {
    name: Arc<str>,
    digest: [u8; 32],
}

/// Who made an authenticated call: the NAME of its token. Handlers find it in the request's
/// extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller(Arc<str>);

impl Caller {
    pub fn new(name: Arc<str>) -> Caller {
        Caller(name)
    }

    pub fn name(&self) -> &str {
        &self.0
    }

    pub fn shared_name(&self) -> &Arc<str> {
        &self.0
    }
}

/// What is wrong with one line of the tokens file. Never includes the line itself, which may
/// hold a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineProblem {
    #[error("expected `NAME TOKEN` (two fields separated by spaces), found {0} field(s)")]
    Fields(usize),
    #[error("the {0} must be printable ASCII")]
    NotPrintable(&'static str),
    #[error("the token is shorter than {MIN_TOKEN_LENGTH} characters")]
    TooShort,
    #[error("the same token is already on line {0}; each token must name one caller")]
    Duplicate(usize),
}

#[derive(Debug, thiserror::Error)]
pub enum TokensError {
    #[error("cannot read the tokens file (--auth-tokens-file, AUTH_TOKENS_FILE) {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("tokens file {}, line {line}: {problem}", path.display())]
    Line {
        path: PathBuf,
        line: usize,
        problem: LineProblem,
    },
    #[error("tokens file {} holds no tokens, so every call would be refused", path.display())]
    Empty { path: PathBuf },
}

impl Tokens {
    /// Reads a tokens file: one `NAME TOKEN` pair per line; blank lines and lines starting with
    /// `#` are ignored.
    pub fn load(path: &Path) -> Result<Tokens, TokensError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokensError::Read {
            path: path.into(),
            source,
        })?;
        Tokens::parse(&text).map_err(|failure| match failure {
            Some((line, problem)) => TokensError::Line {
                path: path.into(),
                line,
                problem,
            },
            None => TokensError::Empty { path: path.into() },
        })
    }

    /// The tokens of a file's text; the error is the first bad line (numbered from 1), or
    /// `None` when the text holds no token at all.
    fn parse(text: &str) -> Result<Tokens, Option<(usize, LineProblem)>> {
        let mut entries = Vec::new();
        let mut lines_of = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let number = index + 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [name, token] = fields[..] else {
                return Err(Some((number, LineProblem::Fields(fields.len()))));
            };
            let printable = |text: &str| text.bytes().all(|b| b.is_ascii_graphic());
            if !printable(name) {
                return Err(Some((number, LineProblem::NotPrintable("name"))));
            }
            // It travels in an HTTP header, where only visible ASCII is safe.
            if !printable(token) {
                return Err(Some((number, LineProblem::NotPrintable("token"))));
            }
            if token.len() < MIN_TOKEN_LENGTH {
                return Err(Some((number, LineProblem::TooShort)));
            }
            let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
            if let Some(earlier) = entries.iter().position(|e: &Entry| e.digest == digest) {
                return Err(Some((number, LineProblem::Duplicate(lines_of[earlier]))));
            }
            entries.push(Entry {
                name: name.into(),
                digest,
            });
            lines_of.push(number);
        }
        if entries.is_empty() {
            return Err(None);
        }
        Ok(Tokens { entries })
    }

    /// The NAMEs of the tokens.
    pub fn names(&self) -> Vec<&str> {
        self.entries
            .iter()
            .map(|entry| entry.name.as_ref())
            .collect()
    }

    /// How many tokens are accepted.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The caller whose token the call's `authorization: Bearer <token>` metadata carries.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Caller, AuthFailure> {
        let mut values = headers.get_all(http::header::AUTHORIZATION).iter();
        let value = values.next().ok_or(AuthFailure::Missing)?;
        if values.next().is_some() {
            return Err(AuthFailure::Malformed);
        }
        let value = value.to_str().map_err(|_| AuthFailure::Malformed)?;
        let token = bearer_token(value).ok_or(AuthFailure::Malformed)?;
        self.identify(token).ok_or(AuthFailure::Unrecognised)
    }

    /// Compares the token with every entry, always all of them, without branching on secrets.
    fn identify(&self, token: &str) -> Option<Caller> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = Choice::from(0);
        let mut index = 0u64;
        for (i, entry) in (0u64..).zip(&self.entries) {
            let matches = entry.digest.ct_eq(&digest);
            index.conditional_assign(&i, matches);
            found |= matches;
        }
        if !bool::from(found) {
            return None;
        }
        let entry = usize::try_from(index)
            .ok()
            .and_then(|i| self.entries.get(i))?;
        Some(Caller(entry.name.clone()))
    }
}

/// `Bearer <token>`, the scheme in any case (RFC 7235).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim_start();
    let well_formed = scheme.eq_ignore_ascii_case("bearer")
        && !token.is_empty()
        && !token.contains(char::is_whitespace);
    well_formed.then_some(token)
}

/// Names only: the digests stay out of logs and debug output too.
impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.entries.iter().map(|e| &e.name))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADA: &str = "ada-0123456789abcdef";
    const CI: &str = "ci-0123456789abcdef";

    fn tokens() -> Tokens {
        Tokens::parse(&format!("# callers\n\nada {ADA}\n  ci\t{CI}  \n")).expect("valid")
    }

    fn metadata(value: &str) -> HeaderMap {
        let mut metadata = HeaderMap::new();
        metadata.insert("authorization", value.parse().expect("ascii"));
        metadata
    }

    #[test]
    fn each_token_names_its_caller() {
        let tokens = tokens();
        assert_eq!(tokens.len(), 2);
        let name = |value: &str| {
            tokens
                .authenticate(&metadata(value))
                .map(|c| c.0.to_string())
        };
        assert_eq!(name(&format!("Bearer {ADA}")).as_deref(), Ok("ada"));
        assert_eq!(name(&format!("bearer  {CI}")).as_deref(), Ok("ci"));
    }

    #[test]
    fn missing_malformed_and_unknown_tokens_are_told_apart() {
        let tokens = tokens();
        assert_eq!(
            tokens.authenticate(&HeaderMap::new()),
            Err(AuthFailure::Missing)
        );
        for malformed in [
            ADA.to_owned(),
            format!("Basic {ADA}"),
            "Bearer ".into(),
            format!("Bearer {ADA} x"),
        ] {
            assert_eq!(
                tokens.authenticate(&metadata(&malformed)),
                Err(AuthFailure::Malformed),
                "{malformed:?}"
            );
        }
        for wrong in [
            "Bearer ada-0123456789abcdeX",
            "Bearer ada",
            "Bearer ci-0123456789abcdef0",
        ] {
            assert_eq!(
                tokens.authenticate(&metadata(wrong)),
                Err(AuthFailure::Unrecognised),
                "{wrong:?}"
            );
        }
        let mut twice = metadata(&format!("Bearer {ADA}"));
        twice.append(
            "authorization",
            format!("Bearer {CI}").parse().expect("ascii"),
        );
        assert_eq!(tokens.authenticate(&twice), Err(AuthFailure::Malformed));
    }

    #[test]
    fn bad_lines_are_reported_with_their_number() {
        let problem = |text: &str| Tokens::parse(text).err();
        assert_eq!(
            problem(&format!("# ok\nada {ADA}\nci\n")),
            Some(Some((3, LineProblem::Fields(1))))
        );
        assert_eq!(
            problem(&format!("ada {ADA} extra")),
            Some(Some((1, LineProblem::Fields(3))))
        );
        assert_eq!(problem("ada short"), Some(Some((1, LineProblem::TooShort))));
        assert_eq!(
            problem(&format!("ada {ADA}\n\nbob {ADA}")),
            Some(Some((3, LineProblem::Duplicate(1))))
        );
        assert_eq!(
            problem("ada tøken-0123456789abcdef"),
            Some(Some((1, LineProblem::NotPrintable("token"))))
        );
        assert_eq!(problem("# nobody\n\n"), Some(None));
    }

    #[test]
    fn errors_and_debug_output_never_show_a_token() {
        let path = Path::new("tokens.txt");
        let error = TokensError::Line {
            path: path.into(),
            line: 2,
            problem: LineProblem::Fields(3),
        };
        assert_eq!(
            error.to_string(),
            "tokens file tokens.txt, line 2: expected `NAME TOKEN` (two fields separated by spaces), found 3 field(s)"
        );
        let debug = format!("{:?}", tokens());
        assert_eq!(debug, r#"["ada", "ci"]"#);
    }
}
