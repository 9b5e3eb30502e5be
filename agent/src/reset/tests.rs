//! reset through the effect doubles: no host is touched.

use super::*;
use crate::effects::containers::RecordingContainers;
use crate::effects::fs::Root;
use crate::effects::network::RecordingNetwork;

fn effects(root: &Path, containers: RecordingContainers, network: RecordingNetwork) -> Effects {
    Effects {
        packages: None,
        containers: Box::new(containers),
        network: Box::new(network),
        images: Box::new(crate::effects::images::RecordingImages::default()),
        host: true,
        ..Effects::doubles(Root::new(root))
    }
}

fn socket(root: &Path, path: &str) -> std::os::unix::net::UnixListener {
    let real = root.join(path.trim_start_matches('/'));
    std::fs::create_dir_all(real.parent().expect("parent")).expect("dir");
    std::os::unix::net::UnixListener::bind(real).expect("socket")
}

#[tokio::test]
async fn pods_go_through_the_cri_sockets_that_are_there() {
    let tmp = tempfile::tempdir().expect("tmp");
    let _s = socket(tmp.path(), "/run/containerd/containerd.sock");
    std::fs::create_dir_all(tmp.path().join("var/lib/node-attach")).expect("state");
    std::fs::write(
        tmp.path().join("var/lib/node-attach/state.json"),
        r#"{"node_name": "n", "api_server": "https://a", "runtime": "docker", "cri_endpoint": "unix:///run/cri-dockerd.sock"}"#,
    )
    .expect("state.json");
    let containers = RecordingContainers {
        pods: 3,
        ..Default::default()
    };
    let fx = effects(tmp.path(), containers, RecordingNetwork::default());
    let opts = ResetOptions::default();
    let mut ctx = Ctx::new(&fx, &opts);
    let keep = cleanup::Keep {
        restored: Vec::new(),
        journaled: Vec::new(),
    };
    cleanup::run(&mut ctx, &keep).await;
    let cri: Vec<_> = ctx
        .steps
        .iter()
        .filter(|s| s.target.contains("through the CRI"))
        .collect();
    // The recorded cri-dockerd socket is not there: only containerd's is asked.
    assert_eq!(cri.len(), 1, "{:?}", ctx.steps);
    assert!(cri[0].target.contains("/run/containerd/containerd.sock"));
    assert_eq!(
        (cri[0].outcome, cri[0].detail.as_str()),
        (Outcome::Done, "3 pods")
    );
}

#[tokio::test]
async fn a_cri_that_refuses_is_a_failed_step_and_a_dry_run_asks_nothing() {
    let tmp = tempfile::tempdir().expect("tmp");
    let _s = socket(tmp.path(), "/run/cri-dockerd.sock");
    let containers = RecordingContainers {
        fail: true,
        ..Default::default()
    };
    let fx = effects(tmp.path(), containers, RecordingNetwork::default());
    for (dry_run, outcome) in [(false, Outcome::Failed), (true, Outcome::WouldDo)] {
        let opts = ResetOptions {
            dry_run,
            ..ResetOptions::default()
        };
        let mut ctx = Ctx::new(&fx, &opts);
        let keep = cleanup::Keep {
            restored: Vec::new(),
            journaled: Vec::new(),
        };
        cleanup::run(&mut ctx, &keep).await;
        let step = ctx
            .steps
            .iter()
            .find(|s| s.kind == "containers")
            .expect("step");
        assert_eq!(step.outcome, outcome, "{:?}", ctx.steps);
    }
}

#[tokio::test]
async fn owned_chains_go_with_the_jumps_into_them_and_nothing_else() {
    let dump = "*nat\n:PREROUTING ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\n:DOCKER - [0:0]\n\
-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
-A PREROUTING -j DOCKER\nCOMMIT\n*filter\n:CNI-FORWARD - [0:0]\n-A FORWARD -j CNI-FORWARD\nCOMMIT\n";
    let tmp = tempfile::tempdir().expect("tmp");
    let network = RecordingNetwork {
        dump_v4: Some(dump.into()),
        links: vec!["cni0".into(), "eth0".into()],
        ..Default::default()
    };
    let calls = network.calls.clone();
    let fx = effects(tmp.path(), RecordingContainers::default(), network);
    let opts = ResetOptions::default();
    let mut ctx = Ctx::new(&fx, &opts);
    let keep = cleanup::Keep {
        restored: Vec::new(),
        journaled: Vec::new(),
    };
    cleanup::run(&mut ctx, &keep).await;
    let calls = calls.lock().expect("calls").clone();
    assert_eq!(
        calls,
        [
            "iptables -t nat -D PREROUTING -m comment --comment kubernetes service portals -j KUBE-SERVICES",
            "iptables -t filter -D FORWARD -j CNI-FORWARD",
            "iptables -t nat -F KUBE-SERVICES",
            "iptables -t filter -F CNI-FORWARD",
            "iptables -t nat -X KUBE-SERVICES",
            "iptables -t filter -X CNI-FORWARD",
            "ip link delete cni0",
        ]
    );
}

#[test]
fn iptables_save_rules_split_as_iptables_quotes_them() {
    use cleanup::save_words;
    assert_eq!(
        save_words(
            r#"POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING"#
        ),
        [
            "POSTROUTING",
            "-m",
            "comment",
            "--comment",
            "kubernetes postrouting rules",
            "-j",
            "KUBE-POSTROUTING"
        ]
    );
    assert_eq!(
        save_words(r#"INPUT -m comment --comment "a \"b\" \\c" -j KUBE-FIREWALL"#),
        [
            "INPUT",
            "-m",
            "comment",
            "--comment",
            r#"a "b" \c"#,
            "-j",
            "KUBE-FIREWALL"
        ]
    );
    assert_eq!(
        save_words("FORWARD  -j CNI-FORWARD "),
        ["FORWARD", "-j", "CNI-FORWARD"]
    );
    assert_eq!(
        save_words(r#"X --comment "" -j Y"#),
        ["X", "--comment", "", "-j", "Y"]
    );
}
