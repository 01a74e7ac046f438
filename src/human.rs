//! Sizes and durations as people read them, the same everywhere (messages, the CLI's lines,
//! reason files, the history table).

use std::time::Duration;

/// Decimal units with one decimal: `512 bytes`, `1.2 MB`. 999,950 bytes and more print in the
/// next unit (`1.0 MB`, never `1000.0 kB`).
pub fn bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["kB", "MB", "GB", "TB", "PB", "EB"];
    if bytes < 1000 {
        return if bytes == 1 {
            "1 byte".to_string()
        } else {
            format!("{bytes} bytes")
        };
    }
    let mut value = bytes as f64 / 1000.0;
    let mut unit = 0;
    while value >= 999.95 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// `300 ms`, `4.2 s`, `60 s`, `2 min 05 s`, `1 h 02 min`: a tenth of a second below ten
/// seconds, whole units above.
pub fn duration(duration: Duration) -> String {
    let ms = duration.as_millis();
    if ms < 1000 {
        format!("{ms} ms")
    } else if ms < 10_000 && !ms.is_multiple_of(1000) {
        format!("{}.{} s", ms / 1000, (ms % 1000) / 100)
    } else if ms <= 60_000 {
        format!("{} s", ms / 1000)
    } else if ms < 3_600_000 {
        format!("{} min {:02} s", ms / 60_000, (ms / 1000) % 60)
    } else {
        format!("{} h {:02} min", ms / 3_600_000, (ms / 60_000) % 60)
    }
}

/// `text` on one line (runs of white space made one space), cut to at most `max` characters
/// with `…` marking the cut: for a body or a log in a one-line message.
pub fn one_line(text: &str, max: usize) -> String {
    let one_line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() <= max {
        return one_line;
    }
    let mut cut: String = one_line.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_are_cut_to_one_short_line() {
        assert_eq!(one_line("a\n  b", 10), "a b");
        assert_eq!(one_line("abcdefghijkl", 5), "abcd…");
        assert_eq!(one_line("é é é", 3), "é …");
    }

    #[test]
    fn sizes_use_decimal_units_with_one_decimal() {
        assert_eq!(bytes(0), "0 bytes");
        assert_eq!(bytes(1), "1 byte");
        assert_eq!(bytes(999), "999 bytes");
        assert_eq!(bytes(1000), "1.0 kB");
        assert_eq!(bytes(1_234_567), "1.2 MB");
        assert_eq!(bytes(999_999), "1.0 MB");
        assert_eq!(bytes(314_572_800), "314.6 MB");
    }

    #[test]
    fn durations_read_as_people_say_them() {
        let ms = Duration::from_millis;
        assert_eq!(duration(ms(300)), "300 ms");
        assert_eq!(duration(ms(1500)), "1.5 s");
        assert_eq!(duration(ms(4_250)), "4.2 s");
        assert_eq!(duration(ms(5_000)), "5 s");
        assert_eq!(duration(ms(48_000)), "48 s");
        assert_eq!(duration(ms(60_000)), "60 s");
        assert_eq!(duration(ms(125_000)), "2 min 05 s");
        assert_eq!(duration(ms(3_720_000)), "1 h 02 min");
    }
}
