//! The journal: a durable, append-only record of every change join makes, so a re-run can
//! finish the job and `reset` can undo exactly what was done.
//!
//! `/var/lib/node-attach/journal.jsonl` (0600, directory 0700) holds one JSON object per line:
//! `begin` before a change is made (with what is needed to undo it: prior bytes, mode and owner
//! are copied to `backup/<seq>` first), `done` after it, and `phase` markers; reset adds `undone`
//! after undoing a change and `reset-complete` once every undo is done. Changes recorded
//! together (a batch of files and their directories, one sync) that an earlier change's error
//! kept from starting are marked `abandoned`, which voids their `begin`: reset never touches a
//! path join did not get to.
//!
//! Durability follows the write-ahead rule, one fsync per point where it matters rather than one
//! per line: a `begin` of a change to the machine is synced before the change is made (and with
//! it every line before it), and so are a phase's end, `undone` and `reset-complete`. A `done`,
//! a phase's start and a step recorded as skipped (which changes nothing) are written at once
//! and become durable with the next synced line, at the latest when the phase ends or the
//! journal is closed. Losing them to a power cut leaves what a cut a moment earlier would have
//! left: a change begun and not known to be done, which a rerun redoes and reset undoes (each
//! undo tolerates a change that was never made).
//!
//! A last line cut short by a crash (power loss mid-write) is ignored when reading and cut off
//! when the journal is next opened for writing, so nothing is ever appended to it. So is a line
//! that does not parse followed only by lines written without a sync: the page cache may write
//! an unsynced tail back out of order, so after a power cut its torn part need not be last; a
//! synced line after it would prove it reached the disk whole. Anything else
//! unreadable makes the journal "damaged" (reset then falls back to the documented Kubernetes
//! paths). A journal that parses but names a path that is not a clean absolute path, or a backup
//! that is not one of node-attach's own numbered files, is "tampered" and refused outright.

use crate::effects::fs::{AppendFile, Existing, FsError, Root};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// node-attach's state directory.
pub const STATE_DIR: &str = "/var/lib/node-attach";
/// The journal file.
pub const JOURNAL_FILE: &str = "/var/lib/node-attach/journal.jsonl";
/// Where prior file contents are kept.
pub const BACKUP_DIR: &str = "/var/lib/node-attach/backup";
/// The status a phase is recorded with when it starts.
pub const PHASE_STARTED: &str = "started";

/// The most paths a [`Change::Found`] lists under its directory.
pub const FOUND_LIMIT: usize = 1000;

/// The state a file had before join overwrote it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Prior {
    /// Its permission bits.
    pub mode: u32,
    /// The backup's file name in [`BACKUP_DIR`] (digits only: anything else is refused).
    pub backup: String,
    /// Its owner's uid (journals written before owners were kept have none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// Its owner's gid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
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
    /// What installing a package added, recorded right after the install: the package and
    /// the dependencies it pulled in, which reset removes.
    PackagesAdded {
        /// Package manager.
        manager: String,
        /// Every package the install added.
        packages: Vec<String>,
    },
    /// Images an import added to the runtime (reset removes them).
    ImagesImported {
        /// `containerd` or `docker`.
        runtime: String,
        /// The references the import added.
        refs: Vec<String>,
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
    /// What a directory reset's cleanup empties (CNI configuration and state) held before
    /// join first ran: another tool's files (podman's network, a leftover the operator keeps),
    /// which reset keeps. Changes nothing on the machine.
    Found {
        /// The directory.
        dir: PathBuf,
        /// Every path under it then (only its entries when there were more than
        /// [`FOUND_LIMIT`]: each is then kept whole).
        entries: Vec<PathBuf>,
    },
    /// A step join did not perform, and why.
    Skipped {
        /// What would have been done.
        what: String,
        /// Why not.
        reason: String,
    },
}

/// The bytes `path` held before join first changed it, from these records and their
/// backups: `Some(None)` when join created it, `None` when the records do not know it.
pub fn original_of(
    root: &Root,
    records: &[Record],
    path: &Path,
) -> Result<Option<Option<Vec<u8>>>, JournalError> {
    let first = records.iter().find_map(|r| match &r.change {
        Some(Change::File { path: p, prior }) if p == path => Some(prior.clone()),
        _ => None,
    });
    match first {
        None => Ok(None),
        Some(None) => Ok(Some(None)),
        Some(Some(prior)) => {
            let backup = PathBuf::from(BACKUP_DIR).join(&prior.backup);
            Ok(Some(root.read(&backup)?))
        }
    }
}

