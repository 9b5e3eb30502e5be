//! `make bench` (its bake-mode part): what installing from a signed mirror costs, and how bake
//! mode splits that cost (issue 11).
//!
//! Runs, several times each, into scratch roots against the test control plane on loopback
//! (with the kubelet stand-in where a Node must register):
//! - `join-mirror`: a plain root that gets its kubelet (32 MiB) and three 1 MiB CNI plugins
//!   from a signed mirror the control plane serves at /files/mirror, in one join;
//! - `prepare`: `join --phase prepare` from the same mirror (no cluster, no token);
//! - `boot-join`: the join at first boot of a prepared root (which fetches nothing).
//!
//! Per case: API requests, mirror requests, CPU time of the node-attach process (user + system,
//! getrusage of children) and wall time, medians; then prepare and boot-join as ratios to
//! join-mirror. Writes `target/bench/bake.json`. Wall time on a shared 2-core machine is
//! noisy; requests and CPU are what to watch. boot-join may count one API request more than
//! join-mirror: being faster, its confirm asks for the Node once before the kubelet stand-in
//! has registered it (the same requests otherwise: discovery, version, Node, kubeadm-config,
//! kubelet-config, the CSR and its watch, the Node's patch).

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use test_control_plane::bench::{median, run_node_attach, Run};
use test_control_plane::{Options, TestControlPlane, TokenSpec};

const TOKEN: &str = "abcdef.0123456789abcdef";
const VERSION: &str = "v1.31.2";

struct Sample {
    api: usize,
    mirror: usize,
    cpu: Duration,
    wall: Duration,
}

/// One node-attach run: what the control plane saw and what it cost.
fn measure(cp: &TestControlPlane, bin: &Path, args: &[String], standin: Option<&str>) -> Sample {
    let before = cp.requests().len();
    let Run { cpu, wall, .. } = run_node_attach(bin, args, TOKEN, standin);
    let seen = cp.requests()[before..].to_vec();
    let mirror = seen
        .iter()
        .filter(|r| r.path.starts_with("/files/"))
        .count();
    // The stand-in's own requests (one registration) are not node-attach's.
    let api = seen
        .iter()
        .filter(|r| !r.path.starts_with("/files/"))
        .filter(|r| !r.path.starts_with("/api/v1/nodes") || r.method != "POST")
        .count();
    Sample {
        api,
        mirror,
        cpu,
        wall,
    }
}

fn summary(samples: &[Sample]) -> Value {
    let m = |f: &dyn Fn(&Sample) -> f64| median(samples.iter().map(f).collect());
    json!({
        "api_requests": m(&|s| s.api as f64),
        "mirror_requests": m(&|s| s.mirror as f64),
        "cpu_ms": m(&|s| s.cpu.as_secs_f64() * 1000.0),
        "wall_ms": m(&|s| s.wall.as_secs_f64() * 1000.0),
    })
}

/// `len` pseudo-random bytes (xorshift), so the files do not compress or repeat.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn run_ok(bin: &Path, args: &[&str]) -> String {
    let out = Command::new(bin).args(args).output().expect("node-attach");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A signed mirror under `files/mirror`; returns the flags a join uses it with.
fn mirror(bin: &Path, files: &Path, cp: &TestControlPlane) -> Vec<String> {
    let src = files.join("src");
    std::fs::create_dir_all(src.join("cni")).expect("src");
    std::fs::write(src.join("kubelet"), noise(32 << 20, 7)).expect("kubelet");
    for (i, p) in ["bridge", "host-local", "loopback"].iter().enumerate() {
        std::fs::write(src.join("cni").join(p), noise(1 << 20, 11 + i as u64)).expect("cni");
    }
    let key = files.join("signing.pem");
    let p = |p: &Path| p.display().to_string();
    run_ok(bin, &["artifacts", "keygen", "--out", &p(&key)]);
    let public = run_ok(bin, &["artifacts", "public-key", "--key", &p(&key)]);
    run_ok(
        bin,
        &[
            "artifacts",
            "publish",
            "--dir",
            &p(&files.join("mirror")),
            "--key",
            &p(&key),
            "--kubernetes-version",
            VERSION,
            "--kubelet",
            &p(&src.join("kubelet")),
            "--cni",
            &p(&src.join("cni")),
        ],
    );
    let ca = files.join("ca.crt");
    std::fs::write(&ca, cp.ca_pem()).expect("ca");
    vec![
        "--artifacts-url".into(),
        format!("{}/files/mirror", cp.url()),
        "--artifacts-key".into(),
        public,
        "--artifacts-ca-file".into(),
        p(&ca),
        // The runtime is the package manager's (skipped in a scratch root): what is measured
        // is the kubelet and the CNI plugins from the mirror.
        "--runtime-source".into(),
        "package".into(),
    ]
}

