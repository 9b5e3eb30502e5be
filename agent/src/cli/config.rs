//! `join --config FILE`: a YAML file whose keys are join's long option names, for images that
//! prefer a unit with a config file (`node-attach.service`) to a script. Flags on the command
//! line win over the file. Values are validated exactly as the flags are; an unknown key is an
//! unknown flag (exit 2). The file may hold a token: it must not be readable by other users.
//!
//! ```yaml
//! endpoint: 10.0.0.10:6443
//! token-file: /etc/node-attach/token
//! discovery-token-ca-cert-hash: [sha256:…]
//! labels: workload_type=cpu
//! disable-swap: true
//! ```

use crate::error::{Code, Failure};
use std::ffi::OsString;
use std::path::Path;

/// The default configuration file of `node-attach.service`.
pub const DEFAULT_CONFIG: &str = "/etc/node-attach/config.yaml";

fn usage(m: String) -> Failure {
    Failure::new(Code::Usage, m)
}

/// Expands `--config FILE` in a `join` command line into flags (those already given win).
pub fn expand(argv: Vec<OsString>) -> Result<Vec<OsString>, Failure> {
    expand_with(argv, &read_options)
}

/// [`expand`] with the file's options from `load` (given the path as written): `check` reads
/// them from the userdata's `write_files` instead of this machine.
pub fn expand_with(
    argv: Vec<OsString>,
    load: &dyn Fn(&str) -> Result<serde_yaml_ng::Mapping, Failure>,
) -> Result<Vec<OsString>, Failure> {
    let is_join = argv.get(1).is_some_and(|a| a == "join");
    let pos = argv
        .iter()
        .position(|a| a == "--config" || a.to_string_lossy().starts_with("--config="));
    let (Some(pos), true) = (pos, is_join) else {
        return Ok(argv);
    };
    let arg = argv[pos].to_string_lossy().into_owned();
    let (path, consumed) = match arg.strip_prefix("--config=") {
        Some(p) => (p.to_owned(), 1),
        None => (
            argv.get(pos + 1)
                .map(|p| p.to_string_lossy().into_owned())
                .ok_or_else(|| usage("--config needs a file".into()))?,
            2,
        ),
    };
    let map = load(&path)?;
    let given = |flag: &str| {
        argv.iter().any(|a| {
            let a = a.to_string_lossy();
            a == flag || a.starts_with(&format!("{flag}="))
        })
    };
    let mut out: Vec<OsString> = argv[..pos].to_vec();
    for (k, v) in map {
        let key = option_name(&path, &k)?;
        let flag = format!("--{key}");
        if !given(&flag) {
            out.extend(flags_for(&path, &flag, &v)?);
        }
    }
    out.extend(argv[pos + consumed..].iter().cloned());
    Ok(out)
}

/// The file's mapping of option names to values: private (it may hold a token), at most
/// 1 MiB, strict YAML.
fn read_options(path: &str) -> Result<serde_yaml_ng::Mapping, Failure> {
    let file = super::common::read_input(Path::new(path), "--config", 1024 * 1024)?;
    if file.readable_by_others(false) {
        return Err(usage(format!(
            "--config {path} is readable by other users and may hold a token: chmod 600 (or 640) it"
        )));
    }
    let text = file
        .into_text(Path::new(path))
        .map_err(|e| usage(format!("--config {e}")))?;
    parse_options(path, &text)
}

/// A configuration file's text as a mapping of option names to values (strict YAML).
pub fn parse_options(path: &str, text: &str) -> Result<serde_yaml_ng::Mapping, Failure> {
    match crate::model::strict::yaml(text)
        .map_err(|e| usage(format!("--config {path}: not YAML: {e}")))?
    {
        serde_yaml_ng::Value::Mapping(m) => Ok(m),
        serde_yaml_ng::Value::Null => Ok(Default::default()),
        _ => Err(usage(format!(
            "--config {path}: expected a mapping of option names to values"
        ))),
    }
}

fn option_name<'k>(path: &str, k: &'k serde_yaml_ng::Value) -> Result<&'k str, Failure> {
    let key = k
        .as_str()
        .ok_or_else(|| usage(format!("--config {path}: keys must be option names")))?;
    let valid = key != "config"
        && key
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !valid {
        return Err(usage(format!(
            "--config {path}: {key:?} is not an option name"
        )));
    }
    Ok(key)
}

