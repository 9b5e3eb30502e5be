//! Parsing of untrusted JSON and YAML: bounded in size and nesting depth before the parser
//! runs (a linear pre-scan: libyaml's flow collections cost quadratic time in their depth, so
//! 40,000 nested `{` took seconds), and refusing duplicate keys, which parsers disagree on (one
//! takes the first, another the last), so two readers of the same bytes always see the same
//! document.

use serde::de::{DeserializeOwned, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use std::collections::HashSet;
use std::fmt;

/// The largest document accepted (the HTTP layer caps bodies at 1 MiB too).
pub const MAX_BYTES: usize = 1024 * 1024;
/// The deepest nesting accepted (Kubernetes objects and node-attach's inputs use under 20).
pub const MAX_DEPTH: usize = 64;
/// The most indentation levels and flow collections (every `[` and `{`, quoted or not) a YAML
/// document may hold together. 99.9% of the 957 YAML files of the Kubernetes 1.20 tree hold
/// fewer than 100 brackets; node-attach's YAML inputs (kubeconfigs, ClusterConfiguration,
/// KubeletConfiguration, `join --config`) a handful.
pub const MAX_YAML_NESTING: usize = 2 * MAX_DEPTH;

/// Why a document was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StrictError {
    /// Larger than [`MAX_BYTES`].
    #[error("it is larger than {MAX_BYTES} bytes")]
    TooLarge,
    /// Nested deeper than [`MAX_DEPTH`].
    #[error("it nests deeper than {MAX_DEPTH} levels")]
    TooDeep,
    /// A YAML document with more than [`MAX_YAML_NESTING`] indentation levels and flow
    /// collections together.
    #[error("it nests deeper than {MAX_YAML_NESTING} levels and flow collections in all (every [ and {{ counts, quoted or not)")]
    TooNested,
    /// A key appears twice in one object.
    #[error("the key {0:?} appears twice in one object")]
    DuplicateKey(String),
    /// Not valid JSON or YAML, or not of the expected shape.
    #[error("{0}")]
    Syntax(String),
}

/// The deepest bracket nesting of a JSON or YAML flow text, outside quoted strings, in one
/// linear pass; stops counting once `limit` is passed.
fn flow_depth(text: &str, limit: usize) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let mut quote: Option<u8> = None;
    let mut escaped = false;
    for &b in text.as_bytes() {
        match quote {
            Some(q) => {
                if escaped {
                    escaped = false;
                } else if b == b'\\' && q == b'"' {
                    escaped = true;
                } else if b == q {
                    quote = None;
                }
            }
            None => match b {
                b'"' | b'\'' => quote = Some(b),
                b'[' | b'{' => {
                    depth += 1;
                    deepest = deepest.max(depth);
                    if deepest > limit {
                        return deepest;
                    }
                }
                b']' | b'}' => depth = depth.saturating_sub(1),
                _ => {}
            },
        }
    }
    deepest
}

/// The deepest indentation-driven nesting of a YAML block text, counted in distinct
/// indentation levels on the way down (linear).
fn block_depth(text: &str, limit: usize) -> usize {
    let mut stack: Vec<usize> = Vec::new();
    let mut deepest = 0;
    for line in text.lines() {
        let content = line.trim_start_matches(' ');
        if content.is_empty() || content.starts_with('#') {
            continue;
        }
        let indent = line.len() - content.len()
            + content
                .chars()
                .take_while(|c| *c == '-' || *c == ' ')
                .count();
        while stack.last().is_some_and(|top| *top >= indent) {
            stack.pop();
        }
        stack.push(indent);
        deepest = deepest.max(stack.len());
        if deepest > limit {
            break;
        }
    }
    deepest
}

fn bounded(text: &str) -> Result<(), StrictError> {
    if text.len() > MAX_BYTES {
        return Err(StrictError::TooLarge);
    }
    if flow_depth(text, MAX_DEPTH) > MAX_DEPTH || block_depth(text, MAX_DEPTH) > MAX_DEPTH {
        return Err(StrictError::TooDeep);
    }
    Ok(())
}

/// A JSON value whose objects have no duplicate keys.
struct Unique(Value);

impl<'de> serde::Deserialize<'de> for Unique {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Unique, D::Error> {
        d.deserialize_any(UniqueVisitor).map(Unique)
    }
}

struct UniqueVisitor;

