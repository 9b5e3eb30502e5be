//! Kubernetes syntax rules for the values a join takes: label keys and values, taints, node
//! names, API endpoints and DNS addresses.
//!
//! The rules are apimachinery's (`validation.IsQualifiedName`, `IsValidLabelValue`,
//! `IsDNS1123Subdomain`) and the kubelet's (`--node-labels` may only carry the labels of
//! `k8s.io/kubelet/pkg/apis/well_known_labels.go` `IsKubeletLabel` inside the `kubernetes.io` and
//! `k8s.io` namespaces). Every error names the offending text and the expected form.

use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

/// A syntax error in one value; `what` names the field or flag it came from.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid {what} {value:?}: {reason}")]
pub struct SyntaxError {
    /// The field or flag.
    pub what: String,
    /// The offending text (never a secret).
    pub value: String,
    /// What is wrong and the expected form.
    pub reason: String,
}

fn syntax(what: &str, value: &str, reason: impl Into<String>) -> SyntaxError {
    SyntaxError {
        what: what.into(),
        value: value.chars().take(300).collect(),
        reason: reason.into(),
    }
}

fn is_alnum(c: u8) -> bool {
    c.is_ascii_alphanumeric()
}

/// `[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?`, at most 63 characters.
fn check_name_part(what: &str, whole: &str, part: &str) -> Result<(), SyntaxError> {
    let b = part.as_bytes();
    if b.is_empty() || b.len() > 63 {
        return Err(syntax(
            what,
            whole,
            "the name part must be 1 to 63 characters",
        ));
    }
    let inner_ok = b
        .iter()
        .all(|&c| is_alnum(c) || matches!(c, b'-' | b'_' | b'.'));
    if !inner_ok || !is_alnum(b[0]) || !is_alnum(b[b.len() - 1]) {
        return Err(syntax(
            what,
            whole,
            "the name part must consist of alphanumerics, '-', '_' or '.', and start and end \
             with an alphanumeric",
        ));
    }
    Ok(())
}