/// What `path` held before join: the records' backup when join changed it, the file as it
/// is otherwise.
pub fn original_in(
    root: &Root,
    records: &[Record],
    path: &Path,
) -> Result<Option<Vec<u8>>, JournalError> {
    match original_of(root, records, path)? {
        Some(before) => Ok(before),
        None => Ok(root.read(path)?),
    }
}

/// Whether a record was synced as it was written: a change's `begin`, a phase's end, `undone`
/// and `reset-complete`. Its presence on the disk proves every earlier line reached it too.
fn synced_when_written(record: &Record) -> bool {
    match record.event {
        Event::Begin => !matches!(
            record.change,
            Some(Change::Skipped { .. } | Change::Found { .. })
        ),
        Event::Phase => record.status.as_deref() != Some(PHASE_STARTED),
        Event::Done => false,
        Event::Undone | Event::ResetComplete | Event::Abandoned => true,
    }
}

/// Whether these lines (after one that does not parse) can all be the unsynced tail a power
/// cut tore: none is a record that was synced as it was written. The page cache may write an
/// unsynced tail back out of order, so a torn line need not be the last; but a synced line
/// after it proves it was on the disk whole, and the journal is then damaged instead.
fn only_unsynced_lines(lines: &[&[u8]]) -> bool {
    lines.iter().all(|line| {
        line.iter().all(u8::is_ascii_whitespace)
            || serde_json::from_slice::<Record>(line).map_or(true, |r| !synced_when_written(&r))
    })
}

/// Drops the `begin` of every change recorded as abandoned (never started), so that no reader
/// takes it for a change join may have made. The `abandoned` lines stay: their numbers are
/// never given out again.
fn void_abandoned(records: &mut Vec<Record>) {
    let abandoned: std::collections::HashSet<u64> = records
        .iter()
        .filter(|r| r.event == Event::Abandoned)
        .map(|r| r.seq)
        .collect();
    if !abandoned.is_empty() {
        records.retain(|r| !(r.event == Event::Begin && abandoned.contains(&r.seq)));
    }
}

/// How the journal file ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tail {
    /// With a newline after its last record.
    Clean,
    /// With a partial line from this offset on (a crash mid-write).
    Torn(u64),
    /// With a whole record whose newline was never written.
    NoNewline,
}

/// What a journal line records.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Event {
    /// A change is about to be made.
    Begin,
    /// The change `seq` was made.
    Done,
    /// A phase's status.
    Phase,
    /// Reset undid the change `seq`.
    Undone,
    /// Reset undid every change; only removing the state directory remains.
    ResetComplete,
    /// The change `seq` was begun in a batch that stopped at an earlier change's error, and
    /// never started: its `begin` is void, so reset leaves its path alone.
    Abandoned,
}

/// One journal line.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Record {
    /// Sequence number (shared by a begin, its done and its undone).
    #[serde(default)]
    pub seq: u64,
    /// What happened.
    pub event: Event,
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
    /// A line parses but points outside what node-attach manages.
    #[error("the journal {JOURNAL_FILE} is refused at line {line}: {reason}; it was not written by node-attach as it stands. Nothing was changed: inspect it, then remove it (reset then cleans only the documented Kubernetes paths)")]
    Tampered {
        /// Line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// Writing failed.
    #[error("cannot write the journal {JOURNAL_FILE}: {0}")]
    Write(std::io::Error),
    /// Something node-attach never writes sits where the journal belongs (a symlink, a FIFO, a
    /// directory): it is neither read through nor taken for a missing journal.
    #[error("the journal {JOURNAL_FILE} is {0}, not a regular file; node-attach never writes one there. Nothing was changed: inspect it, then remove it (reset then cleans only the documented Kubernetes paths)")]
    NotAFile(String),
}

