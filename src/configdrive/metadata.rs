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

mod yaml;

use std::path::Path;

use super::scalar::Scalar;
use super::ConfigDriveError;

/// A meta-data value, typed as cloud-init reads it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
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
pub(crate) struct Mapping(Vec<(Scalar, Value)>);

impl Mapping {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    pub(crate) fn insert(&mut self, key: Scalar, value: Value) {
        match self.0.iter_mut().find(|(k, _)| *k == key) {
            Some(entry) => entry.1 = value,
            None => self.0.push((key, value)),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&Scalar, &Value)> {
        self.0.iter().map(|(k, v)| (k, v))
    }

    /// The value of the string key `key`.
    #[cfg(test)]
    pub(crate) fn get(&self, key: &str) -> Option<&Value> {
        self.iter()
            .find(|(k, _)| matches!(k, Scalar::Str(s) if s == key))
            .map(|(_, v)| v)
    }
}

/// The keys and values of a meta-data document.
pub(crate) type Metadata = Mapping;

pub(crate) fn parse(path: &Path, bytes: &[u8]) -> Result<Metadata, ConfigDriveError> {
    if bytes.trim_ascii().is_empty() {
        return Ok(Metadata::new());
    }
    if bytes.trim_ascii_start().starts_with(b"{") {
        return json(path, bytes);
    }
    yaml::read(bytes).map_err(|e| ConfigDriveError::ParseMetadata {
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

#[cfg(test)]
mod tests;
