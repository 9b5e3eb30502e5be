//! `node-attach reset`: undo exactly what join did, and clean up what the kubelet and the runtime
//! created while the node ran.
//!
//! Order: drain (`--drain`, with an admin's kubeconfig), delete this node's Node
//! (`--delete-node`, [`api`]), then the documented Kubernetes paths ([`cleanup`]: the kubelet
//! stopped, pods removed through the CRI, mounts, kubelet and CNI state, iptables chains
//! ([`iptables`]), interfaces), then the journal replayed backwards ([`replay`]: files restored
//! byte for byte with mode and owner, created files and then empty created directories removed,
//! sysctls reverted, swap back on, units disabled, packages removed only with
//! `--remove-packages`), and last the state directory removed in one rename
//! ([`replay::finalize`]).
//!
//! Reset is crash-safe and repeatable: every undo is recorded in the journal (`undone`) as it
//! is done, so a rerun after `kill -9` undoes only what is left and never touches again what an
//! earlier run restored; the backups and the journal go only once the journal says every undo
//! is done. Nothing outside the journal and the documented paths (`docs/reset.md`) is ever
//! deleted. With no journal, or a damaged one, only the documented paths are cleaned; a journal
//! that was tampered with (paths outside the root, foreign backups) is refused before anything
//! changes.

pub mod api;
pub mod audit;
pub mod cleanup;
pub mod iptables;
pub mod replay;

use crate::apply::journal::{self, Journal, JournalError, Record};
use crate::apply::records::{self, CallbackRecord};
use crate::effects::Effects;
use crate::error::{Code, Failure};
use crate::trust::tls::ClientIdentity;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use cleanup::{CNI_DIRS, CNI_INTERFACES, KUBERNETES_FILES, STATE_DIRS};
pub use iptables::CHAIN_PREFIXES;
pub use records::REMOVAL_MARKER;

/// How much of the audit's path list a report to the callback carries (the values service
/// reads reports of up to 64 KiB).
pub const CALLBACK_AUDIT_BYTES: usize = 40 * 1024;

/// Test hook: abort the process (as `kill -9` would) at reset's Nth step.
pub const CRASH_HOOK: &str = "NODE_ATTACH_TEST_RESET_CRASH_AT";

/// What reset should do.
#[derive(Clone, Debug, Default)]
pub struct ResetOptions {
    /// Plan only.
    pub dry_run: bool,
    /// Delete this node's Node object first.
    pub delete_node: bool,
    /// Keep the packages join installed (by default reset removes exactly those).
    pub keep_packages: bool,
    /// Cleanup steps to skip: mounts, containers, cni, iptables, interfaces, kubelet-state.
    pub skip: Vec<String>,
    /// Drain the node first (with [`ResetOptions::admin_kubeconfig`]).
    pub drain: bool,
    /// An admin kubeconfig, read: drains, and deletes the Node (a node may not delete its
    /// own Node object on a real cluster: the Node authorizer grants nodes no delete).
    pub admin_kubeconfig: Option<crate::client::kube::kubeconfig::AdminKubeconfig>,
    /// How long the drain may take.
    pub drain_timeout: Duration,
    /// Without a journal, clean the documented Kubernetes paths anyway (a node joined by other
    /// means). Without it, a run that finds no journal changes nothing: an earlier reset may
    /// have restored files there that predate join.
    pub clean_without_journal: bool,
}

/// How a step ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// It was done.
    Done,
    /// A dry run: it would be done.
    WouldDo,
    /// Not done, on purpose (not asked, not applicable, kept).
    Skipped,
    /// Not done: doing it would have been unsafe (a symlink, a special file).
    Refused,
    /// Tried, and it failed.
    Failed,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Outcome::Done => "done",
            Outcome::WouldDo => "would-do",
            Outcome::Skipped => "skipped",
            Outcome::Refused => "refused",
            Outcome::Failed => "failed",
        })
    }
}

impl std::fmt::Display for JournalState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            JournalState::Used => "used",
            JournalState::Missing => "missing",
            JournalState::Damaged => "damaged",
        })
    }
}

impl Outcome {
    /// Whether it counts as a problem.
    pub fn is_problem(self) -> bool {
        matches!(self, Outcome::Failed | Outcome::Refused)
    }
}

