//! The container runtime: containerd (default) or docker (with cri-dockerd from Kubernetes
//! 1.24), configured for the kubelet (systemd cgroup driver, sandbox image, registry mirrors,
//! insecure registries, data root) by merging into the machine's own configuration
//! ([`containerd`], [`docker`]), installed through the package manager when missing, restarted
//! only when its configuration changed, and waited for on its API socket (by the join's start
//! phase, just before the kubelet starts, so the restart overlaps with the steps between).

pub mod containerd;
pub mod docker;

use crate::apply::{Applier, ApplyError};
use crate::effects::probe::Probe;
use crate::model::version::KubeVersion;
use crate::sources::values::{RuntimeKind, RuntimeValues};
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
    /// What the user should know (a configuration that had to be replaced).
    pub notices: Vec<String>,
}

/// One `hosts.toml` per registry with mirrors or plain-http access, under `dir`.
fn hosts_files(dir: &str, values: &RuntimeValues) -> Vec<RuntimeFile> {
    let mut registries: Vec<&String> = values.registry_mirrors.keys().collect();
    registries.extend(values.insecure_registries.iter());
    registries.sort();
    registries.dedup();
    registries
        .into_iter()
        .map(|reg| {
            let mirrors = values
                .registry_mirrors
                .get(reg)
                .cloned()
                .unwrap_or_default();
            let insecure = values.insecure_registries.contains(reg);
            RuntimeFile {
                path: PathBuf::from(dir).join(reg).join("hosts.toml"),
                bytes: hosts_toml(reg, &mirrors, insecure).into_bytes(),
            }
        })
        .collect()
}

/// containerd's hosts.toml for a registry (mirrors and/or plain-http access), rendered by a
/// TOML serializer: no value can break out of its string.
fn hosts_toml(registry: &str, mirrors: &[String], insecure: bool) -> String {
    use toml_edit::{value, Array, DocumentMut, Item, Table};
    let upstream = if insecure {
        format!("http://{registry}")
    } else if registry == "docker.io" {
        "https://registry-1.docker.io".to_owned()
    } else {
        format!("https://{registry}")
    };
    let mut doc = DocumentMut::new();
    doc["server"] = value(upstream.as_str());
    let mut hosts = Table::new();
    hosts.set_implicit(true);
    let host = |caps: &[&str], skip_verify: bool| {
        let mut t = Table::new();
        t["capabilities"] = value(caps.iter().copied().collect::<Array>());
        if skip_verify {
            t["skip_verify"] = value(true);
        }
        Item::Table(t)
    };
    for m in mirrors {
        hosts.insert(m, host(&["pull", "resolve"], false));
    }
    if insecure {
        hosts.insert(&upstream, host(&["pull", "resolve", "push"], true));
    }
    doc["host"] = Item::Table(hosts);
    format!("# Written by node-attach; removed by node-attach reset.\n{doc}")
}

/// The installed containerd's version (1.6 when it cannot be asked: Debian bookworm's).
pub fn containerd_version(probe: &dyn Probe) -> containerd::ContainerdVersion {
    let out = probe.version_of("containerd").unwrap_or_default();
    parse_containerd_version(&out).unwrap_or(containerd::ContainerdVersion { major: 1, minor: 6 })
}

