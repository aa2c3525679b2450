//! Go `time.ParseDuration` syntax (`2s`, `1m30s`, `100ms`, `1.5h`), which forgejo-runner's
//! configuration and `--fetch-interval` use.

use std::time::Duration;

/// Parses a Go duration. Negative durations are refused: none of our settings can use one.
pub fn parse_go_duration(text: &str) -> Result<Duration, String> {
    let input = text.trim();
    let invalid = || format!("invalid duration {text:?}");
    if input == "0" {
        return Ok(Duration::ZERO);
    }
    let mut rest = input.strip_prefix('+').unwrap_or(input);
    if rest.is_empty() || rest.starts_with('-') {
        return Err(invalid());
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..number_len].parse().map_err(|_| invalid())?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds_per_unit = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(invalid()),
        };
        rest = &rest[unit_len..];
        total += number * seconds_per_unit;
    }
    Duration::try_from_secs_f64(total).map_err(|_| invalid())
}

/// Serde helper: a Go duration string, or a bare integer of nanoseconds as yaml.v3 allows.
pub mod serde_go {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Text(String),
        Nanos(u64),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<Option<Duration>, D::Error> {
        match Option::<Raw>::deserialize(de)? {
            None => Ok(None),
            Some(Raw::Nanos(n)) => Ok(Some(Duration::from_nanos(n))),
            Some(Raw::Text(t)) => super::parse_go_duration(&t)
                .map(Some)
                .map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_forms() {
        let cases = [
            ("2s", Duration::from_secs(2)),
            ("100ms", Duration::from_millis(100)),
            ("1m30s", Duration::from_secs(90)),
            ("1.5h", Duration::from_secs(5400)),
            ("3h", Duration::from_secs(10800)),
            ("0", Duration::ZERO),
            ("0s", Duration::ZERO),
            ("250us", Duration::from_micros(250)),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_go_duration(text).unwrap(), expected, "{text}");
        }
    }

    #[test]
    fn rejects_what_go_rejects_and_negatives() {
        for text in ["", "2", "s", "2x", "-1s", "1s-", "1..2s"] {
            assert!(parse_go_duration(text).is_err(), "{text}");
        }
    }
}
