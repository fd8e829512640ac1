//! Every negative case: a bad file is refused with every error, each at its place and saying
//! what was expected; warnings on good files.

use smtpw_engine::config::{parse_str, ConfigError, Severity, SiteConfig};

const F: &str = "SITE.CFG";

fn errors_of(text: &str) -> Vec<String> {
    match parse_str(text, F) {
        Ok(c) => panic!(
            "expected errors for {text:?}, got a config with warnings {:?}",
            c.warnings
        ),
        Err(e @ ConfigError::Invalid { .. }) => e.errors().map(ToString::to_string).collect(),
        Err(e) => panic!("unexpected {e}"),
    }
}

/// (file text, number of errors, the first error's start: "LINE:COL: error: <what>")
#[rustfmt::skip]
const BAD: &[(&str, usize, &str)] = &[
    // SMTP_FORWARD hosts and ports (FWD-1)
    ("SMTP_FORWARD=MAILHOST", 1, "1:14: error: SMTP_FORWARD host 'MAILHOST' is not fully qualified"),
    // Neither SMTP_FORWARD nor a worker: nothing could ever be delivered (was a warning).
    ("NODE=X.EXAMPLE.ORG", 1, "1:1: error: neither SMTP_FORWARD nor any SMTP_FORWARD_n worker is set, so no mail can be delivered"),
    ("SMTP_FORWARD=[::1]", 1, "1:14: error: SMTP_FORWARD host '[::1]' looks like an IPv6 address"),
    ("SMTP_FORWARD=::1", 1, "1:14: error: SMTP_FORWARD host '::1' looks like an IPv6 address"),
    ("SMTP_FORWARD=2001:db8::1", 1, "1:14: error: SMTP_FORWARD host '2001:db8::1' looks like an IPv6"),
    ("SMTP_FORWARD=H.EXAMPLE.ORG:0", 1, "1:28: error: port '0' is not valid"),
    ("SMTP_FORWARD=H.EXAMPLE.ORG:70000", 1, "1:28: error: port '70000' is not valid"),
    ("SMTP_FORWARD=H.EXAMPLE.ORG:", 1, "1:28: error: port nothing is not valid"),
    ("SMTP_FORWARD=H.EXAMPLE.ORG:smtp", 1, "1:28: error: port 'smtp' is not valid"),
    ("SMTP_FORWARD=256.1.1.1", 1, "1:14: error: SMTP_FORWARD host '256.1.1.1' is not a valid IPv4 address"),
    ("SMTP_FORWARD=1.2.3", 1, "1:14: error: SMTP_FORWARD host '1.2.3' is not a valid IPv4 address"),
    ("SMTP_FORWARD=H..EXAMPLE.ORG", 1, "1:16: error: SMTP_FORWARD host 'H..EXAMPLE.ORG' has an empty part"),
    ("SMTP_FORWARD=H.EXAMPLE.ORG.", 1, "1:28: error: SMTP_FORWARD host 'H.EXAMPLE.ORG.' has an empty part"),
    ("SMTP_FORWARD=-H.EXAMPLE.ORG", 1, "1:14: error: SMTP_FORWARD host '-H.EXAMPLE.ORG' has a part that starts or ends with '-'"),
    ("SMTP_FORWARD=H_X.EXAMPLE.ORG", 1, "1:15: error: character '_' is not allowed in SMTP_FORWARD host"),
    ("SMTP_FORWARD=%NODE%", 1, "1:14: error: SMTP_FORWARD host '%NODE%' uses a variable substitution"),
    ("SMTP_FORWARD_1=2*$NODE", 1, "1:18: error: worker host '$NODE' uses a variable substitution"),
    ("SMTP_FORWARD=A.B C.D", 1, "1:17: error: spaces are not allowed in SMTP_FORWARD"),
    ("SMTP_FORWARD=", 1, "1:14: error: missing SMTP_FORWARD host"),
    // SMTP_FORWARD_n (WRK-1, WRK-3, WRK-4)
    ("SMTP_FORWARD_1=-1*H.EXAMPLE.ORG", 1, "1:16: error: worker count '-1' in SMTP_FORWARD_1 is not valid"),
    ("SMTP_FORWARD_1=X*H.EXAMPLE.ORG", 1, "1:16: error: worker count 'X' in SMTP_FORWARD_1 is not valid"),
    ("SMTP_FORWARD_1=*H.EXAMPLE.ORG", 1, "1:16: error: worker count nothing in SMTP_FORWARD_1 is not valid"),
    ("SMTP_FORWARD_1=1001*H.EXAMPLE.ORG", 1, "1:16: error: worker count '1001' in SMTP_FORWARD_1 is not valid"),
    ("SMTP_FORWARD_1=", 1, "1:16: error: SMTP_FORWARD_1 is empty"),
    ("SMTP_FORWARD_1=2*H.EXAMPLE.ORG(25:00-05:00)", 1, "1:32: error: '25:00' is not a time of day"),
    ("SMTP_FORWARD_1=H.EXAMPLE.ORG(00:00-05:60)", 1, "1:36: error: '05:60' is not a time of day"),
    ("SMTP_FORWARD_1=H.EXAMPLE.ORG(24:00-05:00)", 1, "1:30: error: '24:00' is not a time of day"),
    ("SMTP_FORWARD_1=H.EXAMPLE.ORG(0000-0500)", 2, "1:30: error: '0000' is not a time of day"),
    ("SMTP_FORWARD_1=H.EXAMPLE.ORG(00:00)", 1, "1:30: error: open-time range '00:00' has no '-'"),
    ("SMTP_FORWARD_1=H.EXAMPLE.ORG(00:00-05:00", 1, "1:29: error: the open-time window in SMTP_FORWARD_1 has no closing ')'"),
    ("SMTP_FORWARD_1=H.EXAMPLE.ORG00:00-05:00)", 1, "1:40: error: ')' without '(' in SMTP_FORWARD_1"),
    ("SMTP_FORWARD_1=H.EXAMPLE.ORG()", 1, "1:30: error: the open-time window is empty"),
    ("SMTP_FORWARD_1=H.EXAMPLE.ORG(00:00-05:00,)", 1, "1:42: error: open-time range nothing has no '-'"),
    ("SMTP_FORWARD_1=H.EXAMPLE.ORG(00:00-05:00):25", 1, "1:42: error: unexpected ':25' after the open-time window"),
    ("SMTP_FORWARD_1=H.EXAMPLE.ORG;A.EXAMPLE.ORG;B.EXAMPLE.ORG", 1, "1:44: error: a second failover host 'B.EXAMPLE.ORG'"),
    ("SMTP_FORWARD_1=H.EXAMPLE.ORG;A.EXAMPLE.ORG(01:00-02:00)", 1, "1:43: error: the failover host cannot have an open-time window"),
    ("SMTP_FORWARD_1=H.EXAMPLE.ORG;MAILHOST", 1, "1:30: error: failover host 'MAILHOST' is not fully qualified"),
    ("SMTP_FORWARD_1=H.EXAMPLE.ORG;[::1]:25", 1, "1:30: error: failover host '[::1]:25' looks like an IPv6 address"),
    ("SMTP_FORWARD_1=H.EXAMPLE.ORG;POOL=*A", 1, "1:35: error: POOL=*A mixes '*' with pool letters"),
    ("SMTP_FORWARD_1=H.EXAMPLE.ORG;POOL=A*", 1, "1:36: error: POOL=A* mixes '*' with pool letters"),
    ("SMTP_FORWARD_1=H.EXAMPLE.ORG;POOL=1", 1, "1:35: error: '1' is not a pool name in POOL=1"),
    ("SMTP_FORWARD_1=H.EXAMPLE.ORG;POOL=", 1, "1:35: error: POOL= has no pools"),
    ("SMTP_FORWARD_1=MAILHOST", 1, "1:16: error: worker host 'MAILHOST' is not fully qualified"),
    ("SMTP_FORWARD_1=2*H.EXAMPLE.ORG ;POOL=A", 1, "1:31: error: spaces are not allowed inside SMTP_FORWARD_1"),
    // SMTP_RATE_LIMIT (RATE-1, RATE-4)
    ("SMTP_RATE_LIMIT=12 Mbps", 1, "1:19: error: a space between '12' and its unit 'Mbps'"),
    ("SMTP_RATE_LIMIT=0kbps", 1, "1:17: error: a zero rate '0kbps' would stop all mail"),
    ("SMTP_RATE_LIMIT=A:0Mbps", 1, "1:19: error: a zero rate '0Mbps' would stop all mail"),
    ("SMTP_RATE_LIMIT=0.0Gbps", 1, "1:17: error: a zero rate '0.0Gbps' would stop all mail"),
    ("SMTP_RATE_LIMIT=0.0001kbps", 1, "1:17: error: rate '0.0001kbps' rounds to 0 bits per second"),
    ("SMTP_RATE_LIMIT=1.5", 1, "1:20: error: rate '1.5' has no unit"),
    ("SMTP_RATE_LIMIT=12bps", 1, "1:19: error: plain bps in '12bps' is not a documented unit"),
    ("SMTP_RATE_LIMIT=12Xbps", 1, "1:19: error: unknown unit 'Xbps' in '12Xbps'"),
    ("SMTP_RATE_LIMIT=12Mbit", 1, "1:19: error: unknown unit 'Mbit' in '12Mbit'"),
    ("SMTP_RATE_LIMIT=0 12Mbps", 1, "1:17: error: a bare 0 turns rate limiting off and cannot be combined"),
    ("SMTP_RATE_LIMIT=*:1Mbps", 1, "1:17: error: '*' is not a pool name in '*:1Mbps'"),
    ("SMTP_RATE_LIMIT=:1Mbps", 1, "1:17: error: no pool names before ':' in ':1Mbps'"),
    ("SMTP_RATE_LIMIT=Mbps", 1, "1:17: error: rate 'Mbps' does not start with a number"),
    ("SMTP_RATE_LIMIT=-1Mbps", 1, "1:17: error: rate '-1Mbps' does not start with a number"),
    ("SMTP_RATE_LIMIT=1.Mbps", 1, "1:17: error: rate '1.Mbps' does not start with a number"),
    ("SMTP_RATE_LIMIT=99999999999999999999Gbps", 1, "1:17: error: rate '99999999999999999999Gbps' is too large"),
    ("SMTP_RATE_LIMIT=", 1, "1:17: error: SMTP_RATE_LIMIT is empty"),
    ("SMTP_RATE_LIMIT=1Mbps 2 kbps B:0kbps", 2, "1:24: error: a space between '2' and its unit 'kbps'"),
    // DIST_FORWARD (DIST-1)
    ("DIST_FORWARD=X*D.EXAMPLE.ORG", 1, "1:14: error: weight 'X' in DIST_FORWARD is not valid"),
    ("DIST_FORWARD=0*SELF", 1, "1:14: error: every DIST_FORWARD weight is 0"),
    ("DIST_FORWARD=0*SELF 0*D.EXAMPLE.ORG", 1, "1:14: error: every DIST_FORWARD weight is 0"),
    ("DIST_FORWARD=D.EXAMPLE.ORG:25", 1, "1:27: error: DIST_FORWARD host 'D.EXAMPLE.ORG:25' has a port"),
    ("DIST_FORWARD=DIST1", 1, "1:14: error: DIST_FORWARD host 'DIST1' is not fully qualified"),
    ("DIST_FORWARD=", 1, "1:14: error: DIST_FORWARD is empty"),
    // pools (POOL-1)
    ("DIST_BACKGROUND_POOL_PRIORITY=I**B", 1, "1:33: error: a second '*' in DIST_BACKGROUND_POOL_PRIORITY"),
    ("DIST_BACKGROUND_POOL_PRIORITY=IBi", 1, "1:33: error: pool I is listed twice"),
    ("DIST_BACKGROUND_POOL_PRIORITY=I1", 1, "1:32: error: '1' is not a pool name"),
    ("DEFAULT_LIST_POOL=AB", 1, "1:19: error: DEFAULT_LIST_POOL 'AB' is not a pool name"),
    ("DEFAULT_LIST_POOL=A B C", 1, "1:23: error: DEFAULT_LIST_POOL has more than two pools"),
    ("DEFAULT_LIST_POOL=A 1", 1, "1:21: error: DEFAULT_LIST_POOL admin pool '1' is not a pool name"),
    ("DEFAULT_DIST_POOL=*", 1, "1:19: error: DEFAULT_DIST_POOL '*' is not a pool name"),
    // numbers
    ("MAXBSMTP=0", 1, "1:10: error: MAXBSMTP=0 is not valid"),
    ("MAXBSMTP=ten", 1, "1:10: error: MAXBSMTP=ten is not valid"),
    ("MAXBSMTP=99999999999", 1, "1:10: error: MAXBSMTP=99999999999 is not valid"),
    ("SORT_RECIPIENTS=3", 1, "1:17: error: SORT_RECIPIENTS=3 is not valid"),
    ("EMBEDDED_MAIL_MERGE=2", 1, "1:21: error: EMBEDDED_MAIL_MERGE=2 is not valid"),
    // lines (CFG-1)
    ("SMTP_FORWARD=\"H.EXAMPLE.ORG", 1, "1:14: error: the value of SMTP_FORWARD opens a quote \" that is never closed"),
    ("SMTP_FORWARD=\"H.EXAMPLE.ORG\" x", 1, "1:30: error: unexpected 'x' after the closing quote of SMTP_FORWARD"),
    ("just some words", 1, "1:1: error: 'just some words' is not a setting"),
    ("1KEY=v", 1, "1:1: error: '1KEY' is not a keyword name"),
    ("  =v", 1, "1:3: error: nothing is not a keyword name"),
    ("export 1BAD", 1, "1:8: error: '1BAD' is not a variable name"),
];

