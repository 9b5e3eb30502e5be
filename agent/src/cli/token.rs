//! `node-attach token create|list|delete`: bootstrap tokens, run where an admin kubeconfig is.

use crate::client::kube::{paths, Kube};
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
        TokenAction::Create(c) => create(&kube, &pin, server_endpoint, &c, reporter).await,
        TokenAction::List { show_secret } => list(&kube, show_secret, reporter).await,
        TokenAction::Openapi(o) => openapi(&kube, &o, reporter).await,
        TokenAction::Delete { id } => delete(&kube, &id, reporter).await,
    }
}

/// `token create`: the Secret as kubeadm writes it, the RBAC joining needs, and how to join.
async fn create(
    kube: &Kube,
    pin: &str,
    server_endpoint: String,
    c: &CreateArgs,
    reporter: &mut Reporter,
) -> Result<(), Failure> {
    if let Some(g) = c.groups.iter().find(|g| !tokens::valid_group(g)) {
        return Err(Failure::new(
            Code::Usage,
            format!("invalid --groups entry {g:?}: expected system:bootstrappers:<name>"),
        ));
    }
    if c.print_userdata.is_some() && c.base_url.is_none() {
        return Err(Failure::new(
            Code::Usage,
            "--print-userdata needs --base-url (where attach.sh is served)",
        ));
    }
    let token =
        BootstrapToken::generate().map_err(|e| Failure::new(Code::Internal, e.to_string()))?;
    let new = NewToken {
        token: token.clone(),
        ttl: (!c.ttl.is_zero()).then_some(c.ttl),
        usages: vec!["signing".into(), "authentication".into()],
        groups: c.groups.clone(),
        description: c.description.clone(),
    };
    tokens::create_token(kube, &new, time::OffsetDateTime::now_utc())
        .await
        .map_err(api)?;
    let changes = tokens::ensure_cluster_rbac(kube, &c.groups)
        .await
        .map_err(|e| Failure::new(Code::ClusterConfig, e.to_string()))?;
    for ch in &changes {
        reporter.notice(&format!("RBAC: {ch}"));
    }
    let endpoint = c.endpoint.clone().unwrap_or(server_endpoint);
    let full = token.expose_full();
    let text = join_text(c, full.expose(), &endpoint, pin);
    let view = serde_json::json!({"id": token.id(), "token": full.expose(), "ca_pin": pin, "endpoint": endpoint, "rbac_changes": changes});
    reporter.result(&view, &text);
    Ok(())
}

/// What `token create` prints: the token, a join command, or userdata, as asked.
fn join_text(c: &CreateArgs, token: &str, endpoint: &str, pin: &str) -> String {
    let flags = format!("--endpoint {endpoint} --discovery-token-ca-cert-hash {pin}");
    let base = c.base_url.as_deref();
    match (c.print_userdata, base, c.print_join_command) {
        (Some(UserdataForm::Bash), Some(base), _) => format!(
            "#!/bin/bash\n# node-attach userdata (token expires in {:?})\nset -euo pipefail\ncurl -fsSL --retry 5 --retry-connrefused {base}/attach.sh | NODE_ATTACH_TOKEN='{token}' bash -s -- {flags}\n",
            c.ttl
        ),
        (Some(UserdataForm::CloudConfig), Some(base), _) => format!(
            "#cloud-config\n# node-attach userdata (token expires in {:?})\nwrite_files:\n  - path: /etc/node-attach/config.yaml\n    owner: root:root\n    permissions: \"0600\"\n    content: |\n      token: \"{token}\"\n      endpoint: \"{endpoint}\"\n      discovery-token-ca-cert-hash: [\"{pin}\"]\nruncmd:\n  - [sh, -c, \"curl -fsSL --retry 5 --retry-connrefused {base}/attach.sh | bash -s -- --config /etc/node-attach/config.yaml\"]\n",
            c.ttl
        ),
        (_, Some(base), true) => {
            format!("curl -fsSL {base}/attach.sh | NODE_ATTACH_TOKEN='{token}' bash -s -- {flags}\n")
        }
        (_, None, true) => format!("NODE_ATTACH_TOKEN='{token}' node-attach join {flags}\n"),
        _ => format!("{token}\n"),
    }
}

