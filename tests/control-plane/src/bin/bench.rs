//! `make bench`: what one join costs, as ratios to a committed baseline.
//!
//! Runs `node-attach discover` and `node-attach join` (into scratch roots, against the test
//! control plane on loopback, with the kubelet stand-in registering the Node) several times and
//! measures per run: the API requests node-attach makes (what the control plane logs, less the
//! stand-in's own), the CPU time of the node-attach process (user + system, from getrusage of
//! the waited child), its CPU per phase (the `cpu_ms` of each phase event of `--output json`)
//! and wall time. The headline is each median divided by `bench/baseline.json`'s; the absolute
//! figures, the CPU by phase and the requests of one join follow. Wall time on a shared 2-core
//! machine is noisy; requests and CPU are what to watch. `--write-baseline` replaces the
//! baseline with this run.

use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use test_control_plane::bench::{median, run_node_attach, Run};
use test_control_plane::{Options, RequestRecord, TestControlPlane, TokenSpec};

const TOKEN: &str = "abcdef.0123456789abcdef";
/// The phases of a join, in order (the report's names).
const PHASES: &[&str] = &[
    "identity",
    "preflight",
    "discover",
    "cluster",
    "host",
    "runtime",
    "kubelet",
    "bootstrap",
    "start",
    "confirm",
];

struct Sample {
    requests: Vec<RequestRecord>,
    cpu: Duration,
    wall: Duration,
    phases: BTreeMap<String, f64>,
}

/// Whether a logged request is node-attach's (not the kubelet stand-in's).
fn by_node_attach(r: &RequestRecord) -> bool {
    r.user_agent.starts_with("node-attach/")
}

fn measure(cp: &TestControlPlane, bin: &Path, args: &[String], standin: Option<&str>) -> Sample {
    let before_req = cp.requests().len();
    let Run { out, cpu, wall } = run_node_attach(bin, args, TOKEN, standin);
    let mut phases = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(event) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if let (Some(phase), Some(ms)) = (event["phase"].as_str(), event["cpu_ms"].as_f64()) {
            phases.insert(phase.to_owned(), ms);
        }
    }
    let requests = cp.requests()[before_req..]
        .iter()
        .filter(|r| by_node_attach(r))
        .cloned()
        .collect();
    Sample {
        requests,
        cpu,
        wall,
        phases,
    }
}

struct Args {
    bin: PathBuf,
    runs: usize,
    baseline: PathBuf,
    write_baseline: bool,
}

fn parse_args() -> Args {
    let mut a = Args {
        bin: std::env::current_exe()
            .expect("self")
            .with_file_name("node-attach"),
        runs: 7,
        baseline: PathBuf::from("bench/baseline.json"),
        write_baseline: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--node-attach" => a.bin = PathBuf::from(args.next().expect("path")),
            "--runs" => a.runs = args.next().and_then(|n| n.parse().ok()).expect("number"),
            "--baseline" => a.baseline = PathBuf::from(args.next().expect("path")),
            "--write-baseline" => a.write_baseline = true,
            _ => {
                eprintln!("usage: bench [--node-attach PATH] [--runs N] [--baseline FILE] [--write-baseline]");
                std::process::exit(2);
            }
        }
    }
    a
}

fn command_args(is_join: bool, root: &str, endpoint: &str, pin: &str, i: usize) -> Vec<String> {
    let mut a = vec![if is_join { "join" } else { "discover" }.to_owned()];
    if is_join {
        a.extend(["--root".into(), root.into()]);
    }
    a.extend([
        "--endpoint".into(),
        endpoint.into(),
        "--discovery-token-ca-cert-hash".into(),
        pin.into(),
    ]);
    if is_join {
        a.extend([
            "--node-name".into(),
            format!("bench-{i}"),
            "--node-wait-timeout".into(),
            "30s".into(),
            "--output".into(),
            "json".into(),
        ]);
    }
    a
}

/// Medians of one command's samples, as stored in the baseline.
fn summary(samples: &[Sample]) -> Value {
    let med = |f: &dyn Fn(&Sample) -> f64| median(samples.iter().map(f).collect());
    let mut v = json!({
        "api_requests": med(&|s| s.requests.len() as f64),
        "cpu_ms": med(&|s| s.cpu.as_secs_f64() * 1000.0),
        "wall_ms": med(&|s| s.wall.as_secs_f64() * 1000.0),
    });
    if samples.iter().all(|s| !s.phases.is_empty()) {
        let mut phases = Map::new();
        for p in PHASES {
            phases.insert(
                (*p).into(),
                json!(med(&|s| s.phases.get(*p).copied().unwrap_or(0.0))),
            );
        }
        let outside = med(&|s| s.cpu.as_secs_f64() * 1000.0 - s.phases.values().sum::<f64>());
        phases.insert("outside phases".into(), json!(outside.max(0.0)));
        v["cpu_ms_by_phase"] = Value::Object(phases);
    }
    v
}