#[test]
fn every_bad_value_is_refused_at_its_place() {
    let mut wrong = Vec::new();
    for (text, count, first) in BAD {
        let errs = errors_of(&format!("{text}\r\n"));
        let want = format!("{F}:{first}");
        if errs.len() != *count || !errs[0].starts_with(&want) || !errs[0].contains(", expected ") {
            wrong.push(format!(
                "{text:?}\n  want {count} x {want}...\n  got  {errs:?}"
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn all_errors_of_a_file_are_reported_at_once_in_file_order() {
    let text = "* a broken file\n\
                SMTP_FORWARD=MAILHOST\n\
                SMTP_FORWARD_1=2*H.EXAMPLE.ORG(25:00-05:00);[::1]\n\
                SMTP_RATE_LIMIT=12 Mbps\n\
                FOO_BAR=1\n\
                MAXBSMTP=none\n";
    let e = parse_str(text, F).unwrap_err();
    let lines: Vec<(usize, usize, Severity)> = e
        .diagnostics()
        .iter()
        .map(|d| (d.line, d.column, d.severity))
        .collect();
    assert_eq!(
        lines,
        [
            (2, 14, Severity::Error),
            (3, 32, Severity::Error),
            (3, 45, Severity::Error),
            (4, 19, Severity::Error),
            (5, 1, Severity::Warning),
            (6, 10, Severity::Error),
        ]
    );
    // Display lists them all, one per line.
    assert_eq!(e.to_string().lines().count(), 6);
}

fn good(text: &str) -> SiteConfig {
    parse_str(text, F).unwrap_or_else(|e| panic!("{text:?}: {e}"))
}

/// (file text, a warning that must be there as "LINE:COL: warning: <start of message>")
#[rustfmt::skip]
const WARN: &[(&str, &str)] = &[
    ("SMTP_FORWARD=A.EXAMPLE.ORG\nSMTP_FORWARD=B.EXAMPLE.ORG", "2:1: warning: SMTP_FORWARD is set again; this value replaces the one on line 1"),
    ("SMTP_FORWARD=S.EXAMPLE.ORG\nSMTP_FORWARD_1=A.EXAMPLE.ORG\nSMTP_FORWARD_3=C.EXAMPLE.ORG", "3:1: warning: SMTP_FORWARD_3 is ignored because SMTP_FORWARD_2 is missing"),
    ("SMTP_FORWARD=S.EXAMPLE.ORG\nSMTP_FORWARD_2=C.EXAMPLE.ORG", "2:1: warning: SMTP_FORWARD_2 is ignored because SMTP_FORWARD_1 is missing"),
    ("SMTP_FORWARD=S.EXAMPLE.ORG\nSMTP_FORWARD_1=0*H.EXAMPLE.ORG", "2:16: warning: SMTP_FORWARD_1 asks for 0 workers (0*), so it adds none"),
    ("SMTP_FORWARD=S.EXAMPLE.ORG\nSMTP_RESET_EVERY=10", "2:1: warning: SMTP_RESET_EVERY is not a keyword smtpw acts on"),
    ("SMTP_FORWARD=S.EXAMPLE.ORG\nSMTP_FORWARD_1=H.EXAMPLE.ORG;MAXRCPT=5", "2:30: warning: unknown option 'MAXRCPT=5' in SMTP_FORWARD_1 is ignored"),
    ("SMTP_FORWARD=S.EXAMPLE.ORG\nSMTP_FORWARD_1=H.EXAMPLE.ORG;", "2:30: warning: empty ';' segment in SMTP_FORWARD_1 is ignored"),
    ("SMTP_FORWARD=S.EXAMPLE.ORG\nSMTP_FORWARD_1=H.EXAMPLE.ORG;POOL=A;POOL=B", "2:37: warning: POOL= appears again in SMTP_FORWARD_1; the last one counts"),
    ("SMTP_FORWARD_1=H.EXAMPLE.ORG", "1:1: warning: SMTP_FORWARD is not set; LISTSERV on Windows requires it even with workers"),
    ("SMTP_FORWARD=localhost", "1:14: warning: SMTP_FORWARD host 'localhost' works, but LISTSERV advises"),
    ("SMTP_FORWARD=S.EXAMPLE.ORG\nSMTP_RATE_LIMIT=1Mbps", "2:1: warning: SMTP_RATE_LIMIT applies only to SMTP_FORWARD_n workers"),
    ("SMTP_FORWARD=S.EXAMPLE.ORG\nSMTP_FORWARD_1=H.EXAMPLE.ORG\nSMTP_RATE_LIMIT=A:1Mbps AB:2Mbps", "3:25: warning: pool A is limited twice in SMTP_RATE_LIMIT"),
    ("SMTP_FORWARD=S.EXAMPLE.ORG\nSMTP_FORWARD_1=H.EXAMPLE.ORG\nSMTP_RATE_LIMIT=1Mbps 2Mbps", "3:23: warning: a second overall limit in SMTP_RATE_LIMIT"),
    ("SMTP_FORWARD=S.EXAMPLE.ORG\nSMTP_FORWARD_01=H.EXAMPLE.ORG", "2:1: warning: SMTP_FORWARD_01 is not a worker keyword"),
    ("SMTP_FORWARD=S.EXAMPLE.ORG\nASYNCH_SMTP=1", "2:1: warning: ASYNCH_SMTP is deprecated"),
    ("SMTP_FORWARD=S.EXAMPLE.ORG\nDIST_FORWARD=D.EXAMPLE.ORG d.example.org", "2:28: warning: d.example.org appears more than once in DIST_FORWARD; its weights are added"),
    ("SMTP_FORWARD=\"S.EXAMPLE.ORG\"\nSMTP_FORWARD_1=\"H.EXAMPLE.ORG\"\nexport SMTP_FORWARD", "2:1: warning: SMTP_FORWARD_1 is set but not exported"),
    ("SMTP_FORWARD=S.EXAMPLE.ORG\nSMTP_FORWARD_1=H.EXAMPLE.ORG;POOL=A", "2:1: warning: no worker serves pools B C D"),
];

#[test]
fn warnings_are_given_and_the_file_is_still_used() {
    for (text, want) in WARN {
        let c = good(text);
        let want = format!("{F}:{want}");
        assert!(
            c.warnings.iter().any(|w| w.to_string().starts_with(&want)),
            "{text:?}\n  want {want}...\n  got {:#?}",
            c.warnings
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
        );
        assert!(c.warnings.iter().all(|w| w.severity == Severity::Warning));
    }
}

#[test]
fn warned_values_resolve_as_documented() {
    let c = good("SMTP_FORWARD=A.EXAMPLE.ORG\nSMTP_FORWARD=B.EXAMPLE.ORG");
    assert_eq!(c.sync_forward.unwrap().host, "B.EXAMPLE.ORG");
    let c = good("SMTP_FORWARD=S.EXAMPLE.ORG\nSMTP_FORWARD_1=A.EXAMPLE.ORG\nSMTP_FORWARD_3=C.EXAMPLE.ORG\nSMTP_FORWARD_2=0*B.EXAMPLE.ORG");
    assert_eq!(
        c.workers.len(),
        2,
        "_2 adds none, _3 is read (no gap) and adds one"
    );
    let c = good(
        "SMTP_FORWARD=S.EXAMPLE.ORG\nSMTP_FORWARD_1=A.EXAMPLE.ORG\nSMTP_FORWARD_3=C.EXAMPLE.ORG",
    );
    assert_eq!(c.workers.len(), 1);
    let c = good("SMTP_FORWARD=S.EXAMPLE.ORG\nSMTP_FORWARD_1=0*H.EXAMPLE.ORG");
    assert!(c.workers.is_empty());
    let c = good("SMTP_FORWARD=S.EXAMPLE.ORG\nSMTP_RESET_EVERY=10");
    assert_eq!(
        c.passive.get("SMTP_RESET_EVERY").map(String::as_str),
        Some("10")
    );
    let c =
        good("SMTP_FORWARD=S.EXAMPLE.ORG\nSMTP_FORWARD_1=H.EXAMPLE.ORG;MAXRCPT=5;POOL=a;POOL=b");
    assert_eq!(c.workers[0].pools.to_string(), "B");
    let c = good("SMTP_FORWARD=S.EXAMPLE.ORG\nSMTP_FORWARD_1=H.EXAMPLE.ORG\nSMTP_RATE_LIMIT=A:1Mbps AB:2Mbps");
    assert_eq!(
        c.rate_limits.pools.values().copied().collect::<Vec<_>>(),
        [2 << 20, 2 << 20]
    );
    let c = good("SMTP_FORWARD=S.EXAMPLE.ORG\nDIST_FORWARD=D.EXAMPLE.ORG d.example.org");
    assert_eq!(c.dist_forward[1].weight, 2);
    // the documented default 0 disables rate limiting
    let c = good("SMTP_FORWARD=S.EXAMPLE.ORG\nSMTP_FORWARD_1=H.EXAMPLE.ORG\nSMTP_RATE_LIMIT=0");
    assert!(c.rate_limits.is_unlimited());
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
}
