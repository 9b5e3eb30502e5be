//! The filesystem under a root prefix.
//!
//! Every path node-attach touches is an absolute target path (`/etc/kubernetes/kubelet.conf`)
//! resolved under [`Root`] (`/` in production, a scratch directory in tests and the demo). A path
//! whose existing ancestors include a symbolic link is refused, so neither join nor reset can be
//! steered outside the tree it expects. Writes are atomic: a temporary file in the same directory
//! gets the exact mode, the bytes and an fsync, then is renamed over the target, and the
//! directory is fsynced.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

/// A filesystem failure, naming the target path.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// The path is not a clean absolute path.
    #[error("{0}: not a clean absolute path")]
    BadPath(String),
    /// An existing ancestor is a symbolic link.
    #[error("refusing {path}: {link} is a symbolic link; node-attach never follows links out of the tree it manages")]
    Symlink {
        /// The target path.
        path: String,
        /// The offending ancestor.
        link: String,
    },
    /// A special file (FIFO, socket, device) where a regular file was expected.
    #[error("refusing {path}: it is a {kind}, not a regular file (node-attach never opens special files it did not make)")]
    Special {
        /// The target path.
        path: String,
        /// fifo, socket, character device, block device.
        kind: &'static str,
    },
    /// Another process holds the run lock on this root.
    #[error("another node-attach join or reset is changing {0} right now")]
    Busy(String),
    /// An I/O error.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The target path.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// The root prefix of every filesystem effect.
#[derive(Clone, Debug)]
pub struct Root {
    base: PathBuf,
}

/// The run lock on a root, held while join or reset changes it; released on drop, and by the
/// kernel when the process dies in any way (even `kill -9`).
#[derive(Debug)]
pub struct RootLock {
    _flock: nix::fcntl::Flock<std::fs::File>,
}

/// What is at a path now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Existing {
    /// Nothing.
    Absent,
    /// A regular file with these bytes, permission bits and owner.
    File {
        /// Contents.
        bytes: Vec<u8>,
        /// Permission bits (e.g. 0o644).
        mode: u32,
        /// Owner's uid.
        uid: u32,
        /// Owner's gid.
        gid: u32,
    },
    /// A directory.
    Dir,
    /// A symbolic link to this target.
    Symlink(PathBuf),
    /// A special file: `fifo`, `socket`, `character device` or `block device`. Never opened
    /// (a FIFO would block the reader).
    Special(&'static str),
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> FsError + 'a {
    move |source| FsError::Io {
        op,
        path: path.display().to_string(),
        source,
    }
}

impl Root {
    /// A root at `base` (created if missing).
    pub fn new(base: impl Into<PathBuf>) -> Root {
        Root { base: base.into() }
    }

    /// Whether this is the real root `/`.
    pub fn is_host(&self) -> bool {
        self.base == Path::new("/")
    }

    /// The base directory.
    pub fn base(&self) -> &Path {
        &self.base
    }

