//! Finished spans, and their OTLP encoding: an `ExportTraceServiceRequest` of one resource and
//! one instrumentation scope, both with the `schema_url` of the semantic conventions the spans
//! follow (opentelemetry/proto/collector/trace/v1, field numbers from the OTLP `.proto` files),
//! written straight from [`SpanRecord`]s. A span is a few fixed fields and static strings, so a
//! batch of them becomes bytes without the per-attribute allocations of building OTLP's message
//! structs first; `tests` decodes it with `opentelemetry-proto`.

use std::sync::Arc;

use bytes::{BufMut, Bytes};
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint};
use tonic::Code;

use super::context::{SpanId, TraceId};

/// A finished span.
#[derive(Debug)]
pub(super) struct SpanRecord {
    pub(super) trace_id: TraceId,
    pub(super) span_id: SpanId,
    pub(super) parent: Option<Parent>,
    pub(super) trace_state: Option<Arc<str>>,
    pub(super) start_unix_nanos: u64,
    pub(super) end_unix_nanos: u64,
    pub(super) kind: Kind,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Parent {
    pub(super) span_id: SpanId,
    /// The caller's span (from `traceparent`), not one of ours.
    pub(super) remote: bool,
}

/// What the span was: its name, kind and attributes follow from this.
#[derive(Debug)]
pub(super) enum Kind {
    /// A call served: SERVER, named `service/method`, with the RPC attributes of the semantic
    /// conventions v1.26.0.
    Call {
        service: &'static str,
        method: &'static str,
        /// False for a path the server does not serve (`unknown/unknown`).
        served: bool,
        code: Code,
    },
    /// Database work for a call: CLIENT, with `db.system` and `db.operation.name` (none for
    /// a connection that could not be had, which names its pool instead).
    Database {
        name: &'static str,
        system: &'static str,
        operation: Option<&'static str>,
        pool: Option<&'static str>,
        /// Set when the work failed: the status is Error, with this description.
        error: Option<&'static str>,
    },
}

/// The semantic conventions our spans and resource follow, as `schema_url` names them.
pub(super) const SCHEMA_URL: &str = "https://opentelemetry.io/schemas/1.26.0";

/// An attribute value: the OTLP `AnyValue`s our spans and resources use.
#[derive(Debug, Clone, Copy)]
pub(super) enum Value<'a> {
    Text(&'a str),
    Int(i64),
}

// Field numbers of the OTLP messages written here.
const REQUEST_RESOURCE_SPANS: u32 = 1;
const RESOURCE_SPANS_RESOURCE: u32 = 1;
const RESOURCE_SPANS_SCOPE_SPANS: u32 = 2;
const RESOURCE_SPANS_SCHEMA_URL: u32 = 3;
const RESOURCE_ATTRIBUTES: u32 = 1;
const SCOPE_SPANS_SCOPE: u32 = 1;
const SCOPE_SPANS_SPANS: u32 = 2;
const SCOPE_SPANS_SCHEMA_URL: u32 = 3;
const SCOPE_NAME: u32 = 1;
const SCOPE_VERSION: u32 = 2;
const SPAN_TRACE_ID: u32 = 1;
const SPAN_SPAN_ID: u32 = 2;
const SPAN_TRACE_STATE: u32 = 3;
const SPAN_PARENT_SPAN_ID: u32 = 4;
const SPAN_NAME: u32 = 5;
const SPAN_KIND: u32 = 6;
const SPAN_START: u32 = 7;
const SPAN_END: u32 = 8;
const SPAN_ATTRIBUTES: u32 = 9;
const SPAN_STATUS: u32 = 15;
const SPAN_FLAGS: u32 = 16;
const STATUS_MESSAGE: u32 = 2;
const STATUS_CODE: u32 = 3;
const KEY_VALUE_KEY: u32 = 1;
const KEY_VALUE_VALUE: u32 = 2;
const ANY_VALUE_STRING: u32 = 1;
const ANY_VALUE_INT: u32 = 3;

const KIND_SERVER: u64 = 2;
const KIND_CLIENT: u64 = 3;
const STATUS_ERROR: u64 = 2;
const FLAG_SAMPLED: u32 = 0x01;
const FLAG_HAS_IS_REMOTE: u32 = 0x100;
const FLAG_IS_REMOTE: u32 = 0x200;

/// Writes export requests for one resource and scope, reusing its buffers.
#[derive(Debug)]
pub(super) struct Encoder {
    /// The `resource` field of `ResourceSpans`, written once.
    resource: Vec<u8>,
    /// The `scope` field of `ScopeSpans`, written once.
    scope: Vec<u8>,
    /// A `schema_url` field (the same number in `ResourceSpans` and `ScopeSpans`), written once.
    schema_url: Vec<u8>,
    spans: Vec<u8>,
    span: Vec<u8>,
}

impl Encoder {
    pub(super) fn new(
        resource: &[(String, String)],
        scope_name: &str,
        scope_version: &str,
    ) -> Self {
        let mut attributes = Vec::new();
        for (key, value) in resource {
            attribute(
                &mut attributes,
                RESOURCE_ATTRIBUTES,
                key,
                Value::Text(value),
            );
        }
        let mut scope = Vec::new();
        text(&mut scope, SCOPE_NAME, scope_name);
        text(&mut scope, SCOPE_VERSION, scope_version);
        debug_assert_eq!(RESOURCE_SPANS_SCHEMA_URL, SCOPE_SPANS_SCHEMA_URL);
        Self {
            resource: delimited(RESOURCE_SPANS_RESOURCE, &attributes),
            scope: delimited(SCOPE_SPANS_SCOPE, &scope),
            schema_url: delimited(RESOURCE_SPANS_SCHEMA_URL, SCHEMA_URL.as_bytes()),
            spans: Vec::new(),
            span: Vec::new(),
        }
    }

