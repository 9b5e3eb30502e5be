//! What `make bench`'s binaries share: one node-attach run, timed and costed, next to a kubelet
//! stand-in when a Node must register, and the median of a series.

use nix::sys::resource::{getrusage, UsageWho};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// CPU time (user + system) of every child this process has waited for.
pub fn child_cpu() -> Duration {
    let u = getrusage(UsageWho::RUSAGE_CHILDREN).expect("getrusage");
    let t = |tv: nix::sys::time::TimeVal| {
        Duration::new(tv.tv_sec() as u64, (tv.tv_usec() as u32) * 1000)
    };
    t(u.user_time()) + t(u.system_time())
}

/// One finished node-attach run.
pub struct Run {
    /// Its stdout and stderr (both captured).
    pub out: Output,
    /// Its CPU time (user + system).
    pub cpu: Duration,
    /// Its wall time.
    pub wall: Duration,
}

/// Runs `bin args` with `token` in NODE_ATTACH_TOKEN and panics unless it succeeds. With
/// `standin` (a root), the kubelet stand-in beside `bin` registers that root's Node meanwhile
/// and is waited for afterwards (its cost is not counted: it has not been waited for when the
/// CPU is read).
pub fn run_node_attach(bin: &Path, args: &[String], token: &str, standin: Option<&str>) -> Run {
    let mut kubelet = standin.map(|root| {
        Command::new(bin.with_file_name("kubelet-standin"))
            .args(["--root", root, "--once", "--wait-seconds", "60"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("kubelet stand-in")
    });
    let cpu0 = child_cpu();
    let t0 = Instant::now();
    let out = Command::new(bin)
        .args(args)
        .env("NODE_ATTACH_TOKEN", token)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .expect("node-attach");
    let wall = t0.elapsed();
    let cpu = child_cpu() - cpu0;
    assert!(
        out.status.success(),
        "node-attach {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    if let Some(k) = &mut kubelet {
        let _ = k.wait();
    }
    Run { out, cpu, wall }
}

/// The median of a non-empty series (the upper one of an even count).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}
