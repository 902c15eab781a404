//! PyYAML's implicit resolvers (`yaml/resolver.py`): whether a plain scalar has the form of a
//! bool, a float, an int or a null. Each regex of PyYAML is a small matcher over a [`Cursor`].

use super::cursor::{digit, digit_, Cursor};

/// `yes|Yes|YES|no|No|NO|true|True|TRUE|false|False|FALSE|on|On|ON|off|Off|OFF`
pub(super) fn is_bool(text: &str) -> bool {
    ["yes", "no", "true", "false", "on", "off"]
        .iter()
        .any(|word| {
            let title = format!("{}{}", word[..1].to_ascii_uppercase(), &word[1..]);
            text == *word || text == title || text == word.to_ascii_uppercase()
        })
}

/// `~|null|Null|NULL|` (the empty plain scalar too)
pub(super) fn is_null(text: &str) -> bool {
    matches!(text, "" | "~" | "null" | "Null" | "NULL")
}

/// PyYAML's float resolver: a dot is required, an exponent needs its sign.
pub(super) fn is_float(text: &str) -> bool {
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
pub(super) fn is_int(text: &str) -> bool {
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
