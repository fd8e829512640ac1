//! The `smtpw config check` / `smtpw config explain` commands, run as a user would.

use std::path::{Path, PathBuf};

use crate::SMTPW;

fn example(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(name)
        .display()
        .to_string()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn write(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    p
}

#[test]
fn check_prints_a_table_for_both_examples() {
    for (name, workers, rows) in [
        (
            "SITE.CFG",
            "Workers: 5",
            "   4  SMTP_FORWARD_3  BULK.EXAMPLE.ORG:50025  -",
        ),
        (
            "go.user",
            "Workers: 6",
            "   6  SMTP_FORWARD_3  NIGHT.EXAMPLE.COM:25",
        ),
    ] {
        let out = SMTPW.output(&["config", "check", &example(name)]);
        let so = text(&out.stdout);
        assert!(out.status.success(), "{name}: {}", text(&out.stderr));
        assert!(so.contains(workers), "{so}");
        assert!(so.contains(rows), "{so}");
        assert!(so.contains("Sync host (SMTP_FORWARD):"), "{so}");
        assert!(so.contains("MAXBSMTP:"), "{so}");
        assert!(so.contains("Rate limits (bits/s):"), "{so}");
        assert!(so.contains("DIST_FORWARD weights:"), "{so}");
        assert!(so.contains("Warnings: none"), "{so}");
    }
}

#[test]
fn check_json_has_the_documented_keys() {
    let out = SMTPW.output(&["config", "check", "--json", &example("SITE.CFG")]);
    assert!(out.status.success());
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for k in [
        "node",
        "sync_forward",
        "max_bsmtp",
        "default_list_pool",
        "workers",
        "rate_limits",
        "dist_forward",
        "warnings",
    ] {
        assert!(j.get(k).is_some(), "missing {k}");
    }
    assert_eq!(
        j["workers"][4]["primary"],
        serde_json::json!({"host": "192.0.2.10", "port": 25})
    );
    assert_eq!(j["rate_limits"]["pools"]["B"], 1_572_864);
    assert_eq!(
        j["dist_forward"][0],
        serde_json::json!({"host": "SELF", "weight": 0})
    );
}

#[test]
fn a_bad_file_exits_2_with_every_error_on_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        "SITE.CFG",
        "SMTP_FORWARD=MAILHOST\r\nSMTP_FORWARD_1=H.EXAMPLE.ORG;POOL=*A\r\nSMTP_RATE_LIMIT=12 Mbps\r\n",
    );
    let f = p.display().to_string();
    for args in [
        vec!["config", "check", f.as_str()],
        vec!["config", "check", "--json", f.as_str()],
        vec!["config", "explain", f.as_str(), "--at", "12:00"],
    ] {
        let out = SMTPW.output(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}: nothing on stdout");
        let se = text(&out.stderr);
        let errs: Vec<&str> = se.lines().filter(|l| l.contains(": error: ")).collect();
        assert_eq!(errs.len(), 3, "{se}");
        assert!(
            errs[0].starts_with(&format!(
                "{f}:1:14: error: SMTP_FORWARD host 'MAILHOST' is not fully qualified"
            )),
            "{se}"
        );
        assert!(
            errs[1].starts_with(&format!("{f}:2:35: error: POOL=*A mixes")),
            "{se}"
        );
        assert!(
            errs[2].starts_with(&format!(
                "{f}:3:19: error: a space between '12' and its unit"
            )),
            "{se}"
        );
        assert!(errs.iter().all(|l| l.contains(", expected ")), "{se}");
        assert!(
            se.contains("3 errors; the configuration was not used"),
            "{se}"
        );
    }
    let out = SMTPW.output(&["config", "check", "/nonexistent/SITE.CFG"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("cannot read /nonexistent/SITE.CFG"));
}