/// Why a record cannot be trusted, if it cannot: every path must be clean and absolute (so it
/// resolves under the root), and a backup must be one of the numbered files [`Journal::backup`]
/// writes (never an absolute or relative path of its own).
fn untrusted(r: &Record) -> Option<String> {
    if let Some(Change::Found { dir, entries }) = &r.change {
        return std::iter::once(dir)
            .chain(entries)
            .find(|p| !is_clean_absolute(p) || !p.starts_with(dir))
            .map(|p| {
                format!(
                    "the path {} is not a clean path under {}",
                    p.display(),
                    dir.display()
                )
            });
    }
    let path = match &r.change {
        Some(Change::Dir { path } | Change::Symlink { path, .. } | Change::Removed { path }) => {
            path
        }
        Some(Change::File { path, prior }) => {
            if let Some(p) = prior {
                if p.backup.is_empty() || !p.backup.bytes().all(|b| b.is_ascii_digit()) {
                    return Some(format!(
                        "the backup name {:?} is not a node-attach backup",
                        p.backup
                    ));
                }
            }
            path
        }
        _ => return None,
    };
    (!is_clean_absolute(path))
        .then(|| format!("the path {} is not a clean absolute path", path.display()))
}

/// Absolute, with no `..` or `.` (so it resolves under the root).
fn is_clean_absolute(path: &Path) -> bool {
    path.is_absolute()
        && path.components().all(|c| {
            matches!(
                c,
                std::path::Component::RootDir | std::path::Component::Normal(_)
            )
        })
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
    file: AppendFile,
    next_seq: u64,
    records: Vec<Record>,
    /// Whether lines were written since the last sync.
    unsynced: bool,
    /// The lowest number the next backup may take.
    next_backup: u64,
}

/// Whether a line must be on the disk before [`Journal`] returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Durability {
    /// Synced now (and with it every line before).
    Now,
    /// Written now, synced with the next line that is.
    WithNext,
}

