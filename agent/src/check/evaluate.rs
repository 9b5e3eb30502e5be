//! One invocation's flags, validated by join's own code: `--config` expanded by
//! [`crate::cli::config::expand_with`] from the file the userdata writes, the words parsed by
//! join's clap definition, the tokens parsed as join parses them, and the whole merged by
//! [`Settings::resolve`]. What only the machine knows at boot (a `$VAR`, a file the userdata
//! does not write, the values service's answer, the instance metadata) is listed as unknown
//! and stands in as a placeholder, so the rest is still checked.

use super::plan::{Plan, Unknown};
use super::scan::{Found, Written};
use super::shell::Word;
use super::{Finding, Severity};
use crate::cli::join::JoinArgs;
use crate::cli::{Cli, Command};
use crate::model::secret::Secret;
use crate::model::token::{BootstrapToken, OpenApiToken};
use crate::model::validate::{classify_label, Endpoint, LabelClass};
use crate::sources::settings::Settings;
use crate::sources::values::{ClusterValues, ValuesFormat};
use clap::{CommandFactory, FromArgMatches};
use std::collections::BTreeMap;
use std::ffi::OsString;

const PLACEHOLDER_TOKEN: &str = "unknwn.0000000000000000";
const PLACEHOLDER_PIN: &str =
    "sha256:0000000000000000000000000000000000000000000000000000000000000000";
const PLACEHOLDER_HOST: &str = "unknown.invalid:6443";
const PLACEHOLDER_REGION: &str = "region-at-boot";
const PLACEHOLDER_INSTANCE: &str = "instance-id-at-boot";

/// What one invocation would do.
#[derive(Debug)]
pub struct Evaluated {
    /// join's command line, secrets redacted.
    pub argv: Vec<String>,
    /// What was found.
    pub findings: Vec<Finding>,
    /// The plan, when join would accept the flags.
    pub plan: Option<Plan>,
}

struct Eval<'a> {
    at: &'a str,
    files: &'a BTreeMap<String, Written>,
    findings: Vec<Finding>,
    unknown: Unknown,
}

use crate::cli::config::takes_value;

const SECRET_FLAGS: [&str; 2] = ["--token", "--openapi-token"];

/// Evaluates one invocation against the files the userdata writes.
pub fn evaluate(found: &Found, files: &BTreeMap<String, Written>) -> Evaluated {
    let mut ev = Eval {
        at: &found.at,
        files,
        findings: Vec::new(),
        unknown: Unknown::default(),
    };
    let argv = ev.known_words(&found.args);
    let shown = redacted(&argv);
    let plan = ev
        .join_settings(argv, &found.env)
        .map(|(settings, unknown)| {
            ev.settings_findings(&settings);
            Plan::of(&settings, &unknown)
        });
    Evaluated {
        argv: shown,
        findings: ev.findings,
        plan,
    }
}

fn redacted(argv: &[String]) -> Vec<String> {
    let mut out = Vec::with_capacity(argv.len());
    let mut hide_next = false;
    for a in argv {
        if std::mem::take(&mut hide_next) {
            out.push(crate::model::secret::REDACTED.to_owned());
            continue;
        }
        match a.split_once('=') {
            Some((flag, _)) if SECRET_FLAGS.contains(&flag) => {
                out.push(format!("{flag}={}", crate::model::secret::REDACTED));
            }
            _ => {
                hide_next = SECRET_FLAGS.contains(&a.as_str());
                out.push(a.clone());
            }
        }
    }
    out
}

