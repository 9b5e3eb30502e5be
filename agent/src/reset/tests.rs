//! reset through the effect doubles: no host is touched.

use super::*;
use crate::effects::containers::RecordingContainers;
use crate::effects::fs::Root;
use crate::effects::network::{Family, RecordingNetwork};

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
        preexisting: Vec::new(),
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
            preexisting: Vec::new(),
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

/// Cleanup against a recording network: its calls, and the iptables step.
async fn clean_iptables(network: RecordingNetwork) -> (Vec<String>, ResetStep) {
    let tmp = tempfile::tempdir().expect("tmp");
    let calls = network.calls.clone();
    let fx = effects(tmp.path(), RecordingContainers::default(), network);
    let opts = ResetOptions::default();
    let mut ctx = Ctx::new(&fx, &opts);
    let keep = cleanup::Keep {
        restored: Vec::new(),
        journaled: Vec::new(),
        preexisting: Vec::new(),
    };
    cleanup::run(&mut ctx, &keep).await;
    let step = ctx
        .steps
        .iter()
        .find(|s| s.kind == "iptables")
        .expect("step");
    let calls = calls.lock().expect("calls").clone();
    (calls, step.clone())
}

const SMALL_DUMP: &str = "*nat\n:PREROUTING ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\n:DOCKER - [0:0]\n\
-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
-A PREROUTING -j DOCKER\nCOMMIT\n*filter\n:CNI-FORWARD - [0:0]\n-A FORWARD -j CNI-FORWARD\nCOMMIT\n";

#[tokio::test]
async fn owned_chains_go_with_the_jumps_into_them_in_one_batch_and_nothing_else() {
    let network = RecordingNetwork {
        dump_v4: Some(SMALL_DUMP.into()),
        links: vec!["cni0".into(), "eth0".into()],
        ..Default::default()
    };
    let (calls, step) = clean_iptables(network).await;
    assert_eq!(
        calls,
        [
            "iptables-restore --noflush\n\
             *nat\n\
             -D PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
             -F KUBE-SERVICES\n-X KUBE-SERVICES\nCOMMIT\n\
             *filter\n-D FORWARD -j CNI-FORWARD\n-F CNI-FORWARD\n-X CNI-FORWARD\nCOMMIT\n",
            "ip link delete cni0",
        ]
    );
    assert_eq!(step.outcome, Outcome::Done);
    assert_eq!(
        step.target,
        "iptables: 2 chains (KUBE-SERVICES, CNI-FORWARD)"
    );
    assert_eq!(
        step.detail,
        "and 2 jumps into them from other chains, in one iptables-restore batch"
    );
}

/// [`SMALL_DUMP`] once its jumps are gone.
const SMALL_DUMP_UNLINKED: &str = "*nat\n:PREROUTING ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\n\
:DOCKER - [0:0]\n-A PREROUTING -j DOCKER\nCOMMIT\n*filter\n:CNI-FORWARD - [0:0]\nCOMMIT\n";

/// The jumps of [`SMALL_DUMP`] removed one at a time.
const SMALL_DUMP_JUMPS: [&str; 2] = [
    "iptables -t nat -D PREROUTING -m comment --comment kubernetes service portals -j KUBE-SERVICES",
    "iptables -t filter -D FORWARD -j CNI-FORWARD",
];

/// A network serving [`SMALL_DUMP`], then `later`, whose first `failing` batches fail.
fn small_network(later: &[&str], failing: usize) -> RecordingNetwork {
    RecordingNetwork {
        dump_v4: Some(SMALL_DUMP.into()),
        later_v4: later.iter().map(|d| d.to_string()).collect(),
        failing_restores: failing.into(),
        ..Default::default()
    }
}

/// An iptables-restore without --noflush: every batch fails, and the work is done one command
/// at a time, on the rules read again; the step says so.
#[tokio::test]
async fn failed_batches_fall_back_to_one_command_at_a_time() {
    let network = small_network(&[SMALL_DUMP, SMALL_DUMP_UNLINKED], usize::MAX);
    let (calls, step) = clean_iptables(network).await;
    assert!(
        calls[0].starts_with("iptables-restore --noflush\n*nat\n-D "),
        "{calls:?}"
    );
    assert_eq!(calls[1..3], SMALL_DUMP_JUMPS);
    assert_eq!(
        calls[3],
        "iptables-restore --noflush\n*nat\n-F KUBE-SERVICES\n-X KUBE-SERVICES\nCOMMIT\n\
         *filter\n-F CNI-FORWARD\n-X CNI-FORWARD\nCOMMIT\n"
    );
    assert_eq!(
        calls[4..],
        [
            "iptables -t nat -F KUBE-SERVICES",
            "iptables -t filter -F CNI-FORWARD",
            "iptables -t nat -X KUBE-SERVICES",
            "iptables -t filter -X CNI-FORWARD",
        ]
    );
    assert_eq!(step.outcome, Outcome::Done);
    let why = "the iptables-restore batch failed (iptables-restore --noflush: exit status 2: \
               unrecognized option '--noflush'), so one command at a time (a second batch, of \
               the chains alone, failed too)";
    assert!(step.detail.ends_with(why), "{}", step.detail);
}