impl<'de> Visitor<'de> for UniqueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(Unique(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        let mut seen = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert(key.clone()) {
                return Err(serde::de::Error::custom(format!("duplicate key {key:?}")));
            }
            let Unique(v) = map.next_value()?;
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}

fn syntax(e: impl fmt::Display) -> StrictError {
    let text = e.to_string();
    match text
        .split_once("duplicate key ")
        .and_then(|(_, r)| r.split(" at line").next())
    {
        Some(key) => StrictError::DuplicateKey(key.trim_matches('"').to_owned()),
        None => StrictError::Syntax(text),
    }
}

/// Parses untrusted JSON into `T`: bounded, duplicate keys refused at every level.
pub fn json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StrictError> {
    let text =
        std::str::from_utf8(bytes).map_err(|_| StrictError::Syntax("it is not UTF-8".into()))?;
    bounded(text)?;
    let Unique(value) = serde_json::from_str(text).map_err(syntax)?;
    serde_json::from_value(value).map_err(syntax)
}

/// Bounds a YAML text before libyaml sees it. Its flow collections are counted blind to
/// quoting: YAML reads a quote inside a plain scalar, a comment or a block scalar literally, so a
/// quote-aware scan can be made to miss nesting (a stray `'` before 40,000 nested `{` took a
/// minute in libyaml). Every `[` and `{` counts but an empty pair, which bounds libyaml's flow
/// depth (to one more) whatever the quotes, and a rendering of the parsed document counts no
/// more (but for aliases, which a rendering spells out).
fn bounded_yaml(text: &str) -> Result<(), StrictError> {
    if text.len() > MAX_BYTES {
        return Err(StrictError::TooLarge);
    }
    let block = block_depth(text, MAX_DEPTH);
    if block > MAX_DEPTH {
        return Err(StrictError::TooDeep);
    }
    // An empty `[]` or `{}` is not counted: it nests at most one level, closed at once (and a
    // rendering adds such pairs for empty fields the text left out).
    let bytes = text.as_bytes();
    let flow = (0..bytes.len())
        .filter(|&i| match bytes[i] {
            b'[' => bytes.get(i + 1) != Some(&b']'),
            b'{' => bytes.get(i + 1) != Some(&b'}'),
            _ => false,
        })
        .count();
    if block + flow > MAX_YAML_NESTING {
        return Err(StrictError::TooNested);
    }
    Ok(())
}

/// Parses untrusted YAML into `T`: bounded; the YAML parser itself refuses duplicate keys.
pub fn yaml<T: DeserializeOwned>(text: &str) -> Result<T, StrictError> {
    bounded_yaml(text)?;
    serde_yaml_ng::from_str(text).map_err(|e| {
        let text = e.to_string();
        match text.split_once("duplicate entry with key ") {
            Some((_, rest)) => StrictError::DuplicateKey(
                rest.split(" at line")
                    .next()
                    .unwrap_or(rest)
                    .trim_matches('"')
                    .to_owned(),
            ),
            None => StrictError::Syntax(text),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deep_documents_are_refused_in_linear_time() {
        let started = std::time::Instant::now();
        for text in [
            format!("{}x{}", "{a: ".repeat(40_000), "}".repeat(40_000)),
            format!("{}{}", "[".repeat(40_000), "]".repeat(40_000)),
        ] {
            assert_eq!(
                yaml::<serde_yaml_ng::Value>(&text),
                Err(StrictError::TooNested)
            );
            assert_eq!(json::<Value>(text.as_bytes()), Err(StrictError::TooDeep));
            // A quote YAML reads literally (inside a plain scalar, a comment, a block scalar)
            // hides nothing.
            for hide in ["a: x'y\nb: ", "# it's: '\nb: ", "a: |\n  it's: 'x\nb: "] {
                assert_eq!(
                    yaml::<serde_yaml_ng::Value>(&format!("{hide}{text}")),
                    Err(StrictError::TooNested)
                );
            }
        }
        let mut block = String::new();
        for i in 0..100 {
            block.push_str(&format!("{}k{i}:\n", "  ".repeat(i)));
        }
        assert_eq!(
            yaml::<serde_yaml_ng::Value>(&block),
            Err(StrictError::TooDeep)
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
        // Brackets inside strings do not count.
        let quoted = format!("{{\"a\": \"{}\"}}", "[".repeat(1000));
        assert!(json::<Value>(quoted.as_bytes()).is_ok());
    }

    #[test]
    fn yaml_counts_every_flow_collection_and_reads_its_own_rendering() {
        let flat = format!("a: [{}]\n", "[1], ".repeat(MAX_YAML_NESTING));
        assert_eq!(
            yaml::<serde_yaml_ng::Value>(&flat),
            Err(StrictError::TooNested)
        );
        // Empty pairs, which a rendering adds for empty fields, do not count.
        let empty = format!("a: [{}]\n", "[], {}, ".repeat(MAX_YAML_NESTING));
        assert!(yaml::<serde_yaml_ng::Value>(&empty).is_ok());
        // Found by fuzzing: a plain scalar with quotes and braces, accepted, rendered quoted,
        // must read back.
        let text = "a: x{{{'y{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{'z{{{{{{{{{{{{{{{{{\n";
        let v: serde_yaml_ng::Value = yaml(text).expect("a plain scalar");
        let again: serde_yaml_ng::Value =
            yaml(&serde_yaml_ng::to_string(&v).expect("render")).expect("reads back");
        assert_eq!(again, v);
    }

    #[test]
    fn duplicate_keys_are_refused_at_every_level() {
        assert_eq!(
            json::<Value>(br#"{"data": {"kubeconfig": "a", "kubeconfig": "b"}}"#),
            Err(StrictError::DuplicateKey("kubeconfig".into()))
        );
        assert!(matches!(
            yaml::<serde_yaml_ng::Value>("clusters:\n- cluster:\n    server: a\n    server: b\n"),
            Err(StrictError::DuplicateKey(_))
        ));
        assert!(json::<Value>(br#"{"a": [{"b": 1}, {"b": 2}]}"#).is_ok());
    }

    #[test]
    fn big_documents_are_refused() {
        let big = format!("\"{}\"", "x".repeat(MAX_BYTES));
        assert_eq!(json::<Value>(big.as_bytes()), Err(StrictError::TooLarge));
    }
}
