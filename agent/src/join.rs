//! The join, phase by phase: values → settings → discovery → …

use crate::cli::join::JoinArgs;
use crate::discovery::{self, Discovered, DiscoveryError, DiscoveryRequest};
use crate::error::{Code, Failure};
use crate::http::Http;
use crate::report::{Reporter, Status};
use crate::settings::Settings;
use crate::values::{self, ClusterValues, ValuesSource};
use std::time::Instant;

/// Runs `node-attach join`.
pub async fn run(args: JoinArgs, reporter: &mut Reporter) -> Result<(), Failure> {
    let token = args.token.resolve()?;
    let openapi = args.openapi.resolve()?;
    if token.is_some() && args.token.token.is_some() {
        tracing::warn!("the bootstrap token was given on the command line, where other users can read it in the process list; prefer NODE_ATTACH_TOKEN or --token-file");
    }

    let values = match openapi {
        Some(openapi) => Some(fetch_values(&args, openapi, reporter).await?),
        None => None,
    };
    let settings = Settings::resolve(&args, token, values.as_ref())?;
    for notice in &settings.notices {
        reporter.notice(notice);
    }
    let discovered = discover(&settings, reporter).await?;
    reporter.result(
        &discovered,
        &format!("API server {} verified", discovered.api_server),
    );
    Err(Failure::new(
        Code::Internal,
        "the node configuration phases are not part of this build yet",
    ))
}

async fn fetch_values(
    args: &JoinArgs,
    token: crate::token::OpenApiToken,
    reporter: &mut Reporter,
) -> Result<ClusterValues, Failure> {
    let started = Instant::now();
    reporter.phase("values", Status::Started, None, "");
    let source = ValuesSource {
        template: args.values_url.clone(),
        token,
        instance_id: args.instance_id.clone(),
        region: args.region.clone(),
        allow_insecure: args.allow_insecure_values_url,
    };
    let outcome = async {
        let tls = crate::tls::system_roots(args.values_ca_file.as_deref())
            .map_err(|e| Failure::new(Code::Usage, e.to_string()))?;
        let http = Http::new(tls, args.network.limits())
            .map_err(|e| Failure::new(Code::Internal, e.to_string()))?;
        values::fetch(&http, &source, args.values_timeout)
            .await
            .map_err(|e| Failure::from_error(&e))
    }
    .await;
    match outcome {
        Ok(v) => {
            reporter.phase(
                "values",
                Status::Done,
                Some(started.elapsed()),
                &format!("{:?} values from the control plane", v.format),
            );
            Ok(v)
        }
        Err(f) => {
            reporter.phase("values", Status::Failed, Some(started.elapsed()), "");
            Err(f)
        }
    }
}

/// Discovery against each endpoint in turn; an unreachable endpoint moves on to the next.
pub async fn discover(settings: &Settings, reporter: &mut Reporter) -> Result<Discovered, Failure> {
    let started = Instant::now();
    reporter.phase("discover", Status::Started, None, "");
    let mut last: Option<DiscoveryError> = None;
    for endpoint in &settings.endpoints {
        let request = DiscoveryRequest {
            endpoint: endpoint.clone(),
            token: settings.token.clone(),
            pins: settings.pins.clone(),
            unsafe_skip_ca_verification: settings.unsafe_skip_ca_verification,
            timeout: settings.timeouts.discovery,
            limits: settings.limits,
        };
        match discovery::discover(&request).await {
            Ok(found) => {
                reporter.phase(
                    "discover",
                    Status::Done,
                    Some(started.elapsed()),
                    &format!(
                        "{} trusted ({})",
                        found.api_server,
                        found
                            .ca_pin
                            .as_ref()
                            .map(ToString::to_string)
                            .unwrap_or_else(|| "CA not pinned".into())
                    ),
                );
                return Ok(found);
            }
            Err(e @ DiscoveryError::Unreachable { .. }) => last = Some(e),
            Err(e) => {
                reporter.phase("discover", Status::Failed, Some(started.elapsed()), "");
                return Err(Failure::from_error(&e));
            }
        }
    }
    reporter.phase("discover", Status::Failed, Some(started.elapsed()), "");
    Err(match last {
        Some(e) => Failure::from_error(&e),
        None => Failure::new(Code::Usage, "no API server endpoint"),
    })
}
