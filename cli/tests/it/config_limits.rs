//! SITE.CFG at its edges: a file that can deliver nothing, too many workers, a huge value, and
//! hostile bytes. Each is refused (or shown) with a short, printable message.

use std::path::{Path, PathBuf};

use smtpw_engine::config::{parse_str, ConfigError, MAX_WORKERS};

use crate::SMTPW;

const F: &str = "SITE.CFG";

fn errors_of(text: &str) -> Vec<String> {
    match parse_str(text, F) {
        Ok(c) => panic!(
            "expected errors, got a config with {} workers and warnings {:?}",
            c.workers.len(),
            c.warnings
        ),
        Err(e @ ConfigError::Invalid { .. }) => e.errors().map(ToString::to_string).collect(),
        Err(e) => panic!("unexpected {e}"),
    }
}

fn write(dir: &Path, name: &str, body: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    p
}

#[test]
fn a_file_that_can_deliver_nothing_is_an_error() {
    for text in [
        "",
        "NODE=X.EXAMPLE.ORG\n",
        "* only a comment\n",
        // Workers that add none, or are skipped at a gap, leave nothing either.
        "SMTP_FORWARD_1=0*H.EXAMPLE.ORG\n",
        "SMTP_FORWARD_2=H.EXAMPLE.ORG\n",
    ] {
        let errs = errors_of(text);
        assert!(
            errs.iter().any(
                |e| e.contains("neither SMTP_FORWARD nor any SMTP_FORWARD_n worker")
                    && e.contains("expected SMTP_FORWARD=host")
            ),
            "{text:?}: {errs:?}"
        );
    }
    // Either one is enough.
    assert!(parse_str("SMTP_FORWARD=S.EXAMPLE.ORG\n", F).is_ok());
    assert!(parse_str("SMTP_FORWARD_1=W.EXAMPLE.ORG\n", F).is_ok());
    // The command says so and exits 2.
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "SITE.CFG", b"");
    let out = SMTPW.output(&["config", "check", p.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("neither SMTP_FORWARD nor any SMTP_FORWARD_n worker"),
        "{err}"
    );
}

#[test]
fn the_total_number_of_workers_is_capped() {
    assert_eq!(MAX_WORKERS, 1000);
    let ok = "SMTP_FORWARD=S.EXAMPLE.ORG\nSMTP_FORWARD_1=600*A.EXAMPLE.ORG\nSMTP_FORWARD_2=400*B.EXAMPLE.ORG\n";
    assert_eq!(parse_str(ok, F).unwrap().workers.len(), 1000);
    let over = format!("{ok}SMTP_FORWARD_3=C.EXAMPLE.ORG\n");
    let errs = errors_of(&over);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].starts_with("SITE.CFG:4:1: error: SMTP_FORWARD_3 brings the workers to 1001"),
        "{errs:?}"
    );
    assert!(errs[0].contains("at most 1000 workers in all"), "{errs:?}");
    // The probe's file: 100 lines of 1000 workers (100,000) is one error, not 100,000 workers.
    let mut huge = String::from("SMTP_FORWARD=S.EXAMPLE.ORG\n");
    for n in 1..=100 {
        huge.push_str(&format!("SMTP_FORWARD_{n}=1000*H{n}.EXAMPLE.ORG\n"));
    }
    let errs = errors_of(&huge);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(errs[0].contains("SMTP_FORWARD_2 brings the workers to 2000"));
}

#[test]
fn a_huge_line_is_refused_without_being_echoed() {
    let ten_mb = "N".repeat(10 * 1024 * 1024);
    for (text, line) in [
        (format!("SMTP_FORWARD=S.EXAMPLE.ORG\nNODE={ten_mb}\n"), 2),
        (format!("SMTP_FORWARD={ten_mb}.EXAMPLE.ORG\n"), 1),
    ] {
        let e = parse_str(&text, F).unwrap_err().to_string();
        assert!(e.len() < 1000, "the message is {} bytes", e.len());
        assert!(
            e.contains(&format!(
                "{F}:{line}:1: error: a line of {} bytes",
                text.lines().nth(line - 1).unwrap().len()
            )),
            "{e}"
        );
        assert!(e.contains("at most 4096 bytes"), "{e}");
    }
    // Within the cap, a bad value is quoted by a short prefix and its length only.
    let host = "h".repeat(4000);
    let e = parse_str(&format!("SMTP_FORWARD={host}\n"), F)
        .unwrap_err()
        .to_string();
    assert!(e.len() < 400, "{} bytes: {e}", e.len());
    assert!(e.contains("...' (4000 bytes)"), "{e}");
    let e = parse_str(&format!("SMTP_FORWARD=S.EXAMPLE.ORG\nMAXBSMTP={host}\n"), F)
        .unwrap_err()
        .to_string();
    assert!(e.len() < 400, "{} bytes: {e}", e.len());
}

#[test]
fn control_characters_are_escaped_in_every_message() {
    let esc = "\u{1b}]0;owned\u{7}\u{1b}[2J";
    // Errors (check's stderr).
    let dir = tempfile::tempdir().unwrap();
    let bad = write(
        dir.path(),
        "bad.cfg",
        format!("SMTP_FORWARD=S.EXAMPLE.ORG\nSMTP_FORWARD_1=H{esc}.EXAMPLE.ORG\nMAXBSMTP=1{esc}\nDEFAULT_LIST_POOL={esc}\nSMTP_FORWARD_2=H.EXAMPLE.ORG;POOL=A{esc}\nJUNK{esc}\n").as_bytes(),
    );
    let out = SMTPW.output(&["config", "check", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.lines().count() >= 5, "{err}");
    assert!(
        !out.stderr.iter().any(|b| *b == 0x1b || *b == 0x07),
        "raw control characters on stderr: {err:?}"
    );
    assert!(err.contains("\\x1b]0;owned\\x07"), "{err}");
    // Warnings and values (check's stdout, and the JSON).
    let good = write(
        dir.path(),
        "good.cfg",
        format!("SMTP_FORWARD=S.EXAMPLE.ORG\nNODE=N{esc}.EXAMPLE.ORG\nMYORGNAME=Org{esc}\nSMTP_RESET_EVERY=1{esc}\n").as_bytes(),
    );
    for args in [&["config", "check"][..], &["config", "check", "--json"][..]] {
        let mut a = args.to_vec();
        a.push(good.to_str().unwrap());
        let out = SMTPW.output(&a);
        let so = String::from_utf8_lossy(&out.stdout);
        assert!(
            !out.stdout.iter().any(|b| *b == 0x1b || *b == 0x07)
                && !out.stderr.iter().any(|b| *b == 0x1b || *b == 0x07),
            "{args:?}: raw control characters: {so:?} {:?}",
            String::from_utf8_lossy(&out.stderr)
        );
        if args.len() == 2 {
            assert!(out.status.success(), "{so}");
            assert!(
                so.contains("node N\\x1b]0;owned\\x07\\x1b[2J.EXAMPLE.ORG"),
                "{so}"
            );
            assert!(so.contains("MYORGNAME=Org\\x1b]0;owned"), "{so}");
        }
    }
    // Explain prints the file name and hosts: a name with a control character is escaped.
    let odd = write(
        dir.path(),
        "odd\u{1b}name.cfg",
        b"SMTP_FORWARD=S.EXAMPLE.ORG\n",
    );
    let out = SMTPW.output(&["config", "check", odd.to_str().unwrap()]);
    assert!(out.status.success());
    assert!(
        !out.stdout.contains(&0x1b),
        "{:?}",
        String::from_utf8_lossy(&out.stdout)
    );
}
