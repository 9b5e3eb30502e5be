//! The journal replayed backwards, one undo per kind of change, each recorded in the journal as
//! it is done (`undone`), so a rerun after a crash skips it: what an earlier reset restored is
//! never touched again. Once every undo is done the journal says so (`reset-complete`) and
//! [`finalize`] removes the state directory, backups and journal with it, in one rename.

use super::audit::Action;
use super::cleanup::{remove_path, Keep};
use super::{Ctx, Outcome};
use crate::apply::journal::{self, Change, Event, Journal, Prior, Record};
use crate::effects::fs::{Existing, Root};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

/// How one undo ended, for the journal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Undo {
    /// Undone: recorded, never repeated.
    Done,
    /// Nothing to do, or kept on purpose (repeating it is harmless).
    Skip,
    /// Failed or refused: the journal and backups stay for a rerun.
    Problem,
}

impl From<Outcome> for Undo {
    fn from(o: Outcome) -> Undo {
        match o {
            Outcome::Done => Undo::Done,
            Outcome::WouldDo | Outcome::Skipped => Undo::Skip,
            Outcome::Refused | Outcome::Failed => Undo::Problem,
        }
    }
}

/// The first record of each path: it holds the state before join.
fn first_records(records: &[Record]) -> HashMap<PathBuf, u64> {
    let mut out = HashMap::new();
    for r in records.iter().filter(|r| r.event == Event::Begin) {
        if let Some(
            Change::File { path, .. } | Change::Symlink { path, .. } | Change::Dir { path },
        ) = &r.change
        {
            out.entry(path.clone()).or_insert(r.seq);
        }
    }
    out
}

/// What cleanup must keep: the files the journal restores, and every path it knows.
pub fn keep(root: &Root, records: &[Record]) -> Keep {
    let firsts = first_records(records);
    let mut restored = Vec::new();
    for r in records.iter().filter(|r| r.event == Event::Begin) {
        if let Some(Change::File {
            path,
            prior: Some(_),
        }) = &r.change
        {
            if firsts.get(path) == Some(&r.seq) {
                if let Ok(real) = root.resolve(path) {
                    restored.push(real);
                }
            }
        }
    }
    Keep {
        restored,
        journaled: firsts.into_keys().collect(),
        preexisting: preexisting(root, records),
    }
}

/// The real paths of what the CNI directories held before join: the deepest of each branch
/// (keeping a path keeps the way to it; a directory listed with nothing below it, empty then
/// or listed alone, is kept whole).
fn preexisting(root: &Root, records: &[Record]) -> Vec<PathBuf> {
    let found: Vec<&PathBuf> = records
        .iter()
        .filter(|r| r.event == Event::Begin)
        .filter_map(|r| match &r.change {
            Some(Change::Found { entries, .. }) => Some(entries),
            _ => None,
        })
        .flatten()
        .collect();
    let deepest = |p: &PathBuf| !found.iter().any(|q| *q != p && q.starts_with(p));
    found
        .iter()
        .copied()
        .filter(|p| deepest(p))
        .filter_map(|p| root.resolve(p).ok())
        .collect()
}

fn is_state_path(p: &Path) -> bool {
    let state = Path::new(journal::STATE_DIR);
    p.starts_with(state) || state.starts_with(p)
}

/// Undoes every change not undone yet, newest first. Returns whether all of them are undone.
pub fn replay(ctx: &mut Ctx<'_>, mut journal: Option<&mut Journal>, records: &[Record]) -> bool {
    let firsts = first_records(records);
    let undone: HashSet<u64> = records
        .iter()
        .filter(|r| r.event == Event::Undone)
        .map(|r| r.seq)
        .collect();
    let covered: HashSet<String> = records
        .iter()
        .filter_map(|r| match &r.change {
            Some(Change::PackagesAdded { packages, .. }) => Some(packages.iter().cloned()),
            _ => None,
        })
        .flatten()
        .collect();
    let mut seen = HashSet::new();
    let mut complete = true;
    for r in records.iter().rev().filter(|r| r.event == Event::Begin) {
        let Some(change) = &r.change else { continue };
        if !seen.insert(r.seq) || undone.contains(&r.seq) {
            continue;
        }
        match undo(
            ctx,
            change,
            firsts.get(change_path(change).unwrap_or(Path::new(""))) == Some(&r.seq),
            &covered,
        ) {
            Undo::Done if !ctx.opts.dry_run => {
                complete &= record_undone(ctx, journal.as_deref_mut(), r.seq)
            }
            Undo::Problem => complete = false,
            _ => {}
        }
    }
    if ctx.fx.host && !ctx.opts.dry_run && touched_units(records) {
        if let Err(e) = ctx.fx.systemd.daemon_reload() {
            tracing::warn!("systemctl daemon-reload after restoring units: {e}");
        }
    }
    complete
}

