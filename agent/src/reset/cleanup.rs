//! What the kubelet, the runtime and CNI plugins made while the node ran, at the documented
//! Kubernetes paths (`docs/reset.md`): the kubelet stopped, pods removed through the CRI,
//! mounts under /var/lib/kubelet unmounted (deepest first; one that will not go keeps its
//! directory), the kubelet's state and credentials, CNI configuration and state, kube-proxy and
//! CNI iptables chains and IPVS, and CNI interfaces. Each is its own step, each skippable; a
//! path the journal restores is never removed here.

use super::audit::Action;
use super::{Ctx, Outcome};
use crate::effects::fs::{Existing, Root};
use crate::effects::network::Family;
use crate::effects::seen::Seen;
use std::path::{Path, PathBuf};

/// The node's credentials in /etc/kubernetes (never the directory's other files). The kubelet
/// may write kubelet.conf itself (`--tls-bootstrap=kubelet`), so they are removed even when not
/// journaled. /etc/kubernetes/pki/ca.crt is only ever restored through the journal: without it,
/// reset cannot tell whether the file predates join, and leaves it.
pub const KUBERNETES_FILES: &[&str] = &[
    "/etc/kubernetes/kubelet.conf",
    "/etc/kubernetes/bootstrap-kubelet.conf",
];
/// Directories whose contents are the kubelet's state.
pub const STATE_DIRS: &[&str] = &["/var/lib/kubelet"];
pub use crate::model::paths::CNI_DIRS;
/// Interfaces CNI plugins and kube-proxy create.
pub const CNI_INTERFACES: &[&str] = &[
    "cni0",
    "flannel.1",
    "flannel-v6.1",
    "vxlan.calico",
    "vxlan-v6.calico",
    "kube-ipvs0",
    "nodelocaldns",
    "cilium_host",
    "cilium_net",
    "cilium_vxlan",
    "weave",
    "tunl0",
];

/// Paths the cleanup keeps: those the journal restores (their pre-join bytes), those the
/// journal records at all for the kubelet's credentials, and what the CNI directories held
/// before join.
pub struct Keep {
    /// Real paths of files the journal restores.
    pub restored: Vec<PathBuf>,
    /// Target paths the journal knows.
    pub journaled: Vec<PathBuf>,
    /// Real paths in the CNI directories that were there before join (the deepest of each
    /// branch: a directory kept holds only what is kept below it, unless it was kept whole).
    pub preexisting: Vec<PathBuf>,
}

/// Every cleanup step, in order.
pub async fn run(ctx: &mut Ctx<'_>, keep: &Keep) {
    stop_kubelet(ctx);
    // Pods before mounts: the runtime tears down what it set up for them.
    if !ctx.skipped("containers") {
        remove_containers(ctx).await;
    }
    if !ctx.skipped("mounts") {
        unmount_kubelet(ctx);
    }
    ctx.restored.extend(keep.restored.iter().cloned());
    if !ctx.skipped("kubelet-state") {
        for dir in STATE_DIRS {
            let why = "the kubelet's state (a documented Kubernetes path, docs/reset.md)";
            empty_dir(ctx, Path::new(dir), why);
        }
        for f in KUBERNETES_FILES {
            if !keep.journaled.iter().any(|j| j == Path::new(f)) {
                let why = "the kubelet's credentials (a documented Kubernetes path, docs/reset.md)";
                remove_path(ctx, Path::new(f), "kubelet-state", why);
            }
        }
    }
    if !ctx.skipped("cni") {
        ctx.preexisting.extend(keep.preexisting.iter().cloned());
        for dir in CNI_DIRS {
            let why = "CNI configuration and state (a documented Kubernetes path, docs/reset.md)";
            empty_dir(ctx, Path::new(dir), why);
        }
    }
    if !ctx.skipped("iptables") {
        flush_chains(ctx);
    }
    if !ctx.skipped("interfaces") {
        delete_interfaces(ctx);
    }
}

