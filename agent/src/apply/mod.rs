//! Planned steps and their application through the journal.
//!
//! Join's phases call one [`Applier`] for every change (files, directories, symlinks, sysctls,
//! swap, modules, packages, units, API calls). With `--dry-run` it only records a [`Step`] (a
//! file's step carries its diff; secret files show only their size and mode); otherwise it checks
//! the current state, journals the change with what undoing it needs, makes it, and confirms it.
//! A step whose target already holds is `unchanged` and not journaled, which makes re-runs
//! converge without repeating work.

pub mod install;
pub mod journal;
pub mod lock;
pub mod records;

use crate::apply::journal::{Change, Journal, JournalError, Prior};
use crate::effects::fs::{Existing, FsError, Root};
use crate::effects::{EffectError, Effects};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// What happened, or would happen, to one step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Dry run: it would change.
    WouldChange,
    /// It changed.
    Changed,
    /// It already held.
    Unchanged,
    /// Not done (host step with a root other than `/`).
    Skipped,
}

impl Outcome {
    /// Whether the step changed something (or, in a dry run, would).
    pub fn changes(self) -> bool {
        matches!(self, Outcome::Changed | Outcome::WouldChange)
    }
}

/// One step of a join, for the plan and the report.
#[derive(Clone, Debug, Serialize)]
pub struct Step {
    /// The phase it belongs to.
    pub phase: String,
    /// `file`, `dir`, `symlink`, `remove`, `sysctl`, `module`, `swap-off`, `package`, `unit`,
    /// `api`.
    pub kind: &'static str,
    /// The path, unit, key or API call.
    pub target: String,
    /// Mode, value, diff or reason.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub detail: String,
    /// Outcome.
    pub outcome: Outcome,
}

/// Why a step failed.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// Filesystem.
    #[error(transparent)]
    Fs(#[from] FsError),
    /// Journal.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// A host command.
    #[error(transparent)]
    Effect(#[from] EffectError),
}

/// Applies (or plans) steps.
pub struct Applier<'a> {
    effects: &'a Effects,
    journal: Option<Journal>,
    phase: String,
    /// Paths a dry run has planned to create, so later steps see them as present.
    planned: std::collections::HashSet<PathBuf>,
    /// Whether systemd has re-read its unit files since this run last changed one (or
    /// installed a package): `enable` then need not have systemctl reload it a second time.
    manager_reloaded: bool,
    /// Every step so far.
    pub steps: Vec<Step>,
}

const SKIP_REASON: &str =
    "--root is not /: host services, packages and kernel settings are left alone";

/// Every path under `dir` (not following symlinks, not crossing into another filesystem); only
/// its entries when there are more than [`journal::FOUND_LIMIT`].
fn found_under(root: &Root, dir: &Path) -> Result<Vec<PathBuf>, ApplyError> {
    let Some(dev) = root.dir_device(dir) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        if out.len() > journal::FOUND_LIMIT {
            let top = root.list_dir(dir)?.into_iter().map(|n| dir.join(n));
            return Ok(top.take(journal::FOUND_LIMIT).collect());
        }
        if path != dir {
            out.push(path.clone());
        }
        if root.dir_device(&path) == Some(dev) {
            stack.extend(root.list_dir(&path)?.into_iter().map(|n| path.join(n)));
        }
    }
    out.sort();
    Ok(out)
}

/// A unified diff of two texts (two lines of context), in order, as `diff -u` shows it
/// without the file headers.
fn line_diff(old: &str, new: &str) -> String {
    similar::TextDiff::from_lines(old, new)
        .unified_diff()
        .context_radius(2)
        .to_string()
}

/// A file for [`Applier::files`]: its path, mode and bytes.
pub type FileSpec<'b> = (&'b Path, u32, &'b [u8]);

/// A dry run's account of a file it would write: the diff, or only the size of a secret.
fn planned_file(existing: &Existing, bytes: &[u8], mode: u32, secret: bool) -> String {
    match (existing, secret) {
        (_, true) => format!(
            "mode {mode:04o}, {} bytes (contents hidden: secret)",
            bytes.len()
        ),
        (Existing::File { bytes: old, .. }, false) => format!(
            "mode {mode:04o}\n{}",
            line_diff(
                &String::from_utf8_lossy(old),
                &String::from_utf8_lossy(bytes)
            )
        ),
        (_, false) => format!(
            "mode {mode:04o} (new)\n{}",
            String::from_utf8_lossy(bytes)
                .lines()
                .map(|l| format!("+{l}\n"))
                .collect::<String>()
        ),
    }
}

/// Where systemd reads unit files from (a change there needs a daemon-reload to be seen).
const UNIT_DIRS: &[&str] = &[
    "/etc/systemd/",
    "/run/systemd/",
    "/lib/systemd/",
    "/usr/lib/systemd/",
];

/// Whether a step of this kind on this target can change what systemd would load: a unit
/// file or drop-in written, linked or removed, or a package (which may ship units).
fn changes_units(kind: &str, target: &str) -> bool {
    match kind {
        "file" | "symlink" | "remove" => UNIT_DIRS.iter().any(|d| target.starts_with(d)),
        "package" => true,
        _ => false,
    }
}

