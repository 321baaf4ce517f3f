//! One export request to the collector, tried again as the OTLP specification says. Over
//! OTLP/gRPC it goes through `opentelemetry-proto`'s generated `TraceServiceClient`; over
//! OTLP/HTTP (`http/protobuf`) the same protobuf message is POSTed to the collector's
//! `/v1/traces` on a hyper HTTP/1.1 connection kept between exports. Both gzip the request when
//! asked, and both hand back the collector's `partial_success`, so that spans it rejected are
//! counted as dropped.

use std::{io::Write as _, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
    trace_service_client::TraceServiceClient,
};
use prost::Message as _;
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject as _};
use tokio::{net::TcpStream, time::Instant};
use tokio_rustls::TlsConnector;
use tonic::{codec::CompressionEncoding, metadata::MetadataMap, transport::Channel};
use tonic_types::StatusExt as _;

/// Tries of one batch at most, the first included: a collector still failing after that is not
/// coming back soon, and the batch's spans are better dropped than holding the queue.
pub(super) const MAX_ATTEMPTS: u32 = 5;
/// The wait before the first retry; it doubles at each retry, up to `MAX_BACKOFF`, within 20%
/// either way so that replicas that failed together do not retry together.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// A collector's answer is a few bytes; more than this is not one.
const MAX_RESPONSE_BYTES: usize = 1 << 20;

/// The collector's client: one export request at a time.
pub(super) struct Client {
    pub(super) transport: Transport,
    pub(super) timeout: Duration,
}

pub(super) enum Transport {
    Grpc {
        client: TraceServiceClient<Channel>,
        headers: MetadataMap,
    },
    Http(Http),
}

impl Client {
    /// Delivers `request` in at most `attempts` tries, retrying as the OTLP specification says,
    /// all within the export timeout. What the collector said it rejected, if anything, or the
    /// last error when it gives up.
    pub(super) async fn export(
        &mut self,
        request: ExportTraceServiceRequest,
        attempts: u32,
    ) -> Result<Option<ExportTracePartialSuccess>, Failed> {
        let deadline = Instant::now() + self.timeout;
        // The HTTP body is encoded (and compressed) once for all the tries.
        let body = match &self.transport {
            Transport::Http(http) => Some(http.body(&request)),
            Transport::Grpc { .. } => None,
        };
        let mut backoff = FIRST_BACKOFF;
        let mut attempt = 1;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let sent = match (&mut self.transport, &body) {
                (Transport::Grpc { client, headers }, _) => {
                    grpc(client, headers, request.clone(), left).await
                }
                (Transport::Http(http), Some(body)) => http.send(body.clone(), left).await,
                (Transport::Http(http), None) => http.send(http.body(&request), left).await,
            };
            let error = match sent {
                Ok(response) => return Ok(response.partial_success),
                Err(error) => error,
            };
            let Some(wait) = error.wait(jittered(backoff)) else {
                return Err(error);
            };
            if attempt >= attempts || Instant::now() + wait >= deadline {
                return Err(error);
            }
            tokio::time::sleep(wait).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
            attempt += 1;
        }
    }
}

/// One OTLP/gRPC export, answered within `timeout`.
async fn grpc(
    client: &mut TraceServiceClient<Channel>,
    headers: &MetadataMap,
    message: ExportTraceServiceRequest,
    timeout: Duration,
) -> Result<ExportTraceServiceResponse, Failed> {
    let mut request = tonic::Request::new(message);
    *request.metadata_mut() = headers.clone();
    request.set_timeout(timeout);
    match tokio::time::timeout(timeout, client.export(request)).await {
        Ok(response) => Ok(response?.into_inner()),
        Err(_) => {
            Err(tonic::Status::deadline_exceeded("the collector did not answer in time").into())
        }
    }
}

/// The OTLP/gRPC client, gzipping its requests when `gzip`.
pub(super) fn grpc_client(channel: Channel, gzip: bool) -> TraceServiceClient<Channel> {
    let client = TraceServiceClient::new(channel);
    if gzip {
        client.send_compressed(CompressionEncoding::Gzip)
    } else {
        client
    }
}

