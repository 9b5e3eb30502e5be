//! Preflight checks, each with a stable id and a plain-language fix. `--ignore-preflight-errors`
//! downgrades named checks (or `all`) to warnings, like kubeadm.

use crate::effects::fs::Root;
use crate::effects::which;
use crate::error::{Code, Failure};
use crate::model::version::KubeVersion;
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

/// Active swap devices, from /proc/swaps.
pub fn active_swap() -> Vec<String> {
    std::fs::read_to_string("/proc/swaps")
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

/// The local kubelet's version, if a kubelet is installed.
pub fn kubelet_version() -> Option<KubeVersion> {
    which("kubelet")?;
    let out = crate::effects::run_command(
        "kubelet",
        &["--version"],
        std::time::Duration::from_secs(20),
    )
    .ok()?;
    out.split_whitespace()
        .find_map(|w| w.parse::<KubeVersion>().ok())
}

/// Checks that need no cluster.
pub fn local(
    root: &Root,
    host: bool,
    disable_swap: bool,
    fail_swap_on: Option<bool>,
    joined_before: bool,
) -> Vec<Check> {
    let mut out = Vec::new();
    if host {
        let euid = nix::unistd::geteuid();
        out.push(check(
            "root",
            euid.is_root(),
            format!("running as uid {euid}"),
            "run node-attach as root (sudo), or use --root DIR to try it on a scratch directory",
        ));
        let arch = std::env::consts::ARCH;
        out.push(check(
            "arch",
            matches!(arch, "x86_64" | "aarch64"),
            format!("architecture {arch}"),
            "Kubernetes nodes need x86_64 or aarch64",
        ));
        let os = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
        let name = os
            .lines()
            .find_map(|l| l.strip_prefix("PRETTY_NAME="))
            .unwrap_or("unknown")
            .trim_matches('"')
            .to_owned();
        out.push(check(
            "os",
            !os.is_empty(),
            format!("operating system {name}"),
            "node-attach supports Linux distributions with /etc/os-release",
        ));
        let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
        let v1 = Path::new("/sys/fs/cgroup/memory").exists();
        out.push(check(
            "cgroups",
            v1 || v2,
            format!(
                "cgroup {}",
                if v2 {
                    "v2"
                } else if v1 {
                    "v1"
                } else {
                    "none"
                }
            ),
            "mount cgroups (v2 preferred) before joining",
        ));
        let swap = active_swap();
        let swap_ok = swap.is_empty() || disable_swap || fail_swap_on == Some(false);
        out.push(check("swap", swap_ok, if swap.is_empty() { "swap is off".to_owned() } else { format!("swap is on: {}", swap.join(", ")) }, "pass --disable-swap (turns it off now and at boot), or set kubelet.failSwapOn: false in the cluster values"));
        for bin in ["ip", "iptables", "mount", "nsenter"] {
            out.push(check(
                "binaries",
                which(bin).is_some(),
                format!(
                    "{bin} {}",
                    if which(bin).is_some() {
                        "found"
                    } else {
                        "is missing"
                    }
                ),
                "install the missing tool (iproute2, iptables, util-linux)",
            ));
        }
        let port_free = std::net::TcpListener::bind(("0.0.0.0", 10250)).is_ok();
        out.push(check(
            "port-10250",
            port_free,
            if port_free {
                "port 10250 is free"
            } else {
                "port 10250 is in use (another kubelet?)"
            },
            "stop whatever listens on 10250 (ss -ltnp 'sport = :10250')",
        ));
        out.push(check("kubelet", which("kubelet").is_some(), if which("kubelet").is_some() { "kubelet found" } else { "no kubelet binary in PATH" }, "install the kubelet package for your cluster's version (e.g. apt-get install kubelet=1.31.*)"));
    }
    let foreign = !joined_before
        && root
            .read(Path::new(crate::join::bootstrap::KUBELET_CONF))
            .ok()
            .flatten()
            .is_some();
    out.push(check("existing-kubeconfig", !foreign, if foreign { "/etc/kubernetes/kubelet.conf exists and was not written by node-attach" } else { "no foreign kubelet.conf" }, "this machine was joined by another tool: run `kubeadm reset -f` (or remove /etc/kubernetes/kubelet.conf) first"));
    out
}

/// The files join writes (the journal's own are checked when it is read), and the directories
/// it writes into, for this runtime and TLS bootstrap mode.
pub fn managed_paths(
    runtime: crate::sources::values::RuntimeKind,
    kubelet_bootstraps: bool,
) -> (Vec<&'static str>, Vec<&'static str>) {
    use crate::join::{bootstrap, kubelet, runtime as rt};
    let mut files = vec![
        crate::join::MODULES_FILE,
        crate::join::SYSCTL_FILE,
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
        let checks = local(&Root::new(tmp.path()), false, false, None, false);
        assert!(checks
            .iter()
            .any(|c| c.id == "existing-kubeconfig" && !c.ok));
        let checks = local(&Root::new(tmp.path()), false, false, None, true);
        assert!(checks.iter().all(|c| c.ok));
    }
}
