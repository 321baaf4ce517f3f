//! The authorization policy (`--authz-policy`): a TOML file of allow rules, each a list of
//! principals and a list of method patterns. What no rule allows is denied.
//!
//! ```toml
//! [[allow]]
//! principals = ["reporting"]
//! methods = ["school.v1.StudentService/List*", "school.v1.*/Get*"]
//! ```
//!
//! A pattern is `package.Service/Method`, where `*` matches any run of characters within the
//! service part or within the method part. Every pattern is resolved, at load, against the
//! methods the service has (read from its own descriptors), so a typo is a refusal to start with
//! the file's line, never a rule that silently allows nothing; the result is one set of allowed
//! methods per principal, and a call's check is two hash lookups.

use std::{
    collections::{BTreeSet, HashMap},
    path::{Path, PathBuf},
    sync::{Arc, OnceLock},
};

use serde::Deserialize;
use toml::Spanned;

/// The package whose methods a policy governs; health and reflection are outside it.
const PACKAGE: &str = "school.v1";

/// Who may call what.
#[derive(Debug)]
pub struct Policy {
    /// Each principal a rule names, with every method (`package.Service/Method`) it may call.
    allowed: HashMap<Arc<str>, BTreeSet<&'static str>>,
}

/// What is wrong with a policy file, and where.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read the authorization policy (--authz-policy, AUTHZ_POLICY) {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("authorization policy {}, line {line}: {problem}", path.display())]
    Line {
        path: PathBuf,
        line: usize,
        problem: PolicyProblem,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyProblem {
    /// Not TOML, or not the shape of a policy (the parser's own words).
    #[error("{0}")]
    Syntax(String),
    #[error("the file holds no [[allow]] rule, so every call would be denied")]
    NoRules,
    #[error("the rule has an empty `{0}` list")]
    Empty(&'static str),
    #[error("a principal is empty")]
    EmptyPrincipal,
    #[error(
        "method pattern {0:?} is malformed: {1} (expected `package.Service/Method`, where `*` \
         matches any run of characters within either part)"
    )]
    Malformed(String, &'static str),
    #[error("method pattern {0:?} matches no method of the service")]
    UnknownMethod(String),
    #[error("this rule repeats the rule on line {0}")]
    Duplicate(usize),
    #[error(
        "principal {0:?} is not the NAME of any token in the tokens file, and without mutual TLS \
         no certificate can name it"
    )]
    UnknownPrincipal(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default)]
    allow: Vec<Spanned<RawRule>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    principals: Spanned<Vec<Spanned<String>>>,
    methods: Spanned<Vec<Spanned<String>>>,
}

/// How a policy's principals are checked at load.
#[derive(Debug, Clone, Copy)]
pub struct Principals<'a> {
    /// The NAMEs of the tokens file, when there is one.
    pub token_names: &'a [&'a str],
    /// Whether client certificates can name principals (mutual TLS is on).
    pub certificates: bool,
}

impl Policy {
    /// Reads and checks a policy file. Also returns the principals no token names, taken as
    /// certificate identities (possible only with mutual TLS), for the start to warn about.
    pub fn load(
        path: &Path,
        principals: Principals<'_>,
    ) -> Result<(Policy, Vec<String>), PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: path.into(),
            source,
        })?;
        Policy::parse(&text, principals).map_err(|(offset, problem)| PolicyError::Line {
            path: path.into(),
            line: line_of(&text, offset),
            problem,
        })
    }

    /// The policy of a file's text; an error carries the byte offset it is about.
    fn parse(
        text: &str,
        principals: Principals<'_>,
    ) -> Result<(Policy, Vec<String>), (usize, PolicyProblem)> {
        let file: PolicyFile = toml::from_str(text).map_err(|err| {
            let offset = err.span().map_or(0, |span| span.start);
            (
                offset,
                PolicyProblem::Syntax(err.message().trim().to_owned()),
            )
        })?;
        if file.allow.is_empty() {
            return Err((0, PolicyProblem::NoRules));
        }
        let mut allowed: HashMap<Arc<str>, BTreeSet<&'static str>> = HashMap::new();
        let mut seen: Vec<(BTreeSet<String>, BTreeSet<String>, usize)> = Vec::new();
        let mut certificate_principals = BTreeSet::new();
        for rule in &file.allow {
            let start = rule.span().start;
            let rule = rule.get_ref();
            let methods = resolve_methods(&rule.methods)?;
            for principal in non_empty(&rule.principals, "principals")? {
                let name = principal.get_ref();
                if name.trim().is_empty() {
                    return Err((principal.span().start, PolicyProblem::EmptyPrincipal));
                }
                if !principals.token_names.contains(&name.as_str()) {
                    if !principals.certificates {
                        let problem = PolicyProblem::UnknownPrincipal(name.clone());
                        return Err((principal.span().start, problem));
                    }
                    certificate_principals.insert(name.clone());
                }
                allowed
                    .entry(name.as_str().into())
                    .or_default()
                    .extend(methods.iter().copied());
            }
            let texts = |list: &Spanned<Vec<Spanned<String>>>| -> BTreeSet<String> {
                list.get_ref().iter().map(|s| s.get_ref().clone()).collect()
            };
            let key = (texts(&rule.principals), texts(&rule.methods));
            if let Some((_, _, earlier)) = seen.iter().find(|(p, m, _)| (p, m) == (&key.0, &key.1))
            {
                return Err((start, PolicyProblem::Duplicate(line_of(text, *earlier))));
            }
            seen.push((key.0, key.1, start));
        }
        let policy = Policy { allowed };
        Ok((policy, certificate_principals.into_iter().collect()))
    }

    /// Whether `principal` may call `method` (`package.Service/Method`).
    pub fn allows(&self, principal: &str, method: &str) -> bool {
        self.allowed
            .get(principal)
            .is_some_and(|methods| methods.contains(method))
    }

    /// Whether a rule names `principal`.
    pub fn names(&self, principal: &str) -> bool {
        self.allowed.contains_key(principal)
    }

    /// The principals the rules name.
    pub fn principals(&self) -> impl Iterator<Item = &str> {
        self.allowed.keys().map(|name| name.as_ref())
    }
}