/// A batch that fails once (a rule changed since the dump): the jumps go one at a time, the
/// chains in a second batch.
#[tokio::test]
async fn after_a_failed_batch_the_chains_go_in_a_second_one() {
    let network = small_network(&[SMALL_DUMP, SMALL_DUMP_UNLINKED], 1);
    let (calls, step) = clean_iptables(network).await;
    assert_eq!(calls.len(), 4, "{calls:?}");
    assert_eq!(calls[1..3], SMALL_DUMP_JUMPS);
    assert!(calls[3].starts_with("iptables-restore --noflush\n*nat\n-F KUBE-SERVICES\n"));
    assert_eq!(step.outcome, Outcome::Done);
    assert!(
        step.detail
            .ends_with("the jumps went one command at a time and the chains in a second batch"),
        "{}",
        step.detail
    );
}

/// A jump that will not go (its rule does not read back as printed) holds back only the chain
/// it jumps to: flushed, kept, and named in a failed step.
#[tokio::test]
async fn a_jump_that_will_not_go_keeps_only_its_chain() {
    let forward_stays = SMALL_DUMP_UNLINKED.replace(
        ":CNI-FORWARD - [0:0]\n",
        ":CNI-FORWARD - [0:0]\n-A FORWARD -j CNI-FORWARD\n",
    );
    let network = small_network(&[SMALL_DUMP, &forward_stays], 1);
    let (calls, step) = clean_iptables(network).await;
    assert_eq!(
        calls[3],
        "iptables-restore --noflush\n*nat\n-F KUBE-SERVICES\n-X KUBE-SERVICES\nCOMMIT\n\
         *filter\n-F CNI-FORWARD\nCOMMIT\n"
    );
    assert_eq!(step.outcome, Outcome::Failed);
    assert!(
        step.detail
            .ends_with("could not delete CNI-FORWARD (a jump into it would not go)"),
        "{}",
        step.detail
    );
}

#[tokio::test]
async fn a_dry_run_names_the_chains_and_runs_nothing() {
    let tmp = tempfile::tempdir().expect("tmp");
    let network = RecordingNetwork {
        dump_v4: Some(SMALL_DUMP.into()),
        ..Default::default()
    };
    let calls = network.calls.clone();
    let fx = effects(tmp.path(), RecordingContainers::default(), network);
    let opts = ResetOptions {
        dry_run: true,
        ..Default::default()
    };
    let mut ctx = Ctx::new(&fx, &opts);
    crate::reset::iptables::clean_family(&mut ctx, Family::V4, SMALL_DUMP);
    assert!(calls.lock().expect("calls").is_empty());
    let step = ctx.steps.last().expect("step");
    assert_eq!(step.outcome, Outcome::WouldDo);
    assert_eq!(
        step.target,
        "iptables: 2 chains (KUBE-SERVICES, CNI-FORWARD)"
    );
}

