//! The container runtime: containerd (default) or docker (with cri-dockerd from Kubernetes
//! 1.24), configured for the kubelet (systemd cgroup driver, sandbox image, registry mirrors,
//! insecure registries, data root), installed through the package manager when missing,
//! restarted only when its configuration changed, and waited for on its CRI socket.

use crate::apply::{Applier, ApplyError};
use crate::kube_version::KubeVersion;
use crate::values::{RuntimeKind, RuntimeValues};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// One file the runtime needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuntimeFile {
    /// Target path.
    pub path: PathBuf,
    /// Contents.
    pub bytes: Vec<u8>,
}

/// What configuring the runtime means for this node.
#[derive(Clone, Debug)]
pub struct RuntimePlan {
    /// Which runtime.
    pub kind: RuntimeKind,
    /// The package to install when missing.
    pub package: &'static str,
    /// Its version, when pinned.
    pub version: Option<String>,
    /// The systemd unit of the runtime.
    pub unit: &'static str,
    /// An extra CRI shim package and unit (cri-dockerd), when needed.
    pub shim: Option<(&'static str, &'static str)>,
    /// The CRI socket path.
    pub socket: PathBuf,
    /// The kubelet's `--container-runtime-endpoint` (None: the kubelet's built-in dockershim).
    pub endpoint: Option<String>,
    /// The sandbox image.
    pub pause_image: String,
    /// Configuration files.
    pub files: Vec<RuntimeFile>,
}

