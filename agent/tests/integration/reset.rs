//! `node-attach reset` after joins into scratch roots: the tree returns to its pre-join state
//! (paths, modes, bytes), canaries survive, interrupted joins converge, reset is repeatable,
//! nodes delete only themselves, and swapped-in symlinks are refused.

use crate::join::{join, scale_out, tree_with_bytes, Node};
use crate::support::*;
use std::os::unix::fs::PermissionsExt;

/// Plants canaries and pre-existing files that join overwrites or sits next to.
fn prepare(node: &Node) {
    for (p, text, mode) in [
        (
            "/etc/fstab",
            "UUID=1 / ext4 defaults 0 1\n/swapfile none swap sw 0 0\n",
            0o640,
        ),
        ("/etc/kubernetes/canary.conf", "mine\n", 0o600),
        (
            "/etc/kubernetes/pki/ca.crt",
            "an older CA that join replaces\n",
            0o644,
        ),
        (
            "/etc/containerd/config.toml",
            "# the image's own containerd config\n",
            0o644,
        ),
        ("/etc/sysctl.d/10-image.conf", "vm.swappiness = 10\n", 0o644),
        ("/etc/systemd/system/other.service", "[Unit]\n", 0o644),
        ("/var/lib/canary/data", "keep\n", 0o600),
        ("/usr/local/bin/tool", "#!/bin/sh\n", 0o755),
    ] {
        let real = node.path(p);
        std::fs::create_dir_all(real.parent().expect("parent")).expect("mkdir");
        std::fs::write(&real, text).expect("write");
        std::fs::set_permissions(&real, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }
    std::fs::create_dir_all(node.path("/etc/cni/net.d.keep")).expect("canary dir");
}

fn reset(node: &Node, extra: &[&str]) -> Run {
    let root = node.root();
    let mut args = vec!["reset", "--root", root.as_str()];
    args.extend_from_slice(extra);
    run_with(&args, &[], std::time::Duration::from_secs(60))
}

#[test]
fn reset_returns_the_tree_to_its_pre_join_state() {
    let cp = control_plane();
    let mut node = Node::new();
    prepare(&node);
    let before = tree_with_bytes(node.dir.path());
    node.kubelet();
    let mut args = scale_out(&cp, &node, "reset-1");
    args.push("--disable-swap".into());
    join(&args, &[]).expect_code(0);
    assert_ne!(tree_with_bytes(node.dir.path()), before);
    // A node may not delete its own Node: the admin's kubeconfig does it.
    let (_admin_dir, admin) = admin_kubeconfig_file(&cp);
    let run = reset(&node, &["--delete-node", "--kubeconfig", &admin]);
    run.expect_code(0).expect_output("deleted reset-1");
    assert_eq!(
        tree_with_bytes(node.dir.path()),
        before,
        "reset did not restore the tree:\n{}",
        run.stdout
    );
    assert!(
        cp.get(Kind::Node, "", "reset-1").is_none(),
        "the Node is still registered"
    );
    // Twice is a no-op that says why.
    reset(&node, &[])
        .expect_code(0)
        .expect_output("journal is missing");
    assert_eq!(tree_with_bytes(node.dir.path()), before);
}

#[test]
fn reset_after_an_interrupted_join_converges() {
    let cp = control_plane();
    for phase in ["host", "runtime", "kubelet", "bootstrap", "start"] {
        let node = Node::new();
        prepare(&node);
        let before = tree_with_bytes(node.dir.path());
        let args = scale_out(&cp, &node, &format!("interrupted-{phase}"));
        let crashed = join(&args, &[("NODE_ATTACH_TEST_CRASH_AFTER", phase)]);
        assert_ne!(crashed.code, 0);
        reset(&node, &[]).expect_code(0);
        assert_eq!(
            tree_with_bytes(node.dir.path()),
            before,
            "after a crash in {phase}"
        );
    }
}

#[test]
fn dry_run_reset_changes_nothing() {
    let cp = control_plane();
    let mut node = Node::new();
    node.kubelet();
    join(&scale_out(&cp, &node, "dry-reset"), &[]).expect_code(0);
    let joined = tree_with_bytes(node.dir.path());
    let run = reset(&node, &["--dry-run", "--delete-node"]);
    run.expect_code(0)
        .expect_output("would-do")
        .expect_output("DELETE /api/v1/nodes/dry-reset");
    assert_eq!(tree_with_bytes(node.dir.path()), joined);
    assert!(cp.get(Kind::Node, "", "dry-reset").is_some());
}

#[test]
fn a_node_deletes_only_itself_and_survives_an_unreachable_api_server() {
    let cp = control_plane();
    let mut a = Node::new();
    a.kubelet();
    join(&scale_out(&cp, &a, "node-a"), &[]).expect_code(0);
    let mut b = Node::new();
    b.kubelet();
    join(&scale_out(&cp, &b, "node-b"), &[]).expect_code(0);
    // node-a's own credentials cannot delete node-b (NodeRestriction).
    let pair = std::fs::read(
        a.path(
            &std::fs::read_link(a.path("/var/lib/kubelet/pki/kubelet-client-current.pem"))
                .expect("link")
                .display()
                .to_string(),
        ),
    )
    .expect("pair");
    let ca = node_attach::trust::pin::certificates_from_pem(cp.ca_pem().as_bytes()).expect("ca");
    node_attach::trust::tls::install_provider();
    let kube = node_attach::client::kube::Kube::with_certificate(
        cp.url(),
        &ca,
        &pair,
        node_attach::client::http::Limits::default(),
    )
    .expect("client");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    let err = rt
        .block_on(kube.delete("/api/v1/nodes/node-b"))
        .expect_err("forbidden");
    assert_eq!(err.status(), Some(403), "{err}");
    assert!(cp.get(Kind::Node, "", "node-b").is_some());
    // With the API server gone, local cleanup still completes and deletion is reported skipped.
    // The deletion is retried for the client's whole retry deadline first, so this run gets
    // that and room to spare (the usual 60 s limit equalled it, and a loaded machine crossed it).
    drop(cp);
    let limit =
        node_attach::client::kube::DEFAULT_RETRY_DEADLINE + std::time::Duration::from_secs(60);
    let root = b.root();
    let run = run_with(
        &["reset", "--root", root.as_str(), "--delete-node"],
        &[],
        limit,
    );
    run.expect_code(0).expect_output("skipped");
    assert!(!b.path("/etc/kubernetes/kubelet.conf").exists());
}

#[test]
fn a_symlink_swapped_into_a_managed_path_is_refused() {
    let cp = control_plane();
    let mut node = Node::new();
    node.kubelet();
    join(&scale_out(&cp, &node, "swapped-1"), &[]).expect_code(0);
    let outside = tempfile::tempdir().expect("outside");
    std::fs::write(outside.path().join("daemon.json"), "precious\n").expect("outside file");
    std::fs::remove_dir_all(node.path("/etc/docker")).expect("rm");
    std::os::unix::fs::symlink(outside.path(), node.path("/etc/docker")).expect("swap in a link");
    let run = reset(&node, &[]);
    run.expect_code(80)
        .expect_output("refused")
        .expect_output("symbolic link");
    assert_eq!(
        std::fs::read_to_string(outside.path().join("daemon.json")).expect("still there"),
        "precious\n"
    );
}

#[test]
fn a_damaged_journal_falls_back_to_documented_paths() {
    let cp = control_plane();
    let mut node = Node::new();
    prepare(&node);
    node.kubelet();
    join(&scale_out(&cp, &node, "damaged-1"), &[]).expect_code(0);
    let journal = node.path("/var/lib/node-attach/journal.jsonl");
    let text = std::fs::read_to_string(&journal).expect("journal");
    std::fs::write(&journal, format!("not json\n{text}")).expect("damage");
    reset(&node, &[])
        .expect_code(0)
        .expect_output("journal is damaged");
    assert!(!node.path("/etc/kubernetes/kubelet.conf").exists());
    assert_eq!(
        std::fs::read_to_string(node.path("/etc/kubernetes/canary.conf")).expect("canary"),
        "mine\n"
    );
    assert!(node.path("/var/lib/canary/data").exists());
}

#[test]
fn mounts_under_var_lib_kubelet_are_unmounted_first() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED: mount handling needs root (CI runs as root)");
        return;
    }
    let cp = control_plane();
    let mut node = Node::new();
    node.kubelet();
    join(&scale_out(&cp, &node, "mounts-1"), &[]).expect_code(0);
    let vol = node.path("/var/lib/kubelet/pods/p1/volumes/kubernetes.io~empty-dir/v");
    std::fs::create_dir_all(&vol).expect("volume dir");
    // A private mount namespace: nothing leaks to the host whatever happens.
    let script = format!(
        "mount -t tmpfs tmpfs '{v}' && mkdir '{v}/inner' && mount -t tmpfs tmpfs '{v}/inner' && echo data > '{v}/inner/f' && '{bin}' reset --root '{root}' && ! grep -q '{root}' /proc/self/mountinfo",
        v = vol.display(),
        bin = binary().display(),
        root = node.root()
    );
    let out = std::process::Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .output()
        .expect("unshare");
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("unmount"));
    assert!(!node.path("/var/lib/kubelet").exists());
}

