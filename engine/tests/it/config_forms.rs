//! File forms (CFG-1), windows (WRK-4), overrides (SITECFG.FILE), the bundled examples and
//! the JSON view.

use std::path::Path;

use smtpw_engine::config::{
    load, load_with_overrides, parse_str, parse_str_with_overrides, ConfigError, TimeOfDay, Window,
};
use smtpw_engine::route::{explain, Via};

fn tod(s: &str) -> TimeOfDay {
    s.parse().unwrap()
}

#[test]
fn windows_form_with_crlf_bom_comments_and_spaces() {
    let text = "\u{feff}* SITE.CFG\r\n\
                # hash comment\r\n\
                ; semicolon comment\r\n\
                REM rem comment\r\n\
                rem lower-case rem\r\n\
                REM\r\n\
                \r\n\
                \t  \r\n\
                   NODE=LISTSERV.EXAMPLE.ORG   \r\n\
                REMOTE_THING=1\r\n\
                smtp_forward = mail.example.org:2525\r\n";
    let c = parse_str(text, "SITE.CFG").unwrap();
    assert_eq!(c.node.as_deref(), Some("LISTSERV.EXAMPLE.ORG"));
    assert_eq!(
        c.sync_forward.as_ref().map(ToString::to_string).as_deref(),
        Some("mail.example.org:2525")
    );
    // REMOTE_THING is a setting, not a REM comment
    assert_eq!(c.passive.get("REMOTE_THING").map(String::as_str), Some("1"));
    let w: Vec<String> = c.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(w, ["SITE.CFG:10:1: warning: REMOTE_THING is not a keyword smtpw acts on; it is kept but has no effect"]);
}

#[test]
fn unix_form_quotes_exports_and_shell_comments() {
    let text = "#!/bin/sh\n\
                NODE=\"LISTSERV.EXAMPLE.COM\"\n\
                SMTP_FORWARD=\"MAIL.EXAMPLE.COM\"   # the local MTA\n\
                export SMTP_FORWARD_1=\"2*MAIL.EXAMPLE.COM;POOL=A-\"\n\
                SMTP_FORWARD_2='OTHER.EXAMPLE.COM'\n\
                MAXBSMTP=50 # recommended for unix MTAs\n\
                export NODE SMTP_FORWARD\n\
                export\tSMTP_FORWARD_2   MAXBSMTP\n";
    let c = parse_str(text, "go.user").unwrap();
    assert!(
        c.warnings.iter().all(|w| !w.message.contains("exported")),
        "{:?}",
        c.warnings
    );
    assert_eq!(c.sync_forward.unwrap().host, "MAIL.EXAMPLE.COM");
    assert_eq!(c.workers.len(), 3);
    assert_eq!(c.workers[0].pools.to_string(), "A-");
    assert_eq!(c.workers[2].primary.host, "OTHER.EXAMPLE.COM");
    assert_eq!(c.max_bsmtp, 50);
}

#[test]
fn zvm_form_with_spaces_and_single_quotes() {
    let c = parse_str(
        "SMTP_FORWARD = 'MAIL.EXAMPLE.ORG'\nMAXBSMTP = 500\n",
        "LOCAL SYSVARS",
    )
    .unwrap();
    assert_eq!(c.sync_forward.unwrap().host, "MAIL.EXAMPLE.ORG");
    assert_eq!(c.max_bsmtp, 500);
}

