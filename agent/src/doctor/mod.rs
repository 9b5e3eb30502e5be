//! `node-attach doctor`: named, read-only checks of a node, each with a status, a message and
//! a fix. The local checks ([`host`]: the journal and the tree it describes, the kubelet's
//! client certificate, its unit, the runtime's socket, swap, kernel settings) go through the
//! [`Effects`] traits; the cluster checks ([`cluster`]: the API server with the pinned CA, the
//! Node registered and Ready) use the kubelet's own kubeconfig. Nothing is changed, started or
//! written, on a healthy node or a broken one; a check that cannot apply (the kubelet's on a
//! machine that never joined, the host's under `--root`) is skipped, not failed.

pub mod cluster;
pub mod host;

use crate::apply::journal::{self, Journal, Record};
use crate::apply::records::{NodeState, STATE_FILE};
use crate::effects::Effects;
use serde::Serialize;
use std::path::Path;
use std::time::Duration;

/// A check's outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Healthy.
    Ok,
    /// Not applicable here.
    Skip,
    /// Works, but needs attention soon.
    Warn,
    /// Broken.
    Fail,
}

/// One named check.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    /// Its stable name: `kubelet-unit`, `kubelet-cert`, `api-server`…
    pub name: &'static str,
    /// Its outcome.
    pub status: Status,
    /// What was found.
    pub message: String,
    /// What to do (for a warning or a failure).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

/// Whether the machine is a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Joined {
    /// join finished.
    Joined,
    /// join started and did not finish (or reset did not).
    Partial,
    /// No journal: never joined, or reset.
    NotJoined,
}

/// The whole diagnosis.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Whether the machine is a node.
    pub state: Joined,
    /// The node's name, when joined.
    pub node: Option<String>,
    /// Every check, in order.
    pub checks: Vec<Check>,
}

/// What the doctor may use beyond the effects.
#[derive(Clone, Debug)]
pub struct Options {
    /// Ask the API server (with the kubelet's kubeconfig).
    pub cluster: bool,
    /// Each network check's deadline.
    pub timeout: Duration,
    /// The time certificates are judged at (Unix seconds).
    pub now: i64,
}

/// What the checks share: the journal and the state join recorded.
pub struct Node<'a> {
    /// The effects (read-only use).
    pub effects: &'a Effects,
    /// The journal's records (empty when there is none or it cannot be read).
    pub records: Vec<Record>,
    /// Whether joined.
    pub joined: Joined,
    /// The node's recorded state.
    pub state: Option<NodeState>,
}

impl Check {
    fn new(name: &'static str, status: Status, message: impl Into<String>) -> Check {
        Check {
            name,
            status,
            message: message.into(),
            fix: None,
        }
    }

    fn fix(mut self, fix: impl Into<String>) -> Check {
        self.fix = Some(fix.into());
        self
    }

    fn skip(name: &'static str, why: &str) -> Check {
        Check::new(name, Status::Skip, why)
    }
}

impl Report {
    /// The worst status.
    pub fn worst(&self) -> Status {
        self.checks
            .iter()
            .map(|c| c.status)
            .max()
            .unwrap_or(Status::Ok)
    }

    /// The report for people.
    pub fn text(&self) -> String {
        let state = match self.state {
            Joined::Joined => "joined",
            Joined::Partial => "partly joined",
            Joined::NotJoined => "not joined",
        };
        let mut t = match &self.node {
            Some(n) => format!("node {n}: {state}\n"),
            None => format!("this machine: {state}\n"),
        };
        for c in &self.checks {
            let s = format!("{:?}", c.status).to_uppercase();
            t.push_str(&format!("  {s:<4}  {:<16} {}\n", c.name, c.message));
            if let Some(fix) = &c.fix {
                t.push_str(&format!("        {:<16} fix: {fix}\n", ""));
            }
        }
        t
    }
}

/// Runs every check.
pub async fn run(effects: &Effects, options: &Options) -> Report {
    let (node, journal_check) = load(effects);
    let mut checks = vec![journal_check];
    checks.extend(host::checks(&node, options));
    checks.extend(cluster::checks(&node, options).await);
    Report {
        state: node.joined,
        node: node.state.as_ref().map(|s| s.node_name.clone()),
        checks,
    }
}

/// The journal, read as reset reads it, and the state join recorded.
fn load(effects: &Effects) -> (Node<'_>, Check) {
    let mut node = Node {
        effects,
        records: Vec::new(),
        joined: Joined::NotJoined,
        state: None,
    };
    let check = match Journal::load(&effects.root) {
        Err(e) => {
            node.joined = Joined::Partial;
            Check::new("journal", Status::Fail, e.to_string()).fix("inspect /var/lib/node-attach/journal.jsonl; `node-attach reset` refuses a damaged journal and names the line")
        }
        Ok(None) => Check::new(
            "journal",
            Status::Ok,
            "no node-attach journal: this machine has not joined (or was reset)",
        ),
        Ok(Some(records)) => {
            let phases = journal::phases(&records);
            let done = phases.iter().any(|(p, s)| p == "done" && s == "done");
            let last = phases
                .last()
                .map_or("none".into(), |(p, s)| format!("{p} ({s})"));
            node.records = records;
            match done {
                true => {
                    node.joined = Joined::Joined;
                    Check::new(
                        "journal",
                        Status::Ok,
                        format!("join finished; last phase {last}"),
                    )
                }
                false => {
                    node.joined = Joined::Partial;
                    Check::new(
                        "journal",
                        Status::Fail,
                        format!("join did not finish: last phase {last}"),
                    )
                    .fix("rerun the same join to finish it, or `node-attach reset` to undo it")
                }
            }
        }
    };
    node.state = effects
        .root
        .read(Path::new(STATE_FILE))
        .ok()
        .flatten()
        .and_then(|b| serde_json::from_slice(&b).ok());
    (node, check)
}
