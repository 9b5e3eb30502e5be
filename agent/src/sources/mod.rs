//! Where a join's inputs come from, merged into one [`settings::Settings`] before any phase
//! runs: flags, environment and files (parsed by `cli`), the cloud's instance metadata
//! ([`metadata`]), and the cluster values fetched with an openapi token ([`values`]).
//! [`gather`] is the one place they meet; after it, the phases see only `Settings`.

pub mod metadata;
pub mod settings;
pub mod values;

use crate::cli::join::JoinArgs;
use crate::client::http::Http;
use crate::error::{Code, Failure};
use crate::model::token::OpenApiToken;
use crate::report::{Reporter, Status};
use metadata::MetadataKind;
use settings::Settings;
use values::{ClusterValues, ValuesSource};

/// Every input of a join, resolved: the tokens from their flags, files or environment,
/// instance metadata where the flags leave gaps, the cluster values, and their merge.
pub async fn gather(args: &JoinArgs, reporter: &mut Reporter) -> Result<Settings, Failure> {
    let token = args.token.resolve()?;
    let openapi = args.openapi.resolve()?;
    let mut args = args.clone();
    with_metadata(&mut args, openapi.is_some(), reporter).await?;
    let values = match openapi {
        Some(openapi) => Some(fetch_values(&args, openapi, reporter).await?),
        None => None,
    };
    let mut settings = Settings::resolve(&args, token, values.as_ref())?;
    settings.agent_path = std::env::current_exe().ok();
    for notice in &settings.notices {
        reporter.notice(notice);
    }
    Ok(settings)
}

/// Whether join needs the metadata service: a values URL template or a node name mode that
/// uses the instance, an autoscaled node without a providerID, or a provider named explicitly.
pub(crate) fn metadata_wanted(args: &JoinArgs, openapi: bool) -> bool {
    let template_needs = openapi
        && ((args.values_url.contains("{region}") && args.region.is_none())
            || (args.values_url.contains("{instance_id}") && args.instance_id.is_none()));
    let mode_needs = args.node_name.is_none()
        && args.node_name_mode.as_deref().is_some_and(|m| {
            let m = m.to_ascii_lowercase();
            (m.contains("instance") && (args.instance_id.is_none() || args.region.is_none()))
                || (m.contains("ip") && args.region.is_none())
        });
    let ess_needs = args.ess == Some(true)
        && args.provider_id.is_none()
        && (args.instance_id.is_none() || args.region.is_none());
    match args.metadata {
        MetadataKind::None => false,
        MetadataKind::Auto => template_needs || mode_needs || ess_needs,
        MetadataKind::Aliyun | MetadataKind::Aws => true,
    }
}

/// Fills instance id, region, node IP and providerID from the cloud's metadata service where
/// the flags left them out and join needs them.
async fn with_metadata(
    args: &mut JoinArgs,
    openapi: bool,
    reporter: &mut Reporter,
) -> Result<(), Failure> {
    if !metadata_wanted(args, openapi) {
        return Ok(());
    }
    let phase = reporter.begin("metadata");
    let found = metadata::fetch(args.metadata, args.metadata_endpoint.as_deref())
        .await
        .map_err(|e| {
            Failure::new(
                Code::Identity,
                format!("{e}; pass --instance-id and --region (or --metadata none)"),
            )
        })?;
    let Some(m) = found else {
        phase.end(Status::Skipped, "no cloud metadata service answered");
        return Ok(());
    };
    args.instance_id
        .get_or_insert_with(|| m.instance_id.clone());
    args.region.get_or_insert_with(|| m.region.clone());
    if args.node_ip.is_none() {
        args.node_ip = m.private_ipv4.clone();
    }
    args.provider_id.get_or_insert_with(|| m.provider_id());
    let detail = format!(
        "{} instance {} in {} (providerID {})",
        m.provider,
        m.instance_id,
        m.region,
        m.provider_id()
    );
    phase.end(Status::Done, &detail);
    Ok(())
}

/// The cluster values for an openapi token.
/// Where join's flags say the values for `token` are (the template, instance and region).
pub fn values_source(args: &JoinArgs, token: OpenApiToken) -> ValuesSource {
    ValuesSource {
        template: args.values_url.clone(),
        token,
        instance_id: args.instance_id.clone(),
        region: args.region.clone(),
        allow_insecure: args.allow_insecure_values_url,
    }
}

async fn fetch_values(
    args: &JoinArgs,
    token: OpenApiToken,
    reporter: &mut Reporter,
) -> Result<ClusterValues, Failure> {
    let phase = reporter.begin("values");
    let source = values_source(args, token);
    let target = source.target().map_err(|e| Failure::from_error(&e))?;
    let tls = crate::trust::tls::system_roots(args.values_ca_file.as_deref())
        .map_err(|e| Failure::new(Code::Usage, e.to_string()))?;
    let http = Http::new(tls, args.network.limits())
        .map_err(|e| Failure::new(Code::Internal, e.to_string()))?;
    tracing::debug!(url = %target.shown, "values URL");
    let v = values::fetch(&http, &source, args.values_timeout)
        .await
        .map_err(|e| Failure::from_error(&e))?;
    phase.end(
        Status::Done,
        &format!("{:?} values from the control plane", v.format),
    );
    Ok(v)
}
