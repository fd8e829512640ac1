#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use super::*;
use crate::config::{HostPort, Pool};

fn parse(text: &str) -> Result<Settings, SettingsError> {
    Settings::parse(text, "smtpw.toml", Path::new("/nonexistent-base"))
}

fn errors(text: &str) -> Vec<String> {
    parse(text)
        .expect_err("refused")
        .diagnostics
        .iter()
        .map(ToString::to_string)
        .collect()
}

#[test]
fn an_empty_file_is_the_defaults() {
    let s = parse("").unwrap();
    assert_eq!(s.relays.default.tls, TlsMode::Opportunistic);
    assert!(s.listen.is_none() && s.admin.is_none());
    assert_eq!(s.cluster.node_timeout, Duration::from_secs(60));
}

#[test]
fn relays_by_host_port_then_host_then_star() {
    let s = parse(
        r#"
[relays."relay.example.org"]
tls = "required"
[relays."RELAY.example.org:587"]
tls = "implicit"
[relays."*"]
tls = "none"
"#,
    )
    .unwrap();
    let tls = |h: &str, p| s.relays.for_host(&HostPort::new(h, p)).tls;
    assert_eq!(tls("relay.example.org", 25), TlsMode::Required);
    assert_eq!(tls("Relay.Example.Org", 587), TlsMode::Implicit);
    assert_eq!(tls("other.example.org", 25), TlsMode::None);
}

#[test]
fn unknown_keys_and_bad_values_are_refused_with_their_place() {
    let e = errors("[relays.\"r.example\"]\ntls = \"sometimes\"\n");
    assert!(e[0].starts_with("smtpw.toml:2:7: error:"), "{e:?}");
    assert!(e[0].contains("not a TLS mode"), "{e:?}");
    let e = errors("[relays.\"r.example\"]\ntsl = \"required\"\n");
    assert!(e[0].starts_with("smtpw.toml:2:1: error:"), "{e:?}");
    assert!(e[0].contains("tsl"), "{e:?}");
    let e = errors("[listne]\n");
    assert!(e[0].contains("listne"), "{e:?}");
}

#[test]
fn auth_in_clear_is_an_error_unless_allowed() {
    let e = errors(
        r#"[relays."r.example"]
tls = "none"
username = "u"
password = "p"
"#,
    );
    assert!(e[0].contains("in clear"), "{e:?}");
    let s = parse(
        r#"[relays."r.example"]
tls = "none"
username = "u"
password = "p"
allow_plaintext_auth = true
"#,
    )
    .unwrap();
    let r = s.relays.for_host(&HostPort::new("r.example", 25));
    assert_eq!(r.auth.as_ref().map(RelayAuth::username), Some("u"));
}

#[test]
fn credentials_must_be_whole_and_fit_the_mechanism() {
    let e = errors("[relays.\"r.example\"]\nusername = \"u\"\n");
    assert!(e[0].contains("no password"), "{e:?}");
    let e = errors("[relays.\"r.example\"]\npassword = \"p\"\n");
    assert!(e[0].contains("no username"), "{e:?}");
    let e = errors(
        "[relays.\"r.example\"]\nusername = \"u\"\npassword = \"p\"\noauth2_token_command = \"x\"\n",
    );
    assert!(e[0].contains("more than one"), "{e:?}");
    let e = errors(
        "[relays.\"r.example\"]\nusername = \"u\"\npassword = \"p\"\nmechanism = \"XOAUTH2\"\n",
    );
    assert!(e[0].contains("needs oauth2_token_command"), "{e:?}");
    let e = errors("[relays.\"r.example\"]\nmechanism = \"CRAM-MD5\"\n");
    assert!(e[0].contains("not an AUTH mechanism"), "{e:?}");
}

#[test]
fn files_are_relative_to_the_settings_file_and_must_exist() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("relay.pass"), "s3cret\n").unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            dir.path().join("relay.pass"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
    }
    let toml = dir.path().join("smtpw.toml");
    std::fs::write(
        &toml,
        "[relays.\"r.example\"]\ntls = \"required\"\nusername = \"lists\"\npassword_file = \"relay.pass\"\n",
    )
    .unwrap();
    let s = Settings::load(&toml).unwrap();
    assert!(s.warnings.is_empty(), "{:?}", s.warnings);
    match &s.relays.for_host(&HostPort::new("r.example", 25)).auth {
        Some(RelayAuth::Password { username, password }) => {
            assert_eq!((username.as_str(), password.expose()), ("lists", "s3cret"));
        }
        other => panic!("{other:?}"),
    }
    // The secret never shows, whatever prints the settings.
    assert!(!format!("{s:?}").contains("s3cret"));
    std::fs::write(&toml, "[relays.\"r.example\"]\nca_file = \"missing.pem\"\n").unwrap();
    let e = Settings::load(&toml).unwrap_err().to_string();
    assert!(
        e.contains("missing.pem") && e.contains("cannot be read"),
        "{e}"
    );
}

