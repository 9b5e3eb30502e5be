//! The bootstrap phase: the node's client certificate, in the kubelet certificate store's
//! layout (`kubelet-client-<timestamp>.pem` and the `kubelet-client-current.pem` symlink, the
//! pair 0600) with `/etc/kubernetes/kubelet.conf` pointing at it. node-attach makes the CSR
//! itself ([`super::csr`]) by default; with `--tls-bootstrap=kubelet` it writes kubeadm's
//! `bootstrap-kubelet.conf` and the kubelet does it. A certificate with time left is kept
//! (the kubelet rotates it), and the key survives a rerun until a certificate is issued.

use super::csr;
use super::Context;
use crate::apply::{Applier, ApplyError};
use crate::error::{Code, Failure};
use crate::model::kubeconfig::{ClusterInfo, Kubeconfig};
use crate::sources::settings::TlsBootstrapMode;
use std::path::{Path, PathBuf};

pub use crate::model::paths::{BOOTSTRAP_CONF, CURRENT, KUBELET_CONF, PKI_DIR, TMP_KEY};

/// How an error of the applier reads in this phase.
fn failed(e: ApplyError) -> Failure {
    super::apply_failure(Code::Bootstrap)(e)
}

/// What bootstrap made: the client certificate's expiry when known, and the CSR it was issued
/// for when this run made one (the join's report names it, so the values service reads that
/// one CSR rather than listing them all).
#[derive(Debug, Default)]
pub struct Bootstrapped {
    /// The client certificate's expiry (Unix seconds).
    pub expiry: Option<i64>,
    /// The CSR's name.
    pub csr: Option<String>,
}

/// Runs the bootstrap phase.
pub async fn phase(applier: &mut Applier<'_>, ctx: &Context<'_>) -> Result<Bootstrapped, Failure> {
    let info = ClusterInfo {
        server: ctx.found.api_server.clone(),
        ca_pem: ctx.found.ca_pem.clone(),
    };
    if ctx.settings.tls_bootstrap == TlsBootstrapMode::Kubelet {
        let name = ctx.cluster.config.cluster_name.as_str();
        let cfg =
            Kubeconfig::bootstrap(name, &info, &ctx.settings.bootstrap_token()?.expose_full());
        applier
            .file(
                Path::new(BOOTSTRAP_CONF),
                0o600,
                cfg.to_yaml().as_bytes(),
                true,
            )
            .map_err(failed)?;
        return Ok(Bootstrapped::default());
    }
    let kubelet_conf = Kubeconfig::kubelet(&info, CURRENT).to_yaml();
    if let Some(expiry) = keep_valid_pair(applier, &kubelet_conf)? {
        return Ok(Bootstrapped {
            expiry: Some(expiry),
            csr: None,
        });
    }
    issue_new_pair(applier, ctx, &kubelet_conf).await
}

/// Already bootstrapped with a certificate that has ten minutes or more left: kept (the
/// kubelet rotates it), kubelet.conf rewritten, the retry key dropped.
fn keep_valid_pair(applier: &mut Applier<'_>, kubelet_conf: &str) -> Result<Option<i64>, Failure> {
    let root = applier.effects().root.clone();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let conf_there = root.read(Path::new(KUBELET_CONF)).ok().flatten().is_some();
    match current_expiry(&root) {
        Some(expiry) if expiry > now + 600 && conf_there => {
            applier
                .file(
                    Path::new(KUBELET_CONF),
                    0o600,
                    kubelet_conf.as_bytes(),
                    false,
                )
                .map_err(failed)?;
            applier.remove_own(Path::new(TMP_KEY)).map_err(failed)?;
            Ok(Some(expiry))
        }
        _ => Ok(None),
    }
}