/// An OTLP/HTTP collector: `http/protobuf` POSTs to one URL, on one HTTP/1.1 connection opened
/// when first needed and opened again when it breaks.
pub(super) struct Http {
    url: Uri,
    host: String,
    port: u16,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    headers: HeaderMap,
    gzip: bool,
    connection: Option<SendRequest<Full<Bytes>>>,
}

/// A request body and whether it is gzipped.
#[derive(Clone)]
pub(super) struct Body {
    bytes: Bytes,
    gzipped: bool,
}

impl Http {
    /// The client for the collector at `url` (the whole URL, `/v1/traces` included), trusting
    /// the CA certificate in the PEM file `certificate` for an `https` URL.
    pub(super) fn new(
        url: &str,
        certificate: Option<&str>,
        headers: MetadataMap,
        gzip: bool,
    ) -> Result<Self, String> {
        let bad = |why: &dyn std::fmt::Display| format!("bad OTLP/HTTP endpoint {url:?}: {why}");
        let url: Uri = url.parse().map_err(|err| bad(&err))?;
        let secure = match url.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(bad(&"OTLP/HTTP takes an http:// or https:// URL")),
        };
        // `[::1]` is written with brackets in a URL, not in an address.
        let host = url
            .host()
            .ok_or_else(|| bad(&"no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = url.port_u16().unwrap_or(if secure { 443 } else { 80 });
        let tls = if secure {
            let Some(path) = certificate else {
                return Err(
                    "an https OTLP endpoint needs OTEL_EXPORTER_OTLP_CERTIFICATE (the CA \
                            certificate to trust, PEM): the service carries no root certificates"
                        .into(),
                );
            };
            let name = ServerName::try_from(host.clone()).map_err(|err| bad(&err))?;
            Some((tls_connector(path)?, name))
        } else {
            None
        };
        Ok(Self {
            url,
            host,
            port,
            tls,
            headers: headers.into_headers(),
            gzip,
            connection: None,
        })
    }

    /// `request` as the body of a POST: protobuf, gzipped when asked.
    fn body(&self, request: &ExportTraceServiceRequest) -> Body {
        let bytes = request.encode_to_vec();
        if self.gzip {
            let mut encoder =
                flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            // Writing to memory cannot fail; were it to, the body goes as it is.
            if let Ok(gzipped) = encoder.write_all(&bytes).and_then(|()| encoder.finish()) {
                return Body {
                    bytes: gzipped.into(),
                    gzipped: true,
                };
            }
        }
        Body {
            bytes: bytes.into(),
            gzipped: false,
        }
    }

    /// One OTLP/HTTP export, answered within `timeout`.
    async fn send(
        &mut self,
        body: Body,
        timeout: Duration,
    ) -> Result<ExportTraceServiceResponse, Failed> {
        match tokio::time::timeout(timeout, self.exchange(body)).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(error)) => {
                // A connection that failed us is not trusted with the next try.
                self.connection = None;
                Err(error)
            }
            Err(_) => {
                self.connection = None;
                Err(Failed::retryable(
                    "the collector did not answer in time".into(),
                    None,
                ))
            }
        }
    }

    async fn exchange(&mut self, body: Body) -> Result<ExportTraceServiceResponse, Failed> {
        let request = self.request(body)?;
        let connection = match self.connection.take() {
            Some(connection) if !connection.is_closed() => connection,
            _ => self.connect().await?,
        };
        let connection = self.connection.insert(connection);
        connection
            .ready()
            .await
            .map_err(|err| unreachable_collector(&err))?;
        let response = connection
            .send_request(request)
            .await
            .map_err(|err| unreachable_collector(&err))?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|err| {
                Failed::retryable(format!("reading the collector's answer: {err}"), None)
            })?
            .to_bytes();
        if status.is_success() {
            // An answer that is not an ExportTraceServiceResponse still says the spans arrived.
            return Ok(ExportTraceServiceResponse::decode(body).unwrap_or_default());
        }
        Err(http_failed(status, retry_after, &body))
    }

    fn request(&self, body: Body) -> Result<http::Request<Full<Bytes>>, Failed> {
        let path = self.url.path_and_query().map_or("/", |path| path.as_str());
        let authority = self
            .url
            .authority()
            .map_or("", |authority| authority.as_str());
        let mut request = http::Request::post(path)
            .header(header::HOST, authority)
            .header(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/x-protobuf"),
            )
            .body(Full::new(body.bytes))
            .map_err(|err| Failed::fatal(format!("cannot make the export request: {err}")))?;
        let headers = request.headers_mut();
        for (name, value) in &self.headers {
            headers.insert(name, value.clone());
        }
        if body.gzipped {
            headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }
        Ok(request)
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, Failed> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|err| unreachable_collector(&err))?;
        // Nagle would hold a small request back waiting for the end of the previous one.
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => handshake(TokioIo::new(tcp)).await,
            Some((connector, name)) => {
                let tls = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|err| unreachable_collector(&err))?;
                handshake(TokioIo::new(tls)).await
            }
        }
    }
}

