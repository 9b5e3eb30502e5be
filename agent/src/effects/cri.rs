//! A small client for the container runtime's CRI API (`RuntimeService`), as the kubelet and
//! kubeadm speak it, over the runtime's unix socket.
//!
//! It is for `node-attach reset`, to stop and then remove every pod sandbox as kubeadm's reset
//! does: stopping a sandbox through the CRI is what makes the runtime run the CNI DEL that frees
//! the pod's network namespace, veth and IPAM state, which removing containers with `ctr` skips.
//! (Reset does not call it yet.) `tests/cri/check.sh` checks it against a private containerd.
//!
//! The transport is gRPC over HTTP/2 without TLS (h2c) on a tokio [`UnixStream`], driven by the
//! `h2` crate directly. The messages are hand-written `prost` structs with only the fields
//! node-attach needs, numbered as in `k8s.io/cri-api`'s `pkg/apis/runtime/v1/api.proto` (the
//! numbers are the same in `v1alpha2`); unknown fields in answers are skipped. The client tries
//! `runtime.v1.RuntimeService` first and falls back to `runtime.v1alpha2.RuntimeService` when the
//! server answers UNIMPLEMENTED (containerd 1.4 and 1.5, the runtimes of kubelets before 1.23),
//! then keeps to the service that answered. Every call has a timeout, also sent to the server as
//! `grpc-timeout`, and each answer's message is capped ([`DEFAULT_MAX_RESPONSE`]).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use h2::client::SendRequest;
use h2::RecvStream;
use http::header::{CONTENT_TYPE, TE, USER_AGENT};
use http::{HeaderMap, Method, Request, StatusCode};
use prost::Message;
use tokio::net::UnixStream;
use tokio::task::JoinHandle;

/// The CRI service of Kubernetes 1.23 and later (containerd 1.6+, CRI-O 1.23+, cri-dockerd).
pub const RUNTIME_V1: &str = "runtime.v1.RuntimeService";
/// The CRI service before `v1`: the only one containerd 1.4 and 1.5 serve.
pub const RUNTIME_V1ALPHA2: &str = "runtime.v1alpha2.RuntimeService";
/// The default cap on one answer's message: the kubelet's own limit for CRI messages (16 MiB).
pub const DEFAULT_MAX_RESPONSE: usize = 16 * 1024 * 1024;

/// What the kubelet sends as `VersionRequest.version` (its `kubeRuntimeAPIVersion`).
const KUBELET_API_VERSION: &str = "0.1.0";
/// A gRPC message's prefix: a compressed flag and a big-endian 32-bit length.
const PREFIX_LEN: usize = 5;
/// The HTTP/2 receive window, per stream and per connection: a long sandbox list in few round trips.
const WINDOW: u32 = 1024 * 1024;

const API_UNKNOWN: u8 = 0;
const API_V1: u8 = 1;
const API_V1ALPHA2: u8 = 2;

/// A gRPC status code (the 17 codes of gRPC's `statuscodes.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GrpcCode {
    /// 0: not an error.
    Ok,
    /// 1: the operation was cancelled.
    Cancelled,
    /// 2: an unknown error, and any code outside 0–16.
    Unknown,
    /// 3: the request is invalid.
    InvalidArgument,
    /// 4: the deadline passed first.
    DeadlineExceeded,
    /// 5: no such entity (e.g. sandbox).
    NotFound,
    /// 6: the entity already exists.
    AlreadyExists,
    /// 7: not permitted.
    PermissionDenied,
    /// 8: out of some resource.
    ResourceExhausted,
    /// 9: the system is not in a state for the operation.
    FailedPrecondition,
    /// 10: aborted, e.g. by a concurrency conflict.
    Aborted,
    /// 11: out of range.
    OutOfRange,
    /// 12: the server does not serve this method or service.
    Unimplemented,
    /// 13: an internal error.
    Internal,
    /// 14: the service is unavailable for now.
    Unavailable,
    /// 15: data loss.
    DataLoss,
    /// 16: no valid credentials.
    Unauthenticated,
}

/// The codes in wire order, with their canonical names.
const CODES: [(GrpcCode, &str); 17] = [
    (GrpcCode::Ok, "OK"),
    (GrpcCode::Cancelled, "CANCELLED"),
    (GrpcCode::Unknown, "UNKNOWN"),
    (GrpcCode::InvalidArgument, "INVALID_ARGUMENT"),
    (GrpcCode::DeadlineExceeded, "DEADLINE_EXCEEDED"),
    (GrpcCode::NotFound, "NOT_FOUND"),
    (GrpcCode::AlreadyExists, "ALREADY_EXISTS"),
    (GrpcCode::PermissionDenied, "PERMISSION_DENIED"),
    (GrpcCode::ResourceExhausted, "RESOURCE_EXHAUSTED"),
    (GrpcCode::FailedPrecondition, "FAILED_PRECONDITION"),
    (GrpcCode::Aborted, "ABORTED"),
    (GrpcCode::OutOfRange, "OUT_OF_RANGE"),
    (GrpcCode::Unimplemented, "UNIMPLEMENTED"),
    (GrpcCode::Internal, "INTERNAL"),
    (GrpcCode::Unavailable, "UNAVAILABLE"),
    (GrpcCode::DataLoss, "DATA_LOSS"),
    (GrpcCode::Unauthenticated, "UNAUTHENTICATED"),
];

impl GrpcCode {
    /// The code for a `grpc-status` number; numbers outside 0–16 are UNKNOWN, as gRPC says.
    pub fn from_u32(n: u32) -> GrpcCode {
        usize::try_from(n)
            .ok()
            .and_then(|i| CODES.get(i))
            .map_or(GrpcCode::Unknown, |c| c.0)
    }

    /// The number on the wire.
    pub fn as_u32(self) -> u32 {
        self as u32
    }

    /// The canonical name, e.g. `UNIMPLEMENTED`.
    pub fn name(self) -> &'static str {
        CODES.get(self as usize).map_or("UNKNOWN", |c| c.1)
    }

    /// The code gRPC gives an HTTP status that came without a `grpc-status` (gRPC's
    /// `http-grpc-status-mapping.md`).
    fn from_http(status: StatusCode) -> GrpcCode {
        match status.as_u16() {
            400 => GrpcCode::Internal,
            401 => GrpcCode::Unauthenticated,
            403 => GrpcCode::PermissionDenied,
            404 => GrpcCode::Unimplemented,
            429 | 502 | 503 | 504 => GrpcCode::Unavailable,
            _ => GrpcCode::Unknown,
        }
    }
}

impl std::fmt::Display for GrpcCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.name(), self.as_u32())
    }
}

/// A gRPC length-prefixed message that could not be made or taken apart.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The answer had no message at all.
    #[error("the answer carries no message")]
    Empty,
    /// Fewer bytes than the prefix (or the prefix's length) says.
    #[error("truncated message: {got} of {want} bytes")]
    Truncated {
        /// Bytes present.
        got: usize,
        /// Bytes expected.
        want: usize,
    },
    /// The compressed flag is set, though node-attach offers no compression.
    #[error("compressed message (flag {0}), though no compression was offered")]
    Compressed(u8),
    /// Bytes after the one message of a unary answer.
    #[error("{0} bytes after the message of a unary answer")]
    Trailing(usize),
    /// Over the size cap.
    #[error("message of at least {size} bytes, over the {limit}-byte limit")]
    TooLarge {
        /// The message's size as far as known.
        size: usize,
        /// The cap.
        limit: usize,
    },
}

