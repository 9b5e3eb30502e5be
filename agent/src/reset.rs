//! `node-attach reset`: undo exactly what join did, and clean up what the kubelet and the runtime
//! created while the node ran.
//!
//! Order: delete this node's Node with its own credentials (`--delete-node`), stop the kubelet,
//! unmount everything under /var/lib/kubelet (deepest first, never following a path out of the
//! tree; a mount that will not go keeps its directory), remove Kubernetes containers, CNI
//! configuration and state, kube-proxy/CNI iptables chains and CNI interfaces (each its own
//! step, each skippable), then replay the journal backwards (restore overwritten files byte for
//! byte with their modes, remove created files and then empty created directories, revert
//! sysctls, re-enable swap, disable units, remove packages only with `--remove-packages`) and
//! finally delete the journal. Nothing outside the journal and the documented Kubernetes paths
//! (`docs/reset.md`) is ever deleted. With no journal, or a damaged one, only the documented
//! paths are cleaned, and the output says so.

use crate::bootstrap;
use crate::effects::fs::{Existing, Root};
use crate::effects::{run_command, Effects};
use crate::error::{Code, Failure};
use crate::journal::{self, Change, Journal, JournalError, Record};
use crate::kube::Kube;
use crate::kubeconfig::Kubeconfig;
use serde::Serialize;
use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The node's credentials in /etc/kubernetes (never the directory's other files). The kubelet
/// may write kubelet.conf itself (`--tls-bootstrap=kubelet`), so they are removed even when not
/// journaled. /etc/kubernetes/pki/ca.crt is only ever restored through the journal: without it,
/// reset cannot tell whether the file predates join, and leaves it.
pub const KUBERNETES_FILES: &[&str] = &[
    "/etc/kubernetes/kubelet.conf",
    "/etc/kubernetes/bootstrap-kubelet.conf",
];
/// Directories whose contents are the kubelet's and CNI's state.
pub const STATE_DIRS: &[&str] = &["/var/lib/kubelet"];
/// CNI configuration and state.
pub const CNI_DIRS: &[&str] = &["/etc/cni/net.d", "/var/lib/cni"];
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
/// iptables chain prefixes kube-proxy and CNI plugins own.
pub const CHAIN_PREFIXES: &[&str] = &["KUBE-", "CNI-", "FLANNEL-", "cali-", "CILIUM_"];

/// The file that marks a node for removal at shutdown (see node-attach-reset-on-shutdown.service).
pub const REMOVAL_MARKER: &str = "/var/lib/node-attach/remove-on-shutdown";

/// What reset should do.
#[derive(Clone, Debug, Default)]
pub struct ResetOptions {
    /// Plan only.
    pub dry_run: bool,
    /// Delete this node's Node object first.
    pub delete_node: bool,
    /// Uninstall packages join installed.
    pub remove_packages: bool,
    /// Cleanup steps to skip: mounts, containers, cni, iptables, interfaces, kubelet-state.
    pub skip: Vec<String>,
    /// Drain the node first (with [`ResetOptions::admin_kubeconfig`]).
    pub drain: bool,
    /// An admin kubeconfig's text: drains, and deletes the Node (a node may not delete its
    /// own Node object on a real cluster: the Node authorizer grants nodes no delete).
    pub admin_kubeconfig: Option<String>,
    /// How long the drain may take.
    pub drain_timeout: Duration,
}

/// One reset step.
#[derive(Clone, Debug, Serialize)]
pub struct ResetStep {
    /// Step kind.
    pub kind: &'static str,
    /// Path, unit, key…
    pub target: String,
    /// done, would-do, skipped, refused, failed.
    pub outcome: &'static str,
    /// Why.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

/// The report.
#[derive(Clone, Debug, Serialize)]
pub struct ResetReport {
    /// Whether the journal was used (false: missing or damaged, documented paths only).
    pub journal: &'static str,
    /// Node deletion: deleted, absent, skipped (unreachable or not asked).
    pub node: String,
    /// Every step.
    pub steps: Vec<ResetStep>,
    /// Steps that failed or were refused.
    pub problems: usize,
    /// Dry run.
    pub dry_run: bool,
}

struct Ctx<'a> {
    fx: &'a Effects,
    opts: &'a ResetOptions,
    steps: Vec<ResetStep>,
    /// Real directories that still hold a mount and must not be deleted.
    pinned: Vec<PathBuf>,
}

impl Ctx<'_> {
    fn step(
        &mut self,
        kind: &'static str,
        target: impl Into<String>,
        outcome: &'static str,
        detail: impl Into<String>,
    ) {
        let (target, detail) = (target.into(), detail.into());
        match outcome {
            "failed" | "refused" => tracing::warn!("reset {kind} {target}: {outcome}: {detail}"),
            _ => tracing::info!("reset {kind} {target}: {outcome}"),
        }
        self.steps.push(ResetStep {
            kind,
            target,
            outcome,
            detail,
        });
    }

    fn skipped(&self, what: &str) -> bool {
        self.opts.skip.iter().any(|s| s == what || s == "all")
    }

    fn host_outcome(&self) -> &'static str {
        if self.opts.dry_run {
            "would-do"
        } else {
            "done"
        }
    }
}

