//! The journal: a durable, append-only record of every change join makes, so a re-run can
//! finish the job and `reset` can undo exactly what was done.
//!
//! `/var/lib/node-attach/journal.jsonl` (0600, directory 0700) holds one JSON object per line:
//! `begin` before a change is made (with what is needed to undo it: prior bytes are copied to
//! `backup/<seq>` first), `done` after it, and `phase` markers. Each line is fsynced. A line cut
//! short by a crash is ignored when reading; anything else unreadable makes the journal
//! "damaged", and reset then falls back to the documented Kubernetes paths.

use crate::effects::fs::{FsError, Root};
use serde::{Deserialize, Serialize};
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// node-attach's state directory.
pub const STATE_DIR: &str = "/var/lib/node-attach";
/// The journal file.
pub const JOURNAL_FILE: &str = "/var/lib/node-attach/journal.jsonl";
/// Where prior file contents are kept.
pub const BACKUP_DIR: &str = "/var/lib/node-attach/backup";

/// The state a file had before join overwrote it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Prior {
    /// Its permission bits.
    pub mode: u32,
    /// The backup's file name in [`BACKUP_DIR`].
    pub backup: String,
}

/// One change, with what undoing it needs.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Change {
    /// A directory join created.
    Dir {
        /// Target path.
        path: PathBuf,
    },
    /// A file join wrote; `prior` is None when it did not exist.
    File {
        /// Target path.
        path: PathBuf,
        /// What was there before.
        prior: Option<Prior>,
    },
    /// A symbolic link join made; `prior` is the link it replaced, if any.
    Symlink {
        /// Target path.
        path: PathBuf,
        /// The previous link target.
        prior: Option<PathBuf>,
    },
    /// A file join had written and later removed itself (bootstrap material).
    Removed {
        /// Target path.
        path: PathBuf,
    },
    /// A sysctl join set at runtime, with its previous value.
    Sysctl {
        /// Key, dotted.
        key: String,
        /// Previous value.
        prior: String,
    },
    /// A kernel module join loaded.
    Module {
        /// Module name.
        name: String,
    },
    /// Swap that join turned off.
    SwapOff {
        /// The devices or files that were active.
        devices: Vec<String>,
    },
    /// A package join installed.
    Package {
        /// Package manager.
        manager: String,
        /// Package name.
        name: String,
    },
    /// A unit join enabled (it was not enabled before).
    UnitEnabled {
        /// Unit name.
        unit: String,
    },
    /// A unit join started or restarted.
    UnitStarted {
        /// Unit name.
        unit: String,
        /// Whether it was active before.
        was_active: bool,
    },
    /// A step join did not perform, and why.
    Skipped {
        /// What would have been done.
        what: String,
        /// Why not.
        reason: String,
    },
}

/// One journal line.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Record {
    /// Sequence number (shared by a begin and its done).
    #[serde(default)]
    pub seq: u64,
    /// `begin`, `done` or `phase`.
    pub event: String,
    /// The change (for `begin`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change: Option<Change>,
    /// Phase name (for `phase`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// Phase status or other detail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Unix time in seconds.
    #[serde(default)]
    pub at: u64,
}

