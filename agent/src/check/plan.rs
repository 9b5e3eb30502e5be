//! What a join with these settings would do, phase by phase, as far as it is known without
//! the machine and the network: the discovery's endpoint and pins, the node's name rule, the
//! runtime, the kubelet's labels and taints, the TLS bootstrap. Everything decided at boot
//! (the values service's answer, the instance metadata, `$VAR`s, the cluster's kubelet-config)
//! is named as unknown rather than guessed.

use crate::sources::settings::{NodeNaming, Settings, TlsBootstrapMode};
use serde::Serialize;

/// What the evaluation could not know.
#[derive(Clone, Debug, Default)]
pub struct Unknown {
    /// Flags whose value expands at boot: (flag, as written).
    pub flags: Vec<(String, String)>,
    /// Words that expand at boot into more words.
    pub words: Vec<String>,
    /// Files the userdata does not write (or writes in an encoding not read here).
    pub files: Vec<String>,
    /// The cluster values come from the values service.
    pub values: bool,
    /// The values URL, redacted.
    pub values_url: Option<String>,
    /// The bootstrap token is only known at boot.
    pub token: bool,
    /// The instance metadata fills gaps.
    pub metadata: bool,
}

/// One phase of the plan.
#[derive(Clone, Debug, Serialize)]
pub struct Step {
    /// The phase, as `join` names it.
    pub phase: &'static str,
    /// What it would do.
    pub detail: String,
}

/// The plan of one join.
#[derive(Clone, Debug, Serialize)]
pub struct Plan {
    /// Phase by phase.
    pub steps: Vec<Step>,
    /// What is decided only at boot.
    pub unknown: Vec<String>,
}

