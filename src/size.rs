//! Byte sizes as operators write them: `2Gi`, `2G`, `2GiB`, `1536M`, `512k`.
//!
//! Suffixes are binary (powers of 1024) whether or not they carry the `i`, as qemu reads
//! them; Kubernetes' `Gi`/`Mi` quantities therefore mean what they say. A bare number is
//! accepted only where the caller gives it a unit (qemu's `-m 1024` means MiB).

use std::fmt;

/// A size in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

pub(crate) const KIB: u64 = 1 << 10;
pub(crate) const MIB: u64 = 1 << 20;
pub(crate) const GIB: u64 = 1 << 30;
pub(crate) const TIB: u64 = 1 << 40;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    #[error("empty size")]
    Empty,
    #[error("no number in front of the unit")]
    NoNumber,
    #[error("unknown unit `{0}` (use K, M, G or T, optionally followed by i and/or B)")]
    Unit(String),
    #[error("a unit is required (e.g. 20Gi)")]
    NoUnit,
    #[error("too large")]
    Overflow,
}

impl ByteSize {
    /// Parses `text`; a bare number is multiplied by `bare_unit`, or rejected when it is `None`.
    pub fn parse(text: &str, bare_unit: Option<u64>) -> Result<Self, SizeError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(SizeError::Empty);
        }
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (digits, unit) = text.split_at(split);
        if digits.is_empty() {
            return Err(SizeError::NoNumber);
        }
        let number: u64 = digits.parse().map_err(|_| SizeError::Overflow)?;
        let multiplier = match unit.trim_start().to_ascii_lowercase().as_str() {
            "" => bare_unit.ok_or(SizeError::NoUnit)?,
            "b" => 1,
            "k" | "ki" | "kb" | "kib" => KIB,
            "m" | "mi" | "mb" | "mib" => MIB,
            "g" | "gi" | "gb" | "gib" => GIB,
            "t" | "ti" | "tb" | "tib" => TIB,
            _ => return Err(SizeError::Unit(unit.trim_start().to_owned())),
        };
        number
            .checked_mul(multiplier)
            .map(ByteSize)
            .ok_or(SizeError::Overflow)
    }

    pub fn bytes(self) -> u64 {
        self.0
    }
}

impl fmt::Display for ByteSize {
    /// The largest binary unit that divides the size exactly (`2GiB`, `1536MiB`, `1000B`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (unit, name) in [(TIB, "TiB"), (GIB, "GiB"), (MIB, "MiB"), (KIB, "KiB")] {
            if self.0 >= unit && self.0.is_multiple_of(unit) {
                return write!(f, "{}{name}", self.0 / unit);
            }
        }
        write!(f, "{}B", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_binary_suffixes_with_and_without_i_and_b() {
        for (text, want) in [
            ("2Gi", 2 * GIB),
            ("2G", 2 * GIB),
            ("2GiB", 2 * GIB),
            ("2 GB", 2 * GIB),
            ("1536M", 1536 * MIB),
            ("512k", 512 * KIB),
            ("1Ti", TIB),
            ("4096b", 4096),
        ] {
            assert_eq!(ByteSize::parse(text, None), Ok(ByteSize(want)), "{text}");
        }
    }

    #[test]
    fn bare_number_needs_a_caller_unit() {
        assert_eq!(ByteSize::parse("1024", Some(MIB)), Ok(ByteSize(GIB)));
        assert_eq!(ByteSize::parse("1024", None), Err(SizeError::NoUnit));
    }

    #[test]
    fn rejects_garbage_units_and_overflow() {
        assert_eq!(ByteSize::parse("", None), Err(SizeError::Empty));
        assert_eq!(ByteSize::parse("G", None), Err(SizeError::NoNumber));
        assert_eq!(ByteSize::parse("-1G", None), Err(SizeError::NoNumber));
        assert_eq!(
            ByteSize::parse("1.5G", None),
            Err(SizeError::Unit(".5G".into()))
        );
        assert_eq!(
            ByteSize::parse("3X", None),
            Err(SizeError::Unit("X".into()))
        );
        assert_eq!(
            ByteSize::parse("99999999999T", None),
            Err(SizeError::Overflow)
        );
        assert_eq!(
            ByteSize::parse("999999999999999999999", None),
            Err(SizeError::Overflow)
        );
    }

    #[test]
    fn displays_the_largest_exact_unit() {
        assert_eq!(ByteSize(2 * GIB).to_string(), "2GiB");
        assert_eq!(ByteSize(1536 * MIB).to_string(), "1536MiB");
        assert_eq!(ByteSize(1000).to_string(), "1000B");
    }
}
