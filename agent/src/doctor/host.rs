//! The node's own checks: the tree against the journal, the kubelet's client certificate, the
//! kubelet unit, the runtime's socket, swap and kernel settings. Read-only, through the
//! effects; the host's (unit, socket, swap, kernel) only when the root is `/`.

use super::{Check, Joined, Node, Options, Status};
use crate::apply::journal::{Change, Event};
use crate::effects::fs::Existing;
use crate::model::paths;
use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

/// The local checks, in order.
pub fn checks(node: &Node<'_>, options: &Options) -> Vec<Check> {
    let mut out = vec![tree(node), certificate(node, options)];
    let host = node.effects.host;
    let not_host = "--root is not /: the host's services and kernel are not this tree's";
    for (name, f) in [
        ("kubelet-unit", kubelet_unit as fn(&Node<'_>) -> Check),
        ("runtime-socket", runtime_socket),
        ("swap", swap),
        ("kernel", kernel),
    ] {
        out.push(match host {
            true => f(node),
            false => Check::skip(name, not_host),
        });
    }
    out
}

/// Every change the journal says join made, and reset did not undo, is in the tree.
fn tree(node: &Node<'_>) -> Check {
    const NAME: &str = "journal-tree";
    if node.records.is_empty() {
        return Check::skip(NAME, "no journal");
    }
    let done: BTreeSet<u64> = node
        .records
        .iter()
        .filter(|r| r.event == Event::Done)
        .map(|r| r.seq)
        .collect();
    let undone: BTreeSet<u64> = node
        .records
        .iter()
        .filter(|r| r.event == Event::Undone)
        .map(|r| r.seq)
        .collect();
    // The last change to each path decides what should be there (a key written, then removed).
    let mut expected: std::collections::BTreeMap<&Path, &str> = Default::default();
    for r in node
        .records
        .iter()
        .filter(|r| r.event == Event::Begin && done.contains(&r.seq) && !undone.contains(&r.seq))
    {
        let (path, want) = match &r.change {
            Some(Change::File { path, .. }) => (path, "a file"),
            Some(Change::Dir { path }) => (path, "a directory"),
            Some(Change::Symlink { path, .. }) => (path, "a symlink"),
            Some(Change::Removed { path }) => (path, "absent"),
            _ => continue,
        };
        expected.insert(path.as_path(), want);
    }
    let checked = expected.len();
    let mut wrong = Vec::new();
    for (path, want) in expected {
        let found = match node.effects.root.inspect(path) {
            Ok(Existing::File { .. }) => "a file",
            Ok(Existing::Dir) => "a directory",
            Ok(Existing::Symlink(_)) => "a symlink",
            Ok(Existing::Absent) => "absent",
            Ok(Existing::Special(kind)) => kind,
            Err(_) => "unreadable",
        };
        if found != want {
            wrong.push(format!("{} is {found}, not {want}", path.display()));
        }
    }
    match wrong.is_empty() {
        true => Check::new(NAME, Status::Ok, format!("the {checked} paths the journal records are in place")),
        false => Check::new(NAME, Status::Fail, format!("{} of {checked} journaled paths differ: {}", wrong.len(), wrong.join("; ")))
            .fix("something else changed node-attach's files: rerun the same join to restore them, or `node-attach reset`"),
    }
}

/// The kubelet's client certificate: present, current, and not near its end.
fn certificate(node: &Node<'_>, options: &Options) -> Check {
    const NAME: &str = "kubelet-cert";
    if node.joined == Joined::NotJoined {
        return Check::skip(NAME, "not joined");
    }
    let Some(pem) = current_pair(&node.effects.root) else {
        return Check::new(NAME, Status::Fail, format!("{} is missing", paths::CURRENT)).fix(
            "rerun the join (it requests a new certificate), or `node-attach reset` and join again",
        );
    };
    use rustls::pki_types::pem::PemObject;
    let der = rustls::pki_types::CertificateDer::pem_slice_iter(&pem)
        .next()
        .and_then(Result::ok);
    let Some(der) = der else {
        return Check::new(
            NAME,
            Status::Fail,
            format!("{} holds no certificate", paths::CURRENT),
        )
        .fix("rerun the join");
    };
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der.as_ref()) else {
        return Check::new(
            NAME,
            Status::Fail,
            format!("{}: not an X.509 certificate", paths::CURRENT),
        )
        .fix("rerun the join");
    };
    let (from, until) = (
        cert.validity().not_before.timestamp(),
        cert.validity().not_after.timestamp(),
    );
    let subject = cert.subject().to_string();
    let days = (until - options.now) / 86_400;
    let lifetime = (until - from).max(1);
    let renew = "the kubelet renews it (rotateCertificates) through a CSR: check that renewals are approved (kubectl get csr)";
    if options.now < from {
        Check::new(
            NAME,
            Status::Fail,
            format!("{subject}: not valid before {}", cert.validity().not_before),
        )
        .fix("check the machine's clock")
    } else if options.now >= until {
        Check::new(
            NAME,
            Status::Fail,
            format!("{subject}: expired {}", cert.validity().not_after),
        )
        .fix(format!("{renew}; or reset and join again"))
    } else if (until - options.now) * 10 < lifetime {
        Check::new(
            NAME,
            Status::Warn,
            format!("{subject}: expires in {days} day(s), within the last tenth of its lifetime"),
        )
        .fix(renew)
    } else {
        Check::new(
            NAME,
            Status::Ok,
            format!("{subject}, valid for {days} more day(s)"),
        )
    }
}

/// The kubelet's current client pair (PEM), through the link the kubelet's store keeps.
pub(super) fn current_pair(root: &crate::effects::fs::Root) -> Option<Vec<u8>> {
    match root.inspect(Path::new(paths::CURRENT)).ok()? {
        Existing::Symlink(target) => {
            let target = match target.is_absolute() {
                true => target,
                false => Path::new(paths::PKI_DIR).join(target),
            };
            root.read(&target).ok().flatten()
        }
        Existing::File { bytes, .. } => Some(bytes),
        _ => None,
    }
}

fn kubelet_unit(node: &Node<'_>) -> Check {
    const NAME: &str = "kubelet-unit";
    if node.joined == Joined::NotJoined {
        return Check::skip(NAME, "not joined");
    }
    let systemd = &node.effects.systemd;
    match (
        systemd.is_active("kubelet.service"),
        systemd.is_enabled("kubelet.service"),
    ) {
        (true, true) => Check::new(NAME, Status::Ok, "kubelet.service is active and enabled"),
        (true, false) => Check::new(
            NAME,
            Status::Warn,
            "kubelet.service is active but not enabled: it will not start at boot",
        )
        .fix("systemctl enable kubelet"),
        (false, _) => Check::new(NAME, Status::Fail, "kubelet.service is not active")
            .fix("journalctl -u kubelet to see why, then systemctl start kubelet"),
    }
}

fn runtime_socket(node: &Node<'_>) -> Check {
    const NAME: &str = "runtime-socket";
    let Some(state) = &node.state else {
        return Check::skip(NAME, "not joined");
    };
    let wait = Duration::from_secs(2);
    let (socket, answer) = match state.cri_endpoint.as_deref() {
        Some(endpoint) => {
            let socket = endpoint.trim_start_matches("unix://").to_owned();
            let r = node.effects.cri.wait_ready(Path::new(&socket), wait);
            (socket, r)
        }
        None => {
            let socket = "/var/run/docker.sock".to_owned();
            let r = node.effects.cri.wait_docker(Path::new(&socket), wait);
            (socket, r)
        }
    };
    let unit = if state.runtime == "docker" {
        "docker"
    } else {
        "containerd"
    };
    match answer {
        Ok(()) => Check::new(
            NAME,
            Status::Ok,
            format!("{} answers on {socket}", state.runtime),
        ),
        Err(e) => Check::new(NAME, Status::Fail, e.to_string())
            .fix(format!("systemctl status {unit}; journalctl -u {unit}")),
    }
}

fn swap(node: &Node<'_>) -> Check {
    const NAME: &str = "swap";
    let swaps = node.effects.kernel.active_swaps();
    if swaps.is_empty() {
        return Check::new(NAME, Status::Ok, "swap is off");
    }
    let allowed = node
        .effects
        .root
        .read(Path::new("/var/lib/kubelet/config.yaml"))
        .ok()
        .flatten()
        .is_some_and(|b| {
            String::from_utf8_lossy(&b)
                .lines()
                .any(|l| l.trim() == "failSwapOn: false")
        });
    let fix =
        "swapoff -a and comment the swap lines out of /etc/fstab (join --disable-swap does both)";
    match (allowed, node.joined) {
        (true, _) => Check::new(
            NAME,
            Status::Ok,
            format!(
                "swap is on ({}), and the kubelet allows it (failSwapOn: false)",
                swaps.join(", ")
            ),
        ),
        (false, Joined::NotJoined) => Check::new(
            NAME,
            Status::Warn,
            format!(
                "swap is on ({}): a kubelet with the default failSwapOn will not start",
                swaps.join(", ")
            ),
        )
        .fix(fix),
        (false, _) => Check::new(
            NAME,
            Status::Fail,
            format!(
                "swap is on ({}) and the kubelet refuses to run with it",
                swaps.join(", ")
            ),
        )
        .fix(fix),
    }
}

fn kernel(node: &Node<'_>) -> Check {
    const NAME: &str = "kernel";
    let kernel = &node.effects.kernel;
    let mut wrong = Vec::new();
    for m in crate::join::host::MODULES {
        if !kernel.module_present(m) {
            wrong.push(format!("module {m} not loaded"));
        }
    }
    for (key, want) in crate::join::host::SYSCTLS {
        match kernel.sysctl(key) {
            Some(v) if v == want => {}
            Some(v) => wrong.push(format!("{key} = {v} (want {want})")),
            None => wrong.push(format!("{key} is missing")),
        }
    }
    let fix = format!(
        "modprobe overlay br_netfilter; sysctl --system (join writes {} and {})",
        crate::join::host::MODULES_FILE,
        crate::join::host::SYSCTL_FILE
    );
    match (wrong.is_empty(), node.joined) {
        (true, _) => Check::new(
            NAME,
            Status::Ok,
            "overlay and br_netfilter present; bridge netfilter and IP forwarding on",
        ),
        (false, Joined::NotJoined) => Check::new(
            NAME,
            Status::Warn,
            format!("{} (join sets them)", wrong.join("; ")),
        )
        .fix(fix),
        (false, _) => Check::new(NAME, Status::Fail, wrong.join("; ")).fix(fix),
    }
}