/// Runs reset.
pub async fn run(fx: &Effects, opts: &ResetOptions) -> Result<ResetReport, Failure> {
    let root = &fx.root;
    // Held to the end: a join or another reset on this root fails fast with `busy`.
    let _lock = if opts.dry_run {
        None
    } else {
        Some(crate::join::lock(root)?)
    };
    if !opts.dry_run {
        // A join killed while creating its state directory leaves a staging directory.
        if let Err(e) = root.sweep_staged(Path::new(journal::BACKUP_DIR)) {
            tracing::warn!("cannot remove an interrupted join's staging directory: {e}");
        }
    }
    let (records, journal_state) = match Journal::load(root) {
        Ok(Some(r)) => (Some(r), "used"),
        Ok(None) => (None, "missing"),
        Err(JournalError::Damaged { line, reason }) => {
            tracing::warn!("the journal is damaged at line {line} ({reason}): cleaning the documented Kubernetes paths only");
            (None, "damaged")
        }
        Err(e) => return Err(Failure::new(Code::Filesystem, e.to_string())),
    };
    // Read before the journal's replay removes it.
    let callback: Option<serde_json::Value> = root
        .read(Path::new(crate::join::CALLBACK_FILE))
        .ok()
        .flatten()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let mut ctx = Ctx {
        fx,
        opts,
        steps: Vec::new(),
        pinned: Vec::new(),
    };

    if let (true, Some(admin)) = (opts.drain, &opts.admin_kubeconfig) {
        drain(&mut ctx, admin).await?;
    }
    let node = if opts.delete_node {
        delete_node(&mut ctx).await
    } else {
        "not asked (--delete-node)".to_owned()
    };

    // The kubelet first, so nothing is recreated behind our back.
    if fx.host {
        if opts.dry_run {
            ctx.step("unit", "stop kubelet.service", "would-do", "");
        } else if fx.systemd.is_active("kubelet.service") {
            match fx.systemd.stop("kubelet.service") {
                Ok(()) => ctx.step("unit", "stop kubelet.service", "done", ""),
                Err(e) => ctx.step("unit", "stop kubelet.service", "failed", e.to_string()),
            }
        }
    }
    // Pods before mounts: the runtime tears down what it set up for them.
    if !ctx.skipped("containers") {
        remove_containers(&mut ctx).await;
    }
    if !ctx.skipped("mounts") {
        unmount_kubelet(&mut ctx);
    }
    if !ctx.skipped("kubelet-state") {
        for dir in STATE_DIRS {
            empty_dir(&mut ctx, Path::new(dir));
        }
        for f in KUBERNETES_FILES {
            // Journaled files are restored below; the rest of this list is the kubelet's.
            if records
                .as_ref()
                .is_none_or(|r| !first_records(r).contains_key(Path::new(f)))
            {
                remove_path(&mut ctx, Path::new(f), "kubelet-state");
            }
        }
    }
    if !ctx.skipped("cni") {
        for dir in CNI_DIRS {
            empty_dir(&mut ctx, Path::new(dir));
        }
    }
    if !ctx.skipped("iptables") {
        flush_chains(&mut ctx);
    }
    if !ctx.skipped("interfaces") {
        delete_interfaces(&mut ctx);
    }

    match &records {
        Some(r) => replay(&mut ctx, r),
        None => {
            ctx.step(
                "journal",
                journal::JOURNAL_FILE,
                "skipped",
                format!(
                    "journal {journal_state}: only the documented Kubernetes paths were cleaned"
                ),
            );
        }
    }
    remove_state_dir(&mut ctx, records.as_deref());

    let problems = ctx
        .steps
        .iter()
        .filter(|s| matches!(s.outcome, "failed" | "refused"))
        .count();
    if let (Some(cb), false) = (&callback, opts.dry_run) {
        if let Some(url) = cb["url"].as_str().and_then(|u| url::Url::parse(u).ok()) {
            let ca = cb["ca_file"].as_str().map(PathBuf::from);
            let body = serde_json::json!({
                "status": if problems == 0 { "removed" } else { "reset-incomplete" },
                "node": node, "problems": problems,
            });
            crate::join::post_callback(&url, ca.as_deref(), crate::http::Limits::default(), &body)
                .await;
        }
    }
    Ok(ResetReport {
        journal: journal_state,
        node,
        steps: ctx.steps,
        problems,
        dry_run: opts.dry_run,
    })
}

/// The first record of each path: it holds the state before join.
fn first_records(records: &[Record]) -> std::collections::HashMap<PathBuf, u64> {
    let mut out = std::collections::HashMap::new();
    for r in records.iter().filter(|r| r.event == "begin") {
        if let Some(
            Change::File { path, .. } | Change::Symlink { path, .. } | Change::Dir { path },
        ) = &r.change
        {
            out.entry(path.clone()).or_insert(r.seq);
        }
    }
    out
}

