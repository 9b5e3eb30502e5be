//! Loopback stand-ins for the cloud metadata services (Alibaba Cloud ECS in hardened or normal
//! mode, AWS IMDSv2, and one that never answers), recording every request.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};

/// How the stand-in behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetadataMode {
    /// ECS with `HttpTokens=required`: GETs need the session token.
    AliyunHardened,
    /// ECS in normal mode: the token PUT is refused, GETs work without it.
    AliyunNormal,
    /// EC2 IMDSv2.
    Aws,
    /// Accepts connections and never answers.
    Silent,
    /// EC2 IMDSv2 whose token answer is 64 KiB (a broken or hostile service).
    OversizedToken,
    /// ECS in hardened mode that answers the first request for each path 503 (a service
    /// briefly unavailable, or throttling), then as [`MetadataMode::AliyunHardened`].
    AliyunFlaky,
}

/// One request seen.
#[derive(Clone, Debug)]
pub struct Seen {
    /// Method.
    pub method: String,
    /// Path.
    pub path: String,
    /// Whether a session token header was sent.
    pub with_token: bool,
}

/// A running stand-in.
pub struct MetadataServer {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

const TOKEN: &str = "metadata-session-token";

impl MetadataServer {
    /// Starts a stand-in on loopback.
    pub fn start(mode: MetadataMode) -> MetadataServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for stream in listener.incoming().flatten() {
                if mode == MetadataMode::Silent {
                    held.push(stream);
                    continue;
                }
                let log = log.clone();
                std::thread::spawn(move || serve(stream, mode, &log));
            }
        });
        MetadataServer { addr, seen }
    }

    /// `http://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests seen so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

fn answer(mode: MetadataMode, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let aws = matches!(mode, MetadataMode::Aws | MetadataMode::OversizedToken);
    if method == "PUT" && path == "/latest/api/token" {
        return match mode {
            MetadataMode::AliyunNormal => (403, "forbidden".into()),
            MetadataMode::OversizedToken => (200, "t".repeat(64 * 1024)),
            _ => (200, TOKEN.into()),
        };
    }
    let needs_token = mode == MetadataMode::AliyunHardened || aws;
    if needs_token && token != Some(TOKEN) {
        return (401, "unauthorized".into());
    }
    let value = if aws {
        match path {
            "/latest/meta-data/instance-id" => "i-0abc123def",
            "/latest/meta-data/placement/region" => "us-east-1",
            "/latest/meta-data/placement/availability-zone" => "us-east-1a",
            "/latest/meta-data/local-ipv4" => "10.1.2.3",
            "/latest/meta-data/local-hostname" => "ip-10-1-2-3.ec2.internal",
            "/latest/meta-data/instance-type" => "m5.large",
            _ => return (404, "not found".into()),
        }
    } else {
        let creds = crate::ess::EssCredentials::default();
        let ram = format!(
            r#"{{"AccessKeyId":"{}","AccessKeySecret":"{}","Expiration":"2099-01-01T00:00:00Z","SecurityToken":"{}","LastUpdated":"2026-01-01T00:00:00Z","Code":"Success"}}"#,
            creds.access_key_id, creds.access_key_secret, creds.security_token
        );
        match path {
            "/latest/meta-data/ram/security-credentials/" => "KubernetesWorkerRole",
            "/latest/meta-data/ram/security-credentials/KubernetesWorkerRole" => return (200, ram),
            "/latest/meta-data/instance-id" => "i-bp1abc",
            "/latest/meta-data/region-id" => "cn-hangzhou",
            "/latest/meta-data/zone-id" => "cn-hangzhou-h",
            "/latest/meta-data/private-ipv4" => "192.168.0.7",
            "/latest/meta-data/hostname" => "iz-bp1abc",
            "/latest/meta-data/instance/instance-type" => "ecs.g7.large",
            _ => return (404, "not found".into()),
        }
    };
    (200, value.into())
}

fn serve(stream: std::net::TcpStream, mode: MetadataMode, log: &Mutex<Vec<Seen>>) {
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_owned();
    let path = parts.next().unwrap_or_default().to_owned();
    let mut token = None;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            let k = k.trim().to_ascii_lowercase();
            if k == "x-aliyun-ecs-metadata-token" || k == "x-aws-ec2-metadata-token" {
                token = Some(v.trim().to_owned());
            }
        }
    }
    let first = {
        let mut log = log.lock().unwrap_or_else(|p| p.into_inner());
        let first = !log.iter().any(|s| s.method == method && s.path == path);
        log.push(Seen {
            method: method.clone(),
            path: path.clone(),
            with_token: token.is_some(),
        });
        first
    };
    let (status, body) = match mode {
        MetadataMode::AliyunFlaky if first => (503, "service unavailable".into()),
        MetadataMode::AliyunFlaky => answer(
            MetadataMode::AliyunHardened,
            &method,
            &path,
            token.as_deref(),
        ),
        _ => answer(mode, &method, &path, token.as_deref()),
    };
    let mut out = stream;
    let _ = write!(
        out,
        "HTTP/1.1 {status} X\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}
