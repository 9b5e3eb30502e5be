//! `node-attach check FILE`: lints userdata before a machine boots with it. The userdata is
//! decoded as cloud-init reads it ([`userdata`]: script, cloud-config, MIME multi-part, gzip),
//! the node-attach invocations are found in its commands ([`scan`], over the [`shell`] lexer),
//! and each is validated by join's own flag parser and `Settings` merge ([`evaluate`]), with
//! findings (a token in argv, a restricted label, a config file others can read) and the plan
//! the join would follow ([`plan`]). Nothing on this machine is read but FILE, and nothing is
//! asked of the network.

pub mod evaluate;
pub mod plan;
pub mod scan;
pub mod shell;
pub mod userdata;

use crate::error::Code;
use serde::Serialize;

/// How much a finding matters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Worth knowing.
    Info,
    /// The join runs, but this should change.
    Warning,
    /// The join would fail (or not run at all).
    Error,
}

/// One thing found in the userdata.
#[derive(Clone, Debug, Serialize)]
pub struct Finding {
    /// How much it matters.
    pub severity: Severity,
    /// A stable id: `secret-in-argv`, `restricted-label`, `flags`, `malformed`…
    pub id: &'static str,
    /// Where: `part 2, line 7`.
    pub at: String,
    /// What.
    pub message: String,
    /// What to do instead.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

/// One join found in the userdata.
#[derive(Clone, Debug, Serialize)]
pub struct Invocation {
    /// Where.
    pub at: String,
    /// How it is run.
    pub via: &'static str,
    /// join's arguments, secrets redacted.
    pub argv: Vec<String>,
    /// What it would do (None: join would refuse it).
    pub plan: Option<plan::Plan>,
}

/// The whole lint.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The input's layers, outermost first.
    pub forms: Vec<&'static str>,
    /// The parts linted: (name, kind).
    pub parts: Vec<(String, userdata::PartKind)>,
    /// Parts not linted, and why.
    pub skipped: Vec<String>,
    /// The joins found.
    pub invocations: Vec<Invocation>,
    /// Everything found, in order.
    pub findings: Vec<Finding>,
}

impl Report {
    /// The failure code the lint ends with: none when clean, `check.findings` with warnings,
    /// `check.invalid` with errors.
    pub fn code(&self) -> Option<Code> {
        match self.findings.iter().map(|f| f.severity).max() {
            Some(Severity::Error) => Some(Code::CheckInvalid),
            Some(Severity::Warning) => Some(Code::CheckFindings),
            _ => None,
        }
    }

    /// How many findings there are of this severity.
    pub fn count(&self, severity: Severity) -> usize {
        self.findings
            .iter()
            .filter(|f| f.severity == severity)
            .count()
    }

    /// The report for people.
    pub fn text(&self) -> String {
        let mut t = format!("userdata: {}\n", self.forms.join(" > "));
        for (name, kind) in &self.parts {
            let kind = match kind {
                userdata::PartKind::Script => "script",
                userdata::PartKind::CloudConfig => "cloud-config",
                userdata::PartKind::Boothook => "boothook",
                userdata::PartKind::Other => "other",
            };
            t.push_str(&format!("  {name}: {kind}\n"));
        }
        for s in &self.skipped {
            t.push_str(&format!("  skipped {s}\n"));
        }
        for inv in &self.invocations {
            t.push_str(&format!(
                "\njoin at {} ({}):\n  node-attach join {}\n",
                inv.at,
                inv.via,
                inv.argv.join(" ")
            ));
            match &inv.plan {
                Some(p) => {
                    t.push_str("  would:\n");
                    t.push_str(&p.text());
                }
                None => t.push_str("  would be refused (see below)\n"),
            }
        }
        if !self.findings.is_empty() {
            t.push('\n');
        }
        for f in &self.findings {
            let level = format!("{:?}", f.severity).to_lowercase();
            t.push_str(&format!("{level}: {}: {} [{}]\n", f.at, f.message, f.id));
            if let Some(fix) = &f.fix {
                t.push_str(&format!("  fix: {fix}\n"));
            }
        }
        t.push_str(&format!(
            "\n{} join(s), {} error(s), {} warning(s)\n",
            self.invocations.len(),
            self.count(Severity::Error),
            self.count(Severity::Warning)
        ));
        t
    }
}

/// Lints userdata bytes.
pub fn check(bytes: &[u8]) -> Report {
    let mut report = Report {
        forms: Vec::new(),
        parts: Vec::new(),
        skipped: Vec::new(),
        invocations: Vec::new(),
        findings: Vec::new(),
    };
    let decoded = match userdata::decode(bytes) {
        Ok(d) => d,
        Err(e) => {
            report.findings.push(Finding {
                severity: Severity::Error,
                id: "malformed",
                at: "userdata".into(),
                message: e.to_string(),
                fix: None,
            });
            return report;
        }
    };
    report.forms = decoded.forms.clone();
    report.parts = decoded
        .parts
        .iter()
        .map(|p| (p.name.clone(), p.kind))
        .collect();
    report.skipped = decoded.skipped.clone();
    let scanned = scan::scan(&decoded.parts);
    report.findings.extend(scanned.findings);
    for found in &scanned.found {
        let ev = evaluate::evaluate(found, &scanned.files);
        report.findings.extend(ev.findings);
        report.invocations.push(Invocation {
            at: found.at.clone(),
            via: found.via,
            argv: ev.argv,
            plan: ev.plan,
        });
    }
    match report.invocations.len() {
        0 => report.findings.push(Finding {
            severity: Severity::Error,
            id: "no-join",
            at: "userdata".into(),
            message: "no node-attach join in it (node-attach join, attach.sh, or attach.sh piped into bash -s --): the machine would boot without joining".into(),
            fix: Some("add the join, e.g. `curl -fsSL https://HOST/attach.sh | NODE_ATTACH_OPENAPI_TOKEN=T bash -s --`".into()),
        }),
        1 => {}
        n => report.findings.push(Finding {
            severity: Severity::Warning,
            id: "several-joins",
            at: "userdata".into(),
            message: format!("{n} joins: the first that succeeds makes the others no-ops, and different flags conflict"),
            fix: Some("keep one".into()),
        }),
    }
    report
}

#[cfg(test)]
mod tests;