    /// An `ExportTraceServiceRequest` holding `spans`.
    pub(super) fn request(&mut self, spans: &[SpanRecord]) -> Bytes {
        self.spans.clear();
        for record in spans {
            self.span.clear();
            write_span(&mut self.span, record);
            bytes(&mut self.spans, SCOPE_SPANS_SPANS, &self.span);
        }
        let scope_spans = self.scope.len() + self.spans.len() + self.schema_url.len();
        let resource_spans = self.resource.len()
            + delimited_len(RESOURCE_SPANS_SCOPE_SPANS, scope_spans)
            + self.schema_url.len();
        let mut out = Vec::with_capacity(delimited_len(REQUEST_RESOURCE_SPANS, resource_spans));
        header(&mut out, REQUEST_RESOURCE_SPANS, resource_spans);
        out.extend_from_slice(&self.resource);
        header(&mut out, RESOURCE_SPANS_SCOPE_SPANS, scope_spans);
        out.extend_from_slice(&self.scope);
        out.extend_from_slice(&self.spans);
        out.extend_from_slice(&self.schema_url);
        out.extend_from_slice(&self.schema_url);
        Bytes::from(out)
    }
}

fn write_span(out: &mut Vec<u8>, span: &SpanRecord) {
    bytes(out, SPAN_TRACE_ID, &span.trace_id.0);
    bytes(out, SPAN_SPAN_ID, &span.span_id.0);
    if let Some(state) = &span.trace_state {
        text(out, SPAN_TRACE_STATE, state);
    }
    let mut flags = FLAG_SAMPLED | FLAG_HAS_IS_REMOTE;
    if let Some(parent) = span.parent {
        bytes(out, SPAN_PARENT_SPAN_ID, &parent.span_id.0);
        if parent.remote {
            flags |= FLAG_IS_REMOTE;
        }
    }
    match span.kind {
        Kind::Call {
            service,
            method,
            served,
            code,
        } => {
            header(out, SPAN_NAME, service.len() + 1 + method.len());
            out.extend_from_slice(service.as_bytes());
            out.push(b'/');
            out.extend_from_slice(method.as_bytes());
            varint(out, SPAN_KIND, KIND_SERVER);
            times(out, span);
            attribute(out, SPAN_ATTRIBUTES, "rpc.system", Value::Text("grpc"));
            attribute(out, SPAN_ATTRIBUTES, "rpc.service", Value::Text(service));
            attribute(out, SPAN_ATTRIBUTES, "rpc.method", Value::Text(method));
            attribute(
                out,
                SPAN_ATTRIBUTES,
                "rpc.grpc.status_code",
                Value::Int(code as i64),
            );
            // A method the server does not have is the client's mistake, though the
            // conventions count its UNIMPLEMENTED as a server error.
            if served && is_server_error(code) {
                error_status(out, code.description());
            }
        }
        Kind::Database {
            name,
            system,
            operation,
            pool,
            error,
        } => {
            text(out, SPAN_NAME, name);
            varint(out, SPAN_KIND, KIND_CLIENT);
            times(out, span);
            attribute(out, SPAN_ATTRIBUTES, "db.system", Value::Text(system));
            if let Some(operation) = operation {
                attribute(
                    out,
                    SPAN_ATTRIBUTES,
                    "db.operation.name",
                    Value::Text(operation),
                );
            }
            if let Some(pool) = pool {
                attribute(
                    out,
                    SPAN_ATTRIBUTES,
                    "db.client.connection.pool.name",
                    Value::Text(pool),
                );
            }
            if let Some(error) = error {
                error_status(out, error);
            }
        }
    }
    encode_key(SPAN_FLAGS, WireType::ThirtyTwoBit, out);
    out.put_u32_le(flags);
}

/// A `Status` of code Error with `message`.
fn error_status(out: &mut Vec<u8>, message: &str) {
    let status = delimited_len(STATUS_MESSAGE, message.len()) + 2;
    header(out, SPAN_STATUS, status);
    text(out, STATUS_MESSAGE, message);
    varint(out, STATUS_CODE, STATUS_ERROR);
}

/// The codes the RPC semantic conventions count as server errors (span status Error); the
/// others are the caller's business.
pub(super) fn is_server_error(code: Code) -> bool {
    matches!(
        code,
        Code::Unknown
            | Code::DeadlineExceeded
            | Code::Unimplemented
            | Code::Internal
            | Code::Unavailable
            | Code::DataLoss
    )
}

fn times(out: &mut Vec<u8>, span: &SpanRecord) {
    encode_key(SPAN_START, WireType::SixtyFourBit, out);
    out.put_u64_le(span.start_unix_nanos);
    encode_key(SPAN_END, WireType::SixtyFourBit, out);
    out.put_u64_le(span.end_unix_nanos);
}

/// A `KeyValue` field.
fn attribute(out: &mut Vec<u8>, field: u32, key: &str, value: Value<'_>) {
    let value_len = match value {
        Value::Text(text) => delimited_len(ANY_VALUE_STRING, text.len()),
        Value::Int(int) => 1 + encoded_len_varint(int as u64),
    };
    header(
        out,
        field,
        delimited_len(KEY_VALUE_KEY, key.len()) + delimited_len(KEY_VALUE_VALUE, value_len),
    );
    text(out, KEY_VALUE_KEY, key);
    header(out, KEY_VALUE_VALUE, value_len);
    match value {
        Value::Text(value) => text(out, ANY_VALUE_STRING, value),
        Value::Int(value) => varint(out, ANY_VALUE_INT, value as u64),
    }
}

fn text(out: &mut Vec<u8>, field: u32, value: &str) {
    bytes(out, field, value.as_bytes());
}

fn bytes(out: &mut Vec<u8>, field: u32, value: &[u8]) {
    header(out, field, value.len());
    out.extend_from_slice(value);
}

fn varint(out: &mut Vec<u8>, field: u32, value: u64) {
    encode_key(field, WireType::Varint, out);
    encode_varint(value, out);
}

/// The key and length of a length-delimited field whose content follows.
fn header(out: &mut Vec<u8>, field: u32, len: usize) {
    encode_key(field, WireType::LengthDelimited, out);
    encode_varint(len as u64, out);
}

fn delimited(field: u32, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(delimited_len(field, content.len()));
    bytes(&mut out, field, content);
    out
}

/// The length of a length-delimited field (all ours have one-byte keys: field numbers < 16)
/// whose content is `len` bytes.
fn delimited_len(field: u32, len: usize) -> usize {
    debug_assert!(field < 16);
    1 + encoded_len_varint(len as u64) + len
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::{
        collector::trace::v1::ExportTraceServiceRequest,
        common::v1::{AnyValue, KeyValue, any_value},
        trace::v1::{Span, span::SpanKind, status::StatusCode},
    };
    use prost::Message as _;

    use super::*;

    fn call(code: Code, parent: Option<Parent>, trace_state: Option<&str>) -> SpanRecord {
        SpanRecord {
            trace_id: TraceId([0x4b; 16]),
            span_id: SpanId([0x11; 8]),
            parent,
            trace_state: trace_state.map(Arc::from),
            start_unix_nanos: 1_700_000_000_000_000_000,
            end_unix_nanos: 1_700_000_000_000_250_000,
            kind: Kind::Call {
                service: "school.v1.StudentService",
                method: "AssignCourse",
                served: true,
                code,
            },
        }
    }

    fn decoded(encoder: &mut Encoder, spans: &[SpanRecord]) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest::decode(encoder.request(spans)).expect("valid OTLP")
    }