/// Why the journal could not be used.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// Filesystem failure.
    #[error(transparent)]
    Fs(#[from] FsError),
    /// A line in the middle does not parse.
    #[error("the journal {JOURNAL_FILE} is damaged at line {line}: {reason}")]
    Damaged {
        /// Line number.
        line: usize,
        /// Parse error.
        reason: String,
    },
    /// Writing failed.
    #[error("cannot write the journal {JOURNAL_FILE}: {0}")]
    Write(std::io::Error),
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// An open journal, appending.
pub struct Journal {
    /// Directories opening the journal created (outermost first).
    pub created: Vec<PathBuf>,
    root: Root,
    file: std::fs::File,
    next_seq: u64,
    records: Vec<Record>,
}

impl Journal {
    /// Opens (creating if needed) the journal under `root`; records the directories it had to
    /// create. A new journal is created together with its missing directories in one rename
    /// (see [`Root::mkdir_all_staged`]), already holding their records: a crash at any moment
    /// leaves no directory the journal does not know of.
    pub fn open(root: &Root) -> Result<Journal, JournalError> {
        root.sweep_staged(Path::new(BACKUP_DIR))?;
        let (existing, created) = match Journal::load(root)? {
            Some(records) => (records, Vec::new()),
            None => {
                let created = create(root)?;
                (Journal::load(root)?.unwrap_or_default(), created)
            }
        };
        let real = root.resolve(Path::new(JOURNAL_FILE))?;
        let file = OpenOptions::new()
            .append(true)
            .open(&real)
            .map_err(JournalError::Write)?;
        let next_seq = existing.iter().map(|r| r.seq).max().unwrap_or(0) + 1;
        let mut journal = Journal {
            records: existing,
            created,
            root: root.clone(),
            file,
            next_seq,
        };
        if root.inspect(Path::new(BACKUP_DIR))? == crate::effects::fs::Existing::Absent {
            let seq = journal.begin(Change::Dir {
                path: BACKUP_DIR.into(),
            })?;
            journal.root.mkdir_all(Path::new(BACKUP_DIR), 0o700)?;
            journal.done(seq)?;
            journal.created.push(BACKUP_DIR.into());
        }
        Ok(journal)
    }

    /// Reads the journal; `None` when there is none. A final line cut short is ignored.
    pub fn load(root: &Root) -> Result<Option<Vec<Record>>, JournalError> {
        let Some(bytes) = root.read(Path::new(JOURNAL_FILE))? else {
            return Ok(None);
        };
        let text = String::from_utf8_lossy(&bytes);
        let lines: Vec<&str> = text.split('\n').collect();
        let mut out = Vec::new();
        for (i, line) in lines.iter().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<Record>(line) {
                Ok(r) => out.push(r),
                Err(_) if i + 1 == lines.len() => {
                    tracing::warn!(
                        "ignoring the journal's last line, cut short by an interruption"
                    );
                }
                Err(e) => {
                    return Err(JournalError::Damaged {
                        line: i + 1,
                        reason: e.to_string(),
                    })
                }
            }
        }
        Ok(Some(out))
    }

    fn append(&mut self, record: Record) -> Result<(), JournalError> {
        let mut line = serde_json::to_vec(&record).map_err(|e| JournalError::Write(e.into()))?;
        line.push(b'\n');
        self.file.write_all(&line).map_err(JournalError::Write)?;
        self.file.sync_data().map_err(JournalError::Write)?;
        self.records.push(record);
        Ok(())
    }

    /// Records that a change is about to be made; returns its sequence number.
    pub fn begin(&mut self, change: Change) -> Result<u64, JournalError> {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.append(Record {
            seq,
            event: "begin".into(),
            change: Some(change),
            phase: None,
            status: None,
            at: now(),
        })?;
        Ok(seq)
    }

    /// Records that change `seq` was made.
    pub fn done(&mut self, seq: u64) -> Result<(), JournalError> {
        self.append(Record {
            seq,
            event: "done".into(),
            change: None,
            phase: None,
            status: None,
            at: now(),
        })
    }

    /// Records a phase's status.
    pub fn phase(&mut self, name: &str, status: &str) -> Result<(), JournalError> {
        self.append(Record {
            seq: 0,
            event: "phase".into(),
            change: None,
            phase: Some(name.into()),
            status: Some(status.into()),
            at: now(),
        })
    }

    /// Saves `bytes` as the backup for the next change; returns its name.
    pub fn backup(&mut self, bytes: &[u8]) -> Result<String, JournalError> {
        let name = format!("{:06}", self.next_seq);
        let path = PathBuf::from(BACKUP_DIR).join(&name);
        self.root.write_atomic(&path, bytes, 0o600)?;
        Ok(name)
    }

    /// Every record so far.
    pub fn records(&self) -> &[Record] {
        &self.records
    }

    /// Whether an earlier change already recorded this path (its first record holds the state
    /// before join, which must not be overwritten by join's own bytes).
    pub fn knows_path(&self, path: &Path) -> bool {
        self.records.iter().any(|r| match &r.change {
            Some(Change::File { path: p, .. })
            | Some(Change::Symlink { path: p, .. })
            | Some(Change::Dir { path: p }) => p == path,
            _ => false,
        })
    }

    /// The bytes `path` held before join first changed it: `Some(None)` when join created it,
    /// `None` when the journal has no record of it.
    pub fn original(&self, path: &Path) -> Result<Option<Option<Vec<u8>>>, JournalError> {
        let first = self.records.iter().find_map(|r| match &r.change {
            Some(Change::File { path: p, prior }) if p == path => Some(prior.clone()),
            _ => None,
        });
        match first {
            None => Ok(None),
            Some(None) => Ok(Some(None)),
            Some(Some(prior)) => {
                let backup = PathBuf::from(BACKUP_DIR).join(&prior.backup);
                Ok(Some(self.root.read(&backup)?))
            }
        }
    }

    /// Whether a unit change of this kind is already recorded.
    pub fn knows(&self, want: impl Fn(&Change) -> bool) -> bool {
        self.records
            .iter()
            .filter_map(|r| r.change.as_ref())
            .any(want)
    }
}