/// The kubelet first, so nothing is recreated behind reset's back: when active, or enabled (a
/// kubelet in a crash loop waits for its restart as "activating", which is not active; stopping
/// an inactive unit changes nothing).
fn stop_kubelet(ctx: &mut Ctx<'_>) {
    if !ctx.fx.host {
        return;
    }
    let kubelet = "kubelet.service";
    if ctx.opts.dry_run {
        ctx.step("unit", "stop kubelet.service", Outcome::WouldDo, "");
    } else if ctx.fx.systemd.is_active(kubelet) || ctx.fx.systemd.is_enabled(kubelet) {
        match ctx.fx.systemd.stop("kubelet.service") {
            Ok(()) => ctx.step("unit", "stop kubelet.service", Outcome::Done, ""),
            Err(e) => ctx.step(
                "unit",
                "stop kubelet.service",
                Outcome::Failed,
                e.to_string(),
            ),
        }
    }
}

/// Mount points under `<root>/var/lib/kubelet/`, deepest first.
pub fn kubelet_mounts(ctx: &Ctx<'_>) -> Vec<PathBuf> {
    match ctx.fx.root.resolve(Path::new("/var/lib/kubelet")) {
        Ok(base) => ctx.fx.kernel.mounts_under(&base),
        Err(_) => Vec::new(),
    }
}

fn unmount_kubelet(ctx: &mut Ctx<'_>) {
    for m in kubelet_mounts(ctx) {
        let shown = m.display().to_string();
        if ctx.opts.dry_run {
            ctx.step("unmount", shown, Outcome::WouldDo, "");
            continue;
        }
        match ctx.fx.kernel.unmount(&m) {
            Ok(()) => ctx.step("unmount", shown, Outcome::Done, ""),
            Err(e) => {
                ctx.step(
                    "unmount",
                    shown,
                    Outcome::Failed,
                    format!("{e}; its directory is kept"),
                );
                ctx.pinned.push(m);
            }
        }
    }
}

/// Pods through the CRI first (their CNI DEL runs), on the socket join configured and on every
/// other known CRI socket that is there; then what only the runtime's tools still see.
async fn remove_containers(ctx: &mut Ctx<'_>) {
    if !ctx.fx.host {
        let what = "Kubernetes pod sandboxes and containers";
        ctx.step("containers", what, Outcome::Skipped, "--root is not /");
        return;
    }
    for socket in cri_sockets(&ctx.fx.root) {
        let shown = format!("pod sandboxes through the CRI at {}", socket.display());
        if ctx.opts.dry_run {
            ctx.step(
                "containers",
                shown,
                Outcome::WouldDo,
                "StopPodSandbox, RemovePodSandbox",
            );
            continue;
        }
        match ctx.fx.containers.remove_pods(&socket).await {
            Ok(n) => ctx.step("containers", shown, Outcome::Done, format!("{n} pods")),
            Err(e) => ctx.step("containers", shown, Outcome::Failed, e.to_string()),
        }
    }
    if ctx.opts.dry_run {
        let what = "leftover Kubernetes containers (ctr, docker)";
        ctx.step("containers", what, Outcome::WouldDo, "");
        return;
    }
    for line in ctx.fx.containers.remove_leftovers() {
        ctx.step("containers", line, Outcome::Done, "");
    }
}

/// The CRI endpoint join recorded, then every other known CRI socket present on the node.
fn cri_sockets(root: &Root) -> Vec<PathBuf> {
    let recorded = crate::apply::records::read::<crate::apply::records::NodeState>(
        root,
        crate::apply::records::STATE_FILE,
    )
    .and_then(|s| s.cri_endpoint)
    .map(|e| PathBuf::from(e.trim_start_matches("unix://")));
    let known = crate::effects::containers::CRI_SOCKETS
        .iter()
        .map(PathBuf::from);
    let mut out: Vec<PathBuf> = Vec::new();
    for p in recorded.into_iter().chain(known) {
        // A socket that is not there has no runtime behind it to ask.
        let is_socket = root
            .inspect(&p)
            .is_ok_and(|e| e == Existing::Special("socket"));
        if !out.contains(&p) && is_socket {
            out.push(p);
        }
    }
    out
}

