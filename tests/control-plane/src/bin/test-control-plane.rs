//! Runs the test control plane as a process (for `make demo`, the end-to-end test and manual
//! experiments with kubectl). It writes what clients need into `--state-dir` and serves until it
//! receives SIGTERM or SIGINT, or its stdin closes when `--exit-on-stdin-eof` is given.

use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use test_control_plane::{Options, TestControlPlane, TokenSpec, ValuesEntry};

fn usage() -> ! {
    eprintln!(
        "usage: test-control-plane --state-dir DIR [--listen ADDR:PORT] [--advertise HOST]... \
         [--token ID.SECRET]... [--values OPENAPI_TOKEN=FILE.json]... [--signing-delay MS] \
         [--kubernetes-version V] [--kubeadm-feature-gate NAME=true|false]... [--files DIR] \
         [--exit-on-stdin-eof]"
    );
    std::process::exit(2)
}

fn write_atomic(path: &PathBuf, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write state file");
    std::fs::rename(&tmp, path).expect("rename state file");
}

fn main() {
    let mut opts = Options::default();
    let mut state_dir: Option<PathBuf> = None;
    let mut tokens = Vec::new();
    let mut values = Vec::new();
    let mut stdin_eof = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| usage());
        match a.as_str() {
            "--state-dir" => state_dir = Some(PathBuf::from(value())),
            "--listen" => opts.listen = value().parse::<SocketAddr>().unwrap_or_else(|_| usage()),
            "--advertise" => opts.advertise.push(value()),
            "--token" => tokens.push(value()),
            "--values" => values.push(value()),
            "--signing-delay" => {
                opts.signing_delay =
                    Duration::from_millis(value().parse().unwrap_or_else(|_| usage()))
            }
            "--kubernetes-version" => opts.kubernetes_version = value(),
            "--kubeadm-feature-gate" => {
                let gate = value();
                let (name, on) = gate.split_once('=').unwrap_or_else(|| usage());
                let on = on.parse::<bool>().unwrap_or_else(|_| usage());
                opts.kubeadm_feature_gates.push((name.to_owned(), on));
            }
            "--files" => opts.files_dir = Some(PathBuf::from(value())),
            "--exit-on-stdin-eof" => stdin_eof = true,
            _ => usage(),
        }
    }
    let state_dir = state_dir.unwrap_or_else(|| usage());
    std::fs::create_dir_all(&state_dir).expect("state dir");
    let cp = TestControlPlane::start(opts);
    for t in &tokens {
        cp.create_token(&TokenSpec::new(t));
    }
    for v in &values {
        let (token, file) = v.split_once('=').unwrap_or_else(|| usage());
        // @ENDPOINT@ and @CA_PIN@ are filled in, since they are known only now.
        let text = std::fs::read_to_string(file)
            .expect("values file")
            .replace("@ENDPOINT@", &cp.endpoint())
            .replace("@CA_PIN@", &cp.ca_pin());
        let json: serde_json::Value = serde_json::from_str(&text).expect("values JSON");
        cp.add_values(
            token,
            ValuesEntry {
                json,
                ack_text: String::new(),
            },
        );
    }
    write_atomic(&state_dir.join("ca.crt"), &cp.ca_pem());
    write_atomic(&state_dir.join("admin.conf"), &cp.admin_kubeconfig());
    write_atomic(&state_dir.join("ca.pin"), &format!("{}\n", cp.ca_pin()));
    write_atomic(&state_dir.join("endpoint"), &format!("{}\n", cp.endpoint()));
    write_atomic(&state_dir.join("url"), &format!("{}\n", cp.url()));
    eprintln!(
        "test-control-plane: serving {} (state in {})",
        cp.url(),
        state_dir.display()
    );
    if stdin_eof {
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
    } else {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("signal");
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        });
    }
    drop(cp);
}