/// A failed CRI call.
#[derive(Debug, thiserror::Error)]
pub enum CriError {
    /// The socket could not be connected to.
    #[error("cannot connect to {}: {source}", socket.display())]
    Connect {
        /// The socket.
        socket: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// HTTP/2 failed: the handshake, the connection, or the call's stream.
    #[error("{what}: HTTP/2: {source}")]
    Http2 {
        /// The step or the call (its gRPC path).
        what: String,
        /// Why.
        #[source]
        source: h2::Error,
    },
    /// No answer in time.
    #[error("{what}: no answer within {after:?}")]
    Timeout {
        /// The step or the call (its gRPC path).
        what: String,
        /// The timeout.
        after: Duration,
        /// The timer's error.
        #[source]
        source: tokio::time::error::Elapsed,
    },
    /// The server answered with a gRPC status other than OK (or, without one, an HTTP status
    /// other than 200, mapped to a code as gRPC does).
    #[error("{method}: {code}: {message}")]
    Status {
        /// The gRPC path, e.g. `/runtime.v1.RuntimeService/Version`.
        method: String,
        /// The status code.
        code: GrpcCode,
        /// `grpc-message`, percent-decoded.
        message: String,
    },
    /// The answer is not a well-formed gRPC answer.
    #[error("{method}: {detail}")]
    Protocol {
        /// The gRPC path.
        method: String,
        /// What is wrong.
        detail: String,
    },
    /// The message framing of the request or the answer.
    #[error("{method}: {source}")]
    Frame {
        /// The gRPC path.
        method: String,
        /// What is wrong.
        #[source]
        source: FrameError,
    },
    /// The answer's message is not the expected protobuf.
    #[error("{method}: cannot decode the answer: {source}")]
    Decode {
        /// The gRPC path.
        method: String,
        /// Why.
        #[source]
        source: prost::DecodeError,
    },
    /// The HTTP request could not be built.
    #[error("{method}: cannot build the request: {source}")]
    Request {
        /// The gRPC path.
        method: String,
        /// Why.
        #[source]
        source: http::Error,
    },
}

impl CriError {
    /// The gRPC status code, when the server answered with one.
    pub fn code(&self) -> Option<GrpcCode> {
        match self {
            CriError::Status { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// What the runtime's `Version` call answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeVersion {
    /// The CRI version the runtime speaks to the kubelet (e.g. `0.1.0`).
    pub version: String,
    /// The runtime's name, e.g. `containerd`.
    pub runtime_name: String,
    /// The runtime's version, e.g. `1.6.20~ds1`.
    pub runtime_version: String,
    /// The CRI API version served, e.g. `v1` or `v1alpha2`.
    pub runtime_api_version: String,
}

impl RuntimeVersion {
    fn from_wire(v: wire::VersionResponse) -> RuntimeVersion {
        RuntimeVersion {
            version: v.version,
            runtime_name: v.runtime_name,
            runtime_version: v.runtime_version,
            runtime_api_version: v.runtime_api_version,
        }
    }
}

/// A pod sandbox's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SandboxState {
    /// `SANDBOX_READY`: running.
    Ready,
    /// `SANDBOX_NOTREADY`: stopped, or not fully set up.
    NotReady,
    /// A value this client does not know.
    Other(i32),
}

/// A pod sandbox, as `ListPodSandbox` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodSandbox {
    /// The runtime's sandbox ID.
    pub id: String,
    /// The pod's name.
    pub name: String,
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's UID.
    pub uid: String,
    /// The sandbox's attempt number.
    pub attempt: u32,
    /// Its state.
    pub state: SandboxState,
}

impl PodSandbox {
    fn from_wire(p: wire::PodSandbox) -> PodSandbox {
        let m = p.metadata.unwrap_or_default();
        let state = match wire::PodSandboxState::try_from(p.state) {
            Ok(wire::PodSandboxState::SandboxReady) => SandboxState::Ready,
            Ok(wire::PodSandboxState::SandboxNotready) => SandboxState::NotReady,
            Err(_) => SandboxState::Other(p.state),
        };
        PodSandbox {
            id: p.id,
            name: m.name,
            namespace: m.namespace,
            uid: m.uid,
            attempt: m.attempt,
            state,
        }
    }
}

/// The CRI messages node-attach uses, with `api.proto`'s field numbers (runtime/v1; v1alpha2
/// numbers them the same). Fields node-attach does not read are left out: protobuf skips them.
mod wire {
    use std::collections::BTreeMap;

    /// `VersionRequest`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct VersionRequest {
        /// The kubelet's CRI version.
        #[prost(string, tag = "1")]
        pub version: String,
    }

    /// `VersionResponse`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct VersionResponse {
        /// The CRI version the runtime speaks.
        #[prost(string, tag = "1")]
        pub version: String,
        /// The runtime's name.
        #[prost(string, tag = "2")]
        pub runtime_name: String,
        /// The runtime's version.
        #[prost(string, tag = "3")]
        pub runtime_version: String,
        /// The CRI API version.
        #[prost(string, tag = "4")]
        pub runtime_api_version: String,
    }

    /// `PodSandboxState`.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
    #[repr(i32)]
    pub enum PodSandboxState {
        /// `SANDBOX_READY`.
        SandboxReady = 0,
        /// `SANDBOX_NOTREADY`.
        SandboxNotready = 1,
    }

    /// `PodSandboxStateValue`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PodSandboxStateValue {
        /// The state.
        #[prost(enumeration = "PodSandboxState", tag = "1")]
        pub state: i32,
    }

    /// `PodSandboxFilter`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PodSandboxFilter {
        /// A sandbox ID.
        #[prost(string, tag = "1")]
        pub id: String,
        /// A state.
        #[prost(message, optional, tag = "2")]
        pub state: Option<PodSandboxStateValue>,
        /// Labels that must all match.
        #[prost(btree_map = "string, string", tag = "3")]
        pub label_selector: BTreeMap<String, String>,
    }

    /// `ListPodSandboxRequest`: node-attach sends no filter.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ListPodSandboxRequest {
        /// The filter.
        #[prost(message, optional, tag = "1")]
        pub filter: Option<PodSandboxFilter>,
    }

    /// `PodSandboxMetadata`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PodSandboxMetadata {
        /// The pod's name.
        #[prost(string, tag = "1")]
        pub name: String,
        /// The pod's UID.
        #[prost(string, tag = "2")]
        pub uid: String,
        /// The pod's namespace.
        #[prost(string, tag = "3")]
        pub namespace: String,
        /// The attempt number.
        #[prost(uint32, tag = "4")]
        pub attempt: u32,
    }

    /// `PodSandbox`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PodSandbox {
        /// The sandbox ID.
        #[prost(string, tag = "1")]
        pub id: String,
        /// The pod's metadata.
        #[prost(message, optional, tag = "2")]
        pub metadata: Option<PodSandboxMetadata>,
        /// Its state.
        #[prost(enumeration = "PodSandboxState", tag = "3")]
        pub state: i32,
        /// Creation time, in nanoseconds since the epoch.
        #[prost(int64, tag = "4")]
        pub created_at: i64,
        /// Labels.
        #[prost(btree_map = "string, string", tag = "5")]
        pub labels: BTreeMap<String, String>,
        /// Annotations.
        #[prost(btree_map = "string, string", tag = "6")]
        pub annotations: BTreeMap<String, String>,
        /// The runtime handler.
        #[prost(string, tag = "7")]
        pub runtime_handler: String,
    }

    /// `ListPodSandboxResponse`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ListPodSandboxResponse {
        /// The sandboxes.
        #[prost(message, repeated, tag = "1")]
        pub items: Vec<PodSandbox>,
    }

    /// `StopPodSandboxRequest`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct StopPodSandboxRequest {
        /// The sandbox ID.
        #[prost(string, tag = "1")]
        pub pod_sandbox_id: String,
    }

    /// `StopPodSandboxResponse`: empty.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct StopPodSandboxResponse {}

    /// `RemovePodSandboxRequest`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct RemovePodSandboxRequest {
        /// The sandbox ID.
        #[prost(string, tag = "1")]
        pub pod_sandbox_id: String,
    }

    /// `RemovePodSandboxResponse`: empty.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct RemovePodSandboxResponse {}
}