/// Creates the journal file, and with it every missing directory up to [`BACKUP_DIR`], all
/// appearing at once; the file already records those directories. Returns them.
fn create(root: &Root) -> Result<Vec<PathBuf>, JournalError> {
    let mode_of = |p: &Path| {
        if p.starts_with(STATE_DIR) {
            0o700
        } else {
            0o755
        }
    };
    let state = Path::new(STATE_DIR);
    let fill = |staged_state: &Path, created: &[PathBuf]| {
        let mut lines = Vec::new();
        for (i, dir) in created.iter().enumerate() {
            let seq = i as u64 + 1;
            for event in ["begin", "done"] {
                let change = (event == "begin").then(|| Change::Dir { path: dir.clone() });
                let record = Record {
                    seq,
                    event: event.into(),
                    change,
                    phase: None,
                    status: None,
                    at: now(),
                };
                lines.extend(serde_json::to_vec(&record).unwrap_or_default());
                lines.push(b'\n');
            }
        }
        write_new_file(
            &staged_state.join("journal.jsonl"),
            &lines,
            Path::new(JOURNAL_FILE),
        )
    };
    let created = root.mkdir_all_staged(state, mode_of, fill)?;
    if created.is_empty() {
        // The state directory was there already (a reset killed before removing it).
        root.write_atomic(Path::new(JOURNAL_FILE), b"", 0o600)?;
    }
    Ok(created)
}

/// Writes a new 0600 file at a real (already resolved) path, fsynced.
fn write_new_file(real: &Path, bytes: &[u8], shown: &Path) -> Result<(), FsError> {
    let fail = |op: &'static str| {
        move |source| FsError::Io {
            op,
            path: shown.display().to_string(),
            source,
        }
    };
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(real)
        .map_err(fail("create"))?;
    f.write_all(bytes).map_err(fail("write"))?;
    f.sync_all().map_err(fail("fsync"))
}

/// The last status recorded for each phase, in the order phases first appeared.
pub fn phases(records: &[Record]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for r in records.iter().filter(|r| r.event == "phase") {
        let (Some(p), Some(s)) = (&r.phase, &r.status) else {
            continue;
        };
        match out.iter_mut().find(|(name, _)| name == p) {
            Some(entry) => entry.1 = s.clone(),
            None => out.push((p.clone(), s.clone())),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_reopening_and_a_cut_last_line() {
        let tmp = tempfile::tempdir().expect("tmp");
        let root = Root::new(tmp.path());
        let mut j = Journal::open(&root).expect("open");
        let dirs = j.records().len();
        assert!(
            dirs >= 3,
            "created /var, /var/lib, /var/lib/node-attach are recorded"
        );
        let seq = j
            .begin(Change::Module {
                name: "overlay".into(),
            })
            .expect("begin");
        j.done(seq).expect("done");
        j.phase("runtime", "done").expect("phase");
        drop(j);
        let path = tmp.path().join("var/lib/node-attach/journal.jsonl");
        let mut text = std::fs::read_to_string(&path).expect("read");
        text.push_str("{\"seq\":99,\"event\":\"beg");
        std::fs::write(&path, &text).expect("cut");
        let records = Journal::load(&root).expect("load").expect("present");
        assert_eq!(records.len(), dirs + 3);
        assert_eq!(
            phases(&records),
            [("runtime".to_owned(), "done".to_owned())]
        );
        let j = Journal::open(&root).expect("reopen");
        assert!(j.knows_path(Path::new("/var/lib/node-attach")));
    }

    #[test]
    fn a_new_journal_appears_with_its_directories_at_once() {
        let tmp = tempfile::tempdir().expect("tmp");
        let root = Root::new(tmp.path());
        // What an interrupted first open leaves: swept by the next one.
        std::fs::create_dir_all(tmp.path().join(".var.node-attach-stage-0123456789ab/lib"))
            .expect("stage");
        let j = Journal::open(&root).expect("open");
        let dirs: Vec<_> = j
            .records()
            .iter()
            .filter_map(|r| match &r.change {
                Some(Change::Dir { path }) => Some(path.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(
            dirs,
            ["/var", "/var/lib", STATE_DIR, BACKUP_DIR].map(PathBuf::from)
        );
        let mut names: Vec<_> = std::fs::read_dir(tmp.path())
            .expect("ls")
            .flatten()
            .map(|e| e.file_name())
            .collect();
        names.sort();
        assert_eq!(names, ["var"]);
        let mode = |p: &str| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::metadata(tmp.path().join(p))
                .expect("stat")
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode("var/lib"), 0o755);
        assert_eq!(mode("var/lib/node-attach"), 0o700);
        assert_eq!(mode("var/lib/node-attach/journal.jsonl"), 0o600);
    }

    #[test]
    fn a_damaged_middle_line_is_reported() {
        let tmp = tempfile::tempdir().expect("tmp");
        let root = Root::new(tmp.path());
        drop(Journal::open(&root).expect("open"));
        let path = tmp.path().join("var/lib/node-attach/journal.jsonl");
        let text = std::fs::read_to_string(&path).expect("read");
        std::fs::write(&path, format!("garbage\n{text}")).expect("damage");
        assert!(matches!(
            Journal::load(&root),
            Err(JournalError::Damaged { line: 1, .. })
        ));
    }
}
