//! Userdata as cloud-init reads it: a `#!` script, `#cloud-config`, a MIME multi-part message
//! (parts by Content-Type, base64 transfer encoding, nested multi-parts), and gzip, for the
//! whole input or one part. Everything is bounded: the input, each inflated stream (a gzip
//! bomb stops at the limit, it is never inflated whole), the number of parts and the nesting.

use base64::Engine;
use std::io::Read;

/// The largest userdata read (cloud providers allow 16–32 KiB; this leaves room for gzip'd or
/// hand-made inputs).
pub const MAX_INPUT: u64 = 1024 * 1024;
/// The most bytes all inflated parts together may grow to.
pub const MAX_INFLATED: usize = 4 * 1024 * 1024;
/// The most parts in a multi-part message, nested ones included.
pub const MAX_PARTS: usize = 64;
/// The deepest nesting of multi-parts and gzip layers.
pub const MAX_DEPTH: usize = 4;

/// What cloud-init does with a part.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PartKind {
    /// A script run once at the end of boot (`#!`, text/x-shellscript).
    Script,
    /// `#cloud-config` (text/cloud-config).
    CloudConfig,
    /// `#cloud-boothook`: a script run early, at every boot.
    Boothook,
    /// Something else (`#include`, part handlers, jinja templates): not checked.
    Other,
}

/// One piece of userdata to lint.
#[derive(Clone, Debug)]
pub struct Part {
    /// Where it is: `userdata`, `part 2`, `part 2.1 (gzip)`.
    pub name: String,
    /// Its kind.
    pub kind: PartKind,
    /// Its text.
    pub text: String,
}

/// Why the userdata cannot be read as cloud-init would.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UserdataError {
    /// gzip that does not inflate.
    #[error("{0}: gzip data that does not inflate: {1}")]
    Gzip(String, String),
    /// A gzip bomb, or simply too much.
    #[error("{0}: inflates past {MAX_INFLATED} bytes (all parts together); refused")]
    Inflated(String),
    /// MIME without a usable boundary, or a message that never reaches it.
    #[error("{0}: bad MIME multi-part: {1}")]
    Mime(String, String),
    /// Too many parts or layers.
    #[error("{0}: more than {MAX_PARTS} parts or {MAX_DEPTH} levels of nesting")]
    TooDeep(String),
    /// Not text.
    #[error("{0}: not UTF-8 text")]
    NotText(String),
    /// Nothing cloud-init would run.
    #[error(
        "{0}: not a form cloud-init runs (expected #!, #cloud-config, a MIME multi-part or gzip)"
    )]
    Unknown(String),
}

/// How the input was wrapped, and its parts.
#[derive(Debug, Default)]
pub struct Decoded {
    /// Its layers, outermost first: `base64`, `gzip`, `mime`, `script`, `cloud-config`.
    pub forms: Vec<&'static str>,
    /// The parts to lint, in order.
    pub parts: Vec<Part>,
    /// Parts that were not linted, and why.
    pub skipped: Vec<String>,
    inflated: usize,
    layered: bool,
}

/// Decodes userdata into the parts cloud-init would run.
pub fn decode(bytes: &[u8]) -> Result<Decoded, UserdataError> {
    let mut out = Decoded::default();
    let bytes = match base64_wrapped(bytes) {
        Some(raw) => {
            out.forms.push("base64");
            raw
        }
        None => bytes.to_vec(),
    };
    out.walk("userdata", &bytes, None, 0)?;
    Ok(out)
}

/// Userdata handed over base64-encoded (as cloud APIs take it), when it decodes to a known form.
fn base64_wrapped(bytes: &[u8]) -> Option<Vec<u8>> {
    let compact: Vec<u8> = bytes
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    if compact.len() < 8 || bytes.starts_with(b"#") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(&compact)
        .ok()?;
    let known = raw.starts_with(&[0x1f, 0x8b])
        || raw.starts_with(b"#")
        || raw.starts_with(b"Content-Type:")
        || raw.starts_with(b"MIME-Version:");
    known.then_some(raw)
}

impl Decoded {
    /// Records the outer layers only (up to the first MIME message or content).
    fn layer(&mut self, form: &'static str, last: bool) {
        if !self.layered {
            self.forms.push(form);
            self.layered = last;
        }
    }

