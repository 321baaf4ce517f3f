//! The exporter's settings, from the standard OpenTelemetry environment variables, with the
//! defaults of the OpenTelemetry specification (except the protocol: see [`Protocol`]).

use std::{str::FromStr, time::Duration};

use tonic::{
    metadata::{MetadataKey, MetadataMap, MetadataValue},
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint},
};

use super::client::{Client, Http, Transport, grpc_client};

/// How the exporter is set up, from the environment (defaults as in the OpenTelemetry
/// specification).
#[derive(Debug, Clone)]
pub(super) struct Settings {
    pub(super) protocol: Protocol,
    /// The collector's address (gRPC), or the URL spans are POSTed to (HTTP).
    pub(super) endpoint: String,
    /// Requests are gzipped (`OTEL_EXPORTER_OTLP_COMPRESSION=gzip`).
    pub(super) gzip: bool,
    /// An endpoint without a scheme is plaintext (`OTEL_EXPORTER_OTLP_INSECURE`).
    pub(super) insecure: bool,
    pub(super) headers: MetadataMap,
    pub(super) certificate: Option<String>,
    pub(super) timeout: Duration,
    pub(super) schedule_delay: Duration,
    pub(super) queue_size: usize,
    pub(super) batch_size: usize,
}

impl Settings {
    /// The settings the environment gives, and warnings for what it asks that cannot be done;
    /// `None` when traces are off, `Err` for a protocol that cannot be spoken.
    pub(super) fn from_env() -> Result<Option<(Self, Vec<String>)>, String> {
        Self::from_vars(&|name| std::env::var(name).ok())
    }

