//! Preflight checks, each with a stable id and a plain-language fix. `--ignore-preflight-errors`
//! downgrades named checks (or `all`) to warnings, like kubeadm.

use crate::effects::fs::Root;
use crate::effects::probe::Probe;
use crate::effects::Effects;
use crate::error::{Code, Failure};
use std::path::Path;

/// One check's outcome.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Check {
    /// Stable id, for `--ignore-preflight-errors`.
    pub id: &'static str,
    /// Whether it passed.
    pub ok: bool,
    /// What was found.
    pub message: String,
    /// How to fix it.
    pub hint: &'static str,
}

fn check(id: &'static str, ok: bool, message: impl Into<String>, hint: &'static str) -> Check {
    Check {
        id,
        ok,
        message: message.into(),
        hint,
    }
}

/// Checks that need no cluster. `swap_allowed`: swap may stay on (`--disable-swap` turns it off,
/// or the kubelet runs with `failSwapOn: false`).
pub fn local(effects: &Effects, swap_allowed: bool, joined_before: bool) -> Vec<Check> {
    let mut out = Vec::new();
    if effects.host {
        let probe = effects.probe.as_ref();
        out.push(root(probe));
        out.push(arch());
        out.push(os(probe));
        out.push(cgroups(probe));
        out.push(swap(&effects.kernel.active_swaps(), swap_allowed));
        out.extend(["ip", "iptables", "mount", "nsenter"].map(|b| binary(probe, b)));
        out.push(kubelet_port(probe));
        out.push(kubelet_binary(probe));
    }
    out.push(foreign_kubeconfig(&effects.root, joined_before));
    out
}

fn root(probe: &dyn Probe) -> Check {
    let root = probe.is_root();
    let found = if root {
        "running as root"
    } else {
        "not running as root"
    };
    let hint = "run node-attach as root (sudo), or use --root DIR to try it on a scratch directory";
    check("root", root, found, hint)
}

fn arch() -> Check {
    let arch = std::env::consts::ARCH;
    let ok = matches!(arch, "x86_64" | "aarch64");
    check(
        "arch",
        ok,
        format!("architecture {arch}"),
        "Kubernetes nodes need x86_64 or aarch64",
    )
}

fn os(probe: &dyn Probe) -> Check {
    let name = probe.os_name();
    let found = format!("operating system {}", name.as_deref().unwrap_or("unknown"));
    let hint = "node-attach supports Linux distributions with /etc/os-release";
    check("os", name.is_some(), found, hint)
}

fn cgroups(probe: &dyn Probe) -> Check {
    let version = probe.cgroup_version();
    let found = match version {
        Some(v) => format!("cgroup v{v}"),
        None => "no cgroups mounted".to_owned(),
    };
    check(
        "cgroups",
        version.is_some(),
        found,
        "mount cgroups (v2 preferred) before joining",
    )
}

fn swap(active: &[String], allowed: bool) -> Check {
    let found = if active.is_empty() {
        "swap is off".to_owned()
    } else {
        format!("swap is on: {}", active.join(", "))
    };
    let hint = "pass --disable-swap (turns it off now and at boot), or set kubelet.failSwapOn: false in the cluster values";
    check("swap", active.is_empty() || allowed, found, hint)
}

fn binary(probe: &dyn Probe, name: &str) -> Check {
    let found = probe.has_program(name);
    let state = if found { "found" } else { "is missing" };
    let hint = "install the missing tool (iproute2, iptables, util-linux)";
    check("binaries", found, format!("{name} {state}"), hint)
}

fn kubelet_port(probe: &dyn Probe) -> Check {
    let free = probe.port_free(10250);
    let found = if free {
        "port 10250 is free"
    } else {
        "port 10250 is in use (another kubelet?)"
    };
    let hint = "stop whatever listens on 10250 (ss -ltnp 'sport = :10250')";
    check("port-10250", free, found, hint)
}

fn kubelet_binary(probe: &dyn Probe) -> Check {
    let found = probe.has_program("kubelet");
    let state = if found {
        "kubelet found"
    } else {
        "no kubelet binary in PATH"
    };
    let hint = "install the kubelet package for your cluster's version (e.g. apt-get install kubelet=1.31.*)";
    check("kubelet", found, state, hint)
}

