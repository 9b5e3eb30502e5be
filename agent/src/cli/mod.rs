//! The command line: one module per subcommand, each a clap struct and a `run` function.
//!
//! Parsing never acts: an unknown flag or a malformed value prints what is wrong and the expected
//! form and exits 2, and so does `join --help` (a userdata script that runs
//! `attach.sh --help` must not look like a successful join).

pub mod artifacts;
pub mod check;
pub mod common;
pub mod config;
pub mod discover;
pub mod doctor;
pub mod join;
pub mod reset;
pub mod serve;
pub mod shell;
pub mod status;
pub mod token;
pub mod version;

use crate::error::{Code, Failure};
use crate::report::{OutputFormat, Reporter};
use clap::{CommandFactory, Parser, Subcommand};
use std::ffi::OsString;

/// node-attach: turn a Linux machine into a Kubernetes worker node, and back.
#[derive(Debug, Parser)]
#[command(
    name = "node-attach",
    version,
    disable_version_flag = true,
    propagate_version = true
)]
pub struct Cli {
    /// Output format.
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,

    /// More log detail on stderr (-v info, -vv debug, -vvv trace). Secrets are never logged.
    #[arg(long, short = 'v', global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// The subcommand.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Turn this machine into a worker node.
    Join(Box<join::JoinArgs>),
    /// Verify an API server like `kubeadm join` token discovery, changing nothing.
    Discover(discover::DiscoverArgs),
    /// Undo what join did and clean up what the kubelet left.
    Reset(reset::ResetArgs),
    /// Show what join did and how the node is doing.
    Status(status::StatusArgs),
    /// Manage bootstrap and openapi tokens (operators, with an admin kubeconfig).
    Token(token::TokenArgs),
    /// Serve cluster values to nodes by openapi token (the control plane's side).
    Serve(serve::ServeArgs),
    /// Lint userdata: the join's flags, secrets in argv, restricted labels, and its plan.
    Check(check::CheckArgs),
    /// Check this node's health: named, read-only checks, each with a fix.
    Doctor(doctor::DoctorArgs),
    /// Print the version.
    Version(version::VersionArgs),
    /// Build and sign artifact mirrors (the kubelet, CNI plugins, runtimes, images).
    Artifacts(artifacts::ArtifactsArgs),
    /// Print a shell completion script (bash, zsh, fish).
    Completions(shell::CompletionsArgs),
    /// Print a man page (roff), or list them.
    Man(shell::ManArgs),
}

impl Command {
    /// Whether the command's own `--json` asks for JSON output.
    fn json(&self) -> bool {
        match self {
            Command::Check(args) => args.json,
            Command::Doctor(args) => args.json,
            _ => false,
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Command::Join(_) => "join",
            Command::Discover(_) => "discover",
            Command::Reset(_) => "reset",
            Command::Status(_) => "status",
            Command::Token(_) => "token",
            Command::Serve(_) => "serve",
            Command::Check(_) => "check",
            Command::Doctor(_) => "doctor",
            Command::Version(_) => "version",
            Command::Artifacts(_) => "artifacts",
            Command::Completions(_) => "completions",
            Command::Man(_) => "man",
        }
    }
}

/// Parses `argv` and runs the command; returns the process exit code.
pub fn main_with_args<I, T>(argv: I) -> u8
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let argv: Vec<OsString> = argv.into_iter().map(Into::into).collect();
    let argv = match config::expand(argv) {
        Ok(a) => a,
        Err(failure) => {
            eprintln!("error: {failure}");
            return failure.code.exit_code();
        }
    };
    let cli = match Cli::try_parse_from(&argv) {
        Ok(cli) => cli,
        Err(err) => return parse_error(err, &argv),
    };
    crate::logging::init(cli.verbose);
    crate::trust::tls::install_provider();
    let format = match cli.command.json() {
        true => OutputFormat::Json,
        false => cli.output,
    };
    let mut reporter = Reporter::stdout(format);
    let name = cli.command.name();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            reporter.failure(
                None,
                &Failure::new(
                    Code::Internal,
                    format!("cannot start the async runtime: {e}"),
                ),
            );
            return Code::Internal.exit_code();
        }
    };
    let outcome = runtime.block_on(async {
        match cli.command {
            Command::Join(args) => join::run(*args, &mut reporter).await,
            Command::Discover(args) => discover::run(args, &mut reporter).await,
            Command::Reset(args) => reset::run(args, &mut reporter).await,
            Command::Status(args) => status::run(args, &mut reporter),
            Command::Token(args) => token::run(args, &mut reporter).await,
            Command::Serve(args) => serve::run(args, &mut reporter).await,
            Command::Check(args) => check::run(args, &mut reporter),
            Command::Doctor(args) => doctor::run(args, &mut reporter).await,
            Command::Version(args) => version::run(args, &mut reporter),
            Command::Artifacts(args) => artifacts::run(args, &mut reporter),
            Command::Completions(args) => shell::completions(&args),
            Command::Man(args) => shell::man(&args),
        }
    });
    match outcome {
        Ok(()) => 0,
        Err(failure) => {
            reporter.failure(Some(name), &failure);
            failure.code.exit_code()
        }
    }
}

