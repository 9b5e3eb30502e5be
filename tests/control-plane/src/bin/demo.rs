//! `make demo`: starts the test control plane on loopback and runs the real node-attach binary
//! against it, showing each step as it goes.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::Duration;
use test_control_plane::{ClusterInfoFault, Options, TestControlPlane, TokenSpec};

const TOKEN: &str = "abcdef.0123456789abcdef";

fn node_attach() -> PathBuf {
    let exe = std::env::current_exe().expect("own path");
    let bin = exe.with_file_name("node-attach");
    if !bin.exists() {
        eprintln!(
            "demo: {} is missing; run `cargo build --workspace` first (make demo does)",
            bin.display()
        );
        std::process::exit(1);
    }
    bin
}

fn step(n: u32, title: &str) {
    println!("\n\x1b[1m{n}) {title}\x1b[0m");
}

/// Runs node-attach, echoing the command (secret hidden) and its output.
fn run(args: &[&str], env: &[(&str, &str)]) -> ExitStatus {
    let shown: Vec<String> = args
        .iter()
        .map(|a| a.replace("0123456789abcdef", "<secret>"))
        .collect();
    println!("$ node-attach {}", shown.join(" "));
    let mut cmd = Command::new(node_attach());
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let status = cmd.status().expect("run node-attach");
    println!("(exit code {})", status.code().unwrap_or(-1));
    status
}

fn check(ok: bool, what: &str) {
    if ok {
        println!("\x1b[32m✓ {what}\x1b[0m");
    } else {
        println!("\x1b[31m✗ {what}\x1b[0m");
        std::process::exit(1);
    }
}

fn scratch() -> PathBuf {
    let base = std::env::temp_dir().join(format!("node-attach-demo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base).expect("scratch dir");
    base
}

fn main() {
    println!("\x1b[1m== node-attach demo ==\x1b[0m");
    let cp = TestControlPlane::start(Options::default());
    cp.create_token(&TokenSpec::new(TOKEN));
    cp.wait_signed("abcdef", Duration::from_secs(5));
    let dir = scratch();
    let pin = cp.ca_pin();
    let endpoint = cp.endpoint();
    println!(
        "test control plane: {} (kube-apiserver stand-in, its own CA)",
        cp.url()
    );
    println!("cluster CA pin:     {pin}");
    println!("scratch directory:  {}", dir.display());

    step(1, "discovery: read cluster-info anonymously, check its JWS with the token, pin the CA, re-fetch over pinned TLS");
    let status = run(
        &[
            "discover",
            "--endpoint",
            &endpoint,
            "--discovery-token-ca-cert-hash",
            &pin,
        ],
        &[("NODE_ATTACH_TOKEN", TOKEN)],
    );
    check(status.success(), "the API server is trusted");

    step(
        2,
        "discovery against a tampered cluster-info (server URL changed after signing)",
    );
    cp.set_faults(|f| f.cluster_info = ClusterInfoFault::Tamper);
    let status = run(
        &[
            "discover",
            "--endpoint",
            &endpoint,
            "--discovery-token-ca-cert-hash",
            &pin,
        ],
        &[("NODE_ATTACH_TOKEN", TOKEN)],
    );
    check(
        status.code() == Some(23),
        "the tampered answer is refused (exit 23, discovery.signature-mismatch)",
    );
    cp.set_faults(|f| f.cluster_info = ClusterInfoFault::None);

    step(3, "discovery with the pin of another CA");
    let foreign = cp.foreign_pin();
    let status = run(
        &[
            "discover",
            "--endpoint",
            &endpoint,
            "--discovery-token-ca-cert-hash",
            &foreign,
        ],
        &[("NODE_ATTACH_TOKEN", TOKEN)],
    );
    check(
        status.code() == Some(24),
        "a CA that does not match the pin is refused (exit 24)",
    );

    cleanup(&dir);
    println!("\n\x1b[1mdemo finished\x1b[0m");
}

fn cleanup(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
}
