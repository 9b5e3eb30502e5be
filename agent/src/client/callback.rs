//! Reports to the callback the cluster values named: join's outcome and reset's. Bounded,
//! jittered retries; a failure is logged, never fatal (the node's state does not depend on it).
//! Reset's report may present the node's client certificate, so that the values service can
//! delete the Node on the node's behalf (which the Node authorizer does not let a node do).

use crate::client::http::{Http, Request, RetryPolicy, Target};
use crate::trust::tls::{self, ClientIdentity};
use std::path::Path;
use std::time::Duration;

/// POSTs `body` to a callback URL with bounded retries, presenting `identity` if given.
/// Returns the service's JSON answer (None: no answer, or not JSON). Failures are logged,
/// never fatal.
pub async fn post_callback(
    url: &url::Url,
    ca_file: Option<&Path>,
    identity: Option<&ClientIdentity>,
    limits: crate::client::http::Limits,
    body: &serde_json::Value,
) -> Option<serde_json::Value> {
    let tls = match identity {
        Some(id) => tls::system_roots_with_identity(ca_file, id),
        None => tls::system_roots(ca_file),
    };
    let tls = match tls {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!("cannot report to the callback: {e}");
            return None;
        }
    };
    let http = Http::new(tls, limits).ok()?;
    let target = Target {
        url: url.clone(),
        shown: crate::model::secret::redact_url_path(url),
    };
    let sent = crate::client::http::retry(
        RetryPolicy::until(Duration::from_secs(20), Duration::from_secs(5)),
        "reporting to the callback",
        |_| {
            let mut req = Request::get(&target);
            req.method = reqwest::Method::POST;
            req.json = Some(body.to_string().into_bytes());
            http.send(req)
        },
    )
    .await;
    match sent {
        Ok(reply) => {
            tracing::info!(url = %target.shown, "reported the outcome to the callback");
            crate::model::strict::json(&reply.body).ok()
        }
        Err(e) => {
            let shown = &target.shown;
            tracing::warn!("could not report to the callback {shown}: {}", e.inner());
            None
        }
    }
}