    /// The real location of an absolute target path, refusing `..` and symlinked ancestors.
    pub fn resolve(&self, target: &Path) -> Result<PathBuf, FsError> {
        let shown = target.display().to_string();
        if !target.is_absolute()
            || target
                .components()
                .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
        {
            return Err(FsError::BadPath(shown));
        }
        let rel = target
            .strip_prefix("/")
            .map_err(|_| FsError::BadPath(shown.clone()))?;
        let mut cur = self.base.clone();
        let parts: Vec<_> = rel.components().collect();
        for (i, c) in parts.iter().enumerate() {
            cur.push(c);
            if i + 1 == parts.len() {
                break;
            }
            match fs::symlink_metadata(&cur) {
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(FsError::Symlink {
                        path: shown,
                        link: Path::new("/")
                            .join(cur.strip_prefix(&self.base).unwrap_or(&cur))
                            .display()
                            .to_string(),
                    })
                }
                _ => {}
            }
        }
        Ok(cur)
    }

    /// The real path of `target` and what is there, without following a final symlink; None
    /// when nothing is.
    pub(super) fn lstat(&self, target: &Path) -> Result<Option<(PathBuf, fs::Metadata)>, FsError> {
        let real = self.resolve(target)?;
        match fs::symlink_metadata(&real) {
            Ok(meta) => Ok(Some((real, meta))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io("inspect", target)(e)),
        }
    }

    /// What is at `target` now (a final symlink is reported, not followed).
    pub fn inspect(&self, target: &Path) -> Result<Existing, FsError> {
        let Some((real, meta)) = self.lstat(target)? else {
            return Ok(Existing::Absent);
        };
        let ft = meta.file_type();
        if ft.is_symlink() {
            return Ok(Existing::Symlink(
                fs::read_link(&real).map_err(io("read link", target))?,
            ));
        }
        if ft.is_dir() {
            return Ok(Existing::Dir);
        }
        if ft.is_file() {
            let bytes = fs::read(&real).map_err(io("read", target))?;
            return Ok(Existing::File {
                bytes,
                mode: meta.mode() & 0o7777,
                uid: meta.uid(),
                gid: meta.gid(),
            });
        }
        use std::os::unix::fs::FileTypeExt;
        Ok(Existing::Special(if ft.is_fifo() {
            "fifo"
        } else if ft.is_socket() {
            "socket"
        } else if ft.is_char_device() {
            "character device"
        } else {
            "block device"
        }))
    }

    /// Reads a file, if present.
    pub fn read(&self, target: &Path) -> Result<Option<Vec<u8>>, FsError> {
        match self.inspect(target)? {
            Existing::File { bytes, .. } => Ok(Some(bytes)),
            _ => Ok(None),
        }
    }

    /// Reads a file, following a final symlink whose target is an absolute path on the node
    /// (resolved under the root, like every other path).
    pub fn read_following(&self, target: &Path) -> Result<Option<Vec<u8>>, FsError> {
        match self.inspect(target)? {
            Existing::File { bytes, .. } => Ok(Some(bytes)),
            Existing::Symlink(to) if to.is_absolute() => self.read(&to),
            _ => Ok(None),
        }
    }

    /// Creates a directory and its missing parents with `mode`; returns the directories it
    /// created, outermost first.
    pub fn mkdir_all(&self, target: &Path, mode: u32) -> Result<Vec<PathBuf>, FsError> {
        let mut created = Vec::new();
        let missing = self.missing_dirs(target)?;
        fs::create_dir_all(&self.base).map_err(io("create directory", &self.base))?;
        for p in missing {
            let real = self.resolve(&p)?;
            match fs::create_dir(&real) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io("create directory", &p)(e)),
            }
            fs::set_permissions(&real, fs::Permissions::from_mode(mode))
                .map_err(io("chmod", &p))?;
            created.push(p);
        }
        Ok(created)
    }

    /// The directories missing on the way to `target`, outermost first (empty when it exists).
    pub fn missing_dirs(&self, target: &Path) -> Result<Vec<PathBuf>, FsError> {
        let mut missing = Vec::new();
        let mut cur = Some(target);
        while let Some(p) = cur {
            if p == Path::new("/") {
                break;
            }
            match self.inspect(p)? {
                Existing::Absent => missing.push(p.to_path_buf()),
                Existing::Dir => break,
                _ => {
                    return Err(FsError::Io {
                        op: "create directory",
                        path: p.display().to_string(),
                        source: std::io::Error::new(
                            std::io::ErrorKind::AlreadyExists,
                            "exists and is not a directory",
                        ),
                    })
                }
            }
            cur = p.parent();
        }
        missing.reverse();
        Ok(missing)
    }

    /// Creates the missing directories up to `target` all at once: they are built under a
    /// staging name beside the outermost missing one, `fill` gets the staged (real) location of
    /// `target` to put files in (the journal records its own directories there), and one
    /// `rename(2)` puts the whole tree in place. A crash leaves either nothing or a staging
    /// directory that [`Root::sweep_staged`] removes. `mode_of` gives each directory's mode.
    /// Returns the directories created, outermost first.
    pub fn mkdir_all_staged(
        &self,
        target: &Path,
        mode_of: impl Fn(&Path) -> u32,
        fill: impl FnOnce(&Path, &[PathBuf]) -> Result<(), FsError>,
    ) -> Result<Vec<PathBuf>, FsError> {
        let missing = self.missing_dirs(target)?;
        let Some(top) = missing.first() else {
            return Ok(missing);
        };
        fs::create_dir_all(&self.base).map_err(io("create directory", &self.base))?;
        let real_top = self.resolve(top)?;
        let stage = staging_name(&real_top)?;
        let result = (|| {
            for p in &missing {
                let rel = p.strip_prefix(top).unwrap_or(Path::new(""));
                let real = if rel.as_os_str().is_empty() {
                    stage.clone()
                } else {
                    stage.join(rel)
                };
                fs::create_dir(&real).map_err(io("create directory", p))?;
                fs::set_permissions(&real, fs::Permissions::from_mode(mode_of(p)))
                    .map_err(io("chmod", p))?;
            }
            let rel = target.strip_prefix(top).unwrap_or(Path::new(""));
            let staged_target = if rel.as_os_str().is_empty() {
                stage.clone()
            } else {
                stage.join(rel)
            };
            fill(&staged_target, &missing)?;
            for p in missing.iter().rev() {
                let rel = p.strip_prefix(top).unwrap_or(Path::new(""));
                sync_dir(&stage.join(rel));
            }
            fs::rename(&stage, &real_top).map_err(io("rename", top))?;
            if let Some(parent) = real_top.parent() {
                sync_dir(parent);
            }
            Ok(())
        })();
        if result.is_err() {
            let _ = fs::remove_dir_all(&stage);
        }
        result.map(|()| missing)
    }

    /// Removes the staging directories an interrupted [`Root::mkdir_all_staged`] of `target`
    /// left at any level on its way. Only directories with the staging name pattern go.
    pub fn sweep_staged(&self, target: &Path) -> Result<usize, FsError> {
        let mut removed = 0;
        for ancestor in target.ancestors() {
            let (Some(parent), Some(name)) = (ancestor.parent(), ancestor.file_name()) else {
                continue;
            };
            let Ok(real_parent) = self.resolve(parent) else {
                continue;
            };
            let prefix = format!(".{}.node-attach-stage-", name.to_string_lossy());
            let Ok(entries) = fs::read_dir(&real_parent) else {
                continue;
            };
            for entry in entries.flatten() {
                let entry_name = entry.file_name().to_string_lossy().into_owned();
                let ours = entry_name.strip_prefix(&prefix).is_some_and(is_temp_suffix);
                let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
                if ours && is_dir {
                    fs::remove_dir_all(entry.path()).map_err(io("remove", ancestor))?;
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }

    /// Takes the run lock: an exclusive, non-blocking `flock(2)` on the root directory itself,
    /// so two runs (cloud-init's and an operator's, say) never interleave their changes and
    /// journal records. Nothing is created for it and nothing is left behind.
    pub fn lock_exclusive(&self) -> Result<RootLock, FsError> {
        let shown = self.base.display().to_string();
        let dir = std::fs::File::open(&self.base).map_err(io("open", &self.base))?;
        match nix::fcntl::Flock::lock(dir, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(flock) => Ok(RootLock { _flock: flock }),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Err(FsError::Busy(shown)),
            Err((_, errno)) => Err(FsError::Io {
                op: "lock",
                path: shown,
                source: errno.into(),
            }),
        }
    }

    /// Removes temporary files an interrupted [`Root::write_atomic`] or
    /// [`Root::symlink_atomic`] of `target` left beside it (for example after `kill -9`
    /// between create and rename). Only names this module makes are matched. Returns how
    /// many were removed.
    pub fn sweep_temps(&self, target: &Path) -> Result<usize, FsError> {
        let real = self.resolve(target)?;
        sweep_beside(&real, target)
    }

    /// Writes `bytes` to `target` atomically with exactly `mode`. The parent must exist.
    pub fn write_atomic(&self, target: &Path, bytes: &[u8], mode: u32) -> Result<(), FsError> {
        let real = self.resolve(target)?;
        sweep_beside(&real, target)?;
        let (dir, tmp) = temp_beside(&real, target)?;
        let result = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(io("create", target))?;
            f.set_permissions(fs::Permissions::from_mode(mode))
                .map_err(io("chmod", target))?;
            f.write_all(bytes).map_err(io("write", target))?;
            f.sync_all().map_err(io("fsync", target))?;
            fs::rename(&tmp, &real).map_err(io("rename", target))?;
            sync_dir(dir);
            Ok(())
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    /// Points `target` at `link_to` atomically (a temporary link renamed into place).
    pub fn symlink_atomic(&self, target: &Path, link_to: &Path) -> Result<(), FsError> {
        let real = self.resolve(target)?;
        let dir = real
            .parent()
            .ok_or_else(|| FsError::BadPath(target.display().to_string()))?;
        sweep_beside(&real, target)?;
        let tmp = real.with_extension("node-attach-updated");
        std::os::unix::fs::symlink(link_to, &tmp).map_err(io("symlink", target))?;
        fs::rename(&tmp, &real).map_err(io("rename", target))?;
        sync_dir(dir);
        Ok(())
    }

    /// Sets a file's owner (without following a final symlink).
    pub fn chown(&self, target: &Path, uid: u32, gid: u32) -> Result<(), FsError> {
        let real = self.resolve(target)?;
        std::os::unix::fs::lchown(&real, Some(uid), Some(gid)).map_err(io("chown", target))
    }

    /// Removes a whole directory tree at once: one `rename(2)` takes it out of its place (to a
    /// staging name beside it, which [`Root::sweep_staged`] removes if a crash interrupts), then
    /// it is deleted. Only for trees node-attach owns entirely.
    pub fn remove_tree_atomically(&self, target: &Path) -> Result<(), FsError> {
        let real = self.resolve(target)?;
        match fs::symlink_metadata(&real) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(FsError::Io {
                    op: "remove directory",
                    path: target.display().to_string(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        "not a directory",
                    ),
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io("inspect", target)(e)),
        }
        let tomb = staging_name(&real)?;
        fs::rename(&real, &tomb).map_err(io("rename", target))?;
        if let Some(parent) = real.parent() {
            sync_dir(parent);
        }
        fs::remove_dir_all(&tomb).map_err(io("remove", target))
    }

    /// Sets a file's permission bits.
    pub fn chmod(&self, target: &Path, mode: u32) -> Result<(), FsError> {
        let real = self.resolve(target)?;
        fs::set_permissions(&real, fs::Permissions::from_mode(mode)).map_err(io("chmod", target))
    }

    /// Removes a file or symlink; absent is fine.
    pub fn remove_file(&self, target: &Path) -> Result<bool, FsError> {
        let real = self.resolve(target)?;
        match fs::remove_file(&real) {
            Ok(()) => {
                if let Some(dir) = real.parent() {
                    sync_dir(dir);
                }
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io("remove", target)(e)),
        }
    }

    /// Removes an empty directory; returns false (and leaves it) when it is absent or not empty.
    pub fn remove_empty_dir(&self, target: &Path) -> Result<bool, FsError> {
        let real = self.resolve(target)?;
        match fs::remove_dir(&real) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e)
                if e.raw_os_error() == Some(39)
                    || e.kind() == std::io::ErrorKind::DirectoryNotEmpty =>
            {
                Ok(false)
            }
            Err(e) => Err(io("remove directory", target)(e)),
        }
    }

    /// The device of the directory at `target` (None: absent, or not a directory; a symlink
    /// is not followed).
    pub fn dir_device(&self, target: &Path) -> Option<u64> {
        let meta = fs::symlink_metadata(self.resolve(target).ok()?).ok()?;
        meta.is_dir().then(|| meta.dev())
    }

    /// Names in a directory (empty when absent).
    pub fn list_dir(&self, target: &Path) -> Result<Vec<String>, FsError> {
        let real = self.resolve(target)?;
        match fs::read_dir(&real) {
            Ok(rd) => {
                let mut names: Vec<String> = rd
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect();
                names.sort();
                Ok(names)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(io("list", target)(e)),
        }
    }
}

/// A regular file's digest and metadata, read without holding it in memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileDigest {
    /// Lowercase hex SHA-256 of the contents.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
    /// Permission bits.
    pub mode: u32,
    /// Owner's uid.
    pub uid: u32,
    /// Owner's gid.
    pub gid: u32,
}

/// What [`Root::digest`] found at a path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Found {
    /// Nothing.
    Absent,
    /// A regular file.
    File(FileDigest),
    /// Something else (directory, symlink, special file), named.
    Other(&'static str),
}

/// Where scratch directories live on the node.
pub const SCRATCH_PARENT: &str = "/var/tmp";
const SCRATCH_PREFIX: &str = ".node-attach-stage-";

/// A private (0700) scratch directory under the node's `/var/tmp` for downloads that are not
/// verified yet. It is removed when dropped, so a refused download leaves nothing behind; one
/// a crash left is removed by the next [`Root::sweep_scratch`].
#[derive(Debug)]
pub struct Scratch {
    real: PathBuf,
}

impl Scratch {
    /// The directory's real location.
    pub fn path(&self) -> &Path {
        &self.real
    }

    /// Opens `name` in the directory as a new or emptied 0600 file (never following a
    /// symlink); returns it and its real path.
    pub fn create(&self, name: &str) -> Result<(File, PathBuf), FsError> {
        let clean = !name.is_empty()
            && !name.starts_with('.')
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'+'));
        if !clean {
            return Err(FsError::BadPath(name.to_owned()));
        }
        let real = self.real.join(name);
        let f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&real)
            .map_err(io("create", &real))?;
        Ok((f, real))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.real) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(
                    "removing the scratch directory {}: {e}",
                    self.real.display()
                );
            }
        }
    }
}

