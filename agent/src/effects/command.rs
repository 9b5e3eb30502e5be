//! Running a host program: with a deadline, its output read while it runs (a program that
//! prints more than a pipe holds, 64 KiB, would otherwise block until killed: `iptables-save`
//! on a node of a large cluster, `dpkg-query` on a full system), both streams capped, and its
//! exit noticed within a few milliseconds (polled from 1 ms, doubling to 20 ms). Standard input,
//! when given, is written by a thread of its own, so a program that does not read it (or reads
//! it slowly while its output fills a pipe) blocks neither the caller nor the deadline.

use super::EffectError;
use std::io::{Read, Write};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// The most standard output kept: a program that prints more fails, rather than be read cut.
const MAX_STDOUT: usize = 64 << 20;
/// The most standard error kept (its end, for the message).
const MAX_STDERR: usize = 64 << 10;
/// The most characters of standard error a failure's message carries (its end).
const MAX_DETAIL: usize = 800;
/// How long the output may go on after the program exited (a process it left running may hold
/// the pipes open): then what was read is what it printed.
const OUTPUT_GRACE: Duration = Duration::from_secs(2);
/// The longest pause between two looks at whether the program exited.
const MOST_POLL: Duration = Duration::from_millis(20);

/// Runs a program with a timeout; returns stdout, or an error with the end of stderr.
pub fn run_command(program: &str, args: &[&str], timeout: Duration) -> Result<String, EffectError> {
    run_command_env(program, args, &[], timeout)
}

/// [`run_command`], with these variables added to the program's environment.
pub fn run_command_env(
    program: &str,
    args: &[&str],
    env: &[(&str, &str)],
    timeout: Duration,
) -> Result<String, EffectError> {
    run(program, args, env, None, timeout)
}

/// [`run_command`], with `input` written to the program's standard input (then closed). A
/// program that exits without reading it all is not an error of its own: its exit status says.
pub fn run_command_input(
    program: &str,
    args: &[&str],
    input: Vec<u8>,
    timeout: Duration,
) -> Result<String, EffectError> {
    run(program, args, &[], Some(input), timeout)
}

fn run(
    program: &str,
    args: &[&str],
    env: &[(&str, &str)],
    input: Option<Vec<u8>>,
    timeout: Duration,
) -> Result<String, EffectError> {
    let what = format!("{program} {}", args.join(" "));
    let fail = |detail: String| EffectError {
        what: what.clone(),
        detail,
    };
    let mut child = Command::new(program)
        .args(args)
        .envs(env.iter().copied())
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(e.to_string()))?;
    if let (Some(pipe), Some(bytes)) = (child.stdin.take(), input) {
        feed(pipe, bytes);
    }
    let stdout = Capture::start(child.stdout.take(), MAX_STDOUT, Keep::Head);
    let stderr = Capture::start(child.stderr.take(), MAX_STDERR, Keep::Tail);
    let status = wait(&mut child, timeout).map_err(fail)?;
    let grace = Instant::now() + OUTPUT_GRACE;
    let (out, err) = (stdout.finish(grace), stderr.finish(grace));
    if !status.success() {
        let detail = stderr_detail(&String::from_utf8_lossy(&err.bytes));
        let code = status.code().unwrap_or(-1);
        return Err(fail(format!("exit status {code}: {detail}")));
    }
    if out.overflowed {
        return Err(fail(format!("printed more than {} MiB", MAX_STDOUT >> 20)));
    }
    Ok(String::from_utf8_lossy(&out.bytes).into_owned())
}

/// Writes `bytes` to the program's standard input from a thread of its own, then closes it. The
/// thread is never waited for: it ends when all is written, or when the program exits or is
/// killed at the deadline (the write then fails with a broken pipe; Rust ignores SIGPIPE).
fn feed(mut pipe: ChildStdin, bytes: Vec<u8>) {
    std::thread::spawn(move || {
        if let Err(e) = pipe.write_all(&bytes) {
            tracing::debug!("standard input not read to its end: {e}");
        }
    });
}

