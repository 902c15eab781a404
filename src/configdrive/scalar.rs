//! How cloud-init types a meta-data scalar: PyYAML's `safe_load`, which follows YAML 1.1.
//!
//! cloud-init reads NoCloud's `meta-data` with PyYAML, and our `meta_data.json` (config-2) is
//! the operator's YAML as PyYAML would have read it. YAML 1.2 parsers (serde-saphyr included)
//! type plain scalars differently: `0755` is 493 in YAML 1.1, `1e3` is the string `'1e3'`
//! (a float needs a dot), `yes`/`on` are booleans while `y`/`n` are strings, `1:20` is 80.
//! So the tag of a plain scalar comes from PyYAML's own implicit resolvers
//! (`yaml/resolver.py`, in its order: bool, float, int, merge, null, timestamp, value), and
//! the value from its constructors (`yaml/constructor.py`, `SafeConstructor`), transcribed
//! here as one table of small matchers. Quoted and block scalars are strings unless tagged.

mod integer;
mod timestamp;

use integer::int;
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

/// A cursor over the bytes of a scalar, for the matchers that stand in for PyYAML's regexes.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn new(text: &'a str) -> Self {
        Self {
            bytes: text.as_bytes(),
            at: 0,
        }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn one(&mut self, class: impl Fn(u8) -> bool) -> bool {
        match self.peek() {
            Some(b) if class(b) => {
                self.at += 1;
                true
            }
            _ => false,
        }
    }

    fn many(&mut self, class: impl Fn(u8) -> bool + Copy) -> usize {
        let start = self.at;
        while self.one(class) {}
        self.at - start
    }

    fn literal(&mut self, text: &str) -> bool {
        if self.bytes[self.at..].starts_with(text.as_bytes()) {
            self.at += text.len();
            true
        } else {
            false
        }
    }

    fn sign(&mut self) {
        self.one(|b| b == b'-' || b == b'+');
    }

    fn end(&self) -> bool {
        self.at == self.bytes.len()
    }

    /// `(?::[0-5]?[0-9])+`
    fn base_60_parts(&mut self) -> bool {
        let mut any = false;
        while self.peek() == Some(b':') {
            self.at += 1;
            let two = matches!(
                self.bytes.get(self.at..self.at + 2),
                Some([b'0'..=b'5', b'0'..=b'9'])
            );
            if two {
                self.at += 2;
            } else if !self.one(digit) {
                return false;
            }
            any = true;
        }
        any
    }
}

fn digit(b: u8) -> bool {
    b.is_ascii_digit()
}

fn digit_(b: u8) -> bool {
    b.is_ascii_digit() || b == b'_'
}

/// `yes|Yes|YES|no|No|NO|true|True|TRUE|false|False|FALSE|on|On|ON|off|Off|OFF`
fn is_bool(text: &str) -> bool {
    ["yes", "no", "true", "false", "on", "off"]
        .iter()
        .any(|word| {
            let title = format!("{}{}", word[..1].to_ascii_uppercase(), &word[1..]);
            text == *word || text == title || text == word.to_ascii_uppercase()
        })
}

/// `~|null|Null|NULL|` (the empty plain scalar too)
fn is_null(text: &str) -> bool {
    matches!(text, "" | "~" | "null" | "Null" | "NULL")
}

/// PyYAML's float resolver: a dot is required, an exponent needs its sign.
fn is_float(text: &str) -> bool {
    let exponent = |c: &mut Cursor| {
        let save = c.at;
        if c.one(|b| b == b'e' || b == b'E')
            && c.one(|b| b == b'-' || b == b'+')
            && c.many(digit) > 0
        {
            return;
        }
        c.at = save;
    };
    // [-+]?[0-9][0-9_]*\.[0-9_]*([eE][-+][0-9]+)?
    let mut c = Cursor::new(text);
    c.sign();
    if c.one(digit) && {
        c.many(digit_);
        c.literal(".")
    } {
        c.many(digit_);
        exponent(&mut c);
        if c.end() {
            return true;
        }
    }
    // \.[0-9][0-9_]*([eE][-+][0-9]+)?
    let mut c = Cursor::new(text);
    if c.literal(".") && c.one(digit) {
        c.many(digit_);
        exponent(&mut c);
        if c.end() {
            return true;
        }
    }
    // [-+]?[0-9][0-9_]*(:[0-5]?[0-9])+\.[0-9_]*
    let mut c = Cursor::new(text);
    c.sign();
    if c.one(digit)
        && {
            c.many(digit_);
            c.base_60_parts()
        }
        && c.literal(".")
    {
        c.many(digit_);
        if c.end() {
            return true;
        }
    }
    // [-+]?\.(inf|Inf|INF) | \.(nan|NaN|NAN)
    let unsigned = text.strip_prefix(['-', '+']).unwrap_or(text);
    matches!(unsigned, ".inf" | ".Inf" | ".INF") || matches!(text, ".nan" | ".NaN" | ".NAN")
}