#[cfg(unix)]
#[test]
fn a_secret_file_others_can_read_is_a_warning() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let pass = dir.path().join("relay.pass");
    std::fs::write(&pass, "s3cret").unwrap();
    std::fs::set_permissions(&pass, std::fs::Permissions::from_mode(0o644)).unwrap();
    let toml = dir.path().join("smtpw.toml");
    std::fs::write(
        &toml,
        "[relays.\"r.example\"]\ntls = \"required\"\nusername = \"u\"\npassword_file = \"relay.pass\"\n",
    )
    .unwrap();
    let s = Settings::load(&toml).unwrap();
    assert_eq!(s.warnings.len(), 1, "{:?}", s.warnings);
    let w = s.warnings[0].to_string();
    assert!(
        w.contains("can be read by others") && w.contains("644"),
        "{w}"
    );
    assert!(!w.contains("s3cret"), "{w}");
}

#[test]
fn errors_never_show_a_secret() {
    // A password in a table that is otherwise wrong: the error names the key, not the value.
    let e = errors(
        "[relays.\"r.example\"]\ntls = \"none\"\nusername = \"u\"\npassword = \"hunter2\"\n",
    )
    .join("\n");
    assert!(!e.contains("hunter2"), "{e}");
    let e = errors("[spool]\nurl = \"mysql://u:hunter2@db/x\"\n").join("\n");
    assert!(!e.contains("hunter2") && e.contains("***"), "{e}");
}

#[test]
fn listen_section() {
    let s = parse(
        r#"
[listen]
addresses = ["127.0.0.1:2525", "[::1]:2525"]
allow = ["192.0.2.0/24", "::1"]
max_message_bytes = 1000
max_recipients = 50
idle_timeout = "2m"
threads = 3
[listen.pools]
"owner-bulk-*@lists.example.org" = "B"
"*@lists.example.org" = "-"
"#,
    )
    .unwrap();
    let l = s.listen.unwrap();
    assert_eq!(l.addresses.len(), 2);
    assert!(l.allows("192.0.2.77".parse::<IpAddr>().unwrap()));
    assert!(!l.allows("198.51.100.1".parse::<IpAddr>().unwrap()));
    assert!(l.allows("::1".parse::<IpAddr>().unwrap()));
    assert_eq!((l.max_message_bytes, l.max_recipients), (1000, 50));
    assert_eq!(l.idle_timeout, Duration::from_secs(120));
    assert_eq!(l.threads, 3);
    assert_eq!(
        l.pool_for_sender("Owner-Bulk-News@Lists.Example.Org"),
        Pool::from_char('B')
    );
    assert_eq!(
        l.pool_for_sender("owner-news@lists.example.org"),
        Some(Pool::DEFAULT)
    );
    assert_eq!(l.pool_for_sender("someone@elsewhere.example"), None);
    let e = errors("[listen]\naddresses = [\"localhost\"]\n");
    assert!(e[0].contains("not ADDRESS:PORT"), "{e:?}");
    let e = errors("[listen]\naddresses = [\"127.0.0.1:1\"]\nallow = [\"10.0.0.0/33\"]\n");
    assert!(e[0].contains("prefix"), "{e:?}");
    let l = parse("[listen]\naddresses = [\"127.0.0.1:1\"]\n")
        .unwrap()
        .listen
        .unwrap();
    assert_eq!(l.threads, ListenSettings::DEFAULT_THREADS);
    for bad in ["0", "257"] {
        let e = errors(&format!(
            "[listen]\naddresses = [\"127.0.0.1:1\"]\nthreads = {bad}\n"
        ));
        assert!(
            e[0].contains(&format!("threads is {bad}")) && e[0].contains("1 to 256"),
            "{e:?}"
        );
    }
}

#[test]
fn ip_ranges() {
    let n = IpNet::parse("10.1.0.0/16").unwrap();
    assert!(n.contains("10.1.200.3".parse().unwrap()));
    assert!(!n.contains("10.2.0.1".parse().unwrap()));
    assert!(
        n.contains("::ffff:10.1.0.9".parse().unwrap()),
        "IPv4-mapped"
    );
    assert!(IpNet::parse("0.0.0.0/0")
        .unwrap()
        .contains("203.0.113.5".parse().unwrap()));
    assert!(!IpNet::parse("::1/128")
        .unwrap()
        .contains("127.0.0.1".parse().unwrap()));
}

#[test]
fn sender_patterns() {
    let p = SenderPattern::new("owner-*-bulk@*.example.org");
    assert!(p.matches("owner-news-bulk@lists.example.org"));
    assert!(!p.matches("owner-news@lists.example.org"));
    assert!(SenderPattern::new("*").matches(""));
    assert!(SenderPattern::new("a@b").matches("A@B"));
    assert!(!SenderPattern::new("a@b").matches("xa@b"));
    assert!(SenderPattern::new("**x").matches("x"));
}