#[test]
fn explain_gives_each_workers_host_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        "SITE.CFG",
        "SMTP_FORWARD=S.EXAMPLE.ORG\n\
         SMTP_FORWARD_1=UNIXSERVER.BAR.COM(00:00-05:00);SMTP.BAZ.NET\n\
         SMTP_FORWARD_2=SMTP.BAZ.NET(10:00-14:00)\n\
         SMTP_FORWARD_3=2*ALL.EXAMPLE.ORG:2525\n",
    );
    let f = p.display().to_string();
    let at = |t: &str| -> serde_json::Value {
        let out = SMTPW.output(&["config", "explain", &f, "--at", t, "--json"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let row = |v: &serde_json::Value| {
        format!(
            "{} {} {} {}",
            v["id"],
            v["via"].as_str().unwrap(),
            v["host"],
            v["port"]
        )
    };
    let rows = |t: &str| {
        at(t)
            .as_array()
            .unwrap()
            .iter()
            .map(row)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        rows("03:00"),
        [
            "1 primary \"UNIXSERVER.BAR.COM\" 25",
            "2 inactive null null",
            "3 primary \"ALL.EXAMPLE.ORG\" 2525",
            "4 primary \"ALL.EXAMPLE.ORG\" 2525"
        ]
    );
    assert_eq!(
        rows("12:00"),
        [
            "1 failover \"SMTP.BAZ.NET\" 25",
            "2 primary \"SMTP.BAZ.NET\" 25",
            "3 primary \"ALL.EXAMPLE.ORG\" 2525",
            "4 primary \"ALL.EXAMPLE.ORG\" 2525"
        ]
    );
    let out = SMTPW.output(&["config", "explain", &f, "--at", "7:05"]);
    let so = text(&out.stdout);
    assert!(so.contains("At 07:05 (local time):"), "{so}");
    assert!(so.contains("failover  SMTP.BAZ.NET:25"), "{so}");
    assert!(
        so.contains("07:05 is outside its window 10:00-14:00 and it has no failover"),
        "{so}"
    );
    // a bad --at is a usage error
    let out = SMTPW.output(&["config", "explain", &f, "--at", "25:00"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("'25:00' is not a time of day"));
}

#[test]
fn check_with_an_override_file() {
    let dir = tempfile::tempdir().unwrap();
    let m = write(
        dir.path(),
        "SITE.CFG",
        "SMTP_FORWARD=S.EXAMPLE.ORG\nMAXBSMTP=100\n",
    );
    let o = write(dir.path(), "SITECFG.FILE", "MAXBSMTP=250\n");
    let out = SMTPW.output(&[
        "config",
        "check",
        "--json",
        "--overrides",
        &o.display().to_string(),
        &m.display().to_string(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["max_bsmtp"], 250);
}

#[test]
fn check_with_settings_shows_tls_and_auth_user_per_host_never_the_secret() {
    let dir = tempfile::tempdir().unwrap();
    let site = write(
        dir.path(),
        "SITE.CFG",
        "SMTP_FORWARD=sync.example.org\nSMTP_FORWARD_1=2*relay.example.org:587;backup.example.org\n",
    );
    let pass = write(dir.path(), "relay.pass", "Sekr1t-pass-4471\n");
    let mut perms = std::fs::metadata(&pass).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o600);
    std::fs::set_permissions(&pass, perms).unwrap();
    let settings = write(
        dir.path(),
        "smtpw.toml",
        "[relays.\"relay.example.org\"]\ntls = \"required\"\nusername = \"lists\"\npassword_file = \"relay.pass\"\nmechanism = \"LOGIN\"\n\n[relays.\"typo.example.org\"]\ntls = \"none\"\n",
    );
    let (s, c) = (site.display().to_string(), settings.display().to_string());
    let out = SMTPW.output(&["config", "check", &s, "--settings", &c]);
    let (so, se) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{se}");
    let row = so
        .lines()
        .find(|l| l.contains("SMTP_FORWARD_1 primary"))
        .unwrap_or_else(|| panic!("{so}"));
    for want in ["relay.example.org:587", "required", "lists", "LOGIN"] {
        assert!(row.contains(want), "{want} in {row}");
    }
    let relays = so
        .split("Relays (smtpw.toml):")
        .nth(1)
        .unwrap_or_else(|| panic!("{so}"));
    let sync = relays
        .lines()
        .find(|l| l.contains("sync.example.org:25"))
        .unwrap_or_else(|| panic!("{relays}"));
    assert!(
        sync.contains("opportunistic") && sync.contains(" *"),
        "{sync}"
    );
    assert!(
        se.contains("[relays.\"typo.example.org\"] names no host"),
        "{se}"
    );
    let out = SMTPW.output(&["config", "check", "--json", &s, "--settings", &c]);
    assert!(out.status.success());
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["relays"][1]["user"], "lists");
    assert_eq!(j["relays"][1]["tls"], "required");
    assert_eq!(j["unmatched_relays"][0], "typo.example.org");
    let all = format!("{so}{se}{}", text(&out.stdout));
    assert!(!all.contains("Sekr1t"), "the password was shown");

    // What the settings refuse, config check refuses: AUTH with tls = "none".
    let bad = write(
        dir.path(),
        "bad.toml",
        "[relays.\"relay.example.org\"]\ntls = \"none\"\nusername = \"lists\"\npassword = \"Sekr1t-pass-4471\"\n",
    );
    let out = SMTPW.output(&[
        "config",
        "check",
        &s,
        "--settings",
        &bad.display().to_string(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let se = text(&out.stderr);
    assert!(se.contains("in clear"), "{se}");
    assert!(!se.contains("Sekr1t"), "{se}");
}