/// Deletes this node's Node object: with the admin kubeconfig when given, else with the
/// node's own credentials, which a real API server refuses (its Node authorizer grants nodes
/// create, get, update and patch on Nodes, never delete: `plugin/pkg/auth/authorizer/rbac/
/// bootstrappolicy` `NodeRules`); that refusal is a failed step saying what to do.
async fn delete_node(ctx: &mut Ctx<'_>) -> String {
    let Some(name) = own_node_name(&ctx.fx.root) else {
        ctx.step(
            "api",
            "DELETE node",
            "skipped",
            "the node's name is unknown (no certificate, no state file)",
        );
        return "skipped: the node's name is unknown".into();
    };
    let target = format!("DELETE /api/v1/nodes/{name}");
    if ctx.opts.dry_run {
        let how = if ctx.opts.admin_kubeconfig.is_some() {
            "with the admin kubeconfig"
        } else {
            "as the node itself"
        };
        ctx.step("api", target, "would-do", how);
        return format!("would delete {name}");
    }
    let limits = crate::http::Limits {
        request_timeout: Duration::from_secs(10),
        ..crate::http::Limits::default()
    };
    let (client, how) = match &ctx.opts.admin_kubeconfig {
        Some(admin) => (
            Kube::from_kubeconfig(admin, limits).map_err(|e| e.to_string()),
            "with the admin kubeconfig",
        ),
        None => (
            node_client(&ctx.fx.root, limits),
            "with the node's own credentials",
        ),
    };
    let outcome = match client {
        Ok(kube) => kube
            .delete(&format!("/api/v1/nodes/{name}"))
            .await
            .map_err(|e| (e.status(), e.to_string())),
        Err(e) => Err((None, e)),
    };
    match outcome {
        Ok(true) => {
            ctx.step("api", target, "done", how);
            format!("deleted {name}")
        }
        Ok(false) => {
            ctx.step("api", target, "done", "already absent");
            format!("{name} was already absent")
        }
        Err((Some(403), e)) => {
            ctx.step("api", target, "failed", format!("{e}. A node may not delete its own Node object on a real cluster: pass --kubeconfig with an admin's kubeconfig, or delete it from the control plane (kubectl delete node {name})"));
            format!("not deleted: the API server refused ({name} stays until the control plane deletes it)")
        }
        Err((_, e)) => {
            ctx.step(
                "api",
                target,
                "skipped",
                format!("API server unreachable or refused: {e}"),
            );
            format!("skipped: {e}")
        }
    }
}

/// A client authenticating as the node (kubelet.conf's cluster, the current client pair).
fn node_client(root: &Root, limits: crate::http::Limits) -> Result<Kube, String> {
    let conf = root
        .read(Path::new(bootstrap::KUBELET_CONF))
        .ok()
        .flatten()
        .ok_or("no /etc/kubernetes/kubelet.conf: no node credentials")?;
    let pair = root
        .read_following(Path::new(bootstrap::CURRENT))
        .ok()
        .flatten()
        .ok_or("no client certificate")?;
    let cluster = Kubeconfig::parse(&String::from_utf8_lossy(&conf))
        .and_then(|k| k.current_cluster())
        .map_err(|e| format!("kubelet.conf is unreadable: {e}"))?;
    let ca = crate::pin::certificates_from_pem(&cluster.ca_pem).unwrap_or_default();
    Kube::with_certificate(&cluster.server, &ca, &pair, limits).map_err(|e| e.to_string())
}

/// The node's name, from its client certificate, or from join's state file.
fn own_node_name(root: &Root) -> Option<String> {
    if let Some(name) = root
        .read_following(Path::new(bootstrap::CURRENT))
        .ok()
        .flatten()
        .and_then(|p| node_name_of(&p))
    {
        return Some(name);
    }
    let state: serde_json::Value =
        serde_json::from_slice(&root.read(Path::new(crate::join::STATE_FILE)).ok()??).ok()?;
    state["node_name"].as_str().map(str::to_owned)
}

