//! Kubernetes resource quantities (`500m`, `1`, `0.5`, `128Mi`, `1G`, `1e3` ...), held as exact
//! integers: CPU in millicores, memory in bytes.
//!
//! Parsing follows Kubernetes' `resource.ParseQuantity`: an optional sign, a decimal number, then
//! one suffix: a binary SI one (`Ki Mi Gi Ti Pi Ei`), a decimal SI one (`n u m k M G T P E`) or a
//! decimal exponent (`e3`, `E-2`). The arithmetic is exact (no floats); a value finer than the
//! unit is rounded up, as Kubernetes' `MilliValue()`/`Value()` do, so `0.0001` CPU is `1m`.
//!
//! The canonical text (what [`Cpu`] and [`Memory`] serialize to) is chosen so that equal amounts
//! always print the same: `500m`/`2` for CPU, the shorter of the exact binary and decimal forms
//! for memory (`128Mi`, `1G`, `1500`).

use std::fmt;

use serde::de::{self, Deserialize, Deserializer};
use serde::{Serialize, Serializer};

/// Why a quantity did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    /// Not a number with an optional suffix.
    #[error(
        "invalid quantity {0:?}: expected a number with an optional suffix, such as 500m, 0.5, 2, 128Mi, 1G or 1e3"
    )]
    Syntax(String),
    /// Below zero.
    #[error("invalid quantity {0:?}: must not be negative")]
    Negative(String),
    /// Larger than what fits (2^64-1 millicores or bytes).
    #[error("invalid quantity {0:?}: too large")]
    TooLarge(String),
    /// More than 38 significant digits.
    #[error("invalid quantity {0:?}: more than 38 significant digits")]
    TooPrecise(String),
    /// A memory amount that is not a whole number of bytes: almost always `m` (milli) written
    /// for `Mi`, which Kubernetes accepts with a warning and rounds to a byte or so.
    #[error(
        "invalid quantity {0:?}: not a whole number of bytes (the suffix m means milli; did you mean Mi?)"
    )]
    FractionalBytes(String),
}

/// A CPU amount in millicores (`1` core = `1000`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Cpu(pub u64);

/// A memory amount in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Memory(pub u64);

impl Cpu {
    /// Parses a CPU quantity (`500m`, `0.5`, `2`), rounding up to whole millicores.
    pub fn parse(text: &str) -> Result<Cpu, QuantityError> {
        parse_scaled(text, 3).map(Cpu)
    }

    /// Millicores.
    pub fn millis(self) -> u64 {
        self.0
    }
}

impl Memory {
    /// Parses a memory quantity (`128Mi`, `1G`, `1e9`, `1048576`). Fractions of a byte are an
    /// error ([`QuantityError::FractionalBytes`]).
    pub fn parse(text: &str) -> Result<Memory, QuantityError> {
        let bytes = parse_scaled(text, 0)?;
        // Rounding up hid a fraction if the exact value at a finer scale differs.
        match parse_scaled(text, 3) {
            Ok(millis) if millis % 1000 == 0 => Ok(Memory(bytes)),
            // Too large at the finer scale but fine in bytes: the fraction would have had to be
            // under 1e-3 of a 2^54-byte amount; only exponent spellings reach here.
            Err(QuantityError::TooLarge(_)) => Ok(Memory(bytes)),
            _ => Err(QuantityError::FractionalBytes(text.to_owned())),
        }
    }

    /// Bytes.
    pub fn bytes(self) -> u64 {
        self.0
    }
}

impl fmt::Display for Cpu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 % 1000 == 0 {
            write!(f, "{}", self.0 / 1000)
        } else {
            write!(f, "{}m", self.0)
        }
    }
}

impl fmt::Display for Memory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_bytes(self.0))
    }
}

const BINARY: [(&str, u32); 6] = [
    ("Ki", 1),
    ("Mi", 2),
    ("Gi", 3),
    ("Ti", 4),
    ("Pi", 5),
    ("Ei", 6),
];
const DECIMAL: [(&str, i32); 9] = [
    ("n", -9),
    ("u", -6),
    ("m", -3),
    ("k", 3),
    ("M", 6),
    ("G", 9),
    ("T", 12),
    ("P", 15),
    ("E", 18),
];

