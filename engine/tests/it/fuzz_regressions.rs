//! Inputs the fuzz targets (`cargo xtask fuzz`, `fuzz/fuzz_targets/`) found, kept as tests of
//! the behaviour they broke. Each names the target that found it.

use smtpw_engine::config::parse_str;

/// `site_cfg`: a SITE.CFG line with NUL bytes in its keyword came back raw inside the
/// diagnostic printed to the operator's terminal (issue 10, item 9: control characters from
/// SITE.CFG must be shown escaped).
#[test]
fn site_cfg_diagnostics_show_no_raw_control_characters() {
    let text = "NODE=LISTSERV.EXAMPLE.ORG\nSMTP_FORWARD=127.0.0.1:25\n\
                SORT_RECIPIWARD_2 \0\0\0P_RATE_LIMIT=10Mbps A:1Mbps\nMAXBSMTP=8\x1b[2J0\n";
    let err = parse_str(text, "SITE.CFG").unwrap_err();
    let shown = err.to_string();
    assert!(err.diagnostics().len() >= 2, "{shown}");
    for d in err.diagnostics() {
        let line = d.to_string();
        assert!(
            !line.chars().any(char::is_control),
            "a diagnostic shows a raw control character: {line:?}"
        );
    }
}

/// `site_cfg`: `config check`'s report of a good file shows its values; a control character in
/// one (here an escape sequence in NODE) must not reach the terminal raw.
#[test]
fn site_cfg_report_shows_no_raw_control_characters() {
    let cfg = parse_str(
        "NODE=LISTSERV\x1b[2J.EXAMPLE.ORG\nSMTP_FORWARD=127.0.0.1:25\n",
        "SITE.CFG",
    )
    .unwrap();
    let table = cfg.to_table();
    assert!(
        !table.chars().any(|c| c.is_control() && c != '\n'),
        "config check's report shows a raw control character: {table:?}"
    );
}
