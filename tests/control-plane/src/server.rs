//! HTTPS over rustls with optional client certificates, HTTP/1.1 through hyper, and the
//! authentication step in front of [`crate::api::handle`].

use crate::api::{self, Reply, Req};
use crate::auth::{self, User};
use crate::Shared;
use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

/// Picks the serving certificate per handshake: the cluster's, or (fault) a foreign one.
#[derive(Debug)]
struct Resolver {
    real: Arc<CertifiedKey>,
    foreign: Arc<CertifiedKey>,
    shared: std::sync::Weak<Shared>,
    handshakes: std::sync::atomic::AtomicUsize,
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let n = self
            .handshakes
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let foreign = self.shared.upgrade().is_some_and(|s| {
            let f = &s.lock().faults;
            f.foreign_serving_cert || f.foreign_serving_cert_after.is_some_and(|after| n >= after)
        });
        Some(if foreign {
            self.foreign.clone()
        } else {
            self.real.clone()
        })
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Shared")
    }
}

fn certified(issued: &crate::pki::Issued) -> Arc<CertifiedKey> {
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(issued.cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .expect("serving chain");
    let key = PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes()).expect("serving key");
    let provider = rustls::crypto::ring::default_provider();
    Arc::new(CertifiedKey::from_der(chain, key, &provider).expect("certified key"))
}

fn tls_config(shared: &Arc<Shared>) -> rustls::ServerConfig {
    let mut names = vec![
        "127.0.0.1".to_owned(),
        "localhost".to_owned(),
        "::1".to_owned(),
    ];
    names.extend(shared.options.advertise.iter().cloned());
    let listen_ip = shared.options.listen.ip().to_string();
    if !names.contains(&listen_ip) && !shared.options.listen.ip().is_unspecified() {
        names.push(listen_ip);
    }
    let real = certified(&shared.ca.issue_server(&names));
    let foreign = certified(&shared.foreign_ca.issue_server(&names));
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(shared.ca.cert_der().to_vec()))
        .expect("CA root");
    let verifier = WebPkiClientVerifier::builder(Arc::new(roots))
        .allow_unauthenticated()
        .build()
        .expect("client verifier");
    let mut cfg = rustls::ServerConfig::builder()
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(Resolver {
            real,
            foreign,
            shared: Arc::downgrade(shared),
            handshakes: std::sync::atomic::AtomicUsize::new(0),
        }));
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    cfg
}