    fn attributes(span: &Span) -> Vec<(String, Option<any_value::Value>)> {
        span.attributes
            .iter()
            .map(|KeyValue { key, value, .. }| {
                (
                    key.clone(),
                    value.clone().and_then(|AnyValue { value }| value),
                )
            })
            .collect()
    }

    fn text_value(value: &str) -> Option<any_value::Value> {
        Some(any_value::Value::StringValue(value.to_owned()))
    }

    #[test]
    fn a_batch_is_one_resource_and_scope_with_every_span() {
        let resource = [("service.name".to_owned(), "student-service".to_owned())];
        let mut encoder = Encoder::new(&resource, "student-service", "0.1.0");
        let remote = Parent {
            span_id: SpanId([0x22; 8]),
            remote: true,
        };
        let database = SpanRecord {
            span_id: SpanId([0x33; 8]),
            parent: Some(Parent {
                span_id: SpanId([0x11; 8]),
                remote: false,
            }),
            kind: Kind::Database {
                name: "assign_course",
                system: "sqlite",
                operation: Some("assign_course"),
                pool: None,
                error: None,
            },
            ..call(Code::Ok, None, None)
        };
        let request = decoded(
            &mut encoder,
            &[call(Code::Ok, Some(remote), Some("congo=t61")), database],
        );
        let [resource_spans] = &request.resource_spans[..] else {
            panic!("one resource: {request:?}")
        };
        assert_eq!(resource_spans.schema_url, SCHEMA_URL);
        assert_eq!(resource_spans.scope_spans[0].schema_url, SCHEMA_URL);
        let resource = resource_spans.resource.as_ref().expect("a resource");
        assert_eq!(resource.attributes[0].key, "service.name");
        let [scope_spans] = &resource_spans.scope_spans[..] else {
            panic!("one scope")
        };
        let scope = scope_spans.scope.as_ref().expect("a scope");
        assert_eq!(
            (scope.name.as_str(), scope.version.as_str()),
            ("student-service", "0.1.0")
        );
        let [server, client] = &scope_spans.spans[..] else {
            panic!("two spans")
        };

        assert_eq!(server.name, "school.v1.StudentService/AssignCourse");
        assert_eq!(server.kind, SpanKind::Server as i32);
        assert_eq!(server.trace_id, [0x4b; 16]);
        assert_eq!(server.span_id, [0x11; 8]);
        assert_eq!(server.parent_span_id, [0x22; 8]);
        assert_eq!(server.trace_state, "congo=t61");
        assert_eq!(server.flags, 0x301);
        assert_eq!(server.start_time_unix_nano, 1_700_000_000_000_000_000);
        assert_eq!(server.end_time_unix_nano, 1_700_000_000_000_250_000);
        assert_eq!(
            attributes(server),
            [
                ("rpc.system".to_owned(), text_value("grpc")),
                (
                    "rpc.service".to_owned(),
                    text_value("school.v1.StudentService")
                ),
                ("rpc.method".to_owned(), text_value("AssignCourse")),
                (
                    "rpc.grpc.status_code".to_owned(),
                    Some(any_value::Value::IntValue(0))
                ),
            ]
        );
        assert_eq!(server.status, None);

        assert_eq!(client.name, "assign_course");
        assert_eq!(client.kind, SpanKind::Client as i32);
        assert_eq!(client.parent_span_id, [0x11; 8]);
        assert_eq!(client.flags, 0x101);
        assert_eq!(client.trace_state, "");
        assert_eq!(client.status, None);
        assert_eq!(
            attributes(client),
            [
                ("db.system".to_owned(), text_value("sqlite")),
                ("db.operation.name".to_owned(), text_value("assign_course")),
            ]
        );
    }

