//! Parsing of the command-line quantities the three programs share: rates, percentages, durations, sizes.

use std::time::Duration;

use thiserror::Error;

/// A quantity that could not be parsed.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum UnitError {
    /// Not a number with an accepted suffix.
    #[error("cannot parse {input:?}: expected {expected}")]
    Invalid {
        /// What was given.
        input: String,
        /// What is accepted.
        expected: &'static str,
    },
}

fn invalid(input: &str, expected: &'static str) -> UnitError {
    UnitError::Invalid {
        input: input.to_owned(),
        expected,
    }
}

/// The number and its unit; a space between them leaves the unit unrecognised (`"10 s"` is an
/// error, not ten seconds by luck), so that every program and file reads a value one way.
fn split_suffix(s: &str) -> (&str, &str) {
    let at = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    (&s[..at], &s[at..])
}

/// Parses a bit rate such as `800M`, `1G`, `50k` or `1000000` (bits per second, decimal prefixes),
/// or `max` for no limit (`u64::MAX`).
pub fn parse_rate(s: &str) -> Result<u64, UnitError> {
    const EXPECTED: &str = "bits per second such as 50k, 800M or 1G, or max";
    if s.trim() == "max" {
        return Ok(u64::MAX);
    }
    let (num, suffix) = split_suffix(s.trim());
    let value: f64 = num.parse().map_err(|_| invalid(s, EXPECTED))?;
    let mult = match suffix.trim_end_matches("bit/s").trim_end_matches("bps") {
        "" => 1e0,
        "k" | "K" => 1e3,
        "m" | "M" => 1e6,
        "g" | "G" => 1e9,
        _ => return Err(invalid(s, EXPECTED)),
    };
    let bits = value * mult;
    if !(1.0..1e13).contains(&bits) {
        return Err(invalid(s, EXPECTED));
    }
    Ok(bits as u64)
}

/// Parses a byte size such as `256k`, `64M`, `1G` or `4096` (binary prefixes: `k` = 1024).
pub fn parse_size(s: &str) -> Result<u64, UnitError> {
    const EXPECTED: &str = "bytes such as 4096, 256k, 64M or 1G";
    let (num, suffix) = split_suffix(s.trim());
    let value: f64 = num.parse().map_err(|_| invalid(s, EXPECTED))?;
    let mult = match suffix.trim_end_matches(['B', 'i']) {
        "" => 1u64,
        "k" | "K" => 1 << 10,
        "m" | "M" => 1 << 20,
        "g" | "G" => 1 << 30,
        "t" | "T" => 1 << 40,
        _ => return Err(invalid(s, EXPECTED)),
    };
    let bytes = value * mult as f64;
    if !(0.0..1.8e19).contains(&bytes) {
        return Err(invalid(s, EXPECTED));
    }
    Ok(bytes as u64)
}

/// Parses a probability written `5%` or `0.05`, returning a fraction in `[0, 1]`.
pub fn parse_percent(s: &str) -> Result<f64, UnitError> {
    const EXPECTED: &str = "a percentage such as 5% or a fraction such as 0.05";
    let t = s.trim();
    let value = if let Some(p) = t.strip_suffix('%') {
        p.trim().parse::<f64>().map_err(|_| invalid(s, EXPECTED))? / 100.0
    } else {
        t.parse::<f64>().map_err(|_| invalid(s, EXPECTED))?
    };
    if !(0.0..=1.0).contains(&value) {
        return Err(invalid(s, EXPECTED));
    }
    Ok(value)
}

/// Parses a duration such as `250ms`, `10s`, `2m`, `1h`, `30d` or `1.5s`; a bare number is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, UnitError> {
    const EXPECTED: &str = "a duration such as 250ms, 10s, 2m, 1h or 30d";
    let (num, suffix) = split_suffix(s.trim());
    let value: f64 = num.parse().map_err(|_| invalid(s, EXPECTED))?;
    let secs = match suffix {
        "us" | "µs" => value / 1e6,
        "ms" => value / 1e3,
        "" | "s" => value,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        "d" => value * 86_400.0,
        _ => return Err(invalid(s, EXPECTED)),
    };
    Duration::try_from_secs_f64(secs).map_err(|_| invalid(s, EXPECTED))
}

/// A size for people, in binary units, one decimal (`512 B`, `1.5 MiB`): the status outputs'
/// form. (Parsed sizes take no space before the unit; this is for reading, not for configs.)
pub fn format_size(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_in_binary_units() {
        assert_eq!(format_size(0), "0 B");
        assert_eq!(format_size(1023), "1023 B");
        assert_eq!(format_size(1536), "1.5 KiB");
        assert_eq!(format_size(64 << 20), "64.0 MiB");
        assert_eq!(format_size(3 << 40), "3.0 TiB");
    }

    #[test]
    fn parses_what_the_docs_promise() {
        assert_eq!(parse_rate("800M"), Ok(800_000_000));
        assert_eq!(parse_rate("1G"), Ok(1_000_000_000));
        assert_eq!(parse_rate("50k"), Ok(50_000));
        assert_eq!(parse_rate("1.5Mbps"), Ok(1_500_000));
        assert!(parse_rate("fast").is_err() && parse_rate("0").is_err());
        assert_eq!(parse_size("256k"), Ok(262_144));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_percent("5%"), Ok(0.05));
        assert_eq!(parse_percent("0.05"), Ok(0.05));
        assert!(parse_percent("105%").is_err() && parse_percent("-1").is_err());
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("10 s").is_err() && parse_size("64 MiB").is_err());
        assert_eq!(parse_duration(" 10s "), Ok(Duration::from_secs(10)));
    }
}
