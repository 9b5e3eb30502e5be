//! Durations on the command line: `500ms`, `30s`, `5m`, `1h`, or sums such as `1m30s`.

use std::time::Duration;

/// Parses a duration such as `90s` or `1m30s`; a bare number means seconds.
pub fn parse(text: &str) -> Result<Duration, String> {
    let form =
        || format!("invalid duration {text:?}: expected for example 500ms, 30s, 5m, 1h or 1m30s");
    let t = text.trim();
    if t.is_empty() {
        return Err(form());
    }
    if let Ok(secs) = t.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total = Duration::ZERO;
    let mut rest = t;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits > 9 {
            return Err(form());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| form())?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        total += match unit {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n * 60),
            "h" => Duration::from_secs(n * 3600),
            _ => return Err(form()),
        };
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("2h"), Ok(Duration::from_secs(7200)));
        for bad in ["", "s", "5x", "1.5s", "-1s", "5 m"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