    fn walk(
        &mut self,
        name: &str,
        bytes: &[u8],
        content_type: Option<&str>,
        depth: usize,
    ) -> Result<(), UserdataError> {
        if depth > MAX_DEPTH || self.parts.len() + self.skipped.len() > MAX_PARTS {
            return Err(UserdataError::TooDeep(name.to_owned()));
        }
        let gzip_type = content_type.is_some_and(|t| t.contains("gzip"));
        if bytes.starts_with(&[0x1f, 0x8b]) || gzip_type {
            self.layer("gzip", false);
            let inflated = self.inflate(name, bytes)?;
            return self.walk(&format!("{name} (gzip)"), &inflated, None, depth + 1);
        }
        let text =
            std::str::from_utf8(bytes).map_err(|_| UserdataError::NotText(name.to_owned()))?;
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        if let Some(boundary) = multipart_boundary(name, text, content_type)? {
            self.layer("mime", true);
            return self.multipart(name, text, &boundary, depth);
        }
        let kind = kind_of(text, content_type);
        let form = match kind {
            Some(PartKind::CloudConfig) => "cloud-config",
            Some(PartKind::Boothook) => "boothook",
            _ => "script",
        };
        self.layer(form, true);
        match kind {
            Some(PartKind::Other) => self.skipped.push(format!(
                "{name}: {} is not checked",
                content_type.unwrap_or("this form")
            )),
            Some(kind) => self.parts.push(Part {
                name: name.to_owned(),
                kind,
                text: text.to_owned(),
            }),
            None if depth == 0 => return Err(UserdataError::Unknown(name.to_owned())),
            None => self.skipped.push(format!(
                "{name}: {} that cloud-init would not run",
                content_type.unwrap_or("text")
            )),
        }
        Ok(())
    }

    /// Inflates at most what is left of [`MAX_INFLATED`]: a bomb stops there.
    fn inflate(&mut self, name: &str, bytes: &[u8]) -> Result<Vec<u8>, UserdataError> {
        let left = MAX_INFLATED - self.inflated;
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(bytes)
            .take(left as u64 + 1)
            .read_to_end(&mut out)
            .map_err(|e| UserdataError::Gzip(name.to_owned(), e.to_string()))?;
        if out.len() > left {
            return Err(UserdataError::Inflated(name.to_owned()));
        }
        self.inflated += out.len();
        Ok(out)
    }

    fn multipart(
        &mut self,
        name: &str,
        text: &str,
        boundary: &str,
        depth: usize,
    ) -> Result<(), UserdataError> {
        let parts = split_parts(name, text, boundary)?;
        for (i, raw) in parts.iter().enumerate() {
            let part_name = match name {
                "userdata" => format!("part {}", i + 1),
                _ => format!("{name}.{}", i + 1),
            };
            let (headers, body) = split_headers(raw);
            let content_type = header(&headers, "content-type");
            let encoding = header(&headers, "content-transfer-encoding")
                .map(|e| e.to_ascii_lowercase())
                .unwrap_or_default();
            let body: Vec<u8> = match encoding.trim() {
                "base64" => {
                    let compact: Vec<u8> =
                        body.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
                    base64::engine::general_purpose::STANDARD
                        .decode(compact)
                        .map_err(|e| {
                            UserdataError::Mime(part_name.clone(), format!("bad base64: {e}"))
                        })?
                }
                "" | "7bit" | "8bit" | "binary" => body.as_bytes().to_vec(),
                other => {
                    self.skipped.push(format!(
                        "{part_name}: Content-Transfer-Encoding {other} is not checked"
                    ));
                    continue;
                }
            };
            self.walk(&part_name, &body, content_type.as_deref(), depth + 1)?;
        }
        Ok(())
    }
}

