//! `node-attach join`: attach_node.sh's flags, kubeadm's discovery flags, and node-attach's own.

use super::common::{parse_bool, NetworkArgs, OpenApiTokenArgs, PinArgs, TokenArgs};
use crate::model::duration;
use std::path::PathBuf;
use std::time::Duration;

fn parse_duration(s: &str) -> Result<Duration, String> {
    duration::parse(s)
}

/// Turn this machine into a worker node of a Kubernetes cluster.
///
/// Give either --openapi-token (the cluster's values are fetched from the control plane), or
/// the values themselves: --token, --endpoint, --cluster-dns and a CA pin.
#[derive(Clone, Debug, clap::Args)]
pub struct JoinArgs {
    /// Read options from this YAML file (keys are the long option names; flags win).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// The openapi token.
    #[command(flatten)]
    pub openapi: OpenApiTokenArgs,

    /// The bootstrap token.
    #[command(flatten)]
    pub token: TokenArgs,

    /// API server endpoint (attach_node.sh: the load balancer, port 6443).
    #[arg(long, value_name = "HOST:PORT")]
    pub endpoint: Option<String>,

    /// Cluster DNS service address(es), comma-separated.
    #[arg(long, value_name = "IP[,IP]")]
    pub cluster_dns: Option<String>,

    /// Cluster domain (default cluster.local).
    #[arg(long, value_name = "DOMAIN")]
    pub cluster_domain: Option<String>,

    /// CA pins.
    #[command(flatten)]
    pub pins: PinArgs,

    /// Docker version to use: selects the docker runtime (attach_node.sh's scale-out form).
    #[arg(long, value_name = "VERSION")]
    pub docker_version: Option<String>,

    /// Container runtime: containerd (default) or docker.
    #[arg(long, value_name = "NAME")]
    pub runtime: Option<String>,

    /// Version of the container runtime package to install when it is missing.
    #[arg(long, value_name = "VERSION")]
    pub runtime_version: Option<String>,

    /// Join an autoscaled node pool (ESS / cluster-autoscaler): true or false.
    #[arg(long, value_name = "BOOL", value_parser = parse_bool)]
    pub ess: Option<bool>,

    /// Node labels, k=v,k2=v2. Labels the kubelet may not set itself (such as
    /// k8s.io/cluster-autoscaler) are reported for the control plane to apply.
    #[arg(long, value_name = "K=V,...")]
    pub labels: Option<String>,

    /// Node taints, key[=value]:Effect,...
    #[arg(long, value_name = "K=V:EFFECT,...")]
    pub taints: Option<String>,

    /// How to name the node: hostname, nodeip (<region>.<ip>) or instanceid (<region>.<instance-id>).
    #[arg(long, value_name = "MODE")]
    pub node_name_mode: Option<String>,

    /// The node's name (overrides --node-name-mode).
    #[arg(long, value_name = "NAME")]
    pub node_name: Option<String>,

    /// The node's IP address (default: the address used to reach the API server).
    #[arg(long, value_name = "IP")]
    pub node_ip: Option<String>,

    /// The node's providerID, set when the kubelet starts.
    #[arg(long, value_name = "ID")]
    pub provider_id: Option<String>,

    /// Turn swap off now and at boot (attach_node.sh: comments out fstab swap lines).
    #[arg(long)]
    pub disable_swap: bool,

    /// kubelet CPU manager policy: none or static (attach_node.sh's --cpu-policy).
    #[arg(long, value_name = "POLICY")]
    pub cpu_policy: Option<String>,

    /// Where to learn the instance id, region, private IP and providerID: auto (ask only when
    /// something is missing; Alibaba Cloud, then AWS, with short timeouts), aliyun, aws, none.
    #[arg(long, value_enum, default_value_t = crate::sources::metadata::MetadataKind::Auto)]
    pub metadata: crate::sources::metadata::MetadataKind,

    /// Address of the metadata service (default: the provider's own).
    #[arg(long, value_name = "URL", hide = true)]
    pub metadata_endpoint: Option<String>,

    /// The instance id, for {instance_id} in --values-url and instanceid naming.
    #[arg(long, value_name = "ID")]
    pub instance_id: Option<String>,

    /// The region id, for {region} in --values-url and ACK-style names.
    #[arg(long, value_name = "REGION")]
    pub region: Option<String>,

    /// The ESS scale-out lifecycle hook (ash-…) holding this instance: join completes its
    /// action, CONTINUE once joined, ABANDON when the join failed (so ESS replaces the
    /// instance now). Needs --ess-lifecycle-action-token and the instance's RAM role.
    #[arg(long, value_name = "ID", requires = "ess_lifecycle_action_token")]
    pub ess_lifecycle_hook_id: Option<String>,