async fn handshake<I>(io: I) -> Result<SendRequest<Full<Bytes>>, Failed>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|err| unreachable_collector(&err))?;
    // The connection ends when its sender is dropped (at the next connect, or at shutdown).
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

/// A TLS connector trusting the certificates in the PEM file at `path`.
fn tls_connector(path: &str) -> Result<TlsConnector, String> {
    let pem = std::fs::read(path).map_err(|err| format!("cannot read {path}: {err}"))?;
    let mut roots = rustls::RootCertStore::empty();
    for certificate in CertificateDer::pem_slice_iter(&pem) {
        let certificate = certificate.map_err(|err| format!("{path}: {err}"))?;
        roots
            .add(certificate)
            .map_err(|err| format!("{path}: {err}"))?;
    }
    if roots.is_empty() {
        return Err(format!("{path} holds no certificate"));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| format!("TLS for the OTLP endpoint: {err}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsConnector::from(Arc::new(config)))
}

/// Why an export failed, and whether the OTLP specification lets it be tried again.
#[derive(Debug)]
pub(super) struct Failed {
    why: String,
    /// `None`: not again. `Some(advised)`: again, after at least the collector's `advised` wait
    /// when it gave one.
    retry: Option<Option<Duration>>,
}

impl Failed {
    fn retryable(why: String, advised: Option<Duration>) -> Self {
        Self {
            why,
            retry: Some(advised),
        }
    }

    fn fatal(why: String) -> Self {
        Self { why, retry: None }
    }

    /// How long to wait before trying again, `None` when it must not be: `backoff`, or the
    /// collector's advice when that is longer.
    pub(super) fn wait(&self, backoff: Duration) -> Option<Duration> {
        self.retry
            .map(|advised| advised.map_or(backoff, |advised| advised.max(backoff)))
    }
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.why)
    }
}

/// The OTLP/gRPC retryable codes; RESOURCE_EXHAUSTED only when the collector says when to come
/// back (a `google.rpc.RetryInfo` detail).
impl From<tonic::Status> for Failed {
    fn from(status: tonic::Status) -> Self {
        use tonic::Code;
        let advised = status
            .get_details_retry_info()
            .and_then(|info| info.retry_delay);
        let why = status.to_string();
        match status.code() {
            Code::Cancelled
            | Code::DeadlineExceeded
            | Code::Aborted
            | Code::OutOfRange
            | Code::Unavailable
            | Code::DataLoss => Self::retryable(why, advised),
            Code::ResourceExhausted if advised.is_some() => Self::retryable(why, advised),
            _ => Self::fatal(why),
        }
    }
}

/// An OTLP/HTTP error answer: 429, 502, 503 and 504 may be tried again (after `Retry-After`
/// when given), as the specification says; the others may not. The body, a `google.rpc.Status`,
/// says why.
fn http_failed(status: StatusCode, retry_after: Option<Duration>, body: &[u8]) -> Failed {
    let message = tonic_types::Status::decode(body)
        .ok()
        .map(|status| status.message)
        .filter(|message| !message.is_empty());
    let why = match message {
        Some(message) => format!("the collector answered HTTP {status}: {message}"),
        None => format!("the collector answered HTTP {status}"),
    };
    match status.as_u16() {
        429 | 502 | 503 | 504 => Failed::retryable(why, retry_after),
        _ => Failed::fatal(why),
    }
}

