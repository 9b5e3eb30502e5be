//! A stand-in for `/usr/bin/kubelet`, because no kubelet binary is packaged on these machines.
//! It does the part of the kubelet's job that node-attach depends on, the way the kubelet does
//! it: reads the command line systemd gives it (or, with `--root`, kubeadm-flags.env from a
//! scratch tree), waits for `--kubeconfig`, and registers the Node with its client certificate
//! (labels from `--node-labels`, taints from `--register-with-taints`, providerID from the
//! config file, addresses, a Ready condition), then keeps posting Ready until stopped. It records
//! its command line and the files it read in `--record FILE` (default, on a real root,
//! `/var/lib/kubelet-standin/record.json`).
//! With only `--bootstrap-kubeconfig` it does the kubelet's own TLS bootstrap, as a kubelet of
//! the API server's version would (usages and CSR API by version). With `--run-pods` it also
//! plays the kubelet's part for Pods bound to its Node: marks them Running and Ready, and
//! finishes their deletion (grace period 0) once the API server marks them for it, so drains and
//! PodDisruptionBudgets behave as they do on a real node.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Args {
    root: PathBuf,
    flags: BTreeMap<String, String>,
    once: bool,
    run_pods: bool,
    wait: Duration,
    argv: Vec<String>,
    record: Option<PathBuf>,
}

/// What `kubelet --version` prints: the version in /etc/kubelet-standin.version when present
/// (the e2e test matches it to the test control plane), else v1.31.2.
fn print_version() -> ! {
    let v = std::fs::read_to_string("/etc/kubelet-standin.version")
        .unwrap_or_else(|_| "v1.31.2".into());
    println!("Kubernetes {}", v.trim());
    std::process::exit(0)
}

fn parse_args() -> Args {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.iter().any(|a| a == "--version") {
        print_version();
    }
    let mut flags = BTreeMap::new();
    let mut root = PathBuf::from("/");
    let mut once = false;
    let mut run_pods = false;
    let mut wait = Duration::from_secs(300);
    let mut record = None;
    let mut it = argv.iter();
    while let Some(a) = it.next() {
        if a == "--once" {
            once = true;
            continue;
        }
        if a == "--run-pods" {
            run_pods = true;
            continue;
        }
        let Some(flag) = a.strip_prefix("--") else {
            continue;
        };
        let (k, v) = match flag.split_once('=') {
            Some((k, v)) => (k.to_owned(), v.to_owned()),
            None => (flag.to_owned(), it.next().cloned().unwrap_or_default()),
        };
        match k.as_str() {
            "root" => root = PathBuf::from(v),
            "wait-seconds" => wait = Duration::from_secs(v.parse().unwrap_or(300)),
            "record" => record = Some(PathBuf::from(v)),
            _ => {
                flags.insert(k, v);
            }
        }
    }
    if record.is_none() && root == Path::new("/") {
        record = Some(PathBuf::from("/var/lib/kubelet-standin/record.json"));
    }
    Args {
        root,
        flags,
        once,
        run_pods,
        wait,
        argv,
        record,
    }
}

fn under(root: &Path, p: &str) -> PathBuf {
    root.join(p.trim_start_matches('/'))
}

/// kubeadm-flags.env's KUBELET_KUBEADM_ARGS, as systemd would expand it.
fn flags_env(root: &Path) -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(under(root, "/var/lib/kubelet/kubeadm-flags.env"))
        .unwrap_or_default();
    let mut out = BTreeMap::new();
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("KUBELET_KUBEADM_ARGS=") {
            for arg in v.trim_matches('"').split_whitespace() {
                if let Some((k, val)) = arg.trim_start_matches("--").split_once('=') {
                    out.insert(k.to_owned(), val.to_owned());
                }
            }
        }
    }
    out
}

/// Reads a path inside the root, following a symlink whose target is an absolute node path.
fn read_in_root(root: &Path, p: &str) -> Option<Vec<u8>> {
    let real = under(root, p);
    match std::fs::read_link(&real) {
        Ok(target) => std::fs::read(under(root, &target.to_string_lossy())).ok(),
        Err(_) => std::fs::read(real).ok(),
    }
}

