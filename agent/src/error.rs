//! Stable error codes, exit codes and fix hints.
//!
//! Every failure node-attach reports carries a [`Code`]: a stable identifier for scripts and
//! callbacks (`discovery.signature-mismatch`), a process exit code, and a plain-language hint.
//! `docs/exit-codes.md` lists them all; a test keeps that page and this table in step.

use crate::model::cause::Cause;
use serde::Serialize;
use std::fmt;

macro_rules! codes {
    ($( $(#[$doc:meta])* $variant:ident = ($id:literal, $exit:literal, $hint:literal), )*) => {
        /// A stable failure code.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Code {
            $( $(#[$doc])* $variant, )*
        }

        impl Code {
            /// Every code, in documentation order.
            pub const ALL: &'static [Code] = &[ $( Code::$variant, )* ];

            /// The stable identifier, e.g. `discovery.pin-mismatch`.
            pub fn id(self) -> &'static str {
                match self { $( Code::$variant => $id, )* }
            }

            /// The process exit code.
            pub fn exit_code(self) -> u8 {
                match self { $( Code::$variant => $exit, )* }
            }

            /// What to do about it, in plain language.
            pub fn hint(self) -> &'static str {
                match self { $( Code::$variant => $hint, )* }
            }
        }
    };
}

codes! {
    /// A bug or an unexpected local condition.
    Internal = ("internal", 1,
        "This is a bug in node-attach; rerun with -v and report the output."),
    /// Bad command line: unknown flag, malformed value, missing input, `join --help`.
    Usage = ("usage", 2,
        "Fix the command line as the message says; `node-attach <command> --help` lists the flags."),
    /// The values endpoint could not be reached or kept failing.
    ValuesUnreachable = ("values.unreachable", 10,
        "Check that this machine can reach the values URL (DNS, routes, proxy, firewall) and that the service is up."),
    /// The control plane refused the openapi token.
    ValuesRefused = ("values.refused", 11,
        "The openapi token is unknown, expired or used up: ask the cluster operator for a fresh join command."),
    /// The values were fetched but are malformed or fail validation.
    ValuesInvalid = ("values.invalid", 12,
        "The control plane sent values node-attach cannot use; the message names the field. Fix it on the control plane."),
    /// The API server endpoint could not be reached within the discovery timeout.
    DiscoveryUnreachable = ("discovery.unreachable", 20,
        "Check that this machine reaches the API server endpoint (port 6443 open in security groups, routes, proxy)."),
    /// cluster-info is missing or anonymous reads of it are forbidden.
    DiscoveryNoClusterInfo = ("discovery.no-cluster-info", 21,
        "The kube-public/cluster-info ConfigMap is missing or not readable anonymously; run `kubeadm init phase bootstrap-token` on the control plane."),
    /// cluster-info carries no signature for this token id.
    DiscoveryTokenNotSigning = ("discovery.token-not-signing", 22,
        "No JWS for this token id: the token is expired, deleted, lacks usage-bootstrap-signing, or the signer has not run yet. Create a new token (`kubeadm token create`)."),
    /// The signature does not verify with this token.
    DiscoverySignatureMismatch = ("discovery.signature-mismatch", 23,
        "cluster-info's signature does not match this token: the token secret is wrong, or someone between you and the API server altered the answer. Do not proceed; check the token."),
    /// No CA certificate in cluster-info matches the given pins.
    DiscoveryPinMismatch = ("discovery.pin-mismatch", 24,
        "The cluster's CA does not match any --discovery-token-ca-cert-hash. Check the pin against the real CA; a mismatch can mean you reached the wrong API server."),
    /// The TLS re-fetch that trusts only the pinned CA failed.
    DiscoveryPinnedTls = ("discovery.pinned-tls", 25,
        "The API server's TLS certificate is not issued by the pinned cluster CA (or does not name the endpoint). Check the endpoint; something may be intercepting it."),
    /// cluster-info changed between the insecure and the pinned fetch.
    DiscoveryChanged = ("discovery.changed", 26,
        "cluster-info differed between the two fetches; rerun. If it persists, something is rewriting the answer."),
    /// cluster-info is malformed.
    DiscoveryMalformed = ("discovery.malformed", 27,
        "cluster-info's kubeconfig is malformed; check the ConfigMap on the control plane."),
    /// Discovery was asked to proceed without a CA pin and without the explicit unsafe flag.
    DiscoveryNoPins = ("discovery.no-pins", 28,
        "Pass --discovery-token-ca-cert-hash sha256:<hash> (from the cluster operator), or accept the risk explicitly with --discovery-token-unsafe-skip-ca-verification."),
    /// The pinned CA certificate cannot serve as a CA.
    DiscoveryPinnedCaInvalid = ("discovery.pinned-ca-invalid", 29,
        "The certificate the pin names is expired, not yet valid, or not a CA (basic constraints, key usage). Check the cluster's CA and the pin; do not proceed until they are right."),
    /// A preflight check failed.
    Preflight = ("preflight", 30,
        "Fix what the failed check names, or downgrade it with --ignore-preflight-errors=<id> if you know it is harmless."),
    /// The node's name or IP could not be decided.
    Identity = ("identity", 31,
        "Pass --node-name (and --node-ip) explicitly."),
    /// An autoscaled node without a providerID.
    NoProviderId = ("identity.no-provider-id", 32,
        "Pass --provider-id, or --region and --instance-id (on Alibaba Cloud the providerID is <region-id>.<instance-id>)."),
    /// A Ready Node with this name already exists.
    NodeExists = ("node.exists", 33,
        "Another machine is registered under this name: delete that Node (kubectl delete node NAME) if it is gone, or choose another --node-name."),
    /// The cluster's kubelet or kubeadm configuration could not be read.
    ClusterConfig = ("cluster.config", 34,
        "The bootstrap token could not read kube-system/kubelet-config or kubeadm-config: check kubeadm's RBAC rules (kubeadm:kubelet-config, kubeadm:nodes-kubeadm-config)."),
    /// The API server's certificate stopped chaining to the pinned CA after discovery.
    ServerChanged = ("trust.server-changed", 35,
        "After discovery the API server presented a certificate the pinned CA did not issue: someone may be intercepting the connection, or the control plane's certificates changed mid-join. Check the endpoint, then rerun."),
    /// The container runtime could not be installed, configured or reached.
    Runtime = ("runtime", 40,
        "Check the runtime's service (journalctl -u containerd / docker) and the package manager's output."),
    /// The kubelet's configuration could not be written.
    KubeletConfig = ("kubelet.config", 41,
        "Check the cluster's kubelet-config ConfigMap and the values the message names."),
    /// The artifact mirror could not be reached, or a file kept failing to download.
    ArtifactsUnreachable = ("artifacts.unreachable", 44,
        "Check that this machine reaches the artifact mirror (--artifacts-url or the values' artifacts.url: DNS, routes, proxy) and that it serves manifest.json and its files."),
    /// The mirror's manifest is unsigned, or its signature does not verify with the key.
    ArtifactsSignature = ("artifacts.signature", 45,
        "The mirror's manifest.json.sig is missing or does not verify with the pinned public key: the mirror may be compromised, or the key is the wrong one. Nothing was installed. Check the key with the mirror's operator; never skip the check."),
    /// A downloaded file does not match the size or digest the signed manifest names.
    ArtifactsDigest = ("artifacts.digest", 46,
        "A file from the mirror does not match the signed manifest (tampered, truncated or replaced): nothing was installed. Republish the mirror (node-attach artifacts publish), then rerun."),
    /// The kubelet version asked for (or every one offered) breaks the skew policy.
    ArtifactsVersion = ("artifacts.version", 47,
        "The message names the version skew rule the kubelet would break: publish or pick a kubelet no newer than the API server and within the allowed minor versions (--kubelet-version)."),
    /// The manifest is malformed, or offers nothing for this machine.
    ArtifactsManifest = ("artifacts.manifest", 48,
        "The mirror's signed manifest is malformed or offers no release for this architecture or version; the message names what is missing. Fix the mirror (node-attach artifacts publish)."),
    /// Images could not be imported into the runtime.
    ImagesImport = ("images.import", 49,
        "An image archive could not be imported into the container runtime (ctr / docker load): check the archive and the runtime's journal."),
    /// The kubelet client CSR was denied.
    CsrDenied = ("bootstrap.csr-denied", 50,
        "An approver denied the node's certificate request: ask the cluster operator why, then retry with a new token."),
    /// Nobody approved or signed the kubelet client CSR in time.
    CsrTimeout = ("bootstrap.csr-timeout", 51,
        "The CSR was not approved and signed in time. The message names the cause the API server reports: no auto-approval RBAC for the token's group, no csrapproving controller, or no signer. Approve it by hand (kubectl certificate approve NAME) to proceed."),
    /// The TLS bootstrap failed otherwise.
    Bootstrap = ("bootstrap.failed", 52,
        "The certificate request or the issued certificate was refused; the message says which check failed."),
    /// The kubelet could not be started.
    Start = ("start", 60,
        "Check `systemctl status kubelet` and `journalctl -u kubelet`."),
    /// The Node did not appear in the API in time.
    NodeNotRegistered = ("confirm.node-not-registered", 61,
        "The kubelet started but did not register: check `journalctl -u kubelet` (cgroup driver, CRI socket, certificates)."),
    /// Some reset steps failed or were refused.
    ResetIncomplete = ("reset.incomplete", 80,
        "Some steps failed or were refused (listed above): fix what they name (a busy mount, a symlink swapped into a managed path) and run reset again; it is safe to repeat."),
    /// The drain could not finish.
    DrainFailed = ("reset.drain-failed", 81,
        "PodDisruptionBudgets (or errors) kept pods on the node: nothing was removed. Rerun with a longer --drain-timeout, or without --drain."),
    /// A file or the journal could not be written.
    Filesystem = ("filesystem", 70,
        "A file could not be written or read as the message says: check disk space, permissions, and that no path is a symlink."),
    /// The journal names paths outside the root or backups node-attach did not write.
    JournalTampered = ("journal.tampered", 72,
        "The journal was changed by something other than node-attach (a path outside the root, a backup that is not node-attach's, a symlink or FIFO in its place): nothing was changed. Inspect /var/lib/node-attach/journal.jsonl, then remove it to let reset clean only the documented Kubernetes paths."),
    /// `check`: the userdata's join would run, with findings to fix (a secret in argv, a
    /// flag with no effect, a label only the control plane can apply).
    CheckFindings = ("check.findings", 90,
        "The join in this userdata would run, but read the findings above: each names the flag or line and the form to use instead."),
    /// `check`: the userdata's join would be refused, or the userdata cannot be read.
    CheckInvalid = ("check.invalid", 91,
        "Fix what the findings name: the join in this userdata would fail (or there is no node-attach invocation in it) before changing anything."),
    /// `doctor`: at least one check failed.
    DoctorFailed = ("doctor.failed", 92,
        "Each failed check above names its fix; run them, then `node-attach doctor` again."),
    /// Another join or reset holds the run lock.
    Busy = ("busy", 71,
        "Another node-attach join or reset is running on this machine (cloud-init's, a service's or an operator's): wait for it to finish (`node-attach status` shows its phase), then rerun if still needed."),
}

impl Code {
    /// Whether a failure with this code is worth retrying later without changing anything.
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            Code::ValuesUnreachable | Code::DiscoveryUnreachable | Code::DiscoveryChanged
        )
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.id())
    }
}