#[test]
fn window_forms() {
    let c = parse_str(
        "SMTP_FORWARD=S.EXAMPLE.ORG\n\
         SMTP_FORWARD_1=A.EXAMPLE.ORG(8:00-9:30)\n\
         SMTP_FORWARD_2=B.EXAMPLE.ORG(08:00-12:00,13:00-17:00)\n\
         SMTP_FORWARD_3=C.EXAMPLE.ORG(22:00-02:00);F.EXAMPLE.ORG\n\
         SMTP_FORWARD_4=D.EXAMPLE.ORG(22:00-24:00)\n\
         SMTP_FORWARD_5=E.EXAMPLE.ORG(07:00-07:00)\n\
         SMTP_FORWARD_6=G.EXAMPLE.ORG:2525(00:00-24:00);H.EXAMPLE.ORG:26;POOL=b\n",
        "SITE.CFG",
    )
    .unwrap();
    let w = &c.workers;
    let win = |a: &str, b: &str| Window {
        start: tod(a),
        end: tod(b),
    };
    assert_eq!(w[0].windows, [win("08:00", "09:30")]);
    assert_eq!(w[1].windows, [win("08:00", "12:00"), win("13:00", "17:00")]);
    assert_eq!(w[2].windows, [win("22:00", "02:00")]);
    assert_eq!(
        w[3].windows,
        [win("22:00", "00:00")],
        "24:00 as an end is midnight"
    );
    assert_eq!(w[5].primary.port, 2525);
    assert_eq!(w[5].failover.as_ref().unwrap().port, 26);
    let at = |t: &str| -> Vec<Via> { explain(&c, tod(t)).iter().map(|e| e.via).collect() };
    use Via::*;
    assert_eq!(
        at("08:59"),
        [Primary, Primary, Failover, Inactive, Primary, Primary]
    );
    assert_eq!(
        at("09:30"),
        [Inactive, Primary, Failover, Inactive, Primary, Primary]
    );
    assert_eq!(
        at("12:30"),
        [Inactive, Inactive, Failover, Inactive, Primary, Primary]
    );
    assert_eq!(
        at("23:00"),
        [Inactive, Inactive, Primary, Primary, Primary, Primary]
    );
    assert_eq!(
        at("01:59"),
        [Inactive, Inactive, Primary, Inactive, Primary, Primary]
    );
    let e = explain(&c, tod("05:00"));
    assert_eq!(
        (e[2].host.as_deref(), e[2].port),
        (Some("F.EXAMPLE.ORG"), Some(25))
    );
    assert_eq!((e[0].host.as_deref(), e[0].port), (None, None));
}

#[test]
fn override_file_replaces_keys_without_duplicate_warnings() {
    let main = "SMTP_FORWARD=A.EXAMPLE.ORG\nSMTP_FORWARD_1=W.EXAMPLE.ORG\nMAXBSMTP=100\n";
    let over = "MAXBSMTP=1000\nSMTP_FORWARD_2=V.EXAMPLE.ORG\n";
    let c = parse_str_with_overrides((main, "SITE.CFG"), (over, "SITECFG.FILE")).unwrap();
    assert_eq!(c.max_bsmtp, 1000);
    assert_eq!(c.workers.len(), 2);
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    // an error in the override file names that file
    let e = parse_str_with_overrides((main, "SITECFG.FILE0"), ("MAXBSMTP=x\n", "SITECFG.FILE"))
        .unwrap_err();
    assert!(
        e.to_string()
            .starts_with("SITECFG.FILE:1:10: error: MAXBSMTP=x is not valid"),
        "{e}"
    );

    let dir = tempfile::tempdir().unwrap();
    let (m, o) = (dir.path().join("SITE.CFG"), dir.path().join("SITECFG.FILE"));
    std::fs::write(&m, main).unwrap();
    std::fs::write(&o, over).unwrap();
    assert_eq!(load_with_overrides(&m, Some(&o)).unwrap().max_bsmtp, 1000);
    assert_eq!(load_with_overrides(&m, None).unwrap().max_bsmtp, 100);
}

#[test]
fn unreadable_file_is_an_io_error_and_latin1_is_read() {
    let e = load(Path::new("/nonexistent/SITE.CFG")).unwrap_err();
    assert!(matches!(e, ConfigError::Io { .. }));
    assert!(e.diagnostics().is_empty());
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("SITE.CFG");
    std::fs::write(&p, b"* Ma\xefs comment\r\nSMTP_FORWARD=M.EXAMPLE.ORG\r\n").unwrap();
    assert_eq!(
        load(&p).unwrap().sync_forward.unwrap().host,
        "M.EXAMPLE.ORG"
    );
}

fn example(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(name)
}

