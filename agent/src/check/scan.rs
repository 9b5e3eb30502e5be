//! Finding the join in userdata: the commands of each script and of cloud-config's `runcmd`
//! and `bootcmd` (`sh -c "…"` read again as a script), the node-attach invocations among them
//! (`node-attach join …`, `attach.sh …`, `bash attach.sh …`, `curl …/attach.sh | bash -s -- …`)
//! with the environment they get, and the files the userdata writes (cloud-config
//! `write_files`, `cat > FILE <<EOF`, with their modes) so a `--config` or `--token-file`
//! they name can be read as the machine will.

use super::shell::{self, Command, Word};
use super::userdata::{Part, PartKind};
use super::{Finding, Severity};
use base64::Engine;
use std::collections::BTreeMap;

/// How deep `sh -c` strings are read again.
const MAX_NESTING: usize = 4;

/// One node-attach invocation found in the userdata.
#[derive(Clone, Debug)]
pub struct Found {
    /// `part 2, line 7`.
    pub at: String,
    /// How it is run.
    pub via: &'static str,
    /// The words after the program (join's flags).
    pub args: Vec<Word>,
    /// The environment it gets from the script (`export`, `NAME=value cmd`).
    pub env: BTreeMap<String, Word>,
}

/// A file the userdata writes.
#[derive(Clone, Debug)]
pub struct Written {
    /// Its content, when known.
    pub content: Option<String>,
    /// Its mode, when known.
    pub mode: Option<u32>,
    /// Where it is written.
    pub at: String,
}

/// What the scan found.
#[derive(Debug, Default)]
pub struct Scan {
    /// The invocations, in order.
    pub found: Vec<Found>,
    /// Files by path.
    pub files: BTreeMap<String, Written>,
    /// Problems with the userdata itself.
    pub findings: Vec<Finding>,
}

/// Scans the parts in the order cloud-init runs them: cloud-config's files and commands
/// first, then the scripts.
pub fn scan(parts: &[Part]) -> Scan {
    let mut out = Scan::default();
    let order = [PartKind::Boothook, PartKind::CloudConfig, PartKind::Script];
    for kind in order {
        for part in parts.iter().filter(|p| p.kind == kind) {
            match kind {
                PartKind::CloudConfig => out.cloud_config(part),
                _ => out.script(&part.name, &part.text, &mut BTreeMap::new(), 0),
            }
        }
    }
    out
}

fn error(at: String, id: &'static str, message: String) -> Finding {
    Finding {
        severity: Severity::Error,
        id,
        at,
        message,
        fix: None,
    }
}

fn word(text: &str) -> Word {
    Word {
        text: text.to_owned(),
        expands: false,
    }
}

fn basename(w: &Word) -> &str {
    w.text.rsplit('/').next().unwrap_or("")
}

fn is_attach_script(w: &Word) -> bool {
    let name = basename(w);
    name == "attach.sh" || name == "attach_node.sh"
}

fn assignment(w: &Word) -> Option<(String, Word)> {
    let (name, value) = w.text.split_once('=')?;
    let valid = !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    valid.then(|| {
        let value = Word {
            text: value.to_owned(),
            expands: w.expands,
        };
        (name.to_owned(), value)
    })
}

impl Scan {
    fn script(&mut self, name: &str, text: &str, env: &mut BTreeMap<String, Word>, depth: usize) {
        let commands = match shell::commands(text) {
            Ok(c) => c,
            Err(e) => {
                self.findings.push(error(
                    name.to_owned(),
                    "malformed",
                    format!("the shell cannot read this script: {e}"),
                ));
                return;
            }
        };
        let mut umask = 0o022;
        for cmd in &commands {
            let at = format!("{name}, line {}", cmd.line);
            self.command(cmd, &at, env, &mut umask, depth);
        }
    }

    fn command(
        &mut self,
        cmd: &Command,
        at: &str,
        env: &mut BTreeMap<String, Word>,
        umask: &mut u32,
        depth: usize,
    ) {
        if let (Some(target), Some(body)) = (&cmd.writes_to, &cmd.heredoc) {
            self.files.insert(
                target.text.clone(),
                Written {
                    content: Some(body.clone()),
                    mode: Some(0o666 & !*umask),
                    at: at.to_owned(),
                },
            );
        }
        let mut words: &[Word] = &cmd.words;
        let mut own_env = env.clone();
        while let Some((k, v)) = words.first().and_then(assignment) {
            own_env.insert(k, v);
            words = &words[1..];
        }
        let words = strip_wrappers(words, &mut own_env);
        let Some(prog) = words.first() else {
            // Only assignments: shell variables, exported or not (kept: a later `export`).
            *env = own_env;
            return;
        };
        match prog.text.as_str() {
            "export" => {
                for w in &words[1..] {
                    if let Some((k, v)) = assignment(w) {
                        env.insert(k, v);
                    }
                }
                return;
            }
            "umask" => {
                if let Some(m) = words
                    .get(1)
                    .and_then(|m| u32::from_str_radix(&m.text, 8).ok())
                {
                    *umask = m & 0o777;
                }
                return;
            }
            "chmod" => return self.chmod(&words[1..]),
            _ => {}
        }
        self.invocation(cmd, words, at, own_env, depth);
    }

