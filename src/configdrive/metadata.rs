//! The operator's meta-data: YAML or JSON, and it must be a mapping, because its keys are
//! merged over the ones we generate (instance id, hostname). A document that starts with `{`
//! is JSON (the classic kvm-manager took `meta_data.json` verbatim; a strict JSON parser gives
//! better errors than YAML's flow syntax would) and keeps JSON's types; anything else is YAML
//! and gets the types cloud-init reads it with: PyYAML's YAML 1.1 ([`super::scalar`]), not a
//! YAML 1.2 parser's (which made `n` a boolean, `0755` 755.0 and `1e3` 1000.0). An empty
//! document is an empty mapping. Errors carry the file, line and column.
//!
//! The YAML is read as parser events (serde-saphyr's own parser, re-exported), so that each
//! scalar's style (plain or quoted) and tag are known when it is typed. Aliases are expanded
//! as PyYAML's constructor does, within a budget (a "billion laughs" document is an error, not
//! our memory), and `<<` merge keys are applied as `SafeConstructor.flatten_mapping` does.

use std::collections::HashMap;
use std::path::Path;

use serde_saphyr::granit_parser::{Event, Marker, Parser, ScalarStyle, ScanError, Span};

use super::scalar::{self, Scalar, ScalarError, Tag};
use super::ConfigDriveError;

/// A meta-data value, typed as cloud-init reads it.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Scalar(Scalar),
    Seq(Vec<Value>),
    Map(Mapping),
}

impl From<&str> for Value {
    fn from(text: &str) -> Self {
        Self::Scalar(Scalar::Str(text.to_owned()))
    }
}

/// A mapping with scalar keys, each once, in the order they first appeared; a repeated key
/// takes the later value (as a Python dict does).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Mapping(Vec<(Scalar, Value)>);

impl Mapping {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(&mut self, key: Scalar, value: Value) {
        match self.0.iter_mut().find(|(k, _)| *k == key) {
            Some(entry) => entry.1 = value,
            None => self.0.push((key, value)),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Scalar, &Value)> {
        self.0.iter().map(|(k, v)| (k, v))
    }

    /// The value of the string key `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.iter()
            .find(|(k, _)| matches!(k, Scalar::Str(s) if s == key))
            .map(|(_, v)| v)
    }
}

/// The keys and values of a meta-data document.
pub type Metadata = Mapping;

/// Alias expansion may copy at most this many nodes in all.
const ALIAS_BUDGET: usize = 1_000_000;
/// Deeper nesting is refused (and keeps our recursion bounded).
const MAX_DEPTH: usize = 256;

pub fn parse(path: &Path, bytes: &[u8]) -> Result<Metadata, ConfigDriveError> {
    if bytes.trim_ascii().is_empty() {
        return Ok(Metadata::new());
    }
    if bytes.trim_ascii_start().starts_with(b"{") {
        return json(path, bytes);
    }
    yaml(bytes).map_err(|e| ConfigDriveError::ParseMetadata {
        path: path.to_owned(),
        line: e.line,
        column: e.column,
        syntax: "YAML",
        source: e.error,
    })
}

fn json(path: &Path, bytes: &[u8]) -> Result<Metadata, ConfigDriveError> {
    let map = serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(bytes).map_err(
        |e| ConfigDriveError::ParseMetadata {
            path: path.to_owned(),
            line: e.line() as u64,
            column: e.column() as u64,
            syntax: "JSON",
            source: Box::new(e),
        },
    )?;
    let mut out = Mapping::new();
    for (key, value) in map {
        out.insert(Scalar::Str(key), from_json(value));
    }
    Ok(out)
}

fn from_json(value: serde_json::Value) -> Value {
    use serde_json::Value as J;
    Value::Scalar(match value {
        J::Null => Scalar::Null,
        J::Bool(b) => Scalar::Bool(b),
        J::Number(n) if n.is_i64() || n.is_u64() => Scalar::Int(n.to_string()),
        J::Number(n) => Scalar::Float(n.as_f64().unwrap_or(f64::NAN)),
        J::String(s) => Scalar::Str(s),
        J::Array(items) => return Value::Seq(items.into_iter().map(from_json).collect()),
        J::Object(map) => {
            let mut out = Mapping::new();
            for (key, value) in map {
                out.insert(Scalar::Str(key), from_json(value));
            }
            return Value::Map(out);
        }
    })
}

