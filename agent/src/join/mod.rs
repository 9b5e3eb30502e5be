//! The join, phase by phase: identity → preflight → discover → cluster → (artifacts, plan) →
//! host → (install) → runtime → kubelet → bootstrap → start → confirm → done. The settings come in whole
//! ([`crate::sources::gather`]); everything a phase writes is rendered and validated before
//! the journal records its first change.
//!
//! Every change goes through one [`Applier`], so `--dry-run` prints exactly the steps a real run
//! takes, the journal records each change before it is made, and a rerun after an interruption
//! finishes the job without repeating what was done.

pub mod artifacts;
pub mod bootstrap;
pub mod cluster;
pub mod confirm;
pub mod csr;
pub mod host;
pub mod identity;
pub mod kubelet;
pub mod lifecycle;
pub mod preflight;
pub mod prepare;
pub mod runtime;

use crate::apply::journal::{self, Journal, Record};
use crate::apply::records::{self, CallbackRecord, NodeState, CALLBACK_FILE, STATE_FILE};
use crate::apply::{Applier, ApplyError, Step};
use crate::client::kube::Kube;
use crate::effects::Effects;
use crate::error::{Code, Failure};
use crate::model::validate::{Labels, Taint};
use crate::report::{Reporter, Status};
use crate::sources::settings::{Settings, TlsBootstrapMode};
use crate::trust::discovery::{self, Discovered, DiscoveryError, DiscoveryRequest};
use cluster::ClusterFacts;
use identity::Identity;
use serde::Serialize;
use std::path::Path;

/// Test hook: abort the process (as kill -9 would) right after this phase is journaled.
pub const CRASH_HOOK: &str = "NODE_ATTACH_TEST_CRASH_AFTER";

/// What `status` and the final report show.
#[derive(Clone, Debug, Serialize)]
pub struct JoinSummary {
    /// Node name.
    pub node_name: String,
    /// API server URL.
    pub api_server: String,
    /// CA pin that matched.
    pub ca_pin: Option<String>,
    /// Runtime in use.
    pub runtime: String,
    /// The kubelet's CRI endpoint.
    pub cri_endpoint: Option<String>,
    /// Labels the kubelet registers with.
    pub labels: Labels,
    /// Labels the kubelet may not set itself: to be applied by the control plane.
    pub pending_labels: Labels,
    /// Taints registered with.
    pub taints: Vec<Taint>,
    /// providerID.
    pub provider_id: Option<String>,
    /// Whether the Node was seen in the API, and Ready.
    pub registered: bool,
    /// Ready when last checked.
    pub ready: bool,
    /// Client certificate expiry (Unix seconds).
    pub certificate_expiry: Option<i64>,
    /// The CSR this run's client certificate was issued for.
    pub csr: Option<String>,
    /// Steps that changed something.
    pub changed: usize,
    /// Dry run.
    pub dry_run: bool,
    /// Every step.
    pub steps: Vec<Step>,
}

/// What the phases after discovery share.
pub struct Context<'a> {
    /// The merged, validated settings.
    pub settings: &'a Settings,
    /// The host's effects.
    pub effects: &'a Effects,
    /// Who this node is.
    pub identity: Identity,
    /// The trusted API server.
    pub found: Discovered,
    /// An API client as the bootstrap token.
    pub kube: Kube,
    /// What the cluster says.
    pub cluster: ClusterFacts,
}

/// Everything the phases will write, rendered before the first change.
struct Plan {
    runtime: runtime::RuntimePlan,
    kubelet: kubelet::KubeletFiles,
    own_labels: Labels,
    pending_labels: Labels,
    /// What the kubelet registers the Node with: the settings' and, while labels wait for the
    /// values service, the startup taint.
    taints: Vec<Taint>,
}

fn fs_failure(e: impl std::fmt::Display) -> Failure {
    Failure::new(Code::Filesystem, e.to_string())
}

/// How an applier error reads in a phase whose own failures have `code`.
pub(crate) fn apply_failure(code: Code) -> impl Fn(ApplyError) -> Failure {
    move |e| match e {
        ApplyError::Fs(_) | ApplyError::Journal(_) => fs_failure(e),
        ApplyError::Effect(_) => Failure::new(code, e.to_string()),
    }
}