/// The end of a failed program's standard error, its non-empty lines joined with ` / `: the
/// last line alone often does not say why (dpkg ends with the package's name, systemctl with
/// "See systemctl status ...").
fn stderr_detail(stderr: &str) -> String {
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let all = lines.join(" / ");
    let count = all.chars().count();
    if count <= MAX_DETAIL {
        return all;
    }
    let tail: String = all.chars().skip(count - MAX_DETAIL).collect();
    format!("…{tail}")
}

/// Waits for the child to exit, killing it at the deadline.
fn wait(child: &mut Child, timeout: Duration) -> Result<ExitStatus, String> {
    let started = Instant::now();
    let mut pause = Duration::from_millis(1);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Ok(status),
            Ok(None) if started.elapsed() > timeout => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("did not finish within {timeout:?}"));
            }
            Ok(None) => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(MOST_POLL);
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// What was read from one of the program's streams.
#[derive(Default)]
struct Captured {
    bytes: Vec<u8>,
    /// More came than the cap (the excess was read and dropped).
    overflowed: bool,
}

/// Which bytes a capped stream keeps.
#[derive(Clone, Copy)]
enum Keep {
    /// The first ones: what a caller parses.
    Head,
    /// The last ones: the message a failing program ends with.
    Tail,
}

impl Captured {
    fn add(&mut self, chunk: &[u8], cap: usize, keep: Keep) {
        self.bytes.extend_from_slice(chunk);
        if self.bytes.len() > cap {
            self.overflowed = true;
            match keep {
                Keep::Head => self.bytes.truncate(cap),
                Keep::Tail => drop(self.bytes.drain(..self.bytes.len() - cap)),
            }
        }
    }
}

/// A stream read to its end by a thread of its own, keeping at most `cap` bytes.
struct Capture {
    read: Arc<Mutex<Captured>>,
    ended: Option<mpsc::Receiver<()>>,
}

