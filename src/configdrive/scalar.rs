//! How cloud-init types a meta-data scalar: PyYAML's `safe_load`, which follows YAML 1.1.
//!
//! cloud-init reads NoCloud's `meta-data` with PyYAML, and our `meta_data.json` (config-2) is
//! the operator's YAML as PyYAML would have read it. YAML 1.2 parsers (serde-saphyr included)
//! type plain scalars differently: `0755` is 493 in YAML 1.1, `1e3` is the string `'1e3'`
//! (a float needs a dot), `yes`/`on` are booleans while `y`/`n` are strings, `1:20` is 80.
//! So the tag of a plain scalar comes from PyYAML's own implicit resolvers
//! (`yaml/resolver.py`, in its order: bool, float, int, merge, null, timestamp, value), and
//! the value from its constructors (`yaml/constructor.py`, `SafeConstructor`), transcribed:
//! the resolvers as one table of small matchers ([`resolver`]), the constructors here and in
//! [`integer`] and [`timestamp`]. Quoted and block scalars are strings unless tagged.

mod cursor;
mod integer;
mod resolver;
mod timestamp;

use integer::int;
use resolver::{is_bool, is_float, is_int, is_null};
use timestamp::{is_implicit_timestamp, timestamp};

/// What PyYAML makes of a scalar.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Scalar {
    Null,
    Bool(bool),
    /// Decimal, with a leading `-` when negative: Python's integers have no bound.
    Int(String),
    Float(f64),
    Str(String),
    /// A date or a date and time: `text` as written, `python` as Python's `str()` prints the
    /// `datetime.date`/`datetime.datetime` PyYAML builds from it.
    Timestamp {
        text: String,
        python: String,
    },
    /// `<<`: PyYAML's merge key.
    Merge,
    /// `=`: PyYAML's "value" key, a string as a key and an error anywhere else.
    Value,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ScalarError {
    #[error("{0:?} is not a valid {1} for PyYAML")]
    Invalid(String, &'static str),
    #[error("{0:?} has more than {MAX_DIGITS} digits")]
    TooLong(String),
}

/// The tags that may be given explicitly (`!!int "12"`), as PyYAML's `SafeConstructor` has them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tag {
    Null,
    Bool,
    Int,
    Float,
    Str,
    Timestamp,
}

impl Tag {
    /// The suffix of `tag:yaml.org,2002:`.
    pub(crate) fn of(suffix: &str) -> Option<Self> {
        Some(match suffix {
            "null" => Self::Null,
            "bool" => Self::Bool,
            "int" => Self::Int,
            "float" => Self::Float,
            "str" => Self::Str,
            "timestamp" => Self::Timestamp,
            _ => return None,
        })
    }
}

/// Python refuses to convert longer decimal strings (`sys.set_int_max_str_digits`); we stop
/// there for every base, which also bounds the quadratic conversion below.
pub(crate) const MAX_DIGITS: usize = 4300;

/// Whether a plain scalar has the form one implicit resolver takes.
type Matcher = fn(&str) -> bool;

/// The PyYAML implicit resolvers, in PyYAML's order (the first match wins).
const IMPLICIT: [(Matcher, Tag); 5] = [
    (is_bool, Tag::Bool),
    (is_float, Tag::Float),
    (is_int, Tag::Int),
    (is_null, Tag::Null),
    (is_implicit_timestamp, Tag::Timestamp),
];

/// A plain (unquoted, untagged) scalar.
pub(crate) fn plain(text: &str) -> Result<Scalar, ScalarError> {
    match text {
        "<<" => return Ok(Scalar::Merge),
        "=" => return Ok(Scalar::Value),
        _ => {}
    }
    match IMPLICIT.iter().find(|(matches, _)| matches(text)) {
        Some((_, tag)) => construct(*tag, text),
        None => Ok(Scalar::Str(text.to_owned())),
    }
}

/// A scalar of the tag `tag`, as PyYAML's constructor for it builds one.
pub(crate) fn construct(tag: Tag, text: &str) -> Result<Scalar, ScalarError> {
    let invalid = |what| ScalarError::Invalid(text.to_owned(), what);
    match tag {
        Tag::Null => Ok(Scalar::Null),
        Tag::Str => Ok(Scalar::Str(text.to_owned())),
        Tag::Bool => match text.to_ascii_lowercase().as_str() {
            "yes" | "true" | "on" => Ok(Scalar::Bool(true)),
            "no" | "false" | "off" => Ok(Scalar::Bool(false)),
            _ => Err(invalid("boolean")),
        },
        Tag::Int => int(text).map(Scalar::Int),
        Tag::Float => float(text)
            .map(Scalar::Float)
            .ok_or_else(|| invalid("float")),
        Tag::Timestamp => {
            let python = timestamp(text).ok_or_else(|| invalid("date or timestamp"))?;
            Ok(Scalar::Timestamp {
                text: text.to_owned(),
                python,
            })
        }
    }
}

/// `construct_yaml_float`: underscores dropped, lower-cased, `.inf`/`.nan`, base 60, else
/// Python's `float()`.
fn float(text: &str) -> Option<f64> {
    let cleaned = text.replace('_', "").to_ascii_lowercase();
    let (sign, body) = match cleaned.as_bytes().first()? {
        b'-' => (-1.0, &cleaned[1..]),
        b'+' => (1.0, &cleaned[1..]),
        _ => (1.0, &cleaned[..]),
    };
    match body {
        ".inf" => return Some(sign * f64::INFINITY),
        ".nan" => return Some(f64::NAN),
        _ => {}
    }
    if body.contains(':') {
        let mut value = 0.0;
        let mut base = 1.0;
        for part in body.rsplit(':') {
            value += python_float(part)? * base;
            base *= 60.0;
        }
        return Some(sign * value);
    }
    Some(sign * python_float(body)?)
}

/// Python's `float()` of what the resolvers let through (Rust's grammar is a superset for
/// these: digits, one dot, an exponent, `inf`, `nan`).
fn python_float(text: &str) -> Option<f64> {
    let ok = !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b));
    ok.then(|| text.parse().ok()).flatten()
}

#[cfg(test)]
mod tests;
