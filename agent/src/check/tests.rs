//! `check` on the shipped userdata templates (filled in as the e2e fills them) and on broken
//! and hostile variants.

use super::*;
use std::io::Write;

const PIN: &str = "sha256:6f9a1b0cbe4f1d2e3a4b5c6d7e8f90112233445566778899aabbccddeeff0011";

fn template(name: &str) -> String {
    let path = format!(
        "{}/../packaging/userdata/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path).expect("template")
}

fn fill(text: &str, labels: &str, extra: &str) -> String {
    text.replace("@BASE_URL@", "https://files.example")
        .replace("@OPENAPI_TOKEN@", "tok-0123456789abcdef")
        .replace("@TOKEN@", "abcdef.0123456789abcdef")
        .replace("@ENDPOINT@", "10.0.0.10:6443")
        .replace("@CLUSTER_DNS@", "10.96.0.10")
        .replace("@CA_PIN@", PIN)
        .replace("@DOCKER_VERSION@", "20.10.24")
        .replace("@LABELS@", labels)
        .replace("@EXTRA_FLAGS@", extra)
}

fn ids(r: &Report) -> Vec<&'static str> {
    r.findings.iter().map(|f| f.id).collect()
}

fn plan_text(r: &Report) -> String {
    r.invocations[0].plan.as_ref().expect("a plan").text()
}

#[test]
fn every_shipped_template_passes_once_filled_in() {
    for name in [
        "manual-add.sh",
        "manual-add.yaml",
        "scale-out.sh",
        "scale-out.yaml",
        "autoscaler.sh",
        "autoscaler.yaml",
        "multipart.txt",
    ] {
        let r = check(fill(&template(name), "workload_type=cpu", "").as_bytes());
        assert_eq!(r.invocations.len(), 1, "{name}: {r:?}");
        assert_eq!(r.code(), None, "{name}: {}", r.text());
        let plan = plan_text(&r);
        assert!(plan.contains("discover"), "{name}: {plan}");
        if name.starts_with("scale-out") {
            assert!(
                plan.contains("10.0.0.10:6443") && plan.contains(PIN),
                "{name}: {plan}"
            );
            assert!(plan.contains("configure docker 20.10.24"), "{name}: {plan}");
            assert!(
                plan.contains("token abcdef.<redacted>") || plan.contains("token abcdef."),
                "{name}: {plan}"
            );
        } else {
            assert!(plan.contains("fetch the cluster values"), "{name}: {plan}");
        }
        if name.starts_with("autoscaler") {
            assert!(plan.contains("labels workload_type=cpu"), "{name}: {plan}");
        }
    }
}

#[test]
fn a_token_in_argv_is_flagged_and_redacted() {
    let script = "#!/bin/bash\ncurl -fsSL https://h/attach.sh | bash -s -- --token abcdef.0123456789abcdef --endpoint 10.0.0.1:6443 --discovery-token-ca-cert-hash SHA\n".replace("SHA", PIN);
    let r = check(script.as_bytes());
    assert_eq!(ids(&r), ["secret-in-argv"], "{}", r.text());
    assert_eq!(r.code(), Some(Code::CheckFindings));
    assert!(!r.text().contains("0123456789abcdef"), "{}", r.text());
    assert!(
        r.invocations[0].argv.contains(&"<redacted>".to_owned()) || r.text().contains("redacted")
    );
    let json = serde_json::to_string(&r).expect("json");
    assert!(!json.contains("0123456789abcdef"), "{json}");
    let fix = r.findings[0].fix.as_deref().unwrap_or("");
    assert!(
        fix.contains("NODE_ATTACH_TOKEN") && fix.contains("--config"),
        "{fix}"
    );
    // The openapi token, in the --flag=value form.
    let r = check(b"#!/bin/sh\nnode-attach join --openapi-token=tok-0123456789\n");
    assert_eq!(ids(&r), ["secret-in-argv"], "{}", r.text());
}

#[test]
fn restricted_labels_are_named() {
    let text = fill(
        &template("autoscaler.yaml"),
        "k8s.io/cluster-autoscaler=true,node-role.kubernetes.io/worker=,kubernetes.io/arch=amd64,team=a",
        "",
    );
    let r = check(text.as_bytes());
    let restricted: Vec<&str> = r
        .findings
        .iter()
        .filter(|f| f.id == "restricted-label")
        .map(|f| f.message.as_str())
        .collect();
    assert_eq!(restricted.len(), 2, "{}", r.text());
    assert!(restricted[0].starts_with("label k8s.io/cluster-autoscaler"));
    assert!(restricted[1].contains("a role only the control plane grants"));
    let plan = plan_text(&r);
    assert!(
        plan.contains("labels kubernetes.io/arch=amd64,team=a"),
        "{plan}"
    );
    assert!(plan.contains("for the control plane to apply: k8s.io/cluster-autoscaler=true,node-role.kubernetes.io/worker="), "{plan}");
}

