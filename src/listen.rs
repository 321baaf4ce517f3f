//! Accepting connections, for the gRPC port and the metrics port: what a connection must do, and
//! by when, before the server spends more on it.
//!
//! A connection that opens and then sends nothing, or only part of what it must (half an HTTP/2
//! preface, a request line without its blank line, a TLS ClientHello and no more), used to stay
//! open forever. Enough of them reached the file-descriptor limit: new gRPC connections timed out,
//! and every `accept` failed with EMFILE at once, which tonic's accept loop retried without pause
//! (0.35-0.6 of a core while idle) and the metrics listener logged ten times a second. So:
//! - every accept that fails for lack of descriptors or memory backs off (a few milliseconds,
//!   doubling to a second) and warns at most once per [`WARN_EVERY`];
//! - within `--handshake-timeout` of being accepted, a gRPC connection must finish its TLS
//!   handshake and deliver the HTTP/2 preface and the first frame header ([`FIRST_BYTES`],
//!   counted after TLS), or it is closed (hyper would wait for them forever); the metrics port
//!   gets hyper's header read timeout, with the same value, for the same reason;
//! - a TLS handshake that fails is logged (at most once per [`WARN_EVERY`], with the reason: a
//!   client certificate without X.509 v3 extensions fails here, and its client sees only
//!   "broken pipe").
//!
//! After that, a connection is the HTTP/2 server's, whose keepalive PINGs find peers that
//! vanished.

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex, PoisonError},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::mpsc,
    time::Sleep,
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

use crate::security::{ClientIdentity, Current};

/// The HTTP/2 client preface (24 bytes) and the header of the SETTINGS frame that must follow.
const FIRST_BYTES: usize = 24 + 9;
/// The longest wait between accepts while descriptors or memory run out.
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// Repeated warnings (accept failures, failed handshakes) are logged at most this often.
pub const WARN_EVERY: Duration = Duration::from_secs(10);
/// Connections accepted and through TLS, not yet taken by the HTTP/2 server.
const READY_QUEUE: usize = 64;

/// Accepts connections, backing off while the process cannot take more.
#[derive(Debug)]
pub struct Acceptor {
    listener: TcpListener,
    name: &'static str,
    warned: RateLimit,
}

impl Acceptor {
    /// `name` says which listener, in warnings.
    pub fn new(listener: TcpListener, name: &'static str) -> Self {
        Acceptor {
            listener,
            name,
            warned: RateLimit::default(),
        }
    }

    /// The next connection. Errors that concern one connection (reset before it was accepted)
    /// are skipped; running out of descriptors or memory waits and tries again.
    pub async fn next(&mut self) -> (TcpStream, SocketAddr) {
        let mut backoff = Duration::from_millis(5);
        loop {
            match self.listener.accept().await {
                Ok(accepted) => return accepted,
                Err(err) if is_exhaustion(&err) => {
                    if let Some(suppressed) = self.warned.allow() {
                        tracing::warn!(
                            listener = self.name,
                            error = %err,
                            suppressed,
                            "cannot accept connections: out of file descriptors or memory; \
                             retrying with backoff"
                        );
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                Err(err) => tracing::debug!(listener = self.name, error = %err, "accept failed"),
            }
        }
    }
}

/// EMFILE, ENFILE, ENOBUFS, ENOMEM: the process or the system is out of something, and accepting
/// again at once would fail the same way.
fn is_exhaustion(err: &io::Error) -> bool {
    matches!(err.raw_os_error(), Some(23 | 24 | 105 | 12))
}

/// The gRPC port's connections, through TLS when `tls` is set (each with the settings current
/// when it arrives), each with `timeout` to finish TLS and send its first bytes, for
/// `serve_with_incoming`. The listener closes when the stream is dropped (the server stops
/// accepting at shutdown).
pub fn grpc_incoming(
    listener: TcpListener,
    tls: Option<Arc<Current<rustls::ServerConfig>>>,
    timeout: Duration,
) -> ReceiverStream<io::Result<Connection>> {
    let (ready, incoming) = mpsc::channel(READY_QUEUE);
    let mut acceptor = Acceptor::new(listener, "grpc");
    let failed_handshakes = Arc::new(Mutex::new(RateLimit::default()));
    tokio::spawn(async move {
        loop {
            let (stream, peer) = tokio::select! {
                accepted = acceptor.next() => accepted,
                () = ready.closed() => return,
            };
            configure(&stream);
            let info = PeerInfo {
                remote_addr: peer,
                identity: None,
            };
            let deadline = tokio::time::Instant::now() + timeout;
            let Some(tls) = tls.as_ref().map(|tls| TlsAcceptor::from(tls.get())) else {
                let connection = Connection::new(Stream::Plain(stream), info, deadline);
                if ready.send(Ok(connection)).await.is_err() {
                    return;
                }
                continue;
            };
            let (ready, failed_handshakes) = (ready.clone(), failed_handshakes.clone());
            tokio::spawn(async move {
                let handshake = tokio::time::timeout_at(deadline, tls.accept(stream)).await;
                let failure = match handshake {
                    Ok(Ok(stream)) => {
                        let info = PeerInfo {
                            identity: client_identity(&stream),
                            ..info
                        };
                        let stream = Stream::Tls(Box::new(stream));
                        let _ = ready
                            .send(Ok(Connection::new(stream, info, deadline)))
                            .await;
                        return;
                    }
                    // Closed before the handshake: a TCP health check, a port scan. Not worth a
                    // warning, and it would use up the one that a real failure may need.
                    Ok(Err(err)) if err.kind() == io::ErrorKind::UnexpectedEof => {
                        tracing::debug!(%peer, "connection closed during the TLS handshake");
                        return;
                    }
                    Ok(Err(err)) => err.to_string(),
                    Err(_) => format!("not finished within {timeout:?}"),
                };
                let allowed = failed_handshakes
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .allow();
                if let Some(suppressed) = allowed {
                    tracing::warn!(%peer, reason = failure, suppressed, "TLS handshake failed");
                }
            });
        }
    });
    ReceiverStream::new(incoming)
}

/// Small responses go out at once (no Nagle delay: a unary response is written as headers,
/// body and trailers, and waiting to coalesce them costs up to 40 ms per call), and TCP
/// keepalive notices peers that vanished without closing.
fn configure(stream: &TcpStream) {
    let _ = stream.set_nodelay(true);
    let keepalive = socket2::TcpKeepalive::new().with_time(Duration::from_secs(60));
    let _ = socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive);
}

/// The identity a client certificate gives, when the client presented one.
fn client_identity(stream: &TlsStream<TcpStream>) -> Option<Arc<ClientIdentity>> {
    let certificate = stream.get_ref().1.peer_certificates()?.first()?;
    ClientIdentity::of_certificate(certificate).map(Arc::new)
}

/// What every request of a connection knows about its peer (in the request's extensions).
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub remote_addr: SocketAddr,
    /// Who the client certificate names, with mutual TLS.
    pub identity: Option<Arc<ClientIdentity>>,
}