/// Every method of the service (`school.v1.Service/Method`) its patterns match, each pattern
/// matching at least one.
fn resolve_methods(
    patterns: &Spanned<Vec<Spanned<String>>>,
) -> Result<BTreeSet<&'static str>, (usize, PolicyProblem)> {
    let mut methods = BTreeSet::new();
    for pattern in non_empty(patterns, "methods")? {
        let at = pattern.span().start;
        let text = pattern.get_ref();
        let (service, method) =
            split_pattern(text).map_err(|why| (at, PolicyProblem::Malformed(text.clone(), why)))?;
        let matched: Vec<&'static str> = service_methods()
            .iter()
            .copied()
            .filter(|full| {
                full.split_once('/')
                    .is_some_and(|(s, m)| glob(service, s) && glob(method, m))
            })
            .collect();
        if matched.is_empty() {
            return Err((at, PolicyProblem::UnknownMethod(text.clone())));
        }
        methods.extend(matched);
    }
    Ok(methods)
}

fn non_empty<'a>(
    list: &'a Spanned<Vec<Spanned<String>>>,
    name: &'static str,
) -> Result<&'a [Spanned<String>], (usize, PolicyProblem)> {
    if list.get_ref().is_empty() {
        return Err((list.span().start, PolicyProblem::Empty(name)));
    }
    Ok(list.get_ref())
}

/// The service and method parts of a pattern, each non-empty, of the characters protobuf names
/// take, and `*`.
fn split_pattern(pattern: &str) -> Result<(&str, &str), &'static str> {
    let (service, method) = pattern
        .split_once('/')
        .ok_or("no `/` between service and method")?;
    if service.is_empty() || method.is_empty() {
        return Err("the service or the method part is empty");
    }
    if method.contains('/') {
        return Err("more than one `/`");
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '*');
    if !pattern.chars().all(|c| allowed(c) || c == '/') {
        return Err("only letters, digits, `_`, `.` and `*` may appear");
    }
    if !service.contains('.') && service != "*" {
        return Err("the service part must name the package, as in `school.v1.StudentService`");
    }
    Ok((service, method))
}

