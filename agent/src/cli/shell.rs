//! `node-attach completions SHELL` and `node-attach man [PAGE]`: shell completions and man
//! pages generated from the very clap definitions the parser uses, so they never drift from the
//! flags. Both print to stdout; `packaging/deb/build.sh` installs them.

use crate::error::{Code, Failure};
use clap::CommandFactory;
use std::io::Write;

/// Print a shell completion script.
#[derive(Clone, Debug, clap::Args)]
pub struct CompletionsArgs {
    /// The shell: bash (source it, or install it as
    /// /usr/share/bash-completion/completions/node-attach), zsh (a `_node-attach` file on
    /// $fpath) or fish (~/.config/fish/completions/node-attach.fish).
    #[arg(value_enum)]
    pub shell: Shell,
}

/// The shells completions are made for.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Shell {
    /// GNU bash (with bash-completion).
    Bash,
    /// zsh.
    Zsh,
    /// fish.
    Fish,
}

/// Print a man page (roff).
#[derive(Clone, Debug, clap::Args)]
pub struct ManArgs {
    /// The page: a subcommand (`join`, `token-create`, …); none for node-attach(1).
    #[arg(value_name = "PAGE")]
    pub page: Option<String>,
    /// List the page names (node-attach, node-attach-join, …), one a line.
    #[arg(long, conflicts_with = "page")]
    pub list: bool,
}

fn write_out(bytes: &[u8]) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)
        .and_then(|()| out.flush())
        .map_err(|e| Failure::new(Code::Internal, format!("writing to stdout: {e}")))
}

/// Prints the completion script.
pub fn completions(args: &CompletionsArgs) -> Result<(), Failure> {
    let mut cmd = super::Cli::command();
    let mut buf = Vec::new();
    let name = "node-attach";
    let shell = match args.shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    clap_complete::generate(shell, &mut cmd, name, &mut buf);
    if matches!(args.shell, Shell::Bash) {
        buf = fix_bash_state_names(&buf);
    }
    write_out(&buf)
}

/// clap_complete's bash script spells a subcommand's state two ways when the binary's name has
/// a hyphen (`node__attach__subcmd__join` where it is set, `node__subcmd__attach__subcmd__join`
/// in the arm matching it: clap-rs/clap#6421, #6529), so nothing after a subcommand completed.
/// The arms are respelled the way the state is set.
fn fix_bash_state_names(script: &[u8]) -> Vec<u8> {
    String::from_utf8_lossy(script)
        .replace("node__subcmd__attach", "node__attach")
        .into_bytes()
}

/// The page with every non-ASCII character as a groff escape (`…` as `\[u2026]`), so it
/// renders the same with or without `preconv` (man runs it, plain groff does not).
fn ascii_roff(page: &str) -> String {
    let mut out = String::with_capacity(page.len());
    for c in page.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            out.push_str(&format!("\\[u{:04X}]", u32::from(c)));
        }
    }
    out
}

/// Every page: (name, the command it documents), depth first; `node-attach` first, then
/// `node-attach-join`, `node-attach-token`, `node-attach-token-create`, …
pub fn pages() -> Vec<(String, clap::Command)> {
    fn walk(page: &str, bin: &str, cmd: &clap::Command, out: &mut Vec<(String, clap::Command)>) {
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            if sub.get_name() == "help" {
                continue;
            }
            let name = format!("{page}-{}", sub.get_name());
            let bin_name = format!("{bin} {}", sub.get_name());
            out.push((
                name.clone(),
                sub.clone().name(name.clone()).bin_name(bin_name.clone()),
            ));
            walk(&name, &bin_name, sub, out);
        }
    }
    let mut root = super::Cli::command();
    root.build();
    let mut out = vec![("node-attach".to_owned(), root.clone())];
    walk("node-attach", "node-attach", &root, &mut out);
    out
}

/// Prints one man page, or the list of pages.
pub fn man(args: &ManArgs) -> Result<(), Failure> {
    let pages = pages();
    if args.list {
        let names: String = pages.iter().map(|(n, _)| format!("{n}\n")).collect();
        return write_out(names.as_bytes());
    }
    let want = match &args.page {
        Some(p) => format!("node-attach-{}", p.trim_start_matches("node-attach-")),
        None => "node-attach".to_owned(),
    };
    let Some((_, cmd)) = pages.into_iter().find(|(n, _)| *n == want) else {
        return Err(Failure::new(
            Code::Usage,
            format!("no man page {want:?}: `node-attach man --list` names them"),
        ));
    };
    let mut buf = Vec::new();
    clap_mangen::Man::new(cmd)
        .source(format!("node-attach {}", env!("CARGO_PKG_VERSION")))
        .manual("node-attach manual")
        .render(&mut buf)
        .map_err(|e| Failure::new(Code::Internal, format!("rendering {want}(1): {e}")))?;
    write_out(ascii_roff(&String::from_utf8_lossy(&buf)).as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_subcommand_has_a_page() {
        let names: Vec<String> = pages().into_iter().map(|(n, _)| n).collect();
        for n in [
            "node-attach",
            "node-attach-join",
            "node-attach-reset",
            "node-attach-token-create",
            "node-attach-completions",
        ] {
            assert!(names.contains(&n.to_owned()), "{n} in {names:?}");
        }
        let (_, create) = pages()
            .into_iter()
            .find(|(n, _)| n == "node-attach-token-create")
            .expect("page");
        assert_eq!(create.get_bin_name(), Some("node-attach token create"));
    }
}