/// A lowercase RFC 1123 subdomain: at most 253 characters, dot-separated labels of
/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?`.
pub fn check_dns_subdomain(what: &str, value: &str) -> Result<(), SyntaxError> {
    if value.is_empty() || value.len() > 253 {
        return Err(syntax(
            what,
            value,
            "must be 1 to 253 characters of lowercase DNS labels",
        ));
    }
    for label in value.split('.') {
        let b = label.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= 63
            && b.iter()
                .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
            && b[0] != b'-'
            && b[b.len() - 1] != b'-';
        if !ok {
            return Err(syntax(
                what,
                value,
                "must be a lowercase RFC 1123 subdomain: labels of [a-z0-9-] separated by '.', \
                 each starting and ending with [a-z0-9]",
            ));
        }
    }
    Ok(())
}

/// A label or taint key: `[prefix/]name`, the prefix a DNS subdomain.
pub fn check_qualified_name(what: &str, key: &str) -> Result<(), SyntaxError> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        check_dns_subdomain(what, prefix).map_err(|_| {
            syntax(
                what,
                key,
                "the prefix before '/' must be a lowercase DNS subdomain",
            )
        })?;
    }
    check_name_part(what, key, name)
}

/// A label value: empty, or at most 63 characters of the name-part form.
pub fn check_label_value(what: &str, value: &str) -> Result<(), SyntaxError> {
    if value.is_empty() {
        return Ok(());
    }
    check_name_part(what, value, value)
}

/// A node name: a lowercase DNS subdomain.
pub fn check_node_name(value: &str) -> Result<(), SyntaxError> {
    check_dns_subdomain("node name", value)
}

/// Whether the kubelet may set this label on its own Node (`--node-labels`), or whether it must
/// be applied by a privileged controller instead.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LabelClass {
    /// The kubelet may register with it.
    SelfRegistrable,
    /// Under `kubernetes.io`/`k8s.io` and outside the kubelet's allowed set: the kubelet refuses to
    /// start with it and NodeRestriction rejects it.
    Restricted,
}

const KUBELET_LABELS: &[&str] = &[
    "kubernetes.io/hostname",
    "topology.kubernetes.io/zone",
    "topology.kubernetes.io/region",
    "failure-domain.beta.kubernetes.io/zone",
    "failure-domain.beta.kubernetes.io/region",
    "beta.kubernetes.io/instance-type",
    "node.kubernetes.io/instance-type",
    "kubernetes.io/os",
    "kubernetes.io/arch",
    "beta.kubernetes.io/os",
    "beta.kubernetes.io/arch",
];

const KUBELET_LABEL_NAMESPACES: &[&str] = &["kubelet.kubernetes.io", "node.kubernetes.io"];

fn in_namespace(ns: &str, domain: &str) -> bool {
    ns == domain || ns.strip_suffix(domain).is_some_and(|p| p.ends_with('.'))
}

/// Classifies a (valid) label key the way the kubelet's `--node-labels` check does.
pub fn classify_label(key: &str) -> LabelClass {
    let namespace = key.split_once('/').map(|(ns, _)| ns).unwrap_or_default();
    let kubernetes = in_namespace(namespace, "kubernetes.io") || in_namespace(namespace, "k8s.io");
    if !kubernetes
        || KUBELET_LABELS.contains(&key)
        || KUBELET_LABEL_NAMESPACES
            .iter()
            .any(|allowed| in_namespace(namespace, allowed))
    {
        LabelClass::SelfRegistrable
    } else {
        LabelClass::Restricted
    }
}

/// Node labels, keyed and sorted by label key.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Labels(pub BTreeMap<String, String>);

impl Labels {
    /// Parses `k=v,k2=v2` (attach_node.sh's and the kubelet's `--node-labels` form). A key may
    /// appear once.
    pub fn parse_list(what: &str, text: &str) -> Result<Labels, SyntaxError> {
        let mut out = Labels::default();
        for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let Some((key, value)) = item.split_once('=') else {
                return Err(syntax(
                    what,
                    item,
                    "expected key=value (for example workload_type=cpu)",
                ));
            };
            out.insert(what, key.trim(), value.trim())?;
        }
        Ok(out)
    }

    /// Adds one validated label; refuses a key given twice with different values.
    pub fn insert(&mut self, what: &str, key: &str, value: &str) -> Result<(), SyntaxError> {
        check_qualified_name(&format!("{what} key"), key)?;
        check_label_value(&format!("{what} value"), value)?;
        if let Some(old) = self.0.get(key) {
            if old != value {
                return Err(syntax(
                    what,
                    key,
                    format!("the key is given twice, with values {old:?} and {value:?}"),
                ));
            }
        }
        self.0.insert(key.to_owned(), value.to_owned());
        Ok(())
    }

    /// Splits into (labels the kubelet may set, labels the control plane must apply).
    pub fn split_by_class(&self) -> (Labels, Labels) {
        let (own, restricted): (BTreeMap<_, _>, BTreeMap<_, _>) = self
            .0
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .partition(|(k, _)| classify_label(k) == LabelClass::SelfRegistrable);
        (Labels(own), Labels(restricted))
    }

    /// `k=v,k2=v2`, sorted by key.
    pub fn to_flag_value(&self) -> String {
        self.0
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Whether there are no labels.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A taint effect.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
pub enum TaintEffect {
    /// Do not schedule new pods.
    NoSchedule,
    /// Avoid scheduling new pods.
    PreferNoSchedule,
    /// Evict running pods too.
    NoExecute,
}

impl TaintEffect {
    fn parse(s: &str) -> Option<TaintEffect> {
        match s {
            "NoSchedule" => Some(TaintEffect::NoSchedule),
            "PreferNoSchedule" => Some(TaintEffect::PreferNoSchedule),
            "NoExecute" => Some(TaintEffect::NoExecute),
            _ => None,
        }
    }
}

/// A node taint, `key[=value]:Effect`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Taint {
    /// Taint key.
    pub key: String,
    /// Taint value (may be empty).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub value: String,
    /// Effect.
    pub effect: TaintEffect,
}

/// The key of the startup taint: a node registers with it while labels it may not set itself
/// (restricted labels, such as an autoscaler pool's) wait for the values service, which
/// removes it in the same patch that applies them. Pods then never land on a node that lacks
/// its pool's labels.
pub const STARTUP_TAINT_KEY: &str = "node.node-attach.io/labels-pending";

impl Taint {
    /// The startup taint, `node.node-attach.io/labels-pending:NoSchedule`.
    pub fn startup() -> Taint {
        Taint {
            key: STARTUP_TAINT_KEY.into(),
            value: String::new(),
            effect: TaintEffect::NoSchedule,
        }
    }

    /// Parses one `key[=value]:Effect`.
    pub fn parse(what: &str, text: &str) -> Result<Taint, SyntaxError> {
        let form = "expected key[=value]:Effect with Effect one of NoSchedule, PreferNoSchedule, \
                    NoExecute (for example dedicated=gpu:NoSchedule)";
        let Some((kv, effect)) = text.rsplit_once(':') else {
            return Err(syntax(what, text, form));
        };
        let effect = TaintEffect::parse(effect).ok_or_else(|| syntax(what, text, form))?;
        let (key, value) = kv.split_once('=').unwrap_or((kv, ""));
        check_qualified_name(&format!("{what} key"), key)?;
        check_label_value(&format!("{what} value"), value)?;
        Ok(Taint {
            key: key.into(),
            value: value.into(),
            effect,
        })
    }

    /// Parses a comma-separated list; duplicates (same key and effect) are refused.
    pub fn parse_list(what: &str, text: &str) -> Result<Vec<Taint>, SyntaxError> {
        let mut out: Vec<Taint> = Vec::new();
        for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let taint = Taint::parse(what, item)?;
            push_taint(what, &mut out, taint)?;
        }
        Ok(out)
    }
}

/// Adds a taint unless the same one is present; refuses the same key and effect with another
/// value.
pub fn push_taint(what: &str, list: &mut Vec<Taint>, taint: Taint) -> Result<(), SyntaxError> {
    if let Some(old) = list
        .iter()
        .find(|t| t.key == taint.key && t.effect == taint.effect)
    {
        if old.value != taint.value {
            return Err(syntax(
                what,
                &taint.to_string(),
                format!("conflicts with {old}: same key and effect, another value"),
            ));
        }
        return Ok(());
    }
    list.push(taint);
    Ok(())
}

impl fmt::Display for Taint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.value.is_empty() {
            write!(f, "{}:{:?}", self.key, self.effect)
        } else {
            write!(f, "{}={}:{:?}", self.key, self.value, self.effect)
        }
    }
}

/// An API server endpoint: `host:port`, host a DNS name or an IP (IPv6 in brackets).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(into = "String")]
pub struct Endpoint {
    /// Host name or IP, without brackets.
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl Endpoint {
    /// Parses `host:port`, `[v6]:port`, or the same behind `https://` (a trailing `/` is
    /// allowed). Without a port, 6443 is assumed, as attach_node.sh does.
    pub fn parse(what: &str, text: &str) -> Result<Endpoint, SyntaxError> {
        let form = "expected HOST:PORT, for example 192.168.0.80:6443 or api.example.com:6443";
        let t = text.trim();
        let t = t.strip_prefix("https://").unwrap_or(t);
        let t = t.strip_suffix('/').unwrap_or(t);
        if t.is_empty() || t.contains('/') || t.contains('@') || t.contains("://") {
            return Err(syntax(what, text, form));
        }
        let (host, port) = if let Some(rest) = t.strip_prefix('[') {
            let (h, after) = rest
                .split_once(']')
                .ok_or_else(|| syntax(what, text, form))?;
            let port = match after {
                "" => None,
                p => Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| syntax(what, text, form))?,
                ),
            };
            if h.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(syntax(
                    what,
                    text,
                    "the bracketed host is not an IPv6 address",
                ));
            }
            (h, port)
        } else if t.matches(':').count() > 1 {
            return Err(syntax(
                what,
                text,
                "put an IPv6 address in brackets: [ADDR]:PORT",
            ));
        } else {
            match t.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (t, None),
            }
        };
        let port = match port {
            None => 6443,
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n > 0 => n,
                _ => return Err(syntax(what, text, "the port must be 1-65535")),
            },
        };
        if host.parse::<IpAddr>().is_err() {
            check_dns_subdomain(what, &host.to_ascii_lowercase())
                .map_err(|_| syntax(what, text, form))?;
        }
        Ok(Endpoint {
            host: host.to_ascii_lowercase(),
            port,
        })
    }

    /// `https://host:port`.
    pub fn https_url(&self) -> String {
        format!("https://{self}")
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl From<Endpoint> for String {
    fn from(e: Endpoint) -> String {
        e.to_string()
    }
}

/// Parses a comma-separated list of IP addresses (cluster DNS).
pub fn parse_ip_list(what: &str, text: &str) -> Result<Vec<IpAddr>, SyntaxError> {
    let mut out = Vec::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let ip: IpAddr = item.parse().map_err(|_| {
            syntax(
                what,
                item,
                "expected an IP address such as 10.96.0.10 (several may be comma-separated)",
            )
        })?;
        if ip.is_unspecified() || ip.is_multicast() {
            return Err(syntax(what, item, "not a usable unicast address"));
        }
        if !out.contains(&ip) {
            out.push(ip);
        }
    }
    if out.is_empty() {
        return Err(syntax(what, text, "expected at least one IP address"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_keys_and_values() {
        for good in [
            "a",
            "workload_type",
            "k8s.io/cluster-autoscaler",
            "example.com/a.b-c_d",
            "A1",
        ] {
            assert!(check_qualified_name("label key", good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "Example.com/a",
            "a/b/c",
            "/a",
            "a/",
            &"x".repeat(64),
            "a b",
        ] {
            assert!(check_qualified_name("label key", bad).is_err(), "{bad:?}");
        }
        assert!(check_label_value("v", "").is_ok());
        assert!(check_label_value("v", "true").is_ok());
        assert!(check_label_value("v", "a$b").is_err());
        assert!(check_label_value("v", &"x".repeat(64)).is_err());
    }

    #[test]
    fn label_list_parsing() {
        let l = Labels::parse_list(
            "--labels",
            "k8s.io/cluster-autoscaler=true,workload_type=cpu,k8s.aliyun.com=true",
        )
        .expect("valid");
        assert_eq!(l.0.len(), 3);
        assert_eq!(
            l.to_flag_value(),
            "k8s.aliyun.com=true,k8s.io/cluster-autoscaler=true,workload_type=cpu"
        );
        let err = Labels::parse_list("--labels", "a=b,c").expect_err("no =");
        assert!(err.to_string().contains("--labels"), "{err}");
        assert!(Labels::parse_list("--labels", "a=b,a=c").is_err());
        assert!(Labels::parse_list("--labels", "a=b,a=b").is_ok());
    }

    #[test]
    fn restricted_labels_follow_the_kubelet_rules() {
        use LabelClass::*;
        for (key, class) in [
            ("k8s.io/cluster-autoscaler", Restricted),
            ("kubernetes.io/role", Restricted),
            ("node-role.kubernetes.io/worker", Restricted),
            ("node-restriction.kubernetes.io/x", Restricted),
            ("foo.k8s.io/x", Restricted),
            ("node.kubernetes.io/pool", SelfRegistrable),
            ("a.node.kubernetes.io/pool", SelfRegistrable),
            ("kubelet.kubernetes.io/x", SelfRegistrable),
            ("topology.kubernetes.io/zone", SelfRegistrable),
            ("kubernetes.io/hostname", SelfRegistrable),
            ("workload_type", SelfRegistrable),
            ("k8s.aliyun.com", SelfRegistrable),
            ("alibabacloud.com/nodepool-id", SelfRegistrable),
            ("notkubernetes.io/x", SelfRegistrable),
        ] {
            assert_eq!(classify_label(key), class, "{key}");
        }
        let l = Labels::parse_list("l", "k8s.io/cluster-autoscaler=true,workload_type=cpu")
            .expect("ok");
        let (own, restricted) = l.split_by_class();
        assert_eq!(own.to_flag_value(), "workload_type=cpu");
        assert_eq!(restricted.to_flag_value(), "k8s.io/cluster-autoscaler=true");
    }

    #[test]
    fn taints() {
        let t = Taint::parse_list("--taints", "dedicated=gpu:NoSchedule,spot:PreferNoSchedule")
            .expect("ok");
        assert_eq!(t[0].to_string(), "dedicated=gpu:NoSchedule");
        assert_eq!(t[1].to_string(), "spot:PreferNoSchedule");
        for bad in [
            "a=b",
            "a=b:Never",
            ":NoSchedule",
            "a=b c:NoExecute",
            "a=b:noschedule",
        ] {
            assert!(Taint::parse("--taints", bad).is_err(), "{bad}");
        }
        assert!(Taint::parse_list("t", "a=1:NoSchedule,a=2:NoSchedule").is_err());
        assert!(Taint::parse_list("t", "a=1:NoSchedule,a=2:NoExecute").is_ok());
    }

    #[test]
    fn endpoints() {
        let e = Endpoint::parse("--endpoint", "192.168.0.80:6443").expect("ok");
        assert_eq!(e.to_string(), "192.168.0.80:6443");
        assert_eq!(
            Endpoint::parse("e", "API.example.com").expect("ok").port,
            6443
        );
        assert_eq!(
            Endpoint::parse("e", "https://10.0.0.1:8443/")
                .expect("ok")
                .https_url(),
            "https://10.0.0.1:8443"
        );
        assert_eq!(
            Endpoint::parse("e", "[fd00::1]:6443")
                .expect("ok")
                .to_string(),
            "[fd00::1]:6443"
        );
        for bad in [
            "",
            "a:b",
            "a:0",
            "a:70000",
            "fd00::1:6443",
            "http://a:1",
            "a:1/path",
            "user@a:1",
            "bad_host:1",
        ] {
            assert!(Endpoint::parse("e", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ip_lists_and_names() {
        assert_eq!(
            parse_ip_list("--cluster-dns", "10.96.0.10, fd00::a")
                .expect("ok")
                .len(),
            2
        );
        assert!(parse_ip_list("--cluster-dns", "10.96.0").is_err());
        assert!(parse_ip_list("--cluster-dns", "0.0.0.0").is_err());
        assert!(parse_ip_list("--cluster-dns", "").is_err());
        assert!(check_node_name("cn-hangzhou.192.168.0.1").is_ok());
        assert!(check_node_name("Node1").is_err());
        assert!(check_node_name("node_1").is_err());
    }
}