#[test]
fn flags_are_validated_as_join_validates_them() {
    let cases = [
        ("--ess maybe", "join would refuse its command line"),
        ("--labels 'bad key=x'", "--labels"),
        (
            "--runtime containerd --docker-version 20.10",
            "conflicts with --docker-version",
        ),
        ("--no-such-flag", "--no-such-flag"),
        ("--help", "the node would not join"),
        ("--values-url http://values.example/{token}", "--values-url"),
    ];
    for (flags, want) in cases {
        let text = fill(&template("manual-add.sh"), "", flags);
        let r = check(text.as_bytes());
        assert_eq!(r.code(), Some(Code::CheckInvalid), "{flags}: {}", r.text());
        let f = r
            .findings
            .iter()
            .find(|f| f.id == "flags")
            .expect("a flags finding");
        assert!(f.message.contains(want), "{flags}: {}", f.message);
        assert!(r.invocations[0].plan.is_none());
    }
    let text = fill(
        &template("scale-out.sh"),
        "",
        "--node-name-mode instanceid --metadata none",
    );
    let r = check(text.as_bytes());
    assert!(
        r.findings
            .iter()
            .any(|f| f.message.contains("needs the instance id")),
        "{}",
        r.text()
    );
    // Without an openapi token, the scale-out values are required, exactly as join wants them.
    let r = check(b"#!/bin/sh\nNODE_ATTACH_TOKEN=abcdef.0123456789abcdef node-attach join --endpoint 10.0.0.1:6443\n");
    let f = r.findings.iter().find(|f| f.id == "flags").expect("no pin");
    assert!(
        f.message.contains("discovery.no-pins") && f.message.contains("exit 28"),
        "{}",
        f.message
    );
    // A malformed token in the environment, too.
    let r = check(b"#!/bin/sh\nexport NODE_ATTACH_TOKEN=short\nnode-attach join\n");
    assert!(
        r.findings.iter().any(|f| f.message.contains("--token")),
        "{}",
        r.text()
    );
}

#[test]
fn values_known_only_at_boot_are_listed_as_unknown() {
    let text = "#!/bin/bash\nTOKEN=$(cat /run/token)\ncurl -fsSL https://h/attach.sh | NODE_ATTACH_TOKEN=\"$TOKEN\" bash -s -- --endpoint \"$EP\" --discovery-token-ca-cert-hash PIN --node-name \"$(hostname -s)\" $EXTRA\n".replace("PIN", PIN);
    let r = check(text.as_bytes());
    assert_eq!(r.code(), None, "{}", r.text());
    let plan = r.invocations[0].plan.as_ref().expect("plan");
    let unknown = plan.unknown.join("\n");
    for want in [
        "--endpoint $EP",
        "--node-name $(hostname -s)",
        "$EXTRA",
        "NODE_ATTACH_TOKEN $TOKEN",
        "the bootstrap token",
    ] {
        assert!(unknown.contains(want), "{want}: {unknown}");
    }
    assert!(
        !plan.text().contains("unknown.invalid"),
        "no placeholder shown: {}",
        plan.text()
    );
    // A config file the userdata does not write (baked into the image) is unknown too.
    let r = check(b"#cloud-config\nruncmd:\n  - [node-attach, join, --config, /etc/node-attach/config.yaml]\n");
    let plan = r.invocations[0].plan.as_ref();
    assert!(
        plan.is_none() || plan.is_some_and(|p| p.unknown.iter().any(|u| u.contains("--config"))),
        "{}",
        r.text()
    );
}

#[test]
fn a_config_file_others_can_read_is_refused_as_join_refuses_it() {
    let text = template("manual-add.yaml").replace("    permissions: \"0600\"\n", "");
    let r = check(fill(&text, "", "").as_bytes());
    let f = r
        .findings
        .iter()
        .find(|f| f.id == "config-mode")
        .expect("mode finding");
    assert!(f.message.contains("0644"), "{}", f.message);
    assert_eq!(r.code(), Some(Code::CheckInvalid));
    // A bad key in the file is join's own error.
    let text = template("manual-add.yaml").replace("openapi-token:", "openapi-tokn:");
    let r = check(fill(&text, "", "").as_bytes());
    assert!(
        r.findings
            .iter()
            .any(|f| f.message.contains("openapi-tokn")),
        "{}",
        r.text()
    );
}