    #[test]
    fn only_server_errors_set_the_error_status() {
        let mut encoder = Encoder::new(&[], "s", "v");
        let spans: Vec<SpanRecord> = [Code::NotFound, Code::Unavailable, Code::Internal]
            .into_iter()
            .map(|code| call(code, None, None))
            .collect();
        let request = decoded(&mut encoder, &spans);
        let spans = &request.resource_spans[0].scope_spans[0].spans;
        assert_eq!(spans[0].status, None);
        assert_eq!(spans[0].parent_span_id, Vec::<u8>::new());
        for (span, code) in spans[1..].iter().zip([Code::Unavailable, Code::Internal]) {
            let status = span.status.as_ref().expect("an error status");
            assert_eq!(status.code, StatusCode::Error as i32);
            assert_eq!(status.message, code.description());
            let code_attribute = attributes(span).pop().expect("attributes");
            assert_eq!(
                code_attribute.1,
                Some(any_value::Value::IntValue(code as i64))
            );
        }
        // A path the server does not serve: UNIMPLEMENTED is the client's mistake there.
        let unserved = SpanRecord {
            kind: Kind::Call {
                service: "unknown",
                method: "unknown",
                served: false,
                code: Code::Unimplemented,
            },
            ..call(Code::Ok, None, None)
        };
        let request = decoded(&mut encoder, &[unserved]);
        assert_eq!(
            request.resource_spans[0].scope_spans[0].spans[0].status,
            None
        );
        // The encoder's buffers are reused: a second request holds only its own spans.
        let again = decoded(&mut encoder, &spans_of(1));
        assert_eq!(again.resource_spans[0].scope_spans[0].spans.len(), 1);
    }

