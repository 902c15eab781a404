//! Meta-data written for cloud-init: JSON for `config-2` (read with Python's `json`), YAML for
//! `nocloud` (read with PyYAML), each so that the reader gets the very values
//! [`super::metadata`] typed.
//!
//! Written here rather than through serde because neither format's serde writer knows PyYAML:
//! a YAML 1.2 writer leaves `0755`, `y` or `52:54:00:12:34:56` unquoted (PyYAML then reads 493,
//! a string, and an integer) and writes floats PyYAML reads as strings (`1e+300`: YAML 1.1
//! wants a dot); and JSON has no form for Python's unbounded integers in serde_json, nor for
//! infinities, which Python's `json` writes and reads as `Infinity`. Keys are sorted, so the
//! output does not depend on the order of the input.

use std::fmt::Write as _;

use super::metadata::{Mapping, Value};
use super::scalar::{self, Scalar};

/// Pretty JSON as serde_json prints it (two spaces, sorted keys), ending in a newline.
pub(crate) fn json(map: &Mapping) -> String {
    let mut out = String::new();
    json_map(&mut out, map, 0);
    out.push('\n');
    out
}

/// A block-style YAML document.
pub(crate) fn yaml(map: &Mapping) -> String {
    let mut out = String::new();
    if map.is_empty() {
        out.push_str("{}\n");
    } else {
        yaml_map(&mut out, map, 0);
    }
    out
}

fn sorted(map: &Mapping) -> Vec<(String, &Scalar, &Value)> {
    let mut entries: Vec<_> = map.iter().map(|(k, v)| (json_key(k), k, v)).collect();
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    entries
}

fn pad(out: &mut String, indent: usize) {
    out.extend(std::iter::repeat_n(' ', indent));
}

/// The key as Python's `json.dumps` writes a non-string key.
fn json_key(key: &Scalar) -> String {
    match key {
        Scalar::Str(s) => s.clone(),
        Scalar::Timestamp { python, .. } => python.clone(),
        other => json_scalar(other),
    }
}

fn json_string(text: &str) -> String {
    // Infallible: a string always serializes.
    serde_json::to_string(text).unwrap_or_default()
}

fn json_scalar(scalar: &Scalar) -> String {
    match scalar {
        Scalar::Null | Scalar::Merge | Scalar::Value => "null".to_owned(),
        Scalar::Bool(b) => b.to_string(),
        Scalar::Int(digits) => digits.clone(),
        Scalar::Float(f) if f.is_nan() => "NaN".to_owned(),
        Scalar::Float(f) if f.is_infinite() => {
            if *f > 0.0 { "Infinity" } else { "-Infinity" }.to_owned()
        }
        Scalar::Float(f) => format!("{f:?}"),
        Scalar::Str(s) => json_string(s),
        Scalar::Timestamp { python, .. } => json_string(python),
    }
}

fn json_value(out: &mut String, value: &Value, indent: usize) {
    match value {
        Value::Scalar(s) => out.push_str(&json_scalar(s)),
        Value::Seq(items) if items.is_empty() => out.push_str("[]"),
        Value::Seq(items) => {
            out.push_str("[\n");
            for (i, item) in items.iter().enumerate() {
                pad(out, indent + 2);
                json_value(out, item, indent + 2);
                out.push_str(if i + 1 < items.len() { ",\n" } else { "\n" });
            }
            pad(out, indent);
            out.push(']');
        }
        Value::Map(map) => json_map(out, map, indent),
    }
}

fn json_map(out: &mut String, map: &Mapping, indent: usize) {
    if map.is_empty() {
        out.push_str("{}");
        return;
    }
    out.push_str("{\n");
    let entries = sorted(map);
    for (i, (key, _, value)) in entries.iter().enumerate() {
        pad(out, indent + 2);
        out.push_str(&json_string(key));
        out.push_str(": ");
        json_value(out, value, indent + 2);
        out.push_str(if i + 1 < entries.len() { ",\n" } else { "\n" });
    }
    pad(out, indent);
    out.push('}');
}

/// A float in a form PyYAML's resolver takes for a float: a dot, and a signed exponent.
fn yaml_float(f: f64) -> String {
    if f.is_nan() {
        return ".nan".to_owned();
    }
    if f.is_infinite() {
        return if f > 0.0 { ".inf" } else { "-.inf" }.to_owned();
    }
    let text = format!("{f:?}");
    match text.split_once('e') {
        None => text,
        Some((mantissa, exponent)) => {
            let dot = if mantissa.contains('.') { "" } else { ".0" };
            let sign = if exponent.starts_with('-') { "" } else { "+" };
            format!("{mantissa}{dot}e{sign}{exponent}")
        }
    }
}

/// A string PyYAML reads back as this very string when written plain: a conservative set of
/// characters (no indicator, no `: ` or ` #`, no leading or trailing blank) that its
/// resolvers also take for a string.
fn plain_is_safe(text: &str) -> bool {
    let first_ok = text
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric() || b"_./".contains(&b));
    first_ok
        && !text.ends_with(' ')
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b" _./@+=-".contains(&b))
        && matches!(scalar::plain(text), Ok(Scalar::Str(_)))
}

