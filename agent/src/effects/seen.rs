//! What is at a path, as reset's audit report records it before and after each change: a
//! regular file by its SHA-256 (streamed, so a large file costs no memory; not hashed above
//! [`MAX_HASHED`]), a symlink by its target, a directory, a special file by its kind. Never
//! follows a symlink, never opens a special file, never leaves the root.

use super::fs::{FsError, Root};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Files larger than this are reported by size alone.
pub const MAX_HASHED: u64 = 256 * 1024 * 1024;

/// What was at a path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Seen {
    /// Nothing.
    Absent,
    /// A regular file.
    File {
        /// Hex SHA-256 of its bytes (None above [`MAX_HASHED`]).
        sha256: Option<String>,
        /// Its size in bytes.
        size: u64,
        /// Permission bits, octal (`0644`).
        mode: String,
    },
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink {
        /// Where it points.
        target: String,
    },
    /// A FIFO, socket or device.
    Special {
        /// Which.
        kind: &'static str,
    },
}

impl Seen {
    /// The file's SHA-256, if it is a hashed regular file.
    pub fn sha256(&self) -> Option<&str> {
        match self {
            Seen::File { sha256, .. } => sha256.as_deref(),
            _ => None,
        }
    }

    /// A regular file's state from its bytes and mode (for what a dry run would write).
    pub fn of_bytes(bytes: &[u8], mode: u32) -> Seen {
        Seen::File {
            sha256: Some(hex(&Sha256::digest(bytes))),
            size: bytes.len() as u64,
            mode: format!("{:04o}", mode & 0o7777),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> FsError + 'a {
    move |source| FsError::Io {
        op,
        path: path.display().to_string(),
        source,
    }
}

fn special(ft: std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_fifo() {
        "fifo"
    } else if ft.is_socket() {
        "socket"
    } else if ft.is_char_device() {
        "character device"
    } else {
        "block device"
    }
}

/// Streams the SHA-256 of the regular file at `real`, opened without following a link and
/// checked to be the same file the metadata described.
fn digest(real: &Path, target: &Path, meta: &std::fs::Metadata) -> Result<String, FsError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(real)
        .map_err(io("open", target))?;
    let now = file.metadata().map_err(io("stat", target))?;
    if !now.is_file() || now.ino() != meta.ino() || now.dev() != meta.dev() {
        return Err(FsError::BadPath(format!(
            "{}: replaced while it was read",
            target.display()
        )));
    }
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut reader = file.take(MAX_HASHED);
    loop {
        let n = reader.read(&mut buf).map_err(io("read", target))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

impl Root {
    /// What is at `target` now (a final symlink is reported, not followed).
    pub fn seen(&self, target: &Path) -> Result<Seen, FsError> {
        let Some((real, meta)) = self.lstat(target)? else {
            return Ok(Seen::Absent);
        };
        let ft = meta.file_type();
        Ok(if ft.is_symlink() {
            let to = std::fs::read_link(&real).map_err(io("read link", target))?;
            Seen::Symlink {
                target: to.display().to_string(),
            }
        } else if ft.is_dir() {
            Seen::Dir
        } else if ft.is_file() {
            let sha256 = if meta.len() <= MAX_HASHED {
                Some(digest(&real, target, &meta)?)
            } else {
                None
            };
            Seen::File {
                sha256,
                size: meta.len(),
                mode: format!("{:04o}", meta.mode() & 0o7777),
            }
        } else {
            Seen::Special { kind: special(ft) }
        })
    }

    /// Every path in the tree at `target` (itself first, then depth first, names sorted),
    /// staying on the tree's own filesystem as reset's removal does, with what is there; at
    /// most `limit` paths (the flag says whether more were left out).
    pub fn walk_seen(
        &self,
        target: &Path,
        limit: usize,
    ) -> Result<(Vec<(PathBuf, Seen)>, bool), FsError> {
        let dev = self.dir_device(target);
        let mut out = Vec::new();
        let mut stack = vec![target.to_path_buf()];
        while let Some(path) = stack.pop() {
            if out.len() >= limit {
                return Ok((out, true));
            }
            let seen = self.seen(&path)?;
            let descend = seen == Seen::Dir && self.dir_device(&path) == dev;
            out.push((path.clone(), seen));
            if descend {
                let mut names = self.list_dir(&path)?;
                names.reverse();
                stack.extend(names.into_iter().map(|n| path.join(n)));
            }
        }
        Ok((out, false))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_links_and_dirs_are_seen_without_following() {
        let dir = tempfile::tempdir().expect("tmp");
        let root = Root::new(dir.path());
        root.mkdir_all(Path::new("/a/b"), 0o755).expect("mkdir");
        root.write_atomic(Path::new("/a/b/f"), b"hello", 0o640)
            .expect("write");
        root.symlink_atomic(Path::new("/a/l"), Path::new("/etc/shadow"))
            .expect("link");
        let f = root.seen(Path::new("/a/b/f")).expect("seen");
        assert_eq!(f, Seen::of_bytes(b"hello", 0o640));
        assert_eq!(
            f.sha256(),
            Some("2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824")
        );
        assert_eq!(
            root.seen(Path::new("/a/l")).expect("seen"),
            Seen::Symlink {
                target: "/etc/shadow".into()
            }
        );
        assert_eq!(root.seen(Path::new("/nope")).expect("seen"), Seen::Absent);
        let (all, more) = root.walk_seen(Path::new("/a"), 10).expect("walk");
        let names: Vec<String> = all.iter().map(|(p, _)| p.display().to_string()).collect();
        assert_eq!(names, ["/a", "/a/b", "/a/b/f", "/a/l"]);
        assert!(!more);
        let (some, more) = root.walk_seen(Path::new("/a"), 2).expect("walk");
        assert_eq!((some.len(), more), (2, true));
    }
}
