//! UTF-8 header fields (RFC 6532) and SMTPUTF8 (TXN-15), virtual mode. Three messages, one
//! relay offering SMTPUTF8 (the IIS profile plus the keyword) and one not (IIS as it is):
//!
//! - `Subject: Grüße aus Köln` (raw UTF-8 in a header field, ASCII envelope);
//! - an ASCII header section with an 8-bit body;
//! - a header field with a Latin-1 byte (8-bit, not UTF-8: not RFC 6532).
//!
//! Offered: the UTF-8 message goes with `BODY=8BITMIME SMTPUTF8` and arrives intact; the others
//! without SMTPUTF8. Not offered: all three are delivered as 8-bit data (`BODY=8BITMIME`, which
//! IIS offers), the UTF-8 header field intact: our decision (docs/behaviour.md TXN-15), as
//! Postfix does for mail whose sender did not ask for SMTPUTF8.

use std::time::Duration;

use jiff::civil::date;
use mock_mta::{MockConfig, TransactionRecord};
use smtpw_engine::ledger::Outcome as LedgerOutcome;

use crate::runner::{Ctx, Failure, Outcome, Scenario, ScenarioResult, VIRTUAL_ONLY};
use smtpw_testkit::topology::{fast_options, Topology};
use smtpw_testkit::workload::MAIL_FROM;

const RELAY: &str = "RELAY.EXAMPLE.ORG:25";
const UTF8: &str = "From: owner-list@lists.example.org\r\nSubject: Grüße aus Köln\r\n\r\nBody.\r\n";
const BODY8: &str = "From: owner-list@lists.example.org\r\nSubject: plain\r\n\r\nGrüße.\r\n";
const LATIN1: &[u8] = b"From: owner-list@lists.example.org\r\nSubject: caf\xe9\r\n\r\nBody.\r\n";

pub fn scenario() -> Scenario {
    Scenario::new("smtputf8-headers", VIRTUAL_ONLY, smtputf8)
}

fn rcpts(tag: &str) -> Vec<String> {
    (0..3).map(|i| format!("{tag}{i}@dst.example")).collect()
}

/// Run the three messages through a relay offering (or not) SMTPUTF8.
async fn run(offer: bool) -> Result<Topology, Failure> {
    let mut m = MockConfig::iis();
    m.keep_bodies = true;
    if offer {
        m.profile.ehlo_keywords.push("SMTPUTF8".into());
    }
    let t = Topology::new(
        "SMTP_FORWARD=RELAY.EXAMPLE.ORG\nSMTP_FORWARD_1=RELAY.EXAMPLE.ORG\n",
        date(2026, 11, 22).at(12, 0, 0, 0),
        &[(RELAY, m)],
    );
    for (tag, msg) in [
        ("u", UTF8.as_bytes()),
        ("b", BODY8.as_bytes()),
        ("l", LATIN1),
    ] {
        smtpw_engine::spool::submit(&t.spool_dir(), MAIL_FROM, None, rcpts(tag).into_iter(), msg)
            .map_err(|e| Failure::new("the job submitted", e.to_string()))?;
    }
    t.try_run_until_empty(fast_options(), Duration::from_secs(3600))
        .await?;
    Ok(t)
}

/// The relay's transaction that carried `rcpt`, if one did.
fn txn_of(t: &Topology, rcpt: &str) -> Option<TransactionRecord> {
    t.mock(RELAY)
        .journal()
        .transactions()
        .find(|x| x.rcpts.iter().any(|r| r.addr == rcpt))
        .cloned()
}

fn expect_params(t: &Topology, tag: &str, want: &[&str], why: &str) -> Result<(), Failure> {
    let got = txn_of(t, &format!("{tag}0@dst.example"))
        .map(|x| x.mail_params)
        .ok_or_else(|| Failure::new(format!("{why}: delivered"), "no transaction at the relay"))?;
    if got != want {
        return Err(Failure::new(
            format!("{why}: MAIL parameters {want:?}"),
            format!("{got:?}"),
        ));
    }
    Ok(())
}

/// The relay received the UTF-8 message's Subject as it was sent.
fn subject_intact(t: &Topology, why: &str) -> Result<(), Failure> {
    let body = txn_of(t, "u0@dst.example").and_then(|x| x.body);
    if !body
        .as_deref()
        .is_some_and(|b| b.contains("Subject: Grüße aus Köln\r\n"))
    {
        return Err(Failure::new(why, format!("{body:?}")));
    }
    Ok(())
}

fn delivered(t: &Topology, tag: &str) -> Result<(), Failure> {
    let mut got: Vec<String> = t
        .delivered_everywhere()
        .into_iter()
        .filter(|r| r.starts_with(tag))
        .collect();
    got.sort();
    if got != rcpts(tag) {
        return Err(Failure::new(
            format!("{:?} delivered once each", rcpts(tag)),
            format!("{got:?}"),
        ));
    }
    Ok(())
}

async fn smtputf8(_ctx: Ctx) -> ScenarioResult {
    // Offered.
    let t = run(true).await?;
    for tag in ["u", "b", "l"] {
        delivered(&t, tag)?;
    }
    expect_params(
        &t,
        "u",
        &["BODY=8BITMIME", "SMTPUTF8"],
        "UTF-8 header fields, SMTPUTF8 offered",
    )?;
    expect_params(&t, "b", &["BODY=8BITMIME"], "8-bit body, ASCII header")?;
    expect_params(&t, "l", &["BODY=8BITMIME"], "Latin-1 header byte")?;
    subject_intact(&t, "the UTF-8 Subject received intact")?;

    // Not offered: all three delivered, as 8-bit data, the UTF-8 Subject intact.
    let t = run(false).await?;
    for tag in ["u", "b", "l"] {
        delivered(&t, tag)?;
        expect_params(&t, tag, &["BODY=8BITMIME"], "no SMTPUTF8 offered")?;
    }
    subject_intact(
        &t,
        "the UTF-8 Subject received intact by a relay without SMTPUTF8",
    )?;
    let finals = t.final_outcomes();
    for r in rcpts("u") {
        let line = finals.get(&r);
        if !line.is_some_and(|l| l.outcome == LedgerOutcome::Delivered) {
            return Err(Failure::new(
                format!("{r} delivered in the ledger"),
                format!("{line:?}"),
            ));
        }
    }
    Ok(Outcome::new(
        "offered: SMTPUTF8 on the UTF-8 message only; not offered: all three delivered as 8-bit data, the UTF-8 Subject intact",
    ))
}
