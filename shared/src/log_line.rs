//! The size bound of one shipped log line, which the worker applies before
//! sending and the coordinator again before keeping: one rule on both
//! sides of the wire. No I/O.

/// The longest log line kept, in bytes; longer ones end in `…`.
pub const MAX_LOG_LINE_BYTES: usize = 8 << 10;

/// Cuts `line` to [`MAX_LOG_LINE_BYTES`] at a character boundary and marks
/// the cut with `…`; shorter lines are left alone.
pub fn cap_log_line(line: &mut String) {
    if line.len() > MAX_LOG_LINE_BYTES {
        let mut cut = MAX_LOG_LINE_BYTES;
        while !line.is_char_boundary(cut) {
            cut -= 1;
        }
        line.truncate(cut);
        line.push('…');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_lines_are_cut_at_a_character_boundary() {
        let mut short = "abc".to_string();
        cap_log_line(&mut short);
        assert_eq!(short, "abc");
        let mut long = "é".repeat(MAX_LOG_LINE_BYTES);
        cap_log_line(&mut long);
        assert!(long.ends_with('…'));
        assert!(long.len() <= MAX_LOG_LINE_BYTES + '…'.len_utf8());
        assert!(long.trim_end_matches('…').chars().all(|c| c == 'é'));
    }
}