    /// The invocation a command is, if any (an `sh -c` string is read as a script).
    fn invocation(
        &mut self,
        cmd: &Command,
        words: &[Word],
        at: &str,
        mut own_env: BTreeMap<String, Word>,
        depth: usize,
    ) {
        let Some(prog) = words.first() else {
            return;
        };
        let shells = [
            "sh",
            "bash",
            "dash",
            "/bin/sh",
            "/bin/bash",
            "/usr/bin/bash",
        ];
        let is_shell = shells.contains(&prog.text.as_str());
        if is_shell {
            if let Some(i) = words.iter().position(|w| w.text == "-c") {
                if let Some(inner) = words.get(i + 1) {
                    if depth < MAX_NESTING {
                        self.script(
                            &format!("{at} (sh -c)"),
                            &inner.text,
                            &mut own_env,
                            depth + 1,
                        );
                    }
                }
                return;
            }
        }
        let found = |via: &'static str, args: &[Word]| Found {
            at: at.to_owned(),
            via,
            args: args.to_vec(),
            env: own_env.clone(),
        };
        let piped_attach = cmd
            .piped_from
            .as_ref()
            .is_some_and(|from| from.iter().any(is_attach_script));
        let found =
            if basename(prog) == "node-attach" && words.get(1).is_some_and(|w| w.text == "join") {
                Some(found("node-attach join", &words[2..]))
            } else if is_attach_script(prog) {
                Some(found("attach.sh", &words[1..]))
            } else if is_shell && words.get(1).is_some_and(is_attach_script) {
                Some(found("attach.sh run by the shell", &words[2..]))
            } else if is_shell && piped_attach && words.iter().any(|w| w.text == "-s") {
                let after = words
                    .iter()
                    .position(|w| w.text == "--")
                    .or_else(|| words.iter().position(|w| w.text == "-s"));
                Some(found(
                    "attach.sh piped into the shell",
                    &words[after.map_or(words.len(), |i| i + 1)..],
                ))
            } else {
                None
            };
        self.found.extend(found);
    }

    fn chmod(&mut self, args: &[Word]) {
        let [mode, paths @ ..] = args else {
            return;
        };
        let Ok(mode) = u32::from_str_radix(&mode.text, 8) else {
            return;
        };
        for p in paths {
            if let Some(f) = self.files.get_mut(&p.text) {
                f.mode = Some(mode & 0o7777);
            }
        }
    }

    fn cloud_config(&mut self, part: &Part) {
        let doc: serde_yaml_ng::Value = match crate::model::strict::yaml(&part.text) {
            Ok(d) => d,
            Err(e) => {
                self.findings.push(error(
                    part.name.clone(),
                    "malformed",
                    format!("cloud-init cannot read this cloud-config: {e}"),
                ));
                return;
            }
        };
        if let Some(files) = doc.get("write_files").and_then(|f| f.as_sequence()) {
            for (i, f) in files.iter().enumerate() {
                self.write_file(&format!("{}, write_files[{i}]", part.name), f);
            }
        }
        for key in ["bootcmd", "runcmd"] {
            let Some(items) = doc.get(key).and_then(|c| c.as_sequence()) else {
                continue;
            };
            for (i, item) in items.iter().enumerate() {
                let at = format!("{}, {key}[{i}]", part.name);
                self.cloud_command(&at, item);
            }
        }
    }

    fn cloud_command(&mut self, at: &str, item: &serde_yaml_ng::Value) {
        use serde_yaml_ng::Value;
        match item {
            // A string runs through `sh -c`.
            Value::String(s) => self.script(at, s, &mut BTreeMap::new(), 1),
            // A list is executed as is: no shell, no expansion.
            Value::Sequence(list) => {
                let words: Vec<Word> = list.iter().map(|v| word(&scalar(v))).collect();
                let cmd = Command {
                    line: 0,
                    words,
                    ..Command::default()
                };
                self.command(&cmd, at, &mut BTreeMap::new(), &mut 0o022, 1);
            }
            _ => {}
        }
    }

    fn write_file(&mut self, at: &str, f: &serde_yaml_ng::Value) {
        let Some(path) = f.get("path").and_then(|p| p.as_str()) else {
            return;
        };
        let content = f.get("content").map(scalar).unwrap_or_default();
        let encoding = f.get("encoding").and_then(|e| e.as_str()).unwrap_or("text");
        let content = match encoding.to_ascii_lowercase().as_str() {
            "text" | "" => Some(content),
            "b64" | "base64" => base64::engine::general_purpose::STANDARD
                .decode(content.split_whitespace().collect::<String>())
                .ok()
                .and_then(|b| String::from_utf8(b).ok()),
            _ => None,
        };
        // cloud-init writes 0644 unless told otherwise.
        let mode = match f.get("permissions") {
            None => Some(0o644),
            Some(p) => parse_mode(&scalar(p)),
        };
        self.files.insert(
            path.to_owned(),
            Written {
                content,
                mode,
                at: at.to_owned(),
            },
        );
    }
}