fn change_path(change: &Change) -> Option<&Path> {
    match change {
        Change::File { path, .. } | Change::Symlink { path, .. } | Change::Dir { path } => {
            Some(path)
        }
        _ => None,
    }
}

fn touched_units(records: &[Record]) -> bool {
    records.iter().any(|r| {
        matches!(&r.change, Some(Change::File { path, .. }) if path.starts_with("/etc/systemd"))
    })
}

fn record_undone(ctx: &mut Ctx<'_>, journal: Option<&mut Journal>, seq: u64) -> bool {
    let Some(j) = journal else { return true };
    match j.undone(seq) {
        Ok(()) => true,
        Err(e) => {
            ctx.step(
                "journal",
                journal::JOURNAL_FILE,
                Outcome::Failed,
                e.to_string(),
            );
            false
        }
    }
}

/// One change undone. `first` says whether this record holds the path's state before join
/// (a later record of the same path would restore join's own bytes).
fn undo(ctx: &mut Ctx<'_>, change: &Change, first: bool, covered: &HashSet<String>) -> Undo {
    match change {
        Change::File { path, prior } if first => {
            sweep(ctx, path);
            undo_file(ctx, path, prior.as_ref())
        }
        Change::Symlink { path, prior } if first => {
            sweep(ctx, path);
            undo_symlink(ctx, path, prior.as_deref())
        }
        Change::Dir { path } if first && !is_state_path(path) => remove_dir(ctx, path),
        Change::Sysctl { key, prior } => undo_sysctl(ctx, key, prior),
        Change::Module { name } => {
            ctx.step(
                "module",
                name.clone(),
                Outcome::Skipped,
                "left loaded: unloading could break other users; its load-at-boot file is removed",
            );
            Undo::Done
        }
        Change::SwapOff { devices } => undo_swap(ctx, devices),
        Change::Package { manager, name } if !covered.contains(name) => {
            undo_packages(ctx, manager, std::slice::from_ref(name))
        }
        // What the install added is recorded next, and removed from that record.
        Change::Package { .. } => Undo::Done,
        Change::PackagesAdded { manager, packages } => undo_packages(ctx, manager, packages),
        Change::ImagesImported { runtime, refs } => undo_images(ctx, runtime, refs),
        Change::UnitEnabled { unit } => undo_unit(ctx, "disable", unit),
        Change::UnitStarted {
            unit,
            was_active: false,
        } => undo_unit(ctx, "stop", unit),
        _ => Undo::Skip,
    }
}

/// A join killed mid-write leaves its temporary file beside the target.
fn sweep(ctx: &Ctx<'_>, path: &Path) {
    if !ctx.opts.dry_run {
        let _ = ctx.fx.root.sweep_temps(path);
    }
}

/// Why a file join created goes.
const CREATED: &str = "join created it (the journal records no earlier file there)";

fn undo_file(ctx: &mut Ctx<'_>, path: &Path, prior: Option<&Prior>) -> Undo {
    match prior {
        Some(p) => restore_file(ctx, path, p),
        None => remove_path(ctx, path, "remove", CREATED).into(),
    }
}

