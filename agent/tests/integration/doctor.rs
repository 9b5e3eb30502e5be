//! `node-attach doctor` on joined roots (the test control plane and the kubelet stand-in), on
//! broken ones, and on roots that never joined or were reset: the binary under `--root` (the
//! host's checks skipped), and the library with effect doubles standing in for the host.

use crate::join::{join, scale_out, Node};
use crate::support::*;
use node_attach::doctor::{self, Joined, Options, Report, Status};
use node_attach::effects::fs::Root;
use node_attach::effects::kernel::RecordingKernel;
use node_attach::effects::{Cri, EffectError, Effects};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

fn options() -> Options {
    Options {
        cluster: true,
        timeout: Duration::from_secs(10),
        now: time::OffsetDateTime::now_utc().unix_timestamp(),
    }
}

fn diagnose(effects: &Effects, options: &Options) -> Report {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(doctor::run(effects, options))
}

fn status(r: &Report, name: &str) -> Status {
    r.checks
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no check {name}: {}", r.text()))
        .status
}

/// A CRI socket that never answers.
struct DeadCri;

impl Cri for DeadCri {
    fn wait_ready(&self, socket: &Path, _: Duration) -> Result<(), EffectError> {
        Err(EffectError {
            what: format!("waiting for the CRI socket {}", socket.display()),
            detail: "connection refused".into(),
        })
    }
    fn wait_docker(&self, socket: &Path, t: Duration) -> Result<(), EffectError> {
        self.wait_ready(socket, t)
    }
}

/// The host as a healthy node has it: kubelet active and enabled, no swap, the modules and
/// sysctls join sets.
fn healthy_host(root: &Path) -> Effects {
    let effects = Effects {
        host: true,
        kernel: Box::new(RecordingKernel {
            sysctls: Mutex::new(
                node_attach::join::host::SYSCTLS
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect::<BTreeMap<_, _>>(),
            ),
            modules: node_attach::join::host::MODULES.map(String::from).to_vec(),
            ..RecordingKernel::default()
        }),
        ..Effects::doubles(Root::new(root))
    };
    effects.systemd.enable("kubelet.service").expect("enable");
    effects.systemd.start("kubelet.service").expect("start");
    effects
}

#[test]
fn a_joined_node_is_healthy_and_the_doctor_changes_nothing() {
    let cp = control_plane();
    let mut node = Node::new();
    node.kubelet();
    join(&scale_out(&cp, &node, "doctor-1"), &[]).expect_code(0);
    let before = crate::join::tree_with_bytes(node.dir.path());
    let r = run(&["doctor", "--root", &node.root(), "--json"])
        .expect_code(0)
        .json_result();
    assert_eq!(r["state"], "joined", "{r}");
    assert_eq!(r["node"], "doctor-1");
    for c in r["checks"].as_array().expect("checks") {
        let want = match c["name"].as_str() {
            Some("kubelet-unit" | "runtime-socket" | "swap" | "kernel") => "skip",
            _ => "ok",
        };
        assert_eq!(c["status"], want, "{c}");
    }
    // The host's checks through doubles: all OK, nothing asked to change.
    let effects = healthy_host(node.dir.path());
    let report = diagnose(&effects, &options());
    assert!(
        report.checks.iter().all(|c| c.status == Status::Ok),
        "{}",
        report.text()
    );
    let names: Vec<&str> = report.checks.iter().map(|c| c.name).collect();
    assert_eq!(
        names,
        [
            "journal",
            "journal-tree",
            "kubelet-cert",
            "kubelet-unit",
            "runtime-socket",
            "swap",
            "kernel",
            "api-server",
            "node"
        ]
    );
    assert_eq!(
        crate::join::tree_with_bytes(node.dir.path()),
        before,
        "doctor wrote nothing"
    );
}

#[test]
fn a_broken_node_fails_each_check_with_its_fix() {
    let cp = control_plane();
    let mut node = Node::new();
    node.kubelet();
    join(&scale_out(&cp, &node, "doctor-2"), &[]).expect_code(0);
    // The host broken: kubelet stopped, swap on, forwarding off, the runtime silent.
    let effects = Effects {
        cri: Box::new(DeadCri),
        kernel: Box::new(RecordingKernel {
            swaps: vec!["/swapfile".into()],
            sysctls: Mutex::new([("net.ipv4.ip_forward".to_owned(), "0".to_owned())].into()),
            ..RecordingKernel::default()
        }),
        ..healthy_host(node.dir.path())
    };
    effects.systemd.stop("kubelet.service").expect("stop");
    let report = diagnose(&effects, &options());
    for name in ["kubelet-unit", "runtime-socket", "swap", "kernel"] {
        assert_eq!(
            status(&report, name),
            Status::Fail,
            "{name}: {}",
            report.text()
        );
    }
    let kernel = report
        .checks
        .iter()
        .find(|c| c.name == "kernel")
        .expect("kernel");
    assert!(
        kernel.message.contains("net.ipv4.ip_forward = 0 (want 1)"),
        "{}",
        kernel.message
    );
    assert!(
        report
            .checks
            .iter()
            .filter(|c| c.status == Status::Fail)
            .all(|c| c.fix.is_some()),
        "{}",
        report.text()
    );
    // A certificate judged after its end, and near it.
    let expiry = run(&["status", "--root", &node.root(), "--output", "json"]).json_result()
        ["certificate_days_left"]
        .as_i64()
        .expect("days");
    let late = Options {
        now: options().now + (expiry + 2) * 86_400,
        ..options()
    };
    assert_eq!(
        status(&diagnose(&effects, &late), "kubelet-cert"),
        Status::Fail
    );
    let near = Options {
        now: options().now + (expiry - 2) * 86_400,
        ..options()
    };
    assert_eq!(
        status(&diagnose(&effects, &near), "kubelet-cert"),
        Status::Warn
    );
    // The client pair gone: the tree no longer matches the journal, no certificate, no client.
    let current = node.path("var/lib/kubelet/pki/kubelet-client-current.pem");
    let pair = std::fs::read_link(&current).expect("link");
    std::fs::remove_file(node.path(&pair.display().to_string())).expect("rm pair");
    let run = run(&["doctor", "--root", &node.root(), "--json"]);
    run.expect_code(92);
    let r = run.json_result();
    let by_name = |n: &str| {
        r["checks"]
            .as_array()
            .expect("checks")
            .iter()
            .find(|c| c["name"] == n)
            .cloned()
            .expect(n)
    };
    assert_eq!(by_name("journal-tree")["status"], "fail", "{r}");
    assert_eq!(by_name("kubelet-cert")["status"], "fail", "{r}");
    assert_eq!(by_name("api-server")["status"], "fail", "{r}");
    assert_eq!(by_name("node")["status"], "skip", "{r}");
    assert_eq!(run.json_error()["code"], "doctor.failed");
}