/// `containerd github.com/containerd/containerd 1.6.20~ds1 …` or `… v2.0.0 …` → (major, minor).
fn parse_containerd_version(out: &str) -> Option<containerd::ContainerdVersion> {
    let word = out.split_whitespace().find(|w| {
        let w = w.trim_start_matches('v');
        w.chars().next().is_some_and(|c| c.is_ascii_digit()) && w.contains('.')
    })?;
    let mut parts = word.trim_start_matches('v').split(['.', '~', '-', '+']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some(containerd::ContainerdVersion { major, minor })
}

/// The runtime configuration files as they were before join (from the journal's backup when
/// join already changed them), which the plan merges into.
#[derive(Clone, Debug, Default)]
pub struct Originals {
    /// /etc/containerd/config.toml.
    pub containerd: Option<Vec<u8>>,
    /// /etc/docker/daemon.json.
    pub docker: Option<Vec<u8>>,
}

/// Where cri-dockerd gets the flags the kubelet's dockershim took before 1.24.
pub const CRI_DOCKERD_DROPIN: &str = "/etc/systemd/system/cri-docker.service.d/10-node-attach.conf";

/// cri-dockerd's unit drop-in: the CNI network plugin (else pods sit on docker0, with no
/// cross-node networking) and the cluster's sandbox image, as kubeadm's docker-era flags gave
/// the dockershim. Socket activation (`fd://`) stays as the package's unit has it.
fn cri_dockerd_dropin(pause: &str) -> RuntimeFile {
    let text = format!(
        "# Written by node-attach; removed by node-attach reset.\n[Service]\nExecStart=\nExecStart=/usr/bin/cri-dockerd --container-runtime-endpoint fd:// --network-plugin=cni --pod-infra-container-image={pause}\n"
    );
    RuntimeFile {
        path: CRI_DOCKERD_DROPIN.into(),
        bytes: text.into_bytes(),
    }
}

/// The kubelet's built-in dockershim socket (before 1.24), as kubeadm names it.
pub const DOCKERSHIM_ENDPOINT: &str = "unix:///var/run/dockershim.sock";

/// containerd's configuration file.
pub const CONTAINERD_CONFIG: &str = "/etc/containerd/config.toml";
/// Docker's configuration file.
pub const DOCKER_CONFIG: &str = "/etc/docker/daemon.json";

/// What the runtime plan needs to know of the machine.
#[derive(Clone, Copy, Debug, Default)]
pub struct HostRuntime<'a> {
    /// The installed containerd's version, when it could be asked.
    pub installed: Option<containerd::ContainerdVersion>,
    /// The package manager's name.
    pub package_manager: Option<&'a str>,
    /// Where containerd must look for CNI plugins, when not where its file says.
    pub cni_bin_dir: Option<&'a str>,
}

/// Works out the runtime's files and endpoints for this cluster. `cluster_pause` is the
/// sandbox image of the cluster's kubeadm version and image repository, used when the values
/// name none.
pub fn plan(
    kind: RuntimeKind,
    values: &RuntimeValues,
    server: &KubeVersion,
    cluster_pause: &str,
    host: &HostRuntime<'_>,
    originals: &Originals,
) -> RuntimePlan {
    let HostRuntime {
        installed,
        package_manager,
        cni_bin_dir,
    } = *host;
    let pause = values
        .pause_image
        .clone()
        .unwrap_or_else(|| cluster_pause.to_owned());
    match kind {
        RuntimeKind::Containerd => {
            let version = installed.unwrap_or(containerd::ContainerdVersion { major: 1, minor: 6 });
            let merged = containerd::merge(
                originals.containerd.as_deref(),
                values,
                &pause,
                version,
                cni_bin_dir,
            );
            let mut files = vec![RuntimeFile {
                path: CONTAINERD_CONFIG.into(),
                bytes: merged.bytes,
            }];
            if let containerd::Registries::HostsDir(dir) = &merged.registries {
                files.extend(hosts_files(dir, values));
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
                notices: merged.notice.into_iter().collect(),
            }
        }
        RuntimeKind::Docker => {
            let dockershim = server.minor_key() < (1, 24);
            let merged = docker::merge(originals.docker.as_deref(), values);
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
                files: std::iter::once(RuntimeFile {
                    path: DOCKER_CONFIG.into(),
                    bytes: merged.bytes,
                })
                .chain((!dockershim).then(|| cri_dockerd_dropin(&pause)))
                .collect(),
                pause_image: pause,
                notices: merged.notice.into_iter().collect(),
            }
        }
    }
}

/// What the runtime phase works from.
pub struct PhaseInputs<'a> {
    /// The join's settings.
    pub settings: &'a crate::sources::settings::Settings,
    /// The API server's version (in bake mode: the kubelet's).
    pub server: &'a KubeVersion,
    /// The cluster's sandbox image (from kubeadm-config's imageRepository and the version).
    pub cluster_pause: String,
    /// What the artifacts phase staged (a static runtime, image archives).
    pub staged: &'a crate::join::artifacts::Staged,
    /// Whether the phase waits for the runtime's API itself. A join that starts the kubelet
    /// next waits just before that start instead ([`wait_ready`]), so the runtime's restart
    /// overlaps with writing the kubelet's files, the TLS bootstrap and systemd's reload;
    /// staged images to import always make the phase wait.
    pub wait_in_phase: bool,
}