/// A double-quoted string with every character PyYAML would not take raw escaped.
fn double_quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '\0' => out.push_str("\\0"),
            // Line breaks in YAML 1.1.
            '\u{85}' => out.push_str("\\N"),
            '\u{2028}' => out.push_str("\\L"),
            '\u{2029}' => out.push_str("\\P"),
            ' '..='~' => out.push(c),
            '\u{a0}'..='\u{d7ff}' | '\u{e000}'..='\u{fffd}' | '\u{10000}'.. if c != '\u{feff}' => {
                out.push(c)
            }
            c if (c as u32) < 0x100 => {
                let _ = write!(out, "\\x{:02X}", c as u32);
            }
            c => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
        }
    }
    out.push('"');
    out
}

fn yaml_scalar(scalar: &Scalar) -> String {
    match scalar {
        Scalar::Null | Scalar::Merge | Scalar::Value => "null".to_owned(),
        Scalar::Bool(b) => b.to_string(),
        Scalar::Int(digits) => digits.clone(),
        Scalar::Float(f) => yaml_float(*f),
        Scalar::Str(s) if plain_is_safe(s) => s.clone(),
        Scalar::Str(s) => double_quoted(s),
        Scalar::Timestamp { text, .. } => {
            let plain =
                !text.contains('\t') && matches!(scalar::plain(text), Ok(Scalar::Timestamp { .. }));
            if plain {
                text.clone()
            } else {
                format!("!!timestamp {}", double_quoted(text))
            }
        }
    }
}

/// PyYAML takes a key on one line of at most 1024 characters; longer ones are written with
/// the explicit `? ` indicator.
const MAX_SIMPLE_KEY: usize = 1000;

fn yaml_map(out: &mut String, map: &Mapping, indent: usize) {
    for (_, key, value) in sorted(map) {
        pad(out, indent);
        let key = yaml_scalar(key);
        let nested_indent = if key.len() > MAX_SIMPLE_KEY {
            out.push_str("? ");
            out.push_str(&key);
            out.push('\n');
            pad(out, indent);
            out.push(':');
            indent + 2
        } else {
            out.push_str(&key);
            out.push(':');
            indent
        };
        match value {
            Value::Scalar(s) => {
                out.push(' ');
                out.push_str(&yaml_scalar(s));
                out.push('\n');
            }
            Value::Seq(items) if items.is_empty() => out.push_str(" []\n"),
            Value::Map(m) if m.is_empty() => out.push_str(" {}\n"),
            // A list under a key may start at the key's own indentation.
            Value::Seq(items) => {
                out.push('\n');
                yaml_seq(out, items, nested_indent);
            }
            Value::Map(m) => {
                out.push('\n');
                yaml_map(out, m, nested_indent + 2);
            }
        }
    }
}

fn yaml_seq(out: &mut String, items: &[Value], indent: usize) {
    for item in items {
        pad(out, indent);
        out.push('-');
        match item {
            Value::Scalar(s) => {
                out.push(' ');
                out.push_str(&yaml_scalar(s));
                out.push('\n');
            }
            Value::Seq(inner) if inner.is_empty() => out.push_str(" []\n"),
            Value::Map(m) if m.is_empty() => out.push_str(" {}\n"),
            Value::Seq(inner) => {
                out.push('\n');
                yaml_seq(out, inner, indent + 2);
            }
            Value::Map(m) => {
                out.push('\n');
                yaml_map(out, m, indent + 2);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_are_written_as_pyyaml_floats() {
        assert_eq!(yaml_float(1000.0), "1000.0");
        assert_eq!(yaml_float(1e300), "1.0e+300");
        assert_eq!(yaml_float(-2.5e-7), "-2.5e-7");
        assert_eq!(yaml_float(f64::NEG_INFINITY), "-.inf");
        for f in [1000.0, 1e300, -2.5e-7, 0.1, 685230.15] {
            assert_eq!(scalar::plain(&yaml_float(f)), Ok(Scalar::Float(f)), "{f}");
        }
    }

    #[test]
    fn strings_pyyaml_would_retype_are_quoted() {
        for text in [
            "yes",
            "0755",
            "1.5",
            "~",
            "",
            "2024-01-01",
            "52:54:00:12:34:56",
            "a: b",
            "- x",
            " lead",
            "=",
            "<<",
            "#c",
        ] {
            let written = yaml_scalar(&Scalar::Str(text.to_owned()));
            assert!(written.starts_with('"'), "{text:?} written as {written}");
        }
        for text in [
            "n",
            "vm-0",
            "ssh-ed25519 AAAAC3Nz test@example",
            "1e3",
            "0o755",
            "y2k",
        ] {
            assert_eq!(yaml_scalar(&Scalar::Str(text.to_owned())), text);
        }
    }

    #[test]
    fn control_characters_and_yaml_line_breaks_are_escaped() {
        assert_eq!(
            double_quoted("a\u{7f}\u{85}\u{2028}\u{feff}\"\\\n"),
            "\"a\\x7F\\N\\L\\uFEFF\\\"\\\\\\n\""
        );
    }
}