fn crash_hook(phase: &str) {
    if std::env::var(CRASH_HOOK).is_ok_and(|p| p == phase) {
        eprintln!("node-attach: {CRASH_HOOK}={phase}: aborting as if killed");
        std::process::abort();
    }
}

/// Runs the join with these settings on these effects.
pub async fn run(
    settings: &Settings,
    effects: &Effects,
    reporter: &mut Reporter,
) -> Result<JoinSummary, Failure> {
    // Held to the end: a second join or a reset on this root fails fast with `busy`.
    let _lock = match settings.dry_run {
        true => None,
        false => Some(crate::apply::lock::lock(&effects.root)?),
    };
    let records = Journal::load(&effects.root)
        .map_err(fs_failure)?
        .unwrap_or_default();
    let mut ctx = prepare(settings, effects, &records, reporter).await?;
    let staged = artifacts_phase(reporter, &mut ctx, &records).await?;
    let plan = plan(&ctx, &records, reporter)?;
    let mut applier = match settings.dry_run {
        true => Applier::plan(effects),
        false => Applier::apply(effects, Journal::open(&effects.root).map_err(fs_failure)?),
    };
    applied(reporter, &mut applier, "host", Code::Preflight, |a| {
        host::apply(a, settings)
    })?;
    if !staged.is_empty() {
        applied(reporter, &mut applier, "install", Code::Runtime, |a| {
            artifacts::install(a, &staged)
        })?;
    }
    let inputs = runtime::PhaseInputs {
        settings,
        server: &ctx.cluster.version,
        cluster_pause: plan.runtime.pause_image.clone(),
        staged: &staged,
        // Waited for by the start phase, just before the kubelet starts.
        wait_in_phase: false,
    };
    let runtime = runtime_phase(reporter, &mut applier, &inputs, &plan.runtime.notices)?;
    let changes = applied(
        reporter,
        &mut applier,
        "kubelet",
        Code::KubeletConfig,
        |a| kubelet::apply(a, &plan.kubelet),
    )?;
    let made = bootstrap_phase(reporter, &mut applier, &ctx).await?;
    start_phase(reporter, &mut applier, changes, &runtime)?;
    let endpoint = plan
        .runtime
        .endpoint
        .as_deref()
        .unwrap_or(runtime::DOCKERSHIM_ENDPOINT);
    let seen = confirm_phase(reporter, &mut applier, &ctx, endpoint).await?;
    record(applier, &ctx, plan, seen, made)
}

/// Everything before the first change: identity, local checks, trust, what the cluster says.
async fn prepare<'a>(
    settings: &'a Settings,
    effects: &'a Effects,
    records: &[Record],
    reporter: &mut Reporter,
) -> Result<Context<'a>, Failure> {
    let joined_before = prepare::joined(records);
    let phase = reporter.begin("identity");
    let host = identity::hostname();
    let identity = identity::resolve(settings, &settings.endpoints[0], &host)?;
    phase.end(
        Status::Done,
        &format!("node {} ({})", identity.node_name, identity.node_ip),
    );
    local_checks(settings, effects, joined_before, reporter)?;
    let phase = reporter.begin("discover");
    let found = discover(settings).await?;
    let pin = found
        .ca_pin
        .as_ref()
        .map_or("CA not pinned".into(), ToString::to_string);
    phase.end(
        Status::Done,
        &format!("{} trusted ({pin})", found.api_server),
    );
    let phase = reporter.begin("cluster");
    let token = Some(settings.bootstrap_token()?.expose_full());
    let kube = match &found.http {
        // Discovery's client: its verified connection carries the join's next requests.
        Some(http) => Kube::with_http(&found.api_server, http.clone(), token),
        None => Kube::with_token(&found.api_server, &found.ca_ders, token, settings.limits),
    }
    .map_err(|e| Failure::new(Code::Internal, e.to_string()))?;
    let cluster = cluster::check(
        settings,
        effects,
        &kube,
        found.server_clock,
        &identity,
        joined_before,
    )
    .await?;
    let detail = format!(
        "{} (from {}; kubelet config from {})",
        cluster.version, cluster.version_source, cluster.config.source
    );
    phase.end(Status::Done, &detail);
    Ok(Context {
        settings,
        effects,
        identity,
        found,
        kube,
        cluster,
    })
}

