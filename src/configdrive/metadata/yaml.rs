//! Reading meta-data YAML from parser events into [`Value`]s typed as PyYAML types them.

use std::collections::HashMap;

use serde_saphyr::granit_parser::{Event, Marker, Parser, ScalarStyle, ScanError, Span};

use super::super::scalar::{self, Scalar, ScalarError, Tag};
use super::{Mapping, Metadata, Value};

/// Alias expansion may copy at most this many nodes in all.
const ALIAS_BUDGET: usize = 1_000_000;
/// Deeper nesting is refused (and keeps our recursion bounded).
const MAX_DEPTH: usize = 256;

/// A YAML error and where it is (1-based).
#[derive(Debug)]
pub(super) struct Located {
    pub(super) line: u64,
    pub(super) column: u64,
    pub(super) error: Box<dyn std::error::Error + Send + Sync>,
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

pub(super) fn read(bytes: &[u8]) -> Result<Metadata, Located> {
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
