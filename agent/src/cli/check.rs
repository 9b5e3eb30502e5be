//! `node-attach check FILE`: lint userdata (the logic is in [`crate::check`]).

use crate::check::{self, userdata};
use crate::effects::input::InputError;
use crate::error::{Code, Failure};
use crate::report::Reporter;
use std::path::PathBuf;

/// Lint userdata (a script, #cloud-config, MIME multi-part, gzip) before a machine boots with
/// it: the join's flags checked as join checks them, tokens in argv, restricted labels, and the
/// plan the join would follow. Reads only FILE; no network.
#[derive(Clone, Debug, clap::Args)]
pub struct CheckArgs {
    /// The userdata file.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,

    /// Print the report as JSON (the same as --output json).
    #[arg(long)]
    pub json: bool,
}

/// Runs the lint; the exit code says whether the join would run cleanly (0), run with
/// findings (`check.findings`) or be refused (`check.invalid`).
pub fn run(args: CheckArgs, reporter: &mut Reporter) -> Result<(), Failure> {
    let bytes = match crate::effects::input::read(&args.file, userdata::MAX_INPUT) {
        Ok(f) => f.bytes,
        // Oversized userdata is a finding about the userdata, not a usage error.
        Err(e @ InputError::TooLarge { .. }) => {
            return Err(Failure::new(
                Code::CheckInvalid,
                format!("check {e}: cloud providers take at most 16-32 KiB of userdata"),
            ))
        }
        Err(e) => return Err(Failure::new(Code::Usage, format!("check {e}"))),
    };
    let report = check::check(&bytes);
    reporter.result(&report, &report.text());
    match report.code() {
        None => Ok(()),
        Some(code) => Err(Failure::new(
            code,
            format!(
                "{}: {} error(s), {} warning(s)",
                args.file.display(),
                report.count(check::Severity::Error),
                report.count(check::Severity::Warning)
            ),
        )),
    }
}