/// `token list`.
async fn list(kube: &Kube, show_secret: bool, reporter: &mut Reporter) -> Result<(), Failure> {
    let list = tokens::list(kube, show_secret).await.map_err(api)?;
    let row = |a: &str, b: &str, c: &str, d: &str| format!("{a:<24} {b:<22} {c:<28} {d}\n");
    let mut text = row("TOKEN", "EXPIRES", "USAGES", "GROUPS");
    for t in &list {
        let shown = t
            .token
            .clone()
            .unwrap_or_else(|| format!("{}.<hidden>", t.id));
        let expires = t.expires.clone().unwrap_or_else(|| "<never>".into());
        text.push_str(&row(
            &shown,
            &expires,
            &t.usages.join(","),
            &t.groups.join(","),
        ));
    }
    reporter.result(&list, &text);
    Ok(())
}

/// The `--values` document for an openapi token: valid as a node would read it, with no
/// bootstrap token of its own (one is minted per use).
fn openapi_values(o: &OpenapiArgs) -> Result<serde_json::Value, Failure> {
    let usage = |m: String| Failure::new(Code::Usage, m);
    let text = super::common::read_input_text(&o.values, "--values")?;
    let values: serde_json::Value = crate::model::strict::json(text.as_bytes())
        .map_err(|e| usage(format!("--values: not JSON: {e}")))?;
    if !values["bootstrapToken"].is_null() {
        return Err(usage(
            "--values must not hold a bootstrapToken: one is minted for each use".into(),
        ));
    }
    // Validate as a node would, with a placeholder token.
    let mut probe = values.clone();
    probe["bootstrapToken"] = serde_json::json!("abcdef.0123456789abcdef");
    crate::sources::values::schema::parse(&probe.to_string())
        .map_err(|e| usage(format!("--values: {e}")))?;
    Ok(values)
}

/// `token openapi`: a Secret in the values service's namespace holding the values, under the
/// hash of a new openapi token; prints the token (or the one-liner using it).
async fn openapi(kube: &Kube, o: &OpenapiArgs, reporter: &mut Reporter) -> Result<(), Failure> {
    use crate::operator::serve::store::{token_hash, Record, Store};
    let values = openapi_values(o)?;
    let token = crate::model::token::random_token_chars(32)
        .map_err(|e| Failure::new(Code::Internal, e.to_string()))?;
    if kube
        .get(&paths::namespace(&o.namespace))
        .await
        .map_err(api)?
        .is_none()
    {
        let ns = serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": o.namespace}});
        kube.post(paths::NAMESPACES, &ns).await.map_err(api)?;
    }
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let record = Record {
        hash: token_hash(&token),
        values,
        expires: if o.ttl.is_zero() {
            0
        } else {
            now + o.ttl.as_secs() as i64
        },
        uses: o.uses,
        description: o.description.clone().unwrap_or_default(),
    };
    let slots = crate::operator::serve::store::Slots::default();
    let store = Store {
        kube,
        namespace: o.namespace.clone(),
        slots: &slots,
    };
    store
        .create(&record)
        .await
        .map_err(|e| Failure::new(Code::ClusterConfig, e.to_string()))?;
    let text = match (&o.public_url, &o.base_url) {
        (Some(public), Some(base)) => {
            let values_url = format!("{}/v1/values/{{token}}", public.trim_end_matches('/'));
            format!("curl -fsSL {base}/attach.sh | NODE_ATTACH_OPENAPI_TOKEN='{token}' bash -s -- --values-url '{values_url}'\n")
        }
        (Some(public), None) => {
            let values_url = format!("{}/v1/values/{{token}}", public.trim_end_matches('/'));
            format!("NODE_ATTACH_OPENAPI_TOKEN='{token}' node-attach join --values-url '{values_url}'\n")
        }
        _ => format!("{token}\n"),
    };
    let view = serde_json::json!({"token": token, "uses": o.uses, "namespace": o.namespace});
    reporter.result(&view, &text);
    Ok(())
}

/// `token delete ID`.
async fn delete(kube: &Kube, id: &str, reporter: &mut Reporter) -> Result<(), Failure> {
    let id = id.split('.').next().unwrap_or_default().to_owned();
    let valid = id.len() == 6
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if !valid {
        return Err(Failure::new(
            Code::Usage,
            "expected a token id ([a-z0-9]{6}) or ID.SECRET",
        ));
    }
    let path = paths::secret("kube-system", &format!("bootstrap-token-{id}"));
    let gone = kube.delete(&path).await.map_err(api)?;
    let text = match gone {
        true => format!("bootstrap token {id} deleted\n"),
        false => format!("bootstrap token {id} was not there\n"),
    };
    reporter.result(&serde_json::json!({"id": id, "deleted": gone}), &text);
    Ok(())
}