/// One option's flags: `--flag` for true, nothing for false or null, one `--flag=v` per item.
fn flags_for(path: &str, flag: &str, v: &serde_yaml_ng::Value) -> Result<Vec<OsString>, Failure> {
    use serde_yaml_ng::Value;
    let scalar = |v: &Value| -> Result<String, Failure> {
        match v {
            Value::String(s) => Ok(s.clone()),
            Value::Number(n) => Ok(n.to_string()),
            Value::Bool(b) => Ok(b.to_string()),
            _ => Err(usage(format!(
                "--config {path}: {} must be a string, number or boolean",
                flag.trim_start_matches("--")
            ))),
        }
    };
    Ok(match v {
        // A flag that takes a value (`ess: true`, `ess: false`) gets it spelled out.
        Value::Bool(b) if takes_value(flag.trim_start_matches("--")) == Some(true) => {
            vec![format!("{flag}={b}").into()]
        }
        Value::Bool(true) => vec![flag.into()],
        Value::Bool(false) | Value::Null => Vec::new(),
        Value::Sequence(items) => items
            .iter()
            .map(|item| scalar(item).map(|s| format!("{flag}={s}").into()))
            .collect::<Result<_, _>>()?,
        other => vec![format!("{flag}={}", scalar(other)?).into()],
    })
}

/// Whether join's long flag takes a value (None: join has no such flag), from its clap
/// definition.
pub fn takes_value(long: &str) -> Option<bool> {
    use clap::CommandFactory;
    let cli = super::Cli::command();
    let join = cli.find_subcommand("join")?;
    let arg = join.get_arguments().find(|a| a.get_long() == Some(long))?;
    Some(arg.get_action().takes_values())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// The config file names an artifact mirror and its key like the flags do, and join reads
    /// them into its settings.
    #[test]
    fn an_artifact_mirror_and_its_key_come_from_the_file() {
        use clap::Parser;
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("c.yaml");
        std::fs::write(&p, "artifacts-url: https://mirror.example/k8s\nartifacts-key: ed25519:bSctQPDsCU9/H4QoQylJg2/A5mK5N5kvpEXpOaEsS2s=\nair-gap: true\nkubelet-version: v1.20.2\nphase: prepare\n").expect("write");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let argv: Vec<OsString> = ["node-attach", "join", "--config", p.to_str().expect("utf8")]
            .iter()
            .map(OsString::from)
            .collect();
        let cli = crate::cli::Cli::try_parse_from(expand(argv).expect("expand")).expect("parse");
        let crate::cli::Command::Join(args) = cli.command else {
            panic!("join")
        };
        let s = crate::sources::settings::Settings::resolve(&args, None, None).expect("settings");
        let m = s.artifacts.mirror.expect("a mirror");
        assert_eq!(m.url.as_str(), "https://mirror.example/k8s/");
        assert_eq!(
            m.key.to_string(),
            "ed25519:bSctQPDsCU9/H4QoQylJg2/A5mK5N5kvpEXpOaEsS2s="
        );
        assert!(s.artifacts.air_gap);
        assert_eq!(s.phase, crate::cli::join::Phase::Prepare);
    }

    #[test]
    fn flags_win_and_lists_repeat() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("c.yaml");
        std::fs::write(&p, "endpoint: 1.2.3.4:6443\ndisable-swap: true\ness: false\ndry-run: false\ndiscovery-token-ca-cert-hash: [a, b]\nnode-name: from-file\n").expect("write");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let argv: Vec<OsString> = [
            "node-attach",
            "join",
            "--config",
            p.to_str().expect("utf8"),
            "--node-name",
            "from-flag",
        ]
        .iter()
        .map(OsString::from)
        .collect();
        let out: Vec<String> = expand(argv)
            .expect("expand")
            .into_iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert!(out.contains(&"--endpoint=1.2.3.4:6443".to_owned()));
        assert!(out.contains(&"--disable-swap".to_owned()));
        assert!(
            !out.iter().any(|a| a.starts_with("--dry-run")),
            "false switches are omitted"
        );
        assert!(
            out.contains(&"--ess=false".to_owned()),
            "a boolean that takes a value keeps it: {out:?}"
        );
        assert_eq!(
            out.iter()
                .filter(|a| a.starts_with("--discovery-token-ca-cert-hash="))
                .count(),
            2
        );
        assert!(
            !out.iter().any(|a| a.contains("from-file")),
            "the flag wins"
        );
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let argv: Vec<OsString> = ["node-attach", "join", "--config", p.to_str().expect("utf8")]
            .iter()
            .map(OsString::from)
            .collect();
        assert!(expand(argv).is_err(), "world-readable config refused");
    }
}