/// A body fed from a channel (watch streams).
struct ChannelBody(tokio::sync::mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

/// The first API fault matching this request, taken from the queue.
fn take_fault(shared: &Shared, req: &Req) -> Option<crate::ApiFault> {
    let mut state = shared.lock();
    let shedding = state
        .faults
        .shed_until
        .is_some_and(|until| std::time::Instant::now() < until);
    if shedding && !req.path.starts_with("/v1/") {
        state.faults.shed += 1;
        let kind = if state.faults.shed % 2 == 1 {
            crate::ApiFaultKind::Status(429, Some(1))
        } else {
            crate::ApiFaultKind::Status(503, None)
        };
        return Some(crate::ApiFault {
            method: req.method.clone(),
            path_contains: String::new(),
            query_contains: String::new(),
            kind,
        });
    }
    let queue = &mut state.faults.api;
    let at = queue.iter().position(|f| {
        f.method == req.method
            && req.path.contains(&f.path_contains)
            && req.query.contains(&f.query_contains)
    })?;
    queue.remove(at)
}

/// The answer broken as the fault says: half the body under a Content-Length promising all of
/// it (the client sees the connection end mid-body), or half the JSON as a whole chunked body.
fn broken(
    kind: &crate::ApiFaultKind,
    status: u16,
    content_type: &str,
    body: Bytes,
) -> Response<BoxBody<Bytes, Infallible>> {
    let half = body.slice(..body.len() / 2);
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
    let _ = tx.try_send(half);
    drop(tx);
    let b = Response::builder()
        .status(status)
        .header("content-type", content_type);
    let b = match kind {
        crate::ApiFaultKind::CutShort => b.header("content-length", body.len().to_string()),
        _ => b.header("transfer-encoding", "chunked"),
    };
    b.body(ChannelBody(rx).boxed()).expect("response")
}

/// Accepts connections until `stop` fires.
pub async fn serve(
    shared: Arc<Shared>,
    listener: tokio::net::TcpListener,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let config = tls_config(&shared);
    // The same certificates (and handshake count), without resumption.
    let mut no_resumption = config.clone();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    no_resumption.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    no_resumption.send_tls13_tickets = 0;
    let no_resumption = tokio_rustls::TlsAcceptor::from(Arc::new(no_resumption));
    loop {
        let accepted = tokio::select! {
            _ = &mut stop => return,
            a = listener.accept() => a,
        };
        let Ok((tcp, _peer)) = accepted else { continue };
        let shared = shared.clone();
        let keep_alive = !shared.lock().faults.close_connections;
        let acceptor = if keep_alive {
            acceptor.clone()
        } else {
            no_resumption.clone()
        };
        tokio::spawn(async move {
            let Ok(Ok(tls)) =
                tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(tcp))
                    .await
            else {
                return;
            };
            let cert_user = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|der| crate::pki::subject_of(der))
                .map(|(cn, orgs)| auth::from_certificate(cn, orgs));
            let io = hyper_util::rt::TokioIo::new(tls);
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let shared = shared.clone();
                let cert_user = cert_user.clone();
                async move { Ok::<_, Infallible>(respond(shared, cert_user, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .keep_alive(keep_alive)
                .serve_connection(io, service)
                .await;
        });
    }
}

/// The answer to one request, with its `Date` moved by the clock fault when there is one
/// (hyper writes the current time only where no `Date` was set).
async fn respond(
    shared: Arc<Shared>,
    cert_user: Option<User>,
    req: Request<Incoming>,
) -> Response<BoxBody<Bytes, Infallible>> {
    let offset = shared.lock().faults.clock_offset;
    let mut response = answer(shared, cert_user, req).await;
    if let Some(secs) = offset {
        let now = std::time::SystemTime::now();
        let shifted = match u64::try_from(secs) {
            Ok(ahead) => now + std::time::Duration::from_secs(ahead),
            Err(_) => now - std::time::Duration::from_secs(secs.unsigned_abs()),
        };
        if let Ok(v) = hyper::header::HeaderValue::from_str(&httpdate::fmt_http_date(shifted)) {
            response.headers_mut().insert(hyper::header::DATE, v);
        }
    }
    response
}

async fn answer(
    shared: Arc<Shared>,
    cert_user: Option<User>,
    req: Request<Incoming>,
) -> Response<BoxBody<Bytes, Infallible>> {
    let (parts, body) = req.into_parts();
    let body = match http_body_util::Limited::new(body, 8 * 1024 * 1024)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let authz = header("authorization");
    let (user, bad_credentials) = match authz.strip_prefix("Bearer ") {
        Some(token) => match auth::bootstrap_token(&shared.lock().store, token.trim()) {
            Some(u) => (u, false),
            None => (User::anonymous(), true),
        },
        None => (cert_user.unwrap_or_else(User::anonymous), false),
    };
    let request = Req {
        method: parts.method.as_str().to_owned(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().unwrap_or_default().to_owned(),
        accept: header("accept"),
        content_type: header("content-type"),
        user_agent: header("user-agent"),
        body,
        user,
        bad_credentials,
    };
    let fault = take_fault(&shared, &request);
    if let Some(crate::ApiFaultKind::Echo(status, message)) = fault.as_ref().map(|f| &f.kind) {
        let body = serde_json::json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": message, "code": status});
        return Response::builder()
            .status(*status)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())).boxed())
            .expect("response");
    }
    if let Some(crate::ApiFaultKind::Body(status, body)) = fault.as_ref().map(|f| &f.kind) {
        return Response::builder()
            .status(*status)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.clone())).boxed())
            .expect("response");
    }
    if let Some(crate::ApiFaultKind::Stall) = fault.as_ref().map(|f| &f.kind) {
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
        // The sender outlives any client's patience: the stream neither ends nor speaks.
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_secs(600)).await;
            drop(tx);
        });
        return Response::builder()
            .status(200)
            .header("content-type", "application/json")
            .body(ChannelBody(rx).boxed())
            .expect("response");
    }
    if let Some(crate::ApiFaultKind::Status(status, retry_after)) =
        &fault.as_ref().map(|f| f.kind.clone())
    {
        let mut b = Response::builder()
            .status(*status)
            .header("content-type", "application/json");
        if let Some(secs) = retry_after {
            b = b.header("retry-after", secs.to_string());
        }
        let body = format!(
            r#"{{"kind":"Status","apiVersion":"v1","metadata":{{}},"status":"Failure","message":"injected fault","code":{status}}}"#
        );
        return b
            .body(Full::new(Bytes::from(body)).boxed())
            .expect("response");
    }
    let reply = api::handle(&shared, request);
    if let (
        Some(f),
        Reply::Full {
            status,
            content_type,
            body,
            ..
        },
    ) = (&fault, &reply)
    {
        return broken(&f.kind, *status, content_type, body.clone());
    }
    match reply {
        Reply::Full {
            status,
            content_type,
            headers,
            body,
        } => {
            let mut b = Response::builder()
                .status(status)
                .header("content-type", content_type);
            for (k, v) in headers {
                b = b.header(k, v);
            }
            b.body(Full::new(body).boxed()).expect("response")
        }
        Reply::Stream(rx) => Response::builder()
            .status(200)
            .header("content-type", "application/json")
            .header("transfer-encoding", "chunked")
            .body(ChannelBody(rx).boxed())
            .expect("response"),
    }
}