#[test]
fn iptables_save_rules_split_as_iptables_quotes_them() {
    use crate::reset::iptables::save_words;
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

/// An air-gap import (a local archive into docker) journals exactly the references it added;
/// a second import of what is there changes nothing; an archive that lacks what it names
/// fails; reset removes only what the import added.
#[tokio::test]
async fn an_image_import_is_journaled_with_what_it_added_and_reset_removes_only_that() {
    use crate::apply::journal::Change;
    use crate::apply::{Applier, Outcome as Applied};
    use crate::effects::images::RecordingImages;
    use crate::sources::values::RuntimeKind;
    let tmp = tempfile::tempdir().expect("tmp");
    let archives = tempfile::tempdir().expect("archives");
    let images = std::sync::Arc::new(RecordingImages::default());
    images
        .held
        .lock()
        .expect("held")
        .push("registry.example/app:1".into());
    let fx = Effects {
        images: Box::new(images.clone()),
        ..effects(
            tmp.path(),
            RecordingContainers::default(),
            RecordingNetwork::default(),
        )
    };
    let archive = archives.path().join("pause.tar");
    std::fs::write(&archive, "registry.example/app:1\nk8s.gcr.io/pause:3.2\n").expect("archive");
    let empty = archives.path().join("empty.tar");
    std::fs::write(&empty, "").expect("archive");
    let pause = vec!["k8s.gcr.io/pause:3.2".to_owned()];
    let mut a = Applier::apply(&fx, Journal::open(&fx.root).expect("journal"));
    a.enter("runtime").expect("enter");
    let import = |a: &mut Applier<'_>, archive: &Path, refs: &[String]| {
        a.import_images(RuntimeKind::Docker, Some(archive), "an archive", refs)
    };
    assert_eq!(
        import(&mut a, &archive, &pause).expect("import"),
        Applied::Changed
    );
    assert_eq!(
        import(&mut a, &archive, &pause).expect("again"),
        Applied::Unchanged
    );
    let err = import(&mut a, &empty, &["registry.example/app:2".to_owned()])
        .expect_err("the archive lacks it");
    assert!(
        err.to_string()
            .contains("does not hold registry.example/app:2"),
        "{err}"
    );
    a.finish("done").expect("finish");
    let journal = a.into_journal().expect("journal");
    let added: Vec<&Change> = journal
        .records()
        .iter()
        .filter_map(|r| r.change.as_ref())
        .filter(|c| matches!(c, Change::ImagesImported { .. }))
        .collect();
    assert_eq!(
        added,
        [&Change::ImagesImported {
            runtime: "docker".into(),
            refs: pause.clone(),
        }]
    );
    drop(journal);
    let report = run(&fx, &ResetOptions::default()).await.expect("reset");
    assert_eq!(report.problems, 0, "{:?}", report.steps);
    assert_eq!(
        *images.held.lock().expect("held"),
        ["registry.example/app:1".to_owned()]
    );
    let removals: Vec<String> = images
        .calls
        .lock()
        .expect("calls")
        .iter()
        .filter(|c| c.starts_with("remove"))
        .cloned()
        .collect();
    assert_eq!(removals, ["remove Docker k8s.gcr.io/pause:3.2"]);
}

/// The runtime's packages installed at the version asked for, journaled with every package the
/// install added (a dependency it pulled in too, not one that was there); a rerun changes
/// nothing; reset removes exactly those, or keeps them with --keep-packages.
#[tokio::test]
async fn runtime_packages_are_journaled_with_what_they_added_and_reset_removes_only_that() {
    use crate::apply::{Applier, Outcome as Applied};
    use crate::effects::{Packages, RecordingPackages};
    for keep_packages in [false, true] {
        let tmp = tempfile::tempdir().expect("tmp");
        let pm = std::sync::Arc::new(RecordingPackages::default());
        pm.installed
            .lock()
            .expect("installed")
            .push(("runc".into(), "1.1.5".into()));
        pm.depends.lock().expect("depends").push((
            "containerd".into(),
            vec!["runc".into(), "libseccomp2".into()],
        ));
        let fx = Effects {
            packages: Some(Box::new(pm.clone())),
            ..effects(
                tmp.path(),
                RecordingContainers::default(),
                RecordingNetwork::default(),
            )
        };
        for outcome in [Applied::Changed, Applied::Unchanged] {
            let mut a = Applier::apply(&fx, Journal::open(&fx.root).expect("journal"));
            a.enter("runtime").expect("enter");
            crate::join::runtime::install_packages(&mut a, &["containerd"], Some("1.6.20~ds1"))
                .expect("install");
            assert_eq!(a.steps[0].outcome, outcome, "{:?}", a.steps);
            a.finish("done").expect("finish");
        }
        assert_eq!(
            pm.installed_version("containerd").as_deref(),
            Some("1.6.20~ds1")
        );
        let opts = ResetOptions {
            keep_packages,
            ..ResetOptions::default()
        };
        let report = run(&fx, &opts).await.expect("reset");
        assert_eq!(report.problems, 0, "{:?}", report.steps);
        let mut left: Vec<String> = pm
            .installed
            .lock()
            .expect("installed")
            .iter()
            .map(|(p, _)| p.clone())
            .collect();
        left.sort();
        let removals: Vec<String> = pm
            .calls
            .lock()
            .expect("calls")
            .iter()
            .filter(|c| c.starts_with("remove"))
            .cloned()
            .collect();
        if keep_packages {
            assert_eq!(left, ["containerd", "libseccomp2", "runc"]);
            assert!(removals.is_empty(), "{removals:?}");
        } else {
            assert_eq!(left, ["runc"]);
            assert_eq!(removals, ["remove containerd libseccomp2"]);
        }
    }
}