    #[test]
    fn a_failed_database_span_has_the_error_status_and_names_its_pool_when_it_has_no_operation() {
        let mut encoder = Encoder::new(&[], "s", "v");
        let failed = SpanRecord {
            kind: Kind::Database {
                name: "acquire connection",
                system: "postgresql",
                operation: None,
                pool: Some("postgres"),
                error: Some("the database is unavailable"),
            },
            ..call(Code::Ok, None, None)
        };
        let request = decoded(&mut encoder, &[failed]);
        let span = &request.resource_spans[0].scope_spans[0].spans[0];
        let status = span.status.as_ref().expect("an error status");
        assert_eq!(status.code, StatusCode::Error as i32);
        assert_eq!(status.message, "the database is unavailable");
        assert_eq!(
            attributes(span),
            [
                ("db.system".to_owned(), text_value("postgresql")),
                (
                    "db.client.connection.pool.name".to_owned(),
                    text_value("postgres")
                ),
            ]
        );
    }

    fn spans_of(count: usize) -> Vec<SpanRecord> {
        (0..count).map(|_| call(Code::Ok, None, None)).collect()
    }

    #[test]
    fn large_batches_and_long_values_keep_their_lengths() {
        let long = "x".repeat(300);
        let resource = [("deployment.environment".to_owned(), long.clone())];
        let mut encoder = Encoder::new(&resource, "student-service", "0.1.0");
        let request = decoded(&mut encoder, &spans_of(512));
        assert_eq!(request.resource_spans[0].scope_spans[0].spans.len(), 512);
        let value = &request.resource_spans[0]
            .resource
            .as_ref()
            .expect("resource")
            .attributes[0];
        assert_eq!(value.value.clone().and_then(|v| v.value), text_value(&long));
    }
}