/// `kubectl drain` with an admin's credentials: cordon, then evict every pod but DaemonSet and
/// mirror pods through the eviction API (which honours PodDisruptionBudgets: a 429 is retried
/// until the timeout), then wait until they are gone. A drain that cannot finish stops reset
/// before anything is removed.
async fn drain(ctx: &mut Ctx<'_>, admin: &str) -> Result<(), Failure> {
    let fail = |m: String| Failure::new(Code::DrainFailed, m);
    let Some(name) = own_node_name(&ctx.fx.root) else {
        ctx.step(
            "drain",
            "node",
            "skipped",
            "the node's name is unknown (no certificate, no state file)",
        );
        return Ok(());
    };
    if ctx.opts.dry_run {
        ctx.step(
            "drain",
            format!("cordon and evict pods of {name}"),
            "would-do",
            "",
        );
        return Ok(());
    }
    let limits = crate::http::Limits {
        request_timeout: Duration::from_secs(15),
        ..crate::http::Limits::default()
    };
    let kube =
        Kube::from_kubeconfig(admin, limits).map_err(|e| fail(format!("--kubeconfig: {e}")))?;
    kube.merge_patch(
        &format!("/api/v1/nodes/{name}"),
        &serde_json::json!({"spec": {"unschedulable": true}}),
    )
    .await
    .map_err(|e| fail(format!("cordoning {name}: {e}")))?;
    ctx.step("drain", format!("cordon {name}"), "done", "");
    // The Eviction's group-version follows the cluster: policy/v1 from 1.22, v1beta1 before.
    let eviction_version = match kube.version().await {
        Ok((v, _)) => crate::compat::eviction_version(&v),
        Err(e) => return Err(fail(format!("reading the API server's version: {e}"))),
    };
    let deadline = std::time::Instant::now() + ctx.opts.drain_timeout;
    let list_path = format!("/api/v1/pods?fieldSelector=spec.nodeName%3D{name}");
    loop {
        let list = kube
            .get(&list_path)
            .await
            .map_err(|e| fail(format!("listing the pods on {name}: {e}")))?
            .unwrap_or_default();
        let pods: Vec<serde_json::Value> = list["items"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|p| {
                let daemon = p["metadata"]["ownerReferences"]
                    .as_array()
                    .is_some_and(|o| o.iter().any(|r| r["kind"] == "DaemonSet"));
                let mirror = !p["metadata"]["annotations"]["kubernetes.io/config.mirror"].is_null();
                !daemon && !mirror
            })
            .collect();
        if pods.is_empty() {
            ctx.step("drain", format!("evict pods of {name}"), "done", "");
            return Ok(());
        }
        let mut blocked = Vec::new();
        for p in &pods {
            let ns = p["metadata"]["namespace"].as_str().unwrap_or("default");
            let pod = p["metadata"]["name"].as_str().unwrap_or_default();
            let eviction = serde_json::json!({"apiVersion": eviction_version, "kind": "Eviction", "metadata": {"name": pod, "namespace": ns}});
            match kube
                .post(
                    &format!("/api/v1/namespaces/{ns}/pods/{pod}/eviction"),
                    &eviction,
                )
                .await
            {
                Ok(_) => ctx.step("evict", format!("{ns}/{pod}"), "done", ""),
                Err(e) if e.status() == Some(404) => {}
                Err(e) if e.status() == Some(429) => blocked.push(format!("{ns}/{pod}")),
                Err(e) => return Err(fail(format!("evicting {ns}/{pod}: {e}"))),
            }
        }
        if std::time::Instant::now() >= deadline {
            return Err(fail(format!(
                "the drain of {name} did not finish within {:?}: PodDisruptionBudgets still protect {}; nothing was removed. Rerun with a longer --drain-timeout, or without --drain",
                ctx.opts.drain_timeout,
                blocked.join(", ")
            )));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn node_name_of(pair: &[u8]) -> Option<String> {
    use rustls::pki_types::pem::PemObject;
    let der = rustls::pki_types::CertificateDer::pem_slice_iter(pair)
        .next()?
        .ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_owned();
    cn.strip_prefix("system:node:").map(str::to_owned)
}

/// Mount points under `<root>/var/lib/kubelet/`, deepest first, from /proc/self/mountinfo.
pub fn kubelet_mounts(root: &Root) -> Vec<PathBuf> {
    let Ok(base) = root.resolve(Path::new("/var/lib/kubelet")) else {
        return Vec::new();
    };
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut out: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .map(|m| PathBuf::from(m.replace("\\040", " ")))
        .filter(|m| m.starts_with(&base) && m != &base)
        .collect();
    out.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    out.dedup();
    out
}

fn unmount_kubelet(ctx: &mut Ctx<'_>) {
    for m in kubelet_mounts(&ctx.fx.root) {
        let shown = m.display().to_string();
        if ctx.opts.dry_run {
            ctx.step("unmount", shown, "would-do", "");
            continue;
        }
        match nix::mount::umount2(&m, nix::mount::MntFlags::empty()) {
            Ok(()) => ctx.step("unmount", shown, "done", ""),
            Err(e) => {
                ctx.step(
                    "unmount",
                    shown,
                    "failed",
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
        ctx.step(
            "containers",
            "Kubernetes pod sandboxes and containers",
            "skipped",
            "--root is not /",
        );
        return;
    }
    for socket in cri_sockets(&ctx.fx.root) {
        let shown = format!("pod sandboxes through the CRI at {}", socket.display());
        if ctx.opts.dry_run {
            ctx.step(
                "containers",
                shown,
                "would-do",
                "StopPodSandbox, RemovePodSandbox",
            );
            continue;
        }
        match ctx.fx.containers.remove_pods(&socket).await {
            Ok(n) => ctx.step("containers", shown, "done", format!("{n} pods")),
            Err(e) => ctx.step("containers", shown, "failed", e.to_string()),
        }
    }
    if ctx.opts.dry_run {
        ctx.step(
            "containers",
            "leftover Kubernetes containers (ctr, docker)",
            "would-do",
            "",
        );
        return;
    }
    for line in ctx.fx.containers.remove_leftovers() {
        ctx.step("containers", line, "done", "");
    }
}

/// The CRI endpoint join recorded, then every other known CRI socket present on the node.
fn cri_sockets(root: &Root) -> Vec<PathBuf> {
    let recorded = root
        .read(Path::new(crate::join::STATE_FILE))
        .ok()
        .flatten()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v["cri_endpoint"].as_str().map(str::to_owned))
        .map(|e| PathBuf::from(e.trim_start_matches("unix://")));
    let known = crate::effects::containers::CRI_SOCKETS
        .iter()
        .map(PathBuf::from);
    let mut out: Vec<PathBuf> = Vec::new();
    for p in recorded.into_iter().chain(known) {
        // A socket that is not there has no runtime behind it to ask.
        if !out.contains(&p) && root.inspect(&p).is_ok_and(|e| e == Existing::Other) {
            out.push(p);
        }
    }
    out
}

/// Removes the contents of a documented directory, never crossing into another filesystem,
/// never following symlinks, and keeping anything that still holds a mount.
fn empty_dir(ctx: &mut Ctx<'_>, dir: &Path) {
    let real = match ctx.fx.root.resolve(dir) {
        Ok(r) => r,
        Err(e) => {
            ctx.step(
                "remove",
                dir.display().to_string(),
                "refused",
                e.to_string(),
            );
            return;
        }
    };
    let Ok(meta) = std::fs::symlink_metadata(&real) else {
        return;
    };
    if !meta.is_dir() {
        return;
    }
    let names = ctx.fx.root.list_dir(dir).unwrap_or_default();
    for name in names {
        let target = dir.join(&name);
        let real_child = real.join(&name);
        if ctx.opts.dry_run {
            ctx.step("remove", target.display().to_string(), "would-do", "");
            continue;
        }
        match remove_tree(&real_child, meta.dev(), &ctx.pinned) {
            Ok(true) => ctx.step("remove", target.display().to_string(), "done", ""),
            Ok(false) => ctx.step(
                "remove",
                target.display().to_string(),
                "failed",
                "kept: it holds a mount that would not unmount",
            ),
            Err(e) => ctx.step(
                "remove",
                target.display().to_string(),
                "failed",
                e.to_string(),
            ),
        }
    }
}

/// Removes a tree on device `dev`; returns false when something was kept (a mount).
fn remove_tree(path: &Path, dev: u64, pinned: &[PathBuf]) -> std::io::Result<bool> {
    if pinned.iter().any(|p| p.starts_with(path)) {
        // Remove what we can around the mount, keep the path to it.
        let meta = std::fs::symlink_metadata(path)?;
        if meta.is_dir() && !pinned.iter().any(|p| p == path) {
            let mut all = true;
            for e in std::fs::read_dir(path)? {
                all &= remove_tree(&e?.path(), dev, pinned)?;
            }
            let _ = all;
        }
        return Ok(false);
    }
    let meta = std::fs::symlink_metadata(path)?;
    if meta.is_dir() {
        if meta.dev() != dev {
            return Ok(false);
        }
        let mut all = true;
        for e in std::fs::read_dir(path)? {
            all &= remove_tree(&e?.path(), dev, pinned)?;
        }
        if all {
            std::fs::remove_dir(path)?;
        }
        Ok(all)
    } else {
        std::fs::remove_file(path)?;
        Ok(true)
    }
}

fn remove_path(ctx: &mut Ctx<'_>, path: &Path, kind: &'static str) {
    let shown = path.display().to_string();
    match ctx.fx.root.inspect(path) {
        Ok(Existing::Absent) => {}
        Ok(Existing::File { .. } | Existing::Symlink(_)) => {
            if ctx.opts.dry_run {
                ctx.step(kind, shown, "would-do", "");
            } else {
                match ctx.fx.root.remove_file(path) {
                    Ok(_) => ctx.step(kind, shown, "done", ""),
                    Err(e) => ctx.step(kind, shown, "failed", e.to_string()),
                }
            }
        }
        Ok(_) => ctx.step(kind, shown, "refused", "not a regular file"),
        Err(e) => ctx.step(kind, shown, "refused", e.to_string()),
    }
}

fn flush_chains(ctx: &mut Ctx<'_>) {
    if !ctx.fx.host {
        ctx.step(
            "iptables",
            "kube-proxy and CNI chains",
            "skipped",
            "--root is not /",
        );
        return;
    }
    for (save, tool) in [
        ("iptables-save", "iptables"),
        ("ip6tables-save", "ip6tables"),
    ] {
        if crate::effects::which(save).is_none() {
            continue;
        }
        let Ok(dump) = run_command(save, &[], Duration::from_secs(60)) else {
            continue;
        };
        let mut table = String::new();
        let mut chains: Vec<(String, String)> = Vec::new();
        let mut jumps: Vec<(String, String)> = Vec::new();
        for line in dump.lines() {
            if let Some(t) = line.strip_prefix('*') {
                table = t.to_owned();
            } else if let Some(c) = line.strip_prefix(':') {
                let name = c.split_whitespace().next().unwrap_or_default();
                if CHAIN_PREFIXES.iter().any(|p| name.starts_with(p)) {
                    chains.push((table.clone(), name.to_owned()));
                }
            } else if let Some(rule) = line.strip_prefix("-A ") {
                // Rules in built-in chains that jump into an owned chain.
                let mut parts = rule.split_whitespace();
                let chain = parts.next().unwrap_or_default();
                let target = rule
                    .split(" -j ")
                    .nth(1)
                    .and_then(|t| t.split_whitespace().next())
                    .unwrap_or_default();
                if !CHAIN_PREFIXES.iter().any(|p| chain.starts_with(p))
                    && CHAIN_PREFIXES.iter().any(|p| target.starts_with(p))
                {
                    jumps.push((table.clone(), rule.to_owned()));
                }
            }
        }
        if chains.is_empty() {
            continue;
        }
        let summary = format!(
            "{tool}: {} chains ({})",
            chains.len(),
            chains
                .iter()
                .map(|(_, c)| c.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        if ctx.opts.dry_run {
            ctx.step("iptables", summary, "would-do", "");
            continue;
        }
        for (t, rule) in &jumps {
            let words = save_words(rule);
            let mut args = vec!["-t", t.as_str(), "-D"];
            args.extend(words.iter().map(String::as_str));
            let _ = run_command(tool, &args, Duration::from_secs(30));
        }
        for (t, c) in &chains {
            let _ = run_command(tool, &["-t", t, "-F", c], Duration::from_secs(30));
        }
        let mut failed = Vec::new();
        for (t, c) in &chains {
            if run_command(tool, &["-t", t, "-X", c], Duration::from_secs(30)).is_err() {
                failed.push(c.clone());
            }
        }
        if failed.is_empty() {
            ctx.step("iptables", summary, "done", "");
        } else {
            ctx.step(
                "iptables",
                summary,
                "failed",
                format!("could not delete {}", failed.join(", ")),
            );
        }
    }
    if crate::effects::which("ipvsadm").is_some() {
        if ctx.opts.dry_run {
            ctx.step(
                "ipvs",
                "kube-proxy virtual servers",
                "would-do",
                "ipvsadm --clear",
            );
        } else {
            match run_command("ipvsadm", &["--clear"], Duration::from_secs(30)) {
                Ok(_) => ctx.step("ipvs", "kube-proxy virtual servers", "done", ""),
                Err(e) => ctx.step(
                    "ipvs",
                    "kube-proxy virtual servers",
                    "failed",
                    e.to_string(),
                ),
            }
        }
    }
}

/// The arguments of one `iptables-save` rule line, as iptables quotes them: a word with spaces is
/// in double quotes (the kubelet's `-m comment --comment "kubernetes postrouting rules"`), with
/// `\"` and `\\` escaped inside. Splitting on whitespace instead breaks such a rule, its `-D`
/// matches nothing, and the chain it jumps to cannot be deleted.
fn save_words(rule: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut started = false;
    let mut quoted = false;
    let mut chars = rule.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                quoted = !quoted;
                started = true;
            }
            '\\' if quoted => {
                if let Some(n) = chars.next() {
                    word.push(n);
                }
            }
            c if c.is_whitespace() && !quoted => {
                if started {
                    words.push(std::mem::take(&mut word));
                    started = false;
                }
            }
            c => {
                word.push(c);
                started = true;
            }
        }
    }
    if started {
        words.push(word);
    }
    words
}

fn delete_interfaces(ctx: &mut Ctx<'_>) {
    if !ctx.fx.host {
        ctx.step("interfaces", "CNI interfaces", "skipped", "--root is not /");
        return;
    }
    for name in CNI_INTERFACES {
        if !Path::new("/sys/class/net").join(name).exists() {
            continue;
        }
        if ctx.opts.dry_run {
            ctx.step("interface", *name, "would-do", "");
            continue;
        }
        match run_command("ip", &["link", "delete", name], Duration::from_secs(30)) {
            Ok(_) => ctx.step("interface", *name, "done", ""),
            Err(e) => ctx.step("interface", *name, "failed", e.to_string()),
        }
    }
}

fn is_state_path(p: &Path) -> bool {
    let state = Path::new(journal::STATE_DIR);
    p == state || p.starts_with(state) || state.starts_with(p)
}

fn replay(ctx: &mut Ctx<'_>, records: &[Record]) {
    let firsts = first_records(records);
    let fx = ctx.fx;
    let root = &fx.root;
    let mut seen: HashSet<u64> = HashSet::new();
    for r in records.iter().rev().filter(|r| r.event == "begin") {
        if !seen.insert(r.seq) {
            continue;
        }
        let Some(change) = &r.change else { continue };
        if let Change::File { path, .. } | Change::Symlink { path, .. } = change {
            // A join killed mid-write leaves its temporary file beside the target.
            if !ctx.opts.dry_run {
                let _ = root.sweep_temps(path);
            }
        }
        match change {
            Change::File { path, prior } => {
                if firsts.get(path) != Some(&r.seq) {
                    continue;
                }
                let shown = path.display().to_string();
                match prior {
                    Some(p) => {
                        let backup = PathBuf::from(journal::BACKUP_DIR).join(&p.backup);
                        let bytes = match root.read(&backup) {
                            Ok(Some(b)) => b,
                            _ => {
                                ctx.step("restore", shown, "failed", "its backup is missing");
                                continue;
                            }
                        };
                        if ctx.opts.dry_run {
                            ctx.step("restore", shown, "would-do", format!("mode {:04o}", p.mode));
                            continue;
                        }
                        match root.inspect(path) {
                            Ok(Existing::File { .. } | Existing::Absent) => {
                                match root.write_atomic(path, &bytes, p.mode) {
                                    Ok(()) => ctx.step(
                                        "restore",
                                        shown,
                                        "done",
                                        format!("mode {:04o}", p.mode),
                                    ),
                                    Err(e) => ctx.step("restore", shown, "refused", e.to_string()),
                                }
                            }
                            Ok(_) => ctx.step(
                                "restore",
                                shown,
                                "refused",
                                "the path is no longer a regular file",
                            ),
                            Err(e) => ctx.step("restore", shown, "refused", e.to_string()),
                        }
                    }
                    None => remove_path(ctx, path, "remove"),
                }
            }
            Change::Symlink { path, prior } => {
                if firsts.get(path) != Some(&r.seq) {
                    continue;
                }
                let shown = path.display().to_string();
                match prior {
                    Some(to) if !ctx.opts.dry_run => match root.symlink_atomic(path, to) {
                        Ok(()) => {
                            ctx.step("restore", shown, "done", format!("-> {}", to.display()))
                        }
                        Err(e) => ctx.step("restore", shown, "refused", e.to_string()),
                    },
                    Some(_) => ctx.step("restore", shown, "would-do", ""),
                    None => remove_path(ctx, path, "remove"),
                }
            }
            Change::Dir { path } => {
                if is_state_path(path) || firsts.get(path) != Some(&r.seq) {
                    continue;
                }
                remove_dir(ctx, path);
            }
            Change::Removed { .. } | Change::Skipped { .. } => {}
            Change::Sysctl { key, prior } => {
                if !fx.host {
                    continue;
                }
                let proc = PathBuf::from("/proc/sys").join(key.replace('.', "/"));
                if ctx.opts.dry_run {
                    ctx.step("sysctl", format!("{key}={prior}"), "would-do", "");
                } else {
                    match std::fs::write(&proc, format!("{prior}\n")) {
                        Ok(()) => ctx.step("sysctl", format!("{key}={prior}"), "done", ""),
                        Err(e) => {
                            ctx.step("sysctl", format!("{key}={prior}"), "failed", e.to_string())
                        }
                    }
                }
            }
            Change::Module { name } => {
                ctx.step("module", name.clone(), "skipped", "left loaded: unloading could break other users; its load-at-boot file is removed");
            }
            Change::SwapOff { devices } => {
                if !fx.host {
                    continue;
                }
                let outcome = ctx.host_outcome();
                if !ctx.opts.dry_run {
                    if let Err(e) = run_command("swapon", &["-a"], Duration::from_secs(120)) {
                        ctx.step("swap-on", devices.join(","), "failed", e.to_string());
                        continue;
                    }
                }
                ctx.step("swap-on", devices.join(","), outcome, "");
            }
            Change::Package { manager, name } => {
                if !ctx.opts.remove_packages {
                    ctx.step(
                        "package",
                        name.clone(),
                        "skipped",
                        "kept (pass --remove-packages to uninstall what join installed)",
                    );
                    continue;
                }
                let outcome = ctx.host_outcome();
                let result = if ctx.opts.dry_run {
                    Ok(())
                } else {
                    match &fx.packages {
                        Some(pm) if pm.name() == manager => {
                            pm.remove(name).map_err(|e| e.to_string())
                        }
                        _ => Err(format!("package manager {manager} is not available")),
                    }
                };
                match result {
                    Ok(()) => ctx.step(
                        "package",
                        name.clone(),
                        outcome,
                        format!("{manager} remove"),
                    ),
                    Err(e) => ctx.step("package", name.clone(), "failed", e),
                }
            }
            Change::UnitEnabled { unit } => {
                if !fx.host {
                    continue;
                }
                let outcome = ctx.host_outcome();
                let result = if ctx.opts.dry_run {
                    Ok(())
                } else {
                    fx.systemd.disable(unit)
                };
                match result {
                    Ok(()) => ctx.step("unit", format!("disable {unit}"), outcome, ""),
                    Err(e) => ctx.step("unit", format!("disable {unit}"), "failed", e.to_string()),
                }
            }
            Change::UnitStarted { unit, was_active } => {
                if !fx.host || *was_active {
                    continue;
                }
                let outcome = ctx.host_outcome();
                let result = if ctx.opts.dry_run {
                    Ok(())
                } else {
                    fx.systemd.stop(unit)
                };
                match result {
                    Ok(()) => ctx.step("unit", format!("stop {unit}"), outcome, ""),
                    Err(e) => ctx.step("unit", format!("stop {unit}"), "failed", e.to_string()),
                }
            }
        }
    }
    if fx.host && !ctx.opts.dry_run && records.iter().any(|r| matches!(&r.change, Some(Change::File { path, .. }) if path.starts_with("/etc/systemd"))) {
        let _ = fx.systemd.daemon_reload();
    }
}

fn remove_dir(ctx: &mut Ctx<'_>, path: &Path) {
    let shown = path.display().to_string();
    if ctx.opts.dry_run {
        ctx.step("remove-dir", shown, "would-do", "if empty");
        return;
    }
    match ctx.fx.root.inspect(path) {
        Ok(Existing::Dir) => match ctx.fx.root.remove_empty_dir(path) {
            Ok(true) => ctx.step("remove-dir", shown, "done", ""),
            Ok(false) => ctx.step(
                "remove-dir",
                shown,
                "skipped",
                "kept: it holds files node-attach did not make",
            ),
            Err(e) => ctx.step("remove-dir", shown, "failed", e.to_string()),
        },
        Ok(Existing::Absent) => {}
        Ok(_) => ctx.step("remove-dir", shown, "refused", "no longer a directory"),
        Err(e) => ctx.step("remove-dir", shown, "refused", e.to_string()),
    }
}

fn remove_state_dir(ctx: &mut Ctx<'_>, records: Option<&[Record]>) {
    let root = &ctx.fx.root;
    if ctx.opts.dry_run {
        ctx.step(
            "remove",
            journal::STATE_DIR,
            "would-do",
            "the journal, backups and state",
        );
        return;
    }
    let state = Path::new(journal::STATE_DIR);
    if let Ok(real) = root.resolve(state) {
        if std::fs::symlink_metadata(&real).is_ok_and(|m| m.is_dir()) {
            let dev = std::fs::symlink_metadata(&real)
                .map(|m| m.dev())
                .unwrap_or(0);
            match remove_tree(&real, dev, &[]) {
                Ok(_) => ctx.step(
                    "remove",
                    journal::STATE_DIR,
                    "done",
                    "the journal, backups and state",
                ),
                Err(e) => ctx.step("remove", journal::STATE_DIR, "failed", e.to_string()),
            }
        }
    }
    // The directories join created to hold its state (e.g. /var/lib on a scratch root).
    if let Some(records) = records {
        let mut dirs: Vec<&PathBuf> = records
            .iter()
            .filter(|r| r.event == "begin")
            .filter_map(|r| match &r.change {
                Some(Change::Dir { path }) if is_state_path(path) && path != state => Some(path),
                _ => None,
            })
            .collect();
        dirs.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        dirs.dedup();
        for d in dirs {
            remove_dir(ctx, d);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::effects::containers::RecordingContainers;
    use crate::effects::{ReadyCri, RecordingSystemd};

    #[test]
    fn iptables_save_rules_split_as_iptables_quotes_them() {
        assert_eq!(
            save_words(
                r#"POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING"#
            ),
            [
                "POSTROUTING",
                "-m",
                "comment",
                "--comment",
                "kubernetes postrouting rules",
                "-j",
                "KUBE-POSTROUTING"
            ]
        );
        assert_eq!(
            save_words(r#"INPUT -m comment --comment "a \"b\" \\c" -j KUBE-FIREWALL"#),
            [
                "INPUT",
                "-m",
                "comment",
                "--comment",
                r#"a "b" \c"#,
                "-j",
                "KUBE-FIREWALL"
            ]
        );
        assert_eq!(
            save_words("FORWARD  -j CNI-FORWARD "),
            ["FORWARD", "-j", "CNI-FORWARD"]
        );
        assert_eq!(
            save_words(r#"X --comment "" -j Y"#),
            ["X", "--comment", "", "-j", "Y"]
        );
    }

    fn effects(root: &Path, containers: RecordingContainers) -> Effects {
        Effects {
            root: Root::new(root),
            systemd: Box::new(RecordingSystemd::default()),
            packages: None,
            cri: Box::new(ReadyCri),
            containers: Box::new(containers),
            host: true,
        }
    }

    #[tokio::test]
    async fn pods_go_through_the_cri_sockets_that_are_there() {
        let tmp = tempfile::tempdir().expect("tmp");
        std::fs::create_dir_all(tmp.path().join("run/containerd")).expect("dir");
        let _socket = std::os::unix::net::UnixListener::bind(
            tmp.path().join("run/containerd/containerd.sock"),
        )
        .expect("socket");
        std::fs::create_dir_all(tmp.path().join("var/lib/node-attach")).expect("state");
        std::fs::write(
            tmp.path().join("var/lib/node-attach/state.json"),
            r#"{"cri_endpoint": "unix:///run/cri-dockerd.sock"}"#,
        )
        .expect("state.json");
        let fx = effects(
            tmp.path(),
            RecordingContainers {
                pods: 3,
                ..Default::default()
            },
        );
        let opts = ResetOptions::default();
        let mut ctx = Ctx {
            fx: &fx,
            opts: &opts,
            steps: Vec::new(),
            pinned: Vec::new(),
        };
        remove_containers(&mut ctx).await;
        let cri: Vec<_> = ctx
            .steps
            .iter()
            .filter(|s| s.target.contains("through the CRI"))
            .collect();
        // The recorded cri-dockerd socket is not there: only containerd's is asked.
        assert_eq!(cri.len(), 1, "{:?}", ctx.steps);
        assert!(cri[0].target.contains("/run/containerd/containerd.sock"));
        assert_eq!((cri[0].outcome, cri[0].detail.as_str()), ("done", "3 pods"));
    }

    #[tokio::test]
    async fn a_cri_that_refuses_is_a_failed_step_and_a_dry_run_asks_nothing() {
        let tmp = tempfile::tempdir().expect("tmp");
        std::fs::create_dir_all(tmp.path().join("run")).expect("dir");
        let _socket =
            std::os::unix::net::UnixListener::bind(tmp.path().join("run/cri-dockerd.sock"))
                .expect("socket");
        let fx = effects(
            tmp.path(),
            RecordingContainers {
                fail: true,
                ..Default::default()
            },
        );
        for (dry_run, outcome) in [(false, "failed"), (true, "would-do")] {
            let opts = ResetOptions {
                dry_run,
                ..ResetOptions::default()
            };
            let mut ctx = Ctx {
                fx: &fx,
                opts: &opts,
                steps: Vec::new(),
                pinned: Vec::new(),
            };
            remove_containers(&mut ctx).await;
            assert_eq!(ctx.steps[0].outcome, outcome, "{:?}", ctx.steps);
        }
    }
}