#[test]
fn bundled_windows_example() {
    let c = load(&example("SITE.CFG")).unwrap();
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    assert_eq!(c.node.as_deref(), Some("LISTSERV.EXAMPLE.ORG"));
    assert_eq!(c.workers.len(), 5);
    let rows: Vec<String> = c
        .workers
        .iter()
        .map(|w| {
            format!(
                "{} {} {} {:?} {}",
                w.id,
                w.primary,
                w.failover.as_ref().map_or("-".into(), ToString::to_string),
                w.windows
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>(),
                w.pools
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            "1 MAIL.EXAMPLE.ORG:25 BACKUP.EXAMPLE.ORG:25 [] *",
            "2 MAIL.EXAMPLE.ORG:25 BACKUP.EXAMPLE.ORG:25 [] *",
            "3 NIGHT.EXAMPLE.ORG:25 BACKUP.EXAMPLE.ORG:2525 [\"00:00-05:00\", \"22:00-00:00\"] -",
            "4 BULK.EXAMPLE.ORG:50025 - [] A",
            "5 192.0.2.10:25 - [\"08:00-18:00\"] B",
        ]
    );
    assert_eq!(c.rate_limits.overall_bps, Some(12_582_912));
    assert_eq!(c.default_list_pool.to_setting(), "A -");
    let weights: Vec<u32> = c.dist_forward.iter().map(|e| e.weight).collect();
    assert_eq!(weights, [0, 1, 2]);
}

#[test]
fn bundled_unix_example() {
    let c = load(&example("go.user")).unwrap();
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    assert_eq!(c.workers.len(), 6);
    assert_eq!(c.max_bsmtp, 50);
    assert_eq!(c.sort_recipients, 1);
    assert_eq!(c.rate_limits.overall_bps, Some(50 << 20));
    assert_eq!(
        c.rate_limits.pools.values().copied().collect::<Vec<_>>(),
        [10 << 20, 2_621_440]
    );
    assert_eq!(c.dist_forward_threshold, 200);
    assert!(!c.passive.contains_key("DIST_FORWARD_THRESHOLD"));
}

#[test]
fn json_view_has_the_documented_shape() {
    let c = parse_str(
        "NODE=LISTSERV.EXAMPLE.ORG\nSMTP_FORWARD=H.EXAMPLE.ORG\nMAXBSMTP=1000\n\
         SMTP_FORWARD_1=UNIXSERVER.BAR.COM(00:00-05:00);SMTP.BAZ.NET\n\
         SMTP_FORWARD_2=lower.example.org;POOL=a-\n\
         SMTP_RATE_LIMIT=12Mbps A:1.5Mbps\nDIST_FORWARD=SELF\nFOO=1\n",
        "SITE.CFG",
    )
    .unwrap();
    let j = c.to_json();
    let expect = serde_json::json!({
        "node": "LISTSERV.EXAMPLE.ORG",
        "sync_forward": {"host": "H.EXAMPLE.ORG", "port": 25},
        "max_bsmtp": 1000,
        "default_list_pool": "-",
        "workers": [
            {"id": 1, "primary": {"host": "UNIXSERVER.BAR.COM", "port": 25},
             "failover": {"host": "SMTP.BAZ.NET", "port": 25},
             "windows": [{"start": "00:00", "end": "05:00"}], "pools": ["*"]},
            {"id": 2, "primary": {"host": "lower.example.org", "port": 25},
             "failover": null, "windows": [], "pools": ["A", "-"]}
        ],
        "rate_limits": {"overall_bps": 12582912, "pools": {"A": 1572864}},
        "dist_forward": [{"host": "SELF", "weight": 1}],
        "warnings": ["SITE.CFG:8:1: warning: FOO is not a keyword smtpw acts on; it is kept but has no effect"]
    });
    for (k, v) in expect.as_object().unwrap() {
        if k == "workers" {
            for (i, w) in v.as_array().unwrap().iter().enumerate() {
                for (wk, wv) in w.as_object().unwrap() {
                    assert_eq!(&j["workers"][i][wk], wv, "workers[{i}].{wk}");
                }
            }
        } else {
            assert_eq!(&j[k], v, "{k}");
        }
    }
    // absent values are null (a file needs SMTP_FORWARD or a worker: one of each)
    let c = parse_str("NODE=N.EXAMPLE.ORG\nSMTP_FORWARD_1=W.EXAMPLE.ORG\n", "x").unwrap();
    let j = c.to_json();
    assert!(j["sync_forward"].is_null());
    assert!(j["rate_limits"]["overall_bps"].is_null());
    let c = parse_str("SMTP_FORWARD=S.EXAMPLE.ORG\n", "x").unwrap();
    let j = c.to_json();
    assert!(j["node"].is_null());
    assert!(j["rate_limits"]["overall_bps"].is_null());
    assert_eq!(j["workers"], serde_json::json!([]));
    let e = serde_json::to_value(explain(
        &parse_str(
            "SMTP_FORWARD=S.EXAMPLE.ORG\nSMTP_FORWARD_1=W.EXAMPLE.ORG(01:00-02:00)\n",
            "x",
        )
        .unwrap(),
        tod("03:00"),
    ))
    .unwrap();
    assert_eq!(e[0]["id"], 1);
    assert_eq!(e[0]["via"], "inactive");
    assert!(e[0]["host"].is_null() && e[0]["port"].is_null());
}