/// The kind a text is, by its Content-Type (a MIME part) or its first line (as cloud-init).
fn kind_of(text: &str, content_type: Option<&str>) -> Option<PartKind> {
    let by_type = content_type.map(|t| {
        let t = t
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match t.as_str() {
            "text/x-shellscript" | "text/x-shellscript-per-boot" => Some(PartKind::Script),
            "text/cloud-config" => Some(PartKind::CloudConfig),
            "text/cloud-boothook" => Some(PartKind::Boothook),
            "text/plain" | "application/octet-stream" | "" => None,
            _ => Some(PartKind::Other),
        }
    });
    if let Some(Some(kind)) = by_type {
        return Some(kind);
    }
    let first = text.lines().next().unwrap_or("").trim_end();
    let lower = first.to_ascii_lowercase();
    if lower.starts_with("#cloud-config") {
        Some(PartKind::CloudConfig)
    } else if lower.starts_with("#cloud-boothook") {
        Some(PartKind::Boothook)
    } else if first.starts_with("#!") {
        Some(PartKind::Script)
    } else if lower.starts_with("#include")
        || lower.starts_with("#part-handler")
        || lower.starts_with("## template:")
        || lower.starts_with("#cloud-config-archive")
    {
        Some(PartKind::Other)
    } else {
        None
    }
}

/// The boundary, when the text is a MIME multi-part message.
fn multipart_boundary(
    name: &str,
    text: &str,
    content_type: Option<&str>,
) -> Result<Option<String>, UserdataError> {
    let ct = match content_type {
        Some(ct) => ct.to_owned(),
        None => {
            let looks_mime = text.starts_with("Content-Type:")
                || text.starts_with("MIME-Version:")
                || text.starts_with("content-type:");
            if !looks_mime {
                return Ok(None);
            }
            let (headers, _) = split_headers(text);
            match header(&headers, "content-type") {
                Some(ct) => ct,
                None => return Err(UserdataError::Mime(name.into(), "no Content-Type".into())),
            }
        }
    };
    if !ct
        .trim_start()
        .to_ascii_lowercase()
        .starts_with("multipart/")
    {
        return Ok(None);
    }
    let boundary = ct.split(';').skip(1).find_map(|p| {
        let (k, v) = p.split_once('=')?;
        (k.trim().eq_ignore_ascii_case("boundary")).then(|| v.trim().trim_matches('"').to_owned())
    });
    match boundary {
        Some(b) if !b.is_empty() && b.len() <= 70 && !b.contains(['\r', '\n']) => Ok(Some(b)),
        Some(_) => Err(UserdataError::Mime(
            name.into(),
            "the boundary must be 1 to 70 characters".into(),
        )),
        None => Err(UserdataError::Mime(
            name.into(),
            "a multipart Content-Type without a boundary".into(),
        )),
    }
}

/// The parts between `--boundary` lines, up to `--boundary--`.
fn split_parts(name: &str, text: &str, boundary: &str) -> Result<Vec<String>, UserdataError> {
    let (_, body) = split_headers(text);
    // A nested part hands over its body only; a top-level message has its headers first.
    let body = if body.is_empty() { text } else { body };
    let open = format!("--{boundary}");
    let close = format!("--{boundary}--");
    let mut parts = Vec::new();
    let mut current: Option<String> = None;
    let mut closed = false;
    for line in body.split_inclusive('\n') {
        let bare = line.trim_end_matches(['\r', '\n']).trim_end();
        if bare == close {
            parts.extend(current.take());
            closed = true;
            break;
        }
        if bare == open {
            parts.extend(current.take());
            current = Some(String::new());
            if parts.len() > MAX_PARTS {
                return Err(UserdataError::TooDeep(name.to_owned()));
            }
            continue;
        }
        if let Some(part) = current.as_mut() {
            part.push_str(line);
        }
    }
    if parts.is_empty() && current.is_none() {
        return Err(UserdataError::Mime(
            name.into(),
            format!("no part starts with the boundary line {open:?}"),
        ));
    }
    if !closed {
        return Err(UserdataError::Mime(
            name.into(),
            format!("the closing boundary line {close:?} is missing (a truncated message?)"),
        ));
    }
    Ok(parts)
}

