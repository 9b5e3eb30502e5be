//! Kubernetes' pods and containers on the node's runtime, for reset: first through the CRI, as
//! kubeadm's `cleanupnode` does (StopPodSandbox, RemovePodSandbox: the runtime runs each pod's
//! CNI DEL, so netns mounts, veths and IPAM state go with it), then what only the runtime's own
//! tools still see (containerd's `k8s.io` namespace with `ctr`, docker's `k8s_*` containers of
//! the dockershim era).

use super::cri::CriClient;
use super::{run_command, which, EffectError};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Mutex;
use std::time::Duration;

/// A boxed future, for the trait's async method.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The CRI sockets a kubelet may have used, in the order reset tries them.
pub const CRI_SOCKETS: &[&str] = &[
    "/run/containerd/containerd.sock",
    "/run/cri-dockerd.sock",
    "/run/crio/crio.sock",
];

/// How long one CRI call may take.
const CRI_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one runtime command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// The node's pods and containers.
pub trait Containers: Send + Sync {
    /// Stops and removes every pod sandbox through the CRI at `socket`; how many went.
    fn remove_pods<'a>(&'a self, socket: &'a Path) -> BoxFuture<'a, Result<usize, EffectError>>;
    /// Removes Kubernetes containers the CRI did not (containerd's `k8s.io` namespace, docker's
    /// `k8s_*` containers); a line saying what went, per tool that was there.
    fn remove_leftovers(&self) -> Vec<String>;
}

/// The real runtime: the CRI over its unix socket, then `ctr` and `docker`.
pub struct RuntimeContainers;

impl Containers for RuntimeContainers {
    fn remove_pods<'a>(&'a self, socket: &'a Path) -> BoxFuture<'a, Result<usize, EffectError>> {
        Box::pin(async move {
            let fail = |e: super::cri::CriError| EffectError {
                what: format!(
                    "removing pod sandboxes through the CRI at {}",
                    socket.display()
                ),
                detail: crate::error::chain(&e),
            };
            let client = CriClient::connect(socket, CRI_TIMEOUT)
                .await
                .map_err(fail)?;
            client.remove_all_pods().await.map_err(fail)
        })
    }

    fn remove_leftovers(&self) -> Vec<String> {
        let mut out = Vec::new();
        if which("ctr").is_some() {
            out.push(format!("containerd k8s.io: {} containers", ctr_leftovers()));
        }
        if which("docker").is_some() && docker_answers() {
            out.push(format!("docker k8s_*: {} containers", docker_leftovers()));
        }
        out
    }
}

fn lines(text: &str) -> Vec<&str> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect()
}

fn ctr(args: &[&str]) -> String {
    let mut all = vec!["-n", "k8s.io"];
    all.extend_from_slice(args);
    run_command("ctr", &all, COMMAND_TIMEOUT).unwrap_or_default()
}

fn ctr_leftovers() -> usize {
    for task in lines(&ctr(&["tasks", "list", "-q"])) {
        ctr(&["tasks", "kill", "-s", "SIGKILL", task]);
        ctr(&["tasks", "delete", "-f", task]);
    }
    let containers = ctr(&["containers", "list", "-q"]);
    let ids = lines(&containers);
    for c in &ids {
        ctr(&["containers", "delete", c]);
    }
    ids.len()
}

fn docker_answers() -> bool {
    run_command(
        "docker",
        &["version", "--format", "{{.Server.Version}}"],
        COMMAND_TIMEOUT,
    )
    .is_ok()
}

fn docker_leftovers() -> usize {
    let listed = run_command(
        "docker",
        &["ps", "-aq", "--filter", "name=k8s_"],
        COMMAND_TIMEOUT,
    )
    .unwrap_or_default();
    let ids = lines(&listed);
    if !ids.is_empty() {
        let mut args = vec!["rm", "-f"];
        args.extend(ids.iter().copied());
        let _ = run_command("docker", &args, Duration::from_secs(120));
    }
    ids.len()
}

/// A double that records what it was asked and removes `pods` sandboxes per socket.
#[derive(Default)]
pub struct RecordingContainers {
    /// The sockets asked, in order.
    pub asked: Mutex<Vec<PathBuf>>,
    /// How many sandboxes each call reports.
    pub pods: usize,
    /// Make every CRI call fail.
    pub fail: bool,
}

impl Containers for RecordingContainers {
    fn remove_pods<'a>(&'a self, socket: &'a Path) -> BoxFuture<'a, Result<usize, EffectError>> {
        Box::pin(async move {
            if let Ok(mut a) = self.asked.lock() {
                a.push(socket.to_owned());
            }
            if self.fail {
                return Err(EffectError {
                    what: format!("CRI at {}", socket.display()),
                    detail: "refused (test double)".into(),
                });
            }
            Ok(self.pods)
        })
    }

    fn remove_leftovers(&self) -> Vec<String> {
        Vec::new()
    }
}