fn list<T: ToString>(items: &[T]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

impl Plan {
    /// The plan for these settings, with placeholders replaced by what is unknown.
    pub fn of(s: &Settings, u: &Unknown) -> Plan {
        let mut plan = Plan {
            steps: Vec::new(),
            unknown: unknown_list(u),
        };
        let from_values = |known: String| match u.values {
            true => format!("{known} (or as the values service says)"),
            false => known,
        };
        if u.values {
            plan.step("values", format!("fetch the cluster values from {} with the openapi token: endpoint, bootstrap token, CA pins, DNS, runtime, labels and taints", u.values_url.as_deref().unwrap_or("the values URL")));
        }
        plan.step("identity", identity(s, u));
        plan.step(
            "preflight",
            match s.ignore_preflight_errors.is_empty() {
                true => "root, OS, cgroups, tools, port 10250, swap, a previous join".into(),
                false => format!(
                    "the usual checks; downgraded to warnings: {}",
                    s.ignore_preflight_errors.join(",")
                ),
            },
        );
        plan.step("discover", discover(s, u));
        plan.step("cluster", "read the cluster's version, kube-system/kubelet-config and kubeadm-config with the token (unknown until then)".into());
        plan.step(
            "host",
            match s.disable_swap {
                true => "kernel modules and sysctls for the kubelet; turn swap off now and at boot"
                    .into(),
                false => "kernel modules and sysctls for the kubelet".into(),
            },
        );
        let version = s
            .runtime_values
            .version
            .as_deref()
            .map_or(String::new(), |v| format!(" {v}"));
        plan.step(
            "runtime",
            from_values(
                format!(
                    "configure {:?}{version} (installed when missing)",
                    s.runtime
                )
                .to_lowercase(),
            ),
        );
        plan.step("kubelet", kubelet(s, u));
        plan.step("bootstrap", match s.tls_bootstrap {
            TlsBootstrapMode::NodeAttach => format!("create the kubelet's client CSR, wait up to {:?} for approval, write kubelet.conf (no token left on disk)", s.timeouts.csr),
            TlsBootstrapMode::Kubelet => "write bootstrap-kubelet.conf for the kubelet's own TLS bootstrap".into(),
        });
        plan.step("start", "enable and start kubelet.service".into());
        plan.step(
            "confirm",
            match s.timeouts.node_wait.is_zero() {
                true => "do not wait for the Node".into(),
                false => format!(
                    "wait up to {:?} for the Node to register",
                    s.timeouts.node_wait
                ),
            },
        );
        plan
    }

    fn step(&mut self, phase: &'static str, detail: String) {
        self.steps.push(Step { phase, detail });
    }

    /// The plan as text lines.
    pub fn text(&self) -> String {
        let mut t = String::new();
        for s in &self.steps {
            t.push_str(&format!("    {:<10} {}\n", s.phase, s.detail));
        }
        for u in &self.unknown {
            t.push_str(&format!("    unknown    {u}\n"));
        }
        t
    }
}

fn unknown_list(u: &Unknown) -> Vec<String> {
    let mut out: Vec<String> = u
        .flags
        .iter()
        .map(|(f, v)| format!("{f} {v}: expanded at boot"))
        .collect();
    out.extend(
        u.words
            .iter()
            .map(|w| format!("{w}: expands at boot into more arguments")),
    );
    out.extend(
        u.files
            .iter()
            .map(|f| format!("{f}: a file on the machine, not written by this userdata")),
    );
    if u.token {
        out.push("the bootstrap token: read at boot".into());
    }
    if u.metadata {
        out.push("the instance id, region, node IP and providerID: asked from the instance metadata service at boot".into());
    }
    out.push(
        "the host name and address, the cluster's version and kubelet-config: read on the machine"
            .into(),
    );
    out
}

fn identity(s: &Settings, u: &Unknown) -> String {
    let name = match &s.node_naming {
        NodeNaming::Explicit(n) => format!("node {n}"),
        NodeNaming::Mode(m) => {
            format!("node named by {m:?} (decided on the machine)").to_lowercase()
        }
    };
    let ip = match s.node_ips.is_empty() {
        true => "the address that reaches the API server".to_owned(),
        false => list(&s.node_ips),
    };
    let provider = match (&s.provider_id, u.metadata) {
        (Some(p), false) => format!(", providerID {p}"),
        (_, true) => ", providerID from the instance metadata".to_owned(),
        (None, false) => String::new(),
    };
    format!("{name}, IP {ip}{provider}")
}

fn discover(s: &Settings, u: &Unknown) -> String {
    let placeholder =
        |text: &str| text.contains("unknown.invalid") || text.starts_with("sha256:0000000000");
    let endpoints: Vec<String> = s
        .endpoints
        .iter()
        .map(ToString::to_string)
        .filter(|e| !placeholder(e))
        .collect();
    let pins: Vec<String> = s
        .pins
        .pins()
        .iter()
        .map(ToString::to_string)
        .filter(|p| !placeholder(p))
        .collect();
    let endpoint = match (endpoints.is_empty(), u.values) {
        (false, _) => endpoints.join(", "),
        (true, true) => "the values' endpoint".into(),
        (true, false) => "the endpoint given at boot".into(),
    };
    let trust = match (pins.len(), s.unsafe_skip_ca_verification) {
        (0, true) => "WITHOUT a CA pin (--discovery-token-unsafe-skip-ca-verification)".to_owned(),
        (0, false) => "the CA pinned by the values".to_owned(),
        (n, _) => format!("the CA pinned by {n} hash(es): {}", pins.join(", ")),
    };
    let token = match u.token || u.values {
        true => "the bootstrap token (known at boot)".to_owned(),
        false => match &s.token {
            Some(t) => format!("token {t}"),
            None => "no token (bake mode: --phase prepare joins no cluster)".to_owned(),
        },
    };
    format!("verify cluster-info from {endpoint} with {token}, trusting {trust}")
}

fn kubelet(s: &Settings, u: &Unknown) -> String {
    let (own, pending) = s.labels.split_by_class();
    let mut parts = Vec::new();
    if !own.is_empty() {
        parts.push(format!("labels {}", own.to_flag_value()));
    }
    if !pending.is_empty() {
        parts.push(format!(
            "for the control plane to apply: {}",
            pending.to_flag_value()
        ));
    }
    if !s.taints.is_empty() {
        parts.push(format!("taints {}", list(&s.taints)));
    }
    parts.push(match s.cluster_dns.is_empty() {
        true => "cluster DNS from the cluster's kubelet-config".into(),
        false => format!("cluster DNS {}", list(&s.cluster_dns)),
    });
    if let Some(p) = &s.kubelet.cpu_manager_policy {
        parts.push(format!("CPU manager policy {p}"));
    }
    let labels_note = match u.values {
        true => " (plus the values' labels and taints)",
        false => "",
    };
    format!(
        "write the kubelet's configuration and unit: {}{labels_note}",
        parts.join("; ")
    )
}
