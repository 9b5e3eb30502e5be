//! The kubeconfig files node-attach reads (cluster-info's) and writes (the kubelet's).
//!
//! Field names follow client-go's `clientcmd/api/v1` exactly, and rendering keeps client-go's key
//! order, so `kubectl config view` and the kubelet read what we write as if kubeadm had written it.

pub mod merge;

pub use merge::{merge, Selected};

use crate::model::secret::Secret;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::{Deserialize, Serialize};

/// Why a kubeconfig could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KubeconfigError {
    /// The YAML did not parse as a kubeconfig.
    #[error("the kubeconfig is not valid YAML of the expected shape: {0}")]
    Parse(String),
    /// The kubeconfig names no usable cluster.
    #[error("the kubeconfig holds no cluster")]
    NoCluster,
    /// The cluster has no server URL, or not an https one.
    #[error("the kubeconfig's cluster has no https server URL (got {0:?})")]
    BadServer(String),
    /// The cluster's CA data is not base64.
    #[error("the kubeconfig's certificate-authority-data is not valid base64")]
    BadCaData,
    /// A name appears twice in one list of one file (client-go refuses such a file too).
    #[error("the kubeconfig lists {what} {name:?} twice")]
    Duplicate {
        /// `cluster`, `context` or `user`.
        what: &'static str,
        /// The repeated name.
        name: String,
    },
    /// The merged kubeconfig cannot be used the way kubectl would use it.
    #[error("{0}")]
    Unusable(String),
}

/// A kubeconfig file (`kind: Config`, `apiVersion: v1`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Kubeconfig {
    /// Always `v1`.
    #[serde(rename = "apiVersion", default)]
    pub api_version: String,
    /// Named clusters.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub clusters: Vec<NamedCluster>,
    /// Named contexts.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub contexts: Vec<NamedContext>,
    /// The context in use.
    #[serde(rename = "current-context", default)]
    pub current_context: String,
    /// Always `Config`.
    #[serde(default)]
    pub kind: String,
    /// Named users.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub users: Vec<NamedUser>,
}

fn null_as_empty<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
}

/// A cluster entry.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct NamedCluster {
    /// Its connection details.
    pub cluster: Cluster,
    /// Its name (empty in cluster-info).
    #[serde(default)]
    pub name: String,
}

/// How to reach and trust an API server.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Cluster {
    /// Path of a CA file, instead of inline data.
    #[serde(
        rename = "certificate-authority",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub certificate_authority: Option<String>,
    /// Base64 of the CA bundle PEM.
    #[serde(
        rename = "certificate-authority-data",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub certificate_authority_data: Option<String>,
    /// Skip verifying the server's certificate (kubectl honours it; node-attach refuses it).
    #[serde(
        rename = "insecure-skip-tls-verify",
        default,
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub insecure_skip_tls_verify: bool,
    /// A proxy for this cluster (not supported: refused when set).
    #[serde(rename = "proxy-url", default, skip_serializing_if = "Option::is_none")]
    pub proxy_url: Option<String>,
    /// The API server URL.
    #[serde(default)]
    pub server: String,
    /// The name to verify the server's certificate against (not supported: refused when set).
    #[serde(
        rename = "tls-server-name",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub tls_server_name: Option<String>,
}

/// A context entry.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct NamedContext {
    /// The context.
    pub context: Context,
    /// Its name.
    pub name: String,
}

/// A (cluster, user, namespace) triple.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Context {
    /// Cluster name.
    pub cluster: String,
    /// Default namespace.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    /// User name.
    pub user: String,
}

/// A user entry.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct NamedUser {
    /// Its name.
    pub name: String,
    /// Its credentials.
    pub user: User,
}

