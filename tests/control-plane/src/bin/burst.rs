//! `make bench-burst`: N simultaneous joins, each its own `node-attach join` process with its
//! own scratch root and kubelet stand-in, through real HTTP and TLS, against the test control
//! plane or a real API server (`--real DIR`, a `tests/kubernetes/cluster.sh up DIR`). Not a
//! test: it measures, and prints one table row per scenario.
//!
//! Scenarios: `direct` (every node with the one bootstrap token) and `serve` (every node with
//! one openapi token through `node-attach serve`, which takes a use and mints a bootstrap token
//! per node); `--shed SECONDS` makes the test control plane answer every API request 429
//! (`Retry-After: 1`) or 503 for the first seconds of the burst.
//!
//! Per row: joined / N, p50 and p99 of the time from a join's start to its exit, the burst's
//! makespan, node-attach's API requests per join and that divided by the requests of one join
//! alone (the minimum: a join that met no contention, after a first one that paid what serve
//! does once per token), serve's API requests per use likewise,
//! and the 429/503 answers node-attach got. Requests are counted by the control plane's request
//! log, or on a real server by its audit log (one ResponseComplete event per request), by
//! User-Agent (`node-attach/…`) and user (serve's admin credentials).

use serde_json::Value;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use test_control_plane::{Options, TestControlPlane, TokenSpec};

const TOKEN: &str = "abcdef.0123456789abcdef";

/// Where the joins go.
enum Target {
    Standin(Box<TestControlPlane>),
    Real(PathBuf),
}

/// A request, as either log tells it.
struct Logged {
    user_agent: String,
    user: String,
    status: u16,
}

impl Target {
    fn endpoint(&self) -> String {
        match self {
            Target::Standin(cp) => cp.endpoint(),
            Target::Real(dir) => read(&dir.join("endpoint")),
        }
    }
    fn pin(&self) -> String {
        match self {
            Target::Standin(cp) => cp.ca_pin(),
            Target::Real(dir) => read(&dir.join("ca.pin")),
        }
    }
    fn token(&self) -> String {
        match self {
            Target::Standin(_) => TOKEN.into(),
            Target::Real(dir) => read(&dir.join("token")),
        }
    }
    fn admin_kubeconfig(&self, scratch: &Path) -> PathBuf {
        match self {
            Target::Standin(cp) => {
                let p = scratch.join("admin.conf");
                std::fs::write(&p, cp.admin_kubeconfig()).expect("admin.conf");
                p
            }
            Target::Real(dir) => dir.join("admin.conf"),
        }
    }
    /// The user serve's admin kubeconfig authenticates as.
    fn admin_user(&self) -> &'static str {
        "kubernetes-admin"
    }
    /// A mark in the request log; [`Target::since`] returns what came after it.
    fn mark(&self) -> usize {
        match self {
            Target::Standin(cp) => cp.request_count(),
            Target::Real(dir) => audit_text(dir).lines().count(),
        }
    }
    fn since(&self, mark: usize) -> Vec<Logged> {
        match self {
            Target::Standin(cp) => cp
                .requests_since(mark)
                .iter()
                .map(|r| Logged {
                    user_agent: r.user_agent.clone(),
                    user: r.user.clone(),
                    status: r.status,
                })
                .collect(),
            Target::Real(dir) => {
                let text = audit_text(dir);
                text.lines()
                    .skip(mark)
                    .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                    .filter(|e| e["stage"] == "ResponseComplete")
                    .map(|e| Logged {
                        user_agent: e["userAgent"].as_str().unwrap_or_default().into(),
                        user: e["user"]["username"].as_str().unwrap_or_default().into(),
                        status: e["responseStatus"]["code"].as_u64().unwrap_or(0) as u16,
                    })
                    .collect()
            }
        }
    }
    fn shed_for(&self, seconds: u64) -> bool {
        match self {
            Target::Standin(cp) if seconds > 0 => {
                cp.set_faults(|f| {
                    f.shed = 0;
                    f.shed_until = Some(Instant::now() + Duration::from_secs(seconds));
                });
                true
            }
            _ => false,
        }
    }
    fn shed_count(&self) -> usize {
        match self {
            Target::Standin(cp) => cp.shared().lock().faults.shed,
            Target::Real(_) => 0,
        }
    }
}