fn fail(code: crate::error::Code) -> impl Fn(ApplyError) -> crate::error::Failure {
    move |e| match e {
        ApplyError::Fs(_) | ApplyError::Journal(_) => {
            crate::error::Failure::new(crate::error::Code::Filesystem, e.to_string())
        }
        ApplyError::Effect(_) => crate::error::Failure::new(code, e.to_string()),
    }
}

/// The runtime phase: the runtime's packages when it is missing (unless the mirror's static
/// containerd was installed), its configuration merged into the files as they are then,
/// (re)started and waited for, then the staged image archives imported.
pub fn phase(
    applier: &mut Applier<'_>,
    inputs: &PhaseInputs<'_>,
) -> Result<RuntimePlan, crate::error::Failure> {
    use crate::error::Code;
    let settings = inputs.settings;
    let effects = applier.effects();
    let package_manager = effects.packages.as_ref().map(|pm| pm.name());
    let mut pkgs = packages(settings.runtime, inputs.server, package_manager);
    // A runtime already there (installed by hand, from a tarball, or the mirror's static
    // containerd) is not installed again as a package; cri-dockerd still may be.
    let binary_there = inputs.staged.static_runtime.is_some()
        || crate::join::artifacts::runtime_binary_present(effects, settings.runtime);
    if binary_there {
        pkgs.remove(0);
    }
    install_packages(
        applier,
        &pkgs,
        (!binary_there)
            .then_some(settings.runtime_values.version.as_deref())
            .flatten(),
    )
    .map_err(fail(Code::Runtime))?;
    let fs = |e: ApplyError| crate::error::Failure::new(Code::Filesystem, e.to_string());
    let originals = Originals {
        containerd: applier.original(Path::new(CONTAINERD_CONFIG)).map_err(fs)?,
        docker: applier.original(Path::new(DOCKER_CONFIG)).map_err(fs)?,
    };
    let effects = applier.effects();
    let current = effects
        .root
        .read(Path::new(CONTAINERD_CONFIG))
        .ok()
        .flatten();
    let configured = containerd::cni_bin_dir(current.as_deref());
    let cni = crate::join::artifacts::cni_bin_dir_override(effects, configured.as_deref());
    let host = HostRuntime {
        installed: effects
            .host
            .then(|| containerd_version(effects.probe.as_ref())),
        package_manager,
        cni_bin_dir: cni,
    };
    let rt = plan(
        settings.runtime,
        &settings.runtime_values,
        inputs.server,
        &inputs.cluster_pause,
        &host,
        &originals,
    );
    let wait = inputs.wait_in_phase || !inputs.staged.images.is_empty();
    apply(applier, &rt, wait).map_err(fail(Code::Runtime))?;
    crate::join::artifacts::import(applier, settings.runtime, inputs.staged)
        .map_err(fail(Code::ImagesImport))?;
    Ok(rt)
}

/// The Docker Engine's API socket.
pub const DOCKER_SOCKET: &str = "/run/docker.sock";

/// The packages a runtime needs (the runtime's, and cri-dockerd for docker from 1.24).
pub fn packages(
    kind: RuntimeKind,
    server: &KubeVersion,
    package_manager: Option<&str>,
) -> Vec<&'static str> {
    match kind {
        RuntimeKind::Containerd => vec!["containerd"],
        RuntimeKind::Docker => {
            let engine = if package_manager == Some("apt") {
                "docker.io"
            } else {
                "docker"
            };
            if server.minor_key() < (1, 24) {
                vec![engine]
            } else {
                vec![engine, "cri-dockerd"]
            }
        }
    }
}

/// Installs the runtime's packages when they are missing, the runtime's first at `version`
/// (`--runtime-version`, `--docker-version`).
pub fn install_packages(
    applier: &mut Applier<'_>,
    packages: &[&str],
    version: Option<&str>,
) -> Result<(), ApplyError> {
    for (i, pkg) in packages.iter().enumerate() {
        applier.package(pkg, if i == 0 { version } else { None })?;
    }
    Ok(())
}