fn toml_str(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// containerd's hosts.toml for a registry (mirrors and/or plain-http access).
fn hosts_toml(registry: &str, mirrors: &[String], insecure: bool) -> String {
    let upstream = if insecure {
        format!("http://{registry}")
    } else if registry == "docker.io" {
        "https://registry-1.docker.io".to_owned()
    } else {
        format!("https://{registry}")
    };
    let mut out = format!(
        "# Written by node-attach; removed by node-attach reset.\nserver = {}\n",
        toml_str(&upstream)
    );
    for m in mirrors {
        out.push_str(&format!(
            "\n[host.{}]\n  capabilities = [\"pull\", \"resolve\"]\n",
            toml_str(m)
        ));
    }
    if insecure {
        out.push_str(&format!(
            "\n[host.{}]\n  capabilities = [\"pull\", \"resolve\", \"push\"]\n  skip_verify = true\n",
            toml_str(&upstream)
        ));
    }
    out
}

/// containerd's config.toml: format version 2 for containerd 1.x, 3 for 2.x.
pub fn containerd_config(values: &RuntimeValues, pause: &str, major: u32) -> String {
    let mut out =
        String::from("# Written by node-attach for the kubelet; restored by node-attach reset.\n");
    if major >= 2 {
        out.push_str("version = 3\n");
        if let Some(root) = &values.data_root {
            out.push_str(&format!("root = {}\n", toml_str(root)));
        }
        out.push_str(&format!(
            "\n[plugins.'io.containerd.cri.v1.images'.pinned_images]\n  sandbox = {}\n",
            toml_str(pause)
        ));
        out.push_str("\n[plugins.'io.containerd.cri.v1.images'.registry]\n  config_path = \"/etc/containerd/certs.d\"\n");
        out.push_str("\n[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]\n  runtime_type = \"io.containerd.runc.v2\"\n");
        out.push_str("\n[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]\n  SystemdCgroup = true\n");
    } else {
        out.push_str("version = 2\n");
        if let Some(root) = &values.data_root {
            out.push_str(&format!("root = {}\n", toml_str(root)));
        }
        out.push_str(&format!(
            "\n[plugins.\"io.containerd.grpc.v1.cri\"]\n  sandbox_image = {}\n",
            toml_str(pause)
        ));
        out.push_str("\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc]\n  runtime_type = \"io.containerd.runc.v2\"\n");
        out.push_str("\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc.options]\n  SystemdCgroup = true\n");
        out.push_str("\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"/etc/containerd/certs.d\"\n");
    }
    out
}

/// Docker's daemon.json.
pub fn docker_daemon_json(values: &RuntimeValues) -> String {
    let mirrors: Vec<&String> = values
        .registry_mirrors
        .iter()
        .filter(|(host, _)| *host == "docker.io")
        .flat_map(|(_, m)| m)
        .collect();
    let mut doc = serde_json::json!({
        "exec-opts": ["native.cgroupdriver=systemd"],
        "log-driver": "json-file",
        "log-opts": {"max-size": "100m", "max-file": "5"},
        "storage-driver": "overlay2",
    });
    if !mirrors.is_empty() {
        doc["registry-mirrors"] = serde_json::json!(mirrors);
    }
    if !values.insecure_registries.is_empty() {
        doc["insecure-registries"] = serde_json::json!(values.insecure_registries);
    }
    if let Some(root) = &values.data_root {
        doc["data-root"] = serde_json::json!(root);
    }
    let mut text = serde_json::to_string_pretty(&doc).unwrap_or_default();
    text.push('\n');
    text
}

/// The installed containerd's major version (1 when unknown).
pub fn containerd_major() -> u32 {
    crate::effects::run_command("containerd", &["--version"], Duration::from_secs(10))
        .ok()
        .and_then(|out| {
            out.split_whitespace()
                .find(|w| {
                    w.chars().next().is_some_and(|c| c.is_ascii_digit()) || w.starts_with('v')
                })
                .map(|w| w.trim_start_matches('v').to_owned())
        })
        .and_then(|v| v.split('.').next().and_then(|m| m.parse().ok()))
        .unwrap_or(1)
}

/// Works out the runtime's files and endpoints for this cluster. `cluster_pause` is the
/// sandbox image of the cluster's kubeadm version and image repository, used when the values
/// name none.
pub fn plan(
    kind: RuntimeKind,
    values: &RuntimeValues,
    server: &KubeVersion,
    cluster_pause: &str,
    host: bool,
    package_manager: Option<&str>,
) -> RuntimePlan {
    let pause = values
        .pause_image
        .clone()
        .unwrap_or_else(|| cluster_pause.to_owned());
    match kind {
        RuntimeKind::Containerd => {
            let major = if host { containerd_major() } else { 1 };
            let mut files = vec![RuntimeFile {
                path: "/etc/containerd/config.toml".into(),
                bytes: containerd_config(values, &pause, major).into_bytes(),
            }];
            let mut registries: Vec<&String> = values.registry_mirrors.keys().collect();
            registries.extend(values.insecure_registries.iter());
            registries.sort();
            registries.dedup();
            for reg in registries {
                let mirrors = values
                    .registry_mirrors
                    .get(reg)
                    .cloned()
                    .unwrap_or_default();
                let insecure = values.insecure_registries.contains(reg);
                files.push(RuntimeFile {
                    path: PathBuf::from("/etc/containerd/certs.d")
                        .join(reg)
                        .join("hosts.toml"),
                    bytes: hosts_toml(reg, &mirrors, insecure).into_bytes(),
                });
            }
            RuntimePlan {
                kind,
                package: "containerd",
                version: values.version.clone(),
                unit: "containerd.service",
                shim: None,
                socket: "/run/containerd/containerd.sock".into(),
                endpoint: Some("unix:///run/containerd/containerd.sock".into()),
                pause_image: pause,
                files,
            }
        }
        RuntimeKind::Docker => {
            let dockershim = server.minor_key() < (1, 24);
            RuntimePlan {
                kind,
                package: if package_manager == Some("apt") {
                    "docker.io"
                } else {
                    "docker"
                },
                version: values.version.clone(),
                unit: "docker.service",
                shim: (!dockershim).then_some(("cri-dockerd", "cri-docker.service")),
                socket: if dockershim {
                    "/var/run/dockershim.sock".into()
                } else {
                    "/run/cri-dockerd.sock".into()
                },
                endpoint: (!dockershim).then(|| "unix:///run/cri-dockerd.sock".to_owned()),
                pause_image: pause,
                files: vec![RuntimeFile {
                    path: "/etc/docker/daemon.json".into(),
                    bytes: docker_daemon_json(values).into_bytes(),
                }],
            }
        }
    }
}

/// The Docker Engine's API socket.
pub const DOCKER_SOCKET: &str = "/run/docker.sock";

/// Applies the runtime plan: package, files, enable, (re)start when changed, wait for the CRI.
pub fn apply(applier: &mut Applier<'_>, plan: &RuntimePlan) -> Result<(), ApplyError> {
    applier.package(plan.package, plan.version.as_deref())?;
    if let Some((pkg, _)) = plan.shim {
        applier.package(pkg, None)?;
    }
    let mut changed = false;
    for f in &plan.files {
        changed |= applier.file(&f.path, 0o644, &f.bytes, false)?.changes();
    }
    applier.enable(plan.unit)?;
    applier.start(plan.unit, changed)?;
    if let Some((_, unit)) = plan.shim {
        applier.enable(unit)?;
        applier.start(unit, changed)?;
    }
    if applier.effects().host && !applier.dry_run() {
        let cri = &applier.effects().cri;
        if plan.endpoint.is_some() {
            cri.wait_ready(Path::new(&plan.socket), Duration::from_secs(120))?;
        } else {
            // Dockershim: the kubelet talks to docker itself; the daemon must answer first.
            cri.wait_docker(Path::new(DOCKER_SOCKET), Duration::from_secs(120))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containerd_uses_the_systemd_cgroup_driver_and_pause_image() {
        let mut v = RuntimeValues::default();
        v.registry_mirrors.insert(
            "docker.io".into(),
            vec!["https://mirror.example.com".into()],
        );
        v.insecure_registries.push("10.0.0.5:5000".into());
        let p = plan(
            RuntimeKind::Containerd,
            &v,
            &"v1.31.0".parse().expect("v"),
            "registry.k8s.io/pause:3.10",
            false,
            None,
        );
        let cfg = String::from_utf8(p.files[0].bytes.clone()).expect("utf8");
        assert!(cfg.contains("SystemdCgroup = true"));
        assert!(cfg.contains("sandbox_image = \"registry.k8s.io/pause:3.10\""));
        assert_eq!(p.files.len(), 3);
        let insecure = String::from_utf8(p.files[1].bytes.clone()).expect("utf8");
        assert!(
            insecure.contains("server = \"http://10.0.0.5:5000\"")
                && insecure.contains("skip_verify = true"),
            "{insecure}"
        );
        let mirror = String::from_utf8(p.files[2].bytes.clone()).expect("utf8");
        assert!(
            mirror.contains("[host.\"https://mirror.example.com\"]"),
            "{mirror}"
        );
        assert!(containerd_config(&v, "p:1", 2).contains("version = 3"));
    }

    #[test]
    fn docker_needs_cri_dockerd_from_1_24() {
        let v = RuntimeValues::default();
        let new = plan(
            RuntimeKind::Docker,
            &v,
            &"v1.24.0".parse().expect("v"),
            "p:1",
            false,
            Some("apt"),
        );
        assert_eq!(new.shim, Some(("cri-dockerd", "cri-docker.service")));
        assert_eq!(new.package, "docker.io");
        let old = plan(
            RuntimeKind::Docker,
            &v,
            &"v1.20.11".parse().expect("v"),
            "p:1",
            false,
            Some("dnf"),
        );
        assert_eq!(old.shim, None);
        assert_eq!(old.endpoint, None);
        let daemon: serde_json::Value = serde_json::from_slice(&old.files[0].bytes).expect("json");
        assert_eq!(daemon["exec-opts"][0], "native.cgroupdriver=systemd");
    }
}
