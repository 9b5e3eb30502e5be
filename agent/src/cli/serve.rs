//! `node-attach serve`: run the values service (see [`crate::operator::serve`]).

use crate::client::kube::Kube;
use crate::error::{Code, Failure};
use crate::operator::serve::{self, ServeConfig};
use crate::report::Reporter;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::PathBuf;
use std::time::Duration;

/// Serve cluster values to nodes by openapi token (the control plane's side).
#[derive(Clone, Debug, clap::Args)]
pub struct ServeArgs {
    /// Admin kubeconfig (default: $KUBECONFIG, then /etc/kubernetes/admin.conf).
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0:8443")]
    pub listen: std::net::SocketAddr,
    /// TLS certificate chain (PEM).
    #[arg(long, value_name = "FILE")]
    pub tls_cert: PathBuf,
    /// TLS private key (PEM).
    #[arg(long, value_name = "FILE")]
    pub tls_key: PathBuf,
    /// Namespace of the openapi token Secrets.
    #[arg(long, default_value = "node-attach")]
    pub namespace: String,
    /// The API server endpoint nodes are given when a token's values name none (default: the
    /// kubeconfig's server; set it when the service reaches the API server by another address
    /// than nodes do, as in a pod through kubernetes.default.svc).
    #[arg(long, value_name = "HOST:PORT", value_parser = parse_endpoint)]
    pub endpoint: Option<String>,
    /// This service's public base URL (callbacks point there), e.g. https://values.example.com.
    #[arg(long, value_name = "URL")]
    pub public_url: String,
    /// Lifetime of the bootstrap token minted for each use.
    #[arg(long, default_value = "30m", value_parser = crate::model::duration::parse)]
    pub bootstrap_ttl: Duration,
    /// Requests per minute per client address on the anonymous endpoints.
    #[arg(long, default_value_t = 60)]
    pub rate_per_minute: u32,
    /// Also serve this directory read-only at /files/... (GET and HEAD; regular files only, no
    /// listing, no symlinks followed): attach.sh, the binary and its .sha256.
    #[arg(long, value_name = "DIR")]
    pub files: Option<PathBuf>,
    /// Connections served at once (a joining node holds one or two); beyond, a connection waits
    /// up to 5 s for a free slot, then is closed.
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
    /// Keep the Node of a node whose reset reports its removal (by default the service deletes
    /// it when the report is authenticated with that node's client certificate).
    #[arg(long)]
    pub keep_removed_nodes: bool,
}

fn parse_endpoint(s: &str) -> Result<String, String> {
    crate::model::validate::Endpoint::parse("--endpoint", s)
        .map(|e| e.to_string())
        .map_err(|e| e.to_string())
}

/// Admin client, CA pin and API endpoint from `--kubeconfig`, else `$KUBECONFIG` (several files
/// merged as kubectl merges them), else /etc/kubernetes/admin.conf.
pub fn admin_client(path: &Option<PathBuf>) -> Result<(Kube, String, String), Failure> {
    let admin = crate::client::kube::kubeconfig::load(path.as_deref())
        .map_err(|e| Failure::new(Code::Usage, crate::error::chain(&e)))?;
    tracing::info!("admin kubeconfig: {}", admin.describe());
    // A node waits on each answer: the service retries the cluster briefly, then says so. 25 s
    // in all per call, as long as a call could last when attempts started within 5 s ran their
    // own timeouts (5 s connect, 15 s request): a call cut shorter under load (a 1000-node
    // burst, docs/performance.md) may have taken a use whose answer is then lost.
    let kube = Kube::from_admin(&admin, crate::client::http::Limits::default())
        .map_err(|e| Failure::new(Code::Usage, e.to_string()))?
        .with_retry_deadline(std::time::Duration::from_secs(25));
    let pin = crate::trust::pin::certificates_from_pem(&admin.ca_pem)
        .ok()
        .and_then(|c| {
            c.first()
                .and_then(|d| crate::trust::pin::CaPin::of_certificate_der(d).ok())
        })
        .map(|p| p.to_string())
        .ok_or_else(|| Failure::new(Code::Usage, "the kubeconfig's CA is unreadable"))?;
    let endpoint = admin.server.trim_start_matches("https://").to_owned();
    Ok((kube, pin, endpoint))
}

/// Client certificates are verified (and optional) when removed nodes are deleted; without the
/// API server's client CAs, reports cannot be authenticated and no Node is deleted.
async fn client_verifier(
    kube: &Kube,
    keep_removed_nodes: bool,
) -> std::sync::Arc<dyn rustls::server::danger::ClientCertVerifier> {
    let none = || rustls::server::WebPkiClientVerifier::no_client_auth();
    if keep_removed_nodes {
        return none();
    }
    match serve::identity::client_verifier(kube).await {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!("removed nodes cannot be deleted: {e}");
            none()
        }
    }
}

/// Runs the service.
pub async fn run(args: ServeArgs, _reporter: &mut Reporter) -> Result<(), Failure> {
    let (kube, ca_pin, endpoint) = admin_client(&args.kubeconfig)?;
    let usage = |m: String| Failure::new(Code::Usage, m);
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&args.tls_cert)
        .and_then(|i| i.collect())
        .map_err(|e| usage(format!("--tls-cert {}: {e}", args.tls_cert.display())))?;
    let key = PrivateKeyDer::from_pem_file(&args.tls_key)
        .map_err(|e| usage(format!("--tls-key {}: {e}", args.tls_key.display())))?;
    let tls = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| usage(e.to_string()))?
    .with_client_cert_verifier(client_verifier(&kube, args.keep_removed_nodes).await)
    .with_single_cert(chain, key)
    .map_err(|e| usage(format!("the TLS certificate or key: {e}")))?;
    if !args.public_url.starts_with("https://") {
        return Err(usage("--public-url must be an https URL".into()));
    }
    let files = args
        .files
        .as_deref()
        .map(serve::files::Files::open)
        .transpose()
        .map_err(usage)?;
    let cfg = ServeConfig {
        kube,
        namespace: args.namespace,
        endpoint: args.endpoint.unwrap_or(endpoint),
        ca_pin,
        public_url: args.public_url,
        bootstrap_ttl: args.bootstrap_ttl,
        rate_per_minute: args.rate_per_minute,
        files,
        delete_removed_nodes: !args.keep_removed_nodes,
        max_connections: args.max_connections as usize,
    };
    serve::run(cfg, args.listen, tls)
        .await
        .map_err(|e| Failure::new(Code::Internal, e))
}
