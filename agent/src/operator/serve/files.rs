//! `node-attach serve --files DIR`: a read-only static file endpoint at `/files/...`, so the
//! installer (`attach.sh`), the static binary and its `.sha256` can be served over the same
//! HTTPS listener as the values.
//!
//! What it serves, and what it refuses:
//! - `GET` and `HEAD` only (anything else is 405); no directory listing (a directory is 404).
//! - The path is resolved one component at a time with `openat(O_NOFOLLOW)` from a directory
//!   descriptor opened once at startup: a symlink anywhere on the path is never followed (404,
//!   even when it points inside DIR), `..` and `.` are refused (400), and so are empty
//!   components, NUL, backslashes and names starting with a dot (hidden files, temp files).
//!   Percent-escapes are decoded per component, so `%2e%2e` is `..` and refused, and `%2f` is
//!   refused.
//! - Only regular files (checked with `fstat` on the opened descriptor; a FIFO is opened
//!   non-blocking and refused) — everything else is 404.
//! - Bodies are streamed in 64 KiB chunks, never read whole into memory; `Content-Length` is the
//!   size at open time and exactly that many bytes are sent (a file that shrinks mid-transfer
//!   aborts the response rather than sending short).
//! - At most [`MAX_CONCURRENT`] transfers at a time (503 with `Retry-After` beyond that), and
//!   every connection lives at most [`super::CONNECTION_LIFETIME`].

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use nix::fcntl::{openat, OFlag};
use nix::sys::stat::Mode;
use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Concurrent file transfers at most.
pub const MAX_CONCURRENT: usize = 32;
/// Bytes per body chunk.
const CHUNK: usize = 64 * 1024;
/// Path components at most.
const MAX_DEPTH: usize = 16;

/// The served directory.
pub struct Files {
    dir: OwnedFd,
    slots: Arc<Semaphore>,
}

/// Why a path is not served.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// `..`, `.`, an empty or hidden component, NUL, a backslash, a bad escape: 400.
    BadPath,
    /// Missing, not a regular file, a symlink on the way, unreadable: 404.
    NotFound,
    /// Too many transfers in flight: 503.
    Busy,
}

/// An opened regular file, ready to stream.
pub struct Opened {
    /// Its size at open time (the Content-Length).
    pub len: u64,
    /// Its modification time, for Last-Modified.
    pub modified: Option<std::time::SystemTime>,
    /// The body (holds a transfer slot until dropped).
    pub body: FileBody,
}

impl Files {
    /// Opens `dir` (which must be a directory; a symlink to one is followed here, once, since
    /// the operator named it).
    pub fn open(dir: &Path) -> Result<Files, String> {
        let fd = nix::fcntl::open(
            dir,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| format!("--files {}: {e}", dir.display()))?;
        Ok(Files {
            dir: fd,
            slots: Arc::new(Semaphore::new(MAX_CONCURRENT)),
        })
    }

    /// Opens the file at `rel` (the request path after `/files/`, still percent-encoded).
    pub async fn get(&self, rel: &str) -> Result<Opened, Refusal> {
        let components = components(rel)?;
        let permit = self
            .slots
            .clone()
            .try_acquire_owned()
            .map_err(|_| Refusal::Busy)?;
        let dir = self.dir.try_clone().map_err(|_| Refusal::NotFound)?;
        let (file, meta) = tokio::task::spawn_blocking(move || open_beneath(dir, &components))
            .await
            .map_err(|_| Refusal::NotFound)??;
        Ok(Opened {
            len: meta.len(),
            modified: meta.modified().ok(),
            body: FileBody {
                file: tokio::fs::File::from_std(file),
                remaining: meta.len(),
                buf: vec![0; CHUNK].into_boxed_slice(),
                _slot: permit,
            },
        })
    }
}

