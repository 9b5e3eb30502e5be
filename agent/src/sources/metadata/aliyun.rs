//! Alibaba Cloud ECS instance metadata (`http://100.100.100.200/latest/`).
//!
//! Security-hardened mode first: `PUT /latest/api/token` with
//! `X-aliyun-ecs-metadata-token-ttl-seconds`, then every GET carries
//! `X-aliyun-ecs-metadata-token`. When the PUT is not answered with a token (an older image or
//! a normal-mode instance), plain GETs are used. Items: `meta-data/instance-id`, `region-id`,
//! `zone-id`, `private-ipv4`, `hostname`, `instance/instance-type`.

use super::{InstanceMetadata, MetadataError, MetadataLimits, Session, TokenAnswer};

/// The metadata service's address.
pub const ENDPOINT: &str = "http://100.100.100.200";
const TOKEN_HEADER: &str = "X-aliyun-ecs-metadata-token";
const TTL_HEADER: &str = "X-aliyun-ecs-metadata-token-ttl-seconds";

/// Reads the instance's metadata.
pub async fn fetch(
    endpoint: &str,
    limits: MetadataLimits,
) -> Result<InstanceMetadata, MetadataError> {
    let mut s = Session::open("aliyun", endpoint, limits)?;
    // Hardened mode: a session token, kept only in memory. Anything but an answer that is
    // not a connection failure means normal mode.
    match s.request_token(TTL_HEADER).await {
        Ok(TokenAnswer::Token(t)) => s.header = Some((TOKEN_HEADER, t)),
        Ok(_) => tracing::info!("Alibaba Cloud metadata: no session token (normal mode)"),
        Err(e) if e.is_connect() || e.is_timeout() => {
            return Err(s.unavailable(e.without_url().to_string()))
        }
        Err(_) => tracing::info!("Alibaba Cloud metadata: no session token (normal mode)"),
    }
    Ok(InstanceMetadata {
        provider: "aliyun",
        instance_id: s.ident("instance-id", "meta-data/instance-id").await?,
        region: s.ident("region-id", "meta-data/region-id").await?,
        zone: s.item("meta-data/zone-id").await?.unwrap_or_default(),
        private_ipv4: s.ipv4("meta-data/private-ipv4").await?,
        hostname: s.item("meta-data/hostname").await?,
        instance_type: s.item("meta-data/instance/instance-type").await?,
    })
}

/// The instance's RAM role credentials (`meta-data/ram/security-credentials/ROLE`), for calls
/// the node makes to Alibaba Cloud APIs itself (completing an ESS lifecycle action). Read only
/// when needed, kept only in memory.
pub async fn ram_credentials(
    endpoint: &str,
) -> Result<crate::client::ess::RamCredentials, MetadataError> {
    use crate::model::secret::Secret;
    let mut s = Session::open("aliyun", endpoint, MetadataLimits::explicit())?;
    if let Ok(TokenAnswer::Token(t)) = s.request_token(TTL_HEADER).await {
        s.header = Some((TOKEN_HEADER, t));
    }
    let invalid = |value: &str| MetadataError::Invalid {
        provider: "aliyun",
        field: "ram/security-credentials",
        value: value.chars().take(64).collect(),
    };
    let roles = s.item("meta-data/ram/security-credentials/").await?;
    let role = roles
        .as_deref()
        .and_then(|r| r.lines().next())
        .unwrap_or_default()
        .trim();
    let role = super::ident("aliyun", "ram role", Some(role.to_owned()))?;
    let text = s
        .item(&format!("meta-data/ram/security-credentials/{role}"))
        .await?
        .ok_or_else(|| invalid("(no credentials for the role)"))?;
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Answer {
        access_key_id: String,
        access_key_secret: String,
        security_token: String,
    }
    let a: Answer = crate::model::strict::json(text.as_bytes())
        .map_err(|_| invalid("(not the credentials JSON)"))?;
    Ok(crate::client::ess::RamCredentials {
        access_key_id: a.access_key_id,
        access_key_secret: Secret::new(a.access_key_secret),
        security_token: Secret::new(a.security_token),
    })
}
