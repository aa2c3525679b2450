//! Durations written the way people say them: `"2s"`, `"5m"`, `"1h 30m"` (humantime syntax).

use std::{fmt, time::Duration};

use serde::de::{self, Deserialize, Deserializer, Visitor};

/// A duration read from the config file. Bare numbers are refused on purpose: `poll_interval
/// = 2` could mean seconds or milliseconds, and guessing wrong is how fleets get hammered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ConfigDuration(pub Duration);

impl<'de> Deserialize<'de> for ConfigDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(DurationVisitor)
    }
}

struct DurationVisitor;

impl Visitor<'_> for DurationVisitor {
    type Value = ConfigDuration;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a quoted duration with a unit, such as \"30s\", \"5m\" or \"1h 30m\"")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<ConfigDuration, E> {
        parse_duration(text).map(ConfigDuration).map_err(E::custom)
    }
}

/// Parses a humantime duration, with an error that says how to write one.
pub(super) fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|e| {
        format!(
            "invalid duration \"{text}\" ({e}); write a number and a unit, e.g. \"30s\", \"5m\", \"1h 30m\""
        )
    })
}

/// Formats a duration the way the config file writes it (`"2m"`, `"1h 30m"`).
pub(super) fn show(duration: Duration) -> String {
    humantime::format_duration(duration).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_are_required_and_understood() {
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        let err = parse_duration("2").unwrap_err();
        assert!(err.contains("write a number and a unit"), "{err}");
        assert!(parse_duration("two seconds").is_err());
    }

    #[test]
    fn show_round_trips() {
        assert_eq!(show(Duration::from_secs(120)), "2m");
        assert_eq!(
            parse_duration(&show(Duration::from_secs(5400))),
            Ok(Duration::from_secs(5400))
        );
    }
}