fn foreign_kubeconfig(root: &Root, joined_before: bool) -> Check {
    let exists = root
        .read(Path::new(crate::join::bootstrap::KUBELET_CONF))
        .ok()
        .flatten()
        .is_some();
    let foreign = exists && !joined_before;
    let found = if foreign {
        "/etc/kubernetes/kubelet.conf exists and was not written by node-attach"
    } else {
        "no foreign kubelet.conf"
    };
    let hint = "this machine was joined by another tool: run `kubeadm reset -f` (or remove /etc/kubernetes/kubelet.conf) first";
    check("existing-kubeconfig", !foreign, found, hint)
}

/// The files join writes (the journal's own are checked when it is read), and the directories
/// it writes into, for this runtime and TLS bootstrap mode.
pub fn managed_paths(
    runtime: crate::sources::values::RuntimeKind,
    kubelet_bootstraps: bool,
) -> (Vec<&'static str>, Vec<&'static str>) {
    use crate::join::{bootstrap, kubelet, runtime as rt};
    let mut files = vec![
        crate::join::host::MODULES_FILE,
        crate::join::host::SYSCTL_FILE,
        kubelet::CONFIG_PATH,
        kubelet::FLAGS_PATH,
        kubelet::CA_PATH,
        kubelet::UNIT_PATH,
        kubelet::DROPIN_PATH,
        kubelet::RESET_UNIT_PATH,
        crate::apply::records::STATE_FILE,
        crate::apply::records::CALLBACK_FILE,
    ];
    let mut dirs = vec![bootstrap::PKI_DIR, crate::apply::journal::BACKUP_DIR];
    match runtime {
        crate::sources::values::RuntimeKind::Containerd => {
            files.push(rt::CONTAINERD_CONFIG);
            dirs.push(rt::containerd::CERTS_D);
        }
        crate::sources::values::RuntimeKind::Docker => {
            files.extend([rt::DOCKER_CONFIG, rt::CRI_DOCKERD_DROPIN]);
        }
    }
    if kubelet_bootstraps {
        files.push(bootstrap::BOOTSTRAP_CONF);
    } else {
        files.extend([bootstrap::KUBELET_CONF, bootstrap::TMP_KEY]);
    }
    (files, dirs)
}

/// Refuses, before anything is written, what join would otherwise refuse halfway through (with
/// its journal and earlier phases' files already on disk): a managed path under a symbolic
/// link, or something other than a regular file where join writes a file (a FIFO, a socket, a
/// device, a directory, a symlink), or other than a directory where it writes into one.
pub fn managed_paths_usable(root: &Root, files: &[&str], dirs: &[&str]) -> Result<(), Failure> {
    use crate::effects::fs::{Existing, FsError};
    let refuse = |e: FsError| Failure::new(Code::Filesystem, e.to_string());
    for (path, want_dir) in files
        .iter()
        .map(|p| (p, false))
        .chain(dirs.iter().map(|p| (p, true)))
    {
        let what = root.inspect(Path::new(path)).map_err(refuse)?;
        let kind = match (&what, want_dir) {
            (Existing::Absent, _) | (Existing::File { .. }, false) | (Existing::Dir, true) => {
                continue
            }
            (Existing::Special(kind), _) => *kind,
            (Existing::Dir, false) => "directory",
            (Existing::Symlink(_), _) => "symbolic link",
            (Existing::File { .. }, true) => {
                return Err(Failure::new(
                    Code::Filesystem,
                    format!("refusing {path}: it is a regular file, where node-attach writes into a directory"),
                ))
            }
        };
        return Err(refuse(FsError::Special {
            path: (*path).to_owned(),
            kind,
        }));
    }
    Ok(())
}