/// The shortest exact text for `bytes`: the largest binary or decimal suffix that divides it,
/// whichever is shorter (binary on a tie, as memory is usually sized in powers of two).
fn format_bytes(bytes: u64) -> String {
    let plain = bytes.to_string();
    if bytes == 0 {
        return plain;
    }
    let binary = BINARY
        .iter()
        .rev()
        .find(|(_, k)| bytes % 1024u64.pow(*k) == 0)
        .map(|(s, k)| format!("{}{s}", bytes / 1024u64.pow(*k)));
    let decimal = DECIMAL
        .iter()
        .rev()
        .filter(|(_, e)| *e > 0)
        .find(|(_, e)| bytes % 10u64.pow(*e as u32) == 0)
        .map(|(s, e)| format!("{}{s}", bytes / 10u64.pow(*e as u32)));
    [binary, decimal]
        .into_iter()
        .flatten()
        .fold(plain, |best, s| if s.len() < best.len() { s } else { best })
}

/// Parses `text` and returns `ceil(value * 10^scale)`.
fn parse_scaled(text: &str, scale: i32) -> Result<u64, QuantityError> {
    let syntax = || QuantityError::Syntax(text.to_owned());
    let (negative, rest) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    let number_len = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    let (number, suffix) = rest.split_at(number_len);
    let (int_part, frac_part) = number.split_once('.').unwrap_or((number, ""));
    if int_part.is_empty() && frac_part.is_empty() || frac_part.contains('.') {
        return Err(syntax());
    }
    let (exp10, binary_power) = parse_suffix(suffix).ok_or_else(syntax)?;

    // The mantissa's significant digits (leading zeros dropped, so that long zero runs do not
    // count against the digit limit); the value is mantissa * 10^exp * 1024^binary_power.
    let digits = format!("{int_part}{frac_part}");
    let digits = digits.trim_start_matches('0');
    let mut exp = i64::from(exp10) - frac_part.len() as i64 + i64::from(scale);
    // Trailing zeros move into the exponent, so `1000000000000000000000000000000000000000m`
    // still parses as long as the value itself fits.
    let trimmed = digits.trim_end_matches('0');
    exp += (digits.len() - trimmed.len()) as i64;
    if trimmed.is_empty() {
        return Ok(0);
    }
    if negative {
        return Err(QuantityError::Negative(text.to_owned()));
    }
    let too_large = || QuantityError::TooLarge(text.to_owned());
    // u128 holds 38 decimal digits; nobody writes more significant digits than that.
    if trimmed.len() > 38 {
        return Err(QuantityError::TooPrecise(text.to_owned()));
    }
    let mantissa: u128 = trimmed.parse().map_err(|_| syntax())?;
    let mut value = mantissa
        .checked_mul(1024u128.pow(binary_power))
        .ok_or_else(too_large)?;
    if exp >= 0 {
        let factor = 10u128.checked_pow(exp as u32).ok_or_else(too_large)?;
        value = value.checked_mul(factor).ok_or_else(too_large)?;
    } else if -exp > 38 {
        // The divisor exceeds any u128 value: a positive amount below one unit.
        value = 1;
    } else {
        let divisor = 10u128.pow((-exp) as u32);
        value = value.div_ceil(divisor);
    }
    u64::try_from(value).map_err(|_| too_large())
}

/// `(decimal exponent, binary power)` of a suffix, or `None` if it is not one.
fn parse_suffix(suffix: &str) -> Option<(i32, u32)> {
    if suffix.is_empty() {
        return Some((0, 0));
    }
    if let Some((_, k)) = BINARY.iter().find(|(s, _)| *s == suffix) {
        return Some((0, *k));
    }
    if let Some((_, e)) = DECIMAL.iter().find(|(s, _)| *s == suffix) {
        return Some((*e, 0));
    }
    // A decimal exponent: e or E, an optional sign, digits. (A bare `E` is exa, handled above.)
    let rest = suffix.strip_prefix(['e', 'E'])?;
    let digits = rest.strip_prefix(['+', '-']).unwrap_or(rest);
    if digits.is_empty() || digits.len() > 4 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    rest.parse().ok().map(|e| (e, 0))
}