/// Removes the contents of a documented directory, never crossing into another filesystem,
/// never following symlinks, and keeping anything that holds a mount or a restored file.
fn empty_dir(ctx: &mut Ctx<'_>, dir: &Path, why: &str) {
    let real = match ctx.fx.root.resolve(dir) {
        Ok(r) => r,
        Err(e) => {
            ctx.step(
                "remove",
                dir.display().to_string(),
                Outcome::Refused,
                e.to_string(),
            );
            return;
        }
    };
    let Some(dev) = ctx.fx.root.dir_device(dir) else {
        return;
    };
    for name in ctx.fx.root.list_dir(dir).unwrap_or_default() {
        let target = dir.join(&name);
        let shown = target.display().to_string();
        let before = seen_tree(ctx, &target);
        if ctx.opts.dry_run {
            if !ctx.preexisting.contains(&real.join(&name)) {
                ctx.step("remove", shown, Outcome::WouldDo, "");
            }
            audit_tree(ctx, before, why);
            continue;
        }
        let child = real.join(&name);
        let keep: Vec<PathBuf> = (ctx.pinned.iter())
            .chain(&ctx.restored)
            .chain(&ctx.preexisting)
            .cloned()
            .collect();
        match crate::effects::fs::remove_tree_on(&child, dev, &keep) {
            Ok(true) => ctx.step("remove", shown, Outcome::Done, ""),
            // Only what the journal restores, or what was there before join, is in the way:
            // kept on purpose.
            Ok(false) if !ctx.pinned.iter().any(|m| m.starts_with(&child)) => {}
            Ok(false) => ctx.step(
                "remove",
                shown,
                Outcome::Failed,
                "kept: it holds a mount that would not unmount",
            ),
            Err(e) => ctx.step("remove", shown, Outcome::Failed, e.to_string()),
        }
        audit_tree(ctx, before, why);
    }
}

/// Every path of a tree about to be removed, with what is there (at most
/// [`super::audit::MAX_TREE_PATHS`]; a note says when more were left out).
fn seen_tree(ctx: &mut Ctx<'_>, top: &Path) -> Vec<(PathBuf, Seen)> {
    match ctx.fx.root.walk_seen(top, super::audit::MAX_TREE_PATHS) {
        Ok((all, false)) => all,
        Ok((all, true)) => {
            let note = format!(
                "more than {} paths: the first are listed",
                super::audit::MAX_TREE_PATHS
            );
            ctx.step("audit", top.display().to_string(), Outcome::Skipped, note);
            all
        }
        Err(e) => {
            tracing::warn!("audit: {e}");
            vec![(top.to_path_buf(), Seen::Absent)]
        }
    }
}

/// The audit of a removed tree: each path removed, or kept (and why) where it is still there.
/// A file the journal restores gets its own entry when it is restored.
fn audit_tree(ctx: &mut Ctx<'_>, before: Vec<(PathBuf, Seen)>, why: &str) {
    for (path, was) in before {
        let real = ctx.fx.root.resolve(&path).ok();
        let restored = real.as_ref().is_some_and(|r| ctx.restored.contains(r));
        if restored {
            continue;
        }
        let holds = |list: &[PathBuf]| {
            real.as_ref()
                .is_some_and(|r| list.iter().any(|p| p.starts_with(r)))
        };
        let kept_why = if holds(&ctx.pinned) {
            "kept: it holds a mount that would not unmount"
        } else if holds(&ctx.restored) {
            "kept: it holds a file the journal restores"
        } else if holds(&ctx.preexisting) {
            "kept: it was there before join (another tool's, docs/reset.md)"
        } else {
            "kept: on another filesystem, or it could not be removed"
        };
        if ctx.opts.dry_run {
            let (action, after, reason) = if holds(&ctx.restored) || holds(&ctx.preexisting) {
                (Action::Kept, was.clone(), kept_why.to_owned())
            } else {
                (Action::WouldRemove, Seen::Absent, why.to_owned())
            };
            ctx.audit(&path, action, was, after, reason);
            continue;
        }
        let after = ctx.seen(&path);
        let (action, reason) = if after == Seen::Absent {
            (Action::Removed, why.to_owned())
        } else {
            (Action::Kept, kept_why.to_owned())
        };
        ctx.audit(&path, action, was, after, reason);
    }
}

