//! Reports to the callback the cluster values named: join's outcome and reset's. Bounded,
//! jittered retries; a failure is logged, never fatal (the node's state does not depend on it).

use crate::client::http::{Http, Request, RetryPolicy, Target};
use std::path::Path;
use std::time::Duration;

/// POSTs `body` to a callback URL with bounded retries; failures are logged, never fatal.
pub async fn post_callback(
    url: &url::Url,
    ca_file: Option<&Path>,
    limits: crate::client::http::Limits,
    body: &serde_json::Value,
) {
    let Ok(tls) = crate::trust::tls::system_roots(ca_file) else {
        tracing::warn!("no CA bundle for the callback; not reporting");
        return;
    };
    let Ok(http) = Http::new(tls, limits) else {
        return;
    };
    let target = Target {
        url: url.clone(),
        shown: crate::sources::values::redact_url_path(url),
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
        Ok(_) => tracing::info!(url = %target.shown, "reported the outcome to the callback"),
        Err(e) => tracing::warn!(
            "could not report to the callback {}: {}",
            target.shown,
            e.inner()
        ),
    }
}