impl Serialize for Cpu {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl Serialize for Memory {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cpu {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Cpu, D::Error> {
        let text = String::deserialize(d)?;
        Cpu::parse(&text).map_err(de::Error::custom)
    }
}

impl<'de> Deserialize<'de> for Memory {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Memory, D::Error> {
        let text = String::deserialize(d)?;
        Memory::parse(&text).map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_forms() {
        for (text, millis) in [
            ("500m", 500),
            ("1", 1000),
            ("0.5", 500),
            ("+0.25", 250),
            (".5", 500),
            ("2.", 2000),
            ("1e3", 1_000_000),
            ("1E-3", 1),
            ("100u", 1), // rounds up, as Kubernetes does
            ("0.0001", 1),
            ("1k", 1_000_000),
            ("0", 0),
            ("-0", 0),
            ("0.000", 0),
            ("1500m", 1500),
            ("1Ki", 1_024_000),
            ("2000000000n", 2000),
        ] {
            assert_eq!(Cpu::parse(text), Ok(Cpu(millis)), "{text}");
        }
    }

    #[test]
    fn memory_forms() {
        for (text, bytes) in [
            ("128Mi", 128 << 20),
            ("1G", 1_000_000_000),
            ("1e3", 1000),
            ("1.5Gi", 3 << 29),
            ("1048576", 1 << 20),
            ("0.5Ki", 512),
        ] {
            assert_eq!(Memory::parse(text), Ok(Memory(bytes)), "{text}");
        }
        assert!(matches!(
            Memory::parse("500m"),
            Err(QuantityError::FractionalBytes(_))
        ));
        assert!(matches!(
            Memory::parse("16Ei"),
            Err(QuantityError::TooLarge(_))
        ));
        assert_eq!(Memory::parse("15Ei"), Ok(Memory(15 << 60)));
    }

    #[test]
    fn rejects_bad_syntax() {
        for text in [
            "", "m", "Mi", ".", "1.2.3", "12 Mi", " 1", "1 ", "1mi", "1MB", "0x10", "1e", "1e+",
            "e3", "1.5.Gi", "--1", "1Kii", "1e99999",
        ] {
            assert!(
                matches!(Cpu::parse(text), Err(QuantityError::Syntax(_))),
                "{text:?} gave {:?}",
                Cpu::parse(text)
            );
        }
        assert!(matches!(Cpu::parse("-1"), Err(QuantityError::Negative(_))));
        assert!(matches!(
            Cpu::parse("99999999999999999999"),
            Err(QuantityError::TooLarge(_))
        ));
        assert!(matches!(
            Cpu::parse("1e30"),
            Err(QuantityError::TooLarge(_))
        ));
        assert_eq!(
            Cpu::parse("12 Mi").unwrap_err().to_string(),
            "invalid quantity \"12 Mi\": expected a number with an optional suffix, such as 500m, 0.5, 2, 128Mi, 1G or 1e3"
        );
    }

    #[test]
    fn extreme_exponents_do_not_overflow() {
        assert_eq!(Cpu::parse("1e-9999"), Ok(Cpu(1)));
        assert_eq!(Cpu::parse("0e9999"), Ok(Cpu(0)));
        assert!(Cpu::parse("1e9999").is_err());
        let long = format!("0.{}1", "0".repeat(100));
        assert_eq!(Cpu::parse(&long), Ok(Cpu(1)));
        let long_mantissa = format!("0.{}", "1".repeat(60));
        assert!(matches!(
            Cpu::parse(&long_mantissa),
            Err(QuantityError::TooPrecise(_))
        ));
        let big = format!("1{}m", "0".repeat(18));
        assert_eq!(Cpu::parse(&big), Ok(Cpu(10u64.pow(18))));
    }

    #[test]
    fn canonical_text() {
        assert_eq!(Cpu(500).to_string(), "500m");
        assert_eq!(Cpu(2000).to_string(), "2");
        assert_eq!(Cpu(0).to_string(), "0");
        assert_eq!(Memory(128 << 20).to_string(), "128Mi");
        assert_eq!(Memory(1_000_000_000).to_string(), "1G");
        assert_eq!(Memory(1000).to_string(), "1k");
        assert_eq!(Memory(1500).to_string(), "1500");
        assert_eq!(Memory(1024).to_string(), "1Ki");
        assert_eq!(Memory(0).to_string(), "0");
        assert_eq!(Memory(u64::MAX).to_string(), u64::MAX.to_string());
        // Every canonical text parses back to the same amount.
        for v in [1, 999, 1000, 1024, 1536, 10u64.pow(18), 1 << 62, u64::MAX] {
            assert_eq!(Memory::parse(&Memory(v).to_string()), Ok(Memory(v)));
            assert_eq!(Cpu::parse(&Cpu(v).to_string()), Ok(Cpu(v)));
        }
    }
}