impl Journal {
    /// Opens (creating if needed) the journal under `root`; records the directories it had to
    /// create. A new journal is created together with its missing directories in one rename
    /// (see [`Root::mkdir_all_staged`]), already holding their records: a crash at any moment
    /// leaves no directory the journal does not know of.
    pub fn open(root: &Root) -> Result<Journal, JournalError> {
        root.sweep_staged(Path::new(BACKUP_DIR))?;
        let real = root.resolve(Path::new(JOURNAL_FILE))?;
        let (existing, created, tail) = match Journal::read(root)? {
            Some((records, tail)) => (records, Vec::new(), tail),
            None => {
                let created = create(root)?;
                (
                    Journal::load(root)?.unwrap_or_default(),
                    created,
                    Tail::Clean,
                )
            }
        };
        let file = Journal::append_to(&real, tail)?;
        let next_seq = existing.iter().map(|r| r.seq).max().unwrap_or(0) + 1;
        let mut journal = Journal {
            records: existing,
            created,
            root: root.clone(),
            file,
            next_seq,
            unsynced: false,
            next_backup: 0,
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
        Ok(Journal::read(root)?.map(|(records, _)| records))
    }

    /// The records, and how the file ends.
    fn read(root: &Root) -> Result<Option<(Vec<Record>, Tail)>, JournalError> {
        let bytes = match root.inspect(Path::new(JOURNAL_FILE))? {
            Existing::Absent => return Ok(None),
            Existing::File { bytes, .. } => bytes,
            Existing::Dir => return Err(JournalError::NotAFile("a directory".into())),
            Existing::Symlink(to) => {
                return Err(JournalError::NotAFile(format!(
                    "a symbolic link to {}",
                    to.display()
                )))
            }
            Existing::Special(kind) => return Err(JournalError::NotAFile(format!("a {kind}"))),
        };
        let mut out = Vec::new();
        let mut tail = Tail::Clean;
        let mut offset = 0;
        let lines: Vec<&[u8]> = bytes.split(|b| *b == b'\n').collect();
        for (i, line) in lines.iter().enumerate() {
            let last = i + 1 == lines.len();
            let start = offset;
            offset += line.len() + 1;
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let record = match serde_json::from_slice::<Record>(line) {
                Ok(r) => r,
                Err(_) if last => {
                    tracing::warn!("the journal's last line was cut short by an interruption");
                    tail = Tail::Torn(start as u64);
                    continue;
                }
                Err(_) if only_unsynced_lines(&lines[i + 1..]) => {
                    tracing::warn!(
                        "the journal's unsynced last lines were cut short by an interruption"
                    );
                    tail = Tail::Torn(start as u64);
                    break;
                }
                Err(e) => {
                    return Err(JournalError::Damaged {
                        line: i + 1,
                        reason: e.to_string(),
                    })
                }
            };
            if let Some(reason) = untrusted(&record) {
                return Err(JournalError::Tampered {
                    line: i + 1,
                    reason,
                });
            }
            if last {
                // Whole, but its newline was never written.
                tail = Tail::NoNewline;
            }
            out.push(record);
        }
        void_abandoned(&mut out);
        Ok(Some((out, tail)))
    }

    /// Makes the file end with a whole line: a torn tail is cut off, a whole last record
    /// without its newline gets one. Nothing is ever appended after a partial line.
    fn repair(file: &mut AppendFile, tail: Tail) -> Result<(), JournalError> {
        match tail {
            Tail::Clean => return Ok(()),
            Tail::Torn(intact) => file.truncate(intact).map_err(JournalError::Write)?,
            Tail::NoNewline => file.append(b"\n").map_err(JournalError::Write)?,
        }
        tracing::warn!("repaired the journal's last line");
        Ok(())
    }

    /// Opens the file for appending, after repairing its tail.
    fn append_to(real: &Path, tail: Tail) -> Result<AppendFile, JournalError> {
        let mut file = AppendFile::open(real).map_err(JournalError::Write)?;
        Journal::repair(&mut file, tail)?;
        Ok(file)
    }

    fn append(&mut self, record: Record, durability: Durability) -> Result<(), JournalError> {
        let mut line = serde_json::to_vec(&record).map_err(|e| JournalError::Write(e.into()))?;
        line.push(b'\n');
        self.file.write(&line).map_err(JournalError::Write)?;
        self.records.push(record);
        self.unsynced = true;
        if durability == Durability::Now {
            self.sync()?;
        }
        Ok(())
    }

    /// Makes every line written so far durable (a no-op when they are).
    pub fn sync(&mut self) -> Result<(), JournalError> {
        if self.unsynced {
            self.file.sync().map_err(JournalError::Write)?;
            self.unsynced = false;
        }
        Ok(())
    }

    /// Whether lines were written that are not synced yet.
    pub fn has_unsynced(&self) -> bool {
        self.unsynced
    }

    /// Records that a change is about to be made; returns its sequence number. On the disk
    /// before it returns, unless the change is a step skipped (nothing on the machine changes).
    pub fn begin(&mut self, change: Change) -> Result<u64, JournalError> {
        let durability = match change {
            Change::Skipped { .. } | Change::Found { .. } => Durability::WithNext,
            _ => Durability::Now,
        };
        Ok(self.begin_all([change], durability)?[0])
    }

    /// Records that these changes are about to be made, in this order, with one sync: the
    /// changes that follow one another with nothing in between (a chain of directories). Returns
    /// their sequence numbers.
    pub fn begin_each(
        &mut self,
        changes: impl IntoIterator<Item = Change>,
    ) -> Result<Vec<u64>, JournalError> {
        self.begin_all(changes, Durability::Now)
    }

    fn begin_all(
        &mut self,
        changes: impl IntoIterator<Item = Change>,
        durability: Durability,
    ) -> Result<Vec<u64>, JournalError> {
        let mut seqs = Vec::new();
        for change in changes {
            let seq = self.next_seq;
            self.next_seq += 1;
            let record = Record {
                seq,
                event: Event::Begin,
                change: Some(change),
                phase: None,
                status: None,
                at: now(),
            };
            self.append(record, Durability::WithNext)?;
            seqs.push(seq);
        }
        if durability == Durability::Now {
            self.sync()?;
        }
        Ok(seqs)
    }

    /// Records that change `seq` was made (durable with the next synced line).
    pub fn done(&mut self, seq: u64) -> Result<(), JournalError> {
        self.append(
            Record {
                seq,
                event: Event::Done,
                change: None,
                phase: None,
                status: None,
                at: now(),
            },
            Durability::WithNext,
        )
    }

    /// Records that the begun changes `seqs` were never started (their batch stopped at an
    /// earlier error), synced: their `begin`s are void from now on, in memory and on the disk.
    pub fn abandon(&mut self, seqs: &[u64]) -> Result<(), JournalError> {
        if seqs.is_empty() {
            return Ok(());
        }
        for &seq in seqs {
            let record = Record {
                seq,
                event: Event::Abandoned,
                change: None,
                phase: None,
                status: None,
                at: now(),
            };
            self.append(record, Durability::WithNext)?;
        }
        self.sync()?;
        void_abandoned(&mut self.records);
        Ok(())
    }

    /// Records that reset undid change `seq`.
    pub fn undone(&mut self, seq: u64) -> Result<(), JournalError> {
        self.append(
            Record {
                seq,
                event: Event::Undone,
                change: None,
                phase: None,
                status: None,
                at: now(),
            },
            Durability::Now,
        )
    }

    /// Records that reset undid every change.
    pub fn reset_complete(&mut self) -> Result<(), JournalError> {
        self.append(
            Record {
                seq: 0,
                event: Event::ResetComplete,
                change: None,
                phase: None,
                status: None,
                at: now(),
            },
            Durability::Now,
        )
    }

    /// Opens an existing journal for reset to record its progress in (repairing a torn last
    /// line); `None` when there is none. Creates nothing.
    pub fn open_existing(root: &Root) -> Result<Option<Journal>, JournalError> {
        let Some((records, tail)) = Journal::read(root)? else {
            return Ok(None);
        };
        let real = root.resolve(Path::new(JOURNAL_FILE))?;
        let file = Journal::append_to(&real, tail)?;
        Ok(Some(Journal {
            created: Vec::new(),
            root: root.clone(),
            file,
            next_seq: records.iter().map(|r| r.seq).max().unwrap_or(0) + 1,
            records,
            unsynced: false,
            next_backup: 0,
        }))
    }

    /// Records a phase's status: its start durable with its first change (or its end), any
    /// other status at once.
    pub fn phase(&mut self, name: &str, status: &str) -> Result<(), JournalError> {
        let durability = match status {
            PHASE_STARTED => Durability::WithNext,
            _ => Durability::Now,
        };
        self.append(
            Record {
                seq: 0,
                event: Event::Phase,
                change: None,
                phase: Some(name.into()),
                status: Some(status.into()),
                at: now(),
            },
            durability,
        )
    }

    /// A name for the next backup: the next sequence number, or past the last backup's when
    /// several are taken before their changes are recorded (a batch). A record's backup is so
    /// never above its own sequence number, and names never repeat within a journal.
    fn backup_name(&mut self) -> String {
        let n = self.next_backup.max(self.next_seq);
        self.next_backup = n + 1;
        format!("{n:06}")
    }

    /// Saves `bytes` as the backup for the next change; returns its name.
    pub fn backup(&mut self, bytes: &[u8]) -> Result<String, JournalError> {
        let name = self.backup_name();
        let path = PathBuf::from(BACKUP_DIR).join(&name);
        self.root.write_atomic(&path, bytes, 0o600)?;
        Ok(name)
    }

    /// Keeps the regular file at `target` as the backup for the next change without reading
    /// it into memory (a hard link, or a streamed copy across filesystems); returns its name.
    pub fn backup_file(&mut self, target: &Path) -> Result<String, JournalError> {
        let name = self.backup_name();
        let path = PathBuf::from(BACKUP_DIR).join(&name);
        let _ = self.root.remove_file(&path);
        self.root.link_or_copy(target, &path)?;
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
        original_of(&self.root, &self.records, path)
    }

    /// Whether a unit change of this kind is already recorded.
    pub fn knows(&self, want: impl Fn(&Change) -> bool) -> bool {
        self.records
            .iter()
            .filter_map(|r| r.change.as_ref())
            .any(want)
    }
}

impl Drop for Journal {
    /// Lines not synced yet (a `done`, a phase's start) reach the disk when the journal is
    /// closed, whichever way the run ends.
    fn drop(&mut self) {
        if let Err(e) = self.sync() {
            tracing::warn!("syncing the journal on close: {e}");
        }
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
            for event in [Event::Begin, Event::Done] {
                let change = (event == Event::Begin).then(|| Change::Dir { path: dir.clone() });
                let record = Record {
                    seq,
                    event,
                    change,
                    phase: None,
                    status: None,
                    at: now(),
                };
                lines.extend(serde_json::to_vec(&record).unwrap_or_default());
                lines.push(b'\n');
            }
        }
        let real = staged_state.join("journal.jsonl");
        crate::effects::fs::write_new_file(&real, &lines, 0o600).map_err(|source| FsError::Io {
            op: "create",
            path: JOURNAL_FILE.to_owned(),
            source,
        })
    };
    let created = root.mkdir_all_staged(state, mode_of, fill)?;
    if created.is_empty() {
        // The state directory was there already (a reset killed before removing it).
        root.write_atomic(Path::new(JOURNAL_FILE), b"", 0o600)?;
    }
    Ok(created)
}

