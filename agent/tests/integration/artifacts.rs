//! A plain root gets what it lacks from a signed mirror: `node-attach artifacts publish`
//! builds the mirror (served by the test control plane at /files/mirror/ over its TLS), join
//! installs the kubelet and CNI plugins (and, asked to, a static containerd) verified against
//! the signed manifest, and reset removes exactly what was installed. Each refusal — a
//! tampered binary, a manifest naming the wrong digest, a bad or missing signature, a kubelet
//! the skew policy forbids — exits with its code before anything changes.

use crate::join::{join, scale_out, tree_with_bytes, Node};
use crate::support::*;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// A mirror folder under a control plane's files, and the key that signs it.
struct Mirror {
    _files: tempfile::TempDir,
    dir: PathBuf,
    src: tempfile::TempDir,
    key: PathBuf,
    public: String,
    ca: PathBuf,
    cp: TestControlPlane,
}

const KUBELET: &[u8] = b"#!/bin/sh\necho a kubelet from the mirror\n";

fn run_ok(args: &[&str]) -> Run {
    let run = run(args);
    run.expect_code(0);
    run
}

impl Mirror {
    /// Publishes a v1.20.2 release (kubelet, three CNI plugins, one image archive) and a
    /// static containerd, for a control plane playing 1.20.2.
    fn new() -> Mirror {
        let files = tempfile::tempdir().expect("files");
        let dir = files.path().join("mirror");
        let cp = control_plane_with(Options {
            kubernetes_version: "v1.20.2".into(),
            files_dir: Some(files.path().to_path_buf()),
            ..Options::default()
        });
        let src = tempfile::tempdir().expect("src");
        let key = src.path().join("signing.pem");
        run_ok(&["artifacts", "keygen", "--out", key.to_str().expect("utf8")]);
        let public = run_ok(&[
            "artifacts",
            "public-key",
            "--key",
            key.to_str().expect("utf8"),
        ])
        .stdout
        .trim()
        .to_owned();
        assert!(public.starts_with("ed25519:"), "{public}");
        let put = |name: &str, bytes: &[u8]| {
            let p = src.path().join(name);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("dir");
            std::fs::write(&p, bytes).expect("write");
            p.display().to_string()
        };
        let kubelet = put("kubelet", KUBELET);
        for plugin in ["bridge", "host-local", "loopback"] {
            put(
                &format!("cni/{plugin}"),
                format!("plugin {plugin}\n").as_bytes(),
            );
        }
        let image = put("pause.tar", b"k8s.gcr.io/pause:3.2\n");
        let bins: Vec<String> = ["containerd", "containerd-shim-runc-v2", "ctr", "runc"]
            .iter()
            .map(|b| put(&format!("rt/{b}"), format!("static {b}\n").as_bytes()))
            .collect();
        let ca = src.path().join("ca.crt");
        std::fs::write(&ca, cp.ca_pem()).expect("ca");
        let mut args = vec![
            "artifacts".to_owned(),
            "publish".into(),
            "--dir".into(),
            dir.display().to_string(),
            "--key".into(),
            key.display().to_string(),
            "--kubernetes-version".into(),
            "v1.20.2".into(),
            "--kubelet".into(),
            kubelet,
            "--cni".into(),
            src.path().join("cni").display().to_string(),
            "--image".into(),
            format!("{image}=k8s.gcr.io/pause:3.2"),
            "--containerd-version".into(),
            "1.6.20".into(),
        ];
        for b in &bins {
            args.push("--runtime-binary".into());
            args.push(b.clone());
        }
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        run_ok(&a).expect_output("manifest.json signed by");
        Mirror {
            _files: files,
            dir,
            src,
            key,
            public,
            ca,
            cp,
        }
    }

    /// Adds a release of another version (the same bytes, labelled `version`).
    fn publish_version(&self, version: &str) {
        run_ok(&[
            "artifacts",
            "publish",
            "--dir",
            self.dir.to_str().expect("utf8"),
            "--key",
            self.key.to_str().expect("utf8"),
            "--kubernetes-version",
            version,
            "--kubelet",
            self.src.path().join("kubelet").to_str().expect("utf8"),
        ]);
    }