#[test]
fn drain_honours_pod_disruption_budgets_before_anything_is_removed() {
    let cp = control_plane();
    let mut node = Node::new();
    // The API server only marks an evicted pod of a node; its kubelet finishes the deletion.
    node.kubelet_running_pods();
    join(&scale_out(&cp, &node, "drain-1"), &[]).expect_code(0);
    let pod = |name: &str, extra: serde_json::Value| {
        let mut p = serde_json::json!({"metadata": {"name": name, "namespace": "default", "labels": {"app": "web"}}, "spec": {"nodeName": "drain-1"}});
        test_control_plane::store::merge_patch(&mut p, &extra);
        cp.put(Kind::Pod, "default", name, p);
    };
    pod("web-1", serde_json::json!({}));
    pod(
        "agent-1",
        serde_json::json!({"metadata": {"ownerReferences": [{"kind": "DaemonSet", "name": "agent"}]}}),
    );
    let pdb = |allowed: i64| serde_json::json!({"metadata": {"name": "web", "namespace": "default"}, "spec": {"selector": {"matchLabels": {"app": "web"}}}, "status": {"disruptionsAllowed": allowed}});
    cp.put(Kind::Pdb, "default", "web", pdb(0));
    let admin = write(
        node.dir.path().parent().expect("tmp"),
        &format!("admin-{}.conf", std::process::id()),
        &cp.admin_kubeconfig(),
    );
    let admin = admin.display().to_string();
    let run = reset(
        &node,
        &[
            "--drain",
            "--kubeconfig",
            &admin,
            "--drain-timeout",
            "2s",
            "--delete-node",
        ],
    );
    run.expect_code(81)
        .expect_output("default/web-1")
        .expect_output("nothing was removed");
    assert!(
        node.path("/etc/kubernetes/kubelet.conf").exists(),
        "a failed drain must not remove anything"
    );
    assert!(cp.get(Kind::Node, "", "drain-1").is_some());
    assert_eq!(
        cp.get(Kind::Node, "", "drain-1").expect("node")["spec"]["unschedulable"],
        true,
        "cordoned"
    );
    cp.put(Kind::Pdb, "default", "web", pdb(1));
    reset(
        &node,
        &[
            "--drain",
            "--kubeconfig",
            &admin,
            "--drain-timeout",
            "10s",
            "--delete-node",
        ],
    )
    .expect_code(0)
    .expect_output("default/web-1");
    assert!(cp.get(Kind::Pod, "default", "web-1").is_none(), "evicted");
    assert!(
        cp.get(Kind::Pod, "default", "agent-1").is_some(),
        "DaemonSet pods stay"
    );
    assert!(cp.get(Kind::Node, "", "drain-1").is_none());
    let _ = std::fs::remove_file(&admin);
}