impl Capture {
    fn start(pipe: Option<impl Read + Send + 'static>, cap: usize, keep: Keep) -> Capture {
        let read = Arc::new(Mutex::new(Captured::default()));
        let Some(mut pipe) = pipe else {
            return Capture { read, ended: None };
        };
        let (tx, ended) = mpsc::sync_channel(1);
        let into = Arc::clone(&read);
        std::thread::spawn(move || {
            let mut buf = [0u8; 16 << 10];
            loop {
                match pipe.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => lock(&into).add(&buf[..n], cap, keep),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
            let _ = tx.send(());
        });
        Capture {
            read,
            ended: Some(ended),
        }
    }

    /// What was read once the stream ends, or by `by` if it is still open then (the reader is
    /// left to finish on its own).
    fn finish(self, by: Instant) -> Captured {
        if let Some(ended) = self.ended {
            let _ = ended.recv_timeout(by.saturating_duration_since(Instant::now()));
        }
        std::mem::take(&mut *lock(&self.read))
    }
}

fn lock(m: &Mutex<Captured>) -> std::sync::MutexGuard<'_, Captured> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_report_stderr_and_timeouts() {
        let out = run_command("sh", &["-c", "echo hi"], Duration::from_secs(5)).expect("ok");
        assert_eq!(out.trim(), "hi");
        let err = run_command(
            "sh",
            &["-c", "echo boom >&2; exit 3"],
            Duration::from_secs(5),
        )
        .expect_err("fails");
        assert!(err.to_string().contains("exit status 3: boom"), "{err}");
        let err = run_command("sleep", &["5"], Duration::from_millis(200)).expect_err("slow");
        assert!(err.to_string().contains("did not finish"), "{err}");
    }

    #[test]
    fn a_failure_keeps_the_lines_that_say_why() {
        // dpkg --purge refusing a package something depends on: its last line names the
        // package only.
        let dpkg = "dpkg: dependency problems prevent removal of containerd:\n \
                    docker.io depends on containerd (>= 1.2.6-0ubuntu1~).\n\n\
                    dpkg: error processing package containerd (--purge):\n \
                    dependency problems - not removing\n\
                    Errors were encountered while processing:\n containerd\n";
        let script = format!("printf '%s' '{dpkg}' >&2; exit 1");
        let err = run_command("sh", &["-c", &script], Duration::from_secs(5)).expect_err("fails");
        let shown = err.to_string();
        assert!(shown.contains("exit status 1: dpkg: dependency problems prevent removal of containerd: / docker.io depends on containerd"), "{shown}");
        assert!(
            shown.ends_with("Errors were encountered while processing: / containerd"),
            "{shown}"
        );
        // A long one keeps its end.
        let long = format!("{}\nE: the reason", "W: noise\n".repeat(200));
        let detail = stderr_detail(&long);
        assert!(
            detail.starts_with('…') && detail.ends_with("E: the reason"),
            "{detail}"
        );
        assert!(detail.chars().count() <= MAX_DETAIL + 1);
    }

    #[test]
    fn variables_reach_the_program() {
        let env = [("DEBIAN_FRONTEND", "noninteractive")];
        let out = run_command_env(
            "sh",
            &["-c", "echo $DEBIAN_FRONTEND"],
            &env,
            Duration::from_secs(5),
        );
        assert_eq!(out.expect("ok"), "noninteractive\n");
    }

    #[test]
    fn input_reaches_a_program_that_reads_it() {
        // More than a pipe holds, echoed back whole: written and read while the program runs.
        let input: Vec<u8> = (0..300_000u32).map(|i| b'a' + (i % 26) as u8).collect();
        let out = run_command_input("cat", &[], input.clone(), Duration::from_secs(10));
        assert_eq!(out.expect("ok").as_bytes(), input.as_slice());
        let out = run_command_input(
            "wc",
            &["-l"],
            b"one\ntwo\n".to_vec(),
            Duration::from_secs(5),
        );
        assert_eq!(out.expect("ok").trim(), "2");
    }

    #[test]
    fn input_a_program_does_not_read_does_not_hold_the_caller() {
        // It exits at once without reading: its status is the result.
        let input = vec![b'x'; 1 << 20];
        let out = run_command_input(
            "sh",
            &["-c", "echo done"],
            input.clone(),
            Duration::from_secs(10),
        );
        assert_eq!(out.expect("ok"), "done\n");
        let err = run_command_input(
            "sh",
            &["-c", "exit 4"],
            input.clone(),
            Duration::from_secs(10),
        )
        .expect_err("fails");
        assert!(err.to_string().contains("exit status 4"), "{err}");
        // It neither reads nor exits: the deadline still holds, the pipe full or not.
        let started = Instant::now();
        let err = run_command_input("sleep", &["30"], input, Duration::from_millis(300))
            .expect_err("slow");
        assert!(err.to_string().contains("did not finish"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(10), "held");
    }

    #[test]
    fn output_beyond_a_pipe_buffer_is_read_while_the_command_runs() {
        let script = "head -c 300000 /dev/zero | tr '\\0' x; head -c 200000 /dev/zero >&2";
        let out = run_command("sh", &["-c", script], Duration::from_secs(10)).expect("ok");
        assert_eq!(out.len(), 300_000);
        assert!(out.bytes().all(|b| b == b'x'));
    }

    #[test]
    fn a_process_left_holding_the_output_does_not_hold_the_caller() {
        // The shell exits at once; the sleep it leaves behind keeps stdout open for 30 s.
        let started = Instant::now();
        let out = run_command(
            "sh",
            &["-c", "echo early; sleep 30 &"],
            Duration::from_secs(10),
        )
        .expect("ok");
        assert!(started.elapsed() < Duration::from_secs(10), "held");
        assert_eq!(out, "early\n");
    }

    #[test]
    fn a_capped_stream_keeps_its_head_or_its_tail() {
        let by = || Instant::now() + Duration::from_secs(5);
        let head = Capture::start(Some(&b"abcdef"[..]), 4, Keep::Head).finish(by());
        assert_eq!(
            (head.bytes.as_slice(), head.overflowed),
            (&b"abcd"[..], true)
        );
        let tail = Capture::start(Some(&b"abcdef"[..]), 4, Keep::Tail).finish(by());
        assert_eq!(
            (tail.bytes.as_slice(), tail.overflowed),
            (&b"cdef"[..], true)
        );
        let whole = Capture::start(Some(&b"abc"[..]), 4, Keep::Head).finish(by());
        assert_eq!(
            (whole.bytes.as_slice(), whole.overflowed),
            (&b"abc"[..], false)
        );
    }
}