#[test]
fn admin_off_loopback_needs_a_token() {
    let e = errors("[admin]\naddress = \"0.0.0.0:8025\"\n");
    assert!(e[0].contains("token_file"), "{e:?}");
    let s = parse("[admin]\naddress = \"127.0.0.1:8025\"\n").unwrap();
    assert!(s.admin.unwrap().token.is_none());
}

#[test]
fn spool_and_cluster() {
    let s = parse(
        "[spool]\nurl = \"postgres://smtpw:pw@db.example/smtpw\"\n[cluster]\nnode_timeout = \"90s\"\nrate_limit = \"12Mbps AB:1.5Mbps\"\n",
    )
    .unwrap();
    assert_eq!(
        s.spool.url_for_display().as_deref(),
        Some("postgres://smtpw:***@db.example/smtpw")
    );
    assert_eq!(s.cluster.node_timeout, Duration::from_secs(90));
    let rl = s.cluster.rate_limit.unwrap();
    assert_eq!(rl.overall_bps, Some(12 * 1024 * 1024));
    assert_eq!(
        rl.pools.get(&Pool::from_char('A').unwrap()),
        Some(&1_572_864)
    );
    let e = errors("[cluster]\nrate_limit = \"12 Mbps\"\n");
    assert!(e[0].starts_with("smtpw.toml:2:"), "{e:?}");
    let e = errors("[spool]\npath = \"/a\"\nurl = \"postgres://h/d\"\n");
    assert!(e[0].contains("both"), "{e:?}");
}

#[test]
fn spool_via_names_a_node_of_a_database_spool() {
    let s = parse("[spool]\nurl = \"postgres://h/d\"\nvia = \"N1.EXAMPLE.ORG\"\n").unwrap();
    assert_eq!(s.spool.via.as_deref(), Some("N1.EXAMPLE.ORG"));
    assert_eq!(parse("[spool]\npath = \"/a\"\n").unwrap().spool.via, None);
    let e = errors("[spool]\npath = \"/a\"\nvia = \"N1\"\n");
    assert!(
        e[0].starts_with("smtpw.toml:3:") && e[0].contains("no [spool] url"),
        "{e:?}"
    );
    let e = errors("[spool]\nurl = \"postgres://h/d\"\nvia = \"a b\"\n");
    assert!(e[0].contains("not a node name"), "{e:?}");
}

#[test]
fn every_error_at_once() {
    let e = errors(
        r#"[relays."a.example"]
tls = "bogus"
[relays."b.example"]
mechanism = "NTLM"
[cluster]
node_timeout = "soon"
"#,
    );
    assert_eq!(e.len(), 3, "{e:?}");
}

#[test]
fn a_reload_says_what_changed_and_never_a_secret() {
    let old = parse(
        "[relays.\"r.example\"]\ntls = \"none\"\nallow_plaintext_auth = true\nusername = \"u1\"\npassword = \"hunter1\"\n[listen]\naddresses = [\"127.0.0.1:2525\"]\n",
    )
    .unwrap();
    let new = parse(
        "[relays.\"r.example\"]\ntls = \"none\"\nallow_plaintext_auth = true\nusername = \"u2\"\npassword = \"hunter2\"\n[relays.\"*\"]\ntls = \"required\"\n[listen]\naddresses = [\"127.0.0.1:2526\"]\n[cluster]\nrate_limit = \"1Mbps\"\n",
    )
    .unwrap();
    let c = describe_changes(&old, &new);
    let all = format!("{:?} {:?}", c.applied, c.at_restart);
    assert!(!all.contains("hunter"), "{all}");
    assert!(c.relays && c.rate_limit);
    assert_eq!(
        c.applied[0],
        "[relays.\"r.example\"] credentials changed: user u1 -> u2: the next connection each worker opens uses it"
    );
    assert!(
        c.applied[1].starts_with("[relays.\"*\"] tls opportunistic -> required"),
        "{all}"
    );
    assert!(
        c.applied[2].starts_with("[cluster] rate_limit none -> "),
        "{all}"
    );
    assert_eq!(c.at_restart, ["[listen] changed, takes effect at restart"]);
    // The engine keeps the listener it started with: a second reload says so again.
    let held = applied(&old, &new);
    assert_eq!(held.relays, new.relays);
    assert_eq!(held.listen, old.listen);
    let again = describe_changes(&held, &new);
    assert!(!again.relays && !again.rate_limit && again.applied.is_empty());
    assert_eq!(
        again.at_restart,
        ["[listen] changed, takes effect at restart"]
    );
    // Same user, new password: said without the password.
    let pw = parse(
        "[relays.\"r.example\"]\ntls = \"none\"\nallow_plaintext_auth = true\nusername = \"u1\"\npassword = \"hunter3\"\n[listen]\naddresses = [\"127.0.0.1:2525\"]\n",
    )
    .unwrap();
    let c = describe_changes(&old, &pw);
    assert_eq!(c.applied.len(), 1);
    assert!(
        c.applied[0].contains("credentials of user u1 changed") && !c.applied[0].contains("hunter")
    );
    assert!(describe_changes(&old, &old).is_empty());
}
