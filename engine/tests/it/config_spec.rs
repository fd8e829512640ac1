//! EX-1 to EX-21: every configuration case, line -> expected parse.

use smtpw_engine::config::{
    parse_delivery_pool, parse_str, DistEntry, HostPort, Pool, PoolSet, Severity, SiteConfig,
    TimeOfDay, Window,
};
use smtpw_engine::route::{route, Via};

const SYNC: &str = "SMTP_FORWARD=SYNC.EXAMPLE.ORG\n";

fn ok(text: &str) -> SiteConfig {
    match parse_str(text, "SITE.CFG") {
        Ok(c) => c,
        Err(e) => panic!("expected a good file, got:\n{e}"),
    }
}

fn hp(h: &str, p: u16) -> HostPort {
    HostPort::new(h, p)
}

fn tod(s: &str) -> TimeOfDay {
    s.parse().unwrap()
}

fn pools(s: &str) -> PoolSet {
    s.chars().map(|c| Pool::from_char(c).unwrap()).collect()
}

fn primaries(c: &SiteConfig) -> Vec<String> {
    c.workers.iter().map(|w| w.primary.to_string()).collect()
}

#[test]
fn case01_sync_forward_with_port() {
    let c = ok("SMTP_FORWARD=LISTSERV.EXAMPLE.ORG:50025\n");
    assert_eq!(c.sync_forward, Some(hp("LISTSERV.EXAMPLE.ORG", 50025)));
    assert!(c.workers.is_empty());
}

#[test]
fn case02_unix_quoted_sync_forward() {
    let c = ok("SMTP_FORWARD=\"UNIX.XYZ.COM\"\nexport SMTP_FORWARD\n");
    assert_eq!(c.sync_forward, Some(hp("UNIX.XYZ.COM", 25)));
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
}

#[test]
fn case03_three_lines_two_thirds_to_unixserver() {
    let c = ok(&format!(
        "{SYNC}SMTP_FORWARD_1=UNIXSERVER.BAR.COM\nSMTP_FORWARD_2=SMTP.BAZ.NET\nSMTP_FORWARD_3=UNIXSERVER.BAR.COM\n"
    ));
    assert_eq!(
        primaries(&c),
        [
            "UNIXSERVER.BAR.COM:25",
            "SMTP.BAZ.NET:25",
            "UNIXSERVER.BAR.COM:25"
        ]
    );
    let ids: Vec<u32> = c.workers.iter().map(|w| w.id).collect();
    assert_eq!(ids, [1, 2, 3]);
    let to_unix = c
        .workers
        .iter()
        .filter(|w| w.primary.host == "UNIXSERVER.BAR.COM")
        .count();
    assert_eq!((to_unix, c.workers.len()), (2, 3));
}

#[test]
fn case04_multiplier_gives_the_same_workers_as_case03() {
    let c3 = ok(&format!(
        "{SYNC}SMTP_FORWARD_1=UNIXSERVER.BAR.COM\nSMTP_FORWARD_2=SMTP.BAZ.NET\nSMTP_FORWARD_3=UNIXSERVER.BAR.COM\n"
    ));
    let c4 = ok(&format!(
        "{SYNC}SMTP_FORWARD_1=2*UNIXSERVER.BAR.COM\nSMTP_FORWARD_2=SMTP.BAZ.NET\n"
    ));
    assert_eq!(
        primaries(&c4),
        [
            "UNIXSERVER.BAR.COM:25",
            "UNIXSERVER.BAR.COM:25",
            "SMTP.BAZ.NET:25"
        ]
    );
    let (mut a, mut b) = (primaries(&c3), primaries(&c4));
    a.sort();
    b.sort();
    assert_eq!(a, b);
    assert_eq!(
        c4.workers.iter().map(|w| w.source_n).collect::<Vec<_>>(),
        [1, 1, 2]
    );
}