#[test]
fn an_unreachable_api_server_and_an_interrupted_join() {
    let node = Node::new();
    {
        let cp = control_plane();
        let mut joined = Node::new();
        joined.kubelet();
        join(&scale_out(&cp, &joined, "doctor-3"), &[]).expect_code(0);
        copy_tree(joined.dir.path(), node.dir.path());
    }
    // The control plane is gone: the API server check fails fast, within its timeout.
    let run = run(&[
        "doctor",
        "--root",
        &node.root(),
        "--json",
        "--timeout",
        "3s",
    ]);
    run.expect_code(92);
    let r = run.json_result();
    let api = r["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .find(|c| c["name"] == "api-server")
        .cloned()
        .expect("api");
    assert_eq!(api["status"], "fail", "{r}");
    assert!(
        api["fix"].as_str().is_some_and(|f| f.contains("6443")),
        "{api}"
    );
    // A join killed after the runtime phase: partial, the journal check names the phase.
    let cp = control_plane();
    let crashed = Node::new();
    join(
        &scale_out(&cp, &crashed, "doctor-4"),
        &[("NODE_ATTACH_TEST_CRASH_AFTER", "runtime")],
    );
    let report = diagnose(&Effects::doubles(Root::new(crashed.dir.path())), &options());
    assert_eq!(report.state, Joined::Partial);
    let journal = &report.checks[0];
    assert_eq!(journal.status, Status::Fail);
    assert!(journal.message.contains("runtime"), "{}", journal.message);
}

#[test]
fn a_machine_that_never_joined_or_was_reset_is_not_joined_without_error() {
    let fresh = Node::new();
    let r = run(&["doctor", "--root", &fresh.root(), "--json"])
        .expect_code(0)
        .json_result();
    assert_eq!(r["state"], "not-joined", "{r}");
    let cp = control_plane();
    let mut node = Node::new();
    node.kubelet();
    join(&scale_out(&cp, &node, "doctor-5"), &[]).expect_code(0);
    run(&["reset", "--root", &node.root()]).expect_code(0);
    let r = run(&["doctor", "--root", &node.root(), "--json"])
        .expect_code(0)
        .json_result();
    assert_eq!(r["state"], "not-joined", "{r}");
    // On a host that never joined, swap and kernel settings are warnings for join to fix.
    let effects = Effects {
        host: true,
        kernel: Box::new(RecordingKernel {
            swaps: vec!["/dev/vda2".into()],
            ..RecordingKernel::default()
        }),
        ..Effects::doubles(Root::new(node.dir.path()))
    };
    let report = diagnose(&effects, &options());
    assert_eq!(report.state, Joined::NotJoined);
    assert_eq!(status(&report, "swap"), Status::Warn);
    assert_eq!(status(&report, "kernel"), Status::Warn);
    for name in [
        "kubelet-cert",
        "kubelet-unit",
        "runtime-socket",
        "api-server",
        "node",
    ] {
        assert_eq!(status(&report, name), Status::Skip, "{name}");
    }
    assert_ne!(report.worst(), Status::Fail);
}

/// Copies a joined root (files, directories and symlinks) to another directory.
fn copy_tree(from: &Path, to: &Path) {
    for entry in walk(from) {
        let rel = entry.strip_prefix(from).expect("prefix");
        let dest = to.join(rel);
        let meta = std::fs::symlink_metadata(&entry).expect("meta");
        if meta.file_type().is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&entry).expect("link"), &dest)
                .expect("symlink");
        } else if meta.is_dir() {
            std::fs::create_dir_all(&dest).expect("dir");
            std::fs::set_permissions(&dest, meta.permissions()).expect("chmod");
        } else if meta.is_file() {
            std::fs::copy(&entry, &dest).expect("copy");
        }
    }
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("read_dir").flatten() {
        let p = e.path();
        out.push(p.clone());
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            out.extend(walk(&p));
        }
    }
    out
}
