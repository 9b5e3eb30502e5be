//! Admin kubeconfigs read as kubectl reads them, checked against the real kubectl on the same
//! files: the CA, client certificate and key as files relative to the kubeconfig, `KUBECONFIG`
//! with several files merged, and what kubectl accepts but node-attach refuses
//! (`insecure-skip-tls-verify`) or both refuse (a CA given twice).

use crate::support::*;
use std::path::{Path, PathBuf};
use std::process::Command;

/// `kubectl ARGS` with `KUBECONFIG=list` (no --kubeconfig), from `cwd`.
fn kubectl_env(list: &str, cwd: &Path, args: &[&str]) -> (i32, String) {
    let out = Command::new("kubectl")
        .args(args)
        .env("KUBECONFIG", list)
        .env("HOME", cwd)
        .env("KUBECACHEDIR", cwd.join("cache"))
        .current_dir(cwd)
        .output()
        .expect("kubectl is installed at /usr/bin/kubectl");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// `node-attach -v token list` with `KUBECONFIG=list` or `--kubeconfig`, from `cwd`.
fn token_list(list: Option<&str>, flag: Option<&Path>, cwd: &Path) -> Run {
    let mut args = vec!["-v".to_owned(), "token".to_owned(), "list".to_owned()];
    if let Some(f) = flag {
        args.push("--kubeconfig".into());
        args.push(f.display().to_string());
    }
    let mut cmd = Command::new(binary());
    cmd.args(&args).env_clear().current_dir(cwd);
    if let Some(l) = list {
        cmd.env("KUBECONFIG", l);
    }
    let out = cmd.output().expect("node-attach");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        elapsed: std::time::Duration::ZERO,
        args,
    }
}

struct Files {
    _dir: tempfile::TempDir,
    root: PathBuf,
    server: String,
}

/// `a/pki/{ca,admin}.crt`, `a/pki/admin.key`; `a/config` naming them relatively (cluster `test`,
/// user `admin`, context `admin@test`, no current-context); `b/config` with the same names
/// pointing at a decoy server and a bogus token, current-context `admin@test`.
fn files(cp: &TestControlPlane) -> Files {
    let dir = tempfile::tempdir().expect("tmp");
    let root = dir.path().to_owned();
    let admin = cp.issue_client("kubernetes-admin", &["system:masters"]);
    std::fs::create_dir_all(root.join("a/pki")).expect("mkdir");
    std::fs::create_dir_all(root.join("b")).expect("mkdir");
    std::fs::create_dir_all(root.join("elsewhere")).expect("mkdir");
    write(&root, "a/pki/ca.crt", &cp.ca_pem());
    write(&root, "a/pki/admin.crt", &admin.cert_pem);
    write(&root, "a/pki/admin.key", &admin.key_pem);
    write(
        &root,
        "a/config",
        &format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {}\n    certificate-authority: pki/ca.crt\nusers:\n- name: admin\n  user:\n    client-certificate: pki/admin.crt\n    client-key: pki/admin.key\ncontexts:\n- name: admin@test\n  context: {{cluster: test, user: admin}}\n",
            cp.url()
        ),
    );
    write(
        &root,
        "b/config",
        "apiVersion: v1\nkind: Config\ncurrent-context: admin@test\nclusters:\n- name: test\n  cluster:\n    server: https://127.0.0.1:9\n    certificate-authority: ../a/pki/ca.crt\nusers:\n- name: admin\n  user:\n    token: decoy-token\ncontexts:\n- name: admin@test\n  context: {cluster: test, user: admin}\n",
    );
    Files {
        _dir: dir,
        server: cp.url().to_owned(),
        root,
    }
}