    /// The settings of the variables `var` looks up. A value that cannot be used is warned
    /// about and treated as not set, as the OpenTelemetry specification asks of the SDKs
    /// ("generate a warning and gracefully ignore the setting"), except the protocol: spans
    /// sent in a protocol the collector does not speak would all be lost.
    pub(super) fn from_vars(
        var: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Option<(Self, Vec<String>)>, String> {
        let specific = set(var, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
        let general = set(var, "OTEL_EXPORTER_OTLP_ENDPOINT");
        if specific.is_none() && general.is_none() {
            return Ok(None);
        }
        let mut warnings = Vec::new();
        if turned_off(
            var("OTEL_SDK_DISABLED").as_deref(),
            var("OTEL_TRACES_EXPORTER").as_deref(),
            &mut warnings,
        ) {
            return Ok(None);
        }
        let protocol = Protocol::from_vars(var)?;
        let endpoint = match (specific, general) {
            // The traces endpoint is the whole URL; the general one is the collector's base,
            // to which OTLP/HTTP adds the signal's path.
            (Some(endpoint), _) => endpoint,
            (None, Some(base)) if protocol == Protocol::HttpProtobuf => {
                format!("{}/v1/traces", base.trim_end_matches('/'))
            }
            (None, Some(endpoint)) => endpoint,
            (None, None) => return Ok(None),
        };
        let headers = either(
            var,
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
            "OTEL_EXPORTER_OTLP_HEADERS",
        )
        .map(|headers| metadata(&headers, &mut warnings))
        .unwrap_or_default();
        let gzip = gzip(var, &mut warnings);
        let insecure = boolean(
            var,
            &[
                "OTEL_EXPORTER_OTLP_TRACES_INSECURE",
                "OTEL_EXPORTER_OTLP_INSECURE",
            ],
            &mut warnings,
        );
        let mut number =
            |names: &[&str], default, least| number(var, names, default, least, &mut warnings);
        // A timeout of 0 would fail every export, a queue or a batch of 0 would take no span.
        let export_timeout = number(
            &[
                "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
                "OTEL_EXPORTER_OTLP_TIMEOUT",
            ],
            10_000,
            1,
        );
        let batch_timeout = number(&["OTEL_BSP_EXPORT_TIMEOUT"], 30_000, 1);
        let queue_size = number(&["OTEL_BSP_MAX_QUEUE_SIZE"], 2_048, 1);
        let batch_size = number(&["OTEL_BSP_MAX_EXPORT_BATCH_SIZE"], 512, 1);
        // 0 is "at once"; a millisecond keeps the export task from spinning.
        let schedule_delay = number(&["OTEL_BSP_SCHEDULE_DELAY"], 5_000, 0).max(1);
        if batch_size > queue_size {
            warnings.push(format!(
                "OTEL_BSP_MAX_EXPORT_BATCH_SIZE={batch_size} is larger than \
                 OTEL_BSP_MAX_QUEUE_SIZE={queue_size}; batches of {queue_size}"
            ));
        }
        let count = |number: u64| usize::try_from(number).unwrap_or(usize::MAX);
        Ok(Some((
            Self {
                protocol,
                endpoint,
                gzip,
                insecure,
                headers,
                certificate: either(
                    var,
                    "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
                    "OTEL_EXPORTER_OTLP_CERTIFICATE",
                ),
                timeout: Duration::from_millis(export_timeout.min(batch_timeout)),
                schedule_delay: Duration::from_millis(schedule_delay),
                queue_size: count(queue_size),
                batch_size: count(batch_size.min(queue_size)),
            },
            warnings,
        )))
    }

    /// The client that sends export requests as these settings say.
    pub(super) fn client(&self) -> Result<Client, String> {
        let transport = match self.protocol {
            Protocol::Grpc => Transport::Grpc {
                client: grpc_client(self.channel()?, self.gzip),
                headers: self.headers.clone(),
            },
            Protocol::HttpProtobuf => Transport::Http(Http::new(
                &self.endpoint,
                self.certificate.as_deref(),
                self.headers.clone(),
                self.gzip,
            )?),
        };
        Ok(Client {
            transport,
            timeout: self.timeout,
        })
    }

    /// The channel to the collector; it connects on first use (a collector that is not up yet
    /// is no reason to refuse to start).
    fn channel(&self) -> Result<Channel, String> {
        let (url, schemeless) = collector_url(&self.endpoint, self.insecure)?;
        let mut endpoint = Endpoint::from_str(&url)
            .map_err(|err| format!("bad OTLP endpoint {:?}: {err}", self.endpoint))?
            .connect_timeout(self.timeout);
        if url.starts_with("https:") {
            let Some(path) = &self.certificate else {
                let no_roots = "OTEL_EXPORTER_OTLP_CERTIFICATE (the CA certificate to trust, \
                                PEM): the service carries no root certificates";
                if schemeless {
                    return Err(format!(
                        "the OTLP endpoint {endpoint:?} has no scheme, which the OTLP exporter \
                         specification reads as a secure (TLS) connection unless \
                         OTEL_EXPORTER_OTLP_INSECURE=true, and a secure one needs {no_roots}; \
                         for a collector without TLS write http://{endpoint}",
                        endpoint = self.endpoint,
                    ));
                }
                return Err(format!("an https OTLP endpoint needs {no_roots}"));
            };
            let pem = std::fs::read(path).map_err(|err| format!("cannot read {path}: {err}"))?;
            endpoint = endpoint
                .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)))
                .map_err(|err| format!("bad TLS settings for {:?}: {err}", self.endpoint))?;
        }
        Ok(endpoint.connect_lazy())
    }
}

/// The collector's URL, and whether `endpoint` had no scheme: an endpoint with the scheme http
/// or https is taken as it is; one without (`collector:4317`, a form gRPC clients take) is https,
/// or http when `insecure`, as the OTLP exporter specification says of an OTLP/gRPC endpoint.
fn collector_url(endpoint: &str, insecure: bool) -> Result<(String, bool), String> {
    match endpoint.split_once("://") {
        Some((scheme, rest))
            if matches!(scheme.to_ascii_lowercase().as_str(), "http" | "https") =>
        {
            Ok((format!("{}://{rest}", scheme.to_ascii_lowercase()), false))
        }
        Some((scheme, _)) => Err(format!(
            "the OTLP endpoint {endpoint:?} has the scheme {scheme:?}: OTLP/gRPC takes http or \
             https (or none, with OTEL_EXPORTER_OTLP_INSECURE)"
        )),
        None => {
            let scheme = if insecure { "http" } else { "https" };
            Ok((format!("{scheme}://{endpoint}"), true))
        }
    }
}

/// Whether `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none` turns traces off, as in the
/// SDKs; an exporter other than `otlp` is warned about (OTLP is the only one here).
fn turned_off(
    sdk_disabled: Option<&str>,
    exporters: Option<&str>,
    warnings: &mut Vec<String>,
) -> bool {
    if sdk_disabled.is_some_and(|value| value.trim().eq_ignore_ascii_case("true")) {
        return true;
    }
    let exporters: Vec<&str> = exporters
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|exporter| !exporter.is_empty())
        .collect();
    if exporters
        .iter()
        .any(|exporter| !matches!(*exporter, "otlp" | "none"))
    {
        warnings.push(format!(
            "OTEL_TRACES_EXPORTER={}: only otlp is supported here; exporting over OTLP",
            exporters.join(",")
        ));
    }
    exporters == ["none"]
}

