//! Enough of the POSIX shell grammar to find commands in a userdata script: words with their
//! quoting (single, double, backslash, line continuations), comments, the separators `;` `&`
//! `&&` `||` newline, pipes, `>` redirections and here-documents (`cat > FILE <<EOF`, a common
//! way to write a config file). Nothing is executed or expanded: a word that would expand at
//! boot (`$VAR`, `$(…)`, backquotes) is marked, so its value counts as unknown.

/// The largest script read (the caller bounds the input; this bounds the work per word).
const MAX_WORDS: usize = 100_000;

/// One shell word.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Word {
    /// The text with quotes removed (expansions left as written).
    pub text: String,
    /// Whether part of it expands at boot (unquoted or double-quoted `$`, backquotes).
    pub expands: bool,
}

/// One simple command.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Command {
    /// The line it starts on (1-based, within its script).
    pub line: usize,
    /// Its words, leading `NAME=value` assignments included.
    pub words: Vec<Word>,
    /// The words of the command piped into this one (`a | b`: a's words, on b).
    pub piped_from: Option<Vec<Word>>,
    /// The target of a `>` or `>>` redirection.
    pub writes_to: Option<Word>,
    /// A here-document's body.
    pub heredoc: Option<String>,
}

/// Why a script could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ShellError {
    /// A quote, `$(` or backquote that never closes.
    #[error("line {line}: unterminated {what}")]
    Unterminated {
        /// Where it started.
        line: usize,
        /// What is open.
        what: &'static str,
    },
    /// A here-document whose delimiter line never comes.
    #[error("line {line}: here-document without its closing {delimiter:?} line")]
    Heredoc {
        /// Where it started.
        line: usize,
        /// The delimiter.
        delimiter: String,
    },
    /// Too many words.
    #[error("more than {MAX_WORDS} words")]
    TooLarge,
}

struct Lexer<'a> {
    chars: std::iter::Peekable<std::str::Chars<'a>>,
    line: usize,
    out: Vec<Command>,
    current: Command,
    word: Option<Word>,
    redirect_next: bool,
    pending_heredoc: Option<(String, usize)>,
    pipe_pending: bool,
    words: usize,
}

/// The script's simple commands, in order.
pub fn commands(script: &str) -> Result<Vec<Command>, ShellError> {
    let mut lx = Lexer {
        chars: script.chars().peekable(),
        line: 1,
        out: Vec::new(),
        current: Command {
            line: 1,
            ..Command::default()
        },
        word: None,
        redirect_next: false,
        pending_heredoc: None,
        pipe_pending: false,
        words: 0,
    };
    lx.run()?;
    Ok(lx.out)
}

