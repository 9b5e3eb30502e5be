//! `node-attach doctor`: named, read-only health checks (the logic is in [`crate::doctor`]).

use crate::doctor::{self, Options, Status};
use crate::effects::fs::Root;
use crate::effects::Effects;
use crate::error::{Code, Failure};
use crate::report::Reporter;
use std::path::PathBuf;
use std::time::Duration;

fn parse_duration(s: &str) -> Result<Duration, String> {
    crate::model::duration::parse(s)
}

/// Check this node: the journal and the tree, the kubelet's certificate and unit, the
/// runtime's socket, swap, kernel settings, the API server with the pinned CA, and the Node
/// registered and Ready. Read-only; safe on a healthy node and on a broken one.
#[derive(Clone, Debug, clap::Args)]
pub struct DoctorArgs {
    /// The root prefix join used (the host's services and kernel are only checked for /).
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub root: PathBuf,

    /// Do not ask the API server.
    #[arg(long)]
    pub no_cluster: bool,

    /// Deadline of each network check.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,

    /// Print the report as JSON (the same as --output json).
    #[arg(long)]
    pub json: bool,
}

/// Runs the checks; exits `doctor.failed` when one fails (warnings and skips do not).
pub async fn run(args: DoctorArgs, reporter: &mut Reporter) -> Result<(), Failure> {
    let effects = Effects::real(Root::new(&args.root));
    let options = Options {
        cluster: !args.no_cluster,
        timeout: args.timeout,
        now: time::OffsetDateTime::now_utc().unix_timestamp(),
    };
    let report = doctor::run(&effects, &options).await;
    reporter.result(&report, &report.text());
    match report.worst() {
        Status::Fail => {
            let failed: Vec<&str> = report
                .checks
                .iter()
                .filter(|c| c.status == Status::Fail)
                .map(|c| c.name)
                .collect();
            Err(Failure::new(
                Code::DoctorFailed,
                format!("failed: {}", failed.join(", ")),
            ))
        }
        _ => Ok(()),
    }
}