/// The first of two variables that is set and not empty.
fn either(var: &dyn Fn(&str) -> Option<String>, specific: &str, general: &str) -> Option<String> {
    either_named(var, specific, general).map(|(_, value)| value)
}

/// The first of two variables that is set and not empty, and its name.
fn either_named<'a>(
    var: &dyn Fn(&str) -> Option<String>,
    specific: &'a str,
    general: &'a str,
) -> Option<(&'a str, String)> {
    [specific, general]
        .into_iter()
        .find_map(|name| Some((name, set(var, name)?)))
}

/// The variable's value, trimmed, when it is set and not empty.
fn set(var: &dyn Fn(&str) -> Option<String>, name: &str) -> Option<String> {
    var(name)
        .map(|value| value.trim().to_owned())
        .filter(|value| !value.is_empty())
}

/// Whether requests are gzipped: `gzip` says yes, `none` no; another value (OTLP defines no
/// other) is warned about and ignored.
fn gzip(var: &dyn Fn(&str) -> Option<String>, warnings: &mut Vec<String>) -> bool {
    let Some((name, value)) = either_named(
        var,
        "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
        "OTEL_EXPORTER_OTLP_COMPRESSION",
    ) else {
        return false;
    };
    if value.eq_ignore_ascii_case("gzip") {
        return true;
    }
    if !value.eq_ignore_ascii_case("none") {
        warnings.push(format!(
            "{name}={value:?} is not gzip or none; spans are sent uncompressed"
        ));
    }
    false
}

/// How spans travel to the collector (`OTEL_EXPORTER_OTLP_PROTOCOL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Protocol {
    /// OTLP/gRPC, the default here (the SDKs' default is `http/protobuf`; this service has
    /// always spoken gRPC, and an endpoint set for it keeps working).
    Grpc,
    /// OTLP/HTTP with protobuf bodies.
    HttpProtobuf,
}

impl Protocol {
    /// `grpc` or `http/protobuf`; anything else (`http/json` included, which is not spoken
    /// here) is an error, not a warning: the collector would refuse every export.
    fn from_vars(var: &dyn Fn(&str) -> Option<String>) -> Result<Self, String> {
        let Some((name, value)) = either_named(
            var,
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ) else {
            return Ok(Self::Grpc);
        };
        match value.as_str() {
            "grpc" => Ok(Self::Grpc),
            "http/protobuf" => Ok(Self::HttpProtobuf),
            other => Err(format!(
                "{name}={other:?}: the protocols spoken here are grpc and http/protobuf"
            )),
        }
    }
}

/// The number held by the first of `names` that holds a whole number of at least `least`, or
/// `default`; a variable set to anything else is warned about and ignored.
fn number(
    var: &dyn Fn(&str) -> Option<String>,
    names: &[&str],
    default: u64,
    least: u64,
    warnings: &mut Vec<String>,
) -> u64 {
    for name in names {
        let Some(value) = var(name) else { continue };
        let value = value.trim();
        if value.is_empty() {
            continue;
        }
        match value.parse::<u64>() {
            Ok(number) if number >= least => return number,
            _ => warnings.push(format!(
                "{name}={value:?} is not a whole number of at least {least}; ignored"
            )),
        }
    }
    default
}

/// Whether the first of `names` that is `true` or `false` (in any case) is `true`; a variable
/// set to anything else is warned about and ignored.
fn boolean(
    var: &dyn Fn(&str) -> Option<String>,
    names: &[&str],
    warnings: &mut Vec<String>,
) -> bool {
    for name in names {
        let Some(value) = var(name) else { continue };
        let value = value.trim();
        if value.eq_ignore_ascii_case("true") {
            return true;
        }
        if value.eq_ignore_ascii_case("false") {
            return false;
        }
        if !value.is_empty() {
            warnings.push(format!("{name}={value:?} is not true or false; ignored"));
        }
    }
    false
}

