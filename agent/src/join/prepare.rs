//! Bake mode, `join --phase prepare`: everything a join does that needs no cluster, for
//! building machine images — preflight, the artifacts a plain machine lacks (from the signed
//! mirror: the kubelet, CNI plugins, a static containerd, the air-gap images), the host
//! settings, the runtime installed, configured, started and loaded with the images, and the
//! kubelet's units. No values service, API server or token is contacted or needed.
//!
//! The journal it writes is the one the boot-time join continues: every prepared step is
//! unchanged then, nothing is missing so the mirror is not contacted again, and the join does
//! identity, discovery, the cluster's kubelet configuration, the CSR and the start. A reset
//! undoes both.

use super::{applied, artifacts, fs_failure, host, kubelet, preflight, runtime};
use crate::apply::journal::{Event, Journal, Record};
use crate::apply::Applier;
use crate::cli::join::JoinArgs;
use crate::effects::fs::Root;
use crate::effects::Effects;
use crate::error::{Code, Failure};
use crate::model::version::KubeVersion;
use crate::report::{Reporter, Status};
use crate::sources::settings::Settings;
use serde::Serialize;

/// The phases bake mode journals; a journal with only these has prepared, not joined.
pub const PREPARE_PHASES: &[&str] = &["host", "install", "runtime", "kubelet-units", "prepared"];

/// Whether the journal records a join, not only what bake mode does (a prepared image is
/// not "joined before": the checks for a foreign kubelet.conf and a Ready Node of the same
/// name apply at its first boot).
pub fn joined(records: &[Record]) -> bool {
    records.iter().any(|r| {
        r.event == Event::Phase
            && r.phase
                .as_deref()
                .is_some_and(|p| !PREPARE_PHASES.contains(&p))
    })
}

/// What bake mode reports.
#[derive(Clone, Debug, Serialize)]
pub struct PrepareSummary {
    /// The kubelet version prepared for.
    pub kubelet_version: String,
    /// The runtime.
    pub runtime: String,
    /// Steps that changed something (or would, in a dry run).
    pub changed: usize,
    /// Dry run.
    pub dry_run: bool,
    /// Every step.
    pub steps: Vec<crate::apply::Step>,
}

/// Runs `node-attach join --phase prepare`.
pub async fn run(args: JoinArgs, reporter: &mut Reporter) -> Result<(), Failure> {
    let token = args.token.resolve()?;
    if args.openapi.resolve()?.is_some() {
        reporter.notice("--phase prepare contacts no control plane: the openapi token is left for the boot-time join");
    }
    if token.is_some() || args.endpoint.is_some() {
        reporter.notice("--phase prepare contacts no cluster: the token and endpoint are left for the boot-time join");
    }
    let mut settings = Settings::resolve(&args, token, None)?;
    settings.agent_path = std::env::current_exe().ok();
    for notice in &settings.notices {
        reporter.notice(notice);
    }
    let effects = Effects::real(Root::new(&settings.root));
    let summary = prepare(&settings, &effects, reporter).await?;
    let text = format!(
        "{} for kubelet {} with {} ({} {}); the join at boot does discovery, the CSR and the start\n",
        if summary.dry_run { "would prepare" } else { "prepared" },
        summary.kubelet_version,
        summary.runtime,
        summary.changed,
        if summary.dry_run { "changes planned" } else { "changes" }
    );
    reporter.result(&summary, &text);
    Ok(())
}

/// The kubelet version to prepare for: the one installed from the mirror, the one asked for,
/// or the machine's own kubelet's.
fn version(
    settings: &Settings,
    effects: &Effects,
    staged: &artifacts::Staged,
) -> Result<KubeVersion, Failure> {
    staged
        .kubelet_version
        .clone()
        .or_else(|| settings.artifacts.kubelet_version.clone())
        .or_else(|| effects.host.then(|| effects.probe.kubelet_version()).flatten())
        .ok_or_else(|| {
            Failure::new(
                Code::Usage,
                "bake mode needs the kubelet's version to configure the runtime for: pass --kubelet-version (with --artifacts-url), or have a kubelet on the machine",
            )
        })
}