struct Client {
    tls: tokio_rustls::TlsConnector,
    host: String,
    port: u16,
    bearer: Option<String>,
}

impl Client {
    async fn request(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: &Value,
    ) -> Result<(u16, String), String> {
        let tcp = tokio::net::TcpStream::connect((self.host.trim_matches(['[', ']']), self.port))
            .await
            .map_err(|e| e.to_string())?;
        let name = ServerName::try_from(self.host.trim_matches(['[', ']']).to_owned())
            .map_err(|e| e.to_string())?;
        let mut tls = self
            .tls
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        let body = body.to_string();
        let auth = self
            .bearer
            .as_ref()
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let req = format!(
            // HTTP/1.0: the answer comes whole, never chunked.
        "{method} {path} HTTP/1.0\r\nHost: {}:{}\r\n{auth}Accept: application/json\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nUser-Agent: kubelet-standin\r\nConnection: close\r\n\r\n{body}",
            self.host,
            self.port,
            body.len()
        );
        tls.write_all(req.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut resp = Vec::new();
        let _ = tls.read_to_end(&mut resp).await;
        let text = String::from_utf8_lossy(&resp).into_owned();
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        Ok((status, text))
    }
}

fn client(kubeconfig: &Value, root: &Path) -> Result<Client, String> {
    let cluster = &kubeconfig["clusters"][0]["cluster"];
    let user = &kubeconfig["users"][0]["user"];
    let server = url_parts(cluster["server"].as_str().ok_or("no server")?)?;
    let ca = STANDARD
        .decode(
            cluster["certificate-authority-data"]
                .as_str()
                .ok_or("no CA data")?,
        )
        .map_err(|e| e.to_string())?;
    let pair = match user["client-certificate"].as_str() {
        Some(p) => read_in_root(root, p).ok_or("client certificate unreadable")?,
        None => {
            return Err(
                "no client certificate in the kubeconfig (bootstrap is the kubelet's own job)"
                    .into(),
            )
        }
    };
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(&ca).flatten() {
        roots.add(c).map_err(|e| e.to_string())?;
    }
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(&pair).flatten().collect();
    let key = PrivateKeyDer::from_pem_slice(&pair).map_err(|e| e.to_string())?;
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| e.to_string())?;
    Ok(Client {
        tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
        host: server.0,
        port: server.1,
        bearer: None,
    })
}