/// The preflight phase: checks that need no cluster.
fn local_checks(
    settings: &Settings,
    effects: &Effects,
    joined_before: bool,
    reporter: &mut Reporter,
) -> Result<(), Failure> {
    let mut phase = reporter.begin("preflight");
    let swap_allowed = settings.disable_swap || settings.kubelet.fail_swap_on == Some(false);
    let checks = preflight::local(effects, swap_allowed, joined_before);
    let checks = artifacts::waive_checks(checks, settings);
    let warnings = preflight::evaluate(&checks, &settings.ignore_preflight_errors)?;
    let kubelet_bootstraps = settings.tls_bootstrap == TlsBootstrapMode::Kubelet;
    let (files, dirs) = preflight::managed_paths(settings.runtime, kubelet_bootstraps);
    preflight::managed_paths_usable(&effects.root, &files, &dirs)?;
    for w in &warnings {
        phase.notice(&format!("preflight (ignored): {w}"));
    }
    phase.end(
        Status::Done,
        &format!("{} checks, {} ignored", checks.len(), warnings.len()),
    );
    Ok(())
}

/// Discovery against each endpoint in turn; an unreachable endpoint moves on to the next.
pub async fn discover(settings: &Settings) -> Result<Discovered, Failure> {
    let mut last: Option<DiscoveryError> = None;
    for endpoint in &settings.endpoints {
        let request = DiscoveryRequest {
            endpoint: endpoint.clone(),
            token: settings.bootstrap_token()?.clone(),
            pins: settings.pins.clone(),
            unsafe_skip_ca_verification: settings.unsafe_skip_ca_verification,
            timeout: settings.timeouts.discovery,
            limits: settings.limits,
        };
        match discovery::discover(&request).await {
            Ok(found) => return Ok(found),
            Err(e @ DiscoveryError::Unreachable { .. }) => last = Some(e),
            Err(e) => return Err(Failure::from_error(&e)),
        }
    }
    Err(match last {
        Some(e) => Failure::from_error(&e),
        None => Failure::new(Code::Usage, "no API server endpoint"),
    })
}

/// The `artifacts` phase (only with a mirror or image archives): stages what is missing,
/// verified, before the first change, and records the kubelet version it will install.
async fn artifacts_phase(
    reporter: &mut Reporter,
    ctx: &mut Context<'_>,
    records: &[Record],
) -> Result<artifacts::Staged, Failure> {
    let settings = ctx.settings;
    if settings.artifacts.mirror.is_none() && settings.artifacts.image_archives.is_empty() {
        return Ok(artifacts::Staged::default());
    }
    let phase = reporter.begin("artifacts");
    let staged = artifacts::stage(
        settings,
        ctx.effects,
        Some(&ctx.cluster.version),
        artifacts::journal_has_images(records),
    )
    .await?;
    if let Some(v) = &staged.kubelet_version {
        ctx.cluster.kubelet_version = Some(v.clone());
    }
    phase.end(Status::Done, &staged.summary);
    Ok(staged)
}

/// The runtime phase: packages when missing, the configuration merged into the file as it is
/// then (the plan's rendering, redone in case a package shipped one), the runtime (re)started,
/// and the staged images imported.
fn runtime_phase(
    reporter: &mut Reporter,
    applier: &mut Applier<'_>,
    inputs: &runtime::PhaseInputs<'_>,
    planned: &[String],
) -> Result<runtime::RuntimePlan, Failure> {
    let mut phase = reporter.begin("runtime");
    applier.enter("runtime").map_err(fs_failure)?;
    let rt = runtime::phase(applier, inputs)?;
    // What the plan already said is not repeated.
    for notice in rt.notices.iter().filter(|n| !planned.contains(n)) {
        phase.notice(notice);
    }
    finish(applier, phase, "runtime")?;
    Ok(rt)
}