/// Credentials: a bearer token (inline or in a file), or a client certificate and key (as files
/// or inline). The fields node-attach does not implement are read only to refuse them.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct User {
    /// Impersonation (not supported: refused when set).
    #[serde(rename = "as", default, skip_serializing_if = "Option::is_none")]
    pub impersonate: Option<String>,
    /// An auth-provider plugin (not supported: refused when set).
    #[serde(
        rename = "auth-provider",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub auth_provider: Option<serde_json::Value>,
    /// Client certificate file.
    #[serde(
        rename = "client-certificate",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub client_certificate: Option<String>,
    /// Base64 client certificate.
    #[serde(
        rename = "client-certificate-data",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub client_certificate_data: Option<String>,
    /// Client key file.
    #[serde(
        rename = "client-key",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub client_key: Option<String>,
    /// Base64 client key.
    #[serde(
        rename = "client-key-data",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub client_key_data: Option<String>,
    /// An exec credential plugin (not supported: refused when set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<serde_json::Value>,
    /// Basic auth (not supported: refused when set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// Bearer token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// A file holding the bearer token (read again while in use, as client-go does).
    #[serde(rename = "tokenFile", default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<String>,
    /// Basic auth (not supported: refused when set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
}

/// The cluster part of a kubeconfig, decoded.
#[derive(Clone, Debug, PartialEq)]
pub struct ClusterInfo {
    /// The API server URL (`https://…`).
    pub server: String,
    /// The CA bundle as PEM bytes.
    pub ca_pem: Vec<u8>,
}

impl Kubeconfig {
    /// Parses kubeconfig YAML (or JSON).
    pub fn parse(text: &str) -> Result<Kubeconfig, KubeconfigError> {
        crate::model::strict::yaml(text).map_err(|e| KubeconfigError::Parse(e.to_string()))
    }

    /// Renders the kubeconfig as YAML, keys in client-go's order.
    pub fn to_yaml(&self) -> String {
        serde_yaml_ng::to_string(self)
            .unwrap_or_else(|e| unreachable!("a kubeconfig always serializes: {e}"))
    }

    /// The cluster of the current context, or the only cluster when there is no usable context
    /// (cluster-info's kubeconfig has one cluster named "" and no context).
    pub fn current_cluster(&self) -> Result<ClusterInfo, KubeconfigError> {
        let by_context = self
            .contexts
            .iter()
            .find(|c| c.name == self.current_context)
            .and_then(|c| self.clusters.iter().find(|n| n.name == c.context.cluster));
        let named = match by_context {
            Some(n) => n,
            None => self.clusters.first().ok_or(KubeconfigError::NoCluster)?,
        };
        let server = named.cluster.server.trim().to_owned();
        if !server.starts_with("https://") || server.len() <= "https://".len() {
            return Err(KubeconfigError::BadServer(server));
        }
        let data = named
            .cluster
            .certificate_authority_data
            .as_deref()
            .unwrap_or_default();
        let ca_pem = STANDARD
            .decode(data.trim())
            .map_err(|_| KubeconfigError::BadCaData)?;
        Ok(ClusterInfo { server, ca_pem })
    }

    /// A kubeconfig with one cluster, one user and one context joining them, made current.
    pub fn single(
        cluster_name: &str,
        cluster: Cluster,
        user_name: &str,
        user: User,
        context_name: &str,
        namespace: &str,
    ) -> Kubeconfig {
        Kubeconfig {
            api_version: "v1".into(),
            clusters: vec![NamedCluster {
                cluster,
                name: cluster_name.into(),
            }],
            contexts: vec![NamedContext {
                context: Context {
                    cluster: cluster_name.into(),
                    namespace: namespace.into(),
                    user: user_name.into(),
                },
                name: context_name.into(),
            }],
            current_context: context_name.into(),
            kind: "Config".into(),
            users: vec![NamedUser {
                name: user_name.into(),
                user,
            }],
        }
    }

    /// kubeadm's `bootstrap-kubelet.conf`: the discovered cluster, renamed, with the bootstrap
    /// token as the user's credential. The result holds a secret: write it 0600.
    pub fn bootstrap(cluster_name: &str, info: &ClusterInfo, token: &Secret) -> Kubeconfig {
        let user = "tls-bootstrap-token-user";
        Kubeconfig::single(
            cluster_name,
            Cluster {
                certificate_authority_data: Some(STANDARD.encode(&info.ca_pem)),
                server: info.server.clone(),
                ..Cluster::default()
            },
            user,
            User {
                token: Some(token.expose().to_owned()),
                ..User::default()
            },
            &format!("{user}@{cluster_name}"),
            "",
        )
    }