#[test]
fn relative_files_and_a_merged_kubeconfig_list_are_read_as_kubectl_reads_them() {
    let cp = control_plane();
    let f = files(&cp);
    let (a, b) = (f.root.join("a/config"), f.root.join("b/config"));
    let cwd = f.root.join("elsewhere");
    let list = format!("{}:{}", a.display(), b.display());

    // a first: a's cluster and user, b's current-context. kubectl agrees and reaches the server.
    let (code, out) = kubectl_env(
        &list,
        &cwd,
        &[
            "config",
            "view",
            "--minify",
            "-o",
            "jsonpath={.clusters[0].cluster.server} {.users[0].name}",
        ],
    );
    assert_eq!(code, 0, "{out}");
    assert_eq!(out.trim(), format!("{} admin", f.server));
    let (code, out) = kubectl_env(&list, &cwd, &["get", "secrets", "-n", "kube-system"]);
    assert_eq!(code, 0, "kubectl: {out}");
    let run = token_list(Some(&list), None, &cwd);
    run.expect_code(0)
        .expect_output("abcdef")
        .expect_output(&format!(
            "context \"admin@test\" (cluster \"test\" at {}",
            f.server
        ))
        .expect_output("with a client certificate");

    // b first: the decoy's cluster and token win; kubectl and node-attach both fail on it.
    let reversed = format!("{}:{}", b.display(), a.display());
    let (code, out) = kubectl_env(
        &reversed,
        &cwd,
        &[
            "get",
            "secrets",
            "-n",
            "kube-system",
            "--request-timeout",
            "5s",
        ],
    );
    assert_ne!(code, 0, "kubectl used the decoy: {out}");
    let run = token_list(Some(&reversed), None, &cwd);
    assert_ne!(run.code, 0, "{}", run.all());
    run.expect_output("https://127.0.0.1:9");

    // One file alone, by --kubeconfig, relative files resolved against its own directory.
    let (code, _, out) = kubectl(&a, &cwd, &["get", "secrets", "-n", "kube-system"]);
    assert_ne!(code, 0, "kubectl needs a current-context here: {out}");
    let run = token_list(None, Some(&a), &cwd);
    run.expect_code(2).expect_output("sets no current-context");
}

#[test]
fn insecure_skip_tls_verify_is_refused_and_a_ca_given_twice_by_both() {
    let cp = control_plane();
    let f = files(&cp);
    let cwd = f.root.join("elsewhere");
    let a = std::fs::read_to_string(f.root.join("a/config")).expect("a");
    let with_context = format!("{a}current-context: admin@test\n");
    let insecure = write(
        &f.root,
        "a/insecure",
        &with_context.replace(
            "    certificate-authority: pki/ca.crt\n",
            "    insecure-skip-tls-verify: true\n",
        ),
    );
    let (code, _, out) = kubectl(&insecure, &cwd, &["get", "secrets", "-n", "kube-system"]);
    assert_eq!(code, 0, "kubectl accepts insecure-skip-tls-verify: {out}");
    token_list(None, Some(&insecure), &cwd)
        .expect_code(2)
        .expect_output(
        "sets insecure-skip-tls-verify: node-attach never talks to an API server it cannot verify",
    );

    let twice = write(
        &f.root,
        "a/twice",
        &with_context.replace(
            "    certificate-authority: pki/ca.crt\n",
            &format!(
                "    certificate-authority: pki/ca.crt\n    certificate-authority-data: {}\n",
                base64_of(&cp.ca_pem())
            ),
        ),
    );
    let (code, _, out) = kubectl(&twice, &cwd, &["get", "secrets", "-n", "kube-system"]);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("both specified"), "{out}");
    token_list(None, Some(&twice), &cwd)
        .expect_code(2)
        .expect_output("certificate-authority-data and certificate-authority are both specified");

    // The fixed file works for both, from any directory.
    let fixed = write(&f.root, "a/fixed", &with_context);
    let (code, _, out) = kubectl(&fixed, &cwd, &["get", "secrets", "-n", "kube-system"]);
    assert_eq!(code, 0, "{out}");
    token_list(None, Some(&fixed), &cwd).expect_code(0);
}

fn base64_of(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(text)
}
