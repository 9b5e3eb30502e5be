//! `make bench`: what one join costs, side by side with a committed baseline.
//!
//! Runs `node-attach discover` and `node-attach join` (into scratch roots, against the test
//! control plane on loopback, with the kubelet stand-in) several times and reports per run:
//! API requests (the number the control plane sees), CPU time of the node-attach process
//! (user + system, from getrusage of children) and wall time — each next to
//! `bench/baseline.json` as a ratio. Wall time on a shared 2-core machine is noisy; requests and
//! CPU are what to watch. `--write-baseline` replaces the baseline with this run.

use nix::sys::resource::{getrusage, UsageWho};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use test_control_plane::{Options, TestControlPlane, TokenSpec};

const TOKEN: &str = "abcdef.0123456789abcdef";

fn child_cpu() -> Duration {
    let u = getrusage(UsageWho::RUSAGE_CHILDREN).expect("getrusage");
    let t = |tv: nix::sys::time::TimeVal| {
        Duration::new(tv.tv_sec() as u64, (tv.tv_usec() as u32) * 1000)
    };
    t(u.user_time()) + t(u.system_time())
}

struct Sample {
    requests: usize,
    cpu: Duration,
    wall: Duration,
}

fn measure(cp: &TestControlPlane, bin: &PathBuf, args: &[String], standin: Option<&str>) -> Sample {
    let before_req = cp.requests().len();
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
    let status = Command::new(bin)
        .args(args)
        .env("NODE_ATTACH_TOKEN", TOKEN)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("node-attach");
    let wall = t0.elapsed();
    let cpu = child_cpu() - cpu0;
    assert!(status.success(), "node-attach {args:?} failed");
    if let Some(k) = &mut kubelet {
        let _ = k.wait();
    }
    // The stand-in's own requests (one registration) are not node-attach's.
    let requests = cp.requests()[before_req..]
        .iter()
        .filter(|r| !r.path.starts_with("/api/v1/nodes") || r.method != "POST")
        .count();
    Sample {
        requests,
        cpu,
        wall,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let mut bin = std::env::current_exe()
        .expect("self")
        .with_file_name("node-attach");
    let mut runs = 7;
    let mut baseline_path = PathBuf::from("bench/baseline.json");
    let mut write_baseline = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--node-attach" => bin = PathBuf::from(args.next().expect("path")),
            "--runs" => runs = args.next().and_then(|n| n.parse().ok()).expect("number"),
            "--baseline" => baseline_path = PathBuf::from(args.next().expect("path")),
            "--write-baseline" => write_baseline = true,
            _ => {
                eprintln!("usage: bench [--node-attach PATH] [--runs N] [--baseline FILE] [--write-baseline]");
                std::process::exit(2);
            }
        }
    }
    let cp = TestControlPlane::start(Options::default());
    cp.create_token(&TokenSpec::new(TOKEN));
    cp.wait_signed("abcdef", Duration::from_secs(5));
    let pin = cp.ca_pin();
    let endpoint = cp.endpoint();
    let mut results = serde_json::Map::new();
    for (name, is_join) in [("discover", false), ("join", true)] {
        let mut samples = Vec::new();
        for i in 0..runs {
            let dir = tempfile_dir(&format!("bench-{name}-{i}"));
            let root = dir.display().to_string();
            let a: Vec<String> = if is_join {
                [
                    "join",
                    "--root",
                    &root,
                    "--endpoint",
                    &endpoint,
                    "--discovery-token-ca-cert-hash",
                    &pin,
                    "--node-name",
                    &format!("bench-{i}"),
                    "--node-wait-timeout",
                    "30s",
                ]
                .iter()
                .map(|s| s.to_string())
                .collect()
            } else {
                [
                    "discover",
                    "--endpoint",
                    &endpoint,
                    "--discovery-token-ca-cert-hash",
                    &pin,
                ]
                .iter()
                .map(|s| s.to_string())
                .collect()
            };
            samples.push(measure(&cp, &bin, &a, is_join.then_some(root.as_str())));
            let _ = std::fs::remove_dir_all(&dir);
        }
        results.insert(
            name.into(),
            json!({
                "api_requests": median(samples.iter().map(|s| s.requests as f64).collect()),
                "cpu_ms": median(samples.iter().map(|s| s.cpu.as_secs_f64() * 1000.0).collect()),
                "wall_ms": median(samples.iter().map(|s| s.wall.as_secs_f64() * 1000.0).collect()),
            }),
        );
    }
    let size = std::fs::metadata(&bin).map(|m| m.len()).unwrap_or(0);
    results.insert("binary".into(), json!({"bytes": size}));
    let current = Value::Object(results);
    let baseline: Value = std::fs::read_to_string(&baseline_path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(Value::Null);
    println!(
        "node-attach bench: {} ({runs} runs each, medians)",
        bin.display()
    );
    println!(
        "{:<10} {:<14} {:>12} {:>12} {:>8}",
        "command", "metric", "now", "baseline", "ratio"
    );
    for (cmd, metrics) in current.as_object().expect("object") {
        for (metric, v) in metrics.as_object().expect("object") {
            let now = v.as_f64().unwrap_or(0.0);
            let base = baseline[cmd][metric].as_f64();
            let ratio = base
                .filter(|b| *b > 0.0)
                .map(|b| format!("{:.2}", now / b))
                .unwrap_or_else(|| "-".into());
            let base = base
                .map(|b| format!("{b:.1}"))
                .unwrap_or_else(|| "-".into());
            println!("{cmd:<10} {metric:<14} {now:>12.1} {base:>12} {ratio:>8}");
        }
    }
    if write_baseline {
        std::fs::create_dir_all(baseline_path.parent().unwrap_or(std::path::Path::new(".")))
            .expect("dir");
        std::fs::write(
            &baseline_path,
            serde_json::to_string_pretty(&current).expect("json") + "\n",
        )
        .expect("write baseline");
        println!("baseline written to {}", baseline_path.display());
    }
}

fn tempfile_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("node-attach-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("scratch");
    d
}
