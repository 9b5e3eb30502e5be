//! What the values service counts, in the Prometheus text format at `GET /metrics`, and its
//! health: `GET /healthz` (the process answers) and `GET /readyz` (it can reach the API server
//! now: one `GET /version`, not retried, within [`READY_TIMEOUT`]).
//!
//! Counters are per process (each replica is scraped on its own): requests by route and status
//! code, openapi token uses by outcome, bootstrap token mint failures, restricted labels applied,
//! callback reports by status and code, and Node deletions by outcome. Every label value comes
//! from a fixed set, so an anonymous caller cannot grow the series without bound.

use super::{reply, Body, Service};
use crate::error::Code;
use hyper::body::Incoming;
use hyper::{Request, Response};
use std::collections::BTreeMap;
use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

/// How long `/readyz` waits for the API server.
pub const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// The text format's content type.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The routes requests are counted under.
pub const ROUTES: &[&str] = &[
    "values",
    "node_info",
    "callback",
    "files",
    "healthz",
    "readyz",
    "metrics",
    "other",
];

/// The route a request path belongs to.
pub fn route_of(method: &str, path: &str) -> &'static str {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (method, segs.as_slice()) {
        ("GET", ["v1", "values", _]) => "values",
        ("GET", ["token", _, "instance", _, "node_info"]) => "node_info",
        ("POST", ["v1", "callback", _] | ["v1", "callback", _, "uses", _]) => "callback",
        (_, ["files", ..]) => "files",
        ("GET", ["healthz"]) => "healthz",
        ("GET", ["readyz"]) => "readyz",
        ("GET", ["metrics"]) => "metrics",
        _ => "other",
    }
}

/// How an openapi token use ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Use {
    /// Values served, a bootstrap token minted.
    Served,
    /// No such token.
    Unknown,
    /// Past its TTL.
    Expired,
    /// No uses left.
    UsedUp,
    /// The cluster could not be asked (store or mint failure).
    Failed,
}

impl Use {
    /// The outcome a store refusal counts as.
    pub fn of(e: &super::store::StoreError) -> Use {
        use super::store::StoreError;
        match e {
            StoreError::Unknown => Use::Unknown,
            StoreError::Expired => Use::Expired,
            StoreError::UsedUp => Use::UsedUp,
            _ => Use::Failed,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Use::Served => "served",
            Use::Unknown => "unknown",
            Use::Expired => "expired",
            Use::UsedUp => "used_up",
            Use::Failed => "failed",
        }
    }
}

/// The callback statuses counted by name; anything else is `other`.
const STATUSES: &[&str] = &["success", "failure", "removed", "reset-incomplete"];

/// The counters.
#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    uses: Mutex<BTreeMap<Use, u64>>,
    mint_failures: Mutex<u64>,
    labels_applied: Mutex<u64>,
    nodes_labelled: Mutex<u64>,
    callbacks: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    removals: Mutex<BTreeMap<&'static str, u64>>,
}

/// One metric family: its name, help text, and samples (`{label="value",…}` or empty, count).
type Family = (&'static str, &'static str, Vec<(String, u64)>);

fn bump<K: Ord>(map: &Mutex<BTreeMap<K, u64>>, key: K, by: u64) {
    let mut m = map.lock().unwrap_or_else(|p| p.into_inner());
    *m.entry(key).or_insert(0) += by;
}

fn add(n: &Mutex<u64>, by: u64) {
    *n.lock().unwrap_or_else(|p| p.into_inner()) += by;
}

fn read(n: &Mutex<u64>) -> u64 {
    *n.lock().unwrap_or_else(|p| p.into_inner())
}

impl Metrics {
    /// One request answered.
    pub fn request(&self, route: &'static str, status: u16) {
        bump(&self.requests, (route, status), 1);
    }

    /// One openapi token use, by outcome.
    pub fn token_use(&self, outcome: Use) {
        bump(&self.uses, outcome, 1);
    }

    /// A bootstrap token could not be created.
    pub fn mint_failure(&self) {
        add(&self.mint_failures, 1);
    }

    /// `count` restricted labels applied to one Node.
    pub fn labels_applied(&self, count: usize) {
        add(&self.labels_applied, count as u64);
        add(&self.nodes_labelled, 1);
    }

    /// A node's report: its status (`success`, `failure`, `removed`, …) and failure code.
    pub fn callback(&self, status: &str, code: &str) {
        let status = STATUSES
            .iter()
            .find(|s| **s == status)
            .copied()
            .unwrap_or("other");
        let code = match code {
            "" => "",
            c => Code::ALL
                .iter()
                .map(|k| k.id())
                .find(|id| *id == c)
                .unwrap_or("other"),
        };
        bump(&self.callbacks, (status, code), 1);
    }

    /// A removed node's Node: `deleted`, `absent` or `refused`.
    pub fn removal(&self, outcome: &'static str) {
        bump(&self.removals, outcome, 1);
    }