fn parse_error(err: clap::Error, argv: &[OsString]) -> u8 {
    use clap::error::ErrorKind;
    let _ = err.print();
    match err.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let is_join = argv.iter().skip(1).any(|a| a == "join");
            if is_join {
                eprintln!("node-attach: join did not run (help was requested); exit code 2");
                Code::Usage.exit_code()
            } else {
                0
            }
        }
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => Code::Usage.exit_code(),
        _ => Code::Usage.exit_code(),
    }
}

/// Checks the clap definitions (used by a test).
pub fn debug_assert_cli() {
    Cli::command().debug_assert();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clap_definitions_are_consistent() {
        debug_assert_cli();
    }

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("node-attach").chain(args.iter().copied()))
    }

    #[test]
    fn the_three_field_forms_parse() {
        parse(&["join", "--openapi-token", "tok-0123456789"]).expect("manual");
        parse(&[
            "join",
            "--docker-version",
            "19.03.15",
            "--token",
            "abcdef.0123456789abcdef",
            "--endpoint",
            "192.168.0.80:6443",
            "--cluster-dns",
            "172.19.0.10",
        ])
        .expect("scale-out");
        parse(&[
            "join",
            "--openapi-token",
            "tok-0123456789",
            "--ess",
            "true",
            "--labels",
            "k8s.io/cluster-autoscaler=true,workload_type=cpu",
        ])
        .expect("autoscaler");
    }

    #[test]
    fn every_attach_node_flag_is_accepted() {
        let cli = parse(&[
            "join",
            "--openapi-token",
            "tok-0123456789",
            "--auto-fdisk",
            "--disk-device",
            "/dev/vdb",
            "--node-config",
            "x",
            "--beta-version",
            "b",
            "--network",
            "flannel",
            "--addon-names",
            "a,b",
            "--node-port-range",
            "30000-32767",
            "--overwrite-hostname",
            "true",
            "--cluster-type",
            "ManagedKubernetes",
            "--ip-vlan-enabled",
            "false",
            "--kube-version",
            "1.18.8",
            "--cms-enabled",
            "--cms-version",
            "1.3.7",
            "--node-cidr-mask",
            "26",
            "--cpu-policy",
            "none",
            "--disable-swap",
            "--runtime",
            "docker",
            "--runtime-version",
            "19.03.5",
            "--node-name-mode",
            "nodeip",
            "--taints",
            "a=b:NoSchedule",
            "--cluster-domain",
            "cluster.local",
        ])
        .expect("all flags");
        let Command::Join(args) = cli.command else {
            panic!("join")
        };
        assert_eq!(args.compat.notices().len(), 12);
    }

    #[test]
    fn malformed_values_are_usage_errors() {
        for args in [
            &["join", "--bogus"][..],
            &["join", "--ess", "maybe"],
            &["join", "--discovery-token-ca-cert-hash", "md5:00"],
            &[
                "discover",
                "--endpoint",
                "a:b",
                "--token",
                "abcdef.0123456789abcdef",
            ],
            &["join", "--discovery-timeout", "soon"],
        ] {
            assert!(parse(args).is_err(), "{args:?}");
        }
    }

    #[test]
    fn help_for_join_exits_two() {
        assert_eq!(main_with_args(["node-attach", "join", "--help"]), 2);
        assert_eq!(main_with_args(["node-attach", "join", "--no-such-flag"]), 2);
        assert_eq!(main_with_args(["node-attach", "--help"]), 0);
    }
}