/// The pre-join tree of a node whose kubelet directory already held a config that join
/// overwrites (so reset restores a file inside a directory it also cleans).
fn prepare_with_kubelet_config(node: &Node) {
    prepare(node);
    let config = node.path("/var/lib/kubelet/config.yaml");
    std::fs::create_dir_all(config.parent().expect("parent")).expect("mkdir");
    std::fs::write(&config, "# the image's own kubelet config\n").expect("config");
    if nix::unistd::geteuid().is_root() {
        std::os::unix::fs::chown(
            node.path("/etc/kubernetes/pki/ca.crt"),
            Some(1234),
            Some(2345),
        )
        .expect("chown");
    }
}

fn owner(path: &std::path::Path) -> (u32, u32) {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).expect("stat");
    (m.uid(), m.gid())
}

#[test]
fn kill_9_at_every_step_of_reset_then_rerun_restores_the_tree_exactly() {
    // reset aborts (as kill -9 would) at its Nth step, for every N until a run completes;
    // the rerun must finish the job, and a third run must change nothing.
    let cp = control_plane();
    let mut crashed_at = Vec::new();
    for n in 1..200 {
        let mut node = Node::new();
        prepare_with_kubelet_config(&node);
        let before = tree_with_bytes(node.dir.path());
        let owner_before = owner(&node.path("/etc/kubernetes/pki/ca.crt"));
        node.kubelet();
        join(&scale_out(&cp, &node, &format!("reset-kill-{n}")), &[]).expect_code(0);
        let root = node.root();
        let run = run_with(
            &["reset", "--root", &root],
            &[("NODE_ATTACH_TEST_RESET_CRASH_AT", &n.to_string())],
            std::time::Duration::from_secs(60),
        );
        if run.code == 0 {
            assert_eq!(tree_with_bytes(node.dir.path()), before, "complete run {n}");
            break;
        }
        assert!(
            run.all().contains("aborting as if killed"),
            "step {n}: {}",
            run.all()
        );
        crashed_at.push(n);
        reset(&node, &[]).expect_code(0);
        assert_eq!(
            tree_with_bytes(node.dir.path()),
            before,
            "killed at step {n}: the rerun did not restore the tree"
        );
        assert_eq!(
            owner(&node.path("/etc/kubernetes/pki/ca.crt")),
            owner_before,
            "step {n}"
        );
        reset(&node, &[])
            .expect_code(0)
            .expect_output("journal is missing");
        assert_eq!(
            tree_with_bytes(node.dir.path()),
            before,
            "a third run changed the tree"
        );
    }
    eprintln!("reset killed and rerun at {} points", crashed_at.len());
    assert!(
        crashed_at.len() >= 20,
        "only {} kill points: {crashed_at:?}",
        crashed_at.len()
    );
}