    /// The lifecycle action's token (or NODE_ATTACH_ESS_LIFECYCLE_ACTION_TOKEN).
    #[arg(
        long,
        value_name = "TOKEN",
        env = "NODE_ATTACH_ESS_LIFECYCLE_ACTION_TOKEN",
        hide_env_values = true,
        requires = "ess_lifecycle_hook_id"
    )]
    pub ess_lifecycle_action_token: Option<String>,

    /// The ESS API endpoint (default https://ess.REGION.aliyuncs.com).
    #[arg(long, value_name = "URL")]
    pub ess_endpoint: Option<url::Url>,

    /// Where to fetch cluster values with --openapi-token: a URL template with {token}, and
    /// optionally {instance_id} and {region}.
    #[arg(long, value_name = "URL", default_value = crate::sources::values::DEFAULT_VALUES_URL)]
    pub values_url: String,

    /// Allow a plain-http --values-url (the answer carries a bootstrap token: unsafe).
    #[arg(long)]
    pub allow_insecure_values_url: bool,

    /// Extra CA bundle (PEM) to trust for --values-url and the callback.
    #[arg(long, value_name = "FILE")]
    pub values_ca_file: Option<PathBuf>,

    /// Overall deadline for fetching the cluster values.
    #[arg(long, value_name = "DURATION", default_value = "2m", value_parser = parse_duration)]
    pub values_timeout: Duration,

    /// Timeouts.
    #[command(flatten)]
    pub network: NetworkArgs,

    /// Apply every filesystem effect under DIR instead of /. With a DIR other than /, no host
    /// service or package is touched (those steps are journaled as skipped).
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub root: PathBuf,

    /// Print the complete plan and change nothing.
    #[arg(long)]
    pub dry_run: bool,

    /// Preflight checks to downgrade to warnings (comma-separated ids, or all).
    #[arg(long, value_name = "IDS", value_delimiter = ',')]
    pub ignore_preflight_errors: Vec<String>,

    /// Who performs the TLS bootstrap: node-attach (default; no token left on disk) or kubelet
    /// (writes bootstrap-kubelet.conf, as kubeadm does).
    #[arg(long, value_name = "WHO", default_value = "node-attach")]
    pub tls_bootstrap: String,

    /// How long to wait for the CSR to be approved and signed.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_duration)]
    pub csr_timeout: Duration,

    /// How long to wait for the Node to appear after the kubelet starts (0 = do not wait).
    #[arg(long, value_name = "DURATION", default_value = "4m", value_parser = parse_duration)]
    pub node_wait_timeout: Duration,

    /// Artifacts from a signed mirror.
    #[command(flatten)]
    pub artifacts: ArtifactArgs,

    /// Which part of the join to run: all (default), or prepare (bake mode: install and
    /// configure the kubelet, CNI plugins, runtime and images with no cluster contact, for an
    /// image builder; the join at boot then does discovery, the CSR and the start).
    #[arg(long, value_enum, default_value_t = Phase::All)]
    pub phase: Phase,

    /// attach_node.sh flags with no effect here.
    #[command(flatten)]
    pub compat: CompatArgs,
}

/// `join --phase`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// The whole join.
    All,
    /// Bake mode: everything that needs no cluster.
    Prepare,
}

/// Where the kubelet, crictl, CNI plugins, a static runtime and image archives come from when
/// the machine lacks them.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct ArtifactArgs {
    /// An artifact mirror's base URL (https; `node-attach artifacts publish` builds one):
    /// what the machine lacks is installed from it, verified against its signed manifest.
    #[arg(long, value_name = "URL")]
    pub artifacts_url: Option<String>,

    /// The Ed25519 public key the mirror's manifest is signed with (ed25519:<base64>); wins
    /// over the values' artifacts.publicKey.
    #[arg(long, value_name = "KEY")]
    pub artifacts_key: Option<String>,

    /// Extra CA bundle (PEM) to trust for the mirror.
    #[arg(long, value_name = "FILE")]
    pub artifacts_ca_file: Option<PathBuf>,

    /// Overall deadline for fetching artifacts (each file is retried until then).
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = parse_duration)]
    pub artifacts_timeout: Duration,

    /// The kubelet version to install (default: the API server's, else the newest the skew
    /// policy allows).
    #[arg(long, value_name = "VERSION")]
    pub kubelet_version: Option<String>,

    /// Import the release's image archives from the mirror into the runtime before the kubelet
    /// starts (no registry needed).
    #[arg(long)]
    pub air_gap: bool,

    /// Import a local image archive (docker-archive or OCI tar) into the runtime before the
    /// kubelet starts; repeatable.
    #[arg(long, value_name = "FILE")]
    pub image_archive: Vec<PathBuf>,

    /// Where a missing runtime comes from: auto (the package manager, else the mirror),
    /// package, or mirror (its static containerd).
    #[arg(long, value_name = "SOURCE")]
    pub runtime_source: Option<String>,
}