/// Everything a join does that needs no cluster.
pub async fn prepare(
    settings: &Settings,
    effects: &Effects,
    reporter: &mut Reporter,
) -> Result<PrepareSummary, Failure> {
    let root = &effects.root;
    let _lock = match settings.dry_run {
        true => None,
        false => Some(crate::apply::lock::lock(root)?),
    };
    let records = Journal::load(root).map_err(fs_failure)?.unwrap_or_default();
    local_checks(settings, effects, &records, reporter)?;
    let phase = reporter.begin("artifacts");
    let staged = artifacts::stage(
        settings,
        effects,
        None,
        artifacts::journal_has_images(&records),
    )
    .await?;
    let version = version(settings, effects, &staged)?;
    phase.end(Status::Done, &staged.summary);
    let mut applier = match settings.dry_run {
        true => Applier::plan(effects),
        false => Applier::apply(effects, Journal::open(root).map_err(fs_failure)?),
    };
    apply_phases(&mut applier, reporter, settings, &staged, &version)?;
    let changed = applier.steps.iter().filter(|s| s.outcome.changes()).count();
    Ok(PrepareSummary {
        kubelet_version: version.to_string(),
        runtime: format!("{:?}", settings.runtime).to_lowercase(),
        changed,
        dry_run: settings.dry_run,
        steps: applier.steps,
    })
}

/// Preflight as the join's, less the checks a mirror makes moot.
fn local_checks(
    settings: &Settings,
    effects: &Effects,
    records: &[Record],
    reporter: &mut Reporter,
) -> Result<(), Failure> {
    let phase = reporter.begin("preflight");
    let swap_allowed = settings.disable_swap || settings.kubelet.fail_swap_on == Some(false);
    let checks = preflight::local(effects, swap_allowed, joined(records));
    let checks = artifacts::waive_checks(checks, settings);
    let warnings = preflight::evaluate(&checks, &settings.ignore_preflight_errors)?;
    phase.end(
        Status::Done,
        &format!("{} checks, {} ignored", checks.len(), warnings.len()),
    );
    Ok(())
}

fn apply_phases(
    applier: &mut Applier<'_>,
    reporter: &mut Reporter,
    settings: &Settings,
    staged: &artifacts::Staged,
    version: &KubeVersion,
) -> Result<(), Failure> {
    applied(reporter, applier, "host", Code::Preflight, |a| {
        host::apply(a, settings)
    })?;
    if !staged.is_empty() {
        let units = applied(reporter, applier, "install", Code::Runtime, |a| {
            artifacts::install(a, staged)
        })?;
        if units {
            applier
                .daemon_reload()
                .map_err(super::apply_failure(Code::Runtime))?;
        }
    }
    let inputs = runtime::PhaseInputs {
        settings,
        server: version,
        // No cluster to read kubeadm-config from: kubeadm's default repository for this
        // version. The boot-time join re-merges when the cluster names another.
        cluster_pause: crate::model::compat::pause_image(None, version),
        staged,
        // Nothing starts after this phase here: the runtime is waited for in it.
        wait_in_phase: true,
    };
    super::runtime_phase(reporter, applier, &inputs, &[])?;
    let reset_unit = settings.agent_path.as_deref().and_then(kubelet::reset_unit);
    let units = applied(
        reporter,
        applier,
        "kubelet-units",
        Code::KubeletConfig,
        |a| kubelet::units(a, reset_unit.as_deref()),
    )?;
    if units {
        applier
            .daemon_reload()
            .map_err(super::apply_failure(Code::Start))?;
    }
    if !applier.dry_run() {
        applier.enter("prepared").map_err(fs_failure)?;
        applier.finish("done").map_err(fs_failure)?;
    }
    Ok(())
}