/// Writes the backup's bytes back with their mode and owner; a path that became a directory,
/// symlink or special file is refused.
fn restore_file(ctx: &mut Ctx<'_>, path: &Path, p: &Prior) -> Undo {
    let before = ctx.seen(path);
    let shown = path.display().to_string();
    let backup = PathBuf::from(journal::BACKUP_DIR).join(&p.backup);
    let Ok(Some(bytes)) = ctx.fx.root.read(&backup) else {
        ctx.step("restore", shown, Outcome::Failed, "its backup is missing");
        let why = format!(
            "join changed it, and its backup {} is missing",
            backup.display()
        );
        ctx.audit_now(path, Action::Failed, before, why);
        return Undo::Problem;
    };
    let mode = format!("mode {:04o}", p.mode);
    let why = format!(
        "join changed it: restored from the backup journaled before join wrote it ({mode}{})",
        match (p.uid, p.gid) {
            (Some(u), Some(g)) => format!(", owner {u}:{g}"),
            _ => String::new(),
        }
    );
    if ctx.opts.dry_run {
        ctx.step("restore", shown, Outcome::WouldDo, mode);
        let after = crate::effects::seen::Seen::of_bytes(&bytes, p.mode);
        ctx.audit(path, Action::WouldRestore, before, after, why);
        return Undo::Skip;
    }
    let outcome = write_back(ctx, path, &bytes, p);
    let action = match outcome {
        Outcome::Done => Action::Restored,
        Outcome::Failed => Action::Failed,
        _ => Action::Refused,
    };
    let detail = ctx
        .steps
        .last()
        .map(|s| s.detail.clone())
        .unwrap_or_default();
    let why = if action == Action::Restored {
        why
    } else {
        detail
    };
    ctx.audit_now(path, action, before, why);
    outcome.into()
}

/// The write of [`restore_file`], as one step.
fn write_back(ctx: &mut Ctx<'_>, path: &Path, bytes: &[u8], p: &Prior) -> Outcome {
    let root = &ctx.fx.root;
    let shown = path.display().to_string();
    let mode = format!("mode {:04o}", p.mode);
    let written = match root.inspect(path) {
        Ok(Existing::File { .. } | Existing::Absent) => root.write_atomic(path, bytes, p.mode),
        Ok(Existing::Special(kind)) => Err(crate::effects::fs::FsError::Special {
            path: shown.clone(),
            kind,
        }),
        Ok(_) => {
            ctx.step(
                "restore",
                shown,
                Outcome::Refused,
                "the path is no longer a regular file",
            );
            return Outcome::Refused;
        }
        Err(e) => Err(e),
    };
    let owned = written.and_then(|()| match (p.uid, p.gid) {
        (Some(uid), Some(gid)) => root.chown(path, uid, gid),
        _ => Ok(()),
    });
    match owned {
        Ok(()) => ctx.step("restore", shown, Outcome::Done, mode),
        Err(e) => ctx.step("restore", shown, Outcome::Refused, e.to_string()),
    }
    ctx.steps.last().map_or(Outcome::Failed, |s| s.outcome)
}

fn undo_symlink(ctx: &mut Ctx<'_>, path: &Path, prior: Option<&Path>) -> Undo {
    let shown = path.display().to_string();
    let Some(to) = prior else {
        return remove_path(ctx, path, "remove", CREATED).into();
    };
    let before = ctx.seen(path);
    let why = format!("join changed it: the link to {} put back", to.display());
    if ctx.opts.dry_run {
        ctx.step("restore", shown, Outcome::WouldDo, "");
        let after = crate::effects::seen::Seen::Symlink {
            target: to.display().to_string(),
        };
        ctx.audit(path, Action::WouldRestore, before, after, why);
        return Undo::Skip;
    }
    match ctx.fx.root.symlink_atomic(path, to) {
        Ok(()) => {
            ctx.step(
                "restore",
                shown,
                Outcome::Done,
                format!("-> {}", to.display()),
            );
            ctx.audit_now(path, Action::Restored, before, why);
        }
        Err(e) => {
            ctx.step("restore", shown, Outcome::Refused, e.to_string());
            ctx.audit_now(path, Action::Refused, before, e.to_string());
        }
    }
    ctx.steps.last().map_or(Undo::Problem, |s| s.outcome.into())
}

