//! Reset's audit of the filesystem: every path it restored, removed or kept, with what was
//! there before and after (a file's SHA-256 and mode, a symlink's target, a directory) and
//! why. `reset --report FILE` writes it whole as JSON; reset's report to the callback carries
//! its counts, its digest and as many entries as fit.

use super::Ctx;
use crate::effects::seen::Seen;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::path::Path;

/// The most paths one documented directory contributes (then a note that more were removed).
pub const MAX_TREE_PATHS: usize = 10_000;

/// What reset did to a path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// Put back as it was before join (from join's backup).
    Restored,
    /// Removed (join made it, or it is a documented Kubernetes path).
    Removed,
    /// Left as it is, on purpose.
    Kept,
    /// Nothing there to remove any more.
    AlreadyAbsent,
    /// A dry run: would be restored.
    WouldRestore,
    /// A dry run: would be removed.
    WouldRemove,
    /// Not touched: doing so would have been unsafe.
    Refused,
    /// Tried, and it failed.
    Failed,
}

/// One path of the audit.
#[derive(Clone, Debug, Serialize)]
pub struct PathEntry {
    /// The path on the node.
    pub path: String,
    /// What reset did.
    pub action: Action,
    /// What was there before.
    pub before: Seen,
    /// What is there after (for a dry run: what would be).
    pub after: Seen,
    /// Why.
    pub reason: String,
}

/// Counts by action, for the callback.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Counts {
    /// Restored from join's backups.
    pub restored: usize,
    /// Removed.
    pub removed: usize,
    /// Kept on purpose.
    pub kept: usize,
    /// Refused or failed.
    pub problems: usize,
}

/// Counts the entries by action.
pub fn counts(entries: &[PathEntry]) -> Counts {
    let mut c = Counts::default();
    for e in entries {
        match e.action {
            Action::Restored | Action::WouldRestore => c.restored += 1,
            Action::Removed | Action::WouldRemove => c.removed += 1,
            Action::Kept => c.kept += 1,
            Action::Refused | Action::Failed => c.problems += 1,
            Action::AlreadyAbsent => {}
        }
    }
    c
}

/// The hex SHA-256 of the entries as compact JSON with every object's keys sorted (so anyone
/// holding the `paths` of `--report` can check it against the callback's digest).
pub fn digest(entries: &[PathEntry]) -> String {
    let canonical = serde_json::to_value(entries).unwrap_or_default();
    let bytes = serde_json::to_vec(&canonical).unwrap_or_default();
    Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The audit as the callback carries it: counts, the digest of the whole list, and the first
/// entries whose JSON fits in `budget` bytes.
pub fn for_callback(entries: &[PathEntry], budget: usize) -> serde_json::Value {
    let mut used = 0;
    let mut shown = Vec::new();
    for e in entries {
        let v = serde_json::to_value(e).unwrap_or_default();
        used += v.to_string().len() + 1;
        if used > budget {
            break;
        }
        shown.push(v);
    }
    serde_json::json!({
        "counts": counts(entries),
        "paths_sha256": digest(entries),
        "paths_total": entries.len(),
        "paths": shown,
    })
}

impl Ctx<'_> {
    /// What is at `path` now; a path that cannot be inspected reads as absent, with a warning.
    pub(super) fn seen(&self, path: &Path) -> Seen {
        self.fx.root.seen(path).unwrap_or_else(|e| {
            tracing::warn!("audit: {e}");
            Seen::Absent
        })
    }

    /// Records one path of the audit.
    pub(super) fn audit(
        &mut self,
        path: &Path,
        action: Action,
        before: Seen,
        after: Seen,
        reason: impl Into<String>,
    ) {
        let shown = path.display().to_string();
        let reason = reason.into();
        // Removed earlier in this run (cleanup before the journal's replay): one entry, both
        // reasons.
        if action == Action::AlreadyAbsent {
            if let Some(earlier) = self.audit.iter_mut().rev().find(|e| e.path == shown) {
                if !earlier.reason.contains(&reason) {
                    earlier.reason = format!("{}; {reason}", earlier.reason);
                }
                return;
            }
        }
        self.audit.push(PathEntry {
            path: shown,
            action,
            before,
            after,
            reason,
        });
    }

    /// Records a path after a step on it, its state now as `after`.
    pub(super) fn audit_now(
        &mut self,
        path: &Path,
        action: Action,
        before: Seen,
        reason: impl Into<String>,
    ) {
        let after = self.seen(path);
        self.audit(path, action, before, after, reason);
    }
}