fn ratio(now: f64, base: Option<f64>) -> String {
    base.filter(|b| *b > 0.0)
        .map(|b| format!("{:.2}", now / b))
        .unwrap_or_else(|| "-".into())
}

fn print_report(a: &Args, current: &Value, baseline: &Value, one_join: &[RequestRecord]) {
    println!(
        "node-attach bench: {} ({} runs each, medians; test control plane on loopback, scratch roots)",
        a.bin.display(),
        a.runs
    );
    println!(
        "headline: now / baseline ({}; below 1.00 is better)",
        a.baseline.display()
    );
    println!(
        "{:<10} {:>12} {:>10} {:>10}",
        "command", "API requests", "CPU", "wall"
    );
    for cmd in ["join", "discover"] {
        let r = |m: &str| {
            ratio(
                current[cmd][m].as_f64().unwrap_or(0.0),
                baseline[cmd][m].as_f64(),
            )
        };
        println!(
            "{cmd:<10} {:>12} {:>10} {:>10}",
            r("api_requests"),
            r("cpu_ms"),
            r("wall_ms")
        );
    }
    let size = current["binary"]["bytes"].as_f64().unwrap_or(0.0);
    println!(
        "{:<10} {:>12} (binary size)",
        "binary",
        ratio(size, baseline["binary"]["bytes"].as_f64())
    );
    println!();
    println!(
        "{:<10} {:<14} {:>12} {:>12}",
        "command", "metric", "now", "baseline"
    );
    for cmd in ["join", "discover"] {
        for m in ["api_requests", "cpu_ms", "wall_ms"] {
            let now = current[cmd][m].as_f64().unwrap_or(0.0);
            let base = baseline[cmd][m]
                .as_f64()
                .map_or("-".into(), |b| format!("{b:.1}"));
            println!("{cmd:<10} {m:<14} {now:>12.1} {base:>12}");
        }
    }
    println!("binary     bytes          {size:>12.0}");
    if let Some(phases) = current["join"]["cpu_ms_by_phase"].as_object() {
        println!();
        println!("join CPU by phase (ms, medians; `cpu_ms` of --output json)");
        for (p, v) in phases {
            let base = baseline["join"]["cpu_ms_by_phase"][p]
                .as_f64()
                .map_or("-".into(), |b| format!("{b:.1}"));
            println!("  {p:<16} {:>7.1} {base:>9}", v.as_f64().unwrap_or(0.0));
        }
    }
    println!();
    println!("the API requests of one join (method, path, user, status):");
    for r in one_join {
        let q = if r.query.is_empty() {
            String::new()
        } else {
            format!("?{}", r.query)
        };
        println!("  {} {}{q}  [{}] {}", r.method, r.path, r.user, r.status);
    }
}

fn main() {
    let a = parse_args();
    let cp = TestControlPlane::start(Options::default());
    cp.create_token(&TokenSpec::new(TOKEN));
    cp.wait_signed("abcdef", Duration::from_secs(5));
    let (pin, endpoint) = (cp.ca_pin(), cp.endpoint());
    let mut results = Map::new();
    let mut one_join = Vec::new();
    for (name, is_join) in [("discover", false), ("join", true)] {
        let mut samples = Vec::new();
        for i in 0..a.runs {
            let dir = tempfile_dir(&format!("bench-{name}-{i}"));
            let root = dir.display().to_string();
            let args = command_args(is_join, &root, &endpoint, &pin, i);
            samples.push(measure(
                &cp,
                &a.bin,
                &args,
                is_join.then_some(root.as_str()),
            ));
            let _ = std::fs::remove_dir_all(&dir);
        }
        if is_join {
            one_join = samples[0].requests.clone();
        }
        results.insert(name.into(), summary(&samples));
    }
    let size = std::fs::metadata(&a.bin).map(|m| m.len()).unwrap_or(0);
    results.insert("binary".into(), json!({"bytes": size}));
    let current = Value::Object(results);
    let baseline: Value = std::fs::read_to_string(&a.baseline)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(Value::Null);
    print_report(&a, &current, &baseline, &one_join);
    if a.write_baseline {
        std::fs::create_dir_all(a.baseline.parent().unwrap_or(Path::new("."))).expect("dir");
        std::fs::write(
            &a.baseline,
            serde_json::to_string_pretty(&current).expect("json") + "\n",
        )
        .expect("write baseline");
        println!("baseline written to {}", a.baseline.display());
    }
}

fn tempfile_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("node-attach-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("scratch");
    d
}