/// Renders everything the phases will write: the runtime's configuration (merged into the
/// bytes the machine had before join), the kubelet's files and flags. Nothing changes yet.
fn plan(ctx: &Context<'_>, records: &[Record], reporter: &mut Reporter) -> Result<Plan, Failure> {
    let (settings, effects, cluster) = (ctx.settings, ctx.effects, &ctx.cluster);
    let root = &effects.root;
    let original =
        |path: &str| journal::original_in(root, records, Path::new(path)).map_err(fs_failure);
    let originals = runtime::Originals {
        containerd: original(runtime::CONTAINERD_CONFIG)?,
        docker: original(runtime::DOCKER_CONFIG)?,
    };
    let pause = crate::model::compat::pause_image(
        cluster.config.image_repository.as_deref(),
        &cluster.config.version,
    );
    let runtime = runtime::plan(
        settings.runtime,
        &settings.runtime_values,
        &cluster.version,
        &pause,
        &runtime::HostRuntime {
            installed: effects
                .host
                .then(|| runtime::containerd_version(effects.probe.as_ref())),
            package_manager: effects.packages.as_ref().map(|pm| pm.name()),
            cni_bin_dir: None,
        },
        &originals,
    );
    for notice in &runtime.notices {
        reporter.notice(notice);
    }
    let (own_labels, pending_labels) = labels_for(settings);
    let taints = taints_for(settings, &pending_labels);
    let host = kubelet_host_facts(effects, runtime.endpoint.clone());
    let config = kubelet::render_config(&cluster.config, settings, &ctx.identity, &host)
        .map_err(|e| Failure::new(Code::KubeletConfig, e.to_string()))?;
    let instance = kubelet::instance_config(&cluster.config, runtime.endpoint.as_deref());
    let flags = kubelet::render_flags(&kubelet::FlagInputs {
        labels: &own_labels,
        taints: &taints,
        identity: &ctx.identity,
        // Kept on the node instead, kubeadm writes no flag (its kubelet is 1.29 or newer).
        endpoint: runtime.endpoint.as_deref().filter(|_| instance.is_none()),
        pause_image: &runtime.pause_image,
        kubelet: cluster.kubelet(),
    });
    let reset_unit = settings.agent_path.as_deref().and_then(kubelet::reset_unit);
    let kubelet = kubelet::KubeletFiles {
        config,
        flags,
        ca: ctx.found.ca_pem.clone(),
        instance,
        reset_unit,
    };
    Ok(Plan {
        runtime,
        kubelet,
        own_labels,
        pending_labels,
        taints,
    })
}

/// The settings' taints, and the startup taint when restricted labels wait for a values
/// service that will apply them (and remove it). Without one, nobody would remove it.
fn taints_for(settings: &Settings, pending_labels: &Labels) -> Vec<Taint> {
    let mut taints = settings.taints.clone();
    if !pending_labels.is_empty() && settings.callback_url.is_some() {
        taints.push(Taint::startup());
    }
    taints
}

/// The labels the kubelet may set (with the node pool's and, for autoscaled pools, the
/// instance's), and those left for the control plane.
fn labels_for(settings: &Settings) -> (Labels, Labels) {
    let mut labels = settings.labels.clone();
    if let Some(pool) = &settings.node_pool_id {
        let _ = labels.insert("node pool", "alibabacloud.com/nodepool-id", pool);
    }
    if let (true, Some(id)) = (settings.ess, &settings.instance_id) {
        // What the alicloud autoscaler and ACK's node pools match nodes by.
        let _ = labels.insert("instance", "alibabacloud.com/instance-id", id);
    }
    labels.split_by_class()
}

/// What the kubelet configuration needs to know of the host: systemd-resolved, whose stub
/// resolver pods cannot use, and the runtime's CRI endpoint.
fn kubelet_host_facts(effects: &Effects, cri_endpoint: Option<String>) -> kubelet::HostFacts {
    let stub = effects
        .root
        .read_following(Path::new("/etc/resolv.conf"))
        .ok()
        .flatten()
        .is_some_and(|b| {
            String::from_utf8_lossy(&b)
                .lines()
                .any(|l| l.split_whitespace().eq(["nameserver", "127.0.0.53"]))
        });
    let active = effects.host && effects.systemd.is_active("systemd-resolved.service");
    kubelet::HostFacts {
        systemd_resolved: stub || active,
        cri_endpoint,
    }
}