impl Lexer<'_> {
    fn run(&mut self) -> Result<(), ShellError> {
        while let Some(c) = self.chars.next() {
            match c {
                ' ' | '\t' | '\r' => self.end_word()?,
                '\n' => self.newline()?,
                '#' if self.word.is_none() => self.skip_comment(),
                '\\' => match self.chars.next() {
                    Some('\n') => self.line += 1,
                    Some(other) => self.push(other, false),
                    None => {}
                },
                '\'' => self.single_quoted()?,
                '"' => self.double_quoted()?,
                '$' => self.dollar()?,
                '`' => self.backquoted()?,
                ';' | '(' | ')' => self.end_command(false)?,
                '&' => {
                    self.chars.next_if_eq(&'&');
                    self.end_command(false)?;
                }
                '|' => {
                    let or = self.chars.next_if_eq(&'|').is_some();
                    self.end_command(!or)?;
                }
                '>' => {
                    self.end_word()?;
                    self.chars.next_if_eq(&'>');
                    self.redirect_next = true;
                }
                '<' if self.chars.peek() == Some(&'<') => {
                    self.chars.next();
                    self.heredoc_start()?;
                }
                '<' => self.end_word()?,
                other => self.push(other, false),
            }
        }
        self.end_command(false)
    }

    fn word_mut(&mut self) -> &mut Word {
        self.word.get_or_insert_with(|| Word {
            text: String::new(),
            expands: false,
        })
    }

    fn push(&mut self, c: char, expands: bool) {
        let w = self.word_mut();
        w.text.push(c);
        w.expands |= expands;
    }

    fn end_word(&mut self) -> Result<(), ShellError> {
        let Some(w) = self.word.take() else {
            return Ok(());
        };
        self.words += 1;
        if self.words > MAX_WORDS {
            return Err(ShellError::TooLarge);
        }
        if std::mem::take(&mut self.redirect_next) {
            self.current.writes_to = Some(w);
        } else {
            if self.current.words.is_empty() {
                self.current.line = self.line;
            }
            self.current.words.push(w);
        }
        Ok(())
    }

    fn end_command(&mut self, pipe: bool) -> Result<(), ShellError> {
        self.end_word()?;
        let line = self.line;
        let mut done = std::mem::replace(
            &mut self.current,
            Command {
                line,
                ..Command::default()
            },
        );
        let has_content = !done.words.is_empty() || done.writes_to.is_some();
        if has_content {
            if std::mem::take(&mut self.pipe_pending) {
                done.piped_from = self.out.last().map(|c| c.words.clone());
            }
            self.out.push(done);
        }
        // A pipe at the end of a line continues on the next one.
        self.pipe_pending = pipe && has_content;
        Ok(())
    }

    fn newline(&mut self) -> Result<(), ShellError> {
        let pipe = self.pipe_pending;
        let heredoc = self.pending_heredoc.take();
        if self.current.words.is_empty() && self.word.is_none() && pipe {
            self.line += 1;
            return Ok(());
        }
        self.end_word()?;
        if let Some((delimiter, line)) = heredoc {
            self.line += 1;
            let body = self.heredoc_body(&delimiter, line)?;
            self.line += 1;
            self.current.heredoc = Some(body);
            self.end_command(false)?;
            return Ok(());
        }
        self.end_command(false)?;
        self.line += 1;
        self.current.line = self.line;
        Ok(())
    }

    fn skip_comment(&mut self) {
        while self.chars.next_if(|c| *c != '\n').is_some() {}
    }

    fn single_quoted(&mut self) -> Result<(), ShellError> {
        let start = self.line;
        self.word_mut();
        loop {
            match self.chars.next() {
                Some('\'') => return Ok(()),
                Some(c) => {
                    if c == '\n' {
                        self.line += 1;
                    }
                    self.push(c, false);
                }
                None => {
                    return Err(ShellError::Unterminated {
                        line: start,
                        what: "' quote",
                    })
                }
            }
        }
    }

    fn double_quoted(&mut self) -> Result<(), ShellError> {
        let start = self.line;
        self.word_mut();
        loop {
            match self.chars.next() {
                Some('"') => return Ok(()),
                Some('\\') => match self.chars.next() {
                    Some('\n') => self.line += 1,
                    Some(c @ ('$' | '`' | '"' | '\\')) => self.push(c, false),
                    Some(c) => {
                        self.push('\\', false);
                        self.push(c, false);
                    }
                    None => break,
                },
                Some('$') => self.dollar()?,
                Some('`') => self.backquoted()?,
                Some(c) => {
                    if c == '\n' {
                        self.line += 1;
                    }
                    self.push(c, false);
                }
                None => break,
            }
        }
        Err(ShellError::Unterminated {
            line: start,
            what: "\" quote",
        })
    }

    /// `$NAME`, `${…}`, `$(…)`: kept as written, marked as expanding.
    fn dollar(&mut self) -> Result<(), ShellError> {
        let close = match self.chars.peek() {
            Some('(') => ')',
            Some('{') => '}',
            Some(c) if c.is_ascii_alphanumeric() || "_@*#?$!-".contains(*c) => {
                self.push('$', true);
                return Ok(());
            }
            _ => {
                self.push('$', false);
                return Ok(());
            }
        };
        let open = self.chars.next().unwrap_or(close);
        self.push('$', true);
        self.push(open, true);
        let start = self.line;
        let mut depth = 1usize;
        while let Some(c) = self.chars.next() {
            if c == '\n' {
                self.line += 1;
            }
            self.push(c, true);
            if c == open {
                depth += 1;
            } else if c == close {
                depth -= 1;
                if depth == 0 {
                    return Ok(());
                }
            }
        }
        Err(ShellError::Unterminated {
            line: start,
            what: if close == ')' { "$(" } else { "${" },
        })
    }

    fn backquoted(&mut self) -> Result<(), ShellError> {
        let start = self.line;
        self.push('`', true);
        while let Some(c) = self.chars.next() {
            if c == '\n' {
                self.line += 1;
            }
            self.push(c, true);
            if c == '`' {
                return Ok(());
            }
        }
        Err(ShellError::Unterminated {
            line: start,
            what: "` quote",
        })
    }

    /// `<<WORD`, `<<-WORD`, `<<'WORD'`: the body starts on the next line.
    fn heredoc_start(&mut self) -> Result<(), ShellError> {
        self.end_word()?;
        self.chars.next_if_eq(&'-');
        while self.chars.next_if(|c| *c == ' ' || *c == '\t').is_some() {}
        let mut delimiter = String::new();
        while let Some(c) = self
            .chars
            .next_if(|c| !c.is_whitespace() && !";&|<>".contains(*c))
        {
            if c != '\'' && c != '"' && c != '\\' {
                delimiter.push(c);
            }
        }
        self.pending_heredoc = Some((delimiter, self.line));
        Ok(())
    }

    fn heredoc_body(&mut self, delimiter: &str, start: usize) -> Result<String, ShellError> {
        let mut body = String::new();
        loop {
            let mut line = String::new();
            let mut ended = false;
            for c in self.chars.by_ref() {
                if c == '\n' {
                    ended = true;
                    break;
                }
                line.push(c);
            }
            if line.trim_start_matches('\t') == delimiter {
                return Ok(body);
            }
            if !ended {
                return Err(ShellError::Heredoc {
                    line: start,
                    delimiter: delimiter.to_owned(),
                });
            }
            self.line += 1;
            body.push_str(&line);
            body.push('\n');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(c: &Command) -> Vec<&str> {
        c.words.iter().map(|w| w.text.as_str()).collect()
    }

    #[test]
    fn quotes_continuations_and_pipes() {
        let s = "#!/bin/bash\nset -e # comment\ncurl -fsSL https://h/attach.sh \\\n  | NODE_ATTACH_TOKEN='a b' bash -s -- \\\n   --labels \"x=y\" --node-name \"$(hostname)\"\n";
        let cmds = commands(s).expect("lex");
        assert_eq!(cmds.len(), 3, "{cmds:?}");
        assert_eq!(texts(&cmds[0]), ["set", "-e"]);
        assert_eq!(cmds[2].line, 4);
        assert_eq!(
            texts(&cmds[2]),
            [
                "NODE_ATTACH_TOKEN=a b",
                "bash",
                "-s",
                "--",
                "--labels",
                "x=y",
                "--node-name",
                "$(hostname)"
            ]
        );
        assert!(cmds[2].words[7].expands && !cmds[2].words[5].expands);
        assert_eq!(
            cmds[2].piped_from.as_ref().map(|w| w[2].text.as_str()),
            Some("https://h/attach.sh")
        );
    }

    #[test]
    fn heredocs_and_redirections() {
        let s = "cat > /etc/node-attach/config.yaml <<'EOF'\ntoken: x\nEOF\nnode-attach join --config /etc/node-attach/config.yaml\n";
        let cmds = commands(s).expect("lex");
        assert_eq!(cmds.len(), 2, "{cmds:?}");
        assert_eq!(cmds[0].heredoc.as_deref(), Some("token: x\n"));
        assert_eq!(
            cmds[0].writes_to.as_ref().map(|w| w.text.as_str()),
            Some("/etc/node-attach/config.yaml")
        );
        assert_eq!(cmds[1].line, 4);
    }

    #[test]
    fn malformed_scripts_are_errors() {
        for (s, want) in [
            ("echo 'open\n", "' quote"),
            ("echo \"open\n", "\" quote"),
            ("echo $(date\n", "$("),
            ("cat <<EOF\nno end\n", "here-document"),
        ] {
            let err = commands(s).expect_err(s).to_string();
            assert!(err.contains(want), "{s:?}: {err}");
        }
    }
}