/// A gRPC message: the 5-byte prefix (not compressed, length), then the protobuf.
fn frame(msg: &impl Message) -> Result<Bytes, FrameError> {
    let payload = msg.encode_to_vec();
    let len = u32::try_from(payload.len()).map_err(|_| FrameError::TooLarge {
        size: payload.len(),
        limit: u32::MAX as usize,
    })?;
    let mut buf = BytesMut::with_capacity(PREFIX_LEN + payload.len());
    buf.put_u8(0);
    buf.put_u32(len);
    buf.put_slice(&payload);
    Ok(buf.freeze())
}

/// The length a message's prefix announces, once the prefix is there.
fn announced_len(buf: &[u8]) -> Option<usize> {
    let len = buf.get(1..PREFIX_LEN)?;
    let len: [u8; 4] = len.try_into().ok()?;
    usize::try_from(u32::from_be_bytes(len)).ok()
}

/// The one protobuf message of a unary answer's body, at most `limit` bytes.
fn unframe(buf: &[u8], limit: usize) -> Result<&[u8], FrameError> {
    let Some(&flag) = buf.first() else {
        return Err(FrameError::Empty);
    };
    let Some(len) = announced_len(buf) else {
        return Err(FrameError::Truncated {
            got: buf.len(),
            want: PREFIX_LEN,
        });
    };
    if flag != 0 {
        return Err(FrameError::Compressed(flag));
    }
    if len > limit {
        return Err(FrameError::TooLarge { size: len, limit });
    }
    let payload = buf.get(PREFIX_LEN..).unwrap_or_default();
    if payload.len() > len {
        return Err(FrameError::Trailing(payload.len() - len));
    }
    payload.get(..len).ok_or(FrameError::Truncated {
        got: payload.len(),
        want: len,
    })
}

/// `grpc-message` is percent-encoded UTF-8; a `%` not followed by two hex digits stays as it is.
fn percent_decode(raw: &[u8]) -> String {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while let Some(&b) = raw.get(i) {
        let hex = raw
            .get(i + 1..i + 3)
            .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b, hex) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The call's outcome from `grpc-status` and `grpc-message`, if `headers` carry a status.
fn grpc_status(method: &str, headers: &HeaderMap) -> Option<Result<(), CriError>> {
    let raw = headers.get("grpc-status")?;
    let code = raw
        .to_str()
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .map_or(GrpcCode::Unknown, GrpcCode::from_u32);
    if code == GrpcCode::Ok {
        return Some(Ok(()));
    }
    let message = headers
        .get("grpc-message")
        .map(|m| percent_decode(m.as_bytes()))
        .unwrap_or_default();
    Some(Err(CriError::Status {
        method: method.to_owned(),
        code,
        message,
    }))
}

/// Checks an answer's headers. A status in them is a trailers-only answer: an error, or (OK)
/// an answer without the message a unary call needs.
fn check_headers(method: &str, head: &http::response::Parts) -> Result<(), CriError> {
    match grpc_status(method, &head.headers) {
        Some(Err(e)) => return Err(e),
        Some(Ok(())) => {
            return Err(CriError::Frame {
                method: method.to_owned(),
                source: FrameError::Empty,
            })
        }
        None => {}
    }
    if head.status != StatusCode::OK {
        return Err(CriError::Status {
            method: method.to_owned(),
            code: GrpcCode::from_http(head.status),
            message: format!("HTTP status {} without grpc-status", head.status),
        });
    }
    let content_type = head.headers.get(CONTENT_TYPE).map(|v| v.as_bytes());
    if !content_type.is_some_and(|t| t.starts_with(b"application/grpc")) {
        return Err(CriError::Protocol {
            method: method.to_owned(),
            detail: format!("not a gRPC answer (content-type {content_type:?})"),
        });
    }
    Ok(())
}

/// Checks the trailers of an answer that had a body: they must carry the status.
fn check_trailers(method: &str, trailers: Option<&HeaderMap>) -> Result<(), CriError> {
    trailers
        .and_then(|t| grpc_status(method, t))
        .unwrap_or_else(|| {
            Err(CriError::Protocol {
                method: method.to_owned(),
                detail: "the answer ended without grpc-status".to_owned(),
            })
        })
}

/// Reads an answer's body, giving up as soon as it is known to be over `limit` (plus prefix).
async fn read_capped(method: &str, body: &mut RecvStream, limit: usize) -> Result<Bytes, CriError> {
    let h2_error = |source| CriError::Http2 {
        what: method.to_owned(),
        source,
    };
    let mut buf = BytesMut::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(h2_error)?;
        body.flow_control()
            .release_capacity(chunk.len())
            .map_err(h2_error)?;
        buf.extend_from_slice(&chunk);
        let size = announced_len(&buf)
            .unwrap_or(0)
            .max(buf.len().saturating_sub(PREFIX_LEN));
        if size > limit {
            return Err(CriError::Frame {
                method: method.to_owned(),
                source: FrameError::TooLarge { size, limit },
            });
        }
    }
    Ok(buf.freeze())
}

/// Runs `fut` with a timeout.
async fn within<F: Future>(after: Duration, what: &str, fut: F) -> Result<F::Output, CriError> {
    tokio::time::timeout(after, fut)
        .await
        .map_err(|source| CriError::Timeout {
            what: what.to_owned(),
            after,
            source,
        })
}

/// gRPC's `grpc-timeout` header: at most 8 digits, here in milliseconds.
fn grpc_timeout(after: Duration) -> String {
    format!("{}m", after.as_millis().clamp(1, 99_999_999))
}

/// Whether a call's outcome shows the service exists (anything but UNIMPLEMENTED from it).
fn served<T>(outcome: &Result<T, CriError>) -> bool {
    match outcome {
        Ok(_) => true,
        Err(e) => e.code().is_some_and(|c| c != GrpcCode::Unimplemented),
    }
}

/// Whether an error says the sandbox is already gone.
fn gone(e: &CriError) -> bool {
    e.code() == Some(GrpcCode::NotFound)
}

/// A connection to a container runtime's CRI socket. Calls may run concurrently, each on its own
/// HTTP/2 stream; dropping the client closes the connection.
pub struct CriClient {
    send: SendRequest<Bytes>,
    conn: JoinHandle<()>,
    timeout: Duration,
    max_response: usize,
    api: AtomicU8,
}

impl Drop for CriClient {
    fn drop(&mut self) {
        self.conn.abort();
    }
}

impl CriClient {
    /// Connects to the runtime's socket (e.g. `/run/containerd/containerd.sock`) and sets up
    /// HTTP/2, within `timeout`; every later call gets the same timeout.
    pub async fn connect(socket: &Path, timeout: Duration) -> Result<CriClient, CriError> {
        let what = format!("connecting to {}", socket.display());
        let io = within(timeout, &what, UnixStream::connect(socket))
            .await?
            .map_err(|source| CriError::Connect {
                socket: socket.to_owned(),
                source,
            })?;
        Self::handshake(io, timeout, &what).await
    }

