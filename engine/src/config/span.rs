//! Places in a configuration file and the diagnostics collected while reading it.

use std::ops::Range;

use super::model::{Diagnostic, Severity};

/// A piece of a line of a configuration file, with where it starts (1-based line and column).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Span<'a> {
    pub text: &'a str,
    pub file: &'a str,
    pub line: usize,
    /// 1-based, in characters.
    pub col: usize,
}

impl<'a> Span<'a> {
    /// The sub-span `r` (byte range into `self.text`, on char boundaries).
    pub fn slice(&self, r: Range<usize>) -> Span<'a> {
        Span {
            text: &self.text[r.start..r.end],
            file: self.file,
            line: self.line,
            col: self.col + self.text[..r.start].chars().count(),
        }
    }
    /// From byte `start` to the end.
    pub fn from(&self, start: usize) -> Span<'a> {
        self.slice(start..self.text.len())
    }
    /// The sub-span with surrounding whitespace removed.
    pub fn trim(&self) -> Span<'a> {
        let start = self.text.len() - self.text.trim_start().len();
        let end = self.text.trim_end().len().max(start);
        self.slice(start..end)
    }
    /// Column of byte offset `off` within this span.
    pub fn col_at(&self, off: usize) -> usize {
        let off = off.min(self.text.len());
        // `off` may fall inside a multi-byte char when it comes from a byte search: round down.
        let mut o = off;
        while !self.text.is_char_boundary(o) {
            o -= 1;
        }
        self.col + self.text[..o].chars().count()
    }
}

/// Every diagnostic of a read, errors and warnings together.
#[derive(Debug, Default)]
pub(crate) struct Diags {
    pub items: Vec<Diagnostic>,
}

impl Diags {
    fn push(
        &mut self,
        severity: Severity,
        file: &str,
        line: usize,
        column: usize,
        message: String,
        expected: Option<String>,
    ) {
        self.items.push(Diagnostic {
            file: file.to_string(),
            line,
            column,
            severity,
            message,
            expected,
        });
    }

    /// An error at the start of `at`.
    pub fn error(
        &mut self,
        at: &Span<'_>,
        message: impl Into<String>,
        expected: impl Into<String>,
    ) {
        self.error_at(at, 0, message, expected);
    }

    /// An error at byte offset `off` of `at`.
    pub fn error_at(
        &mut self,
        at: &Span<'_>,
        off: usize,
        message: impl Into<String>,
        expected: impl Into<String>,
    ) {
        self.push(
            Severity::Error,
            at.file,
            at.line,
            at.col_at(off),
            message.into(),
            Some(expected.into()),
        );
    }

    /// A warning at the start of `at` (no "expected" part).
    pub fn warn(&mut self, at: &Span<'_>, message: impl Into<String>) {
        self.push(
            Severity::Warning,
            at.file,
            at.line,
            at.col,
            message.into(),
            None,
        );
    }

    pub fn has_errors(&self) -> bool {
        self.items.iter().any(|d| d.severity == Severity::Error)
    }
}

/// Shown in messages: the text found, quoted, control characters escaped, and cut to a short
/// prefix with its length when long (`'abc...' (4000 bytes)`).
pub(crate) fn shown(s: &str) -> String {
    if s.is_empty() {
        return "nothing".to_string();
    }
    crate::text::quoted_prefix(s, crate::text::QUOTE_MAX_CHARS)
}