/// `*` matches any run of characters (none included); everything else matches itself.
fn glob(pattern: &str, text: &str) -> bool {
    let (pattern, text) = (pattern.as_bytes(), text.as_bytes());
    let (mut p, mut t) = (0, 0);
    // Where the last `*` was, and the text position it has swallowed up to.
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((star_p, star_t)) = star {
            p = star_p + 1;
            t = star_t + 1;
            star = Some((star_p, star_t + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&b| b == b'*')
}

/// The methods of the school.v1 services, from the descriptors compiled into the binary.
pub fn service_methods() -> &'static [&'static str] {
    static METHODS: OnceLock<Vec<&'static str>> = OnceLock::new();
    METHODS.get_or_init(|| {
        // The descriptors are compiled in; they decode unless the build is broken, which the
        // test `the_service_methods_come_from_the_descriptors` would show.
        let set = <prost_types::FileDescriptorSet as prost::Message>::decode(
            crate::pb::FILE_DESCRIPTOR_SET,
        )
        .unwrap_or_default();
        let mut methods = Vec::new();
        for file in set.file.iter().filter(|file| file.package() == PACKAGE) {
            for service in &file.service {
                for method in &service.method {
                    let full = format!("{PACKAGE}.{}/{}", service.name(), method.name());
                    methods.push(&*Box::leak(full.into_boxed_str()));
                }
            }
        }
        methods
    })
}

/// The 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKENS: Principals<'static> = Principals {
        token_names: &["reporting", "registrar"],
        certificates: false,
    };

    fn parse(text: &str) -> Result<Policy, (usize, PolicyProblem)> {
        Policy::parse(text, TOKENS).map(|(policy, _)| policy)
    }

    fn problem(text: &str) -> (usize, PolicyProblem) {
        let (offset, problem) = parse(text).expect_err("refused");
        (line_of(text, offset), problem)
    }

    #[test]
    fn the_service_methods_come_from_the_descriptors() {
        let methods = service_methods();
        assert!(methods.contains(&"school.v1.StudentService/AssignCourse"));
        assert!(methods.contains(&"school.v1.CourseService/DeleteCourse"));
        assert!(methods.contains(&"school.v1.EnrollmentEventService/WatchEnrollmentEvents"));
        assert!(methods.iter().all(|m| m.starts_with("school.v1.")));
    }

    #[test]
    fn patterns_match_within_the_service_part_or_the_method_part() {
        let policy = parse(
            r#"
            [[allow]]
            principals = ["reporting"]
            methods = ["school.v1.StudentService/List*", "school.v1.*/Get*"]

            [[allow]]
            principals = ["registrar"]
            methods = ["school.v1.*/*"]
            "#,
        )
        .expect("a valid policy");
        let reporting = |method: &str| policy.allows("reporting", method);
        assert!(reporting("school.v1.StudentService/ListStudents"));
        assert!(reporting("school.v1.StudentService/ListCourses"));
        assert!(reporting("school.v1.CourseService/GetCourse"));
        assert!(reporting("school.v1.StudentService/GetEnrollment"));
        assert!(!reporting("school.v1.CourseService/ListEnrolledStudents"));
        assert!(!reporting("school.v1.StudentService/AssignCourse"));
        for method in service_methods() {
            assert!(policy.allows("registrar", method), "{method}");
            assert!(!policy.allows("someone", method), "{method}");
        }
        assert!(!policy.allows("registrar", "grpc.health.v1.Health/Check"));
    }

    #[test]
    fn globs_match_any_run_of_characters() {
        assert!(glob("*", ""));
        assert!(glob("List*", "ListCourses"));
        assert!(glob("*Course*", "UnassignCourse"));
        assert!(glob("*Course*", "ListCourses"));
        assert!(glob("a*b*c", "aXbYbc"));
        assert!(!glob("List*", "GetList"));
        assert!(!glob("Get", "GetCourse"));
    }

    #[test]
    fn bad_policies_are_refused_with_their_line() {
        let rule = |principals: &str, methods: &str| {
            format!("# policy\n[[allow]]\nprincipals = {principals}\nmethods = {methods}\n")
        };
        assert_eq!(
            problem(&rule(
                r#"["reporting"]"#,
                r#"["school.v1.StudentService/Lst*"]"#
            )),
            (
                4,
                PolicyProblem::UnknownMethod("school.v1.StudentService/Lst*".into())
            )
        );
        assert!(matches!(
            problem(&rule(r#"["reporting"]"#, r#"["StudentService.List"]"#)),
            (4, PolicyProblem::Malformed(_, _))
        ));
        assert!(matches!(
            problem(&rule(r#"["reporting"]"#, r#"["ListCourses"]"#)),
            (4, PolicyProblem::Malformed(_, _))
        ));
        assert!(matches!(
            problem(&rule(r#"["reporting"]"#, r#"["school.v1.*/Get?"]"#)),
            (4, PolicyProblem::Malformed(_, _))
        ));
        assert_eq!(
            problem(&rule(r#"["nobody"]"#, r#"["school.v1.*/*"]"#)),
            (3, PolicyProblem::UnknownPrincipal("nobody".into()))
        );
        assert_eq!(
            problem(&rule("[]", r#"["school.v1.*/*"]"#)),
            (3, PolicyProblem::Empty("principals"))
        );
        let twice = format!(
            "{}\n{}",
            rule(r#"["reporting"]"#, r#"["school.v1.*/Get*"]"#),
            rule(r#"["reporting"]"#, r#"["school.v1.*/Get*"]"#)
        );
        assert_eq!(problem(&twice), (7, PolicyProblem::Duplicate(2)));
        assert!(matches!(
            problem("[[allow]]\nprincipals = [\"reporting\"]\nmethod = [\"school.v1.*/*\"]\n"),
            (_, PolicyProblem::Syntax(_))
        ));
        assert!(matches!(
            problem("[[allow]\n"),
            (1, PolicyProblem::Syntax(_))
        ));
        assert_eq!(problem("# nothing\n"), (1, PolicyProblem::NoRules));
    }

    #[test]
    fn with_mutual_tls_an_unknown_principal_is_a_certificate_identity() {
        let spiffe = "spiffe://school.example/ns/admin/sa/console";
        let text = format!(
            "[[allow]]\nprincipals = [\"reporting\", \"{spiffe}\"]\nmethods = [\"school.v1.*/*\"]\n"
        );
        let certificates = Principals {
            certificates: true,
            ..TOKENS
        };
        let (policy, identities) = Policy::parse(&text, certificates).expect("valid");
        assert_eq!(identities, vec![spiffe.to_owned()]);
        assert!(policy.allows(spiffe, "school.v1.CourseService/DeleteCourse"));
    }
}
