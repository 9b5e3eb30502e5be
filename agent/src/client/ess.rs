//! Alibaba Cloud Auto Scaling (ESS): finishing a scale-out's lifecycle action from the node.
//!
//! A scaling group with a scale-out lifecycle hook holds each new instance in a wait state
//! until the hook's action is completed (or its timeout applies the hook's default result).
//! A node that knows the action (`--ess-lifecycle-hook-id`, `--ess-lifecycle-action-token`, as
//! the hook's notification hands them to a cloud-assistant command) completes it itself:
//! `CONTINUE` once it has joined, `ABANDON` when the join failed, so ESS releases the instance
//! and starts another now, instead of counting a broken instance as in service.
//!
//! `CompleteLifecycleAction` (API version 2014-08-28) is an RPC-style call signed with
//! signature version 1.0 (HMAC-SHA1 over the canonicalized query), with the instance's RAM
//! role credentials from the metadata service (an AccessKey pair and an STS security token).
//! [`Lifecycle`] is the trait; [`EssApi`] the real client; the tests run it against a loopback
//! stand-in of the ESS endpoint.

use crate::client::http::{self, Http, Limits, Request, RetryPolicy, Target};
use crate::model::secret::Secret;
use base64::Engine;
use hmac::{Hmac, Mac};
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

/// The ESS API version `CompleteLifecycleAction` belongs to.
pub const API_VERSION: &str = "2014-08-28";

/// A pending lifecycle action of a scaling group.
#[derive(Clone, Debug)]
pub struct LifecycleAction {
    /// `ash-…`.
    pub hook_id: String,
    /// The action's token (as secret as a credential: it can release the instance).
    pub token: Secret,
}

/// How to end the wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LifecycleResult {
    /// Go on with the scale-out: the node joined.
    Continue,
    /// Release the instance: the node could not join.
    Abandon,
}

impl LifecycleResult {
    /// The API's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            LifecycleResult::Continue => "CONTINUE",
            LifecycleResult::Abandon => "ABANDON",
        }
    }
}

/// Temporary credentials of the instance's RAM role.
#[derive(Clone, Debug)]
pub struct RamCredentials {
    /// `STS.…`.
    pub access_key_id: String,
    /// The signing secret.
    pub access_key_secret: Secret,
    /// The STS token sent with every call.
    pub security_token: Secret,
}

/// Why the action could not be completed.
#[derive(Debug, thiserror::Error)]
pub enum EssError {
    /// The endpoint or the request could not be built.
    #[error("cannot call ESS: {0}")]
    Setup(String),
    /// The call failed (after bounded retries for what may heal).
    #[error("ESS CompleteLifecycleAction failed: {0}")]
    Call(#[source] http::RetryError<http::HttpError>),
}

/// A future the trait returns.
pub type Completion<'a> = Pin<Box<dyn Future<Output = Result<String, EssError>> + Send + 'a>>;

/// Completes lifecycle actions.
pub trait Lifecycle: Send + Sync {
    /// Ends `action`'s wait with `result`; returns the API's request id.
    fn complete<'a>(
        &'a self,
        action: &'a LifecycleAction,
        result: LifecycleResult,
    ) -> Completion<'a>;
}

/// The ESS endpoint of a region, signing with RAM role credentials.
pub struct EssApi {
    endpoint: url::Url,
    region: String,
    credentials: RamCredentials,
    http: Http,
}

impl EssApi {
    /// The API at `endpoint` (`https://ess.REGION.aliyuncs.com` when None; plain http only
    /// for a loopback address).
    pub fn new(
        endpoint: Option<&url::Url>,
        region: &str,
        credentials: RamCredentials,
        limits: Limits,
    ) -> Result<EssApi, EssError> {
        let endpoint = match endpoint {
            Some(u) => u.clone(),
            None => url::Url::parse(&format!("https://ess.{region}.aliyuncs.com/"))
                .map_err(|e| EssError::Setup(e.to_string()))?,
        };
        let loopback = endpoint
            .host_str()
            .is_some_and(|h| h == "127.0.0.1" || h == "[::1]");
        if endpoint.scheme() != "https" && !loopback {
            return Err(EssError::Setup(format!("{endpoint}: not an https URL")));
        }
        let tls =
            crate::trust::tls::system_roots(None).map_err(|e| EssError::Setup(e.to_string()))?;
        let http = Http::new(tls, limits).map_err(|e| EssError::Setup(e.to_string()))?;
        Ok(EssApi {
            endpoint,
            region: region.to_owned(),
            credentials,
            http,
        })
    }

