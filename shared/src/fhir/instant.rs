//! FHIR `instant` values: parsing request parameters and formatting times.

use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, UtcOffset};

/// Parses a FHIR instant. A time zone is required; fractional seconds are optional.
pub fn parse_instant(value: &str) -> Option<OffsetDateTime> {
    // RFC 3339 also allows a lowercase 't'/'z' and a space separator; FHIR does not.
    let bytes = value.as_bytes();
    if bytes.len() < 20 || bytes.get(10) != Some(&b'T') {
        return None;
    }
    let last = *bytes.last()?;
    let has_zone = last == b'Z' || {
        let n = bytes.len();
        n >= 6 && (bytes[n - 6] == b'+' || bytes[n - 6] == b'-') && bytes[n - 3] == b':'
    };
    if !has_zone {
        return None;
    }
    OffsetDateTime::parse(value, &Rfc3339).ok()
}

/// Formats a time as a FHIR instant in UTC with millisecond precision.
pub fn format_instant(t: OffsetDateTime) -> String {
    let t = t.to_offset(UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        t.month() as u8,
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

/// The current time truncated to milliseconds, so that a formatted instant
/// compares equal to the value it was made from.
pub fn now_millis() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    let ms = now.millisecond();
    now.replace_millisecond(ms).unwrap_or(now)
}

/// Unix seconds now: heartbeats, expiries and poll windows.
pub fn unix_now() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_need_a_zone() {
        assert!(parse_instant("2024-01-01T00:00:00Z").is_some());
        assert!(parse_instant("2024-01-01T00:00:00.123+05:00").is_some());
        assert!(parse_instant("2024-01-01T00:00:00-04:00").is_some());
        assert!(parse_instant("2024-01-01T00:00:00").is_none());
        assert!(parse_instant("2024-01-01").is_none());
        assert!(parse_instant("2024-13-01T00:00:00Z").is_none());
        assert!(parse_instant("2024-01-01 00:00:00Z").is_none());
        assert!(parse_instant("yesterday").is_none());
    }

    #[test]
    fn format_round_trips() {
        let t = parse_instant("2024-03-04T05:06:07.089+01:00").unwrap();
        assert_eq!(format_instant(t), "2024-03-04T04:06:07.089Z");
        assert_eq!(parse_instant(&format_instant(t)), Some(t));
    }
}
