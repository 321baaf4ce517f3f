//! Where the relay publishes (`--events-nats-*`), checked at start: what the NATS client or the
//! broker would refuse only at the first event, in a warning once a minute, stops the start
//! instead, naming the flag.

/// Where the events go. Build it with `new`, which refuses at start what the client or the
/// broker would refuse only at the first event, in a warning once a minute.
#[derive(Debug, Clone)]
pub struct NatsSettings {
    pub(super) url: String,
    /// The JetStream stream, created (file storage) if missing.
    pub(super) stream: String,
    /// Subjects are `<prefix>.created` and `<prefix>.deleted`.
    pub(super) subject_prefix: String,
}

/// A NATS setting the client or the broker would refuse, named by its flag.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{flag} {problem}")]
pub struct InvalidNatsSetting {
    flag: &'static str,
    problem: String,
}

const URL_FLAG: &str = "--events-nats-url (EVENTS_NATS_URL)";
const STREAM_FLAG: &str = "--events-nats-stream (EVENTS_NATS_STREAM)";
const PREFIX_FLAG: &str = "--events-nats-subject-prefix (EVENTS_NATS_SUBJECT_PREFIX)";
/// The longest stream name nats-server takes (its JSMaxNameLen), in bytes.
const MAX_STREAM_NAME_BYTES: usize = 255;

impl NatsSettings {
    pub fn new(
        url: String,
        stream: String,
        subject_prefix: String,
    ) -> Result<Self, InvalidNatsSetting> {
        check_url(&url)?;
        check_stream(&stream)?;
        check_subject_prefix(&subject_prefix)?;
        Ok(NatsSettings {
            url,
            stream,
            subject_prefix,
        })
    }

    /// The URL as given, credentials included: for connecting, never for a log line.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn stream(&self) -> &str {
        &self.stream
    }

    pub fn subject_prefix(&self) -> &str {
        &self.subject_prefix
    }

    /// The server the URL names, `scheme://host:port`, without the user, password or token it
    /// may carry: what the log may show.
    pub fn server(&self) -> String {
        match self.url.parse::<async_nats::ServerAddr>() {
            Ok(address) => format!(
                "{}://{}:{}",
                address.scheme(),
                address.host(),
                address.port()
            ),
            Err(_) => "(unparsable URL)".into(),
        }
    }
}

/// What async-nats dials: `nats://` or `tls://` and a host, or a bare `host[:port]`. It also
/// parses `ws://` and `wss://`, which this build cannot dial (its websockets feature is off). The
/// URL is never echoed: it may carry a password.
fn check_url(url: &str) -> Result<(), InvalidNatsSetting> {
    let invalid = |why: &str| InvalidNatsSetting {
        flag: URL_FLAG,
        problem: format!(
            "is not a NATS server address ({why}): use nats://HOST:PORT, tls://HOST:PORT or \
             HOST:PORT"
        ),
    };
    let address: async_nats::ServerAddr = url
        .parse()
        .map_err(|err: std::io::Error| invalid(&err.to_string()))?;
    if address.is_websocket() {
        return Err(invalid(&format!(
            "{}:// needs WebSocket support, which this build leaves out",
            address.scheme()
        )));
    }
    if address.host().is_empty() {
        return Err(invalid("no host"));
    }
    Ok(())
}

/// nats-server's rule (its isValidName and the path separator check of its stream API): the
/// name is a token of API subjects and the name of a directory.
fn check_stream(stream: &str) -> Result<(), InvalidNatsSetting> {
    let invalid = |why: String| {
        Err(InvalidNatsSetting {
            flag: STREAM_FLAG,
            problem: format!("{stream:?} {why}"),
        })
    };
    if stream.is_empty() {
        return invalid("is empty: JetStream needs a stream name".into());
    }
    if stream.len() > MAX_STREAM_NAME_BYTES {
        return invalid(format!(
            "is {} bytes long, over JetStream's {MAX_STREAM_NAME_BYTES}",
            stream.len()
        ));
    }
    let forbidden =
        |c: char| c.is_whitespace() || c.is_control() || matches!(c, '.' | '*' | '>' | '/' | '\\');
    if let Some(c) = stream.chars().find(|&c| forbidden(c)) {
        return invalid(format!(
            "contains {c:?}: a JetStream stream name may not contain whitespace, control \
             characters, '.', '*', '>', '/' or '\\'"
        ));
    }
    Ok(())
}