/// A collector that cannot be reached, or broke the connection: worth another try.
fn unreachable_collector(err: &dyn std::fmt::Display) -> Failed {
    Failed::retryable(format!("cannot reach the collector: {err}"), None)
}

/// `backoff`, give or take 20%.
fn jittered(backoff: Duration) -> Duration {
    backoff.mul_f64(0.8 + 0.4 * fastrand::f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exports_are_retried_on_the_codes_the_otlp_specification_calls_retryable() {
        use tonic::Code;
        use tonic_types::{ErrorDetails, StatusExt};
        let backoff = Duration::from_secs(1);
        let wait = |status: tonic::Status| Failed::from(status).wait(backoff);
        let retryable = [
            Code::Cancelled,
            Code::DeadlineExceeded,
            Code::Aborted,
            Code::OutOfRange,
            Code::Unavailable,
            Code::DataLoss,
        ];
        for code in retryable {
            let error = tonic::Status::new(code, "try again");
            assert_eq!(wait(error), Some(backoff), "{code:?}");
        }
        for code in [
            Code::Unknown,
            Code::InvalidArgument,
            Code::NotFound,
            Code::PermissionDenied,
            Code::Unauthenticated,
            Code::FailedPrecondition,
            Code::Unimplemented,
            Code::Internal,
            Code::ResourceExhausted,
        ] {
            let error = tonic::Status::new(code, "no");
            assert_eq!(wait(error), None, "{code:?}");
        }
        // RetryInfo makes RESOURCE_EXHAUSTED retryable, and its delay is waited at least.
        let throttled = |code, seconds| {
            let details = ErrorDetails::with_retry_info(Some(Duration::from_secs(seconds)));
            tonic::Status::with_error_details(code, "slow down", details)
        };
        let exhausted = throttled(Code::ResourceExhausted, 3);
        assert_eq!(wait(exhausted), Some(Duration::from_secs(3)));
        assert_eq!(wait(throttled(Code::Unavailable, 0)), Some(backoff));
        assert_eq!(wait(throttled(Code::InvalidArgument, 3)), None);
    }

    #[test]
    fn http_exports_are_retried_on_the_statuses_the_otlp_specification_calls_retryable() {
        let backoff = Duration::from_secs(1);
        let wait = |code: u16, retry_after| {
            let status = StatusCode::from_u16(code).expect("a status code");
            http_failed(status, retry_after, b"").wait(backoff)
        };
        for code in [429, 502, 503, 504] {
            assert_eq!(wait(code, None), Some(backoff), "{code}");
        }
        assert_eq!(
            wait(503, Some(Duration::from_secs(7))),
            Some(Duration::from_secs(7))
        );
        for code in [400, 401, 403, 404, 413, 500, 501] {
            assert_eq!(wait(code, Some(Duration::from_secs(7))), None, "{code}");
        }
        // The collector's reason, a google.rpc.Status in the body, is in the error.
        let body = tonic_types::Status {
            code: 3,
            message: "spans too large".into(),
            details: Vec::new(),
        }
        .encode_to_vec();
        let failed = http_failed(StatusCode::BAD_REQUEST, None, &body);
        assert!(failed.to_string().contains("spans too large"), "{failed}");
    }

    #[test]
    fn backoff_is_jittered_within_a_fifth() {
        for _ in 0..1000 {
            let wait = jittered(Duration::from_secs(1));
            assert!(
                wait >= Duration::from_millis(800) && wait <= Duration::from_millis(1200),
                "{wait:?}"
            );
        }
    }

    #[test]
    fn an_http_endpoint_must_be_an_http_or_https_url_and_https_needs_a_certificate() {
        let http = |url| Http::new(url, None, MetadataMap::new(), false).map(|_| ());
        assert!(http("http://collector:4318/v1/traces").is_ok());
        assert!(http("http://[::1]:4318/v1/traces").is_ok());
        let refused = http("https://collector:4318/v1/traces").expect_err("no CA");
        assert!(
            refused.contains("OTEL_EXPORTER_OTLP_CERTIFICATE"),
            "{refused}"
        );
        let refused = http("collector:4318").expect_err("no scheme");
        assert!(refused.contains("http:// or https://"), "{refused}");
    }
}
