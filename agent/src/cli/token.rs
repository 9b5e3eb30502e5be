//! `node-attach token create|list|delete`: bootstrap tokens, run where an admin kubeconfig is.

use crate::client::kube::Kube;
use crate::error::{Code, Failure};
use crate::model::token::BootstrapToken;
use crate::operator::bootstrap_tokens::{self as tokens, NewToken, DEFAULT_GROUP};
use crate::report::Reporter;
use std::path::PathBuf;
use std::time::Duration;

/// Manage bootstrap tokens (run where an admin kubeconfig is).
#[derive(Clone, Debug, clap::Args)]
pub struct TokenArgs {
    /// The action.
    #[command(subcommand)]
    pub action: TokenAction,

    /// Admin kubeconfig (default: $KUBECONFIG, then /etc/kubernetes/admin.conf).
    #[arg(long, global = true, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
}

/// What to do.
#[derive(Clone, Debug, clap::Subcommand)]
pub enum TokenAction {
    /// Create a token (and the RBAC rules joining needs), print how to join with it.
    Create(CreateArgs),
    /// List tokens (ids, expiry, usages, groups; secrets only with --show-secret).
    List {
        /// Print the full tokens.
        #[arg(long)]
        show_secret: bool,
    },
    /// Create an openapi token for `node-attach serve`: bound to a values file, with a TTL and
    /// a use limit; each use mints a fresh short-lived bootstrap token.
    Openapi(OpenapiArgs),
    /// Delete a token.
    Delete {
        /// The token id (or the whole ID.SECRET).
        id: String,
    },
}

/// `token create`.
#[derive(Clone, Debug, clap::Args)]
pub struct CreateArgs {
    /// Time to live, e.g. 24h; 0 never expires (discouraged).
    #[arg(long, default_value = "24h", value_parser = crate::model::duration::parse)]
    pub ttl: Duration,
    /// Human-readable description.
    #[arg(long)]
    pub description: Option<String>,
    /// Extra groups (system:bootstrappers:…), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = DEFAULT_GROUP)]
    pub groups: Vec<String>,
    /// Print a join command.
    #[arg(long)]
    pub print_join_command: bool,
    /// Print ready userdata.
    #[arg(long, value_name = "FORM")]
    pub print_userdata: Option<UserdataForm>,
    /// Where attach.sh is served, for the one-liner and userdata.
    #[arg(long, value_name = "URL")]
    pub base_url: Option<String>,
    /// The endpoint nodes should use (default: the kubeconfig's server).
    #[arg(long, value_name = "HOST:PORT")]
    pub endpoint: Option<String>,
}

/// `token openapi`.
#[derive(Clone, Debug, clap::Args)]
pub struct OpenapiArgs {
    /// The cluster values (node-attach.io/v1 ClusterValues JSON; bootstrapToken is minted per
    /// use and must not be given; endpoint and CA pin default to the kubeconfig's).
    #[arg(long, value_name = "FILE")]
    pub values: PathBuf,
    /// How many nodes may use it.
    #[arg(long, default_value_t = 1)]
    pub uses: u32,
    /// Time to live.
    #[arg(long, default_value = "24h", value_parser = crate::model::duration::parse)]
    pub ttl: Duration,
    /// Namespace of the values service's Secrets.
    #[arg(long, default_value = "node-attach")]
    pub namespace: String,
    /// The values service's public URL, to print the values URL.
    #[arg(long, value_name = "URL")]
    pub public_url: Option<String>,
    /// Where attach.sh is served, to print the one-liner.
    #[arg(long, value_name = "URL")]
    pub base_url: Option<String>,
    /// Description.
    #[arg(long)]
    pub description: Option<String>,
}

/// Userdata forms.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum UserdataForm {
    /// `#!/bin/bash`.
    Bash,
    /// `#cloud-config`.
    CloudConfig,
}

fn admin(args: &TokenArgs) -> Result<(Kube, String, String), Failure> {
    super::serve::admin_client(&args.kubeconfig)
}