/// Swap join turned off comes back at reset, by name: a zram device or a swap file that is not
/// in /etc/fstab too (`swapon -a` would leave those off).
#[tokio::test]
async fn swap_join_turned_off_is_turned_back_on_by_name() {
    use crate::apply::Applier;
    use crate::effects::kernel::RecordingKernel;
    let tmp = tempfile::tempdir().expect("tmp");
    let kernel = RecordingKernel::default();
    let calls = kernel.calls.clone();
    let fx = Effects {
        kernel: Box::new(kernel),
        ..effects(
            tmp.path(),
            RecordingContainers::default(),
            RecordingNetwork::default(),
        )
    };
    let mut a = Applier::apply(&fx, Journal::open(&fx.root).expect("journal"));
    a.enter("host").expect("enter");
    a.swap_off(vec!["/dev/zram0".into(), "/swapfile".into()])
        .expect("swap off");
    a.finish("done").expect("finish");
    drop(a);
    let report = run(&fx, &ResetOptions::default()).await.expect("reset");
    assert_eq!(report.problems, 0, "{:?}", report.steps);
    let calls = calls.lock().expect("calls").clone();
    assert_eq!(calls, ["swapoff", "swapon /dev/zram0 /swapfile"]);
}

/// A kubelet in a crash loop waits to be restarted as "activating (auto-restart)", which
/// `systemctl is-active` does not count as active: enabled, it is stopped before the cleanup
/// all the same, or it comes back within seconds and remakes what reset removes.
#[tokio::test]
async fn an_enabled_kubelet_between_two_crashes_is_stopped_first() {
    use crate::effects::{RecordingSystemd, Systemd};
    let tmp = tempfile::tempdir().expect("tmp");
    let systemd = RecordingSystemd::default();
    systemd.enable("kubelet.service").expect("enable");
    let calls = systemd.calls.clone();
    let fx = Effects {
        systemd: Box::new(systemd),
        ..effects(
            tmp.path(),
            RecordingContainers::default(),
            RecordingNetwork::default(),
        )
    };
    let opts = ResetOptions::default();
    let mut ctx = Ctx::new(&fx, &opts);
    let keep = cleanup::Keep {
        restored: Vec::new(),
        journaled: Vec::new(),
        preexisting: Vec::new(),
    };
    cleanup::run(&mut ctx, &keep).await;
    let calls = calls.lock().expect("calls").clone();
    assert_eq!(calls, ["enable kubelet.service", "stop kubelet.service"]);
}

/// What the CNI directories held before join (another tool's network, podman's here) is kept;
/// what came after (the cluster's CNI plugin's) goes. A rerun of join records nothing new.
#[tokio::test]
async fn cni_files_that_predate_join_are_kept() {
    use crate::apply::Applier;
    let tmp = tempfile::tempdir().expect("tmp");
    let put = |p: &str, text: &str| {
        let real = tmp.path().join(p);
        std::fs::create_dir_all(real.parent().expect("parent")).expect("dir");
        std::fs::write(real, text).expect("file");
    };
    put("etc/cni/net.d/87-podman-bridge.conflist", "podman");
    put("var/lib/cni/networks/podman/10.88.0.2", "ctr");
    std::fs::create_dir_all(tmp.path().join("var/lib/cni/results")).expect("empty dir");
    let fx = effects(
        tmp.path(),
        RecordingContainers::default(),
        RecordingNetwork::default(),
    );
    for run in 0..2 {
        let mut a = Applier::apply(&fx, Journal::open(&fx.root).expect("journal"));
        a.enter("host").expect("enter");
        for dir in crate::model::paths::CNI_DIRS {
            a.record_found(Path::new(dir)).expect("found");
        }
        a.finish("done").expect("finish");
        // The cluster's CNI plugin writes, after the first run.
        if run == 0 {
            put("etc/cni/net.d/10-flannel.conflist", "flannel");
            put("var/lib/cni/networks/cbr0/10.244.1.2", "pod");
            put(
                "var/lib/cni/networks/podman/last_reserved_ip.0",
                "10.88.0.2",
            );
            put("var/lib/cni/results/cbr0-abc-eth0", "{}");
        }
    }
    let records = Journal::load(&fx.root).expect("load").expect("journal");
    let found = records
        .iter()
        .filter(|r| matches!(r.change, Some(journal::Change::Found { .. })))
        .count();
    assert_eq!(
        found, 2,
        "one record per directory, from the first run only"
    );
    let report = run(&fx, &ResetOptions::default()).await.expect("reset");
    assert_eq!(report.problems, 0, "{:?}", report.steps);
    let there = |p: &str| tmp.path().join(p).exists();
    assert!(there("etc/cni/net.d/87-podman-bridge.conflist"));
    assert!(there("var/lib/cni/networks/podman/10.88.0.2"));
    assert!(
        there("var/lib/cni/results"),
        "an empty directory that was there"
    );
    assert!(!there("etc/cni/net.d/10-flannel.conflist"));
    assert!(!there("var/lib/cni/networks/cbr0"));
    assert!(!there("var/lib/cni/networks/podman/last_reserved_ip.0"));
}