    /// The signed query of one call, with a fresh nonce and timestamp.
    fn query(&self, action: &LifecycleAction, result: LifecycleResult) -> String {
        let mut nonce = [0u8; 16];
        let _ = getrandom::fill(&mut nonce);
        let nonce: String = nonce.iter().map(|b| format!("{b:02x}")).collect();
        // ISO 8601 in UTC to the second, as the API asks: 2016-02-23T12:46:24Z.
        let timestamp = time::OffsetDateTime::now_utc()
            .replace_nanosecond(0)
            .ok()
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_default();
        let creds = &self.credentials;
        let params: BTreeMap<&str, String> = [
            ("AccessKeyId", creds.access_key_id.clone()),
            ("Action", "CompleteLifecycleAction".into()),
            ("Format", "JSON".into()),
            ("LifecycleActionResult", result.as_str().into()),
            ("LifecycleActionToken", action.token.expose().to_owned()),
            ("LifecycleHookId", action.hook_id.clone()),
            ("RegionId", self.region.clone()),
            ("SecurityToken", creds.security_token.expose().to_owned()),
            ("SignatureMethod", "HMAC-SHA1".into()),
            ("SignatureNonce", nonce),
            ("SignatureVersion", "1.0".into()),
            ("Timestamp", timestamp),
            ("Version", API_VERSION.into()),
        ]
        .into_iter()
        .collect();
        signed_query(&params, &creds.access_key_secret)
    }
}

impl Lifecycle for EssApi {
    fn complete<'a>(
        &'a self,
        action: &'a LifecycleAction,
        result: LifecycleResult,
    ) -> Completion<'a> {
        Box::pin(async move {
            let policy = RetryPolicy::until(Duration::from_secs(30), Duration::from_secs(5));
            let shown = format!("{}?Action=CompleteLifecycleAction", self.endpoint);
            let reply = http::retry(policy, "completing the ESS lifecycle action", |_| {
                // A fresh nonce and timestamp each attempt: ESS refuses a nonce seen before.
                let mut url = self.endpoint.clone();
                url.set_query(Some(&self.query(action, result)));
                let target = Target {
                    url,
                    shown: shown.clone(),
                };
                async move {
                    let mut req = Request::get(&target);
                    req.scrub = vec![&action.token, &self.credentials.security_token];
                    self.http.send(req).await.map_err(Attempt)
                }
            })
            .await
            .map_err(|e| {
                EssError::Call(match e {
                    http::RetryError::Fatal(Attempt(e)) => http::RetryError::Fatal(e),
                    http::RetryError::Exhausted {
                        attempts,
                        elapsed,
                        last: Attempt(last),
                    } => http::RetryError::Exhausted {
                        attempts,
                        elapsed,
                        last,
                    },
                })
            })?;
            let answer: serde_json::Value =
                crate::model::strict::json(&reply.body).unwrap_or_default();
            Ok(answer["RequestId"].as_str().unwrap_or_default().to_owned())
        })
    }
}

/// One call's failure. ESS answers throttling with HTTP 400 and a `Throttling` code
/// (`Throttling`, `Throttling.User`, `Throttling.Api`), which heals like a 429: Alibaba
/// Cloud's SDKs retry it too.
struct Attempt(http::HttpError);

impl std::fmt::Display for Attempt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl http::Retryable for Attempt {
    fn is_transient(&self) -> bool {
        let throttled = matches!(&self.0, http::HttpError::Status { status: 400, detail: Some(d), .. }
            if d.contains("Throttling"));
        self.0.is_transient() || throttled
    }
    fn retry_after(&self) -> Option<Duration> {
        self.0.retry_after()
    }
    fn cause(&self) -> crate::model::cause::Cause {
        self.0.cause()
    }
    fn out_of_time(what: &str, left: Duration) -> Self {
        Attempt(http::HttpError::out_of_time(what, left))
    }
}

/// RFC 3986 percent-encoding, as Alibaba Cloud's signature wants it: everything but
/// `A-Z a-z 0-9 - _ . ~` encoded, a space as `%20`.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Signature version 1.0: `GET&%2F&` + the encoded canonical query, HMAC-SHA1 keyed with
/// `secret&`, base64; returns the canonical query with `Signature` appended.
pub fn signed_query(params: &BTreeMap<&str, String>, secret: &Secret) -> String {
    let canonical: Vec<String> = params
        .iter()
        .map(|(k, v)| format!("{}={}", percent_encode(k), percent_encode(v)))
        .collect();
    let canonical = canonical.join("&");
    let to_sign = format!("GET&{}&{}", percent_encode("/"), percent_encode(&canonical));
    let key = format!("{}&", secret.expose());
    let Ok(mut mac) = Hmac::<sha1::Sha1>::new_from_slice(key.as_bytes()) else {
        unreachable!("HMAC takes a key of any length")
    };
    mac.update(to_sign.as_bytes());
    let signature = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    format!("{canonical}&Signature={}", percent_encode(&signature))
}

