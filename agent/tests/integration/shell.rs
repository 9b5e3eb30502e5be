//! Shell completions and man pages: the bash script loads in a real bash and completes
//! subcommands, their flags and flag values; every man page renders with groff without a warning
//! and with `man -l`.

use crate::support::*;
use std::process::{Command, Stdio};

/// Loads the bash completion and asks it for the words completing `line` (the last word is
/// the one being completed).
fn complete(script: &std::path::Path, line: &[&str]) -> Vec<String> {
    let words: Vec<String> = line.iter().map(|w| format!("'{w}'")).collect();
    let cword = line.len() - 1;
    let prev = if cword > 0 { line[cword - 1] } else { "" };
    let program = format!(
        "set -e; source '{}'; spec=$(complete -p node-attach); fn=${{spec#*-F }}; fn=${{fn%% *}}; \
         COMP_WORDS=({}); COMP_CWORD={cword}; COMP_LINE='{}'; COMP_POINT=${{#COMP_LINE}}; \
         \"$fn\" node-attach '{}' '{prev}'; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        script.display(),
        words.join(" "),
        line.join(" "),
        line[cword],
    );
    let out = Command::new("bash")
        .args(["--norc", "--noprofile", "-c", &program])
        .stdin(Stdio::null())
        .output()
        .expect("bash");
    assert!(
        out.status.success(),
        "bash: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_bash_completion_loads_and_completes_subcommands_and_their_flags() {
    let dir = tempfile::tempdir().expect("tmp");
    let gen = run(&["completions", "bash"]);
    gen.expect_code(0);
    let script = write(dir.path(), "node-attach.bash", &gen.stdout);
    assert_eq!(complete(&script, &["node-attach", "jo"]), ["join"]);
    let top = complete(&script, &["node-attach", ""]);
    for sub in ["join", "reset", "serve", "token", "completions", "man"] {
        assert!(top.contains(&sub.to_owned()), "{sub} in {top:?}");
    }
    assert_eq!(
        complete(&script, &["node-attach", "join", "--openapi-t"]),
        ["--openapi-token", "--openapi-token-file"]
    );
    assert_eq!(
        complete(&script, &["node-attach", "token", "cr"]),
        ["create"]
    );
    let shells = complete(&script, &["node-attach", "completions", ""]);
    for shell in ["bash", "zsh", "fish"] {
        assert!(shells.contains(&shell.to_owned()), "{shells:?}");
    }
    for shell in ["zsh", "fish"] {
        let out = run(&["completions", shell]);
        out.expect_code(0).expect_output("openapi-token");
    }
    run(&["completions", "tcsh"]).expect_code(2);
}

#[test]
fn every_man_page_renders_cleanly() {
    let list = run(&["man", "--list"]);
    list.expect_code(0);
    let pages: Vec<&str> = list.stdout.lines().collect();
    assert!(pages.len() >= 12, "{pages:?}");
    let dir = tempfile::tempdir().expect("tmp");
    for page in &pages {
        let arg = page.strip_prefix("node-attach-").unwrap_or("");
        let roff = if arg.is_empty() {
            run(&["man"])
        } else {
            run(&["man", arg])
        };
        roff.expect_code(0);
        let file = write(dir.path(), &format!("{page}.1"), &roff.stdout);
        let groff = Command::new("groff")
            .args(["-man", "-Tutf8", "-ww", "-P-cbou"])
            .arg(&file)
            .output()
            .expect("groff is installed");
        let text = String::from_utf8_lossy(&groff.stdout);
        assert!(groff.status.success(), "{page}");
        assert!(
            groff.stderr.is_empty(),
            "{page}: {}",
            String::from_utf8_lossy(&groff.stderr)
        );
        assert!(
            text.contains("NAME") && text.contains(page),
            "{page}: {text}"
        );
        let man = Command::new("man")
            .arg("-l")
            .arg(&file)
            .env("MANPAGER", "cat")
            .env("MANWIDTH", "100")
            .output()
            .expect("man is installed");
        assert!(man.status.success(), "man -l {page}");
        assert!(String::from_utf8_lossy(&man.stdout).contains("SYNOPSIS"));
    }
    let join = run(&["man", "join"]);
    assert!(join.stdout.contains("openapi\\-token"), "{}", join.stdout);
    run(&["man", "nonesuch"])
        .expect_code(2)
        .expect_output("man --list");
}

#[test]
fn the_deb_installs_the_completions_and_the_man_pages() {
    let dir = tempfile::tempdir().expect("tmp");
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let built = Command::new("sh")
        .arg(repo.join("packaging/deb/build.sh"))
        .arg(binary())
        .arg(dir.path().join("dist"))
        // A debug binary is large: the test's package is not compressed.
        .env("DPKG_DEB_COMPRESSOR_TYPE", "none")
        .output()
        .expect("sh");
    assert!(
        built.status.success(),
        "build.sh: {}",
        String::from_utf8_lossy(&built.stderr)
    );
    let deb = std::fs::read_dir(dir.path().join("dist"))
        .expect("dist")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .expect("a .deb");
    let tree = dir.path().join("tree");
    let x = Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(&tree)
        .status()
        .expect("dpkg-deb");
    assert!(x.success());
    let bash = tree.join("usr/share/bash-completion/completions/node-attach");
    assert_eq!(complete(&bash, &["node-attach", "res"]), ["reset"]);
    assert!(tree
        .join("usr/share/zsh/vendor-completions/_node-attach")
        .is_file());
    assert!(tree
        .join("usr/share/fish/vendor_completions.d/node-attach.fish")
        .is_file());
    let man1 = tree.join("usr/share/man/man1");
    let pages = run(&["man", "--list"]);
    for page in pages.stdout.lines() {
        let gz = man1.join(format!("{page}.1.gz"));
        let man = Command::new("man")
            .arg("-l")
            .arg(&gz)
            .env("MANPAGER", "cat")
            .output()
            .expect("man");
        let text = String::from_utf8_lossy(&man.stdout);
        assert!(
            man.status.success() && text.contains("SYNOPSIS"),
            "{page}: {text}"
        );
    }
}