/// `<prefix>.created` must be one literal subject and `<prefix>.>` the stream's filter: tokens
/// separated by single dots, no wildcard, nothing that ends a NATS protocol word.
fn check_subject_prefix(prefix: &str) -> Result<(), InvalidNatsSetting> {
    let invalid = |why: String| {
        Err(InvalidNatsSetting {
            flag: PREFIX_FLAG,
            problem: format!("{prefix:?} {why}"),
        })
    };
    if prefix.is_empty() {
        return invalid("is empty: events need a subject such as school.v1.enrollment".into());
    }
    if let Some(c) = prefix
        .chars()
        .find(|&c| c.is_whitespace() || c.is_control())
    {
        return invalid(format!(
            "contains {c:?}: NATS subjects may not contain whitespace or control characters"
        ));
    }
    if let Some(c) = prefix.chars().find(|&c| matches!(c, '*' | '>')) {
        return invalid(format!(
            "contains the wildcard {c:?}: events are published to a literal subject"
        ));
    }
    if prefix.split('.').any(str::is_empty) {
        return invalid("has an empty token: a leading, trailing or doubled '.'".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(url: &str, stream: &str, prefix: &str) -> Result<NatsSettings, InvalidNatsSetting> {
        NatsSettings::new(url.into(), stream.into(), prefix.into())
    }

    /// The flag a refusal names, checking that it names one.
    fn refused_flag(url: &str, stream: &str, prefix: &str) -> &'static str {
        settings(url, stream, prefix)
            .map(|_| ())
            .expect_err(&format!("accepted {url:?} {stream:?} {prefix:?}"))
            .flag
    }

    #[test]
    fn the_server_shown_in_the_log_carries_no_credentials() {
        for (url, shown) in [
            ("nats://ada:s3cret@broker:4223", "nats://broker:4223"),
            ("nats://t0ken-abc@broker", "nats://broker:4222"),
            ("tls://broker:4443", "tls://broker:4443"),
            ("127.0.0.1:4222", "nats://127.0.0.1:4222"),
        ] {
            let settings = settings(url, "S", "p").expect("valid");
            assert_eq!(settings.server(), shown, "{url}");
        }
    }

    #[test]
    fn addresses_async_nats_dials_are_accepted() {
        for url in [
            "nats://127.0.0.1:4222",
            "tls://nats.example.com:4222",
            "nats://user:secret@nats.example.com",
            "nats.example.com:4222",
            "localhost",
            "nats://[::1]:4222",
        ] {
            assert!(
                settings(url, "SCHOOL_ENROLLMENTS", "school.v1.enrollment").is_ok(),
                "{url} refused"
            );
        }
    }

    #[test]
    fn other_urls_are_refused_without_echoing_them() {
        for url in [
            "",
            "http://nats.example.com:4222",
            "ws://nats.example.com:80",
            "wss://nats.example.com",
            "nats://",
            "nats://host:notaport",
            "nats://a b:4222",
            "nats://user:hunter2@:4222",
        ] {
            let err = settings(url, "S", "p").map(|_| ()).expect_err(url);
            assert_eq!(err.flag, URL_FLAG, "{url}");
            let message = err.to_string();
            assert!(
                message.contains("is not a NATS server address"),
                "{message}"
            );
            assert!(!message.contains("hunter2"), "{message}");
        }
    }

    #[test]
    fn stream_names_follow_jetstream() {
        let long = "S".repeat(MAX_STREAM_NAME_BYTES);
        for stream in [
            "SCHOOL_ENROLLMENTS",
            "school-events-2",
            "Ünïcode",
            long.as_str(),
        ] {
            assert!(
                settings("nats://h:4222", stream, "p").is_ok(),
                "{stream} refused"
            );
        }
        let too_long = "S".repeat(MAX_STREAM_NAME_BYTES + 1);
        for stream in [
            "",
            "SCHOOL.EVENTS",
            "SCHOOL*",
            "SCHOOL>",
            "a/b",
            "a\\b",
            "two words",
            "tab\there",
            "new\nline",
            too_long.as_str(),
        ] {
            assert_eq!(
                refused_flag("nats://h:4222", stream, "p"),
                STREAM_FLAG,
                "{stream:?}"
            );
        }
        let message = settings("nats://h:4222", "SCHOOL.EVENTS", "p")
            .map(|_| ())
            .expect_err("a dot")
            .to_string();
        assert_eq!(
            message,
            "--events-nats-stream (EVENTS_NATS_STREAM) \"SCHOOL.EVENTS\" contains '.': a \
             JetStream stream name may not contain whitespace, control characters, '.', '*', \
             '>', '/' or '\\'"
        );
    }

    #[test]
    fn subject_prefixes_are_literal_dotted_tokens() {
        for prefix in ["school.v1.enrollment", "events", "a.b-c_d.$x", "ünï.côdé"] {
            assert!(
                settings("nats://h:4222", "S", prefix).is_ok(),
                "{prefix} refused"
            );
        }
        for prefix in [
            "",
            "school v1",
            "school.\tv1",
            "school.*",
            "school.>",
            "a*b",
            ".school",
            "school.",
            "a..b",
            ".",
        ] {
            assert_eq!(
                refused_flag("nats://h:4222", "S", prefix),
                PREFIX_FLAG,
                "{prefix:?}"
            );
        }
    }
}