/// A double that records what it was asked and answers as told.
#[derive(Default)]
pub struct RecordingLifecycle {
    /// `(hook id, result)` per call.
    pub calls: std::sync::Mutex<Vec<(String, LifecycleResult)>>,
    /// Refuse every call.
    pub refuse: bool,
}

impl Lifecycle for RecordingLifecycle {
    fn complete<'a>(
        &'a self,
        action: &'a LifecycleAction,
        result: LifecycleResult,
    ) -> Completion<'a> {
        if let Ok(mut calls) = self.calls.lock() {
            calls.push((action.hook_id.clone(), result));
        }
        let answer = if self.refuse {
            Err(EssError::Setup("refused by the double".into()))
        } else {
            Ok("request-id".to_owned())
        };
        Box::pin(async move { answer })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of Alibaba Cloud's signature documentation (ECS `DescribeRegions`, secret
    /// `testsecret`): the published string to sign gives the published signature.
    #[test]
    fn the_documented_example_signs_to_the_documented_signature() {
        let params: BTreeMap<&str, String> = [
            ("AccessKeyId", "testid"),
            ("Action", "DescribeRegions"),
            ("Format", "XML"),
            ("SignatureMethod", "HMAC-SHA1"),
            ("SignatureNonce", "3ee8c1b8-83d3-44af-a94f-4e0ad82fd6cf"),
            ("SignatureVersion", "1.0"),
            ("Timestamp", "2016-02-23T12:46:24Z"),
            ("Version", "2014-05-26"),
        ]
        .into_iter()
        .map(|(k, v)| (k, v.to_owned()))
        .collect();
        let query = signed_query(&params, &Secret::new("testsecret"));
        assert!(query.starts_with("AccessKeyId=testid&Action=DescribeRegions&Format=XML&"));
        assert!(
            query.contains("Timestamp=2016-02-23T12%3A46%3A24Z"),
            "{query}"
        );
        assert!(
            query.ends_with("&Signature=OLeaidS1JvxuMvnyHOwuJ%2BuX5qY%3D"),
            "{query}"
        );
    }

    #[test]
    fn percent_encoding_follows_rfc_3986() {
        assert_eq!(percent_encode("a b*~/+="), "a%20b%2A~%2F%2B%3D");
        assert_eq!(percent_encode("é"), "%C3%A9");
    }

    fn answer(status: &str, body: &str) -> String {
        format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_throttled_call_is_tried_again() {
        // ESS answers throttling with HTTP 400 (Auto Scaling's client errors: `Throttling`,
        // "Request was denied due to request throttling.").
        crate::trust::tls::install_provider();
        let throttled = r#"{"RequestId":"540CFF28-407A-40B5-B6A5-74B000000001","HostId":"ess.aliyuncs.com","Code":"Throttling","Message":"Request was denied due to request throttling."}"#;
        let addr = crate::client::http::tests::answer_in_turn(vec![
            answer("400 Bad Request", throttled),
            answer("200 OK", r#"{"RequestId":"second"}"#),
        ]);
        let endpoint = url::Url::parse(&format!("http://{addr}/")).expect("url");
        let creds = RamCredentials {
            access_key_id: "STS.NTestAccessKeyId".into(),
            access_key_secret: Secret::new("test-access-key-secret"),
            security_token: Secret::new("CAIS-test-security-token"),
        };
        let api =
            EssApi::new(Some(&endpoint), "cn-hangzhou", creds, Limits::default()).expect("api");
        let action = LifecycleAction {
            hook_id: "ash-1".into(),
            token: Secret::new("action-token"),
        };
        let done = api.complete(&action, LifecycleResult::Continue).await;
        assert_eq!(done.expect("completed on the second try"), "second");
        let refused = |code: &str| {
            http::Retryable::is_transient(&Attempt(http::HttpError::Status {
                url: "u".into(),
                status: 400,
                detail: Some(format!(r#"{{"RequestId":"r","Code":"{code}"}}"#)),
                retry_after: None,
            }))
        };
        assert!(refused("Throttling.User"));
        assert!(!refused("SignatureDoesNotMatch"));
    }

    #[test]
    fn plain_http_is_only_for_loopback() {
        let creds = RamCredentials {
            access_key_id: "id".into(),
            access_key_secret: Secret::new("s"),
            security_token: Secret::new("t"),
        };
        let plain = url::Url::parse("http://ess.example.com/").expect("url");
        let refused = EssApi::new(
            Some(&plain),
            "cn-hangzhou",
            creds.clone(),
            Limits::default(),
        );
        assert!(refused.is_err());
        let local = url::Url::parse("http://127.0.0.1:9/").expect("url");
        assert!(EssApi::new(Some(&local), "cn-hangzhou", creds, Limits::default()).is_ok());
    }
}