#[test]
fn case05_multiplier_with_failover_applies_to_every_copy() {
    let c = ok(&format!(
        "{SYNC}SMTP_FORWARD_1=2*UNIXSERVER.BAR.COM;SMTP.BAZ.NET\n"
    ));
    assert_eq!(c.workers.len(), 2);
    for w in &c.workers {
        assert_eq!(w.primary, hp("UNIXSERVER.BAR.COM", 25));
        assert_eq!(w.failover, Some(hp("SMTP.BAZ.NET", 25)));
        assert!(w.pools.is_all());
        assert!(w.windows.is_empty());
    }
}

#[test]
fn case06_window_with_failover() {
    let c = ok(&format!(
        "{SYNC}SMTP_FORWARD_1=UNIXSERVER.BAR.COM(00:00-05:00);SMTP.BAZ.NET\n"
    ));
    assert_eq!(c.workers.len(), 1);
    let w = &c.workers[0];
    assert_eq!(
        w.windows,
        [Window {
            start: tod("00:00"),
            end: tod("05:00")
        }]
    );
    for (t, via, host) in [
        ("00:00", Via::Primary, "UNIXSERVER.BAR.COM"),
        ("04:59", Via::Primary, "UNIXSERVER.BAR.COM"),
        ("05:00", Via::Failover, "SMTP.BAZ.NET"),
        ("12:00", Via::Failover, "SMTP.BAZ.NET"),
        ("23:59", Via::Failover, "SMTP.BAZ.NET"),
    ] {
        let r = route(w, tod(t));
        assert_eq!(
            (r.via, r.target.map(|h| h.host.as_str())),
            (via, Some(host)),
            "at {t}"
        );
    }
}

#[test]
fn case07_window_without_failover_is_inactive_outside() {
    let c = ok(&format!(
        "{SYNC}SMTP_FORWARD_1=A.EXAMPLE.ORG\nSMTP_FORWARD_2=B.EXAMPLE.ORG\nSMTP_FORWARD_3=SMTP.BAZ.NET(10:00-14:00)\n"
    ));
    let w = &c.workers[2];
    assert_eq!(w.primary, hp("SMTP.BAZ.NET", 25));
    assert_eq!(w.failover, None);
    assert_eq!(route(w, tod("09:59")).via, Via::Inactive);
    assert_eq!(route(w, tod("10:00")).via, Via::Primary);
    assert_eq!(route(w, tod("13:59")).via, Via::Primary);
    assert_eq!(route(w, tod("14:00")).via, Via::Inactive);
    assert_eq!(route(w, tod("14:00")).target, None);
}

#[test]
fn case08_ten_workers_on_port_50025() {
    let c = ok(&format!(
        "{SYNC}SMTP_FORWARD_1=10*LISTSERV.EXAMPLE.ORG:50025\n"
    ));
    assert_eq!(c.workers.len(), 10);
    assert!(c
        .workers
        .iter()
        .all(|w| w.primary == hp("LISTSERV.EXAMPLE.ORG", 50025)));
    assert_eq!(
        c.workers.iter().map(|w| w.id).collect::<Vec<_>>(),
        (1..=10).collect::<Vec<_>>()
    );
}

#[test]
fn case09_quoted_worker() {
    let c = ok(&format!("{SYNC}SMTP_FORWARD_1=\"MAILHOST.BAR.COM\"\n"));
    assert_eq!(primaries(&c), ["MAILHOST.BAR.COM:25"]);
}

#[test]
fn case10_11_pools() {
    let c = ok(&format!(
        "{SYNC}SMTP_FORWARD_1=2*SCOOBY.EXAMPLE.ORG;POOL=A-\nSMTP_FORWARD_2=SCRAPPY.EXAMPLE.ORG;POOL=B\n"
    ));
    assert_eq!(c.workers.len(), 3);
    for w in &c.workers[..2] {
        assert_eq!(w.pools, pools("A-"));
        assert!(w.pools.contains(Pool::DEFAULT));
        assert_eq!(w.failover, None);
    }
    assert_eq!(c.workers[2].pools, pools("B"));
    // pools nobody serves are reported
    assert!(c
        .warnings
        .iter()
        .any(|w| w.message.contains("no worker serves pools C D")));
}