/// The real API server's whole audit log: the files it rotated away at 100 MiB
/// (`audit-<time>.log`, in the order of their names, which is their order), then `audit.log`.
/// A 1000-join burst writes more than one file's worth.
fn audit_text(dir: &Path) -> String {
    let mut rotated: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
                    name.starts_with("audit-") && name.ends_with(".log")
                })
                .collect()
        })
        .unwrap_or_default();
    rotated.sort();
    rotated.push(dir.join("audit.log"));
    rotated
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap_or_default())
        .collect()
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .trim()
        .to_owned()
}

/// `node-attach serve` and one openapi token.
struct Serve {
    child: Child,
    url: String,
    token: String,
    ca: PathBuf,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_serve(bin: &Path, target: &Target, scratch: &Path, uses: usize) -> Serve {
    let admin = target.admin_kubeconfig(scratch);
    let ca = test_control_plane::pki::Ca::new("burst-values");
    let issued = ca.issue_server(&["127.0.0.1".into()]);
    let (crt, key, ca_file) = (
        scratch.join("svc.crt"),
        scratch.join("svc.key"),
        scratch.join("svc-ca.pem"),
    );
    std::fs::write(&crt, &issued.cert_pem).expect("crt");
    std::fs::write(&key, &issued.key_pem).expect("key");
    std::fs::write(&ca_file, ca.cert_pem()).expect("ca");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let url = format!("https://127.0.0.1:{port}");
    let mut child = Command::new(bin)
        .args(["serve", "--kubeconfig"])
        .arg(&admin)
        .args(["--listen", &format!("127.0.0.1:{port}"), "--tls-cert"])
        .arg(&crt)
        .arg("--tls-key")
        .arg(&key)
        .args(["--public-url", &url, "--rate-per-minute", "1000000"])
        .stdout(Stdio::piped())
        .stderr(File::create(scratch.join("serve.log")).expect("log"))
        .spawn()
        .expect("serve");
    let mut first = String::new();
    let stdout = child.stdout.take().expect("stdout");
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut first).expect("line");
    assert!(first.starts_with("listening on"), "serve: {first}");
    let values = scratch.join("values.json");
    std::fs::write(
        &values,
        r#"{"apiVersion": "node-attach.io/v1", "kind": "ClusterValues", "clusterDNS": ["10.96.0.10"]}"#,
    )
    .expect("values");
    let out = Command::new(bin)
        .args(["token", "openapi", "--kubeconfig"])
        .arg(&admin)
        .arg("--values")
        .arg(&values)
        .args(["--uses", &uses.to_string(), "--public-url", &url])
        .output()
        .expect("token openapi");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "token openapi: {text}");
    let token = text.split('\'').nth(1).expect("token").to_owned();
    Serve {
        child,
        url,
        token,
        ca: ca_file,
    }
}

/// One join of the burst.
struct Join {
    started: Instant,
    node_attach: Child,
    kubelet: Child,
    ended: Option<(Duration, bool)>,
}