    /// The Prometheus text exposition of every counter.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (name, help, samples) in self.families() {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} counter");
            for (labels, n) in samples {
                let _ = writeln!(out, "{name}{labels} {n}");
            }
        }
        out
    }

    /// Every family, in exposition order.
    fn families(&self) -> Vec<Family> {
        fn copy<K: Clone + Ord>(m: &Mutex<BTreeMap<K, u64>>) -> BTreeMap<K, u64> {
            m.lock().unwrap_or_else(|p| p.into_inner()).clone()
        }
        let requests = copy(&self.requests)
            .into_iter()
            .map(|((route, code), n)| (format!("{{route=\"{route}\",code=\"{code}\"}}"), n))
            .collect();
        let uses = copy(&self.uses);
        let uses = [
            Use::Served,
            Use::Unknown,
            Use::Expired,
            Use::UsedUp,
            Use::Failed,
        ]
        .into_iter()
        .map(|u| {
            (
                format!("{{outcome=\"{}\"}}", u.label()),
                uses.get(&u).copied().unwrap_or(0),
            )
        })
        .collect();
        let callbacks = copy(&self.callbacks)
            .into_iter()
            .map(|((status, code), n)| (format!("{{status=\"{status}\",code=\"{code}\"}}"), n))
            .collect();
        let removals = copy(&self.removals);
        let removals = ["deleted", "absent", "refused"]
            .into_iter()
            .map(|o| {
                (
                    format!("{{outcome=\"{o}\"}}"),
                    removals.get(o).copied().unwrap_or(0),
                )
            })
            .collect();
        let single = |n: &Mutex<u64>| vec![(String::new(), read(n))];
        vec![
            (
                "node_attach_serve_requests_total",
                "Requests answered, by route and HTTP status code.",
                requests,
            ),
            (
                "node_attach_serve_token_uses_total",
                "Openapi token uses, by outcome (served, unknown, expired, used_up, failed).",
                uses,
            ),
            (
                "node_attach_serve_mint_failures_total",
                "Bootstrap tokens that could not be created for a use.",
                single(&self.mint_failures),
            ),
            (
                "node_attach_serve_labels_applied_total",
                "Restricted labels applied to Nodes.",
                single(&self.labels_applied),
            ),
            (
                "node_attach_serve_nodes_labelled_total",
                "Nodes the restricted labels were applied to.",
                single(&self.nodes_labelled),
            ),
            (
                "node_attach_serve_callback_reports_total",
                "Reports from nodes, by status and failure code.",
                callbacks,
            ),
            (
                "node_attach_serve_node_removals_total",
                "Nodes of removed nodes, by outcome (deleted, absent, refused).",
                removals,
            ),
        ]
    }
}

impl Service {
    /// Answers one request and counts it. `/healthz` and `/metrics` are answered here, outside
    /// the rate limit (probes and scrapers call them often, and they cost nothing);
    /// `/readyz` asks the API server, so it is rate-limited like the anonymous endpoints.
    pub(super) async fn serve_counted(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
        caller: Option<&str>,
    ) -> Response<Body> {
        let route = route_of(req.method().as_str(), req.uri().path());
        let answer = match route {
            "healthz" => reply(200, "text/plain", "ok\n"),
            "metrics" => {
                // Count this scrape before rendering, so it sees itself.
                self.metrics.request(route, 200);
                return reply(200, CONTENT_TYPE, self.metrics.render());
            }
            "readyz" if self.limiter.allow(peer.ip()) => self.ready().await,
            "readyz" => {
                let mut r = super::error(429, "too many requests");
                r.headers_mut()
                    .insert("retry-after", hyper::header::HeaderValue::from_static("10"));
                r
            }
            _ => self.handle(req, peer, caller).await,
        };
        self.metrics.request(route, answer.status().as_u16());
        answer
    }

    async fn ready(&self) -> Response<Body> {
        match self.cfg.kube.reachable(READY_TIMEOUT).await {
            Ok(v) => reply(
                200,
                "text/plain",
                format!("ok: the API server answers ({v})\n"),
            ),
            Err(e) => {
                tracing::warn!("not ready: {e}");
                reply(
                    503,
                    "text/plain",
                    "not ready: the API server cannot be reached\n",
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_come_from_fixed_sets() {
        let m = Metrics::default();
        m.request("values", 200);
        m.request("values", 200);
        m.request("other", 404);
        m.token_use(Use::Served);
        m.callback("success", "");
        m.callback("failure", "bootstrap.csr-denied");
        m.callback("<script>", "no\"such");
        m.labels_applied(2);
        let text = m.render();
        assert!(
            text.contains("node_attach_serve_requests_total{route=\"values\",code=\"200\"} 2"),
            "{text}"
        );
        assert!(text.contains("node_attach_serve_token_uses_total{outcome=\"served\"} 1"));
        assert!(text.contains("node_attach_serve_token_uses_total{outcome=\"used_up\"} 0"));
        assert!(text.contains("{status=\"failure\",code=\"bootstrap.csr-denied\"} 1"));
        assert!(text.contains("{status=\"other\",code=\"other\"} 1"));
        assert!(text.contains("node_attach_serve_labels_applied_total 2"));
        assert!(!text.contains("script"));
        for route in ["healthz", "readyz", "metrics"] {
            assert_eq!(route_of("GET", &format!("/{route}")), route);
        }
        assert!(ROUTES.contains(&route_of("GET", "/token/t/instance/i/node_info")));
        assert_eq!(route_of("GET", "/v1/values/tok"), "values");
        assert_eq!(route_of("POST", "/v1/values/tok"), "other");
        assert_eq!(route_of("POST", "/v1/callback/tok"), "callback");
        assert_eq!(route_of("POST", "/v1/callback/tok/uses/7"), "callback");
    }
}