    /// The scale-out join with the mirror.
    fn join_args(&self, node: &Node, name: &str) -> Vec<String> {
        let mut a = scale_out(&self.cp, node, name);
        a.extend([
            "--artifacts-url".into(),
            format!("{}/files/mirror", self.cp.url()),
            "--artifacts-key".into(),
            self.public.clone(),
            "--artifacts-ca-file".into(),
            self.ca.display().to_string(),
            "--artifacts-timeout".into(),
            "20s".into(),
        ]);
        a
    }

    fn manifest(&self) -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(self.dir.join("manifest.json")).expect("read"))
            .expect("json")
    }

    /// Replaces the manifest with `doc`, signed by the mirror's key.
    fn resign(&self, doc: &serde_json::Value) {
        let path = self.dir.join("manifest.json");
        std::fs::write(&path, serde_json::to_vec_pretty(doc).expect("json")).expect("write");
        run_ok(&[
            "artifacts",
            "sign",
            "--key",
            self.key.to_str().expect("utf8"),
            path.to_str().expect("utf8"),
        ]);
    }
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).expect("stat").permissions().mode() & 0o7777
}

fn reset(node: &Node) -> Run {
    let root = node.root();
    run(&["reset", "--root", root.as_str()])
}

#[test]
fn a_plain_root_gets_the_kubelet_and_cni_plugins_from_the_signed_mirror_and_reset_removes_them() {
    let m = Mirror::new();
    let mut node = Node::new();
    // What the image had: a crictl of its own, which join leaves alone, and a CNI directory
    // with a daemonset's plugin and an old bridge but no loopback (so no usable plugin set):
    // join installs the mirror's plugins beside them, and reset gives the old bridge back.
    std::fs::create_dir_all(node.path("/usr/bin")).expect("usr/bin");
    std::fs::write(node.path("/usr/bin/crictl"), b"the image's crictl").expect("crictl");
    std::fs::create_dir_all(node.path("/opt/cni/bin")).expect("cni dir");
    std::fs::write(node.path("/opt/cni/bin/flannel"), b"flannel").expect("flannel");
    std::fs::write(node.path("/opt/cni/bin/bridge"), b"old bridge").expect("bridge");
    std::fs::set_permissions(
        node.path("/opt/cni/bin/bridge"),
        std::fs::Permissions::from_mode(0o700),
    )
    .expect("chmod");
    let before = tree_with_bytes(node.dir.path());
    node.kubelet();
    let run = join(&m.join_args(&node, "mirror-1"), &[]);
    run.expect_code(0)
        .expect_output("signature verified")
        .expect_output("kubelet v1.20.2");
    assert_eq!(
        std::fs::read(node.path("/usr/bin/kubelet")).expect("kubelet"),
        KUBELET
    );
    assert_eq!(mode(&node.path("/usr/bin/kubelet")), 0o755);
    for plugin in ["bridge", "host-local", "loopback"] {
        let p = node.path(&format!("/opt/cni/bin/{plugin}"));
        assert_eq!(
            std::fs::read(&p).expect("plugin"),
            format!("plugin {plugin}\n").as_bytes()
        );
        assert_eq!(mode(&p), 0o755);
    }
    assert_eq!(
        std::fs::read(node.path("/opt/cni/bin/flannel")).expect("kept"),
        b"flannel"
    );
    assert_eq!(
        std::fs::read(node.path("/usr/bin/crictl")).expect("kept"),
        b"the image's crictl"
    );
    assert!(
        !node.path("/usr/local/bin/containerd").exists(),
        "no static runtime unless asked"
    );
    assert!(
        !std::fs::read_dir(node.dir.path())
            .expect("ls")
            .flatten()
            .any(|e| e
                .file_name()
                .to_string_lossy()
                .contains("node-attach-stage")),
        "the scratch directory is gone"
    );
    // A rerun has nothing to fetch.
    join(&m.join_args(&node, "mirror-1"), &[])
        .expect_code(0)
        .expect_output("nothing missing");
    reset(&node).expect_code(0);
    assert_eq!(
        tree_with_bytes(node.dir.path()),
        before,
        "reset restores the tree"
    );
}

