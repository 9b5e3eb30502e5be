//! Flag groups shared by several subcommands, and reading secrets from files.

use crate::client::http::Limits;
use crate::error::{Code, Failure};
use crate::model::secret::Secret;
use crate::model::token::{BootstrapToken, OpenApiToken};
use crate::trust::pin::CaPin;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Environment variable holding the bootstrap token.
pub const ENV_TOKEN: &str = "NODE_ATTACH_TOKEN";
/// Environment variable holding the openapi token.
pub const ENV_OPENAPI_TOKEN: &str = "NODE_ATTACH_OPENAPI_TOKEN";

fn parse_duration(s: &str) -> Result<Duration, String> {
    crate::model::duration::parse(s)
}

fn parse_pin(s: &str) -> Result<CaPin, String> {
    s.parse::<CaPin>().map_err(|e| e.to_string())
}

/// The bootstrap token, from a flag, the environment, or a file.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct TokenArgs {
    /// Bootstrap token ID.SECRET (also NODE_ATTACH_TOKEN). On the command line it is visible
    /// to other users in the process list: prefer the environment or --token-file.
    #[arg(long, env = ENV_TOKEN, hide_env_values = true, value_name = "ID.SECRET", value_parser = secret_value)]
    pub token: Option<Secret>,

    /// Read the bootstrap token from this file (first line).
    #[arg(long, value_name = "FILE", conflicts_with = "token")]
    pub token_file: Option<PathBuf>,
}

impl TokenArgs {
    /// The token, if one was given in any form.
    pub fn resolve(&self) -> Result<Option<BootstrapToken>, Failure> {
        let (text, source) = match (&self.token, &self.token_file) {
            (Some(t), _) => (t.clone(), "--token".to_owned()),
            (None, Some(path)) => (
                read_secret_file(path, "--token-file")?,
                format!("--token-file {}", path.display()),
            ),
            (None, None) => return Ok(None),
        };
        text.expose()
            .parse::<BootstrapToken>()
            .map(Some)
            .map_err(|e| Failure::new(Code::Usage, format!("{source}: {e}")))
    }
}

/// The openapi token, from a flag, the environment, or a file.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct OpenApiTokenArgs {
    /// Openapi token: the key under which the control plane keeps this cluster's values
    /// (also NODE_ATTACH_OPENAPI_TOKEN).
    #[arg(long, env = ENV_OPENAPI_TOKEN, hide_env_values = true, value_name = "TOKEN", value_parser = secret_value)]
    pub openapi_token: Option<Secret>,

    /// Read the openapi token from this file (first line).
    #[arg(long, value_name = "FILE", conflicts_with = "openapi_token")]
    pub openapi_token_file: Option<PathBuf>,
}

/// Keeps a secret flag's value unparsed, so clap never echoes it in an error message; it is
/// validated by the caller, with messages that do not repeat it.
fn secret_value(s: &str) -> Result<Secret, String> {
    Ok(Secret::new(s))
}

impl OpenApiTokenArgs {
    /// The token, if one was given in any form.
    pub fn resolve(&self) -> Result<Option<OpenApiToken>, Failure> {
        let (text, source) = match (&self.openapi_token, &self.openapi_token_file) {
            (Some(t), _) => (t.clone(), "--openapi-token".to_owned()),
            (None, Some(path)) => (
                read_secret_file(path, "--openapi-token-file")?,
                format!("--openapi-token-file {}", path.display()),
            ),
            (None, None) => return Ok(None),
        };
        text.expose()
            .parse::<OpenApiToken>()
            .map(Some)
            .map_err(|e| Failure::new(Code::Usage, format!("{source}: {e}")))
    }
}

/// The largest file a flag may name (kubeconfigs, values, config files).
pub const MAX_INPUT_FILE: u64 = 1024 * 1024;

/// Reads a file a flag names (at most `max` bytes), as a usage error naming the flag.
pub fn read_input(
    path: &Path,
    flag: &str,
    max: u64,
) -> Result<crate::effects::input::InputFile, Failure> {
    crate::effects::input::read(path, max)
        .map_err(|e| Failure::new(Code::Usage, format!("{flag} {e}")))
}

/// Reads a UTF-8 file a flag names, at most [`MAX_INPUT_FILE`] bytes.
pub fn read_input_text(path: &Path, flag: &str) -> Result<String, Failure> {
    read_input(path, flag, MAX_INPUT_FILE)?
        .into_text(path)
        .map_err(|e| Failure::new(Code::Usage, format!("{flag} {e}")))
}

/// Reads the first line of a secret file; warns when others may read it.
pub fn read_secret_file(path: &Path, flag: &str) -> Result<Secret, Failure> {
    let file = read_input(path, flag, 64 * 1024)?;
    if file.readable_by_others(true) {
        tracing::warn!(path = %path.display(), "the secret file is readable by other users; chmod 600 it");
    }
    let text = Secret::new(String::from_utf8_lossy(&file.bytes).into_owned());
    let first = text.expose().lines().next().unwrap_or("").trim();
    Ok(Secret::new(first))
}

/// CA pinning flags, as kubeadm spells them.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct PinArgs {
    /// Pin of the cluster CA's public key, sha256:<hex>; repeatable, any may match.
    #[arg(long = "discovery-token-ca-cert-hash", value_name = "sha256:HEX", value_parser = parse_pin)]
    pub ca_cert_hashes: Vec<CaPin>,

    /// Trust the API server on the token's signature alone, without a CA pin (unsafe: anyone
    /// holding the token can impersonate the API server).
    #[arg(long = "discovery-token-unsafe-skip-ca-verification")]
    pub unsafe_skip_ca_verification: bool,
}

/// Network limits.
#[derive(Clone, Debug, clap::Args)]
pub struct NetworkArgs {
    /// How long to keep trying to read and verify cluster-info.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_duration)]
    pub discovery_timeout: Duration,

    /// Timeout of each HTTP request, body included.
    #[arg(long, value_name = "DURATION", default_value = "15s", value_parser = parse_duration)]
    pub request_timeout: Duration,

    /// Timeout of each TCP/TLS connection attempt.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
}

impl NetworkArgs {
    /// The per-request limits these flags describe.
    pub fn limits(&self) -> Limits {
        Limits {
            connect_timeout: self.connect_timeout.min(self.request_timeout),
            request_timeout: self.request_timeout,
            ..Limits::default()
        }
    }
}

/// Parses the boolean spellings attach_node.sh users write (`--ess true`).
pub fn parse_bool(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(format!("invalid boolean {s:?}: expected true or false")),
    }
}

/// Parses a flag with a [`crate::model::validate::SyntaxError`]-returning parser into clap's form.
pub fn duration_value(s: &str) -> Result<Duration, String> {
    parse_duration(s)
}