/// A phase of changes: entered in the journal, run, finished (with the crash hook after it).
fn applied<T>(
    reporter: &mut Reporter,
    applier: &mut Applier<'_>,
    name: &'static str,
    code: Code,
    run: impl FnOnce(&mut Applier<'_>) -> Result<T, ApplyError>,
) -> Result<T, Failure> {
    let phase = reporter.begin(name);
    applier.enter(name).map_err(fs_failure)?;
    let out = run(applier).map_err(apply_failure(code))?;
    finish(applier, phase, name)?;
    Ok(out)
}

fn finish(
    applier: &mut Applier<'_>,
    phase: crate::report::Phase<'_>,
    name: &str,
) -> Result<(), Failure> {
    applier.finish("done").map_err(fs_failure)?;
    let changed = applier.changes_in_phase();
    let status = if changed == 0 {
        Status::Unchanged
    } else {
        Status::Done
    };
    let verb = if applier.dry_run() {
        "would change"
    } else {
        "changed"
    };
    phase.end(status, &format!("{changed} {verb}"));
    if !applier.dry_run() {
        crash_hook(name);
    }
    Ok(())
}

async fn bootstrap_phase(
    reporter: &mut Reporter,
    applier: &mut Applier<'_>,
    ctx: &Context<'_>,
) -> Result<bootstrap::Bootstrapped, Failure> {
    let phase = reporter.begin("bootstrap");
    applier.enter("bootstrap").map_err(fs_failure)?;
    let made = bootstrap::phase(applier, ctx).await?;
    finish(applier, phase, "bootstrap")?;
    Ok(made)
}

/// The start phase: daemon-reload when a unit changed (in this run, or in an earlier one that
/// ended before its reload: [`units_maybe_unloaded`]), the kubelet enabled (one reload in
/// all: see [`Applier::enable`]), the runtime's API waited for (its restart in the runtime
/// phase overlaps with what came since), and the kubelet (re)started when anything it reads
/// changed. The runtime answering before the kubelet starts matters for the first status: the
/// 1.20 kubelet checks the runtime at once and then every 5 s (`updateRuntimeUp` in
/// pkg/kubelet/kubelet.go `Run`, v1.20.2).
fn start_phase(
    reporter: &mut Reporter,
    applier: &mut Applier<'_>,
    changes: kubelet::KubeletChanges,
    runtime: &runtime::RuntimePlan,
) -> Result<(), Failure> {
    let phase = reporter.begin("start");
    applier.enter("start").map_err(fs_failure)?;
    let failed = apply_failure(Code::Start);
    if changes.units || units_maybe_unloaded(applier) {
        applier.daemon_reload().map_err(&failed)?;
    }
    applier.enable("kubelet.service").map_err(&failed)?;
    runtime::wait_ready(applier, runtime).map_err(apply_failure(Code::Runtime))?;
    applier
        .start("kubelet.service", changes.config)
        .map_err(&failed)?;
    finish(applier, phase, "start")
}

/// Whether the journal records a unit file written after the last point where a run is known
/// to have had systemd load its units (a start phase done, or bake mode's end): one an earlier
/// run wrote and ended before its reload (a CSR never approved, a Ctrl-C), which this run
/// leaves unchanged. Started so, a kubelet a package installed runs without kubeadm's drop-in,
/// that is without its flags.
fn units_maybe_unloaded(applier: &mut Applier<'_>) -> bool {
    if !applier.effects().host {
        return false;
    }
    applier
        .journal()
        .is_some_and(|j| unit_files_since_reload(j.records()))
}

/// Whether these records hold a unit file written after the last reload point in them.
fn unit_files_since_reload(records: &[Record]) -> bool {
    let reloaded = |r: &Record| {
        r.event == journal::Event::Phase
            && r.status.as_deref() == Some("done")
            && matches!(r.phase.as_deref(), Some("start" | "prepared"))
    };
    let since = records.iter().rposition(reloaded).map_or(0, |i| i + 1);
    records[since..].iter().any(|r| {
        matches!(&r.change, Some(journal::Change::File { path, .. })
            if path.starts_with("/etc/systemd/"))
    })
}

async fn confirm_phase(
    reporter: &mut Reporter,
    applier: &mut Applier<'_>,
    ctx: &Context<'_>,
    endpoint: &str,
) -> Result<confirm::Registration, Failure> {
    let phase = reporter.begin("confirm");
    applier.enter("confirm").map_err(fs_failure)?;
    let seen = confirm::phase(applier, ctx, endpoint).await?;
    let node = &ctx.identity.node_name;
    let detail = match (seen.registered, seen.ready) {
        (true, true) => format!("Node {node} registered and Ready"),
        (true, false) => {
            format!("Node {node} registered (not Ready yet: a CNI plugin may still be starting)")
        }
        _ if ctx.settings.dry_run => "dry run".to_owned(),
        _ => "not waited for (--node-wait-timeout 0)".to_owned(),
    };
    phase.end(
        if ctx.settings.dry_run {
            Status::Skipped
        } else {
            Status::Done
        },
        &detail,
    );
    Ok(seen)
}

/// The summary, and (for a real run) `state.json` and `callback.json` for status and reset.
fn record(
    mut applier: Applier<'_>,
    ctx: &Context<'_>,
    plan: Plan,
    seen: confirm::Registration,
    made: bootstrap::Bootstrapped,
) -> Result<JoinSummary, Failure> {
    let settings = ctx.settings;
    let mut summary = JoinSummary {
        node_name: ctx.identity.node_name.clone(),
        api_server: ctx.found.api_server.clone(),
        ca_pin: ctx.found.ca_pin.as_ref().map(ToString::to_string),
        runtime: format!("{:?}", settings.runtime).to_lowercase(),
        cri_endpoint: plan.runtime.endpoint.clone(),
        labels: plan.own_labels,
        pending_labels: plan.pending_labels,
        taints: plan.taints,
        provider_id: ctx.identity.provider_id.clone(),
        registered: seen.registered,
        ready: seen.ready,
        certificate_expiry: made.expiry,
        csr: made.csr,
        changed: 0,
        dry_run: settings.dry_run,
        steps: Vec::new(),
    };
    if !settings.dry_run {
        write_records(&mut applier, settings, &summary).map_err(fs_failure)?;
    }
    summary.changed = applier
        .steps
        .iter()
        .filter(|s| s.outcome.changes() && s.target != STATE_FILE && s.target != CALLBACK_FILE)
        .count();
    summary.steps = applier.steps;
    Ok(summary)
}

fn write_records(
    applier: &mut Applier<'_>,
    settings: &Settings,
    s: &JoinSummary,
) -> Result<(), ApplyError> {
    applier.enter("done")?;
    let state = NodeState {
        node_name: s.node_name.clone(),
        api_server: s.api_server.clone(),
        ca_pin: s.ca_pin.clone(),
        runtime: s.runtime.clone(),
        cri_endpoint: s.cri_endpoint.clone(),
        labels: s.labels.0.clone(),
        pending_labels: s.pending_labels.0.clone(),
        taints: s.taints.iter().map(ToString::to_string).collect(),
        provider_id: s.provider_id.clone(),
    };
    applier.file(
        Path::new(STATE_FILE),
        0o600,
        &records::to_bytes(&state),
        false,
    )?;
    if let Some(url) = &settings.callback_url {
        let cb = CallbackRecord {
            url: url.as_str().to_owned(),
            ca_file: settings.values_ca_file.clone(),
        };
        applier.file(
            Path::new(CALLBACK_FILE),
            0o600,
            &records::to_bytes(&cb),
            true,
        )?;
    }
    applier.finish("done")?;
    Ok(())
}

/// [`run`], with the first failure of any retried call (the API server unreachable, a 503…)
/// told to the callback at once, with its class and retry deadline: the control plane then
/// knows within seconds that this node is stuck and why, rather than when the deadline passes.
pub async fn run_reporting_stalls(
    settings: &Settings,
    effects: &Effects,
    reporter: &mut Reporter,
) -> Result<JoinSummary, Failure> {
    let (sink, mut stalls) = tokio::sync::mpsc::unbounded_channel();
    let callback = settings.callback_url.clone().filter(|_| !settings.dry_run);
    let ca = settings.values_ca_file.clone();
    let limits = settings.limits;
    let teller = tokio::spawn(async move {
        // Only the first: one report per join, never a storm.
        let Some(stall) = stalls.recv().await else {
            return;
        };
        let Some(url) = callback else { return };
        let mut body = serde_json::json!({"status": "retrying"});
        if let (Ok(serde_json::Value::Object(fields)), Some(map)) =
            (serde_json::to_value(&stall), body.as_object_mut())
        {
            map.extend(fields);
        }
        crate::client::callback::post_callback(&url, ca.as_deref(), None, limits, &body).await;
        while stalls.recv().await.is_some() {}
    });
    let outcome =
        crate::client::http::reporting_stalls(sink, run(settings, effects, reporter)).await;
    let _ = teller.await;
    outcome
}

/// Tells whoever waits on this node how join ended: the callback the values named, then the
/// scaling group's lifecycle action (CONTINUE when joined, ABANDON otherwise). A dry run tells
/// no one.
pub async fn announce(settings: &Settings, outcome: &Result<JoinSummary, Failure>) {
    if settings.dry_run {
        return;
    }
    report_callback(settings, outcome).await;
    lifecycle::complete(settings, outcome.is_ok()).await;
}

/// Reports join's outcome to the callback the values named.
pub async fn report_callback(settings: &Settings, outcome: &Result<JoinSummary, Failure>) {
    let Some(url) = &settings.callback_url else {
        return;
    };
    let body = match outcome {
        Ok(s) => {
            serde_json::json!({"status": "success", "node": s.node_name, "provider_id": s.provider_id, "csr": s.csr, "changed": s.changed})
        }
        Err(f) => {
            serde_json::json!({"status": "failure", "code": f.code, "exit_code": f.code.exit_code(), "cause": f.cause, "message": f.message})
        }
    };
    let ca = settings.values_ca_file.as_deref();
    crate::client::callback::post_callback(url, ca, None, settings.limits, &body).await;
}

/// The text a person reads at the end.
pub fn summary_text(s: &JoinSummary) -> String {
    use crate::apply::Outcome;
    let mut t = String::new();
    if s.dry_run {
        t.push_str("Plan (dry run; nothing was changed):\n");
        for step in s.steps.iter().filter(|st| st.outcome != Outcome::Unchanged) {
            t.push_str(&format!(
                "  [{}] {} {} ({:?})\n",
                step.phase, step.kind, step.target, step.outcome
            ));
            for line in step.detail.lines().skip(1) {
                t.push_str(&format!("      {line}\n"));
            }
        }
        return t;
    }
    if s.changed == 0 {
        t.push_str(&format!(
            "node {} is already joined to {}; nothing changed\n",
            s.node_name, s.api_server
        ));
    } else {
        t.push_str(&format!(
            "node {} joined {} ({} changes)\n",
            s.node_name, s.api_server, s.changed
        ));
    }
    if !s.pending_labels.is_empty() {
        t.push_str(&format!(
            "labels for the control plane to apply (the kubelet may not set them): {}\n",
            s.pending_labels.to_flag_value()
        ));
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::journal::Journal;
    use crate::effects::{fs::Root, Cri, EffectError, RecordingSystemd, Systemd};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    /// A runtime that answers at once, noting when it was asked in the systemd call list.
    struct NotedCri(Arc<Mutex<Vec<String>>>);

    impl Cri for NotedCri {
        fn wait_ready(&self, socket: &Path, _: Duration) -> Result<(), EffectError> {
            let mut calls = self.0.lock().unwrap_or_else(|p| p.into_inner());
            calls.push(format!("wait for {}", socket.display()));
            Ok(())
        }
        fn wait_docker(&self, socket: &Path, _: Duration) -> Result<(), EffectError> {
            self.wait_ready(socket, Duration::ZERO)
        }
    }

    fn containerd_plan() -> runtime::RuntimePlan {
        runtime::plan(
            crate::sources::values::RuntimeKind::Containerd,
            &Default::default(),
            &"v1.20.2".parse().expect("version"),
            "k8s.gcr.io/pause:3.2",
            &runtime::HostRuntime::default(),
            &runtime::Originals::default(),
        )
    }

    #[test]
    fn a_unit_an_earlier_run_wrote_is_loaded_before_the_kubelet_starts() {
        // The first run wrote kubeadm's drop-in and ended before its reload (its CSR was never
        // approved, or it was killed); the kubelet a package enabled is not running. The rerun
        // writes nothing new, and must still have systemd load the drop-in before it starts
        // the kubelet, which would otherwise run without its flags.
        let tmp = tempfile::tempdir().expect("tmp");
        let systemd = RecordingSystemd::default();
        systemd.enable("kubelet.service").expect("the package's");
        let calls = systemd.calls.clone();
        let fx = Effects {
            systemd: Box::new(systemd),
            cri: Box::new(NotedCri(calls.clone())),
            host: true,
            ..Effects::doubles(Root::new(tmp.path()))
        };
        let dropin = Path::new(kubelet::DROPIN_PATH);
        let mut first = Applier::apply(&fx, Journal::open(&fx.root).expect("journal"));
        first
            .file(dropin, 0o644, b"[Service]\n", false)
            .expect("drop-in");
        drop(first);
        calls.lock().expect("calls").clear();
        let mut applier = Applier::apply(&fx, Journal::open(&fx.root).expect("journal"));
        let mut reporter = Reporter::stdout(crate::report::OutputFormat::Json);
        let unchanged = kubelet::KubeletChanges::default();
        start_phase(&mut reporter, &mut applier, unchanged, &containerd_plan()).expect("start");
        assert_eq!(
            *calls.lock().expect("calls"),
            [
                "daemon-reload",
                "wait for /run/containerd/containerd.sock",
                "start kubelet.service",
            ]
        );
        drop(applier);
        // Once a start phase has finished after it, the drop-in is loaded: no reload again.
        calls.lock().expect("calls").clear();
        let mut again = Applier::apply(&fx, Journal::open(&fx.root).expect("journal"));
        start_phase(&mut reporter, &mut again, unchanged, &containerd_plan()).expect("again");
        assert_eq!(
            *calls.lock().expect("calls"),
            ["wait for /run/containerd/containerd.sock"]
        );
    }

    #[test]
    fn units_bake_mode_wrote_and_reloaded_are_not_reloaded_at_boot() {
        use crate::apply::journal::{Change, Event};
        let record = |event, change, phase: Option<&str>| Record {
            seq: 1,
            event,
            change,
            phase: phase.map(str::to_owned),
            status: phase.map(|_| "done".to_owned()),
            at: 0,
        };
        let unit = Change::File {
            path: kubelet::DROPIN_PATH.into(),
            prior: None,
        };
        let written = record(Event::Begin, Some(unit), None);
        let prepared = record(Event::Phase, None, Some("prepared"));
        assert!(unit_files_since_reload(std::slice::from_ref(&written)));
        assert!(!unit_files_since_reload(&[
            written.clone(),
            prepared.clone()
        ]));
        assert!(unit_files_since_reload(&[prepared, written]));
    }

    #[test]
    fn the_kubelet_starts_after_one_reload_and_the_runtime_answering() {
        let tmp = tempfile::tempdir().expect("tmp");
        let systemd = RecordingSystemd::default();
        let calls = systemd.calls.clone();
        let fx = Effects {
            systemd: Box::new(systemd),
            cri: Box::new(NotedCri(calls.clone())),
            host: true,
            ..Effects::doubles(Root::new(tmp.path()))
        };
        let runtime = containerd_plan();
        let mut applier = Applier::apply(&fx, Journal::open(&fx.root).expect("journal"));
        let mut reporter = Reporter::stdout(crate::report::OutputFormat::Json);
        let changes = kubelet::KubeletChanges {
            units: true,
            config: true,
        };
        start_phase(&mut reporter, &mut applier, changes, &runtime).expect("start");
        assert_eq!(
            *calls.lock().expect("calls"),
            [
                "daemon-reload",
                "enable --no-reload kubelet.service",
                "wait for /run/containerd/containerd.sock",
                "start kubelet.service",
            ]
        );
    }
}