fn remove_dir(ctx: &mut Ctx<'_>, path: &Path) -> Undo {
    use crate::effects::seen::Seen;
    let shown = path.display().to_string();
    let why = "join created this directory";
    if ctx.opts.dry_run {
        ctx.step("remove-dir", shown, Outcome::WouldDo, "if empty");
        let before = ctx.seen(path);
        ctx.audit(
            path,
            Action::WouldRemove,
            before,
            Seen::Absent,
            format!("{why}; removed if empty"),
        );
        return Undo::Skip;
    }
    match ctx.fx.root.inspect(path) {
        Ok(Existing::Dir) => match ctx.fx.root.remove_empty_dir(path) {
            Ok(true) => {
                ctx.step("remove-dir", shown, Outcome::Done, "");
                ctx.audit(path, Action::Removed, Seen::Dir, Seen::Absent, why);
            }
            Ok(false) => {
                let kept = "kept: it holds files node-attach did not make";
                ctx.step("remove-dir", shown, Outcome::Skipped, kept);
                ctx.audit(
                    path,
                    Action::Kept,
                    Seen::Dir,
                    Seen::Dir,
                    format!("{why}; {kept}"),
                );
                return Undo::Skip;
            }
            Err(e) => {
                ctx.step("remove-dir", shown, Outcome::Failed, e.to_string());
                ctx.audit_now(path, Action::Failed, Seen::Dir, e.to_string());
            }
        },
        Ok(Existing::Absent) => return Undo::Done,
        Ok(_) => {
            let why = "no longer a directory";
            ctx.step("remove-dir", shown, Outcome::Refused, why);
            let before = ctx.seen(path);
            ctx.audit_now(path, Action::Refused, before, why);
        }
        Err(e) => ctx.step("remove-dir", shown, Outcome::Refused, e.to_string()),
    }
    ctx.steps.last().map_or(Undo::Problem, |s| s.outcome.into())
}