/// Headers (unfolded, lower-cased names) and the body after the first empty line.
fn split_headers(text: &str) -> (Vec<(String, String)>, &str) {
    let mut headers: Vec<(String, String)> = Vec::new();
    let mut rest = text;
    loop {
        let (line, next) = match rest.find('\n') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, ""),
        };
        let line = line.trim_end_matches('\r');
        if line.is_empty() {
            return (headers, next);
        }
        if line.starts_with([' ', '\t']) {
            if let Some((_, v)) = headers.last_mut() {
                v.push(' ');
                v.push_str(line.trim());
            }
        } else if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
        } else {
            // Not a header block: no headers, the whole text is the body.
            return (Vec::new(), text);
        }
        if next.is_empty() {
            return (headers, "");
        }
        rest = next;
    }
}

fn header(headers: &[(String, String)], name: &str) -> Option<String> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(data).expect("gzip");
        e.finish().expect("gzip")
    }

    #[test]
    fn each_form_decodes() {
        let d = decode(b"#!/bin/bash\necho hi\n").expect("script");
        assert_eq!(d.forms, ["script"]);
        assert_eq!(d.parts[0].kind, PartKind::Script);
        let d = decode(b"#cloud-config\nruncmd: []\n").expect("cc");
        assert_eq!(d.parts[0].kind, PartKind::CloudConfig);
        let d = decode(&gzip(b"#cloud-config\n{}\n")).expect("gzip");
        assert_eq!(d.forms, ["gzip", "cloud-config"]);
        let b64 = base64::engine::general_purpose::STANDARD.encode(b"#!/bin/sh\ntrue\n");
        assert_eq!(
            decode(b64.as_bytes()).expect("b64").forms,
            ["base64", "script"]
        );
    }

    #[test]
    fn mime_parts_with_base64_and_gzip() {
        let gz = base64::engine::general_purpose::STANDARD.encode(gzip(b"#!/bin/bash\ntrue\n"));
        let msg = format!(
            "Content-Type: multipart/mixed; boundary=\"XX\"\nMIME-Version: 1.0\n\n--XX\nContent-Type: text/cloud-config\n\n#cloud-config\n{{}}\n--XX\nContent-Type: application/x-gzip\nContent-Transfer-Encoding: base64\n\n{gz}\n--XX\nContent-Type: text/x-include-url\n\nhttp://x\n--XX--\n"
        );
        let d = decode(msg.as_bytes()).expect("mime");
        assert_eq!(d.forms, ["mime"]);
        let names: Vec<_> = d.parts.iter().map(|p| (p.name.as_str(), p.kind)).collect();
        assert_eq!(
            names,
            [
                ("part 1", PartKind::CloudConfig),
                ("part 2 (gzip)", PartKind::Script)
            ]
        );
        assert_eq!(d.skipped.len(), 1, "{:?}", d.skipped);
    }

    #[test]
    fn hostile_inputs_are_refused() {
        let bomb = gzip(&vec![b'#'; MAX_INFLATED + 10]);
        assert!(bomb.len() < 64 * 1024, "a bomb is small: {}", bomb.len());
        assert!(matches!(decode(&bomb), Err(UserdataError::Inflated(_))));
        let head = "Content-Type: multipart/mixed";
        for (msg, want) in [
            (format!("{head}\n\n--a\n\nx\n"), "without a boundary"),
            (
                format!("{head}; boundary=a\n\n--b\n\n#!/bin/sh\n--b--\n"),
                "no part starts",
            ),
            (
                format!("{head}; boundary=a\n\n--a\n\n#!/bin/sh\n"),
                "closing boundary",
            ),
            (
                format!("{head}; boundary={}\n\n", "b".repeat(71)),
                "1 to 70",
            ),
        ] {
            let err = decode(msg.as_bytes()).expect_err(want).to_string();
            assert!(err.contains(want), "{err}");
        }
        assert!(matches!(
            decode(&gzip(b"\xff\xfe binary")),
            Err(UserdataError::NotText(_))
        ));
        assert!(matches!(
            decode(&[0x1f, 0x8b, 8, 0, 1, 2]),
            Err(UserdataError::Gzip(..))
        ));
        assert!(matches!(
            decode(b"plain words"),
            Err(UserdataError::Unknown(_))
        ));
        // gzip in gzip in gzip …: bounded nesting.
        let mut nested = b"#!/bin/sh\n".to_vec();
        for _ in 0..=MAX_DEPTH + 1 {
            nested = gzip(&nested);
        }
        assert!(matches!(decode(&nested), Err(UserdataError::TooDeep(_))));
    }
}
