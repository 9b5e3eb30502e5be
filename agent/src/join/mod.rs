//! The join, phase by phase:
//! values → settings → identity → preflight → discover → cluster → host → runtime → kubelet →
//! bootstrap → start → confirm.
//!
//! Every change goes through one [`Applier`], so `--dry-run` prints exactly the steps a real run
//! takes, the journal records each change before it is made, and a re-run after an interruption
//! finishes the job without repeating what was done.

pub mod artifacts;
pub mod bootstrap;
pub mod identity;
pub mod kubelet;
pub mod preflight;
pub mod prepare;
pub mod runtime;

use crate::apply::journal::{self, Journal};
use crate::apply::{Applier, ApplyError, Outcome, Step};
use crate::cli::join::JoinArgs;
use crate::client::http::Http;
use crate::client::kube::Kube;
use crate::effects::fs::Root;
use crate::effects::Effects;
use crate::error::{Code, Failure};
use crate::model::kubeconfig::{ClusterInfo, Kubeconfig};
use crate::model::version::KubeVersion;
use crate::report::{Reporter, Status};
use crate::sources::settings::{Settings, TlsBootstrapMode};
use crate::sources::values::{self, ClusterValues, ValuesSource};
use crate::trust::discovery::{self, Discovered, DiscoveryError, DiscoveryRequest};
use identity::Identity;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

pub use crate::apply::records::{CALLBACK_FILE, STATE_FILE};
/// Kernel modules the kubelet and CNI plugins need.
pub const MODULES_FILE: &str = "/etc/modules-load.d/node-attach.conf";
/// Sysctls the kubelet and CNI plugins need.
pub const SYSCTL_FILE: &str = "/etc/sysctl.d/99-node-attach.conf";
const SYSCTLS: [(&str, &str); 3] = [
    ("net.bridge.bridge-nf-call-iptables", "1"),
    ("net.bridge.bridge-nf-call-ip6tables", "1"),
    ("net.ipv4.ip_forward", "1"),
];
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
    pub labels: crate::model::validate::Labels,
    /// Labels the kubelet may not set itself: to be applied by the control plane.
    pub pending_labels: crate::model::validate::Labels,
    /// Taints registered with.
    pub taints: Vec<crate::model::validate::Taint>,
    /// providerID.
    pub provider_id: Option<String>,
    /// Whether the Node was seen in the API, and Ready.
    pub registered: bool,
    /// Ready when last checked.
    pub ready: bool,
    /// Client certificate expiry (Unix seconds).
    pub certificate_expiry: Option<i64>,
    /// Steps that changed something.
    pub changed: usize,
    /// Dry run.
    pub dry_run: bool,
    /// Every step.
    pub steps: Vec<Step>,
}

struct Phases<'r> {
    reporter: &'r mut Reporter,
    current: Option<(String, Instant)>,
}

impl Phases<'_> {
    fn begin(&mut self, name: &str) {
        self.reporter.phase(name, Status::Started, None, "");
        self.current = Some((name.to_owned(), Instant::now()));
    }
    fn end(&mut self, status: Status, detail: &str) {
        if let Some((name, started)) = self.current.take() {
            self.reporter
                .phase(&name, status, Some(started.elapsed()), detail);
        }
    }
    fn fail(&mut self) {
        self.end(Status::Failed, "");
    }
}

fn fs_failure(e: impl std::fmt::Display) -> Failure {
    Failure::new(Code::Filesystem, e.to_string())
}

use crate::apply::lock::lock;