impl Root {
    /// A new scratch directory (see [`Scratch`]): in the node's `/var/tmp`, or at the top of
    /// a root that has none (a scratch root in tests), so no directory is made for it.
    pub fn scratch(&self) -> Result<Scratch, FsError> {
        let parent = self.scratch_parent()?;
        let target = parent.join(format!("{SCRATCH_PREFIX}{}", temp_suffix()));
        let real = self.resolve(&target)?;
        fs::create_dir(&real)
            .and_then(|()| fs::set_permissions(&real, fs::Permissions::from_mode(0o700)))
            .map_err(io("create directory", &target))?;
        Ok(Scratch { real })
    }

    fn scratch_parent(&self) -> Result<PathBuf, FsError> {
        Ok(match self.inspect(Path::new(SCRATCH_PARENT))? {
            Existing::Dir => PathBuf::from(SCRATCH_PARENT),
            _ => PathBuf::from("/"),
        })
    }

    /// Removes scratch directories an interrupted run left; returns how many.
    pub fn sweep_scratch(&self) -> Result<usize, FsError> {
        let parent = self.scratch_parent()?;
        let mut removed = 0;
        for name in self.list_dir(&parent)? {
            let ours = name
                .strip_prefix(SCRATCH_PREFIX)
                .is_some_and(is_temp_suffix);
            if !ours {
                continue;
            }
            let target = parent.join(&name);
            if self.inspect(&target)? == Existing::Dir {
                fs::remove_dir_all(self.resolve(&target)?).map_err(io("remove", &target))?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// The SHA-256 and metadata of a regular file at `target`, streamed (a final symlink is
    /// reported as [`Found::Other`], never followed).
    pub fn digest(&self, target: &Path) -> Result<Found, FsError> {
        use sha2::{Digest, Sha256};
        use std::io::Read;
        let Some((real, meta)) = self.lstat(target)? else {
            return Ok(Found::Absent);
        };
        let ft = meta.file_type();
        if !ft.is_file() {
            return Ok(Found::Other(if ft.is_dir() {
                "directory"
            } else if ft.is_symlink() {
                "symbolic link"
            } else {
                "special file"
            }));
        }
        let mut f = OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&real)
            .map_err(io("open", target))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut size = 0u64;
        loop {
            let n = f.read(&mut buf).map_err(io("read", target))?;
            if n == 0 {
                break;
            }
            size += n as u64;
            hasher.update(&buf[..n]);
        }
        Ok(Found::File(FileDigest {
            sha256: hasher
                .finalize()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
            size,
            mode: meta.mode() & 0o7777,
            uid: meta.uid(),
            gid: meta.gid(),
        }))
    }

    /// Moves a staged, verified file (a real path, normally in a [`Scratch`]) to `target` with
    /// exactly `mode`: one `rename(2)` when both are on one filesystem, else a copy to a
    /// temporary file beside the target, fsynced, renamed into place. The parent must exist.
    pub fn install_staged(&self, staged: &Path, target: &Path, mode: u32) -> Result<(), FsError> {
        let real = self.resolve(target)?;
        sweep_beside(&real, target)?;
        let dir = real
            .parent()
            .ok_or_else(|| FsError::BadPath(target.display().to_string()))?;
        fs::set_permissions(staged, fs::Permissions::from_mode(mode))
            .map_err(io("chmod", staged))?;
        match fs::rename(staged, &real) {
            Ok(()) => {
                sync_dir(dir);
                return Ok(());
            }
            Err(e) if e.raw_os_error() == Some(nix::libc::EXDEV) => {}
            Err(e) => return Err(io("rename", target)(e)),
        }
        self.copy_into_place(staged, &real, target, mode)?;
        let _ = fs::remove_file(staged);
        Ok(())
    }

    /// Keeps a copy of the regular file at `from` at `to` (0600 when copied): a hard link
    /// when both are on one filesystem (the file is about to be replaced by a rename, never
    /// written in place), else a streamed copy. The parent of `to` must exist.
    pub fn link_or_copy(&self, from: &Path, to: &Path) -> Result<(), FsError> {
        let src = self.resolve(from)?;
        let dst = self.resolve(to)?;
        match fs::hard_link(&src, &dst) {
            Ok(()) => {
                if let Some(dir) = dst.parent() {
                    sync_dir(dir);
                }
                Ok(())
            }
            Err(e) if e.raw_os_error() == Some(nix::libc::EXDEV) => {
                self.copy_into_place(&src, &dst, to, 0o600)
            }
            Err(e) => Err(io("link", to)(e)),
        }
    }

    /// Copies a file from outside the root (a real path the user named) to `target` with
    /// exactly `mode`, atomically. The parent must exist.
    pub fn copy_from(&self, src: &Path, target: &Path, mode: u32) -> Result<(), FsError> {
        let real = self.resolve(target)?;
        sweep_beside(&real, target)?;
        self.copy_into_place(src, &real, target, mode)
    }

    /// Copies `src` to a temporary file beside `real` (the resolved `target`), fsyncs it and
    /// renames it into place.
    fn copy_into_place(
        &self,
        src: &Path,
        real: &Path,
        target: &Path,
        mode: u32,
    ) -> Result<(), FsError> {
        let (dir, tmp) = temp_beside(real, target)?;
        let result = (|| {
            let mut from = OpenOptions::new()
                .read(true)
                .custom_flags(nix::libc::O_NOFOLLOW)
                .open(src)
                .map_err(io("open", src))?;
            let mut to = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(io("create", target))?;
            to.set_permissions(fs::Permissions::from_mode(mode))
                .map_err(io("chmod", target))?;
            std::io::copy(&mut from, &mut to).map_err(io("copy", target))?;
            to.sync_all().map_err(io("fsync", target))?;
            fs::rename(&tmp, real).map_err(io("rename", target))?;
            sync_dir(dir);
            Ok(())
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }
}

/// Removes the temporary files of interrupted writes of `real` (already resolved); `target` is
/// the path as the caller named it, for errors.
fn sweep_beside(real: &Path, target: &Path) -> Result<usize, FsError> {
    let (Some(dir), Some(name)) = (real.parent(), real.file_name().and_then(|n| n.to_str())) else {
        return Ok(0);
    };
    let write_prefix = format!(".{name}.node-attach-");
    let link_temp = real
        .with_extension("node-attach-updated")
        .file_name()
        .and_then(|n| n.to_str())
        .map(str::to_owned);
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io("list", target)(e)),
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let Some(entry_name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        let ours = entry_name
            .strip_prefix(&write_prefix)
            .is_some_and(is_temp_suffix)
            || link_temp.as_deref() == Some(entry_name.as_str());
        // Never follow or descend: only plain files and symlinks we could have made.
        let kind_ok = entry
            .file_type()
            .map(|t| t.is_file() || t.is_symlink())
            .unwrap_or(false);
        if ours && kind_ok && fs::remove_file(entry.path()).is_ok() {
            removed += 1;
        }
    }
    if removed > 0 {
        sync_dir(dir);
    }
    Ok(removed)
}

/// Twelve random hex digits: the suffix of every temporary name this module makes.
/// The directory of `real` and a fresh temporary name in it for an atomic replace of `target`.
fn temp_beside<'a>(real: &'a Path, target: &Path) -> Result<(&'a Path, PathBuf), FsError> {
    let dir = real
        .parent()
        .ok_or_else(|| FsError::BadPath(target.display().to_string()))?;
    let name = real.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    Ok((
        dir,
        dir.join(format!(".{name}.node-attach-{}", temp_suffix())),
    ))
}

fn temp_suffix() -> String {
    let mut suffix = [0u8; 6];
    let _ = getrandom::fill(&mut suffix);
    suffix.iter().map(|b| format!("{b:02x}")).collect()
}

fn is_temp_suffix(rest: &str) -> bool {
    rest.len() == 12 && rest.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `.NAME.node-attach-stage-HEX` beside `real`.
fn staging_name(real: &Path) -> Result<PathBuf, FsError> {
    let (Some(dir), Some(name)) = (real.parent(), real.file_name()) else {
        return Err(FsError::BadPath(real.display().to_string()));
    };
    Ok(dir.join(format!(
        ".{}.node-attach-stage-{}",
        name.to_string_lossy(),
        temp_suffix()
    )))
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Removes the tree at a real (resolved) path on device `dev`: never follows a symlink, never
/// crosses into another filesystem, and keeps the pinned paths and the way to them. Returns
/// false when something was kept.
pub fn remove_tree_on(path: &Path, dev: u64, pinned: &[PathBuf]) -> std::io::Result<bool> {
    if pinned.iter().any(|p| p.starts_with(path)) {
        // Remove what we can around the pinned paths, keep the way to them.
        let meta = fs::symlink_metadata(path)?;
        if meta.is_dir() && !pinned.iter().any(|p| p == path) {
            for e in fs::read_dir(path)? {
                remove_tree_on(&e?.path(), dev, pinned)?;
            }
        }
        return Ok(false);
    }
    let meta = fs::symlink_metadata(path)?;
    if !meta.is_dir() {
        fs::remove_file(path)?;
        return Ok(true);
    }
    if meta.dev() != dev {
        return Ok(false);
    }
    let mut all = true;
    for e in fs::read_dir(path)? {
        all &= remove_tree_on(&e?.path(), dev, pinned)?;
    }
    if all {
        fs::remove_dir(path)?;
    }
    Ok(all)
}

/// A file only ever appended to (the journal): each [`AppendFile::append`] synced before it
/// returns, or [`AppendFile::write`]s synced together by one [`AppendFile::sync`].
#[derive(Debug)]
pub struct AppendFile(File);

impl AppendFile {
    /// Opens an existing file at a real (resolved) path for appending.
    pub fn open(real: &Path) -> std::io::Result<AppendFile> {
        OpenOptions::new().append(true).open(real).map(AppendFile)
    }

    /// Cuts the file to `len` bytes, synced.
    pub fn truncate(&mut self, len: u64) -> std::io::Result<()> {
        self.0.set_len(len)?;
        self.0.sync_all()
    }

    /// Appends `bytes`, synced.
    pub fn append(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.write(bytes)?;
        self.sync()
    }

    /// Appends `bytes`, not synced yet.
    pub fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.0.write_all(bytes)
    }

    /// Makes what was appended durable.
    pub fn sync(&mut self) -> std::io::Result<()> {
        self.0.sync_data()
    }
}

/// Writes a new file (it must not exist) at a real (resolved) path with `mode`, fsynced.
pub fn write_new_file(real: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(real)?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_with_exact_mode() {
        let tmp = tempfile::tempdir().expect("tmp");
        let root = Root::new(tmp.path());
        root.mkdir_all(Path::new("/etc/kubernetes"), 0o755)
            .expect("mkdir");
        root.write_atomic(Path::new("/etc/kubernetes/kubelet.conf"), b"x", 0o600)
            .expect("write");
        assert_eq!(
            root.inspect(Path::new("/etc/kubernetes/kubelet.conf"))
                .expect("inspect"),
            Existing::File {
                bytes: b"x".to_vec(),
                mode: 0o600,
                uid: nix::unistd::geteuid().as_raw(),
                gid: nix::unistd::getegid().as_raw(),
            }
        );
        root.write_atomic(Path::new("/etc/kubernetes/kubelet.conf"), b"yy", 0o644)
            .expect("rewrite");
        assert_eq!(
            root.inspect(Path::new("/etc/kubernetes/kubelet.conf"))
                .expect("inspect"),
            Existing::File {
                bytes: b"yy".to_vec(),
                mode: 0o644,
                uid: nix::unistd::geteuid().as_raw(),
                gid: nix::unistd::getegid().as_raw(),
            }
        );
        assert_eq!(
            root.list_dir(Path::new("/etc/kubernetes")).expect("ls"),
            ["kubelet.conf"]
        );
    }

    #[test]
    fn temps_left_by_an_interrupted_write_are_swept_and_nothing_else() {
        let tmp = tempfile::tempdir().expect("tmp");
        let root = Root::new(tmp.path());
        root.mkdir_all(Path::new("/etc"), 0o755).expect("mkdir");
        let etc = tmp.path().join("etc");
        for name in [
            ".fstab.node-attach-0a1b2c3d4e5f",
            "fstab.node-attach-updated",
            ".fstab.node-attach-notours",
            ".hosts.node-attach-0a1b2c3d4e5f",
            "fstab",
        ] {
            std::fs::write(etc.join(name), b"x").expect("seed");
        }
        assert_eq!(root.sweep_temps(Path::new("/etc/fstab")).expect("sweep"), 2);
        let mut left = root.list_dir(Path::new("/etc")).expect("ls");
        left.sort();
        assert_eq!(
            left,
            [
                ".fstab.node-attach-notours",
                ".hosts.node-attach-0a1b2c3d4e5f",
                "fstab"
            ]
        );
        root.write_atomic(Path::new("/etc/hosts"), b"127.0.0.1 localhost\n", 0o644)
            .expect("write");
        let mut left = root.list_dir(Path::new("/etc")).expect("ls");
        left.sort();
        assert_eq!(left, [".fstab.node-attach-notours", "fstab", "hosts"]);
    }

    #[test]
    fn the_run_lock_is_exclusive_until_dropped_and_leaves_nothing() {
        let tmp = tempfile::tempdir().expect("tmp");
        let root = Root::new(tmp.path());
        let held = root.lock_exclusive().expect("first lock");
        assert!(matches!(root.lock_exclusive(), Err(FsError::Busy(_))));
        drop(held);
        let _again = root.lock_exclusive().expect("lock after release");
        assert!(std::fs::read_dir(tmp.path()).expect("ls").next().is_none());
    }

    #[test]
    fn mkdir_reports_what_it_created() {
        let tmp = tempfile::tempdir().expect("tmp");
        let root = Root::new(tmp.path());
        root.mkdir_all(Path::new("/etc"), 0o755).expect("etc");
        let created = root.mkdir_all(Path::new("/etc/a/b"), 0o700).expect("mkdir");
        assert_eq!(
            created,
            [PathBuf::from("/etc/a"), PathBuf::from("/etc/a/b")]
        );
        assert!(root
            .mkdir_all(Path::new("/etc/a/b"), 0o700)
            .expect("again")
            .is_empty());
    }

    #[test]
    fn a_scratch_directory_leaves_nothing_and_staged_files_install_atomically() {
        let tmp = tempfile::tempdir().expect("tmp");
        let root = Root::new(tmp.path());
        root.mkdir_all(Path::new("/usr/bin"), 0o755).expect("usr");
        let staged = {
            let scratch = root.scratch().expect("scratch");
            let (mut f, real) = scratch.create("kubelet").expect("create");
            f.write_all(b"new kubelet").expect("write");
            assert!(scratch.create("../escape").is_err());
            root.write_atomic(Path::new("/usr/bin/kubelet"), b"old", 0o700)
                .expect("old");
            root.mkdir_all(Path::new("/var/lib/node-attach/backup"), 0o700)
                .expect("backup dir");
            root.link_or_copy(
                Path::new("/usr/bin/kubelet"),
                Path::new("/var/lib/node-attach/backup/000001"),
            )
            .expect("backup");
            root.install_staged(&real, Path::new("/usr/bin/kubelet"), 0o755)
                .expect("install");
            real
        };
        assert!(!staged.exists());
        let Found::File(d) = root.digest(Path::new("/usr/bin/kubelet")).expect("digest") else {
            panic!("a file")
        };
        assert_eq!(d.size, 11);
        assert_eq!(d.mode, 0o755);
        let want: String = {
            use sha2::{Digest, Sha256};
            Sha256::digest(b"new kubelet")
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect()
        };
        assert_eq!(d.sha256, want);
        assert_eq!(
            root.read(Path::new("/var/lib/node-attach/backup/000001"))
                .expect("read"),
            Some(b"old".to_vec()),
            "the backup kept the replaced bytes"
        );
        // The scratch directory is gone (made at the top: this root has no /var/tmp).
        let mut top = root.list_dir(Path::new("/")).expect("ls");
        top.sort();
        assert_eq!(top, ["usr", "var"]);
        assert_eq!(root.list_dir(Path::new("/var")).expect("ls"), ["lib"]);
        assert_eq!(
            root.digest(Path::new("/usr/bin/none")).expect("absent"),
            Found::Absent
        );
        assert_eq!(
            root.digest(Path::new("/usr/bin")).expect("dir"),
            Found::Other("directory")
        );
    }

    #[test]
    fn stale_scratch_directories_are_swept() {
        let tmp = tempfile::tempdir().expect("tmp");
        let root = Root::new(tmp.path());
        std::fs::create_dir_all(tmp.path().join("var/tmp/.node-attach-stage-0123456789ab/x"))
            .expect("stale");
        std::fs::create_dir_all(tmp.path().join("var/tmp/other")).expect("foreign");
        assert_eq!(root.sweep_scratch().expect("sweep"), 1);
        assert_eq!(root.list_dir(Path::new("/var/tmp")).expect("ls"), ["other"]);
    }

    #[test]
    fn symlinked_ancestors_are_refused() {
        let tmp = tempfile::tempdir().expect("tmp");
        let outside = tempfile::tempdir().expect("outside");
        let root = Root::new(tmp.path());
        root.mkdir_all(Path::new("/etc"), 0o755).expect("etc");
        std::os::unix::fs::symlink(outside.path(), tmp.path().join("etc/kubernetes"))
            .expect("link");
        let err = root
            .write_atomic(Path::new("/etc/kubernetes/kubelet.conf"), b"x", 0o600)
            .expect_err("refused");
        assert!(matches!(err, FsError::Symlink { .. }), "{err}");
        assert!(std::fs::read_dir(outside.path())
            .expect("ls")
            .next()
            .is_none());
        assert!(root.resolve(Path::new("/etc/../x")).is_err());
        assert!(root.resolve(Path::new("relative")).is_err());
    }
}
