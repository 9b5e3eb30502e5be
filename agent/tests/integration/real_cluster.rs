//! A real Kubernetes v1.20.2 control plane (etcd, kube-apiserver, kube-controller-manager set up
//! by the real kubeadm's init phases) from `tests/kubernetes/cluster.sh`, for tests that must see
//! what the real apiserver accepts or refuses, where the test control plane is only a stand-in.
//!
//! One cluster serves every test of the process; tests share it, so each uses its own node
//! names. `NODE_ATTACH_REAL_CLUSTER=DIR` reuses a cluster already up in DIR (started with
//! `tests/kubernetes/cluster.sh up DIR`); otherwise, as root, the first caller starts one with
//! `--owner-pid` of this process, so it is torn down (logs kept in its DIR under the target
//! dir's `tmp/`) once the test process exits, however it exits. Not root: the caller skips, loudly.

// Not every test uses every accessor.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

/// A running real control plane; see the module docs.
pub struct RealCluster {
    dir: PathBuf,
    env: HashMap<String, String>,
}

static CLUSTER: OnceLock<Result<RealCluster, String>> = OnceLock::new();

fn repo_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

/// The shared real cluster, started on first use; `None` (after a `SKIPPED` line on stderr) when
/// not root and no `NODE_ATTACH_REAL_CLUSTER` is given. Panics, with the reason, when the
/// cluster cannot be had: components not built, `up` failed, or the given DIR holds no cluster.
pub fn real_cluster() -> Option<&'static RealCluster> {
    let given = std::env::var_os("NODE_ATTACH_REAL_CLUSTER").map(PathBuf::from);
    if given.is_none() && !nix::unistd::geteuid().is_root() {
        eprintln!(
            "######## SKIPPED: the real Kubernetes cluster needs root (network namespaces, veths); \
             run as root or set NODE_ATTACH_REAL_CLUSTER=DIR of a `tests/kubernetes/cluster.sh up DIR` ########"
        );
        return None;
    }
    let cluster = CLUSTER.get_or_init(|| match given {
        Some(dir) => RealCluster::open(dir),
        None => RealCluster::start(),
    });
    match cluster {
        Ok(c) => Some(c),
        Err(e) => panic!("real cluster unavailable: {e}"),
    }
}

impl RealCluster {
    /// Reads `DIR/env` of a cluster that is up.
    fn open(dir: PathBuf) -> Result<RealCluster, String> {
        let text = std::fs::read_to_string(dir.join("env")).map_err(|e| {
            format!(
                "{}/env: {e} (is a cluster up there? `tests/kubernetes/cluster.sh up DIR`)",
                dir.display()
            )
        })?;
        let env = text
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Ok(RealCluster { dir, env })
    }

    /// `cluster.sh up` in a fresh directory, owned by this process.
    fn start() -> Result<RealCluster, String> {
        let built = Command::new("bash")
            .arg(repo_file("tests/kubernetes/build.sh"))
            .arg("--print")
            .stderr(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run bash: {e}"))?;
        if !built.status.success() {
            return Err(format!(
                "the real Kubernetes components are not built: run `sudo bash {}` once \
                 (about 20 minutes on 2 cores; cached under /var/cache/node-attach/kubernetes)",
                repo_file("tests/kubernetes/build.sh").display()
            ));
        }
        let dir = tempfile::Builder::new()
            .prefix("real-cluster.")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .map_err(|e| format!("temporary directory: {e}"))?
            .keep();
        let out = Command::new("bash")
            .arg(repo_file("tests/kubernetes/cluster.sh"))
            .arg("up")
            .arg(&dir)
            .arg("--owner-pid")
            .arg(std::process::id().to_string())
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run cluster.sh: {e}"))?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            return Err(format!(
                "`cluster.sh up {}` exited {}:\n{stderr}",
                dir.display(),
                out.status
            ));
        }
        eprintln!("{}", stderr.lines().last().unwrap_or("cluster.sh up: done"));
        RealCluster::open(dir)
    }

    /// A value of `DIR/env` (NETNS, NS_IP, HOST_IP, ENDPOINT, CA_PIN, TOKEN, VERSION, PKI_DIR,
    /// AUDIT_LOG, CA_CERT, ADMIN_KUBECONFIG, POD_SUBNET, SERVICE_SUBNET, CLUSTER_DNS, *_PID, ...).
    pub fn env_value(&self, key: &str) -> Option<&str> {
        self.env.get(key).map(String::as_str)
    }

    fn required(&self, key: &str) -> &str {
        self.env_value(key)
            .unwrap_or_else(|| panic!("{}/env has no {key}", self.dir.display()))
    }

    /// The cluster's directory (logs, pki, kubeconfigs).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The apiserver as `IP:6443`, reachable from the host and from `cluster.sh link` netns.
    pub fn endpoint(&self) -> &str {
        self.required("ENDPOINT")
    }

    /// `sha256:<hex>` of the CA's SubjectPublicKeyInfo, as `--discovery-token-ca-cert-hash`.
    pub fn ca_pin(&self) -> &str {
        self.required("CA_PIN")
    }

    /// The bootstrap token (`ID.SECRET`) kubeadm's bootstrap-token phase created, already signed
    /// into kube-public/cluster-info.
    pub fn token(&self) -> &str {
        self.required("TOKEN")
    }

    /// The cluster-admin kubeconfig.
    pub fn admin_kubeconfig_path(&self) -> PathBuf {
        PathBuf::from(self.required("ADMIN_KUBECONFIG"))
    }

    /// The apiserver's audit log: JSON lines at Metadata level, one `ResponseComplete` event per
    /// request (watches also `ResponseStarted`); count a join's requests by `user.username`.
    /// Events are written as requests complete, so poll briefly for the last ones.
    pub fn audit_log_path(&self) -> PathBuf {
        PathBuf::from(self.required("AUDIT_LOG"))
    }

    /// Runs `kubectl --kubeconfig <admin.conf> ARGS` (the host's kubectl, a newer client that
    /// works against 1.20 for get/create/delete) and returns its output.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(self.admin_kubeconfig_path())
            .arg("--cache-dir")
            .arg(self.dir.join("kube-cache"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("kubectl is installed at /usr/bin/kubectl")
    }
}
