//! Dates and timestamps: PyYAML's `timestamp_regexp`, and the `datetime` it builds, printed
//! as Python's `str()` prints it (what cloud-init's view of a config-2 `meta_data.json` holds).

use std::fmt::Write as _;

use super::cursor::{digit, Cursor};

/// The date-only form needs two-digit month and day to resolve implicitly; a time may have
/// one-digit ones (the constructor accepts either when tagged).
pub(super) fn is_implicit_timestamp(text: &str) -> bool {
    parse_timestamp(text)
        .is_some_and(|t| t.time.is_some() || (t.month.len() == 2 && t.day.len() == 2))
}

/// The parts of PyYAML's `timestamp_regexp` (its constructor's, which the implicit resolver's
/// forms are special cases of).
struct Parts<'a> {
    year: &'a str,
    month: &'a str,
    day: &'a str,
    /// hour, minute, second, fraction digits, zone (`Z` or a signed offset).
    time: Option<(&'a str, &'a str, &'a str, &'a str, Option<&'a str>)>,
}

fn parse_timestamp(text: &str) -> Option<Parts<'_>> {
    let mut c = Cursor::new(text);
    let span = |c: &mut Cursor, min: usize, max: usize| {
        let start = c.at;
        let n = c.many(digit);
        if n < min || n > max {
            return None;
        }
        text.get(start..c.at)
    };
    let year = span(&mut c, 4, 4)?;
    let month = c.literal("-").then(|| span(&mut c, 1, 2)).flatten()?;
    let day = c.literal("-").then(|| span(&mut c, 1, 2)).flatten()?;
    if c.end() {
        return Some(Parts {
            year,
            month,
            day,
            time: None,
        });
    }
    let blank = |b: u8| b == b' ' || b == b'\t';
    if !(c.one(|b| b == b'T' || b == b't') || c.many(blank) > 0) {
        return None;
    }
    let hour = span(&mut c, 1, 2)?;
    let minute = c.literal(":").then(|| span(&mut c, 2, 2)).flatten()?;
    let second = c.literal(":").then(|| span(&mut c, 2, 2)).flatten()?;
    let fraction = if c.literal(".") {
        let start = c.at;
        c.many(digit);
        &text[start..c.at]
    } else {
        ""
    };
    c.many(blank);
    let zone_start = c.at;
    let zone = if c.literal("Z") {
        Some("Z")
    } else if c.one(|b| b == b'-' || b == b'+') {
        span(&mut c, 1, 2)?;
        if c.literal(":") {
            span(&mut c, 2, 2)?;
        }
        Some(&text[zone_start..c.at])
    } else {
        // Blanks with no zone after them are not part of the regex.
        c.at = zone_start;
        None
    };
    (c.end() && (zone.is_some() || !text.ends_with(blank_char))).then_some(Parts {
        year,
        month,
        day,
        time: Some((hour, minute, second, fraction, zone)),
    })
}

fn blank_char(c: char) -> bool {
    c == ' ' || c == '\t'
}

/// `construct_yaml_timestamp`, printed as Python's `str()` of the result; `None` where
/// Python's `datetime` refuses the value (month 13, February 30, an offset of a day).
pub(super) fn timestamp(text: &str) -> Option<String> {
    let parts = parse_timestamp(text)?;
    let number = |s: &str| s.parse::<u32>().ok();
    let (year, month, day) = (
        number(parts.year)?,
        number(parts.month)?,
        number(parts.day)?,
    );
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return None,
    };
    if year == 0 || day == 0 || day > days {
        return None;
    }
    let mut out = format!("{year:04}-{month:02}-{day:02}");
    let Some((hour, minute, second, fraction, zone)) = parts.time else {
        return Some(out);
    };
    let (hour, minute, second) = (number(hour)?, number(minute)?, number(second)?);
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let _ = write!(out, " {hour:02}:{minute:02}:{second:02}");
    // PyYAML keeps six digits of the fraction, padded with zeros.
    let micros = format!("{fraction:0<6.6}");
    if micros != "000000" {
        let _ = write!(out, ".{micros}");
    }
    match zone {
        None => {}
        Some("Z") => out.push_str("+00:00"),
        Some(offset) => {
            let (sign, rest) = offset.split_at(1);
            let (h, m) = rest.split_once(':').unwrap_or((rest, "0"));
            let minutes = number(h)? * 60 + number(m)?;
            if minutes >= 24 * 60 {
                return None;
            }
            let sign = if minutes == 0 { "+" } else { sign };
            let _ = write!(out, "{sign}{:02}:{:02}", minutes / 60, minutes % 60);
        }
    }
    Some(out)
}