/// One reset step.
#[derive(Clone, Debug, Serialize)]
pub struct ResetStep {
    /// Step kind.
    pub kind: &'static str,
    /// Path, unit, key…
    pub target: String,
    /// How it ended.
    pub outcome: Outcome,
    /// Why.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

/// What reset could make of the journal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum JournalState {
    /// Read and replayed.
    Used,
    /// There was none: documented paths only.
    Missing,
    /// Unreadable in the middle: documented paths only.
    Damaged,
}

/// The report.
#[derive(Clone, Debug, Serialize)]
pub struct ResetReport {
    /// What became of the journal.
    pub journal: JournalState,
    /// Node deletion: deleted, absent, skipped (unreachable or not asked).
    pub node: String,
    /// Every step.
    pub steps: Vec<ResetStep>,
    /// Steps that failed or were refused.
    pub problems: usize,
    /// Dry run.
    pub dry_run: bool,
    /// Every path restored, removed or kept, before and after ([`audit`]).
    pub paths: Vec<audit::PathEntry>,
}

/// What the steps share.
pub struct Ctx<'a> {
    fx: &'a Effects,
    opts: &'a ResetOptions,
    steps: Vec<ResetStep>,
    /// Real directories that still hold a mount and must not be deleted.
    pinned: Vec<PathBuf>,
    /// Real paths the journal restores, which cleanup keeps.
    restored: Vec<PathBuf>,
    /// Real paths in the CNI directories that were there before join, which cleanup keeps.
    preexisting: Vec<PathBuf>,
    /// The paths audited so far.
    audit: Vec<audit::PathEntry>,
    crash_at: Option<usize>,
}

impl<'a> Ctx<'a> {
    fn new(fx: &'a Effects, opts: &'a ResetOptions) -> Ctx<'a> {
        let crash_at = std::env::var(CRASH_HOOK).ok().and_then(|n| n.parse().ok());
        Ctx {
            fx,
            opts,
            steps: Vec::new(),
            pinned: Vec::new(),
            restored: Vec::new(),
            preexisting: Vec::new(),
            audit: Vec::new(),
            crash_at,
        }
    }

    fn step(
        &mut self,
        kind: &'static str,
        target: impl Into<String>,
        outcome: Outcome,
        detail: impl Into<String>,
    ) {
        let (target, detail) = (target.into(), detail.into());
        if outcome.is_problem() {
            tracing::warn!("reset {kind} {target}: {outcome}: {detail}");
        } else {
            tracing::info!("reset {kind} {target}: {outcome}");
        }
        self.steps.push(ResetStep {
            kind,
            target,
            outcome,
            detail,
        });
        self.crash_point();
    }

    /// The test hook: abort here when this is the step asked for.
    fn crash_point(&self) {
        let n = self.steps.len();
        if self.crash_at == Some(n) && !self.opts.dry_run {
            eprintln!("node-attach: {CRASH_HOOK}={n}: aborting as if killed");
            std::process::abort();
        }
    }

    fn skipped(&self, what: &str) -> bool {
        self.opts.skip.iter().any(|s| s == what || s == "all")
    }

    fn problems(&self) -> usize {
        self.steps.iter().filter(|s| s.outcome.is_problem()).count()
    }
}

/// The journal as reset finds it: open for recording progress (None in a dry run), its
/// records, and what state it is in.
type Found = (Option<Journal>, Option<Vec<Record>>, JournalState);

/// Opens the journal; a tampered one stops reset before any change.
fn open_journal(fx: &Effects, dry_run: bool) -> Result<Found, Failure> {
    let opened = if dry_run {
        Journal::load(&fx.root).map(|r| (None, r))
    } else {
        Journal::open_existing(&fx.root).map(|j| {
            let records = j.as_ref().map(|j| j.records().to_vec());
            (j, records)
        })
    };
    match opened {
        Ok((journal, Some(records))) => Ok((journal, Some(records), JournalState::Used)),
        Ok((_, None)) => Ok((None, None, JournalState::Missing)),
        Err(JournalError::Damaged { line, reason }) => {
            tracing::warn!("the journal is damaged at line {line} ({reason}): cleaning the documented Kubernetes paths only");
            Ok((None, None, JournalState::Damaged))
        }
        Err(e @ (JournalError::Tampered { .. } | JournalError::NotAFile(_))) => {
            Err(Failure::new(Code::JournalTampered, e.to_string()))
        }
        Err(e) => Err(Failure::new(Code::Filesystem, e.to_string())),
    }
}

