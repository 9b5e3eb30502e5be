//! Progress and results, for people and for programs.
//!
//! In text mode each phase prints one line with its elapsed time (readable in cloud-init's log
//! as well as on a terminal) and failures go to stderr with their code and hint. With
//! `--output json` every line on stdout is a JSON object: one per phase event
//! (`{"phase","status","duration_ms","cpu_ms",…}`: `cpu_ms` is the CPU time, user and system, the
//! process spent in the phase), then one `{"result":…}` or `{"error":…}`.

use crate::error::Failure;
use serde::Serialize;
use std::io::Write;
use std::time::Instant;

/// How to print.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// JSON lines.
    Json,
}

/// A phase's outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Started.
    Started,
    /// Finished and changed something.
    Done,
    /// Finished; nothing needed changing.
    Unchanged,
    /// Deliberately not run.
    Skipped,
    /// Failed.
    Failed,
}

#[derive(Serialize)]
struct PhaseEvent<'a> {
    phase: &'a str,
    status: Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    duration_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cpu_ms: Option<f64>,
    elapsed_ms: u64,
    #[serde(skip_serializing_if = "str::is_empty")]
    detail: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<&'a str>,
}

/// Prints progress lines and the final result.
pub struct Reporter {
    format: OutputFormat,
    start: Instant,
    out: Box<dyn Write + Send>,
}

impl Reporter {
    /// A reporter writing to stdout.
    pub fn stdout(format: OutputFormat) -> Reporter {
        Reporter {
            format,
            start: Instant::now(),
            out: Box::new(std::io::stdout()),
        }
    }

    /// The output format.
    pub fn format(&self) -> OutputFormat {
        self.format
    }

    fn elapsed_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn line(&mut self, text: &str) {
        // A closed stdout (a pipe whose reader went away) must not abort a join halfway.
        let _ = writeln!(self.out, "{text}");
        let _ = self.out.flush();
    }

    /// Reports a phase event. `duration` is the phase's own time, if it finished.
    pub fn phase(
        &mut self,
        phase: &str,
        status: Status,
        duration: Option<std::time::Duration>,
        detail: &str,
    ) {
        self.phase_event(phase, status, duration, None, detail);
    }

    fn phase_event(
        &mut self,
        phase: &str,
        status: Status,
        duration: Option<std::time::Duration>,
        cpu: Option<std::time::Duration>,
        detail: &str,
    ) {
        let elapsed_ms = self.elapsed_ms();
        match self.format {
            OutputFormat::Json => {
                let event = PhaseEvent {
                    phase,
                    status,
                    duration_ms: duration.map(|d| d.as_millis() as u64),
                    cpu_ms: cpu.map(|c| (c.as_secs_f64() * 1e4).round() / 10.0),
                    elapsed_ms,
                    detail,
                    code: None,
                };
                let text = serde_json::to_string(&event).unwrap_or_default();
                self.line(&text);
            }
            OutputFormat::Text => {
                if status == Status::Started {
                    return;
                }
                let word = match status {
                    Status::Done => "done",
                    Status::Unchanged => "unchanged",
                    Status::Skipped => "skipped",
                    Status::Failed => "FAILED",
                    Status::Started => "started",
                };
                let took = duration
                    .map(|d| format!(" ({:.2}s)", d.as_secs_f64()))
                    .unwrap_or_default();
                let text = format!(
                    "[{:>7.2}s] {phase:<12} {word:<9}{}{took}",
                    elapsed_ms as f64 / 1000.0,
                    if detail.is_empty() {
                        String::new()
                    } else {
                        format!(" {detail}")
                    },
                );
                self.line(&text);
            }
        }
    }

    /// Prints a notice (something the user should know that is not a failure).
    pub fn notice(&mut self, text: &str) {
        match self.format {
            OutputFormat::Json => {
                let line = serde_json::json!({ "notice": text, "elapsed_ms": self.elapsed_ms() });
                self.line(&line.to_string());
            }
            OutputFormat::Text => self.line(&format!("note: {text}")),
        }
    }

    /// Prints the final result: `text` for people, `value` for programs.
    pub fn result<T: Serialize>(&mut self, value: &T, text: &str) {
        match self.format {
            OutputFormat::Json => {
                let line = serde_json::json!({ "result": value });
                self.line(&line.to_string());
            }
            OutputFormat::Text => {
                if !text.is_empty() {
                    self.line(text.trim_end());
                }
            }
        }
    }

    /// Prints a failure: JSON on stdout, or text on stderr.
    pub fn failure(&mut self, phase: Option<&str>, failure: &Failure) {
        match self.format {
            OutputFormat::Json => {
                let line = serde_json::json!({
                    "error": {
                        "phase": phase,
                        "code": failure.code,
                        "exit_code": failure.code.exit_code(),
                        "message": failure.message,
                        "hint": failure.hint,
                    },
                    "elapsed_ms": self.elapsed_ms(),
                });
                self.line(&line.to_string());
            }
            OutputFormat::Text => {
                let mut err = std::io::stderr();
                let _ = writeln!(err, "error: {failure}");
            }
        }
    }
}

/// A phase under way: reported started when made, and done with [`Phase::end`]; dropped
/// without it (a `?` returned early), it is reported failed.
pub struct Phase<'r> {
    reporter: &'r mut Reporter,
    name: &'static str,
    started: std::time::Instant,
    cpu_started: std::time::Duration,
    ended: bool,
}

/// The CPU time (user and system) this process has used so far.
pub fn process_cpu() -> std::time::Duration {
    use nix::sys::resource::{getrusage, UsageWho};
    let Ok(usage) = getrusage(UsageWho::RUSAGE_SELF) else {
        return std::time::Duration::ZERO;
    };
    let time = |tv: nix::sys::time::TimeVal| {
        std::time::Duration::new(
            u64::try_from(tv.tv_sec()).unwrap_or(0),
            u32::try_from(tv.tv_usec()).unwrap_or(0) * 1000,
        )
    };
    time(usage.user_time()) + time(usage.system_time())
}

impl Reporter {
    /// Starts a phase.
    pub fn begin(&mut self, name: &'static str) -> Phase<'_> {
        self.phase(name, Status::Started, None, "");
        Phase {
            reporter: self,
            name,
            started: std::time::Instant::now(),
            cpu_started: process_cpu(),
            ended: false,
        }
    }
}

impl Phase<'_> {
    /// Reports the phase's end.
    pub fn end(mut self, status: Status, detail: &str) {
        self.ended = true;
        let elapsed = self.started.elapsed();
        let cpu = process_cpu().saturating_sub(self.cpu_started);
        self.reporter
            .phase_event(self.name, status, Some(elapsed), Some(cpu), detail);
    }

    /// Something the user should know, said while the phase runs.
    pub fn notice(&mut self, text: &str) {
        self.reporter.notice(text);
    }
}

impl Drop for Phase<'_> {
    fn drop(&mut self) {
        if !self.ended {
            let elapsed = self.started.elapsed();
            let cpu = process_cpu().saturating_sub(self.cpu_started);
            self.reporter
                .phase_event(self.name, Status::Failed, Some(elapsed), Some(cpu), "");
        }
    }
}
