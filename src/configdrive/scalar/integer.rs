//! `construct_yaml_int`: Python's unbounded integers, as decimal text.

use std::fmt::Write as _;

use super::{ScalarError, MAX_DIGITS};

/// `construct_yaml_int`: underscores dropped, then by prefix.
pub(super) fn int(text: &str) -> Result<String, ScalarError> {
    let invalid = || ScalarError::Invalid(text.to_owned(), "integer");
    let cleaned = text.replace('_', "");
    let (negative, digits) = match cleaned.as_bytes().first() {
        Some(b'-') => (true, &cleaned[1..]),
        Some(b'+') => (false, &cleaned[1..]),
        Some(_) => (false, &cleaned[..]),
        None => return Err(invalid()),
    };
    if digits.len() > MAX_DIGITS {
        return Err(ScalarError::TooLong(text.to_owned()));
    }
    let magnitude = if digits == "0" {
        Some(vec![0])
    } else if let Some(bin) = digits.strip_prefix("0b") {
        radix(bin, 2)
    } else if let Some(hex) = digits.strip_prefix("0x") {
        radix(hex, 16)
    } else if digits.starts_with('0') {
        radix(digits, 8)
    } else if digits.contains(':') {
        let mut value = vec![0];
        for part in digits.split(':') {
            let part = radix(part, 10).ok_or_else(invalid)?;
            value = mul_add(value, 60, 0);
            value = add(value, &part);
        }
        Some(value)
    } else {
        radix(digits, 10)
    };
    let magnitude = magnitude.ok_or_else(invalid)?;
    let decimal = to_decimal(&magnitude);
    Ok(if negative && decimal != "0" {
        format!("-{decimal}")
    } else {
        decimal
    })
}

/// Little-endian limbs of base 10^9.
type Big = Vec<u32>;
const LIMB: u64 = 1_000_000_000;

fn mul_add(mut value: Big, factor: u32, addend: u32) -> Big {
    let mut carry = u64::from(addend);
    for limb in &mut value {
        let next = u64::from(*limb) * u64::from(factor) + carry;
        *limb = (next % LIMB) as u32;
        carry = next / LIMB;
    }
    while carry > 0 {
        value.push((carry % LIMB) as u32);
        carry /= LIMB;
    }
    value
}

fn add(mut value: Big, other: &Big) -> Big {
    let mut carry = 0u64;
    for i in 0..value.len().max(other.len()) {
        if i == value.len() {
            value.push(0);
        }
        let next = u64::from(value[i]) + u64::from(other.get(i).copied().unwrap_or(0)) + carry;
        value[i] = (next % LIMB) as u32;
        carry = next / LIMB;
    }
    if carry > 0 {
        value.push(carry as u32);
    }
    value
}

/// Python's `int(digits, radix)` for ASCII digits (no sign, no underscores left).
fn radix(digits: &str, radix: u32) -> Option<Big> {
    if digits.is_empty() {
        return None;
    }
    digits.chars().try_fold(vec![0], |value, c| {
        c.to_digit(radix).map(|d| mul_add(value, radix, d))
    })
}

fn to_decimal(value: &Big) -> String {
    let mut limbs = value.iter().rev().skip_while(|limb| **limb == 0);
    let Some(first) = limbs.next() else {
        return "0".to_owned();
    };
    let mut out = first.to_string();
    for limb in limbs {
        // Infallible: writing to a String.
        let _ = write!(out, "{limb:09}");
    }
    out
}