/// The last status recorded for each phase, in the order phases first appeared.
pub fn phases(records: &[Record]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for r in records.iter().filter(|r| r.event == Event::Phase) {
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
        let mut j = Journal::open(&root).expect("reopen");
        assert!(j.knows_path(Path::new("/var/lib/node-attach")));
        // The torn tail was cut off, not appended to: the next record is a line of its own.
        j.phase("kubelet", "done").expect("append after repair");
        drop(j);
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(!text.contains("\"seq\":99"), "{text}");
        assert!(text.ends_with('\n'));
        assert_eq!(
            Journal::load(&root).expect("load").expect("present").len(),
            dirs + 4
        );
    }

    #[test]
    fn a_change_is_synced_before_it_is_made_and_the_rest_with_the_next_sync() {
        let tmp = tempfile::tempdir().expect("tmp");
        let root = Root::new(tmp.path());
        let mut j = Journal::open(&root).expect("open");
        j.sync().expect("sync");
        assert!(!j.has_unsynced());
        j.phase("host", PHASE_STARTED).expect("phase");
        assert!(
            j.has_unsynced(),
            "a phase's start waits for its first change"
        );
        let seq = j
            .begin(Change::Module {
                name: "overlay".into(),
            })
            .expect("begin");
        assert!(!j.has_unsynced(), "a change is recorded before it is made");
        j.done(seq).expect("done");
        assert!(j.has_unsynced(), "done waits for the next sync");
        let skipped = j
            .begin(Change::Skipped {
                what: "module br_netfilter".into(),
                reason: "test".into(),
            })
            .expect("skipped");
        j.done(skipped).expect("done");
        assert!(j.has_unsynced(), "a skipped step changes nothing");
        let dirs = j
            .begin_each(["/etc", "/etc/x"].map(|p| Change::Dir { path: p.into() }))
            .expect("chain");
        assert_eq!(dirs, [seq + 2, seq + 3]);
        assert!(
            !j.has_unsynced(),
            "a chain is recorded before its first change"
        );
        j.done(dirs[0]).expect("done");
        j.phase("host", "done").expect("phase");
        assert!(!j.has_unsynced(), "a phase's end is synced");
        j.done(dirs[1]).expect("done");
        drop(j);
        let records = Journal::load(&root).expect("load").expect("present");
        let done = records.iter().filter(|r| r.event == Event::Done).count();
        assert!(
            done >= 5,
            "every line is in the file once closed: {records:?}"
        );
        assert_eq!(
            records.last().map(|r| (r.seq, r.event)),
            Some((dirs[1], Event::Done))
        );
    }

    #[test]
    fn a_whole_last_record_without_its_newline_is_kept_and_ended() {
        let tmp = tempfile::tempdir().expect("tmp");
        let root = Root::new(tmp.path());
        let mut j = Journal::open(&root).expect("open");
        j.phase("host", "done").expect("phase");
        drop(j);
        let path = tmp.path().join("var/lib/node-attach/journal.jsonl");
        let text = std::fs::read_to_string(&path).expect("read");
        std::fs::write(&path, text.trim_end()).expect("drop the newline");
        let n = Journal::load(&root).expect("load").expect("present").len();
        let mut j = Journal::open_existing(&root)
            .expect("open")
            .expect("present");
        assert_eq!(j.records().len(), n);
        j.undone(1).expect("undone");
        drop(j);
        assert_eq!(
            Journal::load(&root).expect("load").expect("present").len(),
            n + 1
        );
    }

    #[test]
    fn paths_outside_the_root_and_foreign_backups_are_refused() {
        for line in [
            r#"{"seq":9,"event":"begin","change":{"kind":"file","path":"/etc/../../outside","prior":null}}"#,
            r#"{"seq":9,"event":"begin","change":{"kind":"dir","path":"relative/dir"}}"#,
            r#"{"seq":9,"event":"begin","change":{"kind":"file","path":"/etc/passwd","prior":{"mode":420,"backup":"/etc/shadow"}}}"#,
            r#"{"seq":9,"event":"begin","change":{"kind":"file","path":"/etc/passwd","prior":{"mode":420,"backup":"../000001"}}}"#,
            r#"{"seq":9,"event":"begin","change":{"kind":"found","dir":"/etc/cni/net.d","entries":["/etc/shadow"]}}"#,
            r#"{"seq":9,"event":"begin","change":{"kind":"found","dir":"/etc/cni/net.d","entries":["/etc/cni/net.d/../../shadow"]}}"#,
        ] {
            let tmp = tempfile::tempdir().expect("tmp");
            let root = Root::new(tmp.path());
            drop(Journal::open(&root).expect("open"));
            let path = tmp.path().join("var/lib/node-attach/journal.jsonl");
            let mut text = std::fs::read_to_string(&path).expect("read");
            text.push_str(line);
            text.push('\n');
            std::fs::write(&path, text).expect("tamper");
            assert!(
                matches!(Journal::load(&root), Err(JournalError::Tampered { .. })),
                "{line}"
            );
        }
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

    fn file_change(path: &str) -> Change {
        Change::File {
            path: path.into(),
            prior: None,
        }
    }

    #[test]
    fn a_torn_line_followed_only_by_unsynced_lines_is_a_torn_tail() {
        let tmp = tempfile::tempdir().expect("tmp");
        let root = Root::new(tmp.path());
        let mut j = Journal::open(&root).expect("open");
        let seq = j.begin(file_change("/etc/a")).expect("begin");
        drop(j);
        let path = tmp.path().join("var/lib/node-attach/journal.jsonl");
        let whole = std::fs::read(&path).expect("read");
        // A power cut wrote back a later page of the unsynced tail (a `done` and a phase's
        // start) but not the one before it, which reads as NUL bytes.
        let done = format!("{{\"seq\":{seq},\"event\":\"done\",\"at\":1}}\n");
        let started = "{\"event\":\"phase\",\"phase\":\"kubelet\",\"status\":\"started\"}\n";
        let mut torn = whole.clone();
        torn.extend_from_slice(&[0u8; 40]);
        torn.push(b'\n');
        torn.extend_from_slice(done.as_bytes());
        torn.extend_from_slice(started.as_bytes());
        std::fs::write(&path, &torn).expect("tear");
        let records = Journal::load(&root).expect("load").expect("some");
        assert!(records
            .iter()
            .any(|r| r.seq == seq && r.event == Event::Begin));
        assert!(!records
            .iter()
            .any(|r| r.event == Event::Done && r.seq == seq));
        // Opened for writing, the torn tail is cut off, not appended to.
        let mut j = Journal::open(&root).expect("reopen");
        j.phase("start", "done").expect("phase");
        drop(j);
        let after = std::fs::read(&path).expect("read");
        assert!(
            after.starts_with(&whole),
            "the synced lines stay as they were"
        );
        assert!(!after.contains(&0u8), "the torn bytes are gone");
        assert!(Journal::load(&root).expect("load").is_some());
    }

    #[test]
    fn a_torn_line_before_a_synced_line_is_damage() {
        let tmp = tempfile::tempdir().expect("tmp");
        let root = Root::new(tmp.path());
        let mut j = Journal::open(&root).expect("open");
        j.begin(file_change("/etc/a")).expect("begin");
        drop(j);
        let path = tmp.path().join("var/lib/node-attach/journal.jsonl");
        let text = std::fs::read_to_string(&path).expect("read");
        let mut lines: Vec<&str> = text.lines().collect();
        let last = lines.pop().expect("the begin");
        // The begin was synced after the garbled line: that line was on the disk whole.
        std::fs::write(&path, format!("{}\ngarbage\n{last}\n", lines.join("\n"))).expect("damage");
        assert!(matches!(
            Journal::load(&root),
            Err(JournalError::Damaged { .. })
        ));
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