    /// The kubelet's own `kubelet.conf` after TLS bootstrap, as the kubelet writes it: cluster
    /// `default-cluster`, user `default-auth` with certificate and key both in `cert_path`.
    pub fn kubelet(info: &ClusterInfo, cert_path: &str) -> Kubeconfig {
        Kubeconfig::single(
            "default-cluster",
            Cluster {
                certificate_authority_data: Some(STANDARD.encode(&info.ca_pem)),
                server: info.server.clone(),
                ..Cluster::default()
            },
            "default-auth",
            User {
                client_certificate: Some(cert_path.into()),
                client_key: Some(cert_path.into()),
                ..User::default()
            },
            "default-context",
            "default",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UPSTREAM: &str =
        include_str!("../../../tests/fixtures/upstream/expected-kubeconfig.yaml");

    #[test]
    fn reads_the_upstream_fixture() {
        let cfg = Kubeconfig::parse(UPSTREAM).expect("parse");
        let info = cfg.current_cluster().expect("cluster");
        assert_eq!(info.server, "https://127.0.0.1");
        assert!(info.ca_pem.starts_with(b"-----BEGIN CERTIFICATE-----"));
        // users: null parses as no users
        assert!(cfg.users.is_empty());
    }

    #[test]
    fn renders_in_client_go_order() {
        let cfg = Kubeconfig::parse(UPSTREAM).expect("parse");
        let out = cfg.to_yaml();
        let keys: Vec<&str> = out
            .lines()
            .filter(|l| !l.starts_with(' ') && !l.starts_with('-'))
            .map(|l| l.split(':').next().unwrap_or_default())
            .collect();
        assert_eq!(
            keys,
            [
                "apiVersion",
                "clusters",
                "contexts",
                "current-context",
                "kind",
                "users"
            ]
        );
        assert_eq!(Kubeconfig::parse(&out).expect("reparse"), cfg);
    }

    #[test]
    fn cluster_info_shape_with_empty_name_and_no_context() {
        let text = "apiVersion: v1\nclusters:\n- cluster:\n    certificate-authority-data: LS0t\n    server: https://10.0.0.1:6443\n  name: \"\"\ncontexts: null\ncurrent-context: \"\"\nkind: Config\nusers: null\n";
        let info = Kubeconfig::parse(text)
            .expect("parse")
            .current_cluster()
            .expect("cluster");
        assert_eq!(info.server, "https://10.0.0.1:6443");
        assert_eq!(info.ca_pem, b"---");
    }

    #[test]
    fn refuses_plain_http_and_missing_clusters() {
        let http = "clusters:\n- cluster:\n    server: http://x\n  name: a\n";
        assert!(matches!(
            Kubeconfig::parse(http).expect("parse").current_cluster(),
            Err(KubeconfigError::BadServer(_))
        ));
        assert!(matches!(
            Kubeconfig::parse("kind: Config\n")
                .expect("parse")
                .current_cluster(),
            Err(KubeconfigError::NoCluster)
        ));
        assert!(Kubeconfig::parse("clusters: 7").is_err());
    }

    #[test]
    fn bootstrap_kubeconfig_matches_kubeadm_names() {
        let info = ClusterInfo {
            server: "https://10.0.0.1:6443".into(),
            ca_pem: b"pem".to_vec(),
        };
        let cfg =
            Kubeconfig::bootstrap("kubernetes", &info, &Secret::new("abcdef.0123456789abcdef"));
        assert_eq!(cfg.current_context, "tls-bootstrap-token-user@kubernetes");
        assert_eq!(cfg.users[0].name, "tls-bootstrap-token-user");
        let kubelet = Kubeconfig::kubelet(&info, "/var/lib/kubelet/pki/kubelet-client-current.pem");
        assert_eq!(kubelet.current_context, "default-context");
        assert_eq!(kubelet.contexts[0].context.namespace, "default");
    }
}
