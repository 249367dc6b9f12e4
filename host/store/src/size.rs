//! Sizes in bytes, as people write them: `1048576`, `64MiB`, `1GiB`, `512k`.

/// Parses a size: a whole number of bytes, optionally followed by a unit. Binary units
/// (`KiB`, `MiB`, `GiB`, `TiB`, and the short `K`, `M`, `G`, `T`) are powers of 1024; decimal
/// units (`KB`, `MB`, `GB`, `TB`) are powers of 1000; `B` is bytes. Units are case-insensitive
/// and may be separated from the number by a space. Fractions are accepted with a unit
/// (`1.5GiB`).
///
/// ```
/// use filecache_store::size::parse_size;
/// assert_eq!(parse_size("1048576"), Ok(1 << 20));
/// assert_eq!(parse_size("64MiB"), Ok(64 << 20));
/// assert_eq!(parse_size("1GiB"), Ok(1 << 30));
/// assert_eq!(parse_size("1.5 KiB"), Ok(1536));
/// assert_eq!(parse_size("10MB"), Ok(10_000_000));
/// assert!(parse_size("lots").is_err());
/// ```
pub fn parse_size(text: &str) -> Result<u64, String> {
    let s = text.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (number, unit) = (&s[..split], s[split..].trim());
    if number.is_empty() {
        return Err(format!(
            "invalid size {text:?}: expected a number of bytes, like 1048576, 64MiB or 1GiB"
        ));
    }
    let multiplier: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => {
            return Err(format!(
                "invalid size {text:?}: unknown unit {unit:?} (use B, KiB, MiB, GiB, TiB, or KB, MB, GB, TB)"
            ));
        }
    };
    let too_big = || format!("invalid size {text:?}: too large");
    if let Ok(n) = number.parse::<u64>() {
        return n.checked_mul(multiplier).ok_or_else(too_big);
    }
    match number.parse::<f64>() {
        Ok(f) if f.is_finite() && multiplier > 1 => {
            let bytes = (f * multiplier as f64).round();
            if bytes >= u64::MAX as f64 {
                Err(too_big())
            } else {
                Ok(bytes as u64)
            }
        }
        _ => Err(format!(
            "invalid size {text:?}: expected a number of bytes, like 1048576, 64MiB or 1GiB"
        )),
    }
}

/// Formats a size for people: `1.5 MiB`.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("64 MiB"), Ok(64 << 20));
        assert_eq!(parse_size("64m"), Ok(64 << 20));
        assert_eq!(parse_size("2TiB"), Ok(2 << 40));
        for bad in [
            "",
            "MiB",
            "-1",
            "1.2.3MiB",
            "1.5",
            "1XB",
            "99999999999999999999",
            "20000000000TiB",
        ] {
            assert!(parse_size(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(format_size(1536), "1.5 KiB");
        assert_eq!(format_size(12), "12 B");
    }
}