impl Eval<'_> {
    fn finding(
        &mut self,
        severity: Severity,
        id: &'static str,
        message: String,
        fix: Option<&str>,
    ) {
        self.findings.push(Finding {
            severity,
            id,
            at: self.at.to_owned(),
            message,
            fix: fix.map(str::to_owned),
        });
    }

    /// The words whose value is known now; a flag whose value expands at boot is dropped
    /// (and remembered as unknown). A token in argv is flagged whatever its value.
    fn known_words(&mut self, words: &[Word]) -> Vec<String> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < words.len() {
            let w = &words[i];
            i += 1;
            let flag = w.text.split_once('=').map_or(w.text.as_str(), |(f, _)| f);
            if SECRET_FLAGS.contains(&flag) {
                let env = if flag == "--token" {
                    "NODE_ATTACH_TOKEN"
                } else {
                    "NODE_ATTACH_OPENAPI_TOKEN"
                };
                self.finding(
                    Severity::Warning,
                    "secret-in-argv",
                    format!("{flag} on the command line: every user on the machine sees it in the process list (ps, /proc/PID/cmdline), and it stays in the instance metadata"),
                    Some(&format!("pass it as {env}=… in the environment of the command, or in a 0600 file written by write_files and read with --config (or {flag}-file)")),
                );
            }
            if !w.text.starts_with("--") {
                if w.expands {
                    self.unknown.words.push(w.text.clone());
                } else {
                    out.push(w.text.clone());
                }
                continue;
            }
            let value_next = !w.text.contains('=') && takes_value(&flag[2..]) == Some(true);
            let next_expands = value_next && words.get(i).is_some_and(|n| n.expands);
            if w.expands || next_expands {
                let value = if next_expands {
                    &words[i].text
                } else {
                    &w.text
                };
                self.unknown.flags.push((flag.to_owned(), value.clone()));
                i += usize::from(next_expands);
                continue;
            }
            out.push(w.text.clone());
        }
        out
    }

    /// `--config FILE` and `--token-file`-style files: read from what the userdata writes.
    fn file(&mut self, flag: &str, path: &str) -> Option<String> {
        let Some(w) = self.files.get(path) else {
            self.unknown.files.push(format!("{flag} {path}"));
            return None;
        };
        let (content, mode, at) = (w.content.clone(), w.mode, w.at.clone());
        if flag == "--config" && mode.is_some_and(|m| m & 0o007 != 0) {
            self.finding(
                Severity::Error,
                "config-mode",
                format!("--config {path} is written readable by other users (mode {:04o}, at {at}); join refuses such a file, as it may hold a token", mode.unwrap_or(0)),
                Some("write it with permissions: '0600'"),
            );
        } else if mode.is_some_and(|m| m & 0o077 != 0) && flag != "--config" {
            self.finding(
                Severity::Warning,
                "secret-file-mode",
                format!(
                    "{flag} {path} is readable by other users (mode {:04o}, at {at})",
                    mode.unwrap_or(0)
                ),
                Some("write it with permissions: '0600'"),
            );
        }
        if content.is_none() {
            self.unknown
                .files
                .push(format!("{flag} {path} (an encoding not read here)"));
        }
        content
    }

    fn expand_config(&mut self, argv: Vec<String>) -> Option<Vec<OsString>> {
        let mut full: Vec<OsString> = ["node-attach", "join"].map(OsString::from).to_vec();
        full.extend(argv.iter().map(OsString::from));
        let pos = argv
            .iter()
            .position(|a| a == "--config" || a.starts_with("--config="));
        let Some(pos) = pos else {
            return Some(full);
        };
        let path = match argv[pos].strip_prefix("--config=") {
            Some(p) => p.to_owned(),
            None => argv.get(pos + 1).cloned().unwrap_or_default(),
        };
        let Some(text) = self.file("--config", &path) else {
            // Not written by the userdata: on the machine already (an image), unknown here.
            let skip = if argv[pos].contains('=') { 1 } else { 2 };
            full.drain(pos + 2..(pos + 2 + skip).min(full.len()));
            return Some(full);
        };
        let load = |p: &str| crate::cli::config::parse_options(p, &text);
        match crate::cli::config::expand_with(full, &load) {
            Ok(v) => Some(v),
            Err(f) => {
                self.finding(
                    Severity::Error,
                    "flags",
                    f.message,
                    Some("fix the config file"),
                );
                None
            }
        }
    }

    /// join's arguments as its clap definition parses them, tokens from the userdata's
    /// environment (never from this process's).
    fn parse(&mut self, argv: Vec<OsString>, env: &BTreeMap<String, Word>) -> Option<JoinArgs> {
        use clap::parser::ValueSource;
        let matches = match Cli::command().try_get_matches_from(argv) {
            Ok(m) => m,
            Err(e) => {
                let help = matches!(
                    e.kind(),
                    clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion
                );
                let message = match help {
                    true => {
                        "join --help prints help and exits 2: the node would not join".to_owned()
                    }
                    false => e
                        .render()
                        .to_string()
                        .lines()
                        .next()
                        .unwrap_or("")
                        .trim_start_matches("error: ")
                        .to_owned(),
                };
                self.finding(
                    Severity::Error,
                    "flags",
                    format!("join would refuse its command line (exit 2): {message}"),
                    Some("`node-attach join --help` lists the flags"),
                );
                return None;
            }
        };
        let from_env = |id: &str| {
            matches
                .subcommand_matches("join")
                .is_some_and(|m| m.value_source(id) == Some(ValueSource::EnvVariable))
        };
        let (token_env, openapi_env) = (from_env("token"), from_env("openapi_token"));
        let Ok(cli) = Cli::from_arg_matches(&matches) else {
            return None;
        };
        let Command::Join(args) = cli.command else {
            return None;
        };
        let mut args = *args;
        if token_env {
            args.token.token = None;
        }
        if openapi_env {
            args.openapi.openapi_token = None;
        }
        self.env_token(
            &mut args.token.token,
            args.token.token_file.is_some(),
            env,
            "NODE_ATTACH_TOKEN",
        );
        self.env_token(
            &mut args.openapi.openapi_token,
            args.openapi.openapi_token_file.is_some(),
            env,
            "NODE_ATTACH_OPENAPI_TOKEN",
        );
        Some(args)
    }

    fn env_token(
        &mut self,
        slot: &mut Option<Secret>,
        file: bool,
        env: &BTreeMap<String, Word>,
        name: &str,
    ) {
        if slot.is_some() || file {
            return;
        }
        match env.get(name) {
            Some(w) if w.expands => self.unknown.flags.push((name.to_owned(), w.text.clone())),
            Some(w) => *slot = Some(Secret::new(w.text.clone())),
            None => {}
        }
    }

    /// A token from its flag, environment or file, parsed as join parses it. `Err`: join
    /// would refuse it; `Ok(None)` with `given`: it is only known at boot.
    fn token<T: std::str::FromStr>(
        &mut self,
        value: &Option<Secret>,
        file: &Option<std::path::PathBuf>,
        flag: &str,
        env: &str,
    ) -> Result<(bool, Option<T>), ()>
    where
        T::Err: std::fmt::Display,
    {
        let (text, source) = match (value, file) {
            (Some(t), _) => (Some(t.expose().to_owned()), flag.to_owned()),
            (None, Some(p)) => {
                let path = p.to_string_lossy().into_owned();
                let text = self.file(&format!("{flag}-file"), &path);
                (
                    text.map(|t| t.lines().next().unwrap_or("").trim().to_owned()),
                    format!("{flag}-file {path}"),
                )
            }
            (None, None) => {
                let names = [flag.to_owned(), format!("{flag}-file"), env.to_owned()];
                let unknown = self.unknown.flags.iter().any(|(f, _)| names.contains(f));
                return Ok((unknown, None));
            }
        };
        let Some(text) = text else {
            return Ok((true, None));
        };
        match text.parse::<T>() {
            Ok(t) => Ok((true, Some(t))),
            Err(e) => {
                self.finding(
                    Severity::Error,
                    "flags",
                    format!("join would refuse {source}: {e}"),
                    None,
                );
                Err(())
            }
        }
    }

    fn join_settings(
        &mut self,
        argv: Vec<String>,
        env: &BTreeMap<String, Word>,
    ) -> Option<(Settings, Unknown)> {
        let argv = self.expand_config(argv)?;
        let mut args = self.parse(argv, env)?;
        let (token_given, token) = self
            .token::<BootstrapToken>(
                &args.token.token,
                &args.token.token_file,
                "--token",
                "NODE_ATTACH_TOKEN",
            )
            .ok()?;
        let (openapi_given, openapi) = self
            .token::<OpenApiToken>(
                &args.openapi.openapi_token,
                &args.openapi.openapi_token_file,
                "--openapi-token",
                "NODE_ATTACH_OPENAPI_TOKEN",
            )
            .ok()?;
        self.unknown.values = openapi_given;
        self.unknown.token = token_given && token.is_none();
        if crate::sources::metadata_wanted(&args, openapi_given) {
            self.unknown.metadata = true;
            args.instance_id
                .get_or_insert_with(|| PLACEHOLDER_INSTANCE.into());
            args.region.get_or_insert_with(|| PLACEHOLDER_REGION.into());
        }
        let values = match openapi_given {
            true => Some(self.values(&args, openapi)?),
            false => None,
        };
        let token = match (token, self.unknown.token) {
            (None, true) => PLACEHOLDER_TOKEN.parse().ok(),
            (token, _) => token,
        };
        for (flag, _) in self.unknown.flags.clone() {
            match flag.as_str() {
                "--endpoint" => args.endpoint = Some(PLACEHOLDER_HOST.into()),
                "--discovery-token-ca-cert-hash" => args
                    .pins
                    .ca_cert_hashes
                    .extend(PLACEHOLDER_PIN.parse().ok()),
                _ => {}
            }
        }
        match Settings::resolve(&args, token, values.as_ref()) {
            Ok(s) => Some((s, std::mem::take(&mut self.unknown))),
            Err(f) => {
                let message = format!(
                    "join would refuse it before changing anything ({}, exit {}): {}",
                    f.code,
                    f.code.exit_code(),
                    f.message
                );
                self.finding(Severity::Error, "flags", message, Some(f.hint));
                None
            }
        }
    }

    /// The values URL as join checks it, and placeholders for what the values service says.
    fn values(&mut self, args: &JoinArgs, openapi: Option<OpenApiToken>) -> Option<ClusterValues> {
        let token = openapi.or_else(|| "unknown-openapi-token".parse().ok())?;
        let source = crate::sources::values_source(args, token);
        match source.target() {
            Ok(t) => self.unknown.values_url = Some(t.shown),
            Err(e) => {
                self.finding(
                    Severity::Error,
                    "flags",
                    format!(
                        "join would refuse --values-url: {}",
                        crate::error::chain(&e)
                    ),
                    None,
                );
                return None;
            }
        }
        let mut v = ClusterValues::empty(ValuesFormat::Json);
        v.bootstrap_token = PLACEHOLDER_TOKEN.parse().ok();
        v.api_server_endpoints = Endpoint::parse("values", PLACEHOLDER_HOST)
            .ok()
            .into_iter()
            .collect();
        v.ca_cert_hashes = PLACEHOLDER_PIN.parse().ok().into_iter().collect();
        Some(v)
    }

    fn settings_findings(&mut self, s: &Settings) {
        for notice in &s.notices {
            let severity = match notice.contains("overrides") {
                true => Severity::Info,
                false => Severity::Warning,
            };
            self.finding(severity, "notice", notice.clone(), None);
        }
        for key in s.labels.0.keys() {
            if classify_label(key) != LabelClass::Restricted {
                continue;
            }
            let role = key.starts_with("node-role.kubernetes.io/");
            let message = format!(
                "label {key}: the kubelet may not set it on its own Node (NodeRestriction{}); join reports it and `node-attach serve` applies it after the node registers, nothing else does",
                if role { "; node-role.kubernetes.io/* is a role only the control plane grants" } else { "" }
            );
            self.finding(
                Severity::Warning,
                "restricted-label",
                message,
                Some("keep it only if the node-attach values service (or another controller) applies it; otherwise use a key outside kubernetes.io and k8s.io, or node-restriction.kubernetes.io/ for labels only admins may set"),
            );
        }
        if s.dry_run {
            self.finding(
                Severity::Warning,
                "dry-run",
                "--dry-run: the join prints its plan and changes nothing".into(),
                Some("drop --dry-run"),
            );
        }
    }
}