/// attach_node.sh flags that concern the cluster or the cloud rather than the node. They are
/// accepted so existing userdata keeps working, validated, and reported as having no effect here.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct CompatArgs {
    /// attach_node.sh: format a data disk (node-attach never formats disks).
    #[arg(long, hide = true)]
    pub auto_fdisk: bool,
    /// attach_node.sh: the data disk device.
    #[arg(long, hide = true, value_name = "DEVICE")]
    pub disk_device: Option<String>,
    /// attach_node.sh: node configuration blob.
    #[arg(long, hide = true, value_name = "CONFIG")]
    pub node_config: Option<String>,
    /// attach_node.sh: package path prefix.
    #[arg(long, hide = true, value_name = "VERSION")]
    pub beta_version: Option<String>,
    /// attach_node.sh: CNI plugin name.
    #[arg(long, hide = true, value_name = "NAME")]
    pub network: Option<String>,
    /// attach_node.sh: cluster addons.
    #[arg(long, hide = true, value_name = "NAMES")]
    pub addon_names: Option<String>,
    /// attach_node.sh: NodePort range (a control-plane setting).
    #[arg(long, hide = true, value_name = "RANGE")]
    pub node_port_range: Option<String>,
    /// attach_node.sh: rename the host.
    #[arg(long, hide = true, value_name = "BOOL")]
    pub overwrite_hostname: Option<String>,
    /// attach_node.sh: cluster type.
    #[arg(long, hide = true, value_name = "TYPE")]
    pub cluster_type: Option<String>,
    /// attach_node.sh: terway IPVLAN.
    #[arg(long, hide = true, value_name = "BOOL")]
    pub ip_vlan_enabled: Option<String>,
    /// attach_node.sh: ignored there too.
    #[arg(long, hide = true, value_name = "VERSION")]
    pub kube_version: Option<String>,
    /// ACK API sample: CloudMonitor agent.
    #[arg(long, hide = true)]
    pub cms_enabled: bool,
    /// ACK API sample: CloudMonitor agent version.
    #[arg(long, hide = true, value_name = "VERSION")]
    pub cms_version: Option<String>,
    /// ACK API sample: pod CIDR mask (a control-plane setting).
    #[arg(long, hide = true, value_name = "BITS")]
    pub node_cidr_mask: Option<String>,
}

impl CompatArgs {
    /// One notice per compatibility flag that was given.
    pub fn notices(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut note = |given: bool, flag: &str, why: &str| {
            if given {
                out.push(format!(
                    "{flag} is accepted for attach_node.sh compatibility and has no effect: {why}"
                ));
            }
        };
        note(
            self.auto_fdisk || self.disk_device.is_some(),
            "--auto-fdisk/--disk-device",
            "node-attach never formats or mounts disks; prepare data disks in the image or a pre-script",
        );
        note(
            self.node_config.is_some(),
            "--node-config",
            "pass kubelet settings through the cluster values",
        );
        note(
            self.beta_version.is_some(),
            "--beta-version",
            "node-attach downloads no package tarballs",
        );
        note(
            self.network.is_some(),
            "--network",
            "the CNI plugin is installed by the cluster",
        );
        note(
            self.addon_names.is_some(),
            "--addon-names",
            "addons are managed by the control plane",
        );
        note(
            self.node_port_range.is_some(),
            "--node-port-range",
            "the NodePort range is an API server setting",
        );
        note(self.overwrite_hostname.is_some(), "--overwrite-hostname", "node-attach does not rename the host; the node name is set with --node-name or --node-name-mode");
        note(
            self.cluster_type.is_some(),
            "--cluster-type",
            "it only selected attach_node.sh code paths",
        );
        note(
            self.ip_vlan_enabled.is_some(),
            "--ip-vlan-enabled",
            "IPVLAN is configured by the CNI plugin",
        );
        note(
            self.kube_version.is_some(),
            "--kube-version",
            "the version is read from the API server",
        );
        note(
            self.cms_enabled || self.cms_version.is_some(),
            "--cms-enabled/--cms-version",
            "monitoring agents are out of scope",
        );
        note(
            self.node_cidr_mask.is_some(),
            "--node-cidr-mask",
            "pod CIDRs are allocated by the control plane",
        );
        out
    }
}

/// Runs `node-attach join`: every input gathered into one `Settings`, then the phases.
pub async fn run(
    args: JoinArgs,
    reporter: &mut crate::report::Reporter,
) -> Result<(), crate::error::Failure> {
    let in_argv = std::env::args().any(|a| a == "--token" || a.starts_with("--token="));
    if args.token.token.is_some() && in_argv {
        tracing::warn!("the bootstrap token was given on the command line, where other users can read it in the process list; prefer NODE_ATTACH_TOKEN or --token-file");
    }
    if args.phase == Phase::Prepare {
        return crate::join::prepare::run(args, reporter).await;
    }
    let settings = crate::sources::gather(&args, reporter).await?;
    let effects = crate::effects::Effects::real(crate::effects::fs::Root::new(&settings.root));
    let outcome = crate::join::run_reporting_stalls(&settings, &effects, reporter).await;
    crate::join::announce(&settings, &outcome).await;
    let summary = outcome?;
    reporter.result(&summary, &crate::join::summary_text(&summary));
    Ok(())
}