#[test]
fn a_static_containerd_and_its_unit_come_from_the_mirror_when_asked() {
    let m = Mirror::new();
    let mut node = Node::new();
    let before = tree_with_bytes(node.dir.path());
    node.kubelet();
    let mut args = m.join_args(&node, "mirror-rt");
    // scale_out picks docker; this node runs containerd from the mirror.
    let at = args
        .iter()
        .position(|a| a == "--docker-version")
        .expect("flag");
    args.drain(at..at + 2);
    args.extend(["--runtime-source".into(), "mirror".into()]);
    join(&args, &[]).expect_code(0);
    for (bin, path) in [
        ("containerd", "/usr/local/bin/containerd"),
        (
            "containerd-shim-runc-v2",
            "/usr/local/bin/containerd-shim-runc-v2",
        ),
        ("ctr", "/usr/local/bin/ctr"),
        ("runc", "/usr/local/sbin/runc"),
    ] {
        assert_eq!(
            std::fs::read(node.path(path)).expect(bin),
            format!("static {bin}\n").as_bytes()
        );
    }
    let unit =
        std::fs::read_to_string(node.path("/etc/systemd/system/containerd.service")).expect("unit");
    assert!(
        unit.contains("ExecStart=/usr/local/bin/containerd"),
        "{unit}"
    );
    let config = std::fs::read_to_string(node.path("/etc/containerd/config.toml")).expect("config");
    assert!(config.contains("SystemdCgroup = true"), "{config}");
    reset(&node).expect_code(0);
    assert_eq!(tree_with_bytes(node.dir.path()), before);
}

/// Runs a join that must be refused with `code` and `text`, and checks nothing changed.
fn refused(m: &Mirror, name: &str, extra: &[&str], code: i32, text: &str) {
    let node = Node::new();
    let before = tree_with_bytes(node.dir.path());
    let mut args = m.join_args(&node, name);
    args.extend(extra.iter().map(|s| s.to_string()));
    join(&args, &[]).expect_code(code).expect_output(text);
    assert_eq!(
        tree_with_bytes(node.dir.path()),
        before,
        "{name}: the refused join changed the root"
    );
}

#[test]
fn a_tampered_binary_is_refused_and_nothing_is_installed() {
    let m = Mirror::new();
    let kubelet = m.dir.join("kubernetes/v1.20.2/amd64/kubelet");
    let mut bytes = std::fs::read(&kubelet).expect("kubelet");
    bytes[0] ^= 0x20;
    std::fs::write(&kubelet, &bytes).expect("tamper");
    refused(
        &m,
        "tampered",
        &[],
        46,
        "does not match the signed manifest",
    );
}

#[test]
fn a_signed_manifest_naming_another_digest_is_refused() {
    let m = Mirror::new();
    let mut doc = m.manifest();
    doc["releases"][0]["kubelet"]["sha256"] = "ab".repeat(32).into();
    m.resign(&doc);
    refused(&m, "digest", &[], 46, "sha256");
}