/// A new key (or the one a killed run left), its CSR, the certificate, the stored pair.
async fn issue_new_pair(
    applier: &mut Applier<'_>,
    ctx: &Context<'_>,
    kubelet_conf: &str,
) -> Result<Bootstrapped, Failure> {
    let root = applier.effects().root.clone();
    applier.dir(Path::new(PKI_DIR), 0o755).map_err(failed)?;
    let key = root
        .read(Path::new(TMP_KEY))
        .map_err(|e| Failure::new(Code::Filesystem, e.to_string()))?;
    let key = key.as_deref().map(String::from_utf8_lossy);
    let usages = crate::model::compat::csr_usages(&ctx.cluster.version);
    let node = &ctx.identity.node_name;
    let request = csr::build_request(node, key.as_deref(), usages)?;
    applier
        .file(Path::new(TMP_KEY), 0o600, request.key_pem.as_bytes(), true)
        .map_err(failed)?;
    let pair_path = PathBuf::from(PKI_DIR).join(pair_file_name(time::OffsetDateTime::now_utc()));
    if applier.dry_run() {
        let what = format!(
            "POST /apis/certificates.k8s.io/v1/certificatesigningrequests {}",
            request.name
        );
        let detail = format!("CN=system:node:{node}, O=system:nodes, signer {}; then watch until approved and signed", csr::SIGNER);
        applier.api(&what, &detail, true);
        let planned = b"(issued certificate and key)";
        store_pair(applier, &pair_path, planned, kubelet_conf).map_err(failed)?;
        return Ok(Bootstrapped::default());
    }
    let created = csr::create(&ctx.kube, &request, &ctx.cluster.version).await?;
    let what = format!("POST certificatesigningrequests {}", request.name);
    applier.api(&what, created.version, true);
    let cert = csr::wait_for_certificate(&ctx.kube, &created, ctx.settings.timeouts.csr).await?;
    let expiry = csr::verify_issued(&cert, &request.spki, node, &ctx.found.ca_ders)?;
    let mut pair = cert;
    if !pair.ends_with(b"\n") {
        pair.push(b'\n');
    }
    pair.extend_from_slice(request.key_pem.as_bytes());
    store_pair(applier, &pair_path, &pair, kubelet_conf).map_err(failed)?;
    Ok(Bootstrapped {
        expiry: Some(expiry),
        csr: Some(created.csr.metadata.name.clone()),
    })
}

/// Stores an issued pair the way the kubelet's certificate store does (the pair file 0600, the
/// `kubelet-client-current.pem` symlink), points kubelet.conf at it, and drops the retry key.
fn store_pair(
    applier: &mut Applier<'_>,
    pair_path: &Path,
    pair: &[u8],
    kubelet_conf: &str,
) -> Result<(), ApplyError> {
    applier.file(pair_path, 0o600, pair, true)?;
    applier.symlink(Path::new(CURRENT), pair_path)?;
    applier.file(
        Path::new(KUBELET_CONF),
        0o600,
        kubelet_conf.as_bytes(),
        false,
    )?;
    applier.remove_own(Path::new(TMP_KEY))?;
    Ok(())
}

/// The kubelet certificate store's file name for a pair issued now:
/// `kubelet-client-YYYY-MM-DD-HH-MM-SS.pem`.
pub fn pair_file_name(now: time::OffsetDateTime) -> String {
    format!(
        "kubelet-client-{:04}-{:02}-{:02}-{:02}-{:02}-{:02}.pem",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second()
    )
}

/// When the current client certificate expires, if one is there and readable.
pub fn current_expiry(root: &crate::effects::fs::Root) -> Option<i64> {
    let link = match root.inspect(std::path::Path::new(CURRENT)).ok()? {
        crate::effects::fs::Existing::Symlink(t) => t,
        _ => return None,
    };
    let bytes = root.read(&link).ok()??;
    use rustls::pki_types::pem::PemObject;
    let first = rustls::pki_types::CertificateDer::pem_slice_iter(&bytes)
        .next()?
        .ok()?;
    let (_, leaf) = x509_parser::parse_x509_certificate(first.as_ref()).ok()?;
    Some(leaf.validity().not_after.timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_name_matches_the_kubelet_store() {
        let t = time::macros::datetime!(2026-11-26 09:05:03 UTC);
        assert_eq!(pair_file_name(t), "kubelet-client-2026-11-26-09-05-03.pem");
    }
}