/// Removes one regular file or symlink; a special file is refused, never opened. `why` is the
/// audit's reason for removing it.
pub fn remove_path(ctx: &mut Ctx<'_>, path: &Path, kind: &'static str, why: &str) -> Outcome {
    let before = ctx.seen(path);
    let outcome = remove_one(ctx, path, kind);
    let action = match (outcome, &before) {
        (Outcome::Done, Seen::Absent) => Action::AlreadyAbsent,
        (Outcome::Done, _) => Action::Removed,
        (Outcome::WouldDo, _) => Action::WouldRemove,
        (Outcome::Refused, _) => Action::Refused,
        _ => Action::Failed,
    };
    let reason = match action {
        Action::Refused | Action::Failed => ctx
            .steps
            .last()
            .map(|s| s.detail.clone())
            .unwrap_or_default(),
        _ => why.to_owned(),
    };
    if action == Action::WouldRemove {
        ctx.audit(path, action, before, Seen::Absent, reason);
    } else {
        ctx.audit_now(path, action, before, reason);
    }
    outcome
}

/// The removal of [`remove_path`], as one step.
fn remove_one(ctx: &mut Ctx<'_>, path: &Path, kind: &'static str) -> Outcome {
    let shown = path.display().to_string();
    let outcome = match ctx.fx.root.inspect(path) {
        Ok(Existing::Absent) => return Outcome::Done,
        Ok(Existing::File { .. } | Existing::Symlink(_)) if ctx.opts.dry_run => Outcome::WouldDo,
        Ok(Existing::File { .. } | Existing::Symlink(_)) => match ctx.fx.root.remove_file(path) {
            Ok(_) => Outcome::Done,
            Err(e) => {
                ctx.step(kind, shown, Outcome::Failed, e.to_string());
                return Outcome::Failed;
            }
        },
        Ok(Existing::Special(what)) => {
            ctx.step(
                kind,
                shown,
                Outcome::Refused,
                format!("it is a {what}, not a regular file"),
            );
            return Outcome::Refused;
        }
        Ok(Existing::Dir) => {
            ctx.step(
                kind,
                shown,
                Outcome::Refused,
                "it is a directory, not a regular file",
            );
            return Outcome::Refused;
        }
        Err(e) => {
            ctx.step(kind, shown, Outcome::Refused, e.to_string());
            return Outcome::Refused;
        }
    };
    ctx.step(kind, shown, outcome, "");
    outcome
}

/// kube-proxy's and CNI plugins' chains ([`super::iptables`]) and IPVS virtual servers.
fn flush_chains(ctx: &mut Ctx<'_>) {
    if !ctx.fx.host {
        ctx.step(
            "iptables",
            "kube-proxy and CNI chains",
            Outcome::Skipped,
            "--root is not /",
        );
        return;
    }
    for family in [Family::V4, Family::V6] {
        if let Some(dump) = ctx.fx.network.save(family) {
            super::iptables::clean_family(ctx, family, &dump);
        }
    }
    match ctx.fx.network.clear_ipvs() {
        None => {}
        Some(_) if ctx.opts.dry_run => ctx.step(
            "ipvs",
            "kube-proxy virtual servers",
            Outcome::WouldDo,
            "ipvsadm --clear",
        ),
        Some(Ok(())) => ctx.step("ipvs", "kube-proxy virtual servers", Outcome::Done, ""),
        Some(Err(e)) => ctx.step(
            "ipvs",
            "kube-proxy virtual servers",
            Outcome::Failed,
            e.to_string(),
        ),
    }
}

fn delete_interfaces(ctx: &mut Ctx<'_>) {
    if !ctx.fx.host {
        ctx.step(
            "interfaces",
            "CNI interfaces",
            Outcome::Skipped,
            "--root is not /",
        );
        return;
    }
    for name in CNI_INTERFACES {
        if !ctx.fx.network.link_exists(name) {
            continue;
        }
        if ctx.opts.dry_run {
            ctx.step("interface", *name, Outcome::WouldDo, "");
            continue;
        }
        match ctx.fx.network.delete_link(name) {
            Ok(()) => ctx.step("interface", *name, Outcome::Done, ""),
            Err(e) => ctx.step("interface", *name, Outcome::Failed, e.to_string()),
        }
    }
}