fn apply_failure(code: Code) -> impl Fn(ApplyError) -> Failure {
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

/// Runs `node-attach join`.
pub async fn run(args: JoinArgs, reporter: &mut Reporter) -> Result<(), Failure> {
    if args.phase == crate::cli::join::Phase::Prepare {
        return prepare::run(args, reporter).await;
    }
    let token = args.token.resolve()?;
    let openapi = args.openapi.resolve()?;
    let in_argv = std::env::args().any(|a| a == "--token" || a.starts_with("--token="));
    if args.token.token.is_some() && in_argv {
        tracing::warn!("the bootstrap token was given on the command line, where other users can read it in the process list; prefer NODE_ATTACH_TOKEN or --token-file");
    }
    let mut args = args;
    apply_metadata(&mut args, openapi.is_some(), reporter).await?;
    let values = match openapi {
        Some(openapi) => Some(fetch_values(&args, openapi, reporter).await?),
        None => None,
    };
    let settings = Settings::resolve(&args, token, values.as_ref())?;
    for notice in &settings.notices {
        reporter.notice(notice);
    }
    let effects = Effects::real(Root::new(&settings.root));
    let outcome = join(&settings, &effects, reporter).await;
    if !settings.dry_run {
        if let Some(url) = &settings.callback_url {
            report_callback(url, &settings, &outcome).await;
        }
    }
    let summary = outcome?;
    let text = summary_text(&summary);
    reporter.result(&summary, &text);
    Ok(())
}

/// Fills instance id, region, node IP and providerID from the cloud's metadata service when the
/// flags left them out and join needs them (or a provider was named explicitly).
async fn apply_metadata(
    args: &mut JoinArgs,
    openapi: bool,
    reporter: &mut Reporter,
) -> Result<(), Failure> {
    use crate::sources::metadata::{self, MetadataKind};
    let template_needs = openapi
        && ((args.values_url.contains("{region}") && args.region.is_none())
            || (args.values_url.contains("{instance_id}") && args.instance_id.is_none()));
    let mode_needs = args.node_name.is_none()
        && args.node_name_mode.as_deref().is_some_and(|m| {
            let m = m.to_ascii_lowercase();
            (m.contains("instance") && (args.instance_id.is_none() || args.region.is_none()))
                || (m.contains("ip") && args.region.is_none())
        });
    let ess_needs = args.ess == Some(true)
        && args.provider_id.is_none()
        && (args.instance_id.is_none() || args.region.is_none());
    let wanted = match args.metadata {
        MetadataKind::None => false,
        MetadataKind::Auto => template_needs || mode_needs || ess_needs,
        MetadataKind::Aliyun | MetadataKind::Aws => true,
    };
    if !wanted {
        return Ok(());
    }
    let started = Instant::now();
    reporter.phase("metadata", Status::Started, None, "");
    let found = metadata::fetch(args.metadata, args.metadata_endpoint.as_deref())
        .await
        .map_err(|e| {
            reporter.phase("metadata", Status::Failed, Some(started.elapsed()), "");
            Failure::new(
                Code::Identity,
                format!("{e}; pass --instance-id and --region (or --metadata none)"),
            )
        })?;
    let Some(m) = found else {
        reporter.phase(
            "metadata",
            Status::Skipped,
            Some(started.elapsed()),
            "no cloud metadata service answered",
        );
        return Ok(());
    };
    args.instance_id
        .get_or_insert_with(|| m.instance_id.clone());
    args.region.get_or_insert_with(|| m.region.clone());
    if args.node_ip.is_none() {
        args.node_ip = m.private_ipv4.clone();
    }
    args.provider_id.get_or_insert_with(|| m.provider_id());
    reporter.phase(
        "metadata",
        Status::Done,
        Some(started.elapsed()),
        &format!(
            "{} instance {} in {} (providerID {})",
            m.provider,
            m.instance_id,
            m.region,
            m.provider_id()
        ),
    );
    Ok(())
}

fn summary_text(s: &JoinSummary) -> String {
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

async fn fetch_values(
    args: &JoinArgs,
    token: crate::model::token::OpenApiToken,
    reporter: &mut Reporter,
) -> Result<ClusterValues, Failure> {
    let started = Instant::now();
    reporter.phase("values", Status::Started, None, "");
    let source = ValuesSource {
        template: args.values_url.clone(),
        token,
        instance_id: args.instance_id.clone(),
        region: args.region.clone(),
        allow_insecure: args.allow_insecure_values_url,
    };
    let outcome = async {
        let target = source.target().map_err(|e| Failure::from_error(&e))?;
        let tls = crate::trust::tls::system_roots(args.values_ca_file.as_deref())
            .map_err(|e| Failure::new(Code::Usage, e.to_string()))?;
        let http = Http::new(tls, args.network.limits())
            .map_err(|e| Failure::new(Code::Internal, e.to_string()))?;
        tracing::debug!(url = %target.shown, "values URL");
        values::fetch(&http, &source, args.values_timeout)
            .await
            .map_err(|e| Failure::from_error(&e))
    }
    .await;
    match outcome {
        Ok(v) => {
            reporter.phase(
                "values",
                Status::Done,
                Some(started.elapsed()),
                &format!("{:?} values from the control plane", v.format),
            );
            Ok(v)
        }
        Err(f) => {
            reporter.phase("values", Status::Failed, Some(started.elapsed()), "");
            Err(f)
        }
    }
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

/// Everything join does after the settings are known.
pub async fn join(
    settings: &Settings,
    effects: &Effects,
    reporter: &mut Reporter,
) -> Result<JoinSummary, Failure> {
    let root = &effects.root;
    let mut p = Phases {
        reporter,
        current: None,
    };
    // Held to the end: a second join or a reset on this root fails fast with `busy`.
    let _lock = if settings.dry_run {
        None
    } else {
        Some(lock(root)?)
    };
    let records = journal::Journal::load(root)
        .map_err(fs_failure)?
        .unwrap_or_default();
    let joined_before = prepare::joined(&records);

    p.begin("identity");
    let identity = identity::resolve(settings, &settings.endpoints[0], &identity::hostname())
        .inspect_err(|_| p.fail())?;
    p.end(
        Status::Done,
        &format!("node {} ({})", identity.node_name, identity.node_ip),
    );

    p.begin("preflight");
    let checks = preflight::local(
        root,
        effects.host,
        settings.disable_swap,
        settings.kubelet.fail_swap_on,
        joined_before,
    );
    let checks = artifacts::waive_checks(checks, settings);
    let warnings = preflight::evaluate(&checks, &settings.ignore_preflight_errors)
        .inspect_err(|_| p.fail())?;
    let (files, dirs) = preflight::managed_paths(
        settings.runtime,
        settings.tls_bootstrap == TlsBootstrapMode::Kubelet,
    );
    preflight::managed_paths_usable(root, &files, &dirs).inspect_err(|_| p.fail())?;
    p.end(
        Status::Done,
        &format!("{} checks, {} ignored", checks.len(), warnings.len()),
    );
    for w in &warnings {
        p.reporter.notice(&format!("preflight (ignored): {w}"));
    }

    p.begin("discover");
    let found = discover(settings).await.inspect_err(|_| p.fail())?;
    p.end(
        Status::Done,
        &format!(
            "{} trusted ({})",
            found.api_server,
            found
                .ca_pin
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_else(|| "CA not pinned".into())
        ),
    );

    p.begin("cluster");
    let token_secret = settings.bootstrap_token()?.expose_full();
    let kube = Kube::with_token(
        &found.api_server,
        &found.ca_ders,
        Some(token_secret.clone()),
        settings.limits,
    )
    .map_err(|e| Failure::new(Code::Internal, e.to_string()))
    .inspect_err(|_| p.fail())?;
    let mut cluster = cluster_checks(settings, effects, &kube, &identity, joined_before)
        .await
        .inspect_err(|_| p.fail())?;
    p.end(
        Status::Done,
        &format!(
            "{} (kubelet config from {})",
            cluster.version, cluster.config.source
        ),
    );

    let staged = artifacts_phase(&mut p, settings, effects, &mut cluster, &records).await?;

    let mut applier = if settings.dry_run {
        Applier::plan(effects)
    } else {
        Applier::apply(effects, Journal::open(root).map_err(fs_failure)?)
    };

    // host
    p.begin("host");
    applier.enter("host").map_err(fs_failure)?;
    host_phase(&mut applier, settings)
        .map_err(apply_failure(Code::Preflight))
        .inspect_err(|_| p.fail())?;
    finish(&mut applier, &mut p, "host")?;

    if !staged.is_empty() {
        p.begin("install");
        applier.enter("install").map_err(fs_failure)?;
        artifacts::install(&mut applier, &staged)
            .map_err(apply_failure(Code::Runtime))
            .inspect_err(|_| p.fail())?;
        finish(&mut applier, &mut p, "install")?;
    }

    // runtime
    p.begin("runtime");
    applier.enter("runtime").map_err(fs_failure)?;
    let inputs = runtime::PhaseInputs {
        settings,
        server: &cluster.version,
        cluster_pause: crate::model::compat::pause_image(
            cluster.config.image_repository.as_deref(),
            &cluster.config.version,
        ),
        staged: &staged,
    };
    let rt = runtime::phase(&mut applier, &inputs).inspect_err(|_| p.fail())?;
    for notice in &rt.notices {
        p.reporter.notice(notice);
    }
    finish(&mut applier, &mut p, "runtime")?;

    // kubelet
    p.begin("kubelet");
    applier.enter("kubelet").map_err(fs_failure)?;
    let (own_labels, pending_labels) = labels_for(settings);
    let kubelet_changed = kubelet_phase(
        &mut applier,
        settings,
        &identity,
        &found,
        &cluster,
        &rt,
        &own_labels,
    )
    .inspect_err(|_| p.fail())?;
    finish(&mut applier, &mut p, "kubelet")?;

    // bootstrap
    p.begin("bootstrap");
    applier.enter("bootstrap").map_err(fs_failure)?;
    let info = ClusterInfo {
        server: found.api_server.clone(),
        ca_pem: found.ca_pem.clone(),
    };
    let expiry = bootstrap_phase(
        &mut applier,
        settings,
        &identity,
        &found,
        &info,
        &kube,
        &cluster,
    )
    .await
    .inspect_err(|_| p.fail())?;
    finish(&mut applier, &mut p, "bootstrap")?;

    // start
    p.begin("start");
    applier.enter("start").map_err(fs_failure)?;
    if kubelet_changed.units {
        applier
            .daemon_reload()
            .map_err(apply_failure(Code::Start))
            .inspect_err(|_| p.fail())?;
    }
    applier
        .enable("kubelet.service")
        .map_err(apply_failure(Code::Start))
        .inspect_err(|_| p.fail())?;
    applier
        .start("kubelet.service", kubelet_changed.config)
        .map_err(apply_failure(Code::Start))
        .inspect_err(|_| p.fail())?;
    finish(&mut applier, &mut p, "start")?;

    // confirm
    p.begin("confirm");
    applier.enter("confirm").map_err(fs_failure)?;
    if settings.tls_bootstrap == TlsBootstrapMode::Kubelet && !settings.dry_run {
        finish_kubelet_bootstrap(&mut applier, settings.timeouts.csr)
            .await
            .inspect_err(|_| p.fail())?;
    }
    let (registered, ready) = if settings.dry_run {
        applier.api(
            &format!("GET /api/v1/nodes/{}", identity.node_name),
            "wait until the Node is registered",
            false,
        );
        (false, false)
    } else if settings.timeouts.node_wait.is_zero() {
        (false, false)
    } else {
        confirm(settings, root, &found, &kube, &identity)
            .await
            .inspect_err(|_| p.fail())?
    };
    if registered && crate::model::compat::writes_cri_socket_annotation(&cluster.config.version) {
        let endpoint = rt
            .endpoint
            .as_deref()
            .unwrap_or(runtime::DOCKERSHIM_ENDPOINT);
        annotate_cri_socket(settings, root, &found, &identity, endpoint, &cluster).await;
    }
    let detail = match (registered, ready) {
        (true, true) => format!("Node {} registered and Ready", identity.node_name),
        (true, false) => format!(
            "Node {} registered (not Ready yet: a CNI plugin may still be starting)",
            identity.node_name
        ),
        _ if settings.dry_run => "dry run".to_owned(),
        _ => "not waited for (--node-wait-timeout 0)".to_owned(),
    };
    p.end(
        if settings.dry_run {
            Status::Skipped
        } else {
            Status::Done
        },
        &detail,
    );

    let mut summary = JoinSummary {
        node_name: identity.node_name.clone(),
        api_server: found.api_server.clone(),
        ca_pin: found.ca_pin.as_ref().map(ToString::to_string),
        runtime: format!("{:?}", settings.runtime).to_lowercase(),
        cri_endpoint: rt.endpoint.clone(),
        labels: own_labels,
        pending_labels,
        taints: settings.taints.clone(),
        provider_id: identity.provider_id.clone(),
        registered,
        ready,
        certificate_expiry: expiry,
        changed: 0,
        dry_run: settings.dry_run,
        steps: Vec::new(),
    };
    if !settings.dry_run {
        applier.enter("done").map_err(fs_failure)?;
        let state = crate::apply::records::to_bytes(&state_view(&summary));
        applier
            .file(Path::new(STATE_FILE), 0o600, &state, false)
            .map_err(fs_failure)?;
        if let Some(url) = &settings.callback_url {
            let cb = crate::apply::records::CallbackRecord {
                url: url.as_str().to_owned(),
                ca_file: settings.values_ca_file.clone(),
            };
            let bytes = crate::apply::records::to_bytes(&cb);
            applier
                .file(Path::new(CALLBACK_FILE), 0o600, &bytes, true)
                .map_err(fs_failure)?;
        }
        applier.finish("done").map_err(fs_failure)?;
    }
    summary.changed = applier
        .steps
        .iter()
        .filter(|s| s.outcome.changes() && s.target != STATE_FILE && s.target != CALLBACK_FILE)
        .count();
    summary.steps = applier.steps;
    Ok(summary)
}

/// The `artifacts` phase (only with a mirror or image archives): stages what is missing and
/// records the kubelet version it will install.
async fn artifacts_phase(
    p: &mut Phases<'_>,
    settings: &Settings,
    effects: &Effects,
    cluster: &mut ClusterFacts,
    records: &[journal::Record],
) -> Result<artifacts::Staged, Failure> {
    if settings.artifacts.mirror.is_none() && settings.artifacts.image_archives.is_empty() {
        return Ok(artifacts::Staged::default());
    }
    p.begin("artifacts");
    let staged = artifacts::stage(
        settings,
        effects,
        Some(&cluster.version),
        artifacts::journal_has_images(records),
    )
    .await
    .inspect_err(|_| p.fail())?;
    if let Some(v) = &staged.kubelet_version {
        cluster.kubelet_version = Some(v.clone());
    }
    p.end(Status::Done, &staged.summary);
    Ok(staged)
}

fn state_view(s: &JoinSummary) -> crate::apply::records::NodeState {
    crate::apply::records::NodeState {
        node_name: s.node_name.clone(),
        api_server: s.api_server.clone(),
        ca_pin: s.ca_pin.clone(),
        runtime: s.runtime.clone(),
        cri_endpoint: s.cri_endpoint.clone(),
        labels: s.labels.0.clone(),
        pending_labels: s.pending_labels.0.clone(),
        taints: s.taints.iter().map(ToString::to_string).collect(),
        provider_id: s.provider_id.clone(),
    }
}

fn finish(applier: &mut Applier<'_>, p: &mut Phases<'_>, name: &str) -> Result<(), Failure> {
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
    p.end(status, &format!("{changed} {verb}"));
    if !applier.dry_run() {
        crash_hook(name);
    }
    Ok(())
}

struct ClusterFacts {
    /// The API server's version.
    version: KubeVersion,
    /// The installed kubelet's version, when there is one to ask.
    kubelet_version: Option<KubeVersion>,
    config: kubelet::ClusterConfig,
}

/// What the kubelet configuration needs to know of the host: systemd-resolved, whose stub
/// resolver pods cannot use.
fn kubelet_host_facts(effects: &Effects) -> kubelet::HostFacts {
    let stub = effects
        .root
        .read_following(Path::new("/etc/resolv.conf"))
        .ok()
        .flatten()
        .is_some_and(|b| {
            String::from_utf8_lossy(&b)
                .lines()
                .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["nameserver", "127.0.0.53"])
        });
    kubelet::HostFacts {
        systemd_resolved: stub
            || (effects.host && effects.systemd.is_active("systemd-resolved.service")),
    }
}

async fn cluster_checks(
    settings: &Settings,
    effects: &Effects,
    kube: &Kube,
    identity: &Identity,
    joined_before: bool,
) -> Result<ClusterFacts, Failure> {
    let (version, date) = kube.version().await.map_err(|e| {
        e.failure(
            Code::DiscoveryUnreachable,
            "reading the API server's version",
        )
    })?;
    let mut checks = Vec::new();
    let kubelet_version = if effects.host {
        preflight::kubelet_version()
    } else {
        None
    };
    if let Some(server_time) = date {
        let skew = match SystemTime::now().duration_since(server_time) {
            Ok(d) => d,
            Err(e) => e.duration(),
        };
        checks.push(preflight::Check {
            id: "clock",
            ok: skew < Duration::from_secs(300),
            message: format!("local clock differs from the API server's by {}s", skew.as_secs()),
            hint: "synchronise the clock (chrony/systemd-timesyncd); certificates are rejected when clocks disagree",
        });
    }
    if effects.host {
        if let Some(kv) = &kubelet_version {
            let skew = kv.kubelet_skew_ok(&version);
            checks.push(preflight::Check {
                id: "kubelet-version",
                ok: skew.is_ok(),
                message: skew.err().unwrap_or_else(|| format!("kubelet {kv} fits API server {version}")),
                hint: "install a kubelet no newer than the API server and at most three minor versions older",
            });
        }
    }
    let warnings = preflight::evaluate(&checks, &settings.ignore_preflight_errors)?;
    for w in warnings {
        tracing::warn!("preflight (ignored): {w}");
    }
    // kubeadm refuses to join over a Ready Node of the same name (kubernetes PR #81056).
    let node_path = format!("/api/v1/nodes/{}", identity.node_name);
    if let Ok(Some(node)) = kube.get(&node_path).await {
        let ready = node["status"]["conditions"].as_array().is_some_and(|c| {
            c.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        });
        if ready
            && !joined_before
            && !settings
                .ignore_preflight_errors
                .iter()
                .any(|i| i == "all" || i == "node-exists")
        {
            return Err(Failure::new(
                Code::NodeExists,
                format!(
                    "a Ready Node named {:?} already exists in the cluster: another machine uses this name. If that machine is gone, delete the Node (kubectl delete node {}) and rerun; otherwise give this one another name with --node-name",
                    identity.node_name, identity.node_name
                ),
            ));
        }
    }
    let config = kubelet::fetch_cluster_config(kube, &version)
        .await
        .map_err(|e| match &e {
            kubelet::ClusterConfigError::Api { what, source } => {
                source.failure(Code::ClusterConfig, &format!("reading {what}"))
            }
            _ => Failure::new(Code::ClusterConfig, e.to_string()),
        })?;
    Ok(ClusterFacts {
        version,
        kubelet_version,
        config,
    })
}

fn labels_for(
    settings: &Settings,
) -> (
    crate::model::validate::Labels,
    crate::model::validate::Labels,
) {
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

fn host_phase(applier: &mut Applier<'_>, settings: &Settings) -> Result<(), ApplyError> {
    if settings.disable_swap {
        let devices = if applier.effects().host {
            applier.effects().kernel.active_swaps()
        } else {
            Vec::new()
        };
        applier.swap_off(devices)?;
        if let Some(fstab) = applier.effects().root.read(Path::new("/etc/fstab"))? {
            let text = String::from_utf8_lossy(&fstab);
            let edited = disable_swap_lines(&text);
            if edited != text {
                applier.file(Path::new("/etc/fstab"), 0o644, edited.as_bytes(), false)?;
            }
        }
    }
    applier.file(
        Path::new(MODULES_FILE),
        0o644,
        b"# Written by node-attach; removed by node-attach reset.\noverlay\nbr_netfilter\n",
        false,
    )?;
    for m in ["overlay", "br_netfilter"] {
        let present = !applier.effects().host || applier.effects().kernel.module_present(m);
        applier.module(m, present)?;
    }
    let mut sysctl = String::from("# Written by node-attach; removed by node-attach reset.\n");
    for (k, v) in SYSCTLS {
        sysctl.push_str(&format!("{k} = {v}\n"));
    }
    applier.file(Path::new(SYSCTL_FILE), 0o644, sysctl.as_bytes(), false)?;
    for (k, v) in SYSCTLS {
        applier.sysctl(k, v)?;
    }
    Ok(())
}

/// Comments out active swap entries of an fstab (`#node-attach# ` prefix, so reset can tell them
/// apart; the journal keeps the original bytes anyway).
pub fn disable_swap_lines(fstab: &str) -> String {
    let mut out = String::new();
    for line in fstab.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if !line.trim_start().starts_with('#') && fields.len() >= 3 && fields[2] == "swap" {
            out.push_str("#node-attach# ");
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

struct KubeletChanges {
    units: bool,
    config: bool,
}

fn kubelet_phase(
    applier: &mut Applier<'_>,
    settings: &Settings,
    identity: &Identity,
    found: &Discovered,
    cluster: &ClusterFacts,
    rt: &runtime::RuntimePlan,
    own_labels: &crate::model::validate::Labels,
) -> Result<KubeletChanges, Failure> {
    let fail = apply_failure(Code::KubeletConfig);
    let host = kubelet_host_facts(applier.effects());
    let config = kubelet::render_config(&cluster.config, settings, identity, &host)
        .map_err(|e| Failure::new(Code::KubeletConfig, e.to_string()))?;
    let kubelet_version = cluster
        .kubelet_version
        .clone()
        .unwrap_or_else(|| cluster.version.clone());
    let flags = kubelet::render_flags(&kubelet::FlagInputs {
        labels: own_labels,
        taints: &settings.taints,
        identity,
        endpoint: rt.endpoint.as_deref(),
        pause_image: &rt.pause_image,
        kubelet: &kubelet_version,
    });
    let mut changed = false;
    applier
        .dir(Path::new("/etc/kubernetes/pki"), 0o755)
        .map_err(&fail)?;
    applier
        .dir(Path::new("/etc/kubernetes/manifests"), 0o755)
        .map_err(&fail)?;
    changed |= applier
        .file(Path::new(kubelet::CA_PATH), 0o644, &found.ca_pem, false)
        .map_err(&fail)?
        .changes();
    applier
        .dir(Path::new("/var/lib/kubelet"), 0o700)
        .map_err(&fail)?;
    changed |= applier
        .file(
            Path::new(kubelet::CONFIG_PATH),
            0o644,
            config.as_bytes(),
            false,
        )
        .map_err(&fail)?
        .changes();
    changed |= applier
        .file(
            Path::new(kubelet::FLAGS_PATH),
            0o644,
            flags.as_bytes(),
            false,
        )
        .map_err(&fail)?
        .changes();
    let units = kubelet_units(applier).map_err(&fail)?;
    Ok(KubeletChanges {
        units,
        config: changed || units,
    })
}

/// The kubelet's unit (unless a package installed one), kubeadm's drop-in and the reset unit;
/// returns whether any changed.
fn kubelet_units(applier: &mut Applier<'_>) -> Result<bool, ApplyError> {
    let root = &applier.effects().root;
    let packaged_unit = kubelet::UNIT_DIRS.iter().any(|d| {
        let p = PathBuf::from(d).join("kubelet.service");
        p != Path::new(kubelet::UNIT_PATH) && root.read(&p).ok().flatten().is_some()
    });
    let mut units = false;
    if !packaged_unit {
        units |= applier
            .file(
                Path::new(kubelet::UNIT_PATH),
                0o644,
                kubelet::UNIT.as_bytes(),
                false,
            )?
            .changes();
    }
    units |= applier
        .file(
            Path::new(kubelet::DROPIN_PATH),
            0o644,
            kubelet::DROPIN.as_bytes(),
            false,
        )?
        .changes();
    if let Some(exe) = std::env::current_exe()
        .ok()
        .and_then(|e| e.to_str().map(str::to_owned))
    {
        let unit = kubelet::RESET_UNIT.replace("/usr/local/bin/node-attach", &exe);
        units |= applier
            .file(
                Path::new(kubelet::RESET_UNIT_PATH),
                0o644,
                unit.as_bytes(),
                false,
            )?
            .changes();
    }
    Ok(units)
}

async fn bootstrap_phase(
    applier: &mut Applier<'_>,
    settings: &Settings,
    identity: &Identity,
    found: &Discovered,
    info: &ClusterInfo,
    kube: &Kube,
    cluster: &ClusterFacts,
) -> Result<Option<i64>, Failure> {
    let (cluster_name, server) = (cluster.config.cluster_name.as_str(), &cluster.version);
    let fail = apply_failure(Code::Bootstrap);
    let root = applier.effects().root.clone();
    if settings.tls_bootstrap == TlsBootstrapMode::Kubelet {
        let cfg = Kubeconfig::bootstrap(
            cluster_name,
            info,
            &settings.bootstrap_token()?.expose_full(),
        );
        applier
            .file(
                Path::new(bootstrap::BOOTSTRAP_CONF),
                0o600,
                cfg.to_yaml().as_bytes(),
                true,
            )
            .map_err(&fail)?;
        return Ok(None);
    }
    // Already bootstrapped with a certificate that has time left: keep it (the kubelet rotates).
    let kubelet_conf = Kubeconfig::kubelet(info, bootstrap::CURRENT).to_yaml();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    if let Some(expiry) = bootstrap::current_expiry(&root) {
        if expiry > now + 600
            && root
                .read(Path::new(bootstrap::KUBELET_CONF))
                .ok()
                .flatten()
                .is_some()
        {
            applier
                .file(
                    Path::new(bootstrap::KUBELET_CONF),
                    0o600,
                    kubelet_conf.as_bytes(),
                    false,
                )
                .map_err(&fail)?;
            applier
                .remove_own(Path::new(bootstrap::TMP_KEY))
                .map_err(&fail)?;
            return Ok(Some(expiry));
        }
    }
    applier
        .dir(Path::new(bootstrap::PKI_DIR), 0o755)
        .map_err(&fail)?;
    let key = root
        .read(Path::new(bootstrap::TMP_KEY))
        .map_err(fs_failure)?;
    let key = key.as_deref().map(String::from_utf8_lossy);
    let usages = crate::model::compat::csr_usages(server);
    let request = bootstrap::build_request(&identity.node_name, key.as_deref(), usages)?;
    applier
        .file(
            Path::new(bootstrap::TMP_KEY),
            0o600,
            request.key_pem.as_bytes(),
            true,
        )
        .map_err(&fail)?;
    let pair_name = bootstrap::pair_file_name(time::OffsetDateTime::now_utc());
    let pair_path = PathBuf::from(bootstrap::PKI_DIR).join(&pair_name);
    if applier.dry_run() {
        applier.api(
            &format!("POST /apis/certificates.k8s.io/v1/certificatesigningrequests {}", request.name),
            &format!("CN=system:node:{}, O=system:nodes, signer {}; then watch until approved and signed", identity.node_name, bootstrap::SIGNER),
            true,
        );
        store_pair(
            applier,
            &pair_path,
            b"(issued certificate and key)",
            &kubelet_conf,
        )
        .map_err(&fail)?;
        return Ok(None);
    }
    let created = bootstrap::create(kube, &request, server).await?;
    applier.api(
        &format!("POST certificatesigningrequests {}", request.name),
        created.version,
        true,
    );
    let cert =
        bootstrap::wait_for_certificate(kube, &created, &request.name, settings.timeouts.csr)
            .await?;
    let expiry =
        bootstrap::verify_issued(&cert, &request.spki, &identity.node_name, &found.ca_ders)?;
    let mut pair = cert.clone();
    if !pair.ends_with(b"\n") {
        pair.push(b'\n');
    }
    pair.extend_from_slice(request.key_pem.as_bytes());
    store_pair(applier, &pair_path, &pair, &kubelet_conf).map_err(&fail)?;
    Ok(Some(expiry))
}

/// Stores an issued pair the way the kubelet's certificate store does (the pair file 0600, the
/// `kubelet-client-current.pem` symlink), points kubelet.conf at it, and drops the retry key.
fn store_pair(
    applier: &mut Applier<'_>,
    pair_path: &Path,
    pair: &[u8],
    kubelet_conf: &str,
) -> Result<(), ApplyError> {
    applier.file(pair_path, 0o600, pair, true)?;
    applier.symlink(Path::new(bootstrap::CURRENT), pair_path)?;
    applier.file(
        Path::new(bootstrap::KUBELET_CONF),
        0o600,
        kubelet_conf.as_bytes(),
        false,
    )?;
    applier.remove_own(Path::new(bootstrap::TMP_KEY))?;
    Ok(())
}

/// With `--tls-bootstrap=kubelet`, as kubeadm's kubelet-start phase does: waits until the
/// kubelet has finished its own TLS bootstrap (it writes kubelet.conf), then removes
/// bootstrap-kubelet.conf and the token in it. When the kubelet does not finish in time the
/// token leaves the disk all the same, and join fails.
async fn finish_kubelet_bootstrap(
    applier: &mut Applier<'_>,
    timeout: Duration,
) -> Result<(), Failure> {
    let root = applier.effects().root.clone();
    let deadline = Instant::now() + timeout;
    let bootstrapped = loop {
        if root
            .read(Path::new(bootstrap::KUBELET_CONF))
            .ok()
            .flatten()
            .is_some()
        {
            break true;
        }
        if Instant::now() >= deadline {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    applier
        .remove_own(Path::new(bootstrap::BOOTSTRAP_CONF))
        .map_err(fs_failure)?;
    if bootstrapped {
        return Ok(());
    }
    Err(Failure::new(
        Code::CsrTimeout,
        format!(
            "the kubelet did not finish its TLS bootstrap within {timeout:?} (no {}); the bootstrap kubeconfig was removed. Look at the kubelet's log (journalctl -u kubelet) and at the cluster's CSRs (kubectl get csr)",
            bootstrap::KUBELET_CONF
        ),
    ))
}

/// Annotates the Node with its CRI socket as `kubeadm join` does (`kubeadm upgrade node` reads
/// it), with the node's own credentials. Best effort: a failure is logged, the join stands.
async fn annotate_cri_socket(
    settings: &Settings,
    root: &Root,
    found: &Discovered,
    identity: &Identity,
    endpoint: &str,
    cluster: &ClusterFacts,
) {
    use crate::model::compat::{cri_socket_annotation_value, CRI_SOCKET_ANNOTATION};
    let Some(pair) = root
        .read_following(Path::new(bootstrap::CURRENT))
        .ok()
        .flatten()
    else {
        return;
    };
    let value = cri_socket_annotation_value(endpoint, &cluster.config.version);
    let patch = serde_json::json!({"metadata": {"annotations": {CRI_SOCKET_ANNOTATION: value}}});
    let path = format!("/api/v1/nodes/{}", identity.node_name);
    let outcome =
        match Kube::with_certificate(&found.api_server, &found.ca_ders, &pair, settings.limits) {
            Ok(node) => node
                .merge_patch(&path, &patch)
                .await
                .map(drop)
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
    if let Err(e) = outcome {
        tracing::warn!(
            "could not annotate the Node with its CRI socket ({CRI_SOCKET_ANNOTATION}): {e}"
        );
    }
}

async fn confirm(
    settings: &Settings,
    root: &Root,
    found: &Discovered,
    token_client: &Kube,
    identity: &Identity,
) -> Result<(bool, bool), Failure> {
    let node_client = match root.read_following(Path::new(bootstrap::CURRENT)) {
        Ok(Some(pair)) => {
            Kube::with_certificate(&found.api_server, &found.ca_ders, &pair, settings.limits).ok()
        }
        _ => None,
    };
    let client = node_client.as_ref().unwrap_or(token_client);
    let path = format!("/api/v1/nodes/{}", identity.node_name);
    let deadline = Instant::now() + settings.timeouts.node_wait;
    let mut registered = false;
    let ready_deadline = |reg_at: Instant| (reg_at + Duration::from_secs(20)).min(deadline);
    let mut reg_at = None;
    while Instant::now() < reg_at.map(ready_deadline).unwrap_or(deadline) {
        if let Ok(Some(node)) = client.get(&path).await {
            registered = true;
            reg_at.get_or_insert_with(Instant::now);
            let ready = node["status"]["conditions"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            });
            if ready {
                return Ok((true, true));
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    if registered {
        return Ok((true, false));
    }
    Err(Failure::new(
        Code::NodeNotRegistered,
        format!(
            "the Node {} did not appear in the API within {:?}",
            identity.node_name, settings.timeouts.node_wait
        ),
    ))
}

async fn report_callback(
    url: &url::Url,
    settings: &Settings,
    outcome: &Result<JoinSummary, Failure>,
) {
    let body = match outcome {
        Ok(s) => {
            serde_json::json!({"status": "success", "node": s.node_name, "provider_id": s.provider_id, "changed": s.changed})
        }
        Err(f) => {
            serde_json::json!({"status": "failure", "code": f.code, "exit_code": f.code.exit_code(), "message": f.message})
        }
    };
    crate::client::callback::post_callback(
        url,
        settings.values_ca_file.as_deref(),
        settings.limits,
        &body,
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swap_lines_are_commented_once() {
        let fstab =
            "UUID=1 / ext4 defaults 0 1\n/swapfile none swap sw 0 0\n# /old none swap sw 0 0\n";
        let once = disable_swap_lines(fstab);
        assert_eq!(once, "UUID=1 / ext4 defaults 0 1\n#node-attach# /swapfile none swap sw 0 0\n# /old none swap sw 0 0\n");
        assert_eq!(disable_swap_lines(&once), once);
    }
}