/// Fails with every failed check not ignored; returns the ignored failures as warnings.
pub fn evaluate(checks: &[Check], ignore: &[String]) -> Result<Vec<String>, Failure> {
    let ignored = |id: &str| {
        ignore
            .iter()
            .any(|i| i == "all" || i.eq_ignore_ascii_case(id))
    };
    let mut warnings = Vec::new();
    let mut errors = Vec::new();
    for c in checks.iter().filter(|c| !c.ok) {
        let line = format!("[{}] {}: {}", c.id, c.message, c.hint);
        if ignored(c.id) {
            warnings.push(line);
        } else {
            errors.push(line);
        }
    }
    if errors.is_empty() {
        Ok(warnings)
    } else {
        Err(Failure::new(
            Code::Preflight,
            format!("preflight checks failed:\n  {}", errors.join("\n  ")),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::effects::kernel::RecordingKernel;
    use crate::effects::probe::FixedProbe;

    #[test]
    fn ignored_checks_become_warnings() {
        let checks = vec![
            check("swap", false, "swap is on", "h"),
            check("port-10250", false, "in use", "h"),
            check("os", true, "ok", "h"),
        ];
        let err = evaluate(&checks, &[]).expect_err("fails");
        assert!(err.message.contains("[swap]") && err.message.contains("[port-10250]"));
        let w = evaluate(&checks, &["swap".into(), "Port-10250".into()]).expect("ignored");
        assert_eq!(w.len(), 2);
        assert!(evaluate(&checks, &["all".into()]).is_ok());
    }

    #[test]
    fn a_foreign_kubeconfig_is_caught_under_a_scratch_root() {
        let tmp = tempfile::tempdir().expect("tmp");
        std::fs::create_dir_all(tmp.path().join("etc/kubernetes")).expect("dir");
        std::fs::write(tmp.path().join("etc/kubernetes/kubelet.conf"), "x").expect("file");
        let effects = Effects::doubles(Root::new(tmp.path()));
        let checks = local(&effects, false, false);
        assert!(checks
            .iter()
            .any(|c| c.id == "existing-kubeconfig" && !c.ok));
        let checks = local(&effects, false, true);
        assert!(checks.iter().all(|c| c.ok));
    }

    fn failed(probe: FixedProbe, swaps: &[&str], swap_allowed: bool) -> Vec<&'static str> {
        let tmp = tempfile::tempdir().expect("tmp");
        let kernel = RecordingKernel {
            swaps: swaps.iter().map(|s| s.to_string()).collect(),
            ..RecordingKernel::default()
        };
        let effects = Effects {
            host: true,
            probe: Box::new(probe),
            kernel: Box::new(kernel),
            ..Effects::doubles(Root::new(tmp.path()))
        };
        let checks = local(&effects, swap_allowed, false);
        checks.iter().filter(|c| !c.ok).map(|c| c.id).collect()
    }

    #[test]
    fn a_healthy_host_passes_every_check() {
        assert_eq!(
            failed(FixedProbe::default(), &[], false),
            Vec::<&str>::new()
        );
    }

    #[test]
    fn each_host_fault_names_its_check() {
        let p = FixedProbe::default;
        assert_eq!(
            failed(FixedProbe { root: false, ..p() }, &[], false),
            ["root"]
        );
        assert_eq!(failed(FixedProbe { os: None, ..p() }, &[], false), ["os"]);
        assert_eq!(
            failed(
                FixedProbe {
                    cgroups: None,
                    ..p()
                },
                &[],
                false
            ),
            ["cgroups"]
        );
        let no_kubelet = FixedProbe {
            programs: vec![
                "ip".into(),
                "iptables".into(),
                "mount".into(),
                "nsenter".into(),
            ],
            ..p()
        };
        assert_eq!(failed(no_kubelet, &[], false), ["kubelet"]);
        let no_tools = FixedProbe {
            programs: vec!["kubelet".into()],
            ..p()
        };
        assert_eq!(failed(no_tools, &[], false), ["binaries"; 4]);
        assert_eq!(
            failed(
                FixedProbe {
                    busy_ports: vec![10250],
                    ..p()
                },
                &[],
                false
            ),
            ["port-10250"]
        );
        assert_eq!(failed(p(), &["/swapfile"], false), ["swap"]);
        assert!(failed(p(), &["/swapfile"], true).is_empty());
    }
}
