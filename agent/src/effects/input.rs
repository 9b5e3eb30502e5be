//! Files the operator names on the command line (and the one it asks node-attach to write,
//! [`write_output`]). Inputs (`--config`, `--kubeconfig`, `--values`,
//! `--token-file`…) and the system's CA bundle, read from the host as given (never under
//! `--root`): opened once, bounded in size, with the mode of the file that was read (no
//! check-then-read race), so callers can refuse or warn about secrets others may read.

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// A file that was read, with its permission bits.
#[derive(Debug)]
pub struct InputFile {
    /// Its bytes.
    pub bytes: Vec<u8>,
    /// Permission bits (e.g. 0o600).
    pub mode: u32,
}

impl InputFile {
    /// Whether users other than the owner (`group`: and its group) may read it.
    pub fn readable_by_others(&self, group_too: bool) -> bool {
        let mask = if group_too { 0o077 } else { 0o007 };
        self.mode & mask != 0
    }

    /// The bytes as UTF-8 text.
    pub fn into_text(self, path: &Path) -> Result<String, InputError> {
        String::from_utf8(self.bytes).map_err(|_| InputError::NotText(path.to_owned()))
    }
}

/// Why an input file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// It could not be opened or read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// It is larger than its cap.
    #[error("{}: larger than {max} bytes", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The cap.
        max: u64,
    },
    /// It is not a regular file (a FIFO would block the reader).
    #[error("{}: not a regular file", .0.display())]
    NotRegular(PathBuf),
    /// It is not UTF-8 text.
    #[error("{}: not UTF-8 text", .0.display())]
    NotText(PathBuf),
}

/// Reads at most `max` bytes of a regular file; a longer file is refused.
pub fn read(path: &Path, max: u64) -> Result<InputFile, InputError> {
    use std::os::unix::fs::OpenOptionsExt;
    let fail = |source| InputError::Io {
        path: path.to_owned(),
        source,
    };
    // Non-blocking, so a FIFO cannot hang the open; a regular file ignores the flag.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(path)
        .map_err(fail)?;
    let meta = file.metadata().map_err(fail)?;
    if !meta.is_file() {
        return Err(InputError::NotRegular(path.to_owned()));
    }
    let mut bytes = Vec::new();
    file.take(max + 1).read_to_end(&mut bytes).map_err(fail)?;
    if bytes.len() as u64 > max {
        return Err(InputError::TooLarge {
            path: path.to_owned(),
            max,
        });
    }
    Ok(InputFile {
        bytes,
        mode: meta.mode() & 0o7777,
    })
}

/// Writes a file the operator named (`reset --report FILE`) atomically: a temporary file beside
/// it, created with exactly `mode`, written and synced, then renamed over `path`; the directory
/// is synced. A final symlink is replaced, not followed.
pub fn write_output(path: &Path, bytes: &[u8], mode: u32) -> Result<(), InputError> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let fail = |source| InputError::Io {
        path: path.to_owned(),
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut suffix = [0u8; 6];
    let _ = getrandom::fill(&mut suffix);
    let suffix: String = suffix.iter().map(|b| format!("{b:02x}")).collect();
    let tmp = dir.join(format!(".{name}.node-attach-{suffix}"));
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&tmp)?;
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.map_err(fail)
}

/// Reads a UTF-8 text file of at most `max` bytes.
pub fn read_text(path: &Path, max: u64) -> Result<String, InputError> {
    read(path, max)?.into_text(path)
}

/// The absolute, symlink-free form of a path the operator named (it must exist).
pub fn canonical(path: &Path) -> Result<PathBuf, InputError> {
    std::fs::canonicalize(path).map_err(|source| InputError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Creates a directory the operator named, with its missing parents.
pub fn create_dir_all(path: &Path) -> Result<(), InputError> {
    std::fs::create_dir_all(path).map_err(|source| InputError::Io {
        path: path.to_owned(),
        source,
    })
}

/// The regular files directly in a directory the operator named, hidden ones left out, sorted;
/// None when `path` is not a directory.
pub fn list_files(path: &Path) -> Result<Option<Vec<PathBuf>>, InputError> {
    let fail = |source| InputError::Io {
        path: path.to_owned(),
        source,
    };
    if !std::fs::metadata(path).map_err(fail)?.is_dir() {
        return Ok(None);
    }
    let mut names: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(fail)?
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .map(|e| e.path())
        .collect();
    names.sort();
    Ok(Some(names))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_read_with_its_mode_and_bounded() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().expect("tmp");
        let p = tmp.path().join("f");
        std::fs::write(&p, "abc").expect("write");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        let f = read(&p, 3).expect("read");
        assert_eq!((f.bytes.as_slice(), f.mode), (&b"abc"[..], 0o640));
        assert!(f.readable_by_others(true) && !f.readable_by_others(false));
        assert!(matches!(
            read(&p, 2),
            Err(InputError::TooLarge { max: 2, .. })
        ));
        assert!(matches!(
            read(tmp.path(), 10),
            Err(InputError::NotRegular(_))
        ));
        let fifo = tmp.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("fifo");
        assert!(matches!(read(&fifo, 10), Err(InputError::NotRegular(_))));
        assert!(matches!(
            read(&tmp.path().join("absent"), 10),
            Err(InputError::Io { .. })
        ));
    }
}