fn url_parts(server: &str) -> Result<(String, u16), String> {
    let rest = server
        .strip_prefix("https://")
        .ok_or("server is not https")?;
    let rest = rest.trim_end_matches('/');
    let (host, port) = rest.rsplit_once(':').ok_or("server has no port")?;
    Ok((host.to_owned(), port.parse().map_err(|_| "bad port")?))
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = parse_args();
    let root = args.root.clone();
    let mut flags = args.flags.clone();
    let kubeconfig_path = flags
        .get("kubeconfig")
        .cloned()
        .unwrap_or_else(|| "/etc/kubernetes/kubelet.conf".into());
    let config_path = flags
        .get("config")
        .cloned()
        .unwrap_or_else(|| "/var/lib/kubelet/config.yaml".into());
    let started = Instant::now();
    let bootstrap_path = flags
        .get("bootstrap-kubeconfig")
        .cloned()
        .unwrap_or_else(|| "/etc/kubernetes/bootstrap-kubelet.conf".into());
    let kubeconfig_text = loop {
        if let Some(b) = read_in_root(&root, &kubeconfig_path) {
            break String::from_utf8_lossy(&b).into_owned();
        }
        if let Some(b) = read_in_root(&root, &bootstrap_path) {
            // The kubelet's own TLS bootstrap (--tls-bootstrap=kubelet).
            if let Err(e) = bootstrap(
                &root,
                &String::from_utf8_lossy(&b),
                &kubeconfig_path,
                &flags,
            )
            .await
            {
                eprintln!("kubelet-standin: TLS bootstrap failed: {e}");
                std::process::exit(1);
            }
            continue;
        }
        if started.elapsed() > args.wait {
            eprintln!("kubelet-standin: {kubeconfig_path} never appeared");
            std::process::exit(1);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    if root != Path::new("/") {
        // What systemd would have expanded from the drop-in's EnvironmentFile.
        for (k, v) in flags_env(&root) {
            flags.entry(k).or_insert(v);
        }
    }
    let config_text = read_in_root(&root, &config_path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    if let Some(record) = &args.record {
        if let Some(dir) = record.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let view = json!({"argv": args.argv, "flags": flags, "config": config_text});
        let _ = std::fs::write(record, serde_json::to_vec_pretty(&view).unwrap_or_default());
    }
    let kubeconfig: Value = serde_yaml_ng::from_str(&kubeconfig_text).unwrap_or(Value::Null);
    let client = match client(&kubeconfig, &root) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("kubelet-standin: {e}");
            std::process::exit(1);
        }
    };
    let config: Value = serde_yaml_ng::from_str(&config_text).unwrap_or(Value::Null);
    let hostname = nix_hostname();
    let name = flags
        .get("hostname-override")
        .cloned()
        .unwrap_or(hostname.clone());
    let mut labels = serde_json::Map::new();
    labels.insert("kubernetes.io/hostname".into(), json!(name));
    labels.insert("kubernetes.io/os".into(), json!("linux"));
    labels.insert(
        "kubernetes.io/arch".into(),
        json!(if cfg!(target_arch = "aarch64") {
            "arm64"
        } else {
            "amd64"
        }),
    );
    if let Some(l) = flags.get("node-labels") {
        for kv in l.split(',').filter(|s| !s.is_empty()) {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            labels.insert(k.into(), json!(v));
        }
    }
    let taints: Vec<Value> = flags
        .get("register-with-taints")
        .map(|t| {
            t.split(',')
                .filter(|s| !s.is_empty())
                .map(|t| {
                    let (kv, effect) = t.rsplit_once(':').unwrap_or((t, "NoSchedule"));
                    let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                    json!({"key": k, "value": v, "effect": effect})
                })
                .collect()
        })
        .unwrap_or_default();
    let mut spec = json!({});
    if !taints.is_empty() {
        spec["taints"] = json!(taints);
    }
    if let Some(p) = config["providerID"]
        .as_str()
        .or(flags.get("provider-id").map(String::as_str))
    {
        spec["providerID"] = json!(p);
    }
    let ip = flags
        .get("node-ip")
        .cloned()
        .unwrap_or_else(|| "127.0.0.1".into());
    let status = |now: &str| {
        json!({
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "kubelet-standin is posting ready status", "lastHeartbeatTime": now, "lastTransitionTime": now}],
            "addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": hostname}],
            "nodeInfo": {"kubeletVersion": "v0.0.0-standin", "containerRuntimeVersion": flags.get("container-runtime-endpoint").cloned().unwrap_or_default()},
        })
    };
    let now = test_control_plane::store::now_rfc3339();
    let node = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels}, "spec": spec, "status": status(&now)});
    match client
        .request("POST", "/api/v1/nodes", "application/json", &node)
        .await
    {
        Ok((201, _)) => eprintln!("kubelet-standin: registered node {name}"),
        Ok((409, _)) => eprintln!("kubelet-standin: node {name} already registered"),
        Ok((code, text)) => {
            eprintln!(
                "kubelet-standin: registering {name} failed: HTTP {code}: {}",
                text.lines().last().unwrap_or("")
            );
            std::process::exit(1);
        }
        Err(e) => {
            eprintln!("kubelet-standin: registering {name} failed: {e}");
            std::process::exit(1);
        }
    }
    if args.once && !args.run_pods {
        return;
    }
    let mut last_heartbeat = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(if args.run_pods {
            300
        } else {
            10_000
        }))
        .await;
        if args.run_pods {
            run_pods(&client, &name).await;
        }
        if last_heartbeat.elapsed() < Duration::from_secs(10) {
            continue;
        }
        last_heartbeat = Instant::now();
        let now = test_control_plane::store::now_rfc3339();
        let _ = client
            .request(
                "PATCH",
                &format!("/api/v1/nodes/{name}/status"),
                "application/merge-patch+json",
                &json!({"status": status(&now)}),
            )
            .await;
    }
}

