//! `node-attach version`.

use crate::error::Failure;
use crate::report::Reporter;
use serde::Serialize;

/// Print the version.
#[derive(Clone, Debug, clap::Args)]
pub struct VersionArgs {}

#[derive(Serialize)]
struct Version {
    version: &'static str,
    arch: &'static str,
}

/// Prints the version.
pub fn run(_args: VersionArgs, reporter: &mut Reporter) -> Result<(), Failure> {
    let v = Version {
        version: env!("CARGO_PKG_VERSION"),
        arch: std::env::consts::ARCH,
    };
    reporter.result(&v, &format!("node-attach {} ({})", v.version, v.arch));
    Ok(())
}
