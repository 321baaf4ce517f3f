//! gRPC over a bare HTTP/2 connection (the `h2` crate): any bytes as the request body and any
//! headers, past the generated client's encoding and its own timers.

use std::net::SocketAddr;

use bytes::Bytes;
use http::HeaderMap;
use tokio::net::TcpStream;

/// One HTTP/2 connection to the server.
#[derive(Clone)]
pub(crate) struct RawClient {
    send: h2::client::SendRequest<Bytes>,
    authority: String,
}

/// What came back for one call.
#[derive(Debug)]
pub(crate) struct RawReply {
    /// `grpc-status`, from the headers (trailers-only) or the trailers; `None` if neither had one.
    pub(crate) status: Option<i32>,
    /// `grpc-message`, still percent-encoded.
    pub(crate) message: String,
}

impl RawClient {
    pub(crate) async fn connect(address: SocketAddr) -> RawClient {
        let tcp = TcpStream::connect(address).await.expect("connect");
        tcp.set_nodelay(true).expect("nodelay");
        let (send, connection) = h2::client::handshake(tcp).await.expect("HTTP/2 handshake");
        tokio::spawn(async move {
            // Ends when the server closes the connection or every handle is dropped.
            let _ = connection.await;
        });
        RawClient {
            send,
            authority: address.to_string(),
        }
    }

    /// Sends `body` as the whole request body of a call to `path` (`/package.Service/Method`)
    /// with the standard gRPC headers plus `headers`, and reads the reply to its end.
    pub(crate) async fn call(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<RawReply, h2::Error> {
        self.send(path, headers, body, true).await
    }

    /// Like `call`, but leaves the request stream open after `body`, as a client that stalls
    /// halfway through its request would.
    pub(crate) async fn call_unfinished(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<RawReply, h2::Error> {
        self.send(path, headers, body, false).await
    }

    async fn send(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
        end_of_stream: bool,
    ) -> Result<RawReply, h2::Error> {
        let mut send = self.send.clone().ready().await?;
        let mut request = http::Request::post(format!("http://{}{path}", self.authority))
            .header("content-type", "application/grpc")
            .header("te", "trailers");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(()).expect("a valid request head");
        let (response, mut stream) = send.send_request(request, false)?;
        stream.send_data(body, end_of_stream)?;
        let (head, mut body) = response.await?.into_parts();
        if let Some(status) = grpc_status(&head.headers) {
            return Ok(RawReply {
                status: Some(status),
                message: grpc_message(&head.headers),
            });
        }
        while let Some(chunk) = body.data().await {
            let chunk = chunk?;
            let _ = body.flow_control().release_capacity(chunk.len());
        }
        let trailers = body.trailers().await?.unwrap_or_default();
        Ok(RawReply {
            status: grpc_status(&trailers),
            message: grpc_message(&trailers),
        })
    }
}

fn grpc_status(headers: &HeaderMap) -> Option<i32> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

fn grpc_message(headers: &HeaderMap) -> String {
    headers
        .get("grpc-message")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// A call whose request was begun and never finished, on a connection of its own.
pub(crate) struct Unfinished {
    connection: tokio::task::JoinHandle<()>,
    // Held open: dropping them would reset the stream instead.
    _stream: h2::SendStream<Bytes>,
    _response: h2::client::ResponseFuture,
}

impl Unfinished {
    /// Starts a call to `path` with `body` as the beginning of its request.
    pub(crate) async fn start(address: SocketAddr, path: &str, body: Bytes) -> Unfinished {
        let tcp = TcpStream::connect(address).await.expect("connect");
        let (send, connection) = h2::client::handshake(tcp).await.expect("HTTP/2 handshake");
        let connection = tokio::spawn(async move {
            let _ = connection.await;
        });
        let mut send = send.ready().await.expect("ready to send");
        let request = http::Request::post(format!("http://{address}{path}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .expect("a valid request head");
        let (response, mut stream) = send.send_request(request, false).expect("request sent");
        stream.send_data(body, false).expect("body sent");
        Unfinished {
            connection,
            _stream: stream,
            _response: response,
        }
    }

    /// Closes the connection mid-request, as a client that crashed or lost its network would.
    pub(crate) fn close_connection(self) {
        self.connection.abort();
    }
}

/// A gRPC frame: the compressed flag, the declared length (big-endian), then `payload`.
pub(crate) fn frame(flag: u8, declared_len: u32, payload: &[u8]) -> Bytes {
    let mut framed = Vec::with_capacity(5 + payload.len());
    framed.push(flag);
    framed.extend_from_slice(&declared_len.to_be_bytes());
    framed.extend_from_slice(payload);
    Bytes::from(framed)
}

/// An honest uncompressed frame around `payload`.
pub(crate) fn message(payload: &[u8]) -> Bytes {
    frame(
        0,
        u32::try_from(payload.len()).expect("under 4 GiB"),
        payload,
    )
}

/// Protobuf encoding by hand, so fields can carry the wrong wire type on purpose.
pub(crate) mod proto {
    pub(crate) const VARINT: u8 = 0;
    pub(crate) const FIXED64: u8 = 1;
    pub(crate) const LEN: u8 = 2;
    pub(crate) const FIXED32: u8 = 5;

    pub(crate) fn varint(out: &mut Vec<u8>, mut value: u64) {
        loop {
            let byte = (value & 0x7f) as u8;
            value >>= 7;
            if value == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }

    pub(crate) fn tag(out: &mut Vec<u8>, field: u32, wire_type: u8) {
        varint(out, (u64::from(field) << 3) | u64::from(wire_type));
    }

    /// An int64/int32 field (negative values take ten bytes, as protobuf encodes them).
    pub(crate) fn int(out: &mut Vec<u8>, field: u32, value: i64) {
        tag(out, field, VARINT);
        varint(out, value as u64);
    }

    /// A string or bytes field.
    pub(crate) fn bytes(out: &mut Vec<u8>, field: u32, value: &[u8]) {
        tag(out, field, LEN);
        varint(out, value.len() as u64);
        out.extend_from_slice(value);
    }
}