fn strings(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

/// The arguments of each case, for a scratch root and a run number.
struct Cases<'a> {
    endpoint: String,
    pin: String,
    mirror: &'a [String],
}

impl Cases<'_> {
    fn join(&self, root: &str, name: &str) -> Vec<String> {
        let mut a = strings(&[
            "join",
            "--root",
            root,
            "--endpoint",
            &self.endpoint,
            "--discovery-token-ca-cert-hash",
            &self.pin,
            "--node-name",
            name,
            "--node-wait-timeout",
            "30s",
        ]);
        a.extend(self.mirror.iter().cloned());
        a
    }

    fn prepare(&self, root: &str) -> Vec<String> {
        let mut a = strings(&[
            "join",
            "--phase",
            "prepare",
            "--root",
            root,
            "--kubelet-version",
            VERSION,
        ]);
        a.extend(self.mirror.iter().cloned());
        a
    }
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("node-attach-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("scratch");
    d
}

/// Runs the three cases `runs` times each, in fresh roots.
fn run_cases(cp: &TestControlPlane, bin: &Path, cases: &Cases<'_>, runs: usize) -> Value {
    let (mut whole, mut prepare, mut boot) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..runs {
        let dir = scratch(&format!("bake-{i}"));
        let root = |n: &str| {
            let r = dir.join(n);
            std::fs::create_dir_all(&r).expect("root");
            r.display().to_string()
        };
        let r = root("join-mirror");
        whole.push(measure(
            cp,
            bin,
            &cases.join(&r, &format!("bake-m-{i}")),
            Some(&r),
        ));
        let r = root("prepared");
        prepare.push(measure(cp, bin, &cases.prepare(&r), None));
        boot.push(measure(
            cp,
            bin,
            &cases.join(&r, &format!("bake-b-{i}")),
            Some(&r),
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
    json!({
        "join-mirror": summary(&whole),
        "prepare": summary(&prepare),
        "boot-join": summary(&boot),
    })
}

fn print(current: &Value) {
    println!(
        "{:<12} {:<16} {:>10} {:>22}",
        "case", "metric", "median", "ratio to join-mirror"
    );
    for case in ["join-mirror", "prepare", "boot-join"] {
        for metric in ["api_requests", "mirror_requests", "cpu_ms", "wall_ms"] {
            let v = current[case][metric].as_f64().unwrap_or(0.0);
            let whole = current["join-mirror"][metric].as_f64().unwrap_or(0.0);
            let ratio = if whole > 0.0 {
                format!("{:.2}", v / whole)
            } else {
                "-".into()
            };
            println!("{case:<12} {metric:<16} {v:>10.1} {ratio:>22}");
        }
    }
}

fn main() {
    let mut bin = std::env::current_exe()
        .expect("self")
        .with_file_name("node-attach");
    let mut runs = 5;
    let mut out = PathBuf::from("target/bench/bake.json");
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--node-attach" => bin = PathBuf::from(args.next().expect("path")),
            "--runs" => runs = args.next().and_then(|n| n.parse().ok()).expect("number"),
            "--out" => out = PathBuf::from(args.next().expect("path")),
            _ => {
                eprintln!("usage: bench-bake [--node-attach PATH] [--runs N] [--out FILE]");
                std::process::exit(2);
            }
        }
    }
    let files = scratch("bake-files");
    let cp = TestControlPlane::start(Options {
        files_dir: Some(files.clone()),
        ..Options::default()
    });
    cp.create_token(&TokenSpec::new(TOKEN));
    cp.wait_signed("abcdef", Duration::from_secs(5));
    let flags = mirror(&bin, &files, &cp);
    let cases = Cases {
        endpoint: cp.endpoint(),
        pin: cp.ca_pin(),
        mirror: &flags,
    };
    let current = run_cases(&cp, &bin, &cases, runs);
    println!(
        "node-attach bench, bake mode: {} ({runs} runs each, medians; a 32 MiB kubelet and 3 MiB of CNI plugins from a signed mirror)",
        bin.display()
    );
    print(&current);
    let _ = std::fs::remove_dir_all(&files);
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).expect("dir");
    }
    std::fs::write(
        &out,
        serde_json::to_string_pretty(&current).expect("json") + "\n",
    )
    .expect("write");
    println!("written to {}", out.display());
}
