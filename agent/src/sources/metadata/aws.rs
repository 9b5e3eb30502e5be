//! AWS EC2 instance metadata, IMDSv2 (`http://169.254.169.254/latest/`): a session token from
//! `PUT /latest/api/token` (`X-aws-ec2-metadata-token-ttl-seconds`) on every GET
//! (`X-aws-ec2-metadata-token`). Items: `meta-data/instance-id`, `placement/region`,
//! `placement/availability-zone`, `local-ipv4`, `local-hostname`, `instance-type`.

use super::{InstanceMetadata, MetadataError, MetadataLimits, Session, TokenAnswer};

/// The metadata service's address.
pub const ENDPOINT: &str = "http://169.254.169.254";

/// Reads the instance's metadata.
pub async fn fetch(
    endpoint: &str,
    limits: MetadataLimits,
) -> Result<InstanceMetadata, MetadataError> {
    let mut s = Session::open("aws", endpoint, limits)?;
    // IMDSv2 only: without a session token there is no answer.
    let token = match s
        .request_token("X-aws-ec2-metadata-token-ttl-seconds")
        .await
        .map_err(|e| s.unavailable(e.without_url().to_string()))?
    {
        TokenAnswer::Token(t) => t,
        TokenAnswer::Refused(status) => {
            return Err(s.unavailable(format!("IMDSv2 token request answered HTTP {status}")))
        }
        TokenAnswer::Unusable => return Err(s.unavailable("IMDSv2 gave no usable token".into())),
    };
    s.header = Some(("X-aws-ec2-metadata-token", token));
    Ok(InstanceMetadata {
        provider: "aws",
        instance_id: s.ident("instance-id", "meta-data/instance-id").await?,
        region: s
            .ident("placement/region", "meta-data/placement/region")
            .await?,
        zone: s
            .ident(
                "placement/availability-zone",
                "meta-data/placement/availability-zone",
            )
            .await?,
        private_ipv4: s.ipv4("meta-data/local-ipv4").await?,
        hostname: s.item("meta-data/local-hostname").await?,
        instance_type: s.item("meta-data/instance-type").await?,
    })
}
