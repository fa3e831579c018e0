//! Byte sizes on the command line (`8GiB`, `512MiB`, `1.5GB`, `4096`) and in the output.

/// Units and their sizes in bytes; matched without regard to case.
const UNITS: [(&str, u64); 9] = [
    ("b", 1),
    ("kb", 1_000),
    ("mb", 1_000_000),
    ("gb", 1_000_000_000),
    ("tb", 1_000_000_000_000),
    ("kib", 1 << 10),
    ("mib", 1 << 20),
    ("gib", 1 << 30),
    ("tib", 1 << 40),
];

/// Most digits after the decimal point: enough for any fraction of a byte of a TiB.
const MAX_DECIMALS: usize = 18;

/// Parses a byte size: a decimal number with an optional unit (`B`, `kB`, `MB`, `GB`, `TB` in
/// powers of 1000, `KiB`, `MiB`, `GiB`, `TiB` in powers of 1024; any case, a space allowed before
/// it). A fraction of a byte is rounded down: `1.5GB` is 1500000000 bytes.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    if text.starts_with('-') {
        return Err(format!("'{text}': a size cannot be negative"));
    }
    let split = text.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let unit = match unit.trim_start() {
        "" => "b",
        unit => unit,
    };
    let multiplier = UNITS
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(unit))
        .map(|&(_, bytes)| u128::from(bytes))
        .ok_or_else(|| format!("unknown unit '{unit}' (use B, kB, MB, GB, TB, KiB, MiB, GiB or TiB)"))?;
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if (whole.is_empty() && fraction.is_empty()) || !digits(fraction) {
        return Err(format!("'{text}' is not a size (a number with an optional unit, like 8GiB)"));
    }
    if fraction.len() > MAX_DECIMALS {
        return Err(format!("'{text}' has more than {MAX_DECIMALS} decimals"));
    }
    let too_large = || format!("'{text}' is larger than {} bytes", u64::MAX);
    let parse = |s: &str| if s.is_empty() { Ok(0) } else { s.parse::<u128>().map_err(|_| too_large()) };
    let scale = 10u128.pow(fraction.len() as u32);
    // At most 10^18 × 2^40 for the fraction: no overflow of u128.
    let fraction_bytes = parse(fraction)? * multiplier / scale;
    let bytes =
        parse(whole)?.checked_mul(multiplier).and_then(|b| b.checked_add(fraction_bytes)).ok_or_else(too_large)?;
    u64::try_from(bytes).map_err(|_| too_large())
}

/// `bytes` in the largest binary unit it reaches: `512 B`, `7 GiB`, `1.50 MiB`.
pub fn format_size(bytes: u64) -> String {
    const NAMES: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let power = NAMES.iter().enumerate().rev().find(|&(i, _)| bytes >> (10 * i) > 0).map_or(0, |(i, _)| i);
    let unit = NAMES.get(power).copied().unwrap_or("B");
    let scale = 1u64 << (10 * power);
    if bytes.is_multiple_of(scale) {
        format!("{} {unit}", bytes / scale)
    } else {
        format!("{:.2} {unit}", bytes as f64 / scale as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_in_decimal_and_binary_units() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("8GiB"), Ok(8 << 30));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("1.5GB"), Ok(1_500_000_000));
        assert_eq!(parse_size("1.5gib"), Ok(3 << 29));
        assert_eq!(parse_size("2 kB"), Ok(2000));
        assert_eq!(parse_size("10B"), Ok(10));
        assert_eq!(parse_size(".5KiB"), Ok(512));
        assert_eq!(parse_size("1.1KiB"), Ok(1126));
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("16777215TiB"), Ok(u64::MAX - (1 << 40) + 1));
    }

    #[test]
    fn bad_sizes_are_refused() {
        for bad in ["", "GiB", ".", "8XB", "8G", "-1", "1.2.3", "1e9", "99999999999999999999", "16777216TiB"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
        assert!(parse_size("0.0000000000000000001").is_err());
    }

    #[test]
    fn sizes_format_in_binary_units() {
        assert_eq!(format_size(0), "0 B");
        assert_eq!(format_size(512), "512 B");
        assert_eq!(format_size(7 << 30), "7 GiB");
        assert_eq!(format_size(3 << 19), "1.50 MiB");
        assert_eq!(format_size(u64::MAX), "16.00 EiB");
    }
}