/// `key=value,...` (keys and values percent-encoded) as gRPC metadata; an entry that does not
/// decode, or is no valid metadata, is warned about (by its key, never its value: headers carry
/// API keys) and not sent.
fn metadata(headers: &str, warnings: &mut Vec<String>) -> MetadataMap {
    let mut map = MetadataMap::new();
    for entry in super::key_values(headers) {
        let (key, value) = match entry {
            Ok(entry) => entry,
            Err(why) => {
                warnings.push(format!(
                    "OTEL_EXPORTER_OTLP_HEADERS: {why}; that header is not sent"
                ));
                continue;
            }
        };
        match (
            MetadataKey::from_bytes(key.to_ascii_lowercase().as_bytes()),
            MetadataValue::try_from(value.as_str()),
        ) {
            (Ok(key), Ok(value)) => {
                map.insert(key, value);
            }
            _ => warnings.push(format!(
                "OTEL_EXPORTER_OTLP_HEADERS: cannot send header {key:?}"
            )),
        }
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings_of(vars: &[(&str, &str)]) -> (Settings, Vec<String>) {
        let vars: std::collections::HashMap<String, String> = vars
            .iter()
            .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
            .collect();
        Settings::from_vars(&|name| vars.get(name).cloned())
            .expect("a protocol spoken here")
            .expect("traces on")
    }

    const ENDPOINT: (&str, &str) = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317");

    fn sizes(settings: &Settings) -> (usize, usize, Duration, Duration) {
        (
            settings.queue_size,
            settings.batch_size,
            settings.schedule_delay,
            settings.timeout,
        )
    }

    #[test]
    fn batch_values_that_are_negative_zero_where_meaningless_or_no_number_are_warned_about_and_ignored()
     {
        let (defaults, warnings) = settings_of(&[ENDPOINT]);
        assert_eq!(warnings, Vec::<String>::new());
        let defaults = sizes(&defaults);
        assert_eq!(
            defaults,
            (2_048, 512, Duration::from_secs(5), Duration::from_secs(10))
        );
        for (name, bad) in [
            ("OTEL_BSP_MAX_QUEUE_SIZE", "-1"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "0"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "lots"),
            ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "0"),
            ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "-512"),
            ("OTEL_BSP_SCHEDULE_DELAY", "-100"),
            ("OTEL_BSP_SCHEDULE_DELAY", "5s"),
            ("OTEL_BSP_EXPORT_TIMEOUT", "0"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "-1"),
            ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "1.5"),
        ] {
            let (settings, warnings) = settings_of(&[ENDPOINT, (name, bad)]);
            assert_eq!(sizes(&settings), defaults, "{name}={bad}");
            assert_eq!(warnings.len(), 1, "{name}={bad}: {warnings:?}");
            assert!(warnings[0].contains(name), "{warnings:?}");
        }
        // A specific variable that is ignored leaves the general one in charge.
        let (settings, _) = settings_of(&[
            ENDPOINT,
            ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "soon"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2000"),
        ]);
        assert_eq!(settings.timeout, Duration::from_secs(2));
        // Good values are taken: a delay of 0 exports at once; a batch larger than the queue
        // is the queue, with a warning.
        let (settings, warnings) = settings_of(&[
            ENDPOINT,
            ("OTEL_BSP_MAX_QUEUE_SIZE", " 100 "),
            ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "200"),
            ("OTEL_BSP_SCHEDULE_DELAY", "0"),
        ]);
        assert_eq!((settings.queue_size, settings.batch_size), (100, 100));
        assert_eq!(settings.schedule_delay, Duration::from_millis(1));
        assert_eq!(warnings.len(), 1, "{warnings:?}");
    }

    #[tokio::test]
    async fn an_endpoint_without_a_scheme_is_a_secure_one_unless_insecure_is_set() {
        let bare = ("OTEL_EXPORTER_OTLP_ENDPOINT", "localhost:4317");
        let (secure, _) = settings_of(&[bare]);
        let refused = secure
            .channel()
            .expect_err("a secure endpoint needs a CA certificate");
        for said in [
            "no scheme",
            "http://localhost:4317",
            "OTEL_EXPORTER_OTLP_INSECURE",
        ] {
            assert!(refused.contains(said), "{said:?} not in {refused:?}");
        }
        let (insecure, warnings) = settings_of(&[bare, ("OTEL_EXPORTER_OTLP_INSECURE", "true")]);
        assert_eq!(warnings, Vec::<String>::new());
        assert!(insecure.channel().is_ok());
        let (plain, _) = settings_of(&[ENDPOINT]);
        assert!(plain.channel().is_ok());
        let (other, _) = settings_of(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "ftp://collector:4317")]);
        let refused = other.channel().expect_err("not a scheme of OTLP/gRPC");
        assert!(refused.contains("http or https"), "{refused}");
    }

    #[test]
    fn a_header_that_does_not_decode_is_warned_about_and_not_sent() {
        let mut warnings = Vec::new();
        let headers = metadata(
            "api-key=s%3Dcret, bad=%zz, broken=%e2%82, noequals ,x-team=a%20b",
            &mut warnings,
        );
        assert_eq!(headers.len(), 2, "{headers:?}");
        assert_eq!(
            headers.get("api-key").and_then(|v| v.to_str().ok()),
            Some("s=cret")
        );
        assert_eq!(
            headers.get("x-team").and_then(|v| v.to_str().ok()),
            Some("a b")
        );
        assert_eq!(warnings.len(), 3, "{warnings:?}");
        assert!(
            warnings.iter().all(|warning| !warning.contains("cret")),
            "a warning shows a value: {warnings:?}"
        );
    }

    #[test]
    fn traces_are_turned_off_as_the_sdks_turn_them_off() {
        let off = |disabled, exporters| turned_off(disabled, exporters, &mut Vec::new());
        assert!(!off(None, None));
        assert!(off(Some("true"), None));
        assert!(off(Some(" TRUE "), Some("otlp")));
        assert!(!off(Some("false"), Some("otlp")));
        assert!(off(None, Some("none")));
        assert!(!off(None, Some("otlp")));
        let mut warnings = Vec::new();
        assert!(!turned_off(None, Some("otlp,console"), &mut warnings));
        assert_eq!(warnings.len(), 1, "{warnings:?}");
    }

    #[test]
    fn gzip_is_asked_for_by_either_compression_variable_and_another_value_is_warned_about() {
        let (plain, warnings) = settings_of(&[ENDPOINT]);
        assert!(!plain.gzip);
        assert_eq!(warnings, Vec::<String>::new());
        for name in [
            "OTEL_EXPORTER_OTLP_COMPRESSION",
            "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
        ] {
            let (gzip, warnings) = settings_of(&[ENDPOINT, (name, "gzip")]);
            assert!(gzip.gzip, "{name}");
            assert_eq!(warnings, Vec::<String>::new());
        }
        // The traces variable wins over the general one.
        let (none, _) = settings_of(&[
            ENDPOINT,
            ("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "none"),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
        ]);
        assert!(!none.gzip);
        let (zstd, warnings) = settings_of(&[ENDPOINT, ("OTEL_EXPORTER_OTLP_COMPRESSION", "zstd")]);
        assert!(!zstd.gzip);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("OTEL_EXPORTER_OTLP_COMPRESSION=\"zstd\""));
    }

    #[test]
    fn http_protobuf_posts_to_v1_traces_under_the_general_endpoint_and_to_the_traces_endpoint_as_it_is()
     {
        let http = ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf");
        let (default, _) = settings_of(&[ENDPOINT]);
        assert_eq!(default.protocol, Protocol::Grpc);
        assert_eq!(default.endpoint, "http://collector:4317");
        let base = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/otlp/");
        let (general, _) = settings_of(&[base, http]);
        assert_eq!(general.protocol, Protocol::HttpProtobuf);
        assert_eq!(general.endpoint, "http://collector:4318/otlp/v1/traces");
        let specific = (
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "http://collector:4318/custom",
        );
        let (specific, _) = settings_of(&[base, specific, http]);
        assert_eq!(specific.endpoint, "http://collector:4318/custom");
        // The traces variable wins over the general one.
        let (grpc, _) = settings_of(&[base, http, ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc")]);
        assert_eq!(grpc.protocol, Protocol::Grpc);
        assert_eq!(grpc.endpoint, "http://collector:4318/otlp/");
    }

    #[test]
    fn a_protocol_not_spoken_here_is_refused() {
        for protocol in ["http/json", "HTTP", "thrift"] {
            let vars = [ENDPOINT, ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)];
            let refused = Settings::from_vars(&|name| {
                vars.iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, value)| (*value).to_owned())
            })
            .expect_err("refused");
            assert!(refused.contains("grpc and http/protobuf"), "{refused}");
            assert!(refused.contains(protocol), "{refused}");
        }
    }
}