/// The body of a raw HTTP answer, as JSON (Null when absent or not JSON).
fn body_json(text: &str) -> Value {
    text.split_once("\r\n\r\n")
        .and_then(|(_, b)| serde_json::from_str(b).ok())
        .unwrap_or(Value::Null)
}

/// The kubelet's part for Pods bound to this node: Pending ones become Running and Ready;
/// ones marked for deletion are deleted for good, as the kubelet does once their containers
/// are gone.
async fn run_pods(client: &Client, node: &str) {
    let list = match client
        .request(
            "GET",
            &format!("/api/v1/pods?fieldSelector=spec.nodeName%3D{node}"),
            "application/json",
            &Value::Null,
        )
        .await
    {
        Ok((200, text)) => body_json(&text),
        _ => return,
    };
    let now = test_control_plane::store::now_rfc3339();
    for pod in list["items"].as_array().into_iter().flatten() {
        let ns = pod["metadata"]["namespace"].as_str().unwrap_or_default();
        let name = pod["metadata"]["name"].as_str().unwrap_or_default();
        let path = format!("/api/v1/namespaces/{ns}/pods/{name}");
        if !pod["metadata"]["deletionTimestamp"].is_null() {
            let _ = client
                .request(
                    "DELETE",
                    &path,
                    "application/json",
                    &json!({"gracePeriodSeconds": 0}),
                )
                .await;
        } else if pod["status"]["phase"] != "Running" {
            let ready = |t: &str| json!({"type": t, "status": "True", "lastTransitionTime": now});
            let status = json!({"status": {"phase": "Running", "startTime": now,
                "conditions": [ready("Initialized"), ready("Ready"), ready("ContainersReady"), ready("PodScheduled")]}});
            let _ = client
                .request(
                    "PATCH",
                    &format!("{path}/status"),
                    "application/merge-patch+json",
                    &status,
                )
                .await;
        }
    }
}

/// The API server's minor version (a stand-in kubelet behaves as a kubelet of that version).
async fn server_minor(client: &Client) -> u32 {
    match client
        .request("GET", "/version", "application/json", &Value::Null)
        .await
    {
        Ok((200, text)) => body_json(&text)["minor"]
            .as_str()
            .and_then(|m| m.trim_end_matches('+').parse().ok())
            .unwrap_or(99),
        _ => 99,
    }
}

fn nix_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

