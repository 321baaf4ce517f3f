//! What a span needs to know of its trace: ids, the caller's W3C `traceparent` / `tracestate`
//! (www.w3.org/TR/trace-context), and the sampler the `OTEL_TRACES_SAMPLER` variables choose.

use std::{fmt, sync::Arc};

/// A 16-byte trace id, never all zeros; written as 32 lowercase hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TraceId(pub(super) [u8; 16]);

/// An 8-byte span id, never all zeros; written as 16 lowercase hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SpanId(pub(super) [u8; 8]);

impl TraceId {
    pub(super) fn random() -> Self {
        Self(fastrand::u128(1..).to_be_bytes())
    }
}

impl SpanId {
    pub(super) fn random() -> Self {
        Self(fastrand::u64(1..).to_be_bytes())
    }
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

fn write_hex(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    bytes.iter().try_for_each(|byte| write!(f, "{byte:02x}"))
}

/// What a child span takes from its parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SpanContext {
    pub(crate) trace_id: TraceId,
    pub(crate) span_id: SpanId,
    pub(crate) sampled: bool,
}

/// The caller's span, from the request's `traceparent` and `tracestate`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RemoteParent {
    pub(crate) context: SpanContext,
    /// Valid W3C `tracestate`, passed on unchanged to our spans; `None` when absent or invalid.
    pub(super) trace_state: Option<Arc<str>>,
}

/// The caller's span of a W3C `traceparent` (and its `tracestate`), or `None` when the header
/// is absent or malformed (the call then starts a new trace).
pub(crate) fn remote_parent(headers: &http::HeaderMap) -> Option<RemoteParent> {
    let context = parse_traceparent(headers.get("traceparent")?.to_str().ok()?.trim())?;
    let trace_state = headers
        .get("tracestate")
        .and_then(|value| value.to_str().ok())
        .map(str::trim)
        .filter(|value| valid_tracestate(value))
        .map(Arc::from);
    Some(RemoteParent {
        context,
        trace_state,
    })
}

/// `version "-" trace-id "-" parent-id "-" trace-flags`, all lowercase hex. Version `00` is
/// exactly that; a later version may append `-` and fields we do not know; `ff` is invalid.
fn parse_traceparent(value: &str) -> Option<SpanContext> {
    let version = value.get(0..2)?;
    let fixed = value.get(..55)?;
    let rest = &value[55..];
    let extended_as_allowed = match version {
        "00" => rest.is_empty(),
        "ff" => false,
        _ => rest.is_empty() || rest.starts_with('-'),
    };
    let fields: Vec<&str> = fixed.split('-').collect();
    let [version_field, trace_id, span_id, flags] = fields[..] else {
        return None;
    };
    let well_formed = version_field.len() == 2 && flags.len() == 2;
    if !extended_as_allowed || !well_formed || !lower_hex(version) || !lower_hex(flags) {
        return None;
    }
    let trace_id = TraceId(u128::to_be_bytes(parse_hex(trace_id, 32)?));
    let span_id = SpanId(u64::to_be_bytes(
        u64::try_from(parse_hex(span_id, 16)?).ok()?,
    ));
    let flags = u8::from_str_radix(flags, 16).ok()?;
    (trace_id.0 != [0; 16] && span_id.0 != [0; 8]).then_some(SpanContext {
        trace_id,
        span_id,
        sampled: flags & 1 == 1,
    })
}

fn parse_hex(digits: &str, len: usize) -> Option<u128> {
    (digits.len() == len && lower_hex(digits))
        .then(|| u128::from_str_radix(digits, 16).ok())
        .flatten()
}

fn lower_hex(digits: &str) -> bool {
    digits
        .bytes()
        .all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte))
}

/// A W3C `tracestate`: at most 32 `key=value` members separated by commas, no key twice (the
/// W3C test suite drops such a header: which of the two values is the vendor's?); keys of
/// lowercase letters, digits and `_-*/` (with one `@` for a tenant), values of printable ASCII
/// other than `,` and `=`, not ending in a space. One longer than 512 characters is dropped, as
/// the W3C allows: every span of the call carries it, and a batch too large for the collector
/// would lose other calls' spans too.
fn valid_tracestate(value: &str) -> bool {
    if value.len() > 512 {
        return false;
    }
    let members: Vec<&str> = value
        .split(',')
        .map(|member| member.trim_matches([' ', '\t']))
        .filter(|member| !member.is_empty())
        .collect();
    let mut keys = Vec::with_capacity(members.len());
    !members.is_empty()
        && members.len() <= 32
        && members.iter().all(|member| {
            member.split_once('=').is_some_and(|(key, value)| {
                let first = !keys.contains(&key);
                keys.push(key);
                first && valid_tracestate_key(key) && valid_tracestate_value(value)
            })
        })
}

