//! Reports to the callback the cluster values named: join's outcome and reset's. Bounded,
//! jittered retries; a failure is logged, never fatal (the node's state does not depend on it).
//! Reset's report may present the node's client certificate, so that the values service can
//! delete the Node on the node's behalf (which the Node authorizer does not let a node do).

use crate::client::http::{Http, Request, RetryPolicy, Target};
use crate::model::secret::Secret;
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
    // The path and query are hidden when shown (they carry the values' token): a server's
    // message or a redirect's Location repeating them is scrubbed of them too.
    let hidden: Vec<Secret> = [Some(url.path()).filter(|p| *p != "/"), url.query()]
        .into_iter()
        .flatten()
        .map(Secret::from)
        .collect();
    let sent = crate::client::http::retry(
        RetryPolicy::until(Duration::from_secs(20), Duration::from_secs(5)),
        "reporting to the callback",
        |_| {
            let mut req = Request::get(&target);
            req.method = reqwest::Method::POST;
            req.json = Some(body.to_string().into_bytes());
            req.scrub = hidden.iter().collect();
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Log lines, kept for the test to read.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_refused_report_never_logs_the_secret_in_the_callback_url() {
        crate::trust::tls::install_provider();
        let token = "openapi-0123456789abcdef";
        // An ingress redirecting to the same path with a slash, the token in it.
        let addr = crate::client::http::tests::answer_once(format!(
            "HTTP/1.1 308 Permanent Redirect\r\nlocation: https://values.example.com/v1/callback/{token}/uses/0/\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        ));
        let url =
            url::Url::parse(&format!("http://{addr}/v1/callback/{token}/uses/0")).expect("url");
        let logs = Captured::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        let body = serde_json::json!({"status": "success"});
        let answer = post_callback(&url, None, None, Default::default(), &body).await;
        assert!(answer.is_none());
        let logs = String::from_utf8_lossy(&logs.0.lock().expect("lock")).into_owned();
        assert!(logs.contains("could not report to the callback"), "{logs}");
        assert!(!logs.contains(token), "{logs}");
    }
}
