//! The settings file (smtpw.toml): any text either gives settings or diagnostics, never a panic;
//! and what comes out is sane:
//! - reading is deterministic (the same text gives the same result twice);
//! - every diagnostic points into the text (1-based line within the file) and shows no raw
//!   control character; a failed read holds at least one error;
//! - a password never shows: the settings' `Debug` (what a log line would print) is the same
//!   whatever the passwords are.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use smtpw_engine::config::Severity;
use smtpw_engine::settings::{RelayAuth, Secret, Settings};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Relative files are looked for in a directory that does not exist: they are all missing.
    let base = Path::new("/nonexistent/smtpw-fuzz");
    let first = Settings::parse(text, "smtpw.toml", base);
    let second = Settings::parse(text, "smtpw.toml", base);
    assert_eq!(first, second, "two reads of one text differ");
    let lines = text.split('\n').count();
    match first {
        Ok(mut s) => {
            for w in &s.warnings {
                assert_eq!(w.severity, Severity::Warning, "{w}");
            }
            let shown = format!("{s:?}");
            let mut relays: Vec<_> = s.relays.by_key.values_mut().collect();
            relays.push(&mut s.relays.default);
            for r in relays {
                if let Some(RelayAuth::Password { password, .. }) = &mut r.auth {
                    *password = Secret::new(format!("{}-other", password.expose()));
                }
            }
            assert_eq!(shown, format!("{s:?}"), "a password shows in Debug");
        }
        Err(e) => {
            assert!(
                e.diagnostics
                    .iter()
                    .any(|d| d.severity == Severity::Error),
                "a failed read without an error: {e:?}"
            );
            for d in &e.diagnostics {
                assert!(
                    d.line >= 1 && d.line <= lines,
                    "diagnostic line {} outside 1..={lines}: {d}",
                    d.line
                );
                let shown = d.to_string();
                assert!(
                    !shown.chars().any(char::is_control),
                    "a diagnostic shows a raw control character: {shown:?}"
                );
            }
        }
    }
});