/// One accepted gRPC connection, plaintext or TLS.
#[derive(Debug)]
pub struct Connection {
    stream: FirstBytes<Stream>,
    info: PeerInfo,
}

impl Connection {
    /// `deadline`: for the first bytes.
    fn new(stream: Stream, info: PeerInfo, deadline: tokio::time::Instant) -> Self {
        Connection {
            stream: FirstBytes::new(stream, deadline),
            info,
        }
    }
}

impl Connected for Connection {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

#[derive(Debug)]
enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// Fails reads with TimedOut when [`FIRST_BYTES`] have not arrived by the deadline; after that,
/// reads and writes go straight through.
#[derive(Debug)]
struct FirstBytes<S> {
    inner: S,
    /// Until the first bytes are in.
    deadline: Option<Pin<Box<Sleep>>>,
    received: usize,
}

impl<S> FirstBytes<S> {
    fn new(inner: S, deadline: tokio::time::Instant) -> Self {
        FirstBytes {
            inner,
            deadline: Some(Box::pin(tokio::time::sleep_until(deadline))),
            received: 0,
        }
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let stream = &mut this.stream;
        let before = buf.filled().len();
        let read = match &mut stream.inner {
            Stream::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
        };
        let Some(deadline) = &mut stream.deadline else {
            return read;
        };
        stream.received += buf.filled().len() - before;
        if stream.received >= FIRST_BYTES {
            stream.deadline = None;
            return read;
        }
        match read {
            Poll::Pending if deadline.as_mut().poll(cx).is_ready() => {
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the HTTP/2 preface did not arrive in time",
                )))
            }
            read => read,
        }
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().stream.inner {
            Stream::Plain(tcp) => Pin::new(tcp).poll_write(cx, buf),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().stream.inner {
            Stream::Plain(tcp) => Pin::new(tcp).poll_write_vectored(cx, bufs),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.stream.inner {
            Stream::Plain(tcp) => tcp.is_write_vectored(),
            Stream::Tls(tls) => tls.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream.inner {
            Stream::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream.inner {
            Stream::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Lets one warning through per [`WARN_EVERY`], counting those it held back.
#[derive(Debug, Default)]
struct RateLimit {
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimit {
    /// `Some(how many were suppressed since the last one)` when a warning may be logged now.
    fn allow(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self.last.is_some_and(|last| now - last < WARN_EVERY) {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// Raises the soft limit on open files to the hard limit (systemd and many shells start services
/// at 1,024, while the hard limit is often 500,000 or more): the number of connections the
/// server can hold is bounded by it. Returns the limits before and after, or why it could not.
pub fn raise_open_files_limit() -> Result<(u64, u64), io::Error> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let (Some(soft), Some(hard)) = (limit.current, limit.maximum) else {
        // Unlimited already.
        return Ok((u64::MAX, u64::MAX));
    };
    if soft >= hard {
        return Ok((soft, soft));
    }
    let raised = rustix::process::Rlimit {
        current: Some(hard),
        maximum: Some(hard),
    };
    setrlimit(Resource::Nofile, raised)?;
    Ok((soft, hard))
}
