//! `node-attach reset`: undo what join did (see [`crate::reset`]).

use crate::effects::fs::Root;
use crate::effects::Effects;
use crate::error::{Code, Failure};
use crate::report::{Reporter, Status};
use crate::reset::{self, ResetOptions};
use std::path::PathBuf;

/// Return this machine to the state it was in before join.
#[derive(Clone, Debug, clap::Args)]
pub struct ResetArgs {
    /// The root prefix join used.
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub root: PathBuf,

    /// List every step and change nothing.
    #[arg(long)]
    pub dry_run: bool,

    /// Delete this node's Node object first: with --kubeconfig when given, else with the
    /// node's own credentials (which a real API server refuses: reported as a failed step). An
    /// unreachable API server is reported, not fatal.
    #[arg(long)]
    pub delete_node: bool,

    /// Drain the node first (cordon, evict honouring PodDisruptionBudgets), with --kubeconfig.
    #[arg(long, requires = "kubeconfig")]
    pub drain: bool,

    /// An admin kubeconfig, for --drain and --delete-node.
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,

    /// How long the drain may take.
    #[arg(long, value_name = "DURATION", default_value = "2m", value_parser = crate::model::duration::parse)]
    pub drain_timeout: std::time::Duration,

    /// Do nothing unless the node was marked for removal
    /// (/var/lib/node-attach/remove-on-shutdown exists); for the shutdown unit.
    #[arg(long)]
    pub only_if_marked: bool,

    /// Keep the packages join installed (the runtime and the dependencies it pulled in); by
    /// default reset removes exactly those, and never a package something else depends on.
    #[arg(long)]
    pub keep_packages: bool,

    /// Accepted for compatibility: removing what join installed is the default now.
    #[arg(long, hide = true)]
    pub remove_packages: bool,

    /// Without a journal, clean the kubelet's and CNI's documented paths anyway (for a node
    /// joined by other means); by default a run that finds no journal changes nothing.
    #[arg(long)]
    pub clean_kubernetes_paths: bool,

    /// Cleanup steps to skip: mounts, containers, kubelet-state, cni, iptables, interfaces.
    #[arg(long, value_name = "STEPS", value_delimiter = ',')]
    pub skip: Vec<String>,

    /// Write the audit report here (JSON, mode 0600): every path restored, removed or kept,
    /// what was there before and after (SHA-256, mode, link target) and why, and every step.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
}

const STEPS: &[&str] = &[
    "mounts",
    "containers",
    "kubelet-state",
    "cni",
    "iptables",
    "interfaces",
    "all",
];

/// Runs reset and prints its report.
pub async fn run(args: ResetArgs, reporter: &mut Reporter) -> Result<(), Failure> {
    if let Some(s) = args.skip.iter().find(|s| !STEPS.contains(&s.as_str())) {
        return Err(Failure::new(
            Code::Usage,
            format!(
                "invalid --skip {s:?}: expected some of {}",
                STEPS.join(", ")
            ),
        ));
    }
    let root = Root::new(&args.root);
    let marked = root
        .read(std::path::Path::new(crate::apply::records::REMOVAL_MARKER))
        .ok()
        .flatten()
        .is_some();
    if args.only_if_marked && !marked {
        reporter.notice(
            "not marked for removal (no /var/lib/node-attach/remove-on-shutdown): nothing to do",
        );
        return Ok(());
    }
    if root.is_host() && !nix::unistd::geteuid().is_root() && !args.dry_run {
        return Err(Failure::new(
            Code::Usage,
            "reset changes the host: run it as root (or --root DIR for a scratch tree)",
        ));
    }
    let opts = options(&args)?;
    let fx = Effects::real(root);
    let phase = reporter.begin("reset");
    let report = reset::run(&fx, &opts).await?;
    if let Some(path) = &args.report {
        write_report(path, &report)?;
    }
    let status = if report.problems > 0 {
        Status::Failed
    } else {
        Status::Done
    };
    phase.end(
        status,
        &format!("{} steps, journal {}", report.steps.len(), report.journal),
    );
    print_report(&report, reporter);
    if report.problems > 0 {
        return Err(Failure::new(
            Code::ResetIncomplete,
            format!(
                "{} reset steps failed or were refused; see above",
                report.problems
            ),
        ));
    }
    Ok(())
}

/// `--report FILE`: the whole report as JSON.
fn write_report(path: &std::path::Path, report: &reset::ResetReport) -> Result<(), Failure> {
    let mut json = serde_json::to_vec_pretty(report)
        .map_err(|e| Failure::new(Code::Internal, format!("the report as JSON: {e}")))?;
    json.push(b'\n');
    crate::effects::input::write_output(path, &json, 0o600)
        .map_err(|e| Failure::new(Code::Filesystem, format!("--report {e}")))
}

fn options(args: &ResetArgs) -> Result<ResetOptions, Failure> {
    let admin_kubeconfig = match &args.kubeconfig {
        Some(path) => Some(
            crate::client::kube::kubeconfig::load(Some(path))
                .map_err(|e| Failure::new(Code::Usage, crate::error::chain(&e)))?,
        ),
        None => None,
    };
    Ok(ResetOptions {
        dry_run: args.dry_run,
        delete_node: args.delete_node,
        keep_packages: args.keep_packages,
        skip: args.skip.clone(),
        drain: args.drain,
        clean_without_journal: args.clean_kubernetes_paths,
        admin_kubeconfig,
        drain_timeout: args.drain_timeout,
    })
}

fn print_report(report: &reset::ResetReport, reporter: &mut Reporter) {
    match report.journal {
        reset::JournalState::Used => {}
        reset::JournalState::Missing => reporter.notice(
            "the journal is missing: nothing of join's is left to undo (docs/reset.md)",
        ),
        reset::JournalState::Damaged => reporter.notice(
            "the journal is damaged: only the documented Kubernetes paths were cleaned (docs/reset.md)",
        ),
    }
    let c = reset::audit::counts(&report.paths);
    let mut text = format!(
        "node: {}\npaths: {} restored, {} removed, {} kept, {} refused or failed (--report FILE lists each with its SHA-256 before and after)\n",
        report.node, c.restored, c.removed, c.kept, c.problems
    );
    for s in &report.steps {
        let detail = match s.detail.is_empty() {
            true => String::new(),
            false => format!(" ({})", s.detail),
        };
        text.push_str(&format!(
            "  {:<10} {:<8} {}{detail}\n",
            s.kind,
            s.outcome.to_string(),
            s.target
        ));
    }
    reporter.result(report, &text);
}