    /// Sets up HTTP/2 on a connected stream and drives the connection on a task.
    async fn handshake(
        io: UnixStream,
        timeout: Duration,
        what: &str,
    ) -> Result<CriClient, CriError> {
        let mut builder = h2::client::Builder::new();
        builder
            .initial_window_size(WINDOW)
            .initial_connection_window_size(WINDOW);
        let (send, conn) = within(timeout, what, builder.handshake(io))
            .await?
            .map_err(|source| CriError::Http2 {
                what: what.to_owned(),
                source,
            })?;
        let conn = tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "CRI connection ended");
            }
        });
        Ok(CriClient {
            send,
            conn,
            timeout,
            max_response: DEFAULT_MAX_RESPONSE,
            api: AtomicU8::new(API_UNKNOWN),
        })
    }

    /// Caps each answer's message at `bytes` instead of [`DEFAULT_MAX_RESPONSE`].
    pub fn with_max_response(mut self, bytes: usize) -> CriClient {
        self.max_response = bytes;
        self
    }

    /// The service this client settled on ([`RUNTIME_V1`] or [`RUNTIME_V1ALPHA2`]), once a call
    /// was answered.
    pub fn service(&self) -> Option<&'static str> {
        match self.api.load(Ordering::Relaxed) {
            API_V1 => Some(RUNTIME_V1),
            API_V1ALPHA2 => Some(RUNTIME_V1ALPHA2),
            _ => None,
        }
    }

    /// The runtime's name and version (`Version`).
    pub async fn version(&self) -> Result<RuntimeVersion, CriError> {
        let request = wire::VersionRequest {
            version: KUBELET_API_VERSION.to_owned(),
        };
        let answer: wire::VersionResponse = self.call("Version", &request).await?;
        Ok(RuntimeVersion::from_wire(answer))
    }

    /// Every pod sandbox, ready or not (`ListPodSandbox` without a filter).
    pub async fn list_pod_sandboxes(&self) -> Result<Vec<PodSandbox>, CriError> {
        let request = wire::ListPodSandboxRequest::default();
        let answer: wire::ListPodSandboxResponse = self.call("ListPodSandbox", &request).await?;
        Ok(answer
            .items
            .into_iter()
            .map(PodSandbox::from_wire)
            .collect())
    }

    /// Stops a sandbox (`StopPodSandbox`): its containers, and the runtime's CNI DEL of its
    /// network.
    pub async fn stop_pod_sandbox(&self, id: &str) -> Result<(), CriError> {
        let request = wire::StopPodSandboxRequest {
            pod_sandbox_id: id.to_owned(),
        };
        let _: wire::StopPodSandboxResponse = self.call("StopPodSandbox", &request).await?;
        Ok(())
    }

    /// Removes a sandbox and its containers (`RemovePodSandbox`).
    pub async fn remove_pod_sandbox(&self, id: &str) -> Result<(), CriError> {
        let request = wire::RemovePodSandboxRequest {
            pod_sandbox_id: id.to_owned(),
        };
        let _: wire::RemovePodSandboxResponse = self.call("RemovePodSandbox", &request).await?;
        Ok(())
    }

    /// Stops and then removes every pod sandbox, as kubeadm's reset does, going on past a
    /// sandbox that fails (logged as a warning). Returns how many of the listed sandboxes are
    /// gone: removed, or found already gone (NOT_FOUND). Fails only if the list fails.
    pub async fn remove_all_pods(&self) -> Result<usize, CriError> {
        let pods = self.list_pod_sandboxes().await?;
        let mut removed = 0;
        for pod in &pods {
            if self.stop_and_remove(pod).await {
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Stops, then removes, one sandbox; removal is tried even if the stop failed (the
    /// runtime may force it). Whether the sandbox is gone.
    async fn stop_and_remove(&self, pod: &PodSandbox) -> bool {
        let what = format!("pod sandbox {} ({}/{})", pod.id, pod.namespace, pod.name);
        match self.stop_pod_sandbox(&pod.id).await {
            Err(e) if !gone(&e) => tracing::warn!(error = %e, "stopping {what}"),
            _ => {}
        }
        match self.remove_pod_sandbox(&pod.id).await {
            Ok(()) => true,
            Err(e) if gone(&e) => true,
            Err(e) => {
                tracing::warn!(error = %e, "removing {what}");
                false
            }
        }
    }

    /// A unary call of `method` on the service in use, finding it on the first call.
    async fn call<Req: Message, Resp: Message + Default>(
        &self,
        method: &str,
        request: &Req,
    ) -> Result<Resp, CriError> {
        let body = frame(request).map_err(|source| CriError::Frame {
            method: method.to_owned(),
            source,
        })?;
        match self.service() {
            Some(service) => self.unary(service, method, body).await,
            None => self.probe(method, body).await,
        }
    }

    /// The first answered call: `v1`, then `v1alpha2` if `v1` is UNIMPLEMENTED.
    async fn probe<Resp: Message + Default>(
        &self,
        method: &str,
        body: Bytes,
    ) -> Result<Resp, CriError> {
        let first = self.unary(RUNTIME_V1, method, body.clone()).await;
        if served(&first) {
            self.api.store(API_V1, Ordering::Relaxed);
        }
        if first.as_ref().err().and_then(CriError::code) != Some(GrpcCode::Unimplemented) {
            return first;
        }
        tracing::debug!("{RUNTIME_V1} is not served; trying {RUNTIME_V1ALPHA2}");
        let second = self.unary(RUNTIME_V1ALPHA2, method, body).await;
        if served(&second) {
            self.api.store(API_V1ALPHA2, Ordering::Relaxed);
        }
        second
    }

    /// One unary call on `service`, with the timeout, decoded.
    async fn unary<Resp: Message + Default>(
        &self,
        service: &str,
        method: &str,
        body: Bytes,
    ) -> Result<Resp, CriError> {
        let path = format!("/{service}/{method}");
        let answer = within(self.timeout, &path, self.exchange(&path, body)).await??;
        let message = unframe(&answer, self.max_response).map_err(|source| CriError::Frame {
            method: path.clone(),
            source,
        })?;
        Resp::decode(message).map_err(|source| CriError::Decode {
            method: path,
            source,
        })
    }

    /// Sends one request and reads its answer's body, checking its headers and status.
    async fn exchange(&self, path: &str, body: Bytes) -> Result<Bytes, CriError> {
        let h2_error = |source| CriError::Http2 {
            what: path.to_owned(),
            source,
        };
        let request = self.request(path)?;
        let mut send = self.send.clone().ready().await.map_err(h2_error)?;
        let (answer, mut stream) = send.send_request(request, false).map_err(h2_error)?;
        stream.send_data(body, true).map_err(h2_error)?;
        let (head, mut recv) = answer.await.map_err(h2_error)?.into_parts();
        check_headers(path, &head)?;
        let data = read_capped(path, &mut recv, self.max_response).await?;
        let trailers = recv.trailers().await.map_err(h2_error)?;
        check_trailers(path, trailers.as_ref())?;
        Ok(data)
    }

    /// The request's headers, as gRPC wants them.
    fn request(&self, path: &str) -> Result<Request<()>, CriError> {
        Request::builder()
            .method(Method::POST)
            .uri(format!("http://localhost{path}"))
            .header(CONTENT_TYPE, "application/grpc")
            .header(TE, "trailers")
            .header("grpc-timeout", grpc_timeout(self.timeout))
            .header(
                USER_AGENT,
                concat!("node-attach/", env!("CARGO_PKG_VERSION")),
            )
            .body(())
            .map_err(|source| CriError::Request {
                method: path.to_owned(),
                source,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};

    use h2::server::SendResponse;
    use http::{HeaderName, HeaderValue, Response};

    // ---- Messages -------------------------------------------------------------------------

    fn sandbox(id: &str, state: i32) -> wire::PodSandbox {
        wire::PodSandbox {
            id: id.to_owned(),
            metadata: Some(wire::PodSandboxMetadata {
                name: format!("pod-{id}"),
                uid: format!("uid-{id}"),
                namespace: "kube-system".to_owned(),
                attempt: 2,
            }),
            state,
            created_at: 1_700_000_000_000_000_000,
            labels: BTreeMap::from([("app".to_owned(), "x".to_owned())]),
            annotations: BTreeMap::from([("a".to_owned(), "b".to_owned())]),
            runtime_handler: "runc".to_owned(),
        }
    }

    fn round_trip<M: Message + Default + PartialEq + std::fmt::Debug>(m: &M) {
        let bytes = m.encode_to_vec();
        assert_eq!(&M::decode(bytes.as_slice()).expect("decode"), m);
    }

    #[test]
    fn messages_round_trip() {
        round_trip(&wire::VersionRequest {
            version: "0.1.0".into(),
        });
        round_trip(&wire::VersionResponse {
            version: "0.1.0".into(),
            runtime_name: "containerd".into(),
            runtime_version: "1.6.20~ds1".into(),
            runtime_api_version: "v1".into(),
        });
        round_trip(&wire::ListPodSandboxRequest {
            filter: Some(wire::PodSandboxFilter {
                id: "abc".into(),
                state: Some(wire::PodSandboxStateValue { state: 1 }),
                label_selector: BTreeMap::from([("k".into(), "v".into())]),
            }),
        });
        round_trip(&wire::ListPodSandboxResponse {
            items: vec![sandbox("a", 0), sandbox("b", 1)],
        });
        round_trip(&wire::StopPodSandboxRequest {
            pod_sandbox_id: "a".into(),
        });
        round_trip(&wire::RemovePodSandboxRequest {
            pod_sandbox_id: "a".into(),
        });
        round_trip(&wire::StopPodSandboxResponse {});
        round_trip(&wire::RemovePodSandboxResponse {});
    }

    /// Bytes as protoc-generated code writes them, field by field, with api.proto's numbers.
    #[test]
    fn field_numbers_match_api_proto() {
        let stop = wire::StopPodSandboxRequest {
            pod_sandbox_id: "abc".into(),
        };
        assert_eq!(stop.encode_to_vec(), b"\x0a\x03abc");
        let remove = wire::RemovePodSandboxRequest {
            pod_sandbox_id: "abc".into(),
        };
        assert_eq!(remove.encode_to_vec(), b"\x0a\x03abc");
        let version = wire::VersionRequest {
            version: "0.1.0".into(),
        };
        assert_eq!(version.encode_to_vec(), b"\x0a\x050.1.0");
        // No filter: an empty message.
        assert!(wire::ListPodSandboxRequest::default()
            .encode_to_vec()
            .is_empty());

        let answer = b"\x0a\x020.\x12\x0acontainerd\x1a\x041.6.\x22\x02v1";
        let v = wire::VersionResponse::decode(&answer[..]).expect("decode");
        assert_eq!(
            (
                &*v.version,
                &*v.runtime_name,
                &*v.runtime_version,
                &*v.runtime_api_version
            ),
            ("0.", "containerd", "1.6.", "v1")
        );
    }

    #[test]
    fn pod_sandbox_fields_by_number() {
        let mut item = Vec::new();
        item.extend_from_slice(b"\x0a\x02id"); // id = 1
        item.extend_from_slice(b"\x12\x0c\x0a\x01n\x12\x01u\x1a\x02ns\x20\x03"); // metadata = 2
        item.extend_from_slice(b"\x18\x01"); // state = 3: SANDBOX_NOTREADY
        item.extend_from_slice(b"\x20\x05"); // created_at = 4
        item.extend_from_slice(b"\x2a\x06\x0a\x01k\x12\x01v"); // labels = 5
        item.extend_from_slice(b"\x32\x06\x0a\x01a\x12\x01b"); // annotations = 6
        item.extend_from_slice(b"\x3a\x04runc"); // runtime_handler = 7
        item.extend_from_slice(b"\xa2\x06\x01x"); // field 100: unknown, skipped
        let mut list = vec![0x0a, u8::try_from(item.len()).expect("short")]; // items = 1
        list.extend_from_slice(&item);

        let got = wire::ListPodSandboxResponse::decode(list.as_slice()).expect("decode");
        let [p] = got.items.as_slice() else {
            panic!("{got:?}")
        };
        assert_eq!(p.id, "id");
        assert_eq!(p.state, 1);
        assert_eq!(p.created_at, 5);
        assert_eq!(p.labels.get("k").map(String::as_str), Some("v"));
        assert_eq!(p.annotations.get("a").map(String::as_str), Some("b"));
        assert_eq!(p.runtime_handler, "runc");
        let public = PodSandbox::from_wire(p.clone());
        assert_eq!(
            public,
            PodSandbox {
                id: "id".into(),
                name: "n".into(),
                namespace: "ns".into(),
                uid: "u".into(),
                attempt: 3,
                state: SandboxState::NotReady,
            }
        );
        assert_eq!(
            PodSandbox::from_wire(sandbox("r", 0)).state,
            SandboxState::Ready
        );
        assert_eq!(
            PodSandbox::from_wire(sandbox("o", 7)).state,
            SandboxState::Other(7)
        );
        let bare = PodSandbox::from_wire(wire::PodSandbox::default());
        assert_eq!((bare.name.as_str(), bare.attempt), ("", 0));
    }

    // ---- Framing, statuses ----------------------------------------------------------------

    #[test]
    fn frames_are_length_prefixed() {
        let f = frame(&wire::VersionRequest {
            version: "0.1.0".into(),
        })
        .expect("frame");
        assert_eq!(&f[..], b"\x00\x00\x00\x00\x07\x0a\x050.1.0");
        assert_eq!(unframe(&f, 100), Ok(&b"\x0a\x050.1.0"[..]));
        let empty = frame(&wire::StopPodSandboxResponse {}).expect("frame");
        assert_eq!(&empty[..], b"\x00\x00\x00\x00\x00");
        assert_eq!(unframe(&empty, 0), Ok(&b""[..]));
        let mut big = vec![0, 0, 0, 1, 0];
        big.extend(std::iter::repeat_n(0, 256));
        assert_eq!(announced_len(&big), Some(256));
        assert_eq!(unframe(&big, 256).map(<[u8]>::len), Ok(256));
    }

    #[test]
    fn bad_frames_are_refused() {
        assert_eq!(unframe(b"", 10), Err(FrameError::Empty));
        assert_eq!(
            unframe(b"\x00\x00\x00", 10),
            Err(FrameError::Truncated { got: 3, want: 5 })
        );
        assert_eq!(
            unframe(b"\x00\x00\x00\x00\x04ab", 10),
            Err(FrameError::Truncated { got: 2, want: 4 })
        );
        assert_eq!(
            unframe(b"\x01\x00\x00\x00\x01a", 10),
            Err(FrameError::Compressed(1))
        );
        assert_eq!(
            unframe(b"\x00\x00\x00\x00\x01ab", 10),
            Err(FrameError::Trailing(1))
        );
        assert_eq!(
            unframe(b"\x00\xff\xff\xff\xff", 10),
            Err(FrameError::TooLarge {
                size: 0xffff_ffff,
                limit: 10
            })
        );
    }

    #[test]
    fn codes() {
        for n in 0..17 {
            assert_eq!(GrpcCode::from_u32(n).as_u32(), n);
        }
        assert_eq!(GrpcCode::from_u32(17), GrpcCode::Unknown);
        assert_eq!(GrpcCode::from_u32(u32::MAX), GrpcCode::Unknown);
        assert_eq!(GrpcCode::Unimplemented.to_string(), "UNIMPLEMENTED (12)");
        assert_eq!(GrpcCode::Unauthenticated.name(), "UNAUTHENTICATED");
        assert_eq!(
            GrpcCode::from_http(StatusCode::NOT_FOUND),
            GrpcCode::Unimplemented
        );
        assert_eq!(
            GrpcCode::from_http(StatusCode::SERVICE_UNAVAILABLE),
            GrpcCode::Unavailable
        );
        assert_eq!(
            GrpcCode::from_http(StatusCode::BAD_REQUEST),
            GrpcCode::Internal
        );
        assert_eq!(
            GrpcCode::from_http(StatusCode::IM_A_TEAPOT),
            GrpcCode::Unknown
        );
    }

    #[test]
    fn grpc_messages_are_percent_decoded() {
        assert_eq!(percent_decode(b"a%20b"), "a b");
        assert_eq!(percent_decode(b"%C3%A9t%c3%a9"), "été");
        for raw in ["%", "%2", "%zz", "%+1", "100%"] {
            assert_eq!(percent_decode(raw.as_bytes()), raw);
        }
    }

    #[test]
    fn timeouts_in_grpc_form() {
        assert_eq!(grpc_timeout(Duration::from_secs(5)), "5000m");
        assert_eq!(grpc_timeout(Duration::ZERO), "1m");
        assert_eq!(grpc_timeout(Duration::from_secs(1 << 40)), "99999999m");
    }

    #[test]
    fn status_headers() {
        let mut h = HeaderMap::new();
        assert!(grpc_status("/m", &h).is_none());
        h.insert("grpc-status", HeaderValue::from_static("0"));
        assert!(matches!(grpc_status("/m", &h), Some(Ok(()))));
        h.insert("grpc-status", HeaderValue::from_static("x"));
        let e = grpc_status("/m", &h).and_then(Result::err).expect("error");
        assert_eq!(e.code(), Some(GrpcCode::Unknown));
        assert!(check_trailers("/m", None).is_err_and(|e| e.code().is_none()));
    }

    // ---- A canned HTTP/2 server -----------------------------------------------------------

    /// What the canned server answers one request with.
    enum Reply {
        /// 200 and `application/grpc`, the body bytes as given, then the trailers (none: the
        /// stream ends with the body).
        Body {
            body: Vec<u8>,
            trailers: Option<Vec<(&'static str, String)>>,
        },
        /// A HEADERS frame that ends the stream: trailers-only, or a bare HTTP status.
        HeadersOnly {
            status: u16,
            headers: Vec<(&'static str, String)>,
        },
        /// No answer, ever.
        Hang,
    }

    fn ok(m: &impl Message) -> Reply {
        Reply::Body {
            body: frame(m).expect("frame").to_vec(),
            trailers: Some(vec![("grpc-status", "0".into())]),
        }
    }

    fn trailers_only(code: u32, message: &str) -> Reply {
        Reply::HeadersOnly {
            status: 200,
            headers: vec![
                ("content-type", "application/grpc".into()),
                ("grpc-status", code.to_string()),
                ("grpc-message", message.into()),
            ],
        }
    }

    /// One request as the server saw it.
    struct Seen {
        path: String,
        headers: HeaderMap,
        body: Vec<u8>,
    }

    type Handler = Arc<dyn Fn(&Seen) -> Reply + Send + Sync>;
    type Log = Arc<Mutex<Vec<Seen>>>;

    fn header_map(pairs: &[(&'static str, String)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    HeaderName::from_static(k),
                    HeaderValue::from_str(v).expect("header value"),
                )
            })
            .collect()
    }

    async fn serve(io: UnixStream, handler: Handler, log: Log) {
        let Ok(mut conn) = h2::server::handshake(io).await else {
            return;
        };
        while let Some(Ok((request, respond))) = conn.accept().await {
            tokio::spawn(answer(request, respond, handler.clone(), log.clone()));
        }
    }

    async fn answer(
        request: Request<RecvStream>,
        respond: SendResponse<Bytes>,
        handler: Handler,
        log: Log,
    ) {
        let (head, mut body) = request.into_parts();
        let mut data = Vec::new();
        while let Some(Ok(chunk)) = body.data().await {
            let _ = body.flow_control().release_capacity(chunk.len());
            data.extend_from_slice(&chunk);
        }
        let seen = Seen {
            path: head.uri.path().to_owned(),
            headers: head.headers,
            body: data,
        };
        let reply = handler(&seen);
        log.lock().expect("log").push(seen);
        send(respond, reply).await;
    }

    async fn send(mut respond: SendResponse<Bytes>, reply: Reply) {
        let response = |status: u16, headers: &[(&'static str, String)]| {
            let mut r = Response::new(());
            *r.status_mut() = StatusCode::from_u16(status).expect("status");
            *r.headers_mut() = header_map(headers);
            r
        };
        match reply {
            Reply::Hang => std::future::pending::<()>().await,
            Reply::HeadersOnly { status, headers } => {
                let _ = respond.send_response(response(status, &headers), true);
            }
            Reply::Body { body, trailers } => {
                let head = response(200, &[("content-type", "application/grpc".into())]);
                let Ok(mut stream) = respond.send_response(head, false) else {
                    return;
                };
                let _ = stream.send_data(body.into(), trailers.is_none());
                if let Some(t) = trailers {
                    let _ = stream.send_trailers(header_map(&t));
                }
            }
        }
    }

    async fn client_with(
        timeout: Duration,
        handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static,
    ) -> (CriClient, Log) {
        let (ours, theirs) = UnixStream::pair().expect("socketpair");
        let log = Log::default();
        tokio::spawn(serve(theirs, Arc::new(handler), log.clone()));
        let client = CriClient::handshake(ours, timeout, "test")
            .await
            .expect("handshake");
        (client, log)
    }

    async fn client(handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> (CriClient, Log) {
        client_with(Duration::from_secs(5), handler).await
    }

    fn paths(log: &Log) -> Vec<String> {
        log.lock()
            .expect("log")
            .iter()
            .map(|s| s.path.clone())
            .collect()
    }

    fn version_answer() -> wire::VersionResponse {
        wire::VersionResponse {
            version: "0.1.0".into(),
            runtime_name: "containerd".into(),
            runtime_version: "1.6.20".into(),
            runtime_api_version: "v1".into(),
        }
    }

    // ---- Calls ----------------------------------------------------------------------------

    #[tokio::test(flavor = "current_thread")]
    async fn version_is_a_grpc_call_on_v1() {
        let (c, log) = client(|_| ok(&version_answer())).await;
        assert_eq!(c.service(), None);
        let v = c.version().await.expect("version");
        assert_eq!(v, RuntimeVersion::from_wire(version_answer()));
        assert_eq!(c.service(), Some(RUNTIME_V1));
        let log = log.lock().expect("log");
        let [seen] = log.as_slice() else {
            panic!("{} requests", log.len())
        };
        assert_eq!(seen.path, "/runtime.v1.RuntimeService/Version");
        let header = |name: &str| seen.headers.get(name).and_then(|v| v.to_str().ok());
        assert_eq!(header("content-type"), Some("application/grpc"));
        assert_eq!(header("te"), Some("trailers"));
        assert_eq!(header("grpc-timeout"), Some("5000m"));
        assert_eq!(seen.body, b"\x00\x00\x00\x00\x07\x0a\x050.1.0");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn list_decodes_sandboxes() {
        let items = vec![sandbox("a", 0), sandbox("b", 1)];
        let answer = wire::ListPodSandboxResponse { items };
        let (c, log) = client(move |_| ok(&answer)).await;
        let pods = c.list_pod_sandboxes().await.expect("list");
        assert_eq!(paths(&log), ["/runtime.v1.RuntimeService/ListPodSandbox"]);
        let got: Vec<_> = pods
            .iter()
            .map(|p| {
                (
                    p.id.as_str(),
                    p.name.as_str(),
                    p.namespace.as_str(),
                    p.state,
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("a", "pod-a", "kube-system", SandboxState::Ready),
                ("b", "pod-b", "kube-system", SandboxState::NotReady)
            ]
        );
        let seen = log.lock().expect("log");
        assert_eq!(seen.first().map(|s| s.body.as_slice()), Some(&[0u8; 5][..]));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn falls_back_to_v1alpha2_on_unimplemented_and_keeps_to_it() {
        let (c, log) = client(|seen| {
            if seen.path.starts_with("/runtime.v1.") {
                trailers_only(12, "unknown service runtime.v1.RuntimeService")
            } else {
                ok(&version_answer())
            }
        })
        .await;
        c.version().await.expect("version");
        assert_eq!(c.service(), Some(RUNTIME_V1ALPHA2));
        c.stop_pod_sandbox("x").await.expect("stop");
        assert_eq!(
            paths(&log),
            [
                "/runtime.v1.RuntimeService/Version",
                "/runtime.v1alpha2.RuntimeService/Version",
                "/runtime.v1alpha2.RuntimeService/StopPodSandbox"
            ]
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn http_404_without_status_counts_as_unimplemented() {
        let (c, log) = client(|seen| {
            if seen.path.starts_with("/runtime.v1.") {
                Reply::HeadersOnly {
                    status: 404,
                    headers: vec![],
                }
            } else {
                ok(&wire::ListPodSandboxResponse::default())
            }
        })
        .await;
        assert!(c.list_pod_sandboxes().await.expect("list").is_empty());
        assert_eq!(paths(&log).len(), 2);
        assert_eq!(c.service(), Some(RUNTIME_V1ALPHA2));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn unimplemented_everywhere_is_an_error() {
        let (c, log) = client(|_| trailers_only(12, "no")).await;
        let e = c.version().await.expect_err("unimplemented");
        assert_eq!(e.code(), Some(GrpcCode::Unimplemented));
        assert!(e.to_string().contains("v1alpha2"), "{e}");
        assert_eq!(c.service(), None);
        assert_eq!(paths(&log).len(), 2);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn other_errors_do_not_fall_back() {
        let (c, log) = client(|_| trailers_only(5, "sandbox%20%22x%22%20not%20found")).await;
        let e = c.stop_pod_sandbox("x").await.expect_err("not found");
        match &e {
            CriError::Status {
                method,
                code,
                message,
            } => {
                assert_eq!(method, "/runtime.v1.RuntimeService/StopPodSandbox");
                assert_eq!(*code, GrpcCode::NotFound);
                assert_eq!(message, "sandbox \"x\" not found");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            e.to_string(),
            "/runtime.v1.RuntimeService/StopPodSandbox: NOT_FOUND (5): sandbox \"x\" not found"
        );
        assert_eq!(paths(&log).len(), 1);
        assert_eq!(c.service(), Some(RUNTIME_V1));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn status_in_trailers_after_a_body() {
        let (c, _) = client(|_| Reply::Body {
            body: frame(&version_answer()).expect("frame").to_vec(),
            trailers: Some(vec![
                ("grpc-status", "14".into()),
                ("grpc-message", "going%20away".into()),
            ]),
        })
        .await;
        let e = c.version().await.expect_err("unavailable");
        assert_eq!(e.code(), Some(GrpcCode::Unavailable));
        assert!(
            e.to_string().ends_with("UNAVAILABLE (14): going away"),
            "{e}"
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn malformed_answers_are_typed_errors() {
        let (c, _) = client(|seen| match seen.path.rsplit('/').next() {
            // The body, but no trailers.
            Some("Version") => Reply::Body {
                body: frame(&version_answer()).expect("frame").to_vec(),
                trailers: None,
            },
            // Not gRPC at all.
            Some("ListPodSandbox") => Reply::HeadersOnly {
                status: 200,
                headers: vec![("content-type", "text/html".into())],
            },
            // OK, but no message.
            Some("StopPodSandbox") => trailers_only(0, ""),
            // A message that is not protobuf.
            _ => Reply::Body {
                body: b"\x00\x00\x00\x00\x02\xff\xff".to_vec(),
                trailers: Some(vec![("grpc-status", "0".into())]),
            },
        })
        .await;
        let e = c.version().await.expect_err("no status");
        assert!(matches!(e, CriError::Protocol { .. }), "{e:?}");
        let e = c.list_pod_sandboxes().await.expect_err("not grpc");
        assert!(matches!(e, CriError::Protocol { .. }), "{e:?}");
        let e = c.stop_pod_sandbox("x").await.expect_err("no message");
        assert!(
            matches!(
                e,
                CriError::Frame {
                    source: FrameError::Empty,
                    ..
                }
            ),
            "{e:?}"
        );
        let e = c.remove_pod_sandbox("x").await.expect_err("bad protobuf");
        assert!(matches!(e, CriError::Decode { .. }), "{e:?}");
        assert!(std::error::Error::source(&e).is_some());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn answers_over_the_cap_are_refused() {
        let answer = wire::ListPodSandboxResponse {
            items: (0..100).map(|i| sandbox(&i.to_string(), 0)).collect(),
        };
        let (c, _) = client(move |_| ok(&answer)).await;
        let c = c.with_max_response(1000);
        let e = c.list_pod_sandboxes().await.expect_err("too large");
        match e {
            CriError::Frame {
                source: FrameError::TooLarge { size, limit },
                ..
            } => assert!(size > 1000 && limit == 1000, "{size} {limit}"),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_silent_server_times_out() {
        let (c, _) = client_with(Duration::from_millis(200), |_| Reply::Hang).await;
        let started = std::time::Instant::now();
        let e = c.version().await.expect_err("timeout");
        assert!(matches!(e, CriError::Timeout { .. }), "{e:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(c.service(), None);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn remove_all_pods_stops_then_removes_each_and_goes_on() {
        let (c, log) = client(|seen| {
            let method = seen.path.rsplit('/').next().unwrap_or_default();
            let id = wire::StopPodSandboxRequest::decode(seen.body.get(5..).unwrap_or_default())
                .map(|r| r.pod_sandbox_id)
                .unwrap_or_default();
            match (method, id.as_str()) {
                ("ListPodSandbox", _) => ok(&wire::ListPodSandboxResponse {
                    items: vec![sandbox("a", 0), sandbox("b", 0), sandbox("c", 1)],
                }),
                (_, "b") => trailers_only(13, "stuck"),
                ("RemovePodSandbox", "c") => trailers_only(5, "gone already"),
                _ => ok(&wire::StopPodSandboxResponse {}),
            }
        })
        .await;
        assert_eq!(c.remove_all_pods().await.expect("remove all"), 2);
        let calls: Vec<String> = log
            .lock()
            .expect("log")
            .iter()
            .map(|s| {
                let id = wire::StopPodSandboxRequest::decode(s.body.get(5..).unwrap_or_default())
                    .map(|r| r.pod_sandbox_id)
                    .unwrap_or_default();
                format!("{} {id}", s.path.rsplit('/').next().unwrap_or_default())
            })
            .collect();
        assert_eq!(
            calls,
            [
                "ListPodSandbox ",
                "StopPodSandbox a",
                "RemovePodSandbox a",
                "StopPodSandbox b",
                "RemovePodSandbox b",
                "StopPodSandbox c",
                "RemovePodSandbox c"
            ]
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn remove_all_pods_fails_when_the_list_does() {
        let (c, _) = client(|_| trailers_only(14, "down")).await;
        let e = c.remove_all_pods().await.expect_err("list fails");
        assert_eq!(e.code(), Some(GrpcCode::Unavailable));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn connects_by_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("cri.sock");
        let listener = tokio::net::UnixListener::bind(&socket).expect("bind");
        tokio::spawn(async move {
            if let Ok((io, _)) = listener.accept().await {
                serve(
                    io,
                    Arc::new(|_: &Seen| ok(&version_answer())),
                    Log::default(),
                )
                .await;
            }
        });
        let c = CriClient::connect(&socket, Duration::from_secs(5))
            .await
            .expect("connect");
        assert_eq!(
            c.version().await.expect("version").runtime_name,
            "containerd"
        );

        let missing = dir.path().join("missing.sock");
        let e = match CriClient::connect(&missing, Duration::from_secs(5)).await {
            Err(e) => e,
            Ok(_) => panic!("connected to nothing"),
        };
        assert!(matches!(e, CriError::Connect { .. }), "{e:?}");
        assert!(e.to_string().contains("missing.sock"), "{e}");
        assert!(std::error::Error::source(&e).is_some());
    }

    // ---- Against a real runtime (tests/cri/check.sh) --------------------------------------

    /// `RunPodSandbox` and what it needs, for the real-runtime test only.
    mod run {
        use std::collections::BTreeMap;

        /// `NamespaceMode.NODE`.
        pub const NODE: i32 = 2;

        #[derive(Clone, PartialEq, prost::Message)]
        pub struct NamespaceOption {
            #[prost(int32, tag = "1")]
            pub network: i32,
            #[prost(int32, tag = "2")]
            pub pid: i32,
            #[prost(int32, tag = "3")]
            pub ipc: i32,
        }

        #[derive(Clone, PartialEq, prost::Message)]
        pub struct LinuxSandboxSecurityContext {
            #[prost(message, optional, tag = "1")]
            pub namespace_options: Option<NamespaceOption>,
        }

        #[derive(Clone, PartialEq, prost::Message)]
        pub struct LinuxPodSandboxConfig {
            #[prost(string, tag = "1")]
            pub cgroup_parent: String,
            #[prost(message, optional, tag = "2")]
            pub security_context: Option<LinuxSandboxSecurityContext>,
        }

        #[derive(Clone, PartialEq, prost::Message)]
        pub struct PodSandboxConfig {
            #[prost(message, optional, tag = "1")]
            pub metadata: Option<super::wire::PodSandboxMetadata>,
            #[prost(string, tag = "2")]
            pub hostname: String,
            #[prost(string, tag = "3")]
            pub log_directory: String,
            #[prost(btree_map = "string, string", tag = "6")]
            pub labels: BTreeMap<String, String>,
            #[prost(message, optional, tag = "8")]
            pub linux: Option<LinuxPodSandboxConfig>,
        }

        #[derive(Clone, PartialEq, prost::Message)]
        pub struct RunPodSandboxRequest {
            #[prost(message, optional, tag = "1")]
            pub config: Option<PodSandboxConfig>,
            #[prost(string, tag = "2")]
            pub runtime_handler: String,
        }

        #[derive(Clone, PartialEq, prost::Message)]
        pub struct RunPodSandboxResponse {
            #[prost(string, tag = "1")]
            pub pod_sandbox_id: String,
        }
    }

    const TEST_NAMESPACE: &str = "node-attach-cri-test";

    /// A host-network sandbox (no CNI), retried for a while: the CRI plugin learns of an image
    /// imported just before from containerd's events.
    async fn run_host_sandbox(c: &CriClient, name: &str, logs: &Path) -> String {
        let config = run::PodSandboxConfig {
            metadata: Some(wire::PodSandboxMetadata {
                name: name.to_owned(),
                uid: format!("uid-{name}"),
                namespace: TEST_NAMESPACE.to_owned(),
                attempt: 0,
            }),
            log_directory: logs.join(name).display().to_string(),
            labels: BTreeMap::from([("node-attach-test".to_owned(), name.to_owned())]),
            linux: Some(run::LinuxPodSandboxConfig {
                // check.sh names a cgroup of its own, to remove afterwards.
                cgroup_parent: std::env::var("NODE_ATTACH_CRI_CGROUP_PARENT").unwrap_or_default(),
                security_context: Some(run::LinuxSandboxSecurityContext {
                    namespace_options: Some(run::NamespaceOption {
                        network: run::NODE,
                        ..Default::default()
                    }),
                }),
            }),
            ..Default::default()
        };
        let request = run::RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: String::new(),
        };
        let mut last = None;
        for _ in 0..20 {
            match c
                .call::<_, run::RunPodSandboxResponse>("RunPodSandbox", &request)
                .await
            {
                Ok(r) => return r.pod_sandbox_id,
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        panic!("RunPodSandbox {name}: {last:?}");
    }

    async fn sandbox_life_cycle(c: &CriClient) {
        let before = c.list_pod_sandboxes().await.expect("ListPodSandbox");
        assert!(
            before.is_empty(),
            "refusing to remove sandboxes this test did not make: use a runtime with none"
        );
        let logs = tempfile::tempdir().expect("tempdir");
        let a = run_host_sandbox(c, "a", logs.path()).await;
        let b = run_host_sandbox(c, "b", logs.path()).await;
        let pods = c.list_pod_sandboxes().await.expect("ListPodSandbox");
        eprintln!("after RunPodSandbox twice: {pods:?}");
        let mut names: Vec<_> = pods
            .iter()
            .map(|p| (p.name.as_str(), p.namespace.as_str(), p.state))
            .collect();
        names.sort_by_key(|n| n.0);
        let ready = SandboxState::Ready;
        assert_eq!(
            names,
            [("a", TEST_NAMESPACE, ready), ("b", TEST_NAMESPACE, ready)]
        );
        assert!(pods.iter().any(|p| p.id == a) && pods.iter().any(|p| p.id == b));

        c.stop_pod_sandbox(&a).await.expect("StopPodSandbox");
        let pods = c.list_pod_sandboxes().await.expect("ListPodSandbox");
        let state = pods.iter().find(|p| p.id == a).map(|p| p.state);
        assert_eq!(state, Some(SandboxState::NotReady));
        c.remove_pod_sandbox(&a).await.expect("RemovePodSandbox");
        for outcome in [c.stop_pod_sandbox(&a).await, c.remove_pod_sandbox(&a).await] {
            eprintln!("again on the removed sandbox: {outcome:?}");
            assert!(outcome.is_ok() || outcome.is_err_and(|e| e.code().is_some()));
        }

        assert_eq!(c.remove_all_pods().await.expect("remove_all_pods"), 1);
        let after = c.list_pod_sandboxes().await.expect("ListPodSandbox");
        assert!(after.is_empty(), "{after:?}");
    }

    /// Runs against the CRI socket named by `NODE_ATTACH_CRI_SOCKET`; with
    /// `NODE_ATTACH_CRI_SANDBOXES` set, also makes host-network sandboxes and stops and removes
    /// them (only on a runtime with no sandboxes to begin with).
    #[tokio::test(flavor = "current_thread")]
    #[ignore = "needs a container runtime: tests/cri/check.sh runs it against a private containerd"]
    async fn real_runtime() {
        let socket = std::env::var_os("NODE_ATTACH_CRI_SOCKET")
            .map(PathBuf::from)
            .expect("NODE_ATTACH_CRI_SOCKET names the runtime's CRI socket");
        let timeout = Duration::from_secs(60);
        let c = CriClient::connect(&socket, timeout).await.expect("connect");
        let v = c.version().await.expect("Version");
        eprintln!("Version over {:?}: {v:?}", c.service());
        assert!(!v.runtime_name.is_empty() && !v.runtime_version.is_empty());
        let pods = c.list_pod_sandboxes().await.expect("ListPodSandbox");
        eprintln!("ListPodSandbox: {} sandboxes", pods.len());

        let old = CriClient::connect(&socket, timeout).await.expect("connect");
        old.api.store(API_V1ALPHA2, Ordering::Relaxed);
        let v1alpha2 = match old.version().await {
            Ok(v) => {
                eprintln!("Version over {RUNTIME_V1ALPHA2}: {v:?}");
                let listed = old.list_pod_sandboxes().await.expect("ListPodSandbox");
                assert_eq!(listed.len(), pods.len());
                true
            }
            Err(e) if e.code() == Some(GrpcCode::Unimplemented) => {
                eprintln!("{RUNTIME_V1ALPHA2} is not served: {e}");
                false
            }
            Err(e) => panic!("{e:?}"),
        };

        if std::env::var_os("NODE_ATTACH_CRI_SANDBOXES").is_some() {
            sandbox_life_cycle(&c).await;
            if v1alpha2 {
                sandbox_life_cycle(&old).await;
            }
        }
    }
}