/// PyYAML's int resolver: binary, old-style octal, decimal, hex, base 60.
fn is_int(text: &str) -> bool {
    let whole = |prefix: &str, first: fn(u8) -> bool, rest: fn(u8) -> bool| {
        let mut c = Cursor::new(text);
        c.sign();
        c.literal(prefix) && c.one(first) && {
            c.many(rest);
            c.end()
        }
    };
    let binary = |b: u8| b == b'0' || b == b'1' || b == b'_';
    let octal = |b: u8| (b'0'..=b'7').contains(&b) || b == b'_';
    let hex = |b: u8| b.is_ascii_hexdigit() || b == b'_';
    let nonzero = |b: u8| (b'1'..=b'9').contains(&b);
    let zero = text.strip_prefix(['-', '+']).unwrap_or(text) == "0";
    let base_60 = {
        let mut c = Cursor::new(text);
        c.sign();
        c.one(nonzero) && {
            c.many(digit_);
            c.base_60_parts() && c.end()
        }
    };
    whole("0b", binary, binary)
        || whole("0", octal, octal)
        || zero
        || whole("", nonzero, digit_)
        || whole("0x", hex, hex)
        || base_60
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
mod tests {
    use super::*;

    fn int_(text: &str) -> Scalar {
        Scalar::Int(text.to_owned())
    }

    fn str_(text: &str) -> Scalar {
        Scalar::Str(text.to_owned())
    }

    fn ts(text: &str, python: &str) -> Scalar {
        Scalar::Timestamp {
            text: text.to_owned(),
            python: python.to_owned(),
        }
    }

    /// What PyYAML 6 (`yaml.safe_load`) gives for each plain scalar; checked against PyYAML
    /// itself by tests/integration/configdrive.rs.
    #[test]
    fn plain_scalars_are_typed_as_pyyaml_types_them() {
        let table = [
            ("n", str_("n")),
            ("y", str_("y")),
            ("N", str_("N")),
            ("Y", str_("Y")),
            ("yes", Scalar::Bool(true)),
            ("No", Scalar::Bool(false)),
            ("ON", Scalar::Bool(true)),
            ("off", Scalar::Bool(false)),
            ("True", Scalar::Bool(true)),
            ("tRUE", str_("tRUE")),
            ("0755", int_("493")),
            ("-0755", int_("-493")),
            ("0o755", str_("0o755")),
            ("0x1F", int_("31")),
            ("0b101", int_("5")),
            ("1_000", int_("1000")),
            ("+12", int_("12")),
            ("-0", int_("0")),
            ("09", str_("09")),
            ("190:20:30", int_("685230")),
            ("12345678901234567890123", int_("12345678901234567890123")),
            ("1e3", str_("1e3")),
            ("1.0e3", str_("1.0e3")),
            ("1.0e+3", Scalar::Float(1000.0)),
            ("1.5", Scalar::Float(1.5)),
            ("1.", Scalar::Float(1.0)),
            (".5", Scalar::Float(0.5)),
            ("-.inf", Scalar::Float(f64::NEG_INFINITY)),
            (".Inf", Scalar::Float(f64::INFINITY)),
            ("190:20:30.15", Scalar::Float(685230.15)),
            ("~", Scalar::Null),
            ("", Scalar::Null),
            ("null", Scalar::Null),
            ("nULL", str_("nULL")),
            ("2002-12-14", ts("2002-12-14", "2002-12-14")),
            ("2002-1-14", str_("2002-1-14")),
            (
                "2001-12-14t21:59:43.10-05:00",
                ts(
                    "2001-12-14t21:59:43.10-05:00",
                    "2001-12-14 21:59:43.100000-05:00",
                ),
            ),
            (
                "2001-12-14 21:59:43.10 -5",
                ts(
                    "2001-12-14 21:59:43.10 -5",
                    "2001-12-14 21:59:43.100000-05:00",
                ),
            ),
            (
                "2001-12-15T02:59:43Z",
                ts("2001-12-15T02:59:43Z", "2001-12-15 02:59:43+00:00"),
            ),
            (
                "2001-12-14 2:59:43",
                ts("2001-12-14 2:59:43", "2001-12-14 02:59:43"),
            ),
            ("<<", Scalar::Merge),
            ("=", Scalar::Value),
            ("1.2.3", str_("1.2.3")),
            ("52:54:00:12:34:56", int_("41135085296")),
        ];
        for (text, expected) in table {
            let got = plain(text).expect(text);
            match (&got, &expected) {
                (Scalar::Float(a), Scalar::Float(b)) => assert!(a == b, "{text}: {a} != {b}"),
                _ => assert_eq!(got, expected, "{text:?}"),
            }
        }
        assert!(matches!(plain(".nan"), Ok(Scalar::Float(f)) if f.is_nan()));
    }

    #[test]
    fn impossible_dates_are_errors_as_in_python() {
        for text in [
            "2023-02-29",
            "2024-13-01",
            "0000-01-01",
            "2024-01-01 24:00:00",
        ] {
            assert!(plain(text).is_err(), "{text}");
        }
        assert!(plain("2024-02-29").is_ok());
    }

    #[test]
    fn explicit_tags_construct_as_pyyaml_does() {
        assert_eq!(construct(Tag::Str, "0755"), Ok(str_("0755")));
        assert_eq!(construct(Tag::Int, "0755"), Ok(int_("493")));
        assert_eq!(
            construct(Tag::Bool, "y"),
            Err(ScalarError::Invalid("y".into(), "boolean"))
        );
        assert_eq!(construct(Tag::Float, "1e3"), Ok(Scalar::Float(1000.0)));
        assert_eq!(construct(Tag::Null, "anything"), Ok(Scalar::Null));
        assert!(construct(Tag::Int, "twelve").is_err());
        assert!(construct(Tag::Int, &"9".repeat(MAX_DIGITS + 1)).is_err());
    }
}
