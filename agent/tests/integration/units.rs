//! The shipped systemd units pass `systemd-analyze verify` (with their binaries pointed at the
//! ones built here, since verify requires ExecStart to exist), warnings included.

use crate::support::*;
use std::process::Command;

#[test]
fn shipped_units_pass_systemd_analyze_verify() {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = tempfile::tempdir().expect("tmp");
    let node_attach = binary().display().to_string();
    let kubelet = binary()
        .with_file_name("kubelet-standin")
        .display()
        .to_string();
    let rewrite = |text: String| {
        text.replace("/usr/local/bin/node-attach", &node_attach)
            .replace("/usr/local/bin/containerd", &node_attach)
            .replace("/usr/bin/kubelet", &kubelet)
    };
    let mut units = Vec::new();
    for e in std::fs::read_dir(repo.join("systemd"))
        .expect("systemd/")
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".service") {
            std::fs::write(
                dir.path().join(&name),
                rewrite(std::fs::read_to_string(e.path()).expect("unit")),
            )
            .expect("copy");
            units.push(name);
        }
    }
    std::fs::create_dir_all(dir.path().join("kubelet.service.d")).expect("drop-in dir");
    std::fs::write(
        dir.path().join("kubelet.service.d/10-kubeadm.conf"),
        rewrite(std::fs::read_to_string(repo.join("systemd/10-kubeadm.conf")).expect("drop-in")),
    )
    .expect("copy drop-in");
    assert!(units.len() >= 3, "{units:?}");
    for unit in units {
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&unit)
            .current_dir(dir.path())
            .env("SYSTEMD_UNIT_PATH", format!("{}:", dir.path().display()))
            .output()
            .expect("systemd-analyze is installed (package systemd)");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let ours: Vec<&str> = stderr
            .lines()
            .filter(|l| l.contains(&dir.path().display().to_string()) || l.contains(&unit))
            .collect();
        assert!(out.status.success() && ours.is_empty(), "{unit}: {stderr}");
    }
}