#[test]
fn case12_pool_star_is_all_pools() {
    let a = ok(&format!("{SYNC}SMTP_FORWARD_1=H.EXAMPLE.ORG;POOL=*\n"));
    let b = ok(&format!("{SYNC}SMTP_FORWARD_1=H.EXAMPLE.ORG\n"));
    assert!(a.workers[0].pools.is_all());
    assert_eq!(a.workers[0].pools.len(), 27);
    assert_eq!(a.workers, b.workers);
}

#[test]
fn case13_default_list_pool() {
    let c = ok(&format!("{SYNC}DEFAULT_LIST_POOL=A\n"));
    let a = Pool::from_char('A').unwrap();
    assert_eq!(
        (c.default_list_pool.postings, c.default_list_pool.admin),
        (a, a)
    );
    // unset: '-'
    let c = ok(SYNC);
    assert_eq!(c.default_list_pool.postings, Pool::DEFAULT);
    assert_eq!(c.default_list_pool.admin, Pool::DEFAULT);
    // two values separated by a space
    let c = ok(&format!("{SYNC}DEFAULT_LIST_POOL=C D\n"));
    assert_eq!(c.default_list_pool.to_setting(), "C D");
}

#[test]
fn case14_delivery_pool_list_header() {
    let p = parse_delivery_pool(" C,D").unwrap();
    assert_eq!((p.postings.as_char(), p.admin.as_char()), ('C', 'D'));
    let p = parse_delivery_pool(" C").unwrap();
    assert_eq!((p.postings.as_char(), p.admin.as_char()), ('C', 'C'));
    assert!(parse_delivery_pool("CD").is_err());
}

#[test]
fn case15_overall_rate() {
    let c = ok(&format!(
        "{SYNC}SMTP_FORWARD_1=H.EXAMPLE.ORG\nSMTP_RATE_LIMIT=12Mbps\n"
    ));
    assert_eq!(c.rate_limits.overall_bps, Some(12_582_912));
    assert!(c.rate_limits.pools.is_empty());
}

#[test]
fn case16_pool_rates_each_on_its_own() {
    let c = ok(&format!(
        "{SYNC}SMTP_FORWARD_1=H.EXAMPLE.ORG\nSMTP_RATE_LIMIT=12Mbps AB:1.5Mbps C:150kbps\n"
    ));
    let r = &c.rate_limits;
    assert_eq!(r.overall_bps, Some(12_582_912));
    let p = |ch| Pool::from_char(ch).unwrap();
    assert_eq!(r.pools.get(&p('A')), Some(&1_572_864));
    assert_eq!(r.pools.get(&p('B')), Some(&1_572_864));
    assert_eq!(r.pools.get(&p('C')), Some(&153_600));
    assert_eq!(r.pools.len(), 3, "other pools are unlimited");
}

fn dist(c: &SiteConfig) -> Vec<(String, u32)> {
    c.dist_forward
        .iter()
        .map(|DistEntry { host, weight }| (host.clone(), *weight))
        .collect()
}

