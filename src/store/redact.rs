//! Database URLs as they may be shown: in logs, command output and error messages.

/// The URL with every secret replaced by `***`, fit for logs, output and error messages: the
/// password of `user:password@`, and the value of every query parameter whose name, in any case,
/// looks secret (`password`, `Password`, `sslpassword`, `token`, ...).
pub fn redact(url: &str) -> String {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut redacted = base.to_owned();
    // postgres://user:password@host/db
    if let Some(scheme_end) = base.find("://") {
        let rest = &base[scheme_end + 3..];
        let authority_end = rest.find('/').unwrap_or(rest.len());
        if let Some(at) = rest[..authority_end].rfind('@')
            && let Some(colon) = rest[..at].find(':')
        {
            let start = scheme_end + 3 + colon + 1;
            redacted.replace_range(start..scheme_end + 3 + at, "***");
        }
    }
    if url.contains('?') {
        let parameters: Vec<String> = query
            .split('&')
            .map(|parameter| match parameter.split_once('=') {
                Some((key, _)) if looks_secret(key) => format!("{key}=***"),
                _ => parameter.to_owned(),
            })
            .collect();
        redacted.push('?');
        redacted.push_str(&parameters.join("&"));
    }
    redacted
}

/// Parameter names that carry credentials, in any case and with any prefix (`sslpassword`).
fn looks_secret(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    [
        "pass",
        "pwd",
        "secret",
        "token",
        "credential",
        "auth",
        "apikey",
        "api_key",
    ]
    .iter()
    .any(|marker| key.contains(marker))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("postgres://app:s3cr@t@db:5432/school"),
            "postgres://app:***@db:5432/school"
        );
        assert_eq!(
            redact("postgres://db/school?user=app&password=s3cret&sslmode=require"),
            "postgres://db/school?user=app&password=***&sslmode=require"
        );
        assert_eq!(
            redact("sqlite:student-service.db"),
            "sqlite:student-service.db"
        );
        assert_eq!(
            redact("postgres://db/s?sslpassword=a&Password=b&PASSWORD=c&token=d&sslmode=require"),
            "postgres://db/s?sslpassword=***&Password=***&PASSWORD=***&token=***&sslmode=require"
        );
        assert_eq!(redact("postgres://u:p@db?x=1"), "postgres://u:***@db?x=1");
    }
}