/// A YAML scalar as text.
fn scalar(v: &serde_yaml_ng::Value) -> String {
    use serde_yaml_ng::Value;
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        _ => String::new(),
    }
}

/// `"0600"`, `'600'`, `0o600`, or an integer YAML already read as octal (384).
fn parse_mode(text: &str) -> Option<u32> {
    let t = text.trim().trim_start_matches("0o");
    if t.bytes().all(|b| (b'0'..=b'7').contains(&b)) && !t.is_empty() {
        u32::from_str_radix(t, 8).ok()
    } else {
        t.parse::<u32>().ok().filter(|m| *m <= 0o7777)
    }
}

/// Drops `sudo`, `exec`, `env NAME=v`, `nohup`, `time`, `command`, `timeout N` in front.
fn strip_wrappers<'w>(mut words: &'w [Word], env: &mut BTreeMap<String, Word>) -> &'w [Word] {
    loop {
        let Some(first) = words.first() else {
            return words;
        };
        match first.text.as_str() {
            "sudo" | "exec" | "nohup" | "time" | "command" | "then" | "do" | "else" | "!" => {
                words = &words[1..];
                while words.first().is_some_and(|w| w.text.starts_with('-')) {
                    words = &words[1..];
                }
            }
            "env" => {
                words = &words[1..];
                while let Some(w) = words.first() {
                    if let Some((k, v)) = assignment(w) {
                        env.insert(k, v);
                    } else if !w.text.starts_with('-') {
                        break;
                    }
                    words = &words[1..];
                }
            }
            "timeout" => words = words.get(2..).unwrap_or_default(),
            _ => return words,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(kind: PartKind, text: &str) -> Part {
        Part {
            name: "userdata".into(),
            kind,
            text: text.into(),
        }
    }

    fn args(f: &Found) -> Vec<&str> {
        f.args.iter().map(|w| w.text.as_str()).collect()
    }

    #[test]
    fn every_way_of_running_the_join_is_found() {
        let s = scan(&[part(
            PartKind::Script,
            "#!/bin/bash\nexport NODE_ATTACH_TOKEN=abc\ncurl -fsSL https://h/attach.sh | bash -s -- --endpoint e:6443\nsudo /usr/local/bin/node-attach join --node-name n\nbash /tmp/attach_node.sh --docker-version 19\nenv X=1 ./attach.sh --ess true\nsh -c 'node-attach join --labels a=b'\necho node-attach join\n",
        )]);
        let got: Vec<_> = s.found.iter().map(|f| (f.via, args(f))).collect();
        assert_eq!(
            got,
            [
                (
                    "attach.sh piped into the shell",
                    vec!["--endpoint", "e:6443"]
                ),
                ("node-attach join", vec!["--node-name", "n"]),
                ("attach.sh run by the shell", vec!["--docker-version", "19"]),
                ("attach.sh", vec!["--ess", "true"]),
                ("node-attach join", vec!["--labels", "a=b"]),
            ]
        );
        assert_eq!(s.found[0].env["NODE_ATTACH_TOKEN"].text, "abc");
        assert_eq!(s.found[3].env["X"].text, "1");
    }

    #[test]
    fn cloud_config_files_and_commands() {
        let s = scan(&[part(
            PartKind::CloudConfig,
            "#cloud-config\nwrite_files:\n  - path: /etc/a\n    permissions: '0600'\n    content: |\n      k: v\n  - path: /etc/b\n    content: x\nruncmd:\n  - [sh, -c, 'curl https://h/attach.sh | bash -s -- --config /etc/a']\n  - [node-attach, join, --node-name, $(x)]\n",
        )]);
        assert_eq!(s.files["/etc/a"].mode, Some(0o600));
        assert_eq!(s.files["/etc/a"].content.as_deref(), Some("k: v\n"));
        assert_eq!(s.files["/etc/b"].mode, Some(0o644));
        assert_eq!(args(&s.found[0]), ["--config", "/etc/a"]);
        assert!(!s.found[1].args[1].expands, "a list is not expanded");
        assert_eq!(parse_mode("384"), Some(0o600));
    }

    #[test]
    fn heredoc_files_take_the_umask_and_chmod() {
        let s = scan(&[part(
            PartKind::Script,
            "#!/bin/sh\ncat > /etc/c <<EOF\nt: 1\nEOF\numask 077\ncat > /etc/d <<EOF\nEOF\nchmod 0640 /etc/c\n",
        )]);
        assert_eq!(s.files["/etc/c"].mode, Some(0o640));
        assert_eq!(s.files["/etc/d"].mode, Some(0o600));
    }
}
