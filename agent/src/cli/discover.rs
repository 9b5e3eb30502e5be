//! `node-attach discover`: run trusted discovery only, and print what was verified.

use super::common::{NetworkArgs, PinArgs, TokenArgs};
use crate::error::{Code, Failure};
use crate::model::validate::Endpoint;
use crate::report::{Reporter, Status};
use crate::trust::discovery::{self, DiscoveryRequest};
use crate::trust::pin::PinSet;
use std::fmt::Write as _;

/// Verify an API server the way `kubeadm join` does, without changing anything.
#[derive(Clone, Debug, clap::Args)]
pub struct DiscoverArgs {
    /// API server endpoint to read cluster-info from.
    #[arg(long, value_name = "HOST:PORT", value_parser = parse_endpoint)]
    pub endpoint: Endpoint,

    /// The bootstrap token.
    #[command(flatten)]
    pub token: TokenArgs,

    /// CA pins.
    #[command(flatten)]
    pub pins: PinArgs,

    /// Timeouts.
    #[command(flatten)]
    pub network: NetworkArgs,
}

fn parse_endpoint(s: &str) -> Result<Endpoint, String> {
    Endpoint::parse("--endpoint", s).map_err(|e| e.to_string())
}

/// Runs discovery and prints the verified API server URL and CA pin.
pub async fn run(args: DiscoverArgs, reporter: &mut Reporter) -> Result<(), Failure> {
    let token = args.token.resolve()?.ok_or_else(|| {
        Failure::new(
            Code::Usage,
            "discover needs a bootstrap token: --token ID.SECRET, NODE_ATTACH_TOKEN or --token-file",
        )
    })?;
    let request = DiscoveryRequest {
        endpoint: args.endpoint,
        token,
        pins: PinSet::new(args.pins.ca_cert_hashes),
        unsafe_skip_ca_verification: args.pins.unsafe_skip_ca_verification,
        timeout: args.network.discovery_timeout,
        limits: args.network.limits(),
    };
    let started = std::time::Instant::now();
    reporter.phase(
        "discover",
        Status::Started,
        None,
        &request.endpoint.to_string(),
    );
    let found = discovery::discover(&request).await.map_err(|e| {
        reporter.phase("discover", Status::Failed, Some(started.elapsed()), "");
        Failure::from_error(&e)
    })?;
    reporter.phase(
        "discover",
        Status::Done,
        Some(started.elapsed()),
        &format!("verified {}", found.api_server),
    );
    let mut text = String::new();
    let _ = writeln!(text, "API server: {}", found.api_server);
    match &found.ca_pin {
        Some(pin) => {
            let _ = writeln!(text, "CA pin:     {pin}");
            let _ = writeln!(
                text,
                "verified:   JWS signature, CA pin, pinned TLS (the server's chain to the pinned CA)"
            );
        }
        None => {
            for pin in &found.ca_bundle_pins {
                let _ = writeln!(text, "CA pin:     {pin} (NOT verified)");
            }
            let _ = writeln!(
                text,
                "verified:   JWS signature only (--discovery-token-unsafe-skip-ca-verification)"
            );
        }
    }
    reporter.result(&found, &text);
    Ok(())
}