fn valid_tracestate_key(key: &str) -> bool {
    let allowed =
        |byte: u8| byte.is_ascii_lowercase() || byte.is_ascii_digit() || b"_-*/".contains(&byte);
    let (tenant, system, longest) = match key.split_once('@') {
        Some((tenant, system)) => (tenant, system, 14),
        None => ("", key, 256),
    };
    let tenant_ok = !key.contains('@')
        || (tenant.len() <= 241
            && tenant
                .bytes()
                .next()
                .is_some_and(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit()));
    tenant_ok
        && system.len() <= longest
        && system
            .bytes()
            .next()
            .is_some_and(|byte| byte.is_ascii_lowercase())
        && tenant.bytes().chain(system.bytes()).all(allowed)
}

fn valid_tracestate_value(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 256
        && !value.ends_with(' ')
        && value
            .bytes()
            .all(|byte| (0x20..=0x7e).contains(&byte) && byte != b',' && byte != b'=')
}

/// The sampler of the OpenTelemetry SDKs' `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG`.
/// Only the call's server span is sampled; the spans inside it follow its decision.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Sampler {
    /// Follow a caller's sampled flag when there is a caller (`parentbased_*`).
    parent_based: bool,
    /// The share of traces this service starts (or, without `parentbased`, of all) it keeps.
    ratio: f64,
}

impl Sampler {
    /// The sampler the environment names; unknown names and bad ratios are warned about and
    /// replaced, as the SDKs do.
    pub(super) fn from_env() -> Self {
        let name = std::env::var("OTEL_TRACES_SAMPLER").unwrap_or_default();
        let arg = std::env::var("OTEL_TRACES_SAMPLER_ARG").ok();
        let (sampler, warning) = Self::named(name.trim(), arg.as_deref());
        if let Some(warning) = warning {
            tracing::warn!(sampler = name, arg, "{warning}");
        }
        sampler
    }

    fn named(name: &str, arg: Option<&str>) -> (Self, Option<&'static str>) {
        let ratio = || match arg.map(str::trim).map(str::parse::<f64>) {
            Some(Ok(ratio)) if (0.0..=1.0).contains(&ratio) => (ratio, None),
            _ => (
                1.0,
                Some("OTEL_TRACES_SAMPLER_ARG is not a ratio from 0 to 1; keeping every trace"),
            ),
        };
        let sampler = |parent_based, (ratio, warning)| {
            (
                Self {
                    parent_based,
                    ratio,
                },
                warning,
            )
        };
        match name {
            "" | "parentbased_always_on" => sampler(true, (1.0, None)),
            "parentbased_always_off" => sampler(true, (0.0, None)),
            "parentbased_traceidratio" => sampler(true, ratio()),
            "always_on" => sampler(false, (1.0, None)),
            "always_off" => sampler(false, (0.0, None)),
            "traceidratio" => sampler(false, ratio()),
            _ => sampler(
                true,
                (
                    1.0,
                    Some(
                        "OTEL_TRACES_SAMPLER is not one of always_on, always_off, traceidratio, \
                         parentbased_always_on, parentbased_always_off, parentbased_traceidratio; \
                         using parentbased_always_on",
                    ),
                ),
            ),
        }
    }