/// Applies the runtime plan: files, enable, (re)start when changed, and with `wait` the wait
/// for its API ([`wait_ready`]). (The packages come first, [`install_packages`], so the plan
/// merges into the file they ship.)
pub fn apply(applier: &mut Applier<'_>, plan: &RuntimePlan, wait: bool) -> Result<(), ApplyError> {
    let mut changed = false;
    let mut units_changed = false;
    for f in &plan.files {
        let c = applier.file(&f.path, 0o644, &f.bytes, false)?.changes();
        changed |= c;
        units_changed |= c && f.path.starts_with("/etc/systemd");
    }
    if units_changed {
        applier.daemon_reload()?;
    }
    applier.enable(plan.unit)?;
    applier.start(plan.unit, changed)?;
    if let Some((_, unit)) = plan.shim {
        applier.enable(unit)?;
        applier.start(unit, changed)?;
    }
    if wait {
        wait_ready(applier, plan)?;
    }
    Ok(())
}

/// Waits until systemd has finished the runtime's start or restart (asked without blocking: a
/// probe before the old daemon is stopped would pass on it, and what follows would meet it
/// going down), then until the runtime answers on its API socket (the CRI's, or docker's for
/// the kubelet's dockershim), each for up to two minutes: the kubelet checks the runtime once as it starts
/// (`updateRuntimeUp`, then every 5 s), and with no answer then its node stays NotReady until a
/// later check.
pub fn wait_ready(applier: &Applier<'_>, plan: &RuntimePlan) -> Result<(), ApplyError> {
    if !applier.effects().host || applier.dry_run() {
        return Ok(());
    }
    let effects = applier.effects();
    // A restart asked without blocking may not have begun: the old daemon would answer.
    for unit in std::iter::once(plan.unit).chain(plan.shim.map(|(_, unit)| unit)) {
        effects.systemd.settle(unit, Duration::from_secs(120))?;
    }
    let cri = &effects.cri;
    if plan.endpoint.is_some() {
        cri.wait_ready(Path::new(&plan.socket), Duration::from_secs(120))?;
    } else {
        // Dockershim: the kubelet talks to docker itself; the daemon must answer first.
        cri.wait_docker(Path::new(DOCKER_SOCKET), Duration::from_secs(120))?;
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
            &HostRuntime {
                package_manager: None,
                ..HostRuntime::default()
            },
            &Originals::default(),
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
        assert_eq!(
            parse_containerd_version(
                "containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+b1"
            ),
            Some(containerd::ContainerdVersion { major: 1, minor: 6 })
        );
        assert_eq!(
            parse_containerd_version("containerd containerd.io v2.0.4 1a43cb6"),
            Some(containerd::ContainerdVersion { major: 2, minor: 0 })
        );
    }

    #[test]
    fn docker_needs_cri_dockerd_from_1_24() {
        let v = RuntimeValues::default();
        let new = plan(
            RuntimeKind::Docker,
            &v,
            &"v1.24.0".parse().expect("v"),
            "p:1",
            &HostRuntime {
                package_manager: Some("apt"),
                ..HostRuntime::default()
            },
            &Originals::default(),
        );
        assert_eq!(new.shim, Some(("cri-dockerd", "cri-docker.service")));
        let dropin = String::from_utf8(new.files[1].bytes.clone()).expect("utf8");
        assert!(
            dropin.contains("--network-plugin=cni --pod-infra-container-image=p:1"),
            "{dropin}"
        );
        assert_eq!(new.package, "docker.io");
        let old = plan(
            RuntimeKind::Docker,
            &v,
            &"v1.20.11".parse().expect("v"),
            "p:1",
            &HostRuntime {
                package_manager: Some("dnf"),
                ..HostRuntime::default()
            },
            &Originals::default(),
        );
        assert_eq!(old.shim, None);
        assert_eq!(old.endpoint, None);
        let daemon: serde_json::Value = serde_json::from_slice(&old.files[0].bytes).expect("json");
        assert_eq!(daemon["exec-opts"][0], "native.cgroupdriver=systemd");
    }
}