#[test]
fn backups_stay_until_every_restore_is_done() {
    let cp = control_plane();
    let mut node = Node::new();
    prepare(&node);
    let before = tree_with_bytes(node.dir.path());
    node.kubelet();
    join(&scale_out(&cp, &node, "reset-blocked-1"), &[]).expect_code(0);
    // Something put a directory where join's file was: the restore is refused, so the journal
    // and its backups must stay for a rerun.
    let blocked = node.path("/etc/kubernetes/pki/ca.crt");
    std::fs::remove_file(&blocked).expect("rm");
    std::fs::create_dir(&blocked).expect("dir in the way");
    reset(&node, &[])
        .expect_code(80)
        .expect_output("no longer a regular file")
        .expect_output("kept with its backups");
    assert!(node.path("/var/lib/node-attach/journal.jsonl").exists());
    assert!(node
        .path("/var/lib/node-attach/backup")
        .read_dir()
        .expect("backups")
        .next()
        .is_some());
    std::fs::remove_dir(&blocked).expect("clear the way");
    reset(&node, &[]).expect_code(0);
    assert_eq!(tree_with_bytes(node.dir.path()), before);
}

#[test]
fn a_fifo_at_a_journaled_path_is_refused_and_never_opened() {
    let cp = control_plane();
    let mut node = Node::new();
    prepare(&node);
    node.kubelet();
    join(&scale_out(&cp, &node, "reset-fifo-1"), &[]).expect_code(0);
    let path = node.path("/etc/docker/daemon.json");
    std::fs::remove_file(&path).expect("rm");
    nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
    // A reader opening the FIFO would block forever: the run limit catches that.
    reset(&node, &[]).expect_code(80).expect_output("fifo");
    // And join refuses to write over one.
    let run = join(&scale_out(&cp, &node, "reset-fifo-1"), &[]);
    run.expect_code(70).expect_output("fifo");
}

#[test]
fn a_tampered_journal_is_refused_before_anything_changes() {
    let cp = control_plane();
    let mut node = Node::new();
    prepare(&node);
    node.kubelet();
    join(&scale_out(&cp, &node, "reset-tampered-1"), &[]).expect_code(0);
    let journal = node.path("/var/lib/node-attach/journal.jsonl");
    for line in [
        r#"{"seq":900,"event":"begin","change":{"kind":"file","path":"/../../etc/passwd","prior":null}}"#,
        r#"{"seq":901,"event":"begin","change":{"kind":"file","path":"/etc/hosts","prior":{"mode":420,"backup":"/etc/shadow"}}}"#,
    ] {
        let original = std::fs::read_to_string(&journal).expect("journal");
        std::fs::write(&journal, format!("{original}{line}\n")).expect("tamper");
        let before = tree_with_bytes(node.dir.path());
        reset(&node, &[])
            .expect_code(72)
            .expect_output("journal.tampered");
        assert_eq!(tree_with_bytes(node.dir.path()), before, "{line}");
        std::fs::write(&journal, original).expect("untamper");
    }
    reset(&node, &[]).expect_code(0);
}