#[test]
fn case17_18_19_dist_forward() {
    let c = ok(&format!(
        "{SYNC}DIST_FORWARD=DIST1.EXAMPLE.ORG DIST2.EXAMPLE.ORG\n"
    ));
    assert_eq!(
        dist(&c),
        [
            ("SELF".into(), 1),
            ("DIST1.EXAMPLE.ORG".into(), 1),
            ("DIST2.EXAMPLE.ORG".into(), 1)
        ]
    );
    let c = ok(&format!("{SYNC}DIST_FORWARD=2*DIST.EXAMPLE.ORG\n"));
    assert_eq!(
        dist(&c),
        [("SELF".into(), 1), ("DIST.EXAMPLE.ORG".into(), 2)]
    );
    let c = ok("SMTP_FORWARD=\"SYNC.EXAMPLE.COM\"\nDIST_FORWARD=\"0*SELF DIST1.EXAMPLE.COM DIST2.EXAMPLE.COM\"\nexport SMTP_FORWARD DIST_FORWARD\n");
    assert_eq!(
        dist(&c),
        [
            ("SELF".into(), 0),
            ("DIST1.EXAMPLE.COM".into(), 1),
            ("DIST2.EXAMPLE.COM".into(), 1)
        ]
    );
}

#[test]
fn case20_background_pool_priority() {
    let c = ok(&format!("{SYNC}DIST_BACKGROUND_POOL_PRIORITY=I*B\n"));
    let order: String = c
        .dist_background_pool_priority
        .unwrap()
        .0
        .iter()
        .map(|p| p.as_char())
        .collect();
    assert_eq!(order, "IACDEFGHJKLMNOPQRSTUVWXYZ-B");
    // without '*', unlisted pools go last
    let c = ok(&format!("{SYNC}DIST_BACKGROUND_POOL_PRIORITY=zy\n"));
    let order: String = c
        .dist_background_pool_priority
        .unwrap()
        .0
        .iter()
        .map(|p| p.as_char())
        .collect();
    assert_eq!(order, "ZYABCDEFGHIJKLMNOPQRSTUVWX-");
}

#[test]
fn case21_maxbsmtp_sort_merge() {
    let c = ok(&format!(
        "{SYNC}MAXBSMTP=1000\nSORT_RECIPIENTS=2\nEMBEDDED_MAIL_MERGE=1\n"
    ));
    assert_eq!(c.max_bsmtp, 1000);
    assert_eq!(c.sort_recipients, 2);
    assert_eq!(
        c.passive.get("EMBEDDED_MAIL_MERGE").map(String::as_str),
        Some("1")
    );
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    // MAXBSMTP unset: 100 (COPY-1)
    assert_eq!(ok(SYNC).max_bsmtp, 100);
}

#[test]
fn negative_cases_of_section_10() {
    let err = |t: &str| parse_str(t, "SITE.CFG").unwrap_err();
    let e = err("SMTP_FORWARD=MAILHOST\n");
    assert_eq!(e.errors().count(), 1);
    assert!(
        e.to_string()
            .contains("SITE.CFG:1:14: error: SMTP_FORWARD host 'MAILHOST' is not fully qualified"),
        "{e}"
    );
    let e = err("SMTP_FORWARD=[::1]\n");
    assert!(e.to_string().contains("IPv6"), "{e}");
    let e = err("SMTP_FORWARD=H.EXAMPLE.ORG\nSMTP_RATE_LIMIT=12 Mbps\n");
    assert!(
        e.to_string()
            .contains("SITE.CFG:2:19: error: a space between '12' and its unit 'Mbps'"),
        "{e}"
    );
    assert_eq!(e.errors().count(), 1, "{e}");

    let c = ok("SMTP_FORWARD=LOCALHOST\n");
    assert_eq!(c.sync_forward, Some(hp("LOCALHOST", 25)));
    assert_eq!(c.warnings.len(), 1);
    assert_eq!(c.warnings[0].severity, Severity::Warning);
    assert!(c.warnings[0].message.contains("LOCALHOST"));
    let c = ok("SMTP_FORWARD=localhost:2525\n");
    assert_eq!(c.sync_forward, Some(hp("localhost", 2525)));

    let c =
        ok("SMTP_FORWARD=H.EXAMPLE.ORG\nSMTP_FORWARD_1=W.EXAMPLE.ORG\nSMTP_RATE_LIMIT=12mbps\n");
    assert_eq!(c.rate_limits.overall_bps, Some(12 * (1 << 20)));
}
