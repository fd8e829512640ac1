//! SITE.CFG parser: any bytes (read as the engine reads a file: UTF-8, lossily) either give a
//! configuration or diagnostics, never a panic; and what comes out is sane:
//! - parsing is deterministic (the same text gives the same result twice);
//! - every diagnostic points into the text (1-based line and column within the file) and a
//!   failed read holds at least one error, a good one only warnings;
//! - what is shown to the operator (diagnostics, `config check`'s table) carries no raw control
//!   characters from the file (a terminal would act on them);
//! - a good configuration's report and JSON view can be produced.
#![no_main]

use libfuzzer_sys::fuzz_target;
use smtpw_engine::config::{parse_str, Diagnostic, Severity};

fn check_diagnostic(d: &Diagnostic, text: &str) {
    let lines: Vec<&str> = text.split('\n').collect();
    assert!(
        d.line >= 1 && d.line <= lines.len(),
        "diagnostic line {} outside 1..={}: {d}",
        d.line,
        lines.len()
    );
    let line = lines[d.line - 1];
    let chars = line.chars().count();
    assert!(
        d.column >= 1 && d.column <= chars + 1,
        "diagnostic column {} outside 1..={} of line {:?}: {d}",
        d.column,
        chars + 1,
        line
    );
    let shown = d.to_string();
    assert!(
        !shown.chars().any(char::is_control),
        "a diagnostic shows a raw control character: {shown:?}"
    );
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let first = parse_str(&text, "SITE.CFG");
    let second = parse_str(&text, "SITE.CFG");
    match (&first, &second) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "two parses of one text differ"),
        (Err(a), Err(b)) => assert_eq!(
            a.diagnostics(),
            b.diagnostics(),
            "two parses of one text differ"
        ),
        _ => panic!("two parses of one text differ: {first:?} / {second:?}"),
    }
    match first {
        Ok(cfg) => {
            for w in &cfg.warnings {
                assert_eq!(w.severity, Severity::Warning, "{w}");
                check_diagnostic(w, &text);
            }
            assert!(cfg.max_bsmtp >= 1, "MAXBSMTP {}", cfg.max_bsmtp);
            let table = cfg.to_table();
            assert!(
                !table.chars().any(|c| c.is_control() && c != '\n'),
                "config check's table shows a raw control character: {table:?}"
            );
            let _ = cfg.to_json();
        }
        Err(e) => {
            assert!(
                e.errors().next().is_some(),
                "a failed read without an error: {e:?}"
            );
            for d in e.diagnostics() {
                check_diagnostic(d, &text);
            }
            assert!(!e.to_string().is_empty());
        }
    }
});
