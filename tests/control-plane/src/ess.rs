//! A loopback stand-in for Alibaba Cloud Auto Scaling's RPC endpoint, answering
//! `CompleteLifecycleAction` (API version 2014-08-28) as ESS does: the request signed with
//! signature version 1.0 by the RAM role's AccessKey (HMAC-SHA1 over `GET&%2F&` and the
//! encoded, sorted query), the STS token present, a nonce never seen before and a timestamp
//! within 15 minutes; the hook id and action token of a pending action. Errors are answered
//! as ESS answers them: HTTP 400 or 403 with `{"Code", "Message", "RequestId"}`
//! (`SignatureDoesNotMatch`, `SignatureNonceUsed`, `InvalidTimeStamp.Expired`,
//! `InvalidSecurityToken.Mismatch`, `LifecycleHookIdAndLifecycleActionToken.Invalid`,
//! `MissingParameter`). Written from the API's documentation, separately from the agent's
//! client; checked against the documented signature example in the unit test.

use base64::Engine;
use hmac::{Hmac, Mac};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};

/// The credentials the stand-in accepts (the metadata stand-in hands them out).
#[derive(Clone, Debug)]
pub struct EssCredentials {
    /// AccessKeyId.
    pub access_key_id: String,
    /// AccessKeySecret.
    pub access_key_secret: String,
    /// SecurityToken.
    pub security_token: String,
}

impl Default for EssCredentials {
    fn default() -> Self {
        EssCredentials {
            access_key_id: "STS.NTestAccessKeyId".into(),
            access_key_secret: "test-access-key-secret".into(),
            security_token: "CAIS-test-security-token".into(),
        }
    }
}

/// A completed action.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Completed {
    /// The hook.
    pub hook_id: String,
    /// CONTINUE or ABANDON.
    pub result: String,
    /// The region the call named.
    pub region: String,
}

#[derive(Default)]
struct State {
    pending: BTreeMap<(String, String), ()>,
    completed: Vec<Completed>,
    nonces: Vec<String>,
    refusals: Vec<String>,
}

/// A running stand-in.
pub struct EssServer {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

impl EssServer {
    /// Starts the stand-in accepting `credentials`.
    pub fn start(credentials: EssCredentials) -> EssServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (state, creds) = (shared.clone(), credentials.clone());
                std::thread::spawn(move || serve(stream, &creds, &state));
            }
        });
        EssServer { addr, state }
    }

    /// `http://127.0.0.1:port/`.
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Holds an instance in a scale-out wait: the action `token` of hook `hook_id`.
    pub fn add_pending(&self, hook_id: &str, token: &str) {
        self.lock()
            .pending
            .insert((hook_id.into(), token.into()), ());
    }

    /// The actions completed so far.
    pub fn completed(&self) -> Vec<Completed> {
        self.lock().completed.clone()
    }

    /// The error codes answered so far.
    pub fn refusals(&self) -> Vec<String> {
        self.lock().refusals.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn serve(stream: std::net::TcpStream, creds: &EssCredentials, state: &Mutex<State>) {
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
            break;
        }
    }
    let target = line.split_whitespace().nth(1).unwrap_or_default();
    let query = target.split_once('?').map(|(_, q)| q).unwrap_or_default();
    let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
    let (status, body) = match answer(query, creds, &mut state) {
        Ok(()) => (200, r#"{"RequestId":"4F0F3C5D-STAND-IN"}"#.to_owned()),
        Err((status, code)) => {
            state.refusals.push(code.to_owned());
            let body = format!(
                r#"{{"RequestId":"4F0F3C5D-STAND-IN","Code":"{code}","Message":"{code}"}}"#
            );
            (status, body)
        }
    };
    drop(state);
    let mut out = stream;
    let _ = write!(
        out,
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

fn answer(
    query: &str,
    creds: &EssCredentials,
    state: &mut State,
) -> Result<(), (u16, &'static str)> {
    let mut params = BTreeMap::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        params.insert(decode(k), decode(v));
    }
    let get = |k: &str| params.get(k).cloned().ok_or((400, "MissingParameter"));
    let signature = get("Signature")?;
    let mut signed = params.clone();
    signed.remove("Signature");
    if sign(&signed, &creds.access_key_secret) != signature {
        return Err((400, "SignatureDoesNotMatch"));
    }
    let fixed = [
        ("Action", "CompleteLifecycleAction"),
        ("Version", "2014-08-28"),
        ("SignatureMethod", "HMAC-SHA1"),
        ("SignatureVersion", "1.0"),
    ];
    for (k, want) in fixed {
        if get(k)? != want {
            return Err((400, "InvalidParameter"));
        }
    }
    if get("AccessKeyId")? != creds.access_key_id {
        return Err((403, "InvalidAccessKeyId.NotFound"));
    }
    if get("SecurityToken")? != creds.security_token {
        return Err((403, "InvalidSecurityToken.Mismatch"));
    }
    let nonce = get("SignatureNonce")?;
    if state.nonces.contains(&nonce) {
        return Err((400, "SignatureNonceUsed"));
    }
    state.nonces.push(nonce);
    let ts = time::OffsetDateTime::parse(
        &get("Timestamp")?,
        &time::format_description::well_known::Rfc3339,
    )
    .map_err(|_| (400, "InvalidTimeStamp.Format"))?;
    if (time::OffsetDateTime::now_utc() - ts).abs() > time::Duration::minutes(15) {
        return Err((400, "InvalidTimeStamp.Expired"));
    }
    let key = (get("LifecycleHookId")?, get("LifecycleActionToken")?);
    let result = get("LifecycleActionResult")?;
    if !matches!(result.as_str(), "CONTINUE" | "ABANDON") {
        return Err((400, "InvalidParameter"));
    }
    if state.pending.remove(&key).is_none() {
        return Err((400, "LifecycleHookIdAndLifecycleActionToken.Invalid"));
    }
    state.completed.push(Completed {
        hook_id: key.0,
        result,
        region: get("RegionId")?,
    });
    Ok(())
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match (
            b[i],
            s.get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok()),
        ) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// RFC 3986 encoding, unreserved characters kept.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The signature version 1.0 of decoded `params`.
pub fn sign(params: &BTreeMap<String, String>, secret: &str) -> String {
    let query: Vec<String> = params
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect();
    let to_sign = format!("GET&%2F&{}", encode(&query.join("&")));
    let mut mac =
        Hmac::<sha1::Sha1>::new_from_slice(format!("{secret}&").as_bytes()).expect("any key");
    mac.update(to_sign.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_example_verifies() {
        let params: BTreeMap<String, String> = [
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
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        assert_eq!(sign(&params, "testsecret"), "OLeaidS1JvxuMvnyHOwuJ+uX5qY=");
    }
}