    /// Whether a span of `trace_id` with `parent` is recorded and exported. The ratio test is
    /// the SDKs' (the trace id's low 63 bits against the ratio), so replicas and other services
    /// keep the same traces.
    pub(super) fn samples(&self, trace_id: TraceId, parent: Option<&SpanContext>) -> bool {
        if let Some(parent) = parent.filter(|_| self.parent_based) {
            return parent.sampled;
        }
        let bound = (self.ratio.max(0.0) * (1u64 << 63) as f64) as u64;
        let mut low = [0; 8];
        low.copy_from_slice(&trace_id.0[8..]);
        (u64::from_be_bytes(low) >> 1) < bound
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const SPAN: &str = "00f067aa0ba902b7";

    fn parsed(traceparent: &str) -> Option<(String, String, bool)> {
        parse_traceparent(traceparent).map(|context| {
            (
                context.trace_id.to_string(),
                context.span_id.to_string(),
                context.sampled,
            )
        })
    }

    #[test]
    fn a_traceparent_names_the_callers_trace_span_and_sampling() {
        let expect = |sampled| Some((TRACE.to_owned(), SPAN.to_owned(), sampled));
        assert_eq!(parsed(&format!("00-{TRACE}-{SPAN}-01")), expect(true));
        assert_eq!(parsed(&format!("00-{TRACE}-{SPAN}-00")), expect(false));
        assert_eq!(parsed(&format!("00-{TRACE}-{SPAN}-09")), expect(true));
        // A later version may add fields after a dash.
        assert_eq!(parsed(&format!("02-{TRACE}-{SPAN}-09-xyz")), expect(true));
        assert_eq!(parsed(&format!("02-{TRACE}-{SPAN}-08")), expect(false));
    }

    #[test]
    fn a_malformed_traceparent_is_ignored() {
        for bad in [
            format!("00-{TRACE}-{SPAN}-01-"),
            format!("00-{TRACE}-{SPAN}-01-extra"),
            format!("ff-{TRACE}-{SPAN}-01"),
            format!("0-{TRACE}-{SPAN}-01"),
            format!("00-{}-{SPAN}-01", TRACE.to_uppercase()),
            format!("00-{TRACE}-{}-01", SPAN.to_uppercase()),
            format!("00-{TRACE}-{SPAN}-0A"),
            format!("00-00000000000000000000000000000000-{SPAN}-01"),
            format!("00-{TRACE}-0000000000000000-01"),
            format!("00-{TRACE}ab-{SPAN}-01"),
            format!("00-{TRACE}-{SPAN}ab-01"),
            format!("00-{TRACE}-{SPAN}-0100"),
            format!("000-{TRACE}-{SPAN}-1"),
            format!("qw-{TRACE}-{SPAN}-01"),
            format!("00-{TRACE}_{SPAN}-01"),
            format!("00-+bf92f3577b34da6a3ce929d0e0e4736-{SPAN}-01"),
            "00-".to_owned(),
            String::new(),
        ] {
            assert_eq!(parse_traceparent(&bad), None, "{bad}");
        }
    }

    #[test]
    fn tracestate_is_kept_only_when_valid() {
        for good in [
            "foo=bar",
            "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE",
            "tenant@vendor=value, other=1 ,",
            "1tenant@v=1",
            "a*b/c_d-e=x y",
        ] {
            assert!(valid_tracestate(good), "{good}");
        }
        for bad in [
            "",
            "foo",
            "Foo=bar",
            "foo=bar=baz",
            "foo=",
            "foo=bar ,x",
            "@v=1",
            "t@=1",
            "1abc=1",
        ] {
            assert!(!valid_tracestate(bad), "{bad}");
        }
        let too_many = (0..33).map(|i| format!("k{i}=v")).collect::<Vec<_>>();
        assert!(!valid_tracestate(&too_many.join(",")));
        let too_long = (0..3)
            .map(|i| format!("k{i}={}", "v".repeat(200)))
            .collect::<Vec<_>>();
        assert!(!valid_tracestate(&too_long.join(",")));
    }

    #[test]
    fn a_tracestate_with_a_key_twice_is_dropped() {
        assert!(!valid_tracestate(
            "congo=t61,rojo=00f067aa0ba902b7,congo=t62"
        ));
        assert!(!valid_tracestate("t@vendor=1, t@vendor=1"));
        assert!(valid_tracestate("t@vendor=1,vendor=2,u@vendor=3"));
    }

    #[test]
    fn remote_parent_reads_both_headers() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(remote_parent(&headers), None);
        headers.insert(
            "traceparent",
            http::HeaderValue::from_static(
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
        );
        headers.insert("tracestate", http::HeaderValue::from_static("Bad"));
        let parent = remote_parent(&headers).expect("a valid traceparent");
        assert_eq!(parent.context.trace_id.to_string(), TRACE);
        assert_eq!(parent.trace_state, None);
        headers.insert("tracestate", http::HeaderValue::from_static("congo=t61"));
        let parent = remote_parent(&headers).expect("a valid traceparent");
        assert_eq!(parent.trace_state.as_deref(), Some("congo=t61"));
    }

    #[test]
    fn samplers_are_named_as_the_sdks_name_them() {
        let parent = |sampled| SpanContext {
            trace_id: TraceId([7; 16]),
            span_id: SpanId([1; 8]),
            sampled,
        };
        let new_trace = TraceId::random();
        let (default, warning) = Sampler::named("", None);
        assert_eq!(warning, None);
        assert!(default.samples(new_trace, None));
        assert!(!default.samples(new_trace, Some(&parent(false))));
        let (off, _) = Sampler::named("parentbased_always_off", None);
        assert!(!off.samples(new_trace, None));
        assert!(off.samples(new_trace, Some(&parent(true))));
        let (on, _) = Sampler::named("always_on", None);
        assert!(on.samples(new_trace, Some(&parent(false))));
        let (never, _) = Sampler::named("always_off", None);
        assert!(!never.samples(new_trace, Some(&parent(true))));
        let (unknown, warning) = Sampler::named("jaeger_remote", None);
        assert_eq!(unknown, default);
        assert!(warning.is_some());
        let (bad_ratio, warning) = Sampler::named("traceidratio", Some("1.5"));
        assert_eq!(bad_ratio, Sampler::named("always_on", None).0);
        assert!(warning.is_some());
    }

    #[test]
    fn a_ratio_keeps_its_share_of_traces_decided_by_the_trace_id() {
        let (tenth, _) = Sampler::named("traceidratio", Some("0.1"));
        let kept = (0..20_000)
            .filter(|_| tenth.samples(TraceId::random(), None))
            .count();
        assert!((1_600..2_400).contains(&kept), "kept {kept} of 20000");
        let low = TraceId([0xff; 16]);
        let mut high = [0xff; 16];
        high[8..].copy_from_slice(&[0; 8]);
        assert!(!tenth.samples(low, None));
        assert!(tenth.samples(TraceId(high), None));
    }
}