/// The kubelet's TLS bootstrap, as the stand-in does it: a key and a CSR made with the bootstrap
/// token, the issued certificate stored like the kubelet's certificate store, kubelet.conf.
async fn bootstrap(
    root: &Path,
    bootstrap_text: &str,
    kubeconfig_path: &str,
    flags: &BTreeMap<String, String>,
) -> Result<(), String> {
    let cfg: Value = serde_yaml_ng::from_str(bootstrap_text).map_err(|e| e.to_string())?;
    let cluster = &cfg["clusters"][0]["cluster"];
    let server = cluster["server"].as_str().ok_or("no server")?.to_owned();
    let ca_b64 = cluster["certificate-authority-data"]
        .as_str()
        .ok_or("no CA")?
        .to_owned();
    let token = cfg["users"][0]["user"]["token"]
        .as_str()
        .ok_or("no token")?
        .to_owned();
    let mut all = flags.clone();
    if root != Path::new("/") {
        for (k, v) in flags_env(root) {
            all.entry(k).or_insert(v);
        }
    }
    let name = all
        .get("hostname-override")
        .cloned()
        .unwrap_or_else(nix_hostname);
    let ca = STANDARD.decode(&ca_b64).map_err(|e| e.to_string())?;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(&ca).flatten() {
        roots.add(c).map_err(|e| e.to_string())?;
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let (host, port) = url_parts(&server)?;
    let client = Client {
        tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
        host,
        port,
        bearer: Some(token),
    };
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let mut params = rcgen::CertificateParams::default();
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::OrganizationName, "system:nodes");
    dn.push(rcgen::DnType::CommonName, format!("system:node:{name}"));
    params.distinguished_name = dn;
    let csr = params
        .serialize_request(&key)
        .map_err(|e| e.to_string())?
        .pem()
        .map_err(|e| e.to_string())?;
    // Named by its key, as the kubelet's digested name is: a rerun with a new key never
    // picks up an older CSR issued for another key.
    let key_id: String = {
        use sha2::Digest;
        sha2::Sha256::digest(key.public_key_raw())
            .iter()
            .take(5)
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    let csr_name = format!("node-csr-standin-{name}-{key_id}");
    // As the kubelet of the server's version asks: key encipherment before 1.25, v1beta1
    // before 1.19 (pkg/kubelet/certificate/bootstrap, client-go util/certificate/csr).
    let minor = server_minor(&client).await;
    let usages: &[&str] = if minor < 25 {
        &["digital signature", "key encipherment", "client auth"]
    } else {
        &["digital signature", "client auth"]
    };
    let api = if minor < 19 { "v1beta1" } else { "v1" };
    let body = json!({"apiVersion": format!("certificates.k8s.io/{api}"), "kind": "CertificateSigningRequest", "metadata": {"name": csr_name},
        "spec": {"request": STANDARD.encode(csr), "signerName": "kubernetes.io/kube-apiserver-client-kubelet", "usages": usages}});
    let (code, text) = client
        .request(
            "POST",
            &format!("/apis/certificates.k8s.io/{api}/certificatesigningrequests"),
            "application/json",
            &body,
        )
        .await?;
    if code != 201 && code != 409 {
        return Err(format!(
            "creating the CSR: HTTP {code}: {}",
            text.lines().last().unwrap_or("")
        ));
    }
    let started = Instant::now();
    let cert = loop {
        let (code, text) = client
            .request(
                "GET",
                &format!("/apis/certificates.k8s.io/{api}/certificatesigningrequests/{csr_name}"),
                "application/json",
                &Value::Null,
            )
            .await?;
        let obj: Value = text
            .split("\r\n\r\n")
            .nth(1)
            .and_then(|b| serde_json::from_str(b).ok())
            .unwrap_or(Value::Null);
        if code == 200 {
            if let Some(c) = obj["status"]["certificate"].as_str() {
                break STANDARD.decode(c).map_err(|e| e.to_string())?;
            }
        }
        if started.elapsed() > Duration::from_secs(60) {
            return Err("the CSR was not signed within 60 s".into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut pair = cert;
    pair.extend_from_slice(key.serialize_pem().as_bytes());
    let pki = under(root, "/var/lib/kubelet/pki");
    std::fs::create_dir_all(&pki).map_err(|e| e.to_string())?;
    let file = "kubelet-client-standin.pem";
    std::fs::write(pki.join(file), &pair).map_err(|e| e.to_string())?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(pki.join(file), std::fs::Permissions::from_mode(0o600))
        .map_err(|e| e.to_string())?;
    let _ = std::fs::remove_file(pki.join("kubelet-client-current.pem"));
    std::os::unix::fs::symlink(
        format!("/var/lib/kubelet/pki/{file}"),
        pki.join("kubelet-client-current.pem"),
    )
    .map_err(|e| e.to_string())?;
    let conf = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- cluster:\n    certificate-authority-data: {ca_b64}\n    server: {server}\n  name: default-cluster\ncontexts:\n- context:\n    cluster: default-cluster\n    namespace: default\n    user: default-auth\n  name: default-context\ncurrent-context: default-context\nusers:\n- name: default-auth\n  user:\n    client-certificate: /var/lib/kubelet/pki/kubelet-client-current.pem\n    client-key: /var/lib/kubelet/pki/kubelet-client-current.pem\n"
    );
    let target = under(root, kubeconfig_path);
    std::fs::write(&target, conf).map_err(|e| e.to_string())?;
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| e.to_string())?;
    Ok(())
}