fn api(e: crate::client::kube::KubeError) -> Failure {
    Failure::new(Code::ClusterConfig, e.to_string())
}

/// Runs the token command.
pub async fn run(args: TokenArgs, reporter: &mut Reporter) -> Result<(), Failure> {
    let (kube, pin, server_endpoint) = admin(&args)?;
    match args.action {
        TokenAction::Create(c) => {
            for g in &c.groups {
                if !tokens::valid_group(g) {
                    return Err(Failure::new(
                        Code::Usage,
                        format!(
                            "invalid --groups entry {g:?}: expected system:bootstrappers:<name>"
                        ),
                    ));
                }
            }
            let token = BootstrapToken::generate()
                .map_err(|e| Failure::new(Code::Internal, e.to_string()))?;
            let new = NewToken {
                token: token.clone(),
                ttl: (!c.ttl.is_zero()).then_some(c.ttl),
                usages: vec!["signing".into(), "authentication".into()],
                groups: c.groups.clone(),
                description: c.description.clone(),
            };
            let secret = tokens::secret_for(&new, time::OffsetDateTime::now_utc());
            kube.post("/api/v1/namespaces/kube-system/secrets", &secret)
                .await
                .map_err(api)?;
            let changes = tokens::ensure_cluster_rbac(&kube, &c.groups)
                .await
                .map_err(|e| Failure::new(Code::ClusterConfig, e.to_string()))?;
            for ch in &changes {
                reporter.notice(&format!("RBAC: {ch}"));
            }
            let endpoint = c.endpoint.clone().unwrap_or(server_endpoint);
            let full = token.expose_full();
            let mut text = format!("{}\n", full.expose());
            let flags = format!("--endpoint {endpoint} --discovery-token-ca-cert-hash {pin}");
            if c.print_join_command {
                text = match &c.base_url {
                    Some(base) => format!(
                        "curl -fsSL {base}/attach.sh | NODE_ATTACH_TOKEN='{}' bash -s -- {flags}\n",
                        full.expose()
                    ),
                    None => format!(
                        "NODE_ATTACH_TOKEN='{}' node-attach join {flags}\n",
                        full.expose()
                    ),
                };
            }
            if let Some(form) = c.print_userdata {
                let base = c.base_url.clone().ok_or_else(|| {
                    Failure::new(
                        Code::Usage,
                        "--print-userdata needs --base-url (where attach.sh is served)",
                    )
                })?;
                text = match form {
                    UserdataForm::Bash => format!(
                        "#!/bin/bash\n# node-attach userdata (token expires in {:?})\nset -euo pipefail\ncurl -fsSL --retry 5 --retry-connrefused {base}/attach.sh | NODE_ATTACH_TOKEN='{}' bash -s -- {flags}\n",
                        c.ttl,
                        full.expose()
                    ),
                    UserdataForm::CloudConfig => format!(
                        "#cloud-config\n# node-attach userdata (token expires in {:?})\nwrite_files:\n  - path: /etc/node-attach/config.yaml\n    owner: root:root\n    permissions: \"0600\"\n    content: |\n      token: \"{}\"\n      endpoint: \"{endpoint}\"\n      discovery-token-ca-cert-hash: [\"{pin}\"]\nruncmd:\n  - [sh, -c, \"curl -fsSL --retry 5 --retry-connrefused {base}/attach.sh | bash -s -- --config /etc/node-attach/config.yaml\"]\n",
                        c.ttl,
                        full.expose()
                    ),
                };
            }
            let view = serde_json::json!({"id": token.id(), "token": full.expose(), "ca_pin": pin, "endpoint": endpoint, "rbac_changes": changes});
            reporter.result(&view, &text);
        }
        TokenAction::List { show_secret } => {
            let list = tokens::list(&kube, show_secret).await.map_err(api)?;
            let mut text = format!(
                "{:<24} {:<22} {:<28} {}\n",
                "TOKEN", "EXPIRES", "USAGES", "GROUPS"
            );
            for t in &list {
                text.push_str(&format!(
                    "{:<24} {:<22} {:<28} {}\n",
                    t.token
                        .clone()
                        .unwrap_or_else(|| format!("{}.<hidden>", t.id)),
                    t.expires.clone().unwrap_or_else(|| "<never>".into()),
                    t.usages.join(","),
                    t.groups.join(",")
                ));
            }
            reporter.result(&list, &text);
        }
        TokenAction::Openapi(o) => {
            let text = std::fs::read_to_string(&o.values).map_err(|e| {
                Failure::new(Code::Usage, format!("--values {}: {e}", o.values.display()))
            })?;
            let mut values: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| Failure::new(Code::Usage, format!("--values: not JSON: {e}")))?;
            if !values["bootstrapToken"].is_null() {
                return Err(Failure::new(
                    Code::Usage,
                    "--values must not hold a bootstrapToken: one is minted for each use",
                ));
            }
            // Validate as a node would, with a placeholder token.
            let mut probe = values.clone();
            probe["bootstrapToken"] = serde_json::json!("abcdef.0123456789abcdef");
            crate::sources::values::schema::parse(&probe.to_string())
                .map_err(|e| Failure::new(Code::Usage, format!("--values: {e}")))?;
            values.as_object_mut().map(|m| m.remove("bootstrapToken"));
            let token = crate::model::token::random_token_chars(32)
                .map_err(|e| Failure::new(Code::Internal, e.to_string()))?;
            let ns = serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": o.namespace}});
            if kube
                .get(&format!("/api/v1/namespaces/{}", o.namespace))
                .await
                .map_err(api)?
                .is_none()
            {
                kube.post("/api/v1/namespaces", &ns).await.map_err(api)?;
            }
            let record = crate::operator::serve::store::Record {
                hash: crate::operator::serve::store::token_hash(&token),
                values,
                expires: if o.ttl.is_zero() {
                    0
                } else {
                    time::OffsetDateTime::now_utc().unix_timestamp() + o.ttl.as_secs() as i64
                },
                uses_left: o.uses,
                uses: Vec::new(),
                description: o.description.clone().unwrap_or_default(),
            };
            let store = crate::operator::serve::store::Store {
                kube: &kube,
                namespace: o.namespace.clone(),
            };
            store
                .create(&record)
                .await
                .map_err(|e| Failure::new(Code::ClusterConfig, e.to_string()))?;
            let mut text = format!("{token}\n");
            if let Some(public) = &o.public_url {
                let values_url = format!("{}/v1/values/{{token}}", public.trim_end_matches('/'));
                text = match &o.base_url {
                    Some(base) => format!("curl -fsSL {base}/attach.sh | NODE_ATTACH_OPENAPI_TOKEN='{token}' bash -s -- --values-url '{values_url}'\n"),
                    None => format!("NODE_ATTACH_OPENAPI_TOKEN='{token}' node-attach join --values-url '{values_url}'\n"),
                };
            }
            let _ = (&pin, &server_endpoint);
            reporter.result(
                &serde_json::json!({"token": token, "uses": o.uses, "namespace": o.namespace}),
                &text,
            );
        }
        TokenAction::Delete { id } => {
            let id = id.split('.').next().unwrap_or_default().to_owned();
            if id.len() != 6
                || !id
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            {
                return Err(Failure::new(
                    Code::Usage,
                    "expected a token id ([a-z0-9]{6}) or ID.SECRET",
                ));
            }
            let gone = kube
                .delete(&format!(
                    "/api/v1/namespaces/kube-system/secrets/bootstrap-token-{id}"
                ))
                .await
                .map_err(api)?;
            let text = if gone {
                format!("bootstrap token {id} deleted\n")
            } else {
                format!("bootstrap token {id} was not there\n")
            };
            reporter.result(&serde_json::json!({"id": id, "deleted": gone}), &text);
        }
    }
    Ok(())
}