#[test]
fn gzip_parts_and_gzip_userdata() {
    let gz = |data: &[u8]| {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).expect("gzip");
        e.finish().expect("gzip")
    };
    let whole = gz(fill(&template("scale-out.sh"), "", "").as_bytes());
    let r = check(&whole);
    assert_eq!(r.forms, ["gzip", "script"]);
    assert_eq!(r.code(), None, "{}", r.text());
    use base64::Engine;
    let part = base64::engine::general_purpose::STANDARD
        .encode(gz(b"#!/bin/bash\nnode-attach join --config /etc/node-attach/config.yaml --labels node-role.kubernetes.io/gpu=\n"));
    let msg = fill(&template("multipart.txt"), "", "")
        .replace(
            "Content-Type: text/x-shellscript; charset=\"us-ascii\"\nMIME-Version: 1.0\n",
            "Content-Type: application/x-gzip\nContent-Transfer-Encoding: base64\n",
        )
        .replace(
            "#!/bin/bash\n# Then node-attach joins, reading the 0600 config written above.\nset -euo pipefail\ncurl -fsSL --retry 5 --retry-connrefused https://files.example/attach.sh | bash -s -- --config /etc/node-attach/config.yaml \n",
            &format!("{part}\n"),
        );
    let r = check(msg.as_bytes());
    assert_eq!(r.invocations.len(), 1, "{}", r.text());
    assert!(
        r.invocations[0].at.starts_with("part 2 (gzip)"),
        "{}",
        r.invocations[0].at
    );
    assert_eq!(ids(&r), ["restricted-label"], "{}", r.text());
}

#[test]
fn malformed_and_hostile_inputs_are_findings_not_crashes() {
    let mut bomb = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    for _ in 0..(8 * 1024) {
        bomb.write_all(&[b' '; 1024]).expect("bomb");
    }
    let bomb = bomb.finish().expect("bomb");
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (bomb, "inflates past"),
        (b"Content-Type: multipart/mixed; boundary=\"B\"\n\n--B\nContent-Type: text/x-shellscript\n\n#!/bin/sh\nnode-attach join\n".to_vec(), "closing boundary"),
        (b"Content-Type: multipart/mixed\n\n--B\n\n".to_vec(), "without a boundary"),
        (b"#!/bin/bash\nnode-attach join --labels 'a=b\n".to_vec(), "unterminated"),
        (b"#cloud-config\nruncmd: [\n".to_vec(), "cannot read this cloud-config"),
        (b"#!/bin/bash\necho hello\n".to_vec(), "no node-attach join"),
        (vec![0xff; 100], "not UTF-8"),
    ];
    for (input, want) in cases {
        let r = check(&input);
        assert_eq!(r.code(), Some(Code::CheckInvalid), "{want}: {}", r.text());
        assert!(
            r.findings.iter().any(|f| f.message.contains(want)),
            "{want}: {}",
            r.text()
        );
    }
    // Deep `sh -c` nesting stops, and a huge script is bounded by the shell lexer.
    let mut nested = "node-attach join".to_owned();
    for _ in 0..8 {
        nested = format!("sh -c {}", shell_quote(&nested));
    }
    let r = check(format!("#!/bin/sh\n{nested}\n").as_bytes());
    assert!(r.invocations.is_empty());
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

#[test]
fn the_command_exits_with_the_documented_codes() {
    let dir = tempfile::tempdir().expect("tmp");
    let write = |name: &str, bytes: &[u8]| {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).expect("write");
        p.to_string_lossy().into_owned()
    };
    let clean = write(
        "clean.sh",
        fill(&template("manual-add.sh"), "", "").as_bytes(),
    );
    let warned = write(
        "warned.sh",
        b"#!/bin/sh\nnode-attach join --openapi-token tok-0123456789\n",
    );
    let invalid = write("invalid.sh", b"#!/bin/sh\nnode-attach join --ess maybe\n");
    let huge = write("huge.sh", &vec![b'#'; userdata::MAX_INPUT as usize + 1]);
    for (args, want) in [
        (vec!["check", clean.as_str()], 0),
        (vec!["check", "--json", clean.as_str()], 0),
        (
            vec!["check", warned.as_str()],
            Code::CheckFindings.exit_code(),
        ),
        (
            vec!["check", invalid.as_str()],
            Code::CheckInvalid.exit_code(),
        ),
        (vec!["check", huge.as_str()], Code::CheckInvalid.exit_code()),
        (
            vec!["check", "/nonexistent/userdata"],
            Code::Usage.exit_code(),
        ),
    ] {
        let argv = std::iter::once("node-attach").chain(args.iter().copied());
        assert_eq!(crate::cli::main_with_args(argv), want, "{args:?}");
    }
}
