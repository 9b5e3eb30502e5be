//! Running the real `node-attach` binary against the test control plane.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
pub use test_control_plane::{
    store::Kind, Approval, ClusterInfoFault, Options, Scripted, TestControlPlane, TokenSpec,
    ValuesEntry,
};

/// The bootstrap token most tests use.
pub const TOKEN: &str = "abcdef.0123456789abcdef";
/// Its secret part, which must never appear in any output.
pub const SECRET: &str = "0123456789abcdef";

/// The binary under test.
pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_node-attach"))
}

/// A control plane with [`TOKEN`] created and signed.
pub fn control_plane() -> TestControlPlane {
    control_plane_with(Options::default())
}

/// Like [`control_plane`], with options.
pub fn control_plane_with(options: Options) -> TestControlPlane {
    let delay = options.signing_delay;
    let cp = TestControlPlane::start(options);
    cp.create_token(&TokenSpec::new(TOKEN));
    if delay.is_zero() {
        assert!(
            cp.wait_signed("abcdef", Duration::from_secs(5)),
            "signer did not run"
        );
    }
    cp
}

/// The outcome of one run.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
    pub args: Vec<String>,
}

impl Run {
    /// stdout and stderr together.
    pub fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }

    /// Panics with the whole run unless the exit code is `code`.
    pub fn expect_code(&self, code: i32) -> &Run {
        assert_eq!(
            self.code, code,
            "node-attach {:?} exited {} (expected {code})\n--- stdout\n{}\n--- stderr\n{}",
            self.args, self.code, self.stdout, self.stderr
        );
        self
    }

    /// Panics unless the output contains `text`.
    pub fn expect_output(&self, text: &str) -> &Run {
        assert!(
            self.all().contains(text),
            "output of {:?} lacks {text:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.args,
            self.stdout,
            self.stderr
        );
        self
    }

    /// Panics if any secret shows in the output.
    pub fn expect_no_secret(&self, secrets: &[&str]) -> &Run {
        for s in secrets {
            assert!(
                !self.all().contains(s),
                "a secret leaked into the output of {:?}:\n{}",
                self.args,
                self.all()
            );
        }
        self
    }

    /// The JSON `result` line (with `--output json`).
    pub fn json_result(&self) -> serde_json::Value {
        self.stdout
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find_map(|v| v.get("result").cloned())
            .unwrap_or_else(|| panic!("no JSON result line in:\n{}", self.stdout))
    }

    /// The JSON `error` line (with `--output json`).
    pub fn json_error(&self) -> serde_json::Value {
        self.stdout
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find_map(|v| v.get("error").cloned())
            .unwrap_or_else(|| panic!("no JSON error line in:\n{}", self.stdout))
    }
}

/// Runs node-attach with a clean environment (plus `env`), killing it after `limit`.
pub fn run_with(args: &[&str], env: &[(&str, &str)], limit: Duration) -> Run {
    let mut cmd = Command::new(binary());
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let started = Instant::now();
    let mut child = cmd.spawn().expect("spawn node-attach");
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let t_out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("node-attach {args:?} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Run {
        code: status.code().unwrap_or(-1),
        stdout: t_out.join().unwrap_or_default(),
        stderr: t_err.join().unwrap_or_default(),
        elapsed: started.elapsed(),
        args: args.iter().map(|s| s.to_string()).collect(),
    }
}

/// Runs node-attach with a 60 s limit.
pub fn run(args: &[&str]) -> Run {
    run_with(args, &[], Duration::from_secs(60))
}

/// Writes a file and returns its path.
pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write");
    p
}

/// Runs `kubectl` with a kubeconfig; returns (exit code, stdout, stderr).
pub fn kubectl(kubeconfig: &Path, home: &Path, args: &[&str]) -> (i32, String, String) {
    let out: Output = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .env("HOME", home)
        .env("KUBECACHEDIR", home.join("cache"))
        .output()
        .expect("kubectl is installed at /usr/bin/kubectl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The test control plane's admin kubeconfig in a file of its own (outside any node's tree).
pub fn admin_kubeconfig_file(cp: &TestControlPlane) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().expect("tmp");
    let path = write(dir.path(), "admin.conf", &cp.admin_kubeconfig());
    (dir, path.display().to_string())
}

/// A running `node-attach serve`, killed on drop.
pub struct Replica {
    pub child: std::process::Child,
    /// Its base URL.
    pub url: String,
    /// What it logged so far.
    pub stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `serve` with `dir`/admin.conf, svc.crt and svc.key on 127.0.0.1:`port`.
pub fn replica(dir: &std::path::Path, port: u16) -> Replica {
    replica_with(dir, port, &[])
}

/// Like [`replica`], with `extra` flags.
pub fn replica_with(dir: &std::path::Path, port: u16, extra: &[&str]) -> Replica {
    let mut child = Command::new(binary())
        .args(["serve", "--kubeconfig"])
        .arg(dir.join("admin.conf"))
        .args(["--listen", &format!("127.0.0.1:{port}"), "--tls-cert"])
        .arg(dir.join("svc.crt"))
        .arg("--tls-key")
        .arg(dir.join("svc.key"))
        .args(["--public-url", &format!("https://127.0.0.1:{port}"), "-v"])
        .args(extra)
        .env_clear()
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("serve");
    let stdout = child.stdout.take().expect("stdout");
    let mut first = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut first)
        .expect("listening line");
    assert!(first.starts_with("listening on"), "{first}");
    let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let sink = stderr.clone();
    let mut err = child.stderr.take().expect("stderr");
    std::thread::spawn(move || {
        let mut buf = String::new();
        let _ = std::io::Read::read_to_string(&mut err, &mut buf);
        sink.lock().expect("lock").push_str(&buf);
    });
    Replica {
        child,
        url: format!("https://127.0.0.1:{port}"),
        stderr,
    }
}

/// A loopback port nobody listens on.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}