#[test]
fn a_matching_binary_and_digest_without_a_valid_signature_are_refused() {
    let m = Mirror::new();
    // A compromised mirror: its own kubelet, with a manifest naming exactly its digest...
    let evil = b"#!/bin/sh\necho not the real kubelet\n";
    std::fs::write(m.dir.join("kubernetes/v1.20.2/amd64/kubelet"), evil).expect("replace");
    let mut doc = m.manifest();
    let sha: String = {
        use sha2::{Digest, Sha256};
        Sha256::digest(evil)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    doc["releases"][0]["kubelet"]["sha256"] = sha.into();
    doc["releases"][0]["kubelet"]["size"] = evil.len().into();
    std::fs::write(
        m.dir.join("manifest.json"),
        serde_json::to_vec_pretty(&doc).expect("json"),
    )
    .expect("write");
    // ...but no signature by the pinned key: the old one, another key's, none at all.
    refused(&m, "old-sig", &[], 45, "does not verify");
    let other = m.src.path().join("other.pem");
    run_ok(&[
        "artifacts",
        "keygen",
        "--out",
        other.to_str().expect("utf8"),
    ]);
    run_ok(&[
        "artifacts",
        "sign",
        "--key",
        other.to_str().expect("utf8"),
        m.dir.join("manifest.json").to_str().expect("utf8"),
    ]);
    refused(&m, "other-key", &[], 45, "does not verify");
    std::fs::remove_file(m.dir.join("manifest.json.sig")).expect("rm sig");
    refused(&m, "no-sig", &[], 45, "serves no manifest.json.sig");
}

#[test]
fn a_kubelet_the_skew_policy_forbids_is_refused_with_the_rule() {
    let m = Mirror::new();
    m.publish_version("v1.21.0");
    refused(
        &m,
        "skew",
        &["--kubelet-version", "v1.21.0"],
        47,
        "must not be newer than the API server",
    );
    refused(
        &m,
        "absent",
        &["--kubelet-version", "v1.19.0"],
        48,
        "offers no kubelet v1.19.0",
    );
}

#[test]
fn a_mirror_needs_its_key_and_a_dry_run_changes_nothing() {
    let m = Mirror::new();
    let node = Node::new();
    let mut args = m.join_args(&node, "nokey");
    let at = args
        .iter()
        .position(|a| a == "--artifacts-key")
        .expect("flag");
    args.drain(at..at + 2);
    join(&args, &[])
        .expect_code(2)
        .expect_output("needs the public key");
    let before = tree_with_bytes(node.dir.path());
    let mut args = m.join_args(&node, "dry");
    args.push("--dry-run".into());
    let run = join(&args, &[]);
    run.expect_code(0)
        .expect_output("/usr/bin/kubelet")
        .expect_output("/opt/cni/bin/loopback");
    assert_eq!(tree_with_bytes(node.dir.path()), before);
}

#[test]
fn bake_mode_prepares_with_no_cluster_and_the_boot_join_only_joins() {
    let m = Mirror::new();
    let mut node = Node::new();
    let before = tree_with_bytes(node.dir.path());
    let mirror_flags = m.join_args(&node, "baked");
    let at = mirror_flags
        .iter()
        .position(|a| a == "--artifacts-url")
        .expect("flag");
    let mut prepare = vec![
        "join".to_owned(),
        "--phase".into(),
        "prepare".into(),
        "--root".into(),
        node.root(),
        "--kubelet-version".into(),
        "v1.20.2".into(),
        "--output".into(),
        "json".into(),
    ];
    prepare.extend(mirror_flags[at..].iter().cloned());
    let requests = m.cp.requests().len();
    let run = join(&prepare, &[]);
    run.expect_code(0);
    let api: Vec<String> = m.cp.requests()[requests..]
        .iter()
        .filter(|r| !r.path.starts_with("/files/"))
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert!(api.is_empty(), "bake mode contacted the cluster: {api:?}");
    assert_eq!(
        std::fs::read(node.path("/usr/bin/kubelet")).expect("kubelet"),
        KUBELET
    );
    assert!(node.path("/opt/cni/bin/loopback").exists());
    assert!(node
        .path("/etc/systemd/system/kubelet.service.d/10-kubeadm.conf")
        .exists());
    assert!(node.path("/etc/containerd/config.toml").exists());
    assert!(
        !node.path("/etc/kubernetes/kubelet.conf").exists(),
        "no credentials baked in"
    );
    assert!(
        !node.path("/var/lib/kubelet/config.yaml").exists(),
        "no cluster configuration"
    );

    // The boot-time join: nothing is fetched, nothing prepared changes again.
    node.kubelet();
    let requests = m.cp.requests().len();
    let mut boot = m.join_args(&node, "baked");
    let at = boot
        .iter()
        .position(|a| a == "--docker-version")
        .expect("flag");
    boot.drain(at..at + 2);
    boot.extend(["--output".into(), "json".into()]);
    let run = join(&boot, &[]);
    run.expect_code(0);
    let files: Vec<String> = m.cp.requests()[requests..]
        .iter()
        .filter(|r| r.path.starts_with("/files/"))
        .map(|r| r.path.clone())
        .collect();
    assert!(files.is_empty(), "the boot join fetched {files:?}");
    let steps = run.json_result()["steps"]
        .as_array()
        .cloned()
        .expect("steps");
    let again: Vec<String> = steps
        .iter()
        .filter(|s| ["host", "install", "runtime"].contains(&s["phase"].as_str().unwrap_or("")))
        .filter(|s| s["outcome"] == "changed")
        .map(|s| format!("{} {}", s["kind"], s["target"]))
        .collect();
    assert!(
        again.is_empty(),
        "the boot join redid prepared steps: {again:?}"
    );
    assert!(node.path("/etc/kubernetes/kubelet.conf").exists());
    reset(&node).expect_code(0);
    assert_eq!(tree_with_bytes(node.dir.path()), before);
}