/// The outcome of a host step: would-do in a dry run, done or failed otherwise.
fn host_step(
    ctx: &mut Ctx<'_>,
    kind: &'static str,
    target: String,
    act: impl FnOnce(&Ctx<'_>) -> Result<(), String>,
) -> Undo {
    if !ctx.fx.host {
        return Undo::Skip;
    }
    if ctx.opts.dry_run {
        ctx.step(kind, target, Outcome::WouldDo, "");
        return Undo::Skip;
    }
    match act(ctx) {
        Ok(()) => ctx.step(kind, target, Outcome::Done, ""),
        Err(e) => ctx.step(kind, target, Outcome::Failed, e),
    }
    ctx.steps.last().map_or(Undo::Problem, |s| s.outcome.into())
}

fn undo_sysctl(ctx: &mut Ctx<'_>, key: &str, prior: &str) -> Undo {
    host_step(ctx, "sysctl", format!("{key}={prior}"), |ctx| {
        ctx.fx
            .kernel
            .set_sysctl(key, prior)
            .map_err(|e| e.to_string())
    })
}

fn undo_swap(ctx: &mut Ctx<'_>, devices: &[String]) -> Undo {
    host_step(ctx, "swap-on", devices.join(","), |ctx| {
        ctx.fx.kernel.swap_on(devices).map_err(|e| e.to_string())
    })
}

fn undo_packages(ctx: &mut Ctx<'_>, manager: &str, packages: &[String]) -> Undo {
    let shown = packages.join(" ");
    if ctx.opts.keep_packages {
        let why = "kept (--keep-packages)";
        ctx.step("package", shown, Outcome::Skipped, why);
        return Undo::Skip;
    }
    host_step(
        ctx,
        "package",
        format!("{manager} remove {shown}"),
        |ctx| match &ctx.fx.packages {
            Some(pm) if pm.name() == manager => pm.remove(packages).map_err(|e| e.to_string()),
            _ => Err(format!("package manager {manager} is not available")),
        },
    )
}

fn undo_images(ctx: &mut Ctx<'_>, runtime: &str, refs: &[String]) -> Undo {
    let kind = match runtime {
        "docker" => crate::sources::values::RuntimeKind::Docker,
        _ => crate::sources::values::RuntimeKind::Containerd,
    };
    host_step(
        ctx,
        "image",
        format!("{runtime} remove {}", refs.join(" ")),
        |ctx| {
            let mut errors = Vec::new();
            for r in refs {
                if let Err(e) = ctx.fx.images.remove(kind, r) {
                    errors.push(e.to_string());
                }
            }
            if errors.is_empty() {
                Ok(())
            } else {
                Err(errors.join("; "))
            }
        },
    )
}

fn undo_unit(ctx: &mut Ctx<'_>, verb: &'static str, unit: &str) -> Undo {
    host_step(ctx, "unit", format!("{verb} {unit}"), |ctx| {
        let sd = &ctx.fx.systemd;
        match verb {
            "disable" => sd.disable(unit),
            _ => sd.stop(unit),
        }
        .map_err(|e| e.to_string())
    })
}

/// Removes the state directory, with its backups and journal, once every undo is done: the
/// journal first says so (`reset-complete`), then one rename takes the state directory (with
/// the directories join made to hold it, when they hold nothing else) out of place, and it is
/// deleted. A crash before the rename leaves a journal whose rerun has nothing left to undo; a
/// crash after it leaves a staging directory the next run sweeps.
pub fn finalize(ctx: &mut Ctx<'_>, journal: Option<Journal>, records: &[Record], complete: bool) {
    let state = journal::STATE_DIR;
    if ctx.opts.dry_run {
        ctx.step(
            "remove",
            state,
            Outcome::WouldDo,
            "the journal, backups and state",
        );
        return;
    }
    if !complete {
        let why = "kept with its backups: some undo steps did not complete; fix what they name and rerun reset";
        ctx.step("journal", journal::JOURNAL_FILE, Outcome::Skipped, why);
        return;
    }
    let recorded = records.iter().any(|r| r.event == Event::ResetComplete);
    if let (Some(mut j), false) = (journal, recorded) {
        if let Err(e) = j.reset_complete() {
            ctx.step(
                "journal",
                journal::JOURNAL_FILE,
                Outcome::Failed,
                e.to_string(),
            );
            return;
        }
        ctx.step(
            "journal",
            journal::JOURNAL_FILE,
            Outcome::Done,
            "every undo is done",
        );
    }
    let top = removable_top(&ctx.fx.root, records);
    let shown = top.display().to_string();
    let before = ctx.seen(&top);
    match ctx.fx.root.remove_tree_atomically(&top) {
        Ok(()) => {
            ctx.step(
                "remove",
                shown,
                Outcome::Done,
                "the journal, backups and state",
            );
            let why = "node-attach's own state: the journal, join's backups and its records, now that every undo is done";
            ctx.audit_now(&top, Action::Removed, before, why);
        }
        Err(e) => {
            ctx.step("remove", shown, Outcome::Failed, e.to_string());
            ctx.audit_now(&top, Action::Failed, before, e.to_string());
        }
    }
}

/// The outermost directory join made on the way to its state directory that holds nothing but
/// that way (on a scratch root, `/var`; on a host, the state directory itself).
fn removable_top(root: &Root, records: &[Record]) -> PathBuf {
    let state = PathBuf::from(journal::STATE_DIR);
    let mut created: Vec<PathBuf> = records
        .iter()
        .filter(|r| r.event == Event::Begin)
        .filter_map(|r| match &r.change {
            Some(Change::Dir { path }) if state.starts_with(path) && *path != state => {
                Some(path.clone())
            }
            _ => None,
        })
        .collect();
    created.sort_by_key(|p| p.components().count());
    created.dedup();
    created
        .into_iter()
        .find(|top| holds_only_the_way(root, top, &state))
        .unwrap_or(state)
}

/// Whether each directory from `top` down to `state`'s parent holds only the next one.
fn holds_only_the_way(root: &Root, top: &Path, state: &Path) -> bool {
    let mut dir = top.to_path_buf();
    while dir != state {
        let Ok(rest) = state.strip_prefix(&dir) else {
            return false;
        };
        let Some(next) = rest.components().next() else {
            return false;
        };
        let next = next.as_os_str().to_string_lossy().into_owned();
        if root.list_dir(&dir).unwrap_or_default() != [next.clone()] {
            return false;
        }
        dir.push(next);
    }
    true
}