impl<'a> Applier<'a> {
    /// A dry-run applier: records steps, changes nothing.
    pub fn plan(effects: &'a Effects) -> Applier<'a> {
        let mut a = Applier {
            effects,
            journal: None,
            phase: "journal".into(),
            planned: Default::default(),
            manager_reloaded: false,
            steps: Vec::new(),
        };
        for (dir, mode) in [
            ("/var", 0o755),
            ("/var/lib", 0o755),
            (crate::apply::journal::STATE_DIR, 0o700),
            (crate::apply::journal::BACKUP_DIR, 0o700),
        ] {
            let p = Path::new(dir);
            if effects.root.inspect(p).ok() == Some(Existing::Absent) {
                a.planned.insert(p.to_path_buf());
                a.record("dir", dir, format!("{mode:o}"), Outcome::WouldChange);
            }
        }
        a
    }

    /// An applier that changes things, journaling each change.
    pub fn apply(effects: &'a Effects, journal: Journal) -> Applier<'a> {
        let created = journal.created.clone();
        let mut a = Applier {
            effects,
            journal: Some(journal),
            phase: "journal".into(),
            planned: Default::default(),
            manager_reloaded: false,
            steps: Vec::new(),
        };
        for dir in created {
            let mode = if dir.starts_with(crate::apply::journal::STATE_DIR) {
                0o700
            } else {
                0o755
            };
            a.record(
                "dir",
                dir.display().to_string(),
                format!("{mode:o}"),
                Outcome::Changed,
            );
        }
        a
    }

    /// Whether this is a dry run.
    pub fn dry_run(&self) -> bool {
        self.journal.is_none()
    }

    /// The effects in use.
    pub fn effects(&self) -> &Effects {
        self.effects
    }

    /// What `path` held before join: the journal's backup when join already changed it, the
    /// file as it is otherwise.
    pub fn original(&self, path: &Path) -> Result<Option<Vec<u8>>, ApplyError> {
        if let Some(j) = &self.journal {
            if let Some(before) = j.original(path)? {
                return Ok(before);
            }
        }
        Ok(self.effects.root.read(path)?)
    }

    /// The journal (None in a dry run).
    pub fn journal(&mut self) -> Option<&mut Journal> {
        self.journal.as_mut()
    }

    /// Starts a phase; marks it in the journal.
    pub fn enter(&mut self, phase: &str) -> Result<(), ApplyError> {
        self.phase = phase.to_owned();
        if let Some(j) = &mut self.journal {
            j.phase(phase, journal::PHASE_STARTED)?;
        }
        Ok(())
    }

    /// Marks the current phase finished.
    pub fn finish(&mut self, status: &str) -> Result<(), ApplyError> {
        let phase = self.phase.clone();
        if let Some(j) = &mut self.journal {
            j.phase(&phase, status)?;
        }
        Ok(())
    }

    /// Steps of the current phase that changed or would change something.
    pub fn changes_in_phase(&self) -> usize {
        self.steps
            .iter()
            .filter(|s| {
                s.phase == self.phase
                    && matches!(s.outcome, Outcome::Changed | Outcome::WouldChange)
            })
            .count()
    }

    fn record(
        &mut self,
        kind: &'static str,
        target: impl Into<String>,
        detail: impl Into<String>,
        outcome: Outcome,
    ) -> Outcome {
        let target = target.into();
        if outcome.changes() && changes_units(kind, &target) {
            self.manager_reloaded = false;
        }
        self.steps.push(Step {
            phase: self.phase.clone(),
            kind,
            target,
            detail: detail.into(),
            outcome,
        });
        outcome
    }

    fn journaled<T>(
        &mut self,
        change: Change,
        act: impl FnOnce(&Effects) -> Result<T, ApplyError>,
    ) -> Result<T, ApplyError> {
        let journal = self
            .journal
            .as_mut()
            .unwrap_or_else(|| unreachable!("only called when applying"));
        let seq = journal.begin(change)?;
        let out = act(self.effects)?;
        self.journal
            .as_mut()
            .unwrap_or_else(|| unreachable!("applying"))
            .done(seq)?;
        Ok(out)
    }

    /// Records what `dir` holds, the first time join runs on this machine (a rerun, after the
    /// kubelet and CNI plugins wrote there, records nothing): [`Change::Found`]. Only when
    /// applying.
    pub fn record_found(&mut self, dir: &Path) -> Result<(), ApplyError> {
        let root = self.effects.root.clone();
        let Some(j) = &mut self.journal else {
            return Ok(());
        };
        if j.knows(|c| matches!(c, Change::Found { dir: d, .. } if d == dir)) {
            return Ok(());
        }
        let entries = found_under(&root, dir)?;
        let seq = j.begin(Change::Found {
            dir: dir.to_path_buf(),
            entries,
        })?;
        j.done(seq)?;
        Ok(())
    }

    fn skipped(&mut self, kind: &'static str, target: String) -> Result<Outcome, ApplyError> {
        if let Some(j) = &mut self.journal {
            let what = format!("{kind} {target}");
            if !j.knows(|c| matches!(c, Change::Skipped { what: w, .. } if *w == what)) {
                let seq = j.begin(Change::Skipped {
                    what,
                    reason: SKIP_REASON.into(),
                })?;
                j.done(seq)?;
            }
        }
        Ok(self.record(kind, target, SKIP_REASON, Outcome::Skipped))
    }

    /// Ensures a directory (and missing parents) exist, new ones with `mode`.
    pub fn dir(&mut self, path: &Path, mode: u32) -> Result<Outcome, ApplyError> {
        let missing = self.missing_dirs(path)?;
        if missing.is_empty() {
            return Ok(Outcome::Unchanged);
        }
        // Missing parents get the usual 0755; only the directory asked for gets `mode`.
        let mode_of = |p: &Path| if p == path { mode } else { 0o755 };
        if self.dry_run() {
            for p in missing {
                let detail = format!("{:o}", mode_of(&p));
                let target = p.display().to_string();
                self.planned.insert(p);
                self.record("dir", target, detail, Outcome::WouldChange);
            }
            return Ok(Outcome::WouldChange);
        }
        self.make_dirs(missing, mode_of, None)?;
        Ok(Outcome::Changed)
    }

    /// The directories missing on the way to `path`, itself included, outermost first.
    fn missing_dirs(&self, path: &Path) -> Result<Vec<PathBuf>, ApplyError> {
        let mut missing = Vec::new();
        let mut cur = Some(path);
        while let Some(p) = cur {
            if p == Path::new("/") || self.planned.contains(p) {
                break;
            }
            match self.effects.root.inspect(p)? {
                Existing::Absent => missing.push(p.to_path_buf()),
                _ => break,
            }
            cur = p.parent();
        }
        missing.reverse();
        Ok(missing)
    }

    /// Makes the `missing` directories, outermost first. They are recorded, and with them the
    /// change `then` that needs them, before the first is made (one sync for all); returns
    /// `then`'s sequence number. Only when applying.
    fn make_dirs(
        &mut self,
        missing: Vec<PathBuf>,
        mode_of: impl Fn(&Path) -> u32,
        then: Option<Change>,
    ) -> Result<Option<u64>, ApplyError> {
        let journal = self
            .journal
            .as_mut()
            .unwrap_or_else(|| unreachable!("only called when applying"));
        let changes = missing.iter().map(|p| Change::Dir { path: p.clone() });
        let mut seqs = journal.begin_each(changes.chain(then))?;
        let then_seq = (seqs.len() > missing.len()).then(|| seqs.pop()).flatten();
        let mut seqs = seqs.into_iter();
        for p in missing {
            let seq = seqs
                .next()
                .unwrap_or_else(|| unreachable!("one record per dir"));
            let m = mode_of(&p);
            if let Err(e) = self.effects.root.mkdir_all(&p, m) {
                self.abandon(seqs.chain(then_seq));
                return Err(e.into());
            }
            self.done(seq)?;
            self.record(
                "dir",
                p.display().to_string(),
                format!("{m:o}"),
                Outcome::Changed,
            );
        }
        Ok(then_seq)
    }

    /// Writes a file with exactly `mode`; parents are created 0755. `secret` hides the contents
    /// from the plan.
    pub fn file(
        &mut self,
        path: &Path,
        mode: u32,
        bytes: &[u8],
        secret: bool,
    ) -> Result<Outcome, ApplyError> {
        let parent = path.parent().unwrap_or(Path::new("/"));
        if self.dry_run() {
            self.dir(parent, 0o755)?;
        }
        // Missing parents (0755) are recorded with the file, in one sync.
        let missing = match self.dry_run() {
            true => Vec::new(),
            false => self.missing_dirs(parent)?,
        };
        let existing = match missing.is_empty() {
            true => self.effects.root.inspect(path)?,
            false => Existing::Absent,
        };
        let target = path.display().to_string();
        if let Existing::File {
            bytes: old,
            mode: old_mode,
            ..
        } = &existing
        {
            if old == bytes && *old_mode == mode {
                return Ok(self.record("file", target, format!("{mode:04o}"), Outcome::Unchanged));
            }
        }
        if self.dry_run() {
            let detail = planned_file(&existing, bytes, mode, secret);
            self.planned.insert(path.to_path_buf());
            return Ok(self.record("file", target, detail, Outcome::WouldChange));
        }
        let prior = self.prior(path, &existing)?;
        let change = Change::File {
            path: path.to_path_buf(),
            prior,
        };
        let seq = self
            .make_dirs(missing, |_| 0o755, Some(change))?
            .unwrap_or_else(|| unreachable!("the file's own record"));
        self.effects.root.write_atomic(path, bytes, mode)?;
        self.journal
            .as_mut()
            .unwrap_or_else(|| unreachable!("applying"))
            .done(seq)?;
        Ok(self.record("file", target, format!("{mode:04o}"), Outcome::Changed))
    }

    /// Writes each of `files` (path, mode, bytes) as [`Applier::file`] does, in order, with one
    /// journal sync before the first is written instead of one each: every file's record, with
    /// its backup and the directories it needs (0755), is on the disk before anything changes.
    /// Each file is still written atomically and synced, its directory too. Returns whether any
    /// changed.
    pub fn files(&mut self, files: &[FileSpec<'_>]) -> Result<bool, ApplyError> {
        if self.dry_run() {
            let mut changed = false;
            for (path, mode, bytes) in files {
                changed |= self.file(path, *mode, bytes, false)?.changes();
            }
            return Ok(changed);
        }
        let mut planned: Vec<(Vec<PathBuf>, Option<&FileSpec<'_>>)> = Vec::new();
        let mut new_dirs = std::collections::HashSet::new();
        let mut changes = Vec::new();
        for file in files {
            let (path, mode, bytes) = *file;
            let parent = path.parent().unwrap_or(Path::new("/"));
            let mut missing = self.missing_dirs(parent)?;
            let existing = match missing.is_empty() {
                true => self.effects.root.inspect(path)?,
                false => Existing::Absent,
            };
            // A directory an earlier file of the batch makes is made once.
            missing.retain(|d| new_dirs.insert(d.clone()));
            if matches!(&existing, Existing::File { bytes: old, mode: m, .. } if old == bytes && *m == mode)
            {
                // It is there, so its directories are too.
                planned.push((Vec::new(), None));
                continue;
            }
            let prior = self.prior(path, &existing)?;
            changes.extend(missing.iter().map(|p| Change::Dir { path: p.clone() }));
            changes.push(Change::File {
                path: path.to_path_buf(),
                prior,
            });
            planned.push((missing, Some(file)));
        }
        let journal = self
            .journal
            .as_mut()
            .unwrap_or_else(|| unreachable!("applying"));
        let mut seqs = journal.begin_each(changes)?.into_iter();
        let written = self.write_planned(planned, files, &mut seqs);
        if written.is_err() {
            self.abandon(seqs);
        }
        written
    }

    /// Makes the directories and writes the files [`Applier::files`] planned and recorded,
    /// taking each one's sequence number from `seqs` just before making it; on an error,
    /// `seqs` holds the numbers of what was not started.
    fn write_planned(
        &mut self,
        planned: Vec<(Vec<PathBuf>, Option<&FileSpec<'_>>)>,
        files: &[FileSpec<'_>],
        seqs: &mut impl Iterator<Item = u64>,
    ) -> Result<bool, ApplyError> {
        let mut changed = false;
        for ((missing, file), (path, mode, _)) in planned.into_iter().zip(files) {
            for dir in missing {
                let seq = seqs
                    .next()
                    .unwrap_or_else(|| unreachable!("one record per dir"));
                self.effects.root.mkdir_all(&dir, 0o755)?;
                self.done(seq)?;
                self.record("dir", dir.display().to_string(), "755", Outcome::Changed);
            }
            let target = path.display().to_string();
            let Some(&(path, mode, bytes)) = file else {
                self.record("file", target, format!("{mode:04o}"), Outcome::Unchanged);
                continue;
            };
            let seq = seqs
                .next()
                .unwrap_or_else(|| unreachable!("one record per file"));
            self.effects.root.write_atomic(path, bytes, mode)?;
            self.done(seq)?;
            self.record("file", target, format!("{mode:04o}"), Outcome::Changed);
            changed = true;
        }
        Ok(changed)
    }

    /// Voids the records of changes a batch recorded and never started (best effort: the
    /// batch's own error is what the run reports; if this fails too, reset undoes them as
    /// begun, which tolerates a change never made).
    fn abandon(&mut self, seqs: impl Iterator<Item = u64>) {
        let seqs: Vec<u64> = seqs.collect();
        if let Some(j) = &mut self.journal {
            if let Err(e) = j.abandon(&seqs) {
                tracing::warn!("recording {} changes as never started: {e}", seqs.len());
            }
        }
    }

    fn done(&mut self, seq: u64) -> Result<(), ApplyError> {
        if let Some(j) = &mut self.journal {
            j.done(seq)?;
        }
        Ok(())
    }

    /// What a file join is about to replace was before join, kept as a backup the first time
    /// join changes it; refuses anything but a regular file.
    fn prior(&mut self, path: &Path, existing: &Existing) -> Result<Option<Prior>, ApplyError> {
        let target = path.display().to_string();
        let journal = self
            .journal
            .as_mut()
            .unwrap_or_else(|| unreachable!("applying"));
        let prior = match existing {
            Existing::File {
                bytes: old,
                mode: old_mode,
                uid,
                gid,
            } if !journal.knows_path(path) => Some(Prior {
                mode: *old_mode,
                backup: journal.backup(old)?,
                uid: Some(*uid),
                gid: Some(*gid),
            }),
            Existing::Special(kind) => {
                return Err(ApplyError::Fs(FsError::Special { path: target, kind }))
            }
            Existing::Dir | Existing::Symlink(_) => {
                return Err(ApplyError::Fs(FsError::Io {
                    op: "write",
                    path: target,
                    source: std::io::Error::new(
                        std::io::ErrorKind::AlreadyExists,
                        "exists and is not a regular file",
                    ),
                }))
            }
            _ => None,
        };
        Ok(prior)
    }

    /// Points a symlink at `to` (an absolute target path as seen on the node).
    pub fn symlink(&mut self, path: &Path, to: &Path) -> Result<Outcome, ApplyError> {
        let existing = self.effects.root.inspect(path)?;
        let target = path.display().to_string();
        let detail = format!("-> {}", to.display());
        if existing == Existing::Symlink(to.to_path_buf()) {
            return Ok(self.record("symlink", target, detail, Outcome::Unchanged));
        }
        if self.dry_run() {
            return Ok(self.record("symlink", target, detail, Outcome::WouldChange));
        }
        let prior = match existing {
            Existing::Symlink(old) => Some(old),
            Existing::Absent => None,
            _ => {
                return Err(ApplyError::Fs(FsError::Io {
                    op: "symlink",
                    path: target,
                    source: std::io::Error::new(
                        std::io::ErrorKind::AlreadyExists,
                        "exists and is not a symlink",
                    ),
                }))
            }
        };
        let p = path.to_path_buf();
        let known = self.journal.as_ref().is_some_and(|j| j.knows_path(path));
        let prior = if known { None } else { prior };
        self.journaled(
            Change::Symlink {
                path: p.clone(),
                prior,
            },
            |fx| Ok(fx.root.symlink_atomic(&p, to)?),
        )?;
        Ok(self.record("symlink", target, detail, Outcome::Changed))
    }

    /// Removes a file join itself wrote earlier (bootstrap material).
    pub fn remove_own(&mut self, path: &Path) -> Result<Outcome, ApplyError> {
        let target = path.display().to_string();
        if self.effects.root.inspect(path)? == Existing::Absent && !self.planned.contains(path) {
            return Ok(Outcome::Unchanged);
        }
        if self.dry_run() {
            return Ok(self.record("remove", target, "", Outcome::WouldChange));
        }
        let p = path.to_path_buf();
        self.journaled(Change::Removed { path: p.clone() }, |fx| {
            Ok(fx.root.remove_file(&p).map(drop)?)
        })?;
        Ok(self.record("remove", target, "", Outcome::Changed))
    }

    /// Sets a sysctl at runtime (its persistence is a file in /etc/sysctl.d). A read-only
    /// /proc/sys is reported, and is fatal only when the value does not already hold.
    pub fn sysctl(&mut self, key: &str, value: &str) -> Result<Outcome, ApplyError> {
        if !self.effects.host {
            return self.skipped("sysctl", format!("{key}={value}"));
        }
        let current = self.effects.kernel.sysctl(key).unwrap_or_default();
        if current == value {
            return Ok(self.record("sysctl", format!("{key}={value}"), "", Outcome::Unchanged));
        }
        if self.dry_run() {
            return Ok(self.record(
                "sysctl",
                format!("{key}={value}"),
                format!("now {current:?}"),
                Outcome::WouldChange,
            ));
        }
        let (k, v) = (key.to_owned(), value.to_owned());
        self.journaled(
            Change::Sysctl {
                key: k.clone(),
                prior: current,
            },
            move |fx| Ok(fx.kernel.set_sysctl(&k, &v)?),
        )?;
        Ok(self.record("sysctl", format!("{key}={value}"), "", Outcome::Changed))
    }

    /// Loads a kernel module unless it is loaded or built in.
    pub fn module(&mut self, name: &str, present: bool) -> Result<Outcome, ApplyError> {
        if !self.effects.host {
            return self.skipped("module", name.to_owned());
        }
        if present {
            return Ok(self.record("module", name, "loaded or built in", Outcome::Unchanged));
        }
        if self.dry_run() {
            return Ok(self.record("module", name, "modprobe", Outcome::WouldChange));
        }
        let n = name.to_owned();
        self.journaled(Change::Module { name: n.clone() }, move |fx| {
            Ok(fx.kernel.load_module(&n)?)
        })?;
        Ok(self.record("module", name, "modprobe", Outcome::Changed))
    }

    /// Turns swap off (persistence is the fstab edit, a file step).
    pub fn swap_off(&mut self, devices: Vec<String>) -> Result<Outcome, ApplyError> {
        if !self.effects.host {
            return self.skipped("swap-off", devices.join(","));
        }
        if devices.is_empty() {
            return Ok(Outcome::Unchanged);
        }
        let target = devices.join(",");
        if self.dry_run() {
            return Ok(self.record("swap-off", target, "swapoff -a", Outcome::WouldChange));
        }
        self.journaled(Change::SwapOff { devices }, |fx| {
            Ok(fx.kernel.swap_off()?)
        })?;
        Ok(self.record("swap-off", target, "swapoff -a", Outcome::Changed))
    }

    /// Installs a package when it is missing.
    pub fn package(&mut self, name: &str, version: Option<&str>) -> Result<Outcome, ApplyError> {
        if !self.effects.host {
            return self.skipped("package", name.to_owned());
        }
        let Some(pm) = self.effects.packages.as_ref() else {
            return Err(ApplyError::Effect(EffectError {
                what: format!("installing {name}"),
                detail:
                    "no supported package manager (apt, dnf, yum) was found; install it by hand"
                        .into(),
            }));
        };
        if let Some(v) = pm.installed_version(name) {
            return Ok(self.record(
                "package",
                name,
                format!("installed {v}"),
                Outcome::Unchanged,
            ));
        }
        let detail = format!(
            "{} install {name}{}",
            pm.name(),
            version.map(|v| format!(" {v}")).unwrap_or_default()
        );
        if self.dry_run() {
            return Ok(self.record("package", name, detail, Outcome::WouldChange));
        }
        let manager = pm.name().to_owned();
        let n = name.to_owned();
        let added = self.journaled(
            Change::Package {
                manager: manager.clone(),
                name: n.clone(),
            },
            |fx| {
                let pm = fx
                    .packages
                    .as_ref()
                    .unwrap_or_else(|| unreachable!("checked above"));
                Ok(pm.install(&n, version)?)
            },
        )?;
        if !added.is_empty() {
            let j = self
                .journal
                .as_mut()
                .unwrap_or_else(|| unreachable!("applying"));
            let seq = j.begin(Change::PackagesAdded {
                manager,
                packages: added.clone(),
            })?;
            j.done(seq)?;
        }
        let detail = format!("{detail} (added {})", added.join(", "));
        Ok(self.record("package", name, detail, Outcome::Changed))
    }

    /// `systemctl daemon-reload`.
    pub fn daemon_reload(&mut self) -> Result<Outcome, ApplyError> {
        if !self.effects.host {
            return self.skipped("unit", "daemon-reload".into());
        }
        if self.dry_run() {
            return Ok(self.record("unit", "daemon-reload", "", Outcome::WouldChange));
        }
        self.effects.systemd.daemon_reload()?;
        let outcome = self.record("unit", "daemon-reload", "", Outcome::Changed);
        self.manager_reloaded = true;
        Ok(outcome)
    }

    /// Enables a unit. `systemctl enable` reloads systemd by itself; right after this run's own
    /// daemon-reload, with no unit file changed since, it only makes the install links
    /// (`--no-reload`): a reload costs a few hundred milliseconds on a busy machine, and the
    /// join's last steps before the kubelet starts are a reload (new unit files) and an enable.
    pub fn enable(&mut self, unit: &str) -> Result<Outcome, ApplyError> {
        if !self.effects.host {
            return self.skipped("unit", format!("enable {unit}"));
        }
        if self.effects.systemd.is_enabled(unit) {
            return Ok(self.record("unit", format!("enable {unit}"), "", Outcome::Unchanged));
        }
        if self.dry_run() {
            return Ok(self.record("unit", format!("enable {unit}"), "", Outcome::WouldChange));
        }
        let u = unit.to_owned();
        let reloaded = self.manager_reloaded;
        self.journaled(
            Change::UnitEnabled { unit: u.clone() },
            |fx| match reloaded {
                true => Ok(fx.systemd.enable_without_reload(&u)?),
                false => Ok(fx.systemd.enable(&u)?),
            },
        )?;
        Ok(self.record("unit", format!("enable {unit}"), "", Outcome::Changed))
    }

    /// Starts a unit, or restarts it when `restart` (its configuration changed).
    pub fn start(&mut self, unit: &str, restart: bool) -> Result<Outcome, ApplyError> {
        let verb = if restart { "restart" } else { "start" };
        if !self.effects.host {
            return self.skipped("unit", format!("{verb} {unit}"));
        }
        let active = self.effects.systemd.is_active(unit);
        if active && !restart {
            return Ok(self.record(
                "unit",
                format!("start {unit}"),
                "active",
                Outcome::Unchanged,
            ));
        }
        if self.dry_run() {
            return Ok(self.record("unit", format!("{verb} {unit}"), "", Outcome::WouldChange));
        }
        let u = unit.to_owned();
        self.journaled(
            Change::UnitStarted {
                unit: u.clone(),
                was_active: active,
            },
            |fx| {
                if active {
                    fx.systemd.restart(&u)?;
                } else {
                    fx.systemd.start(&u)?;
                }
                Ok(())
            },
        )?;
        Ok(self.record("unit", format!("{verb} {unit}"), "", Outcome::Changed))
    }

    /// Lists an API call in the plan (the call itself is made by the phase).
    pub fn api(&mut self, call: &str, detail: &str, changed: bool) {
        let outcome = match (self.dry_run(), changed) {
            (true, _) => Outcome::WouldChange,
            (false, true) => Outcome::Changed,
            (false, false) => Outcome::Unchanged,
        };
        self.record("api", call, detail, outcome);
    }

    /// Gives the journal back (for the final phase marker).
    pub fn into_journal(self) -> Option<Journal> {
        self.journal
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::effects::fs::Root;

    fn effects(root: &Path, host: bool) -> Effects {
        Effects {
            host,
            ..Effects::doubles(Root::new(root))
        }
    }

    #[test]
    fn the_dry_run_diff_keeps_order_and_repeated_lines() {
        let old = "a\nb\nc\nb\nd\n";
        let new = "a\nc\nb\nb\nd\ne\n";
        let diff = line_diff(old, new);
        // A set difference would show nothing for the moved and repeated `b`.
        assert_eq!(diff, "@@ -1,5 +1,6 @@\n a\n+c\n b\n-c\n b\n d\n+e\n");
    }

    #[test]
    fn a_batch_of_files_is_recorded_whole_before_the_first_is_written() {
        use crate::apply::journal::Event;
        let tmp = tempfile::tempdir().expect("tmp");
        std::fs::create_dir_all(tmp.path().join("etc")).expect("etc");
        for (name, text) in [
            ("kept", "same\n"),
            ("edited", "original\n"),
            ("second", "old\n"),
        ] {
            std::fs::write(tmp.path().join("etc").join(name), text).expect("file");
        }
        let fx = effects(tmp.path(), false);
        let mut a = Applier::apply(&fx, Journal::open(&fx.root).expect("journal"));
        let before = a.journal().expect("journal").records().len();
        let first_step = a.steps.len();
        let batch: [FileSpec<'_>; 5] = [
            (Path::new("/etc/new/a.d/one"), 0o644, b"one\n"),
            (Path::new("/etc/kept"), 0o644, b"same\n"),
            (Path::new("/etc/new/a.d/two"), 0o600, b"two\n"),
            (Path::new("/etc/edited"), 0o644, b"edited\n"),
            (Path::new("/etc/second"), 0o644, b"new\n"),
        ];
        assert!(a.files(&batch).expect("batch"));
        let steps: Vec<(&str, &str, Outcome)> = a.steps[first_step..]
            .iter()
            .map(|s| (s.kind, s.target.as_str(), s.outcome))
            .collect();
        assert_eq!(
            steps,
            [
                ("dir", "/etc/new", Outcome::Changed),
                ("dir", "/etc/new/a.d", Outcome::Changed),
                ("file", "/etc/new/a.d/one", Outcome::Changed),
                ("file", "/etc/kept", Outcome::Unchanged),
                ("file", "/etc/new/a.d/two", Outcome::Changed),
                ("file", "/etc/edited", Outcome::Changed),
                ("file", "/etc/second", Outcome::Changed),
            ]
        );
        let mode = |p: &str| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::metadata(tmp.path().join(p))
                .expect("stat")
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(
            (mode("etc/new/a.d"), mode("etc/new/a.d/two")),
            (0o755, 0o600)
        );
        // Every change's begin comes before the first done: one sync for the whole batch.
        let j = a.into_journal().expect("journal");
        let events: Vec<Event> = j.records()[before..].iter().map(|r| r.event).collect();
        assert_eq!(events[..6], [Event::Begin; 6]);
        assert_eq!(events[6..], [Event::Done; 6]);
        // Each replaced file has a backup of its own, holding what it held.
        for (path, original) in [("/etc/edited", "original\n"), ("/etc/second", "old\n")] {
            let prior = j.records()[before..].iter().find_map(|r| match &r.change {
                Some(Change::File { path: p, prior }) if p == Path::new(path) => prior.clone(),
                _ => None,
            });
            let backup = prior.expect("a backup").backup;
            let kept = tmp.path().join("var/lib/node-attach/backup").join(backup);
            assert_eq!(std::fs::read_to_string(kept).expect("backup"), original);
        }
        drop(j);
        // Again: nothing changes.
        let mut again = Applier::apply(&fx, Journal::open(&fx.root).expect("journal"));
        assert!(!again.files(&batch).expect("again"));
    }

    #[test]
    fn a_batch_stopped_by_an_error_voids_the_records_of_what_it_never_started() {
        use crate::apply::journal::Event;
        let tmp = tempfile::tempdir().expect("tmp");
        std::fs::create_dir_all(tmp.path().join("etc")).expect("etc");
        let fx = effects(tmp.path(), false);
        let mut a = Applier::apply(&fx, Journal::open(&fx.root).expect("journal"));
        // The first file takes the path the second one's directory needs: making that
        // directory fails, after every change of the batch was recorded.
        let batch: [FileSpec<'_>; 3] = [
            (Path::new("/etc/clash"), 0o644, b"a file\n"),
            (Path::new("/etc/clash/inside"), 0o644, b"never\n"),
            (Path::new("/etc/later"), 0o644, b"never\n"),
        ];
        a.files(&batch).expect_err("the directory cannot be made");
        drop(a);
        // Someone else makes one of the paths the batch never got to.
        std::fs::write(tmp.path().join("etc/later"), "theirs\n").expect("theirs");
        let records = Journal::load(&fx.root).expect("load").expect("a journal");
        let begun = |p: &str| {
            records.iter().any(|r| {
                r.event == Event::Begin
                    && matches!(&r.change, Some(Change::File { path, .. } | Change::Dir { path }) if path == Path::new(p))
            })
        };
        // What was made, and what failed while being made, stay recorded; the rest is void.
        assert!(begun("/etc/clash"), "the file written");
        assert!(!begun("/etc/clash/inside"), "never started");
        assert!(!begun("/etc/later"), "never started");
        let abandoned = records
            .iter()
            .filter(|r| r.event == Event::Abandoned)
            .count();
        assert_eq!(abandoned, 2);
        // A new change never reuses an abandoned number.
        let mut j = Journal::open(&fx.root).expect("reopen");
        let max = records.iter().map(|r| r.seq).max().expect("records");
        let seq = j
            .begin(Change::Dir {
                path: "/etc/new".into(),
            })
            .expect("begin");
        assert!(seq > max);
        assert!(!j.knows_path(Path::new("/etc/later")));
        assert_eq!(j.original(Path::new("/etc/later")).expect("original"), None);
        assert_eq!(
            std::fs::read_to_string(tmp.path().join("etc/later")).expect("theirs"),
            "theirs\n"
        );
    }

    #[test]
    fn a_file_is_journaled_once_with_its_original_bytes() {
        let tmp = tempfile::tempdir().expect("tmp");
        std::fs::create_dir_all(tmp.path().join("etc")).expect("etc");
        std::fs::write(tmp.path().join("etc/fstab"), "original\n").expect("fstab");
        let fx = effects(tmp.path(), false);
        let mut a = Applier::apply(&fx, Journal::open(&fx.root).expect("journal"));
        assert_eq!(
            a.file(Path::new("/etc/fstab"), 0o644, b"edited\n", false)
                .expect("write"),
            Outcome::Changed
        );
        assert_eq!(
            a.file(Path::new("/etc/fstab"), 0o644, b"edited\n", false)
                .expect("again"),
            Outcome::Unchanged
        );
        assert_eq!(
            a.file(Path::new("/etc/fstab"), 0o644, b"edited twice\n", false)
                .expect("third"),
            Outcome::Changed
        );
        let j = a.into_journal().expect("journal");
        let files: Vec<&Change> = j
            .records()
            .iter()
            .filter_map(|r| r.change.as_ref())
            .filter(|c| matches!(c, Change::File { .. }))
            .collect();
        assert_eq!(files.len(), 2);
        let Change::File {
            prior: Some(prior), ..
        } = files[0]
        else {
            panic!("first has the prior")
        };
        assert_eq!(
            std::fs::read_to_string(
                tmp.path()
                    .join("var/lib/node-attach/backup")
                    .join(&prior.backup)
            )
            .expect("backup"),
            "original\n"
        );
        assert!(
            matches!(files[1], Change::File { prior: None, .. }),
            "later writes keep no backup of join's own bytes"
        );
    }

    #[test]
    fn enable_reloads_systemd_only_when_this_run_has_not_just_done_so() {
        use crate::effects::RecordingSystemd;
        let tmp = tempfile::tempdir().expect("tmp");
        let systemd = RecordingSystemd::default();
        let calls = systemd.calls.clone();
        let fx = Effects {
            systemd: Box::new(systemd),
            ..effects(tmp.path(), true)
        };
        let mut a = Applier::apply(&fx, Journal::open(&fx.root).expect("journal"));
        // Nothing reloaded yet: systemctl enable reloads by itself.
        a.enable("containerd.service").expect("enable");
        // A new unit, one reload, then enable: the links only.
        let unit = Path::new("/etc/systemd/system/kubelet.service");
        a.file(unit, 0o644, b"[Service]\n", false).expect("unit");
        a.daemon_reload().expect("reload");
        a.enable("kubelet.service").expect("enable");
        // A unit file changed after the reload: enable reloads again.
        let dropin = Path::new("/etc/systemd/system/kubelet.service.d/10-kubeadm.conf");
        a.file(dropin, 0o644, b"[Service]\n", false)
            .expect("drop-in");
        a.enable("cri-docker.service").expect("enable");
        // Files elsewhere leave the reload standing.
        a.daemon_reload().expect("reload");
        a.file(
            Path::new("/var/lib/kubelet/config.yaml"),
            0o644,
            b"{}\n",
            false,
        )
        .expect("config");
        a.enable("node-attach-reset.service").expect("enable");
        assert_eq!(
            *calls.lock().expect("calls"),
            [
                "enable containerd.service",
                "daemon-reload",
                "enable --no-reload kubelet.service",
                "enable cri-docker.service",
                "daemon-reload",
                "enable --no-reload node-attach-reset.service",
            ]
        );
    }

    #[test]
    fn host_steps_are_skipped_under_a_scratch_root() {
        let tmp = tempfile::tempdir().expect("tmp");
        let fx = effects(tmp.path(), false);
        let mut a = Applier::apply(&fx, Journal::open(&fx.root).expect("journal"));
        assert_eq!(
            a.enable("kubelet.service").expect("enable"),
            Outcome::Skipped
        );
        assert_eq!(
            a.package("containerd", None).expect("pkg"),
            Outcome::Skipped
        );
        assert_eq!(
            a.sysctl("net.ipv4.ip_forward", "1").expect("sysctl"),
            Outcome::Skipped
        );
    }

    #[test]
    fn host_steps_use_the_traits() {
        let tmp = tempfile::tempdir().expect("tmp");
        let fx = effects(tmp.path(), true);
        let mut a = Applier::apply(&fx, Journal::open(&fx.root).expect("journal"));
        assert_eq!(
            a.package("containerd", Some("1.7")).expect("pkg"),
            Outcome::Changed
        );
        assert_eq!(
            a.package("containerd", None).expect("pkg"),
            Outcome::Unchanged
        );
        assert_eq!(
            a.enable("kubelet.service").expect("enable"),
            Outcome::Changed
        );
        assert_eq!(
            a.enable("kubelet.service").expect("enable"),
            Outcome::Unchanged
        );
        assert_eq!(
            a.start("kubelet.service", false).expect("start"),
            Outcome::Changed
        );
        assert_eq!(
            a.start("kubelet.service", false).expect("start"),
            Outcome::Unchanged
        );
        assert_eq!(
            a.start("kubelet.service", true).expect("restart"),
            Outcome::Changed
        );
    }

    #[test]
    fn dry_run_changes_nothing_and_hides_secrets() {
        let tmp = tempfile::tempdir().expect("tmp");
        let fx = effects(tmp.path(), false);
        let mut a = Applier::plan(&fx);
        a.file(
            Path::new("/etc/kubernetes/kubelet.conf"),
            0o600,
            b"token: s3cret\n",
            true,
        )
        .expect("plan");
        a.file(
            Path::new("/etc/sysctl.d/99-k8s.conf"),
            0o644,
            b"net.ipv4.ip_forward = 1\n",
            false,
        )
        .expect("plan");
        assert!(
            std::fs::read_dir(tmp.path()).expect("ls").next().is_none(),
            "nothing written"
        );
        let text = serde_json::to_string(&a.steps).expect("json");
        assert!(!text.contains("s3cret"));
        assert!(text.contains("+net.ipv4.ip_forward = 1"));
    }
}