impl Serialize for Code {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.id())
    }
}

/// An error that knows its stable code.
pub trait Coded: std::error::Error {
    /// Its code.
    fn code(&self) -> Code;
    /// The class of the network failure behind it, if one is.
    fn network_cause(&self) -> Option<Cause> {
        None
    }
}

/// A failure as reported to the user: code, message (with causes) and hint.
#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    /// Stable code.
    pub code: Code,
    /// What went wrong, with its causes.
    pub message: String,
    /// What to do.
    pub hint: &'static str,
    /// The class of the network failure behind it, if one is (DNS, TCP timeout, TLS, 401…).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cause: Option<Cause>,
}

impl Failure {
    /// A failure with an explicit code and message.
    pub fn new(code: Code, message: impl Into<String>) -> Failure {
        Failure {
            code,
            message: message.into(),
            hint: code.hint(),
            cause: None,
        }
    }

    /// The same failure, naming the class of the network failure behind it.
    pub fn with_cause(mut self, cause: Option<Cause>) -> Failure {
        self.cause = cause;
        self
    }

    /// Builds a failure from a coded error, joining the chain of causes.
    pub fn from_error<E: Coded>(err: &E) -> Failure {
        Failure::new(err.code(), chain(err)).with_cause(err.network_cause())
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} [{}]\n  hint: {}", self.message, self.code, self.hint)
    }
}

/// `err: cause: cause…`, skipping causes whose text the parent already contains.
pub fn chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn ids_and_exit_codes_are_unique() {
        let ids: HashSet<_> = Code::ALL.iter().map(|c| c.id()).collect();
        assert_eq!(ids.len(), Code::ALL.len());
        let exits: HashSet<_> = Code::ALL.iter().map(|c| c.exit_code()).collect();
        assert_eq!(exits.len(), Code::ALL.len());
        assert!(Code::ALL.iter().all(|c| c.exit_code() != 0));
    }

    #[test]
    fn docs_list_every_code() {
        let doc = include_str!("../../docs/exit-codes.md");
        for code in Code::ALL {
            let row = format!("| {} | `{}` |", code.exit_code(), code.id());
            assert!(
                doc.contains(&row),
                "docs/exit-codes.md lacks the row {row:?}"
            );
        }
    }
}