/// Splits and decodes the request path; refuses anything but plain names.
fn components(rel: &str) -> Result<Vec<String>, Refusal> {
    let parts: Vec<&str> = rel.split('/').collect();
    if parts.len() > MAX_DEPTH {
        return Err(Refusal::BadPath);
    }
    parts
        .into_iter()
        .map(|p| {
            let name = percent_decode(p).ok_or(Refusal::BadPath)?;
            let bad = name.is_empty()
                || name.starts_with('.')
                || name.len() > 255
                || name.contains(['/', '\\', '\0']);
            if bad {
                Err(Refusal::BadPath)
            } else {
                Ok(name)
            }
        })
        .collect()
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Walks `components` from `dir` with `O_NOFOLLOW` at every step; the last must be a regular
/// file.
fn open_beneath(
    dir: OwnedFd,
    components: &[String],
) -> Result<(std::fs::File, std::fs::Metadata), Refusal> {
    let (last, parents) = components.split_last().ok_or(Refusal::BadPath)?;
    let base = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let mut cur = dir;
    for c in parents {
        cur = openat(&cur, c.as_str(), base | OFlag::O_DIRECTORY, Mode::empty())
            .map_err(|_| Refusal::NotFound)?;
    }
    // Non-blocking, so a FIFO cannot hang the open; a regular file ignores the flag.
    let fd = openat(&cur, last.as_str(), base | OFlag::O_NONBLOCK, Mode::empty())
        .map_err(|_| Refusal::NotFound)?;
    let file = std::fs::File::from(fd);
    let meta = file.metadata().map_err(|_| Refusal::NotFound)?;
    if !meta.file_type().is_file() {
        return Err(Refusal::NotFound);
    }
    Ok((file, meta))
}

/// A file body: exactly `remaining` bytes, read in [`CHUNK`]s as the connection takes them.
pub struct FileBody {
    file: tokio::fs::File,
    remaining: u64,
    buf: Box<[u8]>,
    _slot: OwnedSemaphorePermit,
}

impl Body for FileBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        if this.remaining == 0 {
            return Poll::Ready(None);
        }
        let want = usize::try_from(this.remaining).map_or(CHUNK, |r| r.min(CHUNK));
        let mut rb = ReadBuf::new(&mut this.buf[..want]);
        ready!(Pin::new(&mut this.file).poll_read(cx, &mut rb))?;
        let n = rb.filled().len();
        if n == 0 {
            return Poll::Ready(Some(Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the file shrank while being served",
            ))));
        }
        this.remaining -= n as u64;
        Poll::Ready(Some(Ok(Frame::data(Bytes::copy_from_slice(rb.filled())))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("rt")
    }

    #[test]
    fn components_refuse_traversal_hidden_and_escapes() {
        assert_eq!(
            components("a/b.sh").expect("plain"),
            vec!["a".to_string(), "b.sh".to_string()]
        );
        assert_eq!(components("a%20b").expect("space"), vec!["a b".to_string()]);
        for bad in [
            "",
            "..",
            ".",
            "a/../b",
            "%2e%2e",
            "a/%2E%2e/b",
            "a%2fb",
            "a//b",
            "a/",
            ".hidden",
            "a\\b",
            "%00",
            "%zz",
            "%4",
            "%ff",
        ] {
            assert_eq!(components(bad), Err(Refusal::BadPath), "{bad:?}");
        }
        assert_eq!(
            components(&["d"; MAX_DEPTH + 1].join("/")),
            Err(Refusal::BadPath)
        );
    }

    #[test]
    fn serves_regular_files_only_and_never_follows_symlinks() {
        let tmp = tempfile::tempdir().expect("tmp");
        let root = tmp.path().join("www");
        std::fs::create_dir_all(root.join("sub")).expect("mkdir");
        std::fs::write(root.join("sub/f.txt"), b"hello").expect("write");
        std::fs::write(tmp.path().join("outside"), b"secret").expect("write");
        std::os::unix::fs::symlink("../outside", root.join("out")).expect("symlink");
        std::os::unix::fs::symlink("sub/f.txt", root.join("in")).expect("symlink");
        std::os::unix::fs::symlink("sub", root.join("subdir")).expect("symlink");
        nix::unistd::mkfifo(&root.join("fifo"), Mode::from_bits_truncate(0o644)).expect("fifo");
        let files = Files::open(&root).expect("open");
        let rt = rt();
        let got = rt.block_on(files.get("sub/f.txt")).expect("regular file");
        assert_eq!(got.len, 5);
        let body = rt.block_on(got.body.collect()).expect("body").to_bytes();
        assert_eq!(&body[..], b"hello");
        for refused in ["out", "in", "subdir/f.txt", "sub", "fifo", "missing"] {
            assert!(
                matches!(rt.block_on(files.get(refused)), Err(Refusal::NotFound)),
                "{refused}"
            );
        }
    }

    #[test]
    fn large_files_stream_in_chunks_of_exactly_their_length() {
        let tmp = tempfile::tempdir().expect("tmp");
        let data: Vec<u8> = (0..(CHUNK * 3 + 17)).map(|i| (i % 251) as u8).collect();
        std::fs::write(tmp.path().join("big"), &data).expect("write");
        let files = Files::open(tmp.path()).expect("open");
        let rt = rt();
        let mut got = rt.block_on(files.get("big")).expect("big");
        assert_eq!(got.len, data.len() as u64);
        let mut frames = 0;
        let mut all = Vec::new();
        while let Some(f) = rt.block_on(got.body.frame()) {
            let d = f.expect("frame").into_data().expect("data");
            assert!(d.len() <= CHUNK);
            all.extend_from_slice(&d);
            frames += 1;
        }
        assert_eq!(frames, 4);
        assert_eq!(all, data);
    }

    #[test]
    fn transfers_are_bounded() {
        let tmp = tempfile::tempdir().expect("tmp");
        std::fs::write(tmp.path().join("f"), b"x").expect("write");
        let files = Files::open(tmp.path()).expect("open");
        let rt = rt();
        let held: Vec<Opened> = (0..MAX_CONCURRENT)
            .map(|_| rt.block_on(files.get("f")).expect("slot"))
            .collect();
        assert!(matches!(rt.block_on(files.get("f")), Err(Refusal::Busy)));
        drop(held);
        assert!(rt.block_on(files.get("f")).is_ok());
    }
}
