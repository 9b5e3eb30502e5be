//! Steps for artifacts: a verified file moved into place from a scratch directory (its prior
//! bytes kept as a backup without being read into memory), and images imported into the
//! runtime. Both journaled like every other change, so reset removes what was installed and
//! restores what was there.

use super::{Applier, ApplyError, Outcome};
use crate::apply::journal::{Change, Prior};
use crate::effects::fs::{Found, FsError};
use crate::sources::values::RuntimeKind;
use std::path::{Path, PathBuf};

/// A verified file waiting in a scratch directory (`staged` is None in a dry run, where
/// nothing is downloaded).
#[derive(Clone, Debug)]
pub struct StagedFile {
    /// What it is (`kubelet`, `CNI plugin bridge`), for the plan.
    pub what: String,
    /// Where it goes.
    pub target: PathBuf,
    /// Its mode there.
    pub mode: u32,
    /// Its SHA-256 (from the signed manifest).
    pub sha256: String,
    /// The verified download's real path.
    pub staged: Option<PathBuf>,
}

impl Applier<'_> {
    /// Installs a staged file at its target: unchanged when the target already has these
    /// bytes and mode; otherwise the target's prior file (if any) is kept as the journal's
    /// backup and the staged file is renamed (or copied) into place.
    pub fn install_file(&mut self, f: &StagedFile) -> Result<Outcome, ApplyError> {
        if let Some(parent) = f.target.parent() {
            self.dir(parent, 0o755)?;
        }
        let target = f.target.display().to_string();
        let existing = self.effects.root.digest(&f.target)?;
        if let Found::File(d) = &existing {
            if d.sha256 == f.sha256 && d.mode == f.mode {
                return Ok(self.record("install", target, f.what.clone(), Outcome::Unchanged));
            }
        }
        if let Found::Other(kind) = existing {
            return Err(ApplyError::Fs(FsError::Io {
                op: "install",
                path: target,
                source: std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    format!("a {kind} is in the way"),
                ),
            }));
        }
        let detail = format!("{} (sha256 {}, mode {:04o})", f.what, f.sha256, f.mode);
        if self.dry_run() {
            self.planned.insert(f.target.clone());
            return Ok(self.record("install", target, detail, Outcome::WouldChange));
        }
        let Some(staged) = f.staged.clone() else {
            unreachable!("a real run installs only downloaded files")
        };
        let journal = self
            .journal
            .as_mut()
            .unwrap_or_else(|| unreachable!("applying"));
        let prior = match &existing {
            Found::File(d) if !journal.knows_path(&f.target) => Some(Prior {
                mode: d.mode,
                backup: journal.backup_file(&f.target)?,
                uid: Some(d.uid),
                gid: Some(d.gid),
            }),
            _ => None,
        };
        let (path, mode) = (f.target.clone(), f.mode);
        self.journaled(
            Change::File {
                path: path.clone(),
                prior,
            },
            move |fx| Ok(fx.root.install_staged(&staged, &path, mode)?),
        )?;
        Ok(self.record("install", target, detail, Outcome::Changed))
    }

    /// Imports an image archive (a real path) into the runtime unless it holds `refs`
    /// already; journals what the import added. Fails when `refs` are still missing after it.
    pub fn import_images(
        &mut self,
        runtime: RuntimeKind,
        archive: Option<&Path>,
        what: &str,
        refs: &[String],
    ) -> Result<Outcome, ApplyError> {
        if !self.effects.host {
            return self.skipped("image", format!("import {what}"));
        }
        let fx = self.effects;
        let before = if self.dry_run() {
            fx.images.list(runtime).unwrap_or_default()
        } else {
            fx.images.list(runtime)?
        };
        let missing: Vec<&String> = refs.iter().filter(|r| !before.contains(r)).collect();
        if !refs.is_empty() && missing.is_empty() {
            return Ok(self.record(
                "image",
                format!("import {what}"),
                refs.join(", "),
                Outcome::Unchanged,
            ));
        }
        if self.dry_run() {
            return Ok(self.record(
                "image",
                format!("import {what}"),
                refs.join(", "),
                Outcome::WouldChange,
            ));
        }
        let Some(archive) = archive else {
            unreachable!("a real run imports only downloaded archives")
        };
        fx.images.import(runtime, archive)?;
        let after = fx.images.list(runtime)?;
        let added: Vec<String> = after
            .iter()
            .filter(|r| !before.contains(r))
            .cloned()
            .collect();
        if !added.is_empty() {
            let j = self
                .journal
                .as_mut()
                .unwrap_or_else(|| unreachable!("applying"));
            let seq = j.begin(Change::ImagesImported {
                runtime: format!("{runtime:?}").to_lowercase(),
                refs: added.clone(),
            })?;
            j.done(seq)?;
        }
        let still: Vec<&String> = refs.iter().filter(|r| !after.contains(r)).collect();
        if !still.is_empty() {
            return Err(ApplyError::Effect(crate::effects::EffectError {
                what: format!("importing {what}"),
                detail: format!(
                    "the runtime does not hold {} after the import",
                    still
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }));
        }
        Ok(self.record(
            "image",
            format!("import {what}"),
            added.join(", "),
            Outcome::Changed,
        ))
    }
}