fn spawn_join(
    bin: &Path,
    target: &Target,
    serve: Option<&Serve>,
    dir: &Path,
    name: &str,
    verbose: bool,
) -> Join {
    let root = dir.join("root");
    std::fs::create_dir_all(&root).expect("root");
    let root_s = root.display().to_string();
    let kubelet = Command::new(bin.with_file_name("kubelet-standin"))
        .args(["--root", &root_s, "--once", "--wait-seconds", "600"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("kubelet stand-in");
    let mut cmd = Command::new(bin);
    cmd.args(verbose.then_some("-v"));
    cmd.args(["join", "--root", &root_s, "--node-name", name]);
    cmd.args(["--node-wait-timeout", "600s", "--output", "json"]);
    match serve {
        Some(s) => {
            cmd.args(["--values-url", &format!("{}/v1/values/{{token}}", s.url)])
                .arg("--values-ca-file")
                .arg(&s.ca)
                .env("NODE_ATTACH_OPENAPI_TOKEN", &s.token);
        }
        None => {
            cmd.args(["--endpoint", &target.endpoint()])
                .args(["--discovery-token-ca-cert-hash", &target.pin()])
                .args(["--cluster-dns", "10.96.0.10"])
                .env("NODE_ATTACH_TOKEN", target.token());
        }
    }
    let started = Instant::now();
    let node_attach = cmd
        .stdout(File::create(dir.join("out.json")).expect("out"))
        .stderr(File::create(dir.join("err.log")).expect("err"))
        .spawn()
        .expect("node-attach");
    Join {
        started,
        node_attach,
        kubelet,
        ended: None,
    }
}

/// Waits for every join, noting each one's end as it comes.
fn wait_all(joins: &mut [Join]) {
    loop {
        let mut running = 0;
        for j in joins.iter_mut().filter(|j| j.ended.is_none()) {
            match j.node_attach.try_wait() {
                Ok(Some(status)) => j.ended = Some((j.started.elapsed(), status.success())),
                Ok(None) => running += 1,
                Err(_) => j.ended = Some((j.started.elapsed(), false)),
            }
        }
        if running == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for j in joins.iter_mut() {
        let _ = j.kubelet.kill();
        let _ = j.kubelet.wait();
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let at = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[at]
}

/// Requests counted in a log slice: node-attach's, serve's, and node-attach's 429/503 answers.
fn count(logged: &[Logged], admin: &str) -> (usize, usize, usize) {
    let ours = |l: &&Logged| l.user_agent.starts_with("node-attach/") && l.user != admin;
    let agent = logged.iter().filter(ours).count();
    let shed = logged
        .iter()
        .filter(ours)
        .filter(|l| matches!(l.status, 429 | 503))
        .count();
    let serve = logged
        .iter()
        .filter(|l| l.user_agent.starts_with("node-attach/") && l.user == admin)
        .count();
    (agent, serve, shed)
}

struct Row {
    scenario: String,
    n: usize,
    joined: usize,
    p50: f64,
    p99: f64,
    makespan: f64,
    agent_per_join: f64,
    agent_ratio: f64,
    serve_per_use: f64,
    serve_ratio: f64,
    shed: usize,
}

/// A burst of `n` joins (after one join alone, whose requests are the minimum).
fn burst(a: &Args, target: &Target, scenario: &str, n: usize, shed: u64) -> Row {
    let scratch = std::env::temp_dir().join(format!(
        "node-attach-burst-{}-{scenario}-{n}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).expect("scratch");
    let serve = (scenario != "direct").then(|| start_serve(&a.bin, target, &scratch, n + 2));
    let admin = target.admin_user();
    let tag = format!("{}{shed}-{}", &scenario[..1], std::process::id() % 100_000);
    // Two joins alone, one after the other: the second's requests are what a join needs (the
    // first also pays what serve does once per token: learning which uses are taken).
    let mut minimum = (0, 0);
    for alone_at in ["alone-0", "alone"] {
        let mark = target.mark();
        let mut alone = [spawn_join(
            &a.bin,
            target,
            serve.as_ref(),
            &scratch.join(alone_at),
            &format!("burst-{tag}-{n}-{alone_at}"),
            a.verbose,
        )];
        wait_all(&mut alone);
        assert!(
            alone[0].ended.is_some_and(|(_, ok)| ok),
            "the join alone failed: {}",
            scratch.join(alone_at).join("err.log").display()
        );
        let (agent, serve_requests, _) = count(&target.since(mark), admin);
        minimum = (agent, serve_requests);
    }
    let (min_agent, min_serve) = minimum;
    // The burst.
    let mark = target.mark();
    let shedding = target.shed_for(shed);
    let t0 = Instant::now();
    let mut joins: Vec<Join> = (0..n)
        .map(|i| {
            let name = format!("burst-{tag}-{n}-{i}");
            spawn_join(
                &a.bin,
                target,
                serve.as_ref(),
                &scratch.join(i.to_string()),
                &name,
                a.verbose,
            )
        })
        .collect();
    wait_all(&mut joins);
    let makespan = t0.elapsed().as_secs_f64();
    let (agent, serve_requests, shed_seen) = count(&target.since(mark), admin);
    let mut times: Vec<f64> = joins
        .iter()
        .filter_map(|j| j.ended.filter(|(_, ok)| *ok).map(|(d, _)| d.as_secs_f64()))
        .collect();
    times.sort_by(f64::total_cmp);
    let failed: Vec<_> = (0..n)
        .filter(|i| !joins[*i].ended.is_some_and(|(_, ok)| ok))
        .collect();
    if let Some(i) = failed.first() {
        eprintln!(
            "{} of {n} joins failed; the first's log: {}",
            failed.len(),
            scratch.join(i.to_string()).join("err.log").display()
        );
    }
    let shed_note = if shedding {
        format!("+shed {shed}s ({} shed)", target.shed_count())
    } else {
        String::new()
    };
    let per = |total: usize| total as f64 / n as f64;
    let ratio = |total: usize, min: usize| total as f64 / (n * min.max(1)) as f64;
    if !a.keep {
        let _ = std::fs::remove_dir_all(&scratch);
    }
    Row {
        scenario: format!("{scenario}{shed_note}"),
        n,
        joined: times.len(),
        p50: percentile(&times, 0.5),
        p99: percentile(&times, 0.99),
        makespan,
        agent_per_join: per(agent),
        agent_ratio: ratio(agent, min_agent),
        serve_per_use: per(serve_requests),
        serve_ratio: if min_serve == 0 {
            0.0
        } else {
            ratio(serve_requests, min_serve)
        },
        shed: shed_seen,
    }
}

struct Args {
    bin: PathBuf,
    sizes: Vec<usize>,
    scenarios: Vec<String>,
    shed: u64,
    real: Option<PathBuf>,
    keep: bool,
    shed_only: bool,
    /// Each join logs at info (`-v`) into its err.log (with `--keep`: what its retries met).
    verbose: bool,
}

fn parse_args() -> Args {
    let mut a = Args {
        bin: std::env::current_exe()
            .expect("self")
            .with_file_name("node-attach"),
        sizes: vec![100, 500, 1000],
        scenarios: vec!["direct".into(), "serve".into()],
        shed: 3,
        real: None,
        keep: false,
        shed_only: false,
        verbose: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().expect("a value");
        match arg.as_str() {
            "--node-attach" => a.bin = PathBuf::from(value()),
            "--sizes" => {
                a.sizes = value()
                    .split(',')
                    .map(|n| n.parse().expect("a number"))
                    .collect();
            }
            "--scenarios" => a.scenarios = value().split(',').map(String::from).collect(),
            "--shed" => a.shed = value().parse().expect("seconds"),
            "--real" => a.real = Some(PathBuf::from(value())),
            "--keep" => a.keep = true,
            "--verbose" => a.verbose = true,
            "--shed-only" => a.shed_only = true,
            _ => {
                eprintln!(
                    "usage: burst [--node-attach PATH] [--sizes 100,500,1000] \
                     [--scenarios direct,serve] [--shed SECONDS] [--shed-only] [--real DIR] [--keep] \
                     [--verbose]"
                );
                std::process::exit(2);
            }
        }
    }
    a
}

/// The control plane for one burst: the real cluster, or a fresh test control plane (its
/// controllers scan every object every 50 ms under one lock, so what earlier bursts left
/// would slow the next one down: a stand-in artifact, not the protocol's).
fn target(a: &Args) -> Target {
    match &a.real {
        Some(dir) => Target::Real(dir.clone()),
        None => {
            let cp = TestControlPlane::start(Options::default());
            cp.create_token(&TokenSpec::new(TOKEN));
            cp.wait_signed("abcdef", Duration::from_secs(5));
            Target::Standin(Box::new(cp))
        }
    }
}

fn main() {
    let a = parse_args();
    let against = match &a.real {
        Some(dir) => format!("the real API server of {}", dir.display()),
        None => "the test control plane".into(),
    };
    println!(
        "node-attach burst: {} against {against}, {} cores",
        a.bin.display(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "{:<22} {:>5} {:>7} {:>7} {:>7} {:>8} {:>9} {:>6} {:>9} {:>6} {:>7}",
        "scenario",
        "N",
        "joined",
        "p50 s",
        "p99 s",
        "total s",
        "req/join",
        "/min",
        "serve/use",
        "/min",
        "429/503"
    );
    let mut runs: Vec<(String, u64)> = if a.shed_only {
        Vec::new()
    } else {
        a.scenarios.iter().map(|s| (s.clone(), 0)).collect()
    };
    if a.shed > 0 && a.real.is_none() {
        runs.extend(a.scenarios.iter().map(|s| (s.clone(), a.shed)));
    }
    for (scenario, shed) in &runs {
        for &n in &a.sizes {
            let r = burst(&a, &target(&a), scenario, n, *shed);
            println!(
                "{:<22} {:>5} {:>6.1}% {:>7.2} {:>7.2} {:>8.1} {:>9.2} {:>6.2} {:>9.2} {:>6.2} {:>7}",
                r.scenario,
                r.n,
                100.0 * r.joined as f64 / r.n as f64,
                r.p50,
                r.p99,
                r.makespan,
                r.agent_per_join,
                r.agent_ratio,
                r.serve_per_use,
                r.serve_ratio,
                r.shed
            );
        }
    }
}
