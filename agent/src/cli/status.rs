//! `node-attach status`: the phase reached, the node's name, its certificate's expiry, and the
//! health of the kubelet and the runtime.

use crate::apply::journal::{self, Journal};
use crate::effects::fs::Root;
use crate::effects::{Systemctl, Systemd};
use crate::error::{Code, Failure};
use crate::join::bootstrap;
use crate::report::Reporter;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// Show what join did and how the node is doing.
#[derive(Clone, Debug, clap::Args)]
pub struct StatusArgs {
    /// The root prefix join used.
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub root: PathBuf,
}

#[derive(Serialize)]
struct StatusView {
    joined: bool,
    last_phase: Option<(String, String)>,
    phases: Vec<(String, String)>,
    node: serde_json::Value,
    certificate_expiry: Option<String>,
    certificate_days_left: Option<i64>,
    kubelet: String,
    runtime: String,
}

/// Prints the status.
pub fn run(args: StatusArgs, reporter: &mut Reporter) -> Result<(), Failure> {
    let root = Root::new(&args.root);
    let records = Journal::load(&root)
        .map_err(|e| Failure::new(Code::Filesystem, e.to_string()))?
        .unwrap_or_default();
    let phases = journal::phases(&records);
    let joined = phases.iter().any(|(p, s)| p == "done" && s == "done");
    let node: serde_json::Value = root
        .read(Path::new(crate::apply::records::STATE_FILE))
        .ok()
        .flatten()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(serde_json::Value::Null);
    let expiry = bootstrap::current_expiry(&root);
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let health = |unit: &str| {
        if !root.is_host() {
            "unknown (--root is not /)".to_owned()
        } else if Systemctl.is_active(unit) {
            "active".to_owned()
        } else {
            "inactive".to_owned()
        }
    };
    let runtime_unit = match node["runtime"].as_str() {
        Some("docker") => "docker.service",
        _ => "containerd.service",
    };
    let view = StatusView {
        joined,
        last_phase: phases.last().cloned(),
        phases: phases.clone(),
        node: node.clone(),
        certificate_expiry: expiry
            .and_then(|e| time::OffsetDateTime::from_unix_timestamp(e).ok())
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            }),
        certificate_days_left: expiry.map(|e| (e - now) / 86400),
        kubelet: health("kubelet.service"),
        runtime: health(runtime_unit),
    };
    let mut text = String::new();
    if records.is_empty() {
        text.push_str("not joined: no node-attach journal on this machine\n");
    } else {
        text.push_str(&format!(
            "joined:      {}\n",
            if joined {
                "yes"
            } else {
                "no (interrupted: rerun join to finish)"
            }
        ));
        if let Some((p, s)) = phases.last() {
            text.push_str(&format!("last phase:  {p} ({s})\n"));
        }
        if let Some(n) = node["node_name"].as_str() {
            text.push_str(&format!(
                "node:        {n} on {}\n",
                node["api_server"].as_str().unwrap_or("?")
            ));
        }
        if let (Some(e), Some(d)) = (&view.certificate_expiry, view.certificate_days_left) {
            text.push_str(&format!("certificate: expires {e} ({d} days)\n"));
        }
        text.push_str(&format!(
            "kubelet:     {}\nruntime:     {}\n",
            view.kubelet, view.runtime
        ));
    }
    reporter.result(&view, &text);
    Ok(())
}
