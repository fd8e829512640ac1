//! Quoting input in messages: whatever a file or a peer wrote reaches a terminal or a log only
//! escaped (no control characters, no bidirectional overrides) and, when long, as a short
//! prefix with its length.

use std::borrow::Cow;
use std::fmt::Write as _;

/// Characters that would act on a terminal or reorder the text around them instead of showing:
/// C0 and C1 controls, DEL, and the Unicode bidirectional embeddings, overrides and isolates.
fn needs_escape(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `s` with every control character written as an escape (`\t`, `\r`, `\n`, `\x1b`,
/// `\u{9b}`, `\u{202e}`); other text, non-ASCII letters included, is unchanged. Borrowed when
/// nothing needs escaping.
pub fn escape_controls(s: &str) -> Cow<'_, str> {
    if !s.chars().any(needs_escape) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '\n' => out.push_str("\\n"),
            c if needs_escape(c) && (c as u32) < 0x80 => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if needs_escape(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Escapes control characters line by line, keeping the line breaks (for multi-line output
/// such as a report that quotes values).
pub fn escape_controls_keep_lines(s: &str) -> Cow<'_, str> {
    if !s.chars().any(|c| c != '\n' && needs_escape(c)) {
        return Cow::Borrowed(s);
    }
    let lines: Vec<Cow<'_, str>> = s.split('\n').map(escape_controls).collect();
    Cow::Owned(lines.join("\n"))
}

/// Most characters of a value quoted in a message before it is cut.
pub const QUOTE_MAX_CHARS: usize = 40;

/// `s` quoted for a message: `'value'`, or for a value longer than `max` characters its first
/// `max` characters and its length, `'valu...' (4000 bytes)`; control characters escaped.
pub fn quoted_prefix(s: &str, max: usize) -> String {
    quoted_prefix_in(s, max, '\'')
}

/// [`quoted_prefix`] between `quote` characters (`"value"`).
pub fn quoted_prefix_in(s: &str, max: usize, quote: char) -> String {
    let q = quote;
    match s.char_indices().nth(max) {
        None => format!("{q}{}{q}", escape_controls(s)),
        Some((cut, _)) => format!(
            "{q}{}...{q} ({} bytes)",
            escape_controls(&s[..cut]),
            s.len()
        ),
    }
}

/// [`quoted_prefix`] without the quotes, for text shown inside a larger quotation
/// (`POOL=value`): `value`, or `valu... (4000 bytes)`.
pub fn short_prefix(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        None => escape_controls(s).into_owned(),
        Some((cut, _)) => format!("{}... ({} bytes)", escape_controls(&s[..cut]), s.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_only_what_needs_it() {
        assert!(matches!(escape_controls("plain é ✓"), Cow::Borrowed(_)));
        assert_eq!(
            escape_controls("a\u{1b}[31mb\u{7}\t\r\n\u{7f}\u{9b}\u{202e}z"),
            "a\\x1b[31mb\\x07\\t\\r\\n\\x7f\\u{9b}\\u{202e}z"
        );
        assert_eq!(escape_controls_keep_lines("a\u{1b}\nb\n"), "a\\x1b\nb\n");
    }

    #[test]
    fn long_values_are_cut_with_their_length() {
        assert_eq!(quoted_prefix("abc", 3), "'abc'");
        assert_eq!(quoted_prefix("abcd", 3), "'abc...' (4 bytes)");
        assert_eq!(quoted_prefix("ééé", 2), "'éé...' (6 bytes)");
        assert_eq!(short_prefix("*A", 3), "*A");
        assert_eq!(short_prefix("\u{1b}bcd", 3), "\\x1bbc... (4 bytes)");
        let big = "x".repeat(10 << 20);
        assert!(quoted_prefix(&big, QUOTE_MAX_CHARS).len() < 70);
    }

    proptest::proptest! {
        #[test]
        fn escaped_text_has_no_control_characters(s in proptest::prelude::any::<String>()) {
            let e = escape_controls(&s);
            proptest::prop_assert!(!e.chars().any(needs_escape));
            let q = quoted_prefix(&s, QUOTE_MAX_CHARS);
            proptest::prop_assert!(!q.chars().any(needs_escape));
        }
    }
}
