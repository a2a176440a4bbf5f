//! Durations written for people (`0.4s`, `3m 07s`, `1h 02m`), as the
//! worker's run summary and `amdimctl history` print them. Pure
//! formatting: no clock.

/// `seconds` as a person would write it: tenths below a minute, then
/// minutes and seconds, then hours and minutes. Negative counts as 0.
pub fn human(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    match s {
        s if s < 60 => format!("{:.1}s", seconds.max(0.0)),
        s if s < 3600 => format!("{}m {:02}s", s / 60, s % 60),
        s => format!("{}h {:02}m", s / 3600, (s % 3600) / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::human;

    #[test]
    fn durations_read_like_a_person_would_write_them() {
        assert_eq!(human(0.44), "0.4s");
        assert_eq!(human(4.25), "4.2s");
        assert_eq!(human(65.0), "1m 05s");
        assert_eq!(human(187.0), "3m 07s");
        assert_eq!(human(3725.0), "1h 02m");
        assert_eq!(human(7500.0), "2h 05m");
        assert_eq!(human(-3.0), "0.0s");
    }
}