/// Runs reset.
pub async fn run(fx: &Effects, opts: &ResetOptions) -> Result<ResetReport, Failure> {
    let root = &fx.root;
    // Held to the end: a join or another reset on this root fails fast with `busy`.
    let _lock = if opts.dry_run {
        None
    } else {
        Some(crate::apply::lock::lock(root)?)
    };
    if !opts.dry_run {
        // A join or reset killed while creating or removing the state directory leaves a
        // staging directory.
        if let Err(e) = root.sweep_staged(Path::new(journal::BACKUP_DIR)) {
            tracing::warn!("cannot remove an interrupted run's staging directory: {e}");
        }
    }
    let (mut journal, records, journal_state) = open_journal(fx, opts.dry_run)?;
    // Read before finalize removes it.
    let callback: Option<CallbackRecord> = records::read(root, records::CALLBACK_FILE);
    let mut ctx = Ctx::new(fx, opts);
    if let (true, Some(admin)) = (opts.drain, &opts.admin_kubeconfig) {
        api::drain(&mut ctx, admin).await?;
    }
    // Read now: cleanup removes the certificate and the state file it comes from.
    let name = api::own_node_name(root);
    let deletion = if opts.delete_node {
        api::delete_node(&mut ctx, callback.as_ref()).await
    } else {
        api::Deletion::Settled("not asked (--delete-node)".to_owned())
    };
    let keep = replay::keep(root, records.as_deref().unwrap_or_default());
    if journal_state == JournalState::Missing && !opts.clean_without_journal {
        let why = "no journal: nothing of join's is left to undo (an earlier reset finished, or join never ran); pass --clean-kubernetes-paths to clean the kubelet's and CNI's documented paths of a node joined by other means";
        ctx.step(
            "cleanup",
            "the documented Kubernetes paths",
            Outcome::Skipped,
            why,
        );
    } else {
        cleanup::run(&mut ctx, &keep).await;
    }
    match &records {
        Some(r) => {
            let complete = replay::replay(&mut ctx, journal.as_mut(), r);
            replay::finalize(&mut ctx, journal.take(), r, complete);
        }
        None => {
            let detail = format!(
                "journal {journal_state}: only the documented Kubernetes paths were cleaned"
            );
            ctx.step("journal", journal::JOURNAL_FILE, Outcome::Skipped, detail);
        }
    }
    let node = match deletion {
        api::Deletion::ByService {
            name,
            identity,
            callback,
        } => api::delete_through_service(&mut ctx, &callback, &name, &identity).await,
        api::Deletion::Settled(summary) => {
            if let (Some(cb), false) = (&callback, opts.dry_run) {
                let name = name.as_deref().unwrap_or_default();
                report(cb, name, ctx.problems(), &ctx.audit, None).await;
            }
            summary
        }
    };
    let problems = ctx.problems();
    Ok(ResetReport {
        journal: journal_state,
        node,
        steps: ctx.steps,
        problems,
        dry_run: opts.dry_run,
        paths: ctx.audit,
    })
}

/// Tells the callback join recorded how the removal went; with the node's client certificate,
/// it asks the values service to delete the Node too. Returns the service's answer.
async fn report(
    cb: &CallbackRecord,
    node: &str,
    problems: usize,
    paths: &[audit::PathEntry],
    identity: Option<&ClientIdentity>,
) -> Option<serde_json::Value> {
    let url = url::Url::parse(&cb.url).ok()?;
    let body = serde_json::json!({
        "status": if problems == 0 { "removed" } else { "reset-incomplete" },
        "node": node, "problems": problems, "delete_node": identity.is_some(),
        "audit": audit::for_callback(paths, CALLBACK_AUDIT_BYTES),
    });
    let limits = crate::client::http::Limits::default();
    let ca = cb.ca_file.as_deref();
    crate::client::callback::post_callback(&url, ca, identity, limits, &body).await
}

#[cfg(test)]
mod tests;