/// A YAML error and where it is (1-based).
#[derive(Debug)]
struct Located {
    line: u64,
    column: u64,
    error: Box<dyn std::error::Error + Send + Sync>,
}

#[derive(Debug, thiserror::Error)]
enum ContentError {
    #[error("meta-data must be a mapping of keys to values")]
    NotAMapping,
    #[error("meta-data holds more than one YAML document")]
    SeveralDocuments,
    #[error("a mapping key must be a scalar (a string, number, …), not a list or a mapping")]
    ComplexKey,
    #[error("`<<` merges a mapping or a list of mappings, nothing else")]
    BadMerge,
    #[error("a plain `{0}` is not a value PyYAML can read (cloud-init would fail); quote it")]
    Unreadable(&'static str),
    #[error("the tag {0} is not one cloud-init reads (str, int, float, bool, null, timestamp, map, seq)")]
    UnsupportedTag(String),
    #[error("an alias to an unknown anchor")]
    UnknownAlias,
    #[error("aliases expand to more than {ALIAS_BUDGET} nodes")]
    AliasBudget,
    #[error("nesting deeper than {MAX_DEPTH} levels")]
    TooDeep,
    #[error("meta-data is not UTF-8")]
    NotUtf8,
    #[error("the YAML ended early")]
    Truncated,
    #[error(transparent)]
    Scalar(#[from] ScalarError),
}

fn at(span: &Span, error: ContentError) -> Located {
    Located {
        line: span.start.line() as u64,
        column: span.start.col() as u64 + 1,
        error: Box::new(error),
    }
}

fn scan(e: ScanError) -> Located {
    Located {
        line: e.marker().line() as u64,
        column: e.marker().col() as u64 + 1,
        error: Box::new(e),
    }
}

fn yaml(bytes: &[u8]) -> Result<Metadata, Located> {
    let start = Span::empty(Marker::new(0, 1, 0));
    let text = std::str::from_utf8(bytes).map_err(|_| at(&start, ContentError::NotUtf8))?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut reader = Reader {
        events: Parser::new_from_str(text),
        anchors: HashMap::new(),
        copied: 0,
        last: start,
    };
    match reader.document()? {
        None | Some(Value::Scalar(Scalar::Null)) => Ok(Metadata::new()),
        Some(Value::Map(map)) => Ok(map),
        Some(_) => Err(Located {
            line: 1,
            column: 1,
            error: Box::new(ContentError::NotAMapping),
        }),
    }
}

struct Reader<'a, I: Iterator<Item = Result<(Event<'a>, Span), ScanError>>> {
    events: I,
    anchors: HashMap<usize, Value>,
    copied: usize,
    last: Span,
}

impl<'a, I: Iterator<Item = Result<(Event<'a>, Span), ScanError>>> Reader<'a, I> {
    /// The next event that is part of the data (comments and anchor names are not).
    fn next(&mut self) -> Result<Event<'a>, Located> {
        loop {
            let (event, span) = match self.events.next() {
                Some(next) => next.map_err(scan)?,
                None => return Err(at(&self.last, ContentError::Truncated)),
            };
            self.last = span;
            match event {
                Event::StreamStart
                | Event::StreamEnd
                | Event::DocumentStart(..)
                | Event::DocumentEnd
                | Event::Alias(_)
                | Event::UnresolvedAlias(_)
                | Event::Scalar(..)
                | Event::SequenceStart(..)
                | Event::SequenceEnd
                | Event::MappingStart(..)
                | Event::MappingEnd => return Ok(event),
                _ => continue,
            }
        }
    }

    fn error(&self, error: ContentError) -> Located {
        at(&self.last, error)
    }

    /// The one document of the stream; `None` for a stream of none.
    fn document(&mut self) -> Result<Option<Value>, Located> {
        let mut value = None;
        loop {
            match self.next()? {
                Event::StreamStart => {}
                Event::StreamEnd => return Ok(value),
                Event::DocumentStart(..) if value.is_some() => {
                    return Err(self.error(ContentError::SeveralDocuments))
                }
                Event::DocumentStart(..) => {
                    let first = self.next()?;
                    value = Some(self.node(first, 0)?);
                }
                Event::DocumentEnd => {}
                _ => return Err(self.error(ContentError::Truncated)),
            }
        }
    }

    fn node(&mut self, event: Event<'a>, depth: usize) -> Result<Value, Located> {
        if depth > MAX_DEPTH {
            return Err(self.error(ContentError::TooDeep));
        }
        let (value, anchor) = match event {
            Event::Alias(id) => {
                let value = self
                    .anchors
                    .get(&id)
                    .cloned()
                    .ok_or_else(|| self.error(ContentError::UnknownAlias))?;
                self.copied += size(&value);
                if self.copied > ALIAS_BUDGET {
                    return Err(self.error(ContentError::AliasBudget));
                }
                return Ok(value);
            }
            Event::Scalar(text, style, anchor, tag) => {
                let scalar = match tag.as_deref().map(core_tag) {
                    None if style == ScalarStyle::Plain => scalar::plain(&text),
                    None | Some(Ok(CoreTag::NonSpecific)) => Ok(Scalar::Str(text.into_owned())),
                    Some(Ok(CoreTag::Scalar(tag))) => scalar::construct(tag, &text),
                    Some(Ok(_)) | Some(Err(_)) => {
                        let tag = tag.map(|t| t.original()).unwrap_or_default();
                        return Err(self.error(ContentError::UnsupportedTag(tag)));
                    }
                }
                .map_err(|e| self.error(e.into()))?;
                (Value::Scalar(scalar), anchor)
            }
            Event::SequenceStart(_, anchor, tag) => {
                self.collection_tag(tag.as_deref(), CoreTag::Seq)?;
                let mut items = Vec::new();
                loop {
                    match self.next()? {
                        Event::SequenceEnd => break,
                        event => items.push(self.value(event, depth)?),
                    }
                }
                (Value::Seq(items), anchor)
            }
            Event::MappingStart(_, anchor, tag) => {
                self.collection_tag(tag.as_deref(), CoreTag::Map)?;
                (Value::Map(self.mapping(depth)?), anchor)
            }
            _ => return Err(self.error(ContentError::Truncated)),
        };
        if anchor != 0 {
            self.anchors.insert(anchor, value.clone());
        }
        Ok(value)
    }

    /// A node in a value position: `<<` and `=` are PyYAML errors there.
    fn value(&mut self, event: Event<'a>, depth: usize) -> Result<Value, Located> {
        match self.node(event, depth + 1)? {
            Value::Scalar(Scalar::Merge) => Err(self.error(ContentError::Unreadable("<<"))),
            Value::Scalar(Scalar::Value) => Err(self.error(ContentError::Unreadable("="))),
            value => Ok(value),
        }
    }

    /// Keys and values up to `MappingEnd`; merged keys first, then the explicit ones, so
    /// that explicit keys win, as in `SafeConstructor.flatten_mapping`.
    fn mapping(&mut self, depth: usize) -> Result<Mapping, Located> {
        let mut merged: Vec<Mapping> = Vec::new();
        let mut explicit = Mapping::new();
        loop {
            let key = match self.next()? {
                Event::MappingEnd => break,
                event => self.node(event, depth + 1)?,
            };
            let key = match key {
                Value::Scalar(Scalar::Merge) => {
                    let event = self.next()?;
                    match self.node(event, depth + 1)? {
                        Value::Map(map) => merged.push(map),
                        // Earlier mappings of the list win: PyYAML reverses them.
                        Value::Seq(items) => {
                            let mut maps = Vec::new();
                            for item in items {
                                match item {
                                    Value::Map(map) => maps.push(map),
                                    _ => return Err(self.error(ContentError::BadMerge)),
                                }
                            }
                            merged.extend(maps.into_iter().rev());
                        }
                        _ => return Err(self.error(ContentError::BadMerge)),
                    }
                    continue;
                }
                Value::Scalar(Scalar::Value) => Scalar::Str("=".to_owned()),
                Value::Scalar(key) => key,
                _ => return Err(self.error(ContentError::ComplexKey)),
            };
            let event = self.next()?;
            let value = self.value(event, depth)?;
            explicit.insert(key, value);
        }
        let mut out = Mapping::new();
        for (key, value) in merged.into_iter().flat_map(|m| m.0).chain(explicit.0) {
            out.insert(key, value);
        }
        Ok(out)
    }

    fn collection_tag(
        &self,
        tag: Option<&serde_saphyr::granit_parser::Tag>,
        expected: CoreTag,
    ) -> Result<(), Located> {
        match tag.map(core_tag) {
            None => Ok(()),
            Some(Ok(found)) if found == expected || found == CoreTag::NonSpecific => Ok(()),
            Some(_) => {
                let tag = tag.map(|t| t.original()).unwrap_or_default();
                Err(self.error(ContentError::UnsupportedTag(tag)))
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CoreTag {
    /// `!`: a plain string, as for quoted scalars.
    NonSpecific,
    Scalar(Tag),
    Seq,
    Map,
}

fn core_tag(tag: &serde_saphyr::granit_parser::Tag) -> Result<CoreTag, ()> {
    match (tag.handle(), tag.suffix()) {
        ("!", "") => Ok(CoreTag::NonSpecific),
        ("tag:yaml.org,2002:", "seq") => Ok(CoreTag::Seq),
        ("tag:yaml.org,2002:", "map") => Ok(CoreTag::Map),
        ("tag:yaml.org,2002:", suffix) => Tag::of(suffix).map(CoreTag::Scalar).ok_or(()),
        _ => Err(()),
    }
}

/// Nodes in `value`, for the alias budget.
fn size(value: &Value) -> usize {
    match value {
        Value::Scalar(_) => 1,
        Value::Seq(items) => 1 + items.iter().map(size).sum::<usize>(),
        Value::Map(map) => 1 + map.iter().map(|(_, v)| 1 + size(v)).sum::<usize>(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(text: &str) -> Result<Metadata, ConfigDriveError> {
        parse(Path::new("/metadata/meta-data"), text.as_bytes())
    }

    fn position(err: ConfigDriveError) -> (u64, u64, String) {
        let message = err.to_string();
        match err {
            ConfigDriveError::ParseMetadata { line, column, .. } => (line, column, message),
            other => panic!("expected a parse error, got {other:?}"),
        }
    }

    fn scalar(map: &Metadata, key: &str) -> Scalar {
        match map.get(key) {
            Some(Value::Scalar(s)) => s.clone(),
            other => panic!("{key}: {other:?}"),
        }
    }

    #[test]
    fn yaml_and_json_mappings_read_the_same() {
        let yaml = parse_str("public-keys:\n  - ssh-ed25519 AAAA\nzone: a\n").expect("yaml");
        let json =
            parse_str(r#"{"public-keys": ["ssh-ed25519 AAAA"], "zone": "a"}"#).expect("json");
        assert_eq!(yaml, json);
    }

    #[test]
    fn yaml_scalars_keep_the_types_pyyaml_gives_them() {
        let map = parse_str(
            "a: n\nb: yes\nc: 0755\nd: 1e3\ne: '0755'\nf: !!str yes\ng: ~\nh:\ni: 2024-01-02\n",
        )
        .expect("yaml");
        assert_eq!(scalar(&map, "a"), Scalar::Str("n".into()));
        assert_eq!(scalar(&map, "b"), Scalar::Bool(true));
        assert_eq!(scalar(&map, "c"), Scalar::Int("493".into()));
        assert_eq!(scalar(&map, "d"), Scalar::Str("1e3".into()));
        assert_eq!(scalar(&map, "e"), Scalar::Str("0755".into()));
        assert_eq!(scalar(&map, "f"), Scalar::Str("yes".into()));
        assert_eq!(scalar(&map, "g"), Scalar::Null);
        assert_eq!(scalar(&map, "h"), Scalar::Null);
        assert!(matches!(scalar(&map, "i"), Scalar::Timestamp { .. }));
    }

    #[test]
    fn anchors_aliases_and_merge_keys_read_as_in_pyyaml() {
        let map = parse_str(
            "base: &b {x: 1, y: 2}\nother: &o {y: 3, z: 4}\n\
             m:\n  <<: [*b, *o]\n  x: 9\ncopy: *b\n",
        )
        .expect("yaml");
        let Some(Value::Map(m)) = map.get("m") else {
            panic!("{map:?}")
        };
        let int = |n: &str| Value::Scalar(Scalar::Int(n.into()));
        // Explicit x wins; for y the earlier mapping of the list wins.
        assert_eq!(m.get("x"), Some(&int("9")));
        assert_eq!(m.get("y"), Some(&int("2")));
        assert_eq!(m.get("z"), Some(&int("4")));
        assert_eq!(map.get("copy"), map.get("base"));
    }

    #[test]
    fn a_billion_laughs_is_an_error() {
        let mut text = "a: &a [x, x, x, x, x, x, x, x, x, x]\n".to_owned();
        for (prev, next) in ["a", "b", "c", "d", "e", "f", "g"]
            .iter()
            .zip(["b", "c", "d", "e", "f", "g", "h"])
        {
            text.push_str(&format!("{next}: &{next} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"));
        }
        let (_, _, message) = position(parse_str(&text).expect_err("too many"));
        assert!(message.contains("YAML"), "{message}");
    }

    #[test]
    fn unreadable_plain_scalars_and_unknown_tags_are_errors_with_a_position() {
        for text in [
            "a: =\n",
            "a: !!binary aGVsbG8=\n",
            "a: !custom x\n",
            "a: 2023-02-30\n",
        ] {
            let (line, _, message) = position(parse_str(text).expect_err(text));
            assert_eq!(line, 1, "{text}: {message}");
        }
        let map = parse_str("=: x\n").expect("`=` as a key is a string");
        assert_eq!(scalar(&map, "="), Scalar::Str("x".into()));
    }

    #[test]
    fn empty_and_comment_only_documents_are_empty_mappings() {
        assert!(parse_str("").expect("empty").is_empty());
        assert!(parse_str("  \n").expect("blank").is_empty());
        assert!(parse_str("# nothing yet\n").expect("comment").is_empty());
        assert!(parse_str("---\n~\n").expect("null").is_empty());
    }

    #[test]
    fn a_document_starting_with_a_brace_is_strict_json() {
        let (line, column, message) = position(parse_str("{zone: a}").expect_err("not JSON"));
        assert_eq!((line, column), (1, 2), "{message}");
    }

    #[test]
    fn json_keeps_json_types() {
        let map = parse_str(r#"{"a": 1e3, "b": "n", "c": 7}"#).expect("json");
        assert_eq!(scalar(&map, "a"), Scalar::Float(1000.0));
        assert_eq!(scalar(&map, "b"), Scalar::Str("n".into()));
        assert_eq!(scalar(&map, "c"), Scalar::Int("7".into()));
    }

    #[test]
    fn a_list_is_rejected_with_file_line_and_column() {
        let (line, column, message) = position(parse_str("- a\n- b\n").expect_err("a list"));
        assert_eq!((line, column), (1, 1));
        assert!(message.contains("/metadata/meta-data:1:1"), "{message}");
        assert!(message.contains("mapping"), "{message}");
    }

    #[test]
    fn a_json_scalar_is_rejected() {
        let err = parse_str("\"just a string\"").expect_err("a scalar");
        assert!(err.to_string().contains("mapping"), "{err}");
    }

    #[test]
    fn two_documents_are_rejected() {
        let err = parse_str("a: 1\n---\nb: 2\n").expect_err("two documents");
        assert!(
            crate::error::render_chain(&err).contains("more than one"),
            "{err}"
        );
    }

    #[test]
    fn invalid_yaml_reports_where() {
        let (line, column, message) =
            position(parse_str("zone: a\nkeys: [a, b\nname: x\n").expect_err("bad yaml"));
        assert!(line >= 2, "line {line} in {message}");
        assert!(column >= 1);
        assert!(message.contains("YAML"), "{message}");
    }

    proptest::proptest! {
        #[test]
        fn never_panics_and_what_it_reads_it_can_write(text in "\\PC*") {
            if let Ok(map) = parse_str(&text) {
                let _ = (super::super::render::json(&map), super::super::render::yaml(&map));
            }
        }

        /// Our YAML writer and our reader agree (the reader agrees with PyYAML: see the
        /// integration tests), for plain and quoted scalars of every type.
        #[test]
        fn what_we_write_reads_back_the_same(
            tokens in proptest::collection::vec("[-+0-9._:a-zA-Z ~\"'\\\\#]{0,12}", 1..8)
        ) {
            let text: String = tokens
                .iter()
                .enumerate()
                .map(|(i, t)| format!("k{i}: {t}\n"))
                .collect();
            if let Ok(map) = parse_str(&text) {
                let written = super::super::render::yaml(&map);
                if !written.contains(".nan") {
                    let again = parse_str(&written).expect("our own YAML reads back");
                    proptest::prop_assert_eq!(again, map, "{}", written);
                }
            }
        }

        #[test]
        fn plain_scalars_never_panic(text in "[-+0-9._:a-zA-Z tT~<=]{0,24}") {
            let _ = scalar::plain(&text);
        }
    }

    #[test]
    fn invalid_json_reports_where() {
        let (line, column, message) =
            position(parse_str("{\n  \"zone\": \"a\",\n  \"name\": \n}\n").expect_err("bad json"));
        assert_eq!(line, 4, "{message}");
        assert_eq!(column, 1, "{message}");
        assert!(message.contains("JSON"), "{message}");
    }
}
