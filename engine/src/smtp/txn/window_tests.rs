//! BDAT and the window of transactions in flight (TXN-13), the same window over DATA (TXN-14),
//! and the MAIL parameters of TXN-15, against the relay model.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::collections::HashMap;

use proptest::prelude::*;

use super::*;
use crate::smtp::model_relay::*;
use crate::smtp::ClientConfig;

/// Message `j`'s recipients: `m{j}u{i}@example.net`, unique across messages.
fn addrs(j: usize, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("m{j}u{i}@example.net")).collect()
}

fn msgs<'a>(to: &'a [Vec<String>], body: &'a [u8]) -> Vec<Msg<'a>> {
    to.iter()
        .map(|rcpts| Msg {
            from: "list@example.org",
            rcpts,
            message: body,
        })
        .collect()
}

/// A message whose lines would be dot-stuffed under DATA.
const DOTTY: &[u8] = b"Subject: dots\r\n\r\n.leading dot\r\n..two\r\n.\r\nend\r\n";

#[test]
fn bdat_sends_whole_transactions_several_in_one_write_and_does_not_stuff() {
    let (mut s, mut relay) = connect_with(Relay::pipelining(), &bdat_cfg(4));
    assert!(s.uses_bdat());
    let to: Vec<Vec<String>> = (0..6).map(|j| addrs(j, 2)).collect();
    let d = deliver_many(&mut s, &mut relay, &msgs(&to, DOTTY), 100);
    assert_eq!(d.len(), 6);
    for (j, dj) in d.iter().enumerate() {
        assert_eq!(dj.delivered(), 2, "message {j}: {dj:?}");
        assert_eq!(dj.transactions, 1);
        assert!(dj.connection_lost.is_none());
    }
    // The first write carries four whole transactions (the window), not one.
    let first = &relay.groups[1];
    let mails = first.iter().filter(|c| c.starts_with("MAIL")).count();
    let bdats = first.iter().filter(|c| c.starts_with("BDAT")).count();
    assert_eq!((mails, bdats), (4, 4), "{first:?}");
    assert_eq!(first[3], format!("BDAT {} LAST", DOTTY.len()));
    // Every message arrived as it was, once, to its own recipients.
    assert_eq!(relay.messages.len(), 6);
    for (j, m) in relay.messages.iter().enumerate() {
        assert_eq!(m.data, DOTTY);
        assert_eq!(m.rcpts, to[j]);
    }
    // Fewer waits than one per reply of a lock-step session: replies are read in order, but
    // only two writes carried the six transactions' commands.
    let writes = relay
        .steps
        .iter()
        .filter(|s| matches!(s, Step::Write { .. }))
        .count();
    assert!(writes <= 6, "{writes} writes");
}

#[test]
fn without_chunking_transactions_go_one_at_a_time_with_data() {
    let (mut s, mut relay) = connect_with(Relay::lockstep(), &bdat_cfg(8));
    assert!(!s.uses_bdat());
    let to: Vec<Vec<String>> = (0..3).map(|j| addrs(j, 1)).collect();
    let d = deliver_many(&mut s, &mut relay, &msgs(&to, DOTTY), 100);
    assert!(d.iter().all(|d| d.delivered() == 1));
    assert!(relay.commands().iter().all(|c| !c.starts_with("BDAT")));
    assert!(relay.messages.iter().all(|m| m.data == DOTTY));
}

#[test]
fn a_452_in_the_middle_of_a_window_carries_only_that_messages_recipients_over() {
    let relay = Relay {
        limit: Some(2),
        too_many: "452 4.5.3 Too many recipients".into(),
        ..Relay::pipelining()
    };
    let (mut s, mut relay) = connect_with(relay, &bdat_cfg(4));
    let to: Vec<Vec<String>> = (0..5).map(|j| addrs(j, 3)).collect();
    let d = deliver_many(&mut s, &mut relay, &msgs(&to, MSG), 100);
    for (j, dj) in d.iter().enumerate() {
        assert_eq!(dj.delivered(), 3, "message {j}: {dj:?}");
    }
    assert!(d.iter().map(|d| d.too_many_recoveries).sum::<u32>() >= 1);
    // Each recipient exactly once, and only in its own message.
    for (j, rcpts) in to.iter().enumerate() {
        for a in rcpts {
            assert_eq!(relay.accepted_count.get(a), Some(&1), "{a}");
            let with = relay
                .messages
                .iter()
                .filter(|m| m.rcpts.contains(a))
                .collect::<Vec<_>>();
            assert_eq!(with.len(), 1, "{a}");
            assert!(with[0]
                .rcpts
                .iter()
                .all(|r| r.starts_with(&format!("m{j}u"))));
        }
    }
    assert_eq!(s.learned_rcpt_limit(), Some(2));
}

#[test]
fn a_421_between_pipelined_transactions_defers_the_rest_and_leaves_later_messages_untouched() {
    // Commands: EHLO, then per message MAIL RCPT BDAT (the first) or RSET MAIL RCPT BDAT.
    // The 421 answers the second message's MAIL (command 6).
    let relay = Relay {
        reply_421_at: Some(6),
        ..Relay::pipelining()
    };
    let (mut s, mut relay) = connect_with(relay, &bdat_cfg(3));
    let to: Vec<Vec<String>> = (0..5).map(|j| addrs(j, 1)).collect();
    let d = deliver_many(&mut s, &mut relay, &msgs(&to, MSG), 100);
    assert_eq!(d[0].delivered(), 1);
    assert!(d[0].connection_lost.is_none());
    for dj in &d[1..] {
        assert_eq!(dj.deferred(), 1, "{dj:?}");
        assert_eq!(dj.results[0].reply.code, 421);
        assert_eq!(dj.connection_lost.as_ref().map(|r| r.code), Some(421));
    }
    // Messages 2 and 3 never reached the relay (message 3 began when message 0's transaction
    // ended, its write failing: the relay had closed), and message 4 never began: after a 421
    // they count as not sent, so they can go back to the queue as they are. Message 1, whose
    // MAIL got the 421, is deferred.
    assert_eq!(d[1].transactions, 1);
    assert_eq!(
        (d[2].transactions, d[3].transactions, d[4].transactions),
        (0, 0, 0)
    );
    assert_eq!(relay.delivered(), vec!["m0u0@example.net".to_string()]);
    assert!(!s.is_usable());
}

#[test]
fn a_drop_mid_bdat_defers_every_undecided_recipient_and_delivers_nothing_twice() {
    let relay = Relay {
        close_in_data_after: Some(MSG.len() / 2),
        ..Relay::pipelining()
    };
    let (mut s, mut relay) = connect_with(relay, &bdat_cfg(4));
    let to: Vec<Vec<String>> = (0..3).map(|j| addrs(j, 2)).collect();
    let d = deliver_many(&mut s, &mut relay, &msgs(&to, MSG), 100);
    assert!(relay.messages.is_empty());
    for dj in &d {
        assert_eq!(dj.deferred(), 2, "{dj:?}");
        assert!(dj.connection_lost.is_some());
    }
}

#[test]
fn a_refused_mail_in_a_window_fails_only_that_message() {
    let relay = Relay::pipelining().rcpt("m1u0@example.net", "550 5.1.1 unknown");
    let (mut s, mut relay) = connect_with(relay, &bdat_cfg(4));
    let to: Vec<Vec<String>> = (0..3).map(|j| addrs(j, 1)).collect();
    let d = deliver_many(&mut s, &mut relay, &msgs(&to, MSG), 100);
    assert_eq!(d[0].delivered(), 1);
    assert_eq!(d[1].failed(), 1);
    assert_eq!(d[1].results[0].reply.code, 550);
    assert_eq!(d[2].delivered(), 1);
    // The BDAT of the message nobody accepted got the relay's refusal, and the session went on.
    assert!(s.is_usable());
    assert_eq!(relay.messages.len(), 2);
}

/// The DATA path with the window (TXN-14): PIPELINING without CHUNKING.
fn data_cfg(window: usize) -> ClientConfig {
    ClientConfig { window, ..cfg() }
}

/// A relay that offers PIPELINING but not CHUNKING.
fn pipelining_no_chunking() -> Relay {
    Relay::new(&[
        "SIZE 2097152",
        "PIPELINING",
        "ENHANCEDSTATUSCODES",
        "8BITMIME",
    ])
}

/// Writes of command groups that did not ride on a block of message data.
fn command_writes(relay: &Relay) -> usize {
    relay
        .steps
        .iter()
        .filter(|s| matches!(s, Step::Write { what, .. } if *what != "message data"))
        .count()
}

#[test]
fn without_chunking_the_next_transaction_follows_the_final_dot_in_the_same_write() {
    let (mut s, mut relay) = connect_with(pipelining_no_chunking(), &data_cfg(16));
    assert!(!s.uses_bdat());
    assert_eq!(s.window(), 16);
    let before = command_writes(&relay);
    let to: Vec<Vec<String>> = (0..5).map(|j| addrs(j, 2)).collect();
    let d = deliver_many(&mut s, &mut relay, &msgs(&to, DOTTY), 100);
    for (j, dj) in d.iter().enumerate() {
        assert_eq!(dj.delivered(), 2, "message {j}: {dj:?}");
        assert_eq!(dj.transactions, 1);
    }
    // Only the first transaction's commands went alone; each later one went with the block
    // that ended the message before it: one write per message.
    assert_eq!(command_writes(&relay) - before, 1);
    assert_eq!(relay.data_writes(), 5);
    let verbs = relay.verbs();
    assert_eq!(verbs[1], ["MAIL", "RCPT", "RCPT", "DATA"]);
    for g in &verbs[2..] {
        assert_eq!(g, &["RSET", "MAIL", "RCPT", "RCPT", "DATA"]);
    }
    // Dot-stuffed on the wire, each message as it was, to its own recipients, once.
    assert_eq!(relay.messages.len(), 5);
    for (j, m) in relay.messages.iter().enumerate() {
        assert_eq!(m.data, DOTTY);
        assert_eq!(m.rcpts, to[j]);
    }
    assert!(s.is_usable());
}

#[test]
fn a_window_of_one_or_no_pipelining_keeps_data_in_lock_step_per_message() {
    for (relay, cfg) in [
        (pipelining_no_chunking(), data_cfg(1)),
        (Relay::lockstep(), data_cfg(16)),
    ] {
        let (mut s, mut relay) = connect_with(relay, &cfg);
        assert_eq!(s.window(), 1);
        let to: Vec<Vec<String>> = (0..3).map(|j| addrs(j, 1)).collect();
        let d = deliver_many(&mut s, &mut relay, &msgs(&to, MSG), 100);
        assert!(d.iter().all(|d| d.delivered() == 1));
        // No group holds more than one transaction's commands, and none rides on data.
        assert!(relay
            .verbs()
            .iter()
            .all(|g| g.iter().filter(|v| *v == "MAIL").count() <= 1));
        assert!(command_writes(&relay) >= 3);
    }
}

#[test]
fn the_data_is_interruptible_up_to_its_final_dot_only() {
    let (mut s, mut relay) = connect_with(pipelining_no_chunking(), &data_cfg(16));
    let to: Vec<Vec<String>> = (0..2).map(|j| addrs(j, 1)).collect();
    let ms = msgs(&to, DOTTY);
    let mut job = Deliver::new_many(&mut s, &ms, 100);
    assert!(matches!(job.next(), Step::Begin { .. }));
    assert!(matches!(job.next(), Step::Write { what: "MAIL", .. }));
    let w = relay.receive_for_test(job.output());
    job.on_written(w);
    for what in ["MAIL", "RCPT", "DATA"] {
        assert!(matches!(job.next(), Step::Read { .. }));
        let r = relay.answer_for_test(what);
        job.on_reply(r);
    }
    // The second message's transaction begins with the first one's final block in the buffer.
    assert!(matches!(job.next(), Step::Begin { .. }));
    let Step::Write {
        what,
        interrupt_before,
        ..
    } = job.next()
    else {
        panic!("a write");
    };
    let stuffed = crate::smtp::data::dot_stuff(DOTTY);
    assert_eq!(what, "message data");
    assert_eq!(interrupt_before, stuffed.len());
    let out = job.output().to_vec();
    assert_eq!(&out[..stuffed.len()], &stuffed[..]);
    assert_eq!(
        String::from_utf8_lossy(&out[stuffed.len()..]),
        format!(
            "RSET\r\nMAIL FROM:<list@example.org> SIZE={}\r\nRCPT TO:<m1u0@example.net>\r\nDATA\r\n",
            DOTTY.len()
        )
    );
}

#[test]
fn over_data_a_452_in_the_middle_of_a_window_carries_only_that_messages_recipients_over() {
    let relay = Relay {
        limit: Some(2),
        too_many: "452 4.5.3 Too many recipients".into(),
        ..pipelining_no_chunking()
    };
    let (mut s, mut relay) = connect_with(relay, &data_cfg(16));
    let to: Vec<Vec<String>> = (0..5).map(|j| addrs(j, 3)).collect();
    let d = deliver_many(&mut s, &mut relay, &msgs(&to, MSG), 100);
    for (j, dj) in d.iter().enumerate() {
        assert_eq!(dj.delivered(), 3, "message {j}: {dj:?}");
    }
    for (j, rcpts) in to.iter().enumerate() {
        for a in rcpts {
            assert_eq!(relay.accepted_count.get(a), Some(&1), "{a}");
            let with: Vec<_> = relay
                .messages
                .iter()
                .filter(|m| m.rcpts.contains(a))
                .collect();
            assert_eq!(with.len(), 1, "{a}");
            assert!(with[0]
                .rcpts
                .iter()
                .all(|r| r.starts_with(&format!("m{j}u"))));
        }
    }
    assert_eq!(s.learned_rcpt_limit(), Some(2));
}

#[test]
fn over_data_a_421_to_a_final_dot_gives_the_next_transaction_back_untouched() {
    let relay = Relay {
        finals: [
            "250 2.6.0 queued",
            "421 4.3.2 Service not available, closing",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
        ..pipelining_no_chunking()
    };
    let (mut s, mut relay) = connect_with(relay, &data_cfg(16));
    let to: Vec<Vec<String>> = (0..4).map(|j| addrs(j, 2)).collect();
    let d = deliver_many(&mut s, &mut relay, &msgs(&to, MSG), 100);
    assert_eq!(d[0].delivered(), 2);
    // Message 1's final dot got the 421: deferred with it.
    assert_eq!(d[1].deferred(), 2);
    assert_eq!(d[1].results[0].reply.code, 421);
    assert_eq!(d[1].transactions, 1);
    // Message 2's commands followed that dot and got no reply of their own: not sent, as is
    // message 3, which never began.
    for dj in &d[2..] {
        assert_eq!(dj.transactions, 0, "{dj:?}");
        assert_eq!(dj.deferred(), 2);
    }
    assert!(!s.is_usable());
}

#[test]
fn over_data_a_421_to_the_next_commands_defers_that_message_only() {
    // Commands: EHLO(1); MAIL(2) RCPT(3) DATA(4); RSET(5) MAIL(6) ...: the 421 answers the
    // second message's MAIL, which rode on the first message's final dot.
    let relay = Relay {
        reply_421_at: Some(6),
        ..pipelining_no_chunking()
    };
    let (mut s, mut relay) = connect_with(relay, &data_cfg(16));
    let to: Vec<Vec<String>> = (0..3).map(|j| addrs(j, 1)).collect();
    let d = deliver_many(&mut s, &mut relay, &msgs(&to, MSG), 100);
    assert_eq!(d[0].delivered(), 1);
    assert!(d[0].connection_lost.is_none());
    assert_eq!(d[1].deferred(), 1);
    assert_eq!(d[1].results[0].reply.code, 421);
    assert_eq!(d[2].transactions, 0);
    assert_eq!(relay.delivered(), vec!["m0u0@example.net".to_string()]);
}

#[test]
fn over_data_a_drop_mid_message_defers_it_and_keeps_what_was_delivered() {
    // The second message's data is cut half-way (the relay counts its data bytes from 0 for
    // each message; the first message is shorter than the threshold).
    let long: Vec<u8> = [MSG, &b"x".repeat(400)[..], b"\r\n"].concat();
    let relay = Relay {
        close_in_data_after: Some(MSG.len() + 300),
        ..pipelining_no_chunking()
    };
    let (mut s, mut relay) = connect_with(relay, &data_cfg(16));
    let to: Vec<Vec<String>> = (0..3).map(|j| addrs(j, 2)).collect();
    let ms = vec![
        Msg {
            from: "list@example.org",
            rcpts: &to[0],
            message: MSG,
        },
        Msg {
            from: "list@example.org",
            rcpts: &to[1],
            message: &long,
        },
        Msg {
            from: "list@example.org",
            rcpts: &to[2],
            message: MSG,
        },
    ];
    let d = deliver_many(&mut s, &mut relay, &ms, 100);
    assert_eq!(d[0].delivered(), 2);
    assert_eq!(d[1].deferred(), 2);
    assert!(d[1].connection_lost.is_some());
    assert_eq!(d[2].delivered(), 0);
    assert_eq!(relay.delivered(), to[0]);
}

#[test]
fn eight_bit_and_internationalised_addresses_as_the_relay_offers() {
    // An ASCII header section (UTF-8 header fields have their own rule and test below).
    let body = "Subject: Gruesse\r\n\r\nÄ\r\n".as_bytes();
    let to = vec![
        "plain@example.net".to_string(),
        "jörg@exämple.de".to_string(),
    ];
    // Offered: BODY=8BITMIME and SMTPUTF8 on MAIL, both recipients sent.
    let relay = Relay::new(&["PIPELINING", "8BITMIME", "SMTPUTF8"]);
    let (mut s, mut relay) = connect_with(relay, &data_cfg(16));
    let d = deliver(&mut s, &mut relay, "list@example.org", &to, body, 100);
    assert_eq!(d.delivered(), 2);
    assert_eq!(
        relay.commands()[1],
        "MAIL FROM:<list@example.org> BODY=8BITMIME SMTPUTF8"
    );
    // Not offered: no parameter; the internationalised recipient fails locally, unsent, and
    // the other one is delivered.
    let relay = Relay::new(&["PIPELINING"]);
    let (mut s, mut relay) = connect_with(relay, &data_cfg(16));
    let d = deliver(&mut s, &mut relay, "list@example.org", &to, body, 100);
    assert_eq!(d.delivered(), 1);
    assert!(d.results[1].is_failed());
    assert_eq!(d.results[1].reply.code, 553);
    assert!(d.results[1].reply.to_string().contains("SMTPUTF8"));
    assert_eq!(relay.commands()[1], "MAIL FROM:<list@example.org>");
    assert!(relay.commands().iter().all(|c| !c.contains("jörg")));
    // An ASCII message asks for nothing.
    let relay = Relay::new(&["PIPELINING", "8BITMIME", "SMTPUTF8"]);
    let (mut s, mut relay) = connect_with(relay, &data_cfg(16));
    let d = deliver(&mut s, &mut relay, "list@example.org", &to[..1], MSG, 100);
    assert_eq!(d.delivered(), 1);
    assert_eq!(relay.commands()[1], "MAIL FROM:<list@example.org>");
}

#[test]
fn utf8_header_fields_take_smtputf8_when_offered_and_go_as_8bit_otherwise() {
    let body = "From: list@example.org\r\nSubject: Grüße aus Köln\r\n\r\nÄ\r\n".as_bytes();
    let to = vec![
        "plain@example.net".to_string(),
        "other@example.net".to_string(),
    ];
    // Offered: SMTPUTF8 for an all-ASCII envelope, because of the header fields.
    let relay = Relay::new(&["PIPELINING", "8BITMIME", "SMTPUTF8"]);
    let (mut s, mut relay) = connect_with(relay, &data_cfg(16));
    let d = deliver(&mut s, &mut relay, "list@example.org", &to, body, 100);
    assert_eq!(d.delivered(), 2);
    assert_eq!(
        relay.commands()[1],
        "MAIL FROM:<list@example.org> BODY=8BITMIME SMTPUTF8"
    );
    assert_eq!(relay.delivered(), to);
    // Not offered (8BITMIME or not): the message goes as 8-bit data, as it did before
    // SMTPUTF8 was known here, and the next message of the same window too.
    for (caps, mail) in [
        (
            &["PIPELINING", "8BITMIME"][..],
            "MAIL FROM:<list@example.org> BODY=8BITMIME",
        ),
        (&["PIPELINING"][..], "MAIL FROM:<list@example.org>"),
    ] {
        let relay = Relay::new(caps);
        let (mut s, mut relay) = connect_with(relay, &data_cfg(16));
        let next = vec!["next@example.net".to_string()];
        let ms = vec![
            Msg {
                from: "list@example.org",
                rcpts: &to,
                message: body,
            },
            Msg {
                from: "list@example.org",
                rcpts: &next,
                message: MSG,
            },
        ];
        let d = deliver_many(&mut s, &mut relay, &ms, 100);
        assert_eq!(d[0].delivered(), 2, "{caps:?}");
        assert_eq!(d[1].delivered(), 1);
        let mut want = to.clone();
        want.extend(next.iter().cloned());
        assert_eq!(relay.delivered(), want);
        assert_eq!(relay.commands()[1], mail, "{caps:?}");
    }
}

/// A recipient's reply in the property test.
fn rcpt_reply() -> impl Strategy<Value = Option<&'static str>> {
    prop_oneof![
        4 => Just(None),
        1 => Just(Some("450 4.2.1 try later")),
        1 => Just(Some("550 5.1.1 unknown")),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    /// For any window, any replies and any fault, every recipient of every message gets
    /// exactly one outcome, the relay took each at most once, "delivered" means the relay
    /// said 2yz to that recipient's own message, and no outcome crosses messages.
    #[test]
    fn every_recipient_gets_one_outcome_that_never_crosses_messages(
        window in 1usize..6,
        chunking in any::<bool>(),
        shape in prop::collection::vec(prop::collection::vec(rcpt_reply(), 1..5), 1..7),
        limit in prop::option::of(1usize..4),
        finals in prop::collection::vec(
            prop_oneof![6 => Just("250 2.6.0 queued"), 1 => Just("451 4.3.0 later"),
                        1 => Just("554 5.6.0 rejected")], 0..8),
        fault in prop_oneof![
            3 => Just(None),
            1 => (2usize..40).prop_map(|n| Some((0, n))),
            1 => (2usize..40).prop_map(|n| Some((1, n))),
            1 => (1usize..200).prop_map(|n| Some((2, n))),
        ],
    ) {
        let to: Vec<Vec<String>> =
            shape.iter().enumerate().map(|(j, r)| addrs(j, r.len())).collect();
        let mut relay = Relay {
            limit,
            too_many: "452 4.5.3 Too many recipients".into(),
            finals: finals.iter().map(|s| s.to_string()).collect(),
            ..Relay::pipelining()
        };
        for (j, replies) in shape.iter().enumerate() {
            for (i, r) in replies.iter().enumerate() {
                if let Some(r) = r {
                    relay.rcpt.insert(format!("m{j}u{i}@example.net"), r.to_string());
                }
            }
        }
        match fault {
            Some((0, n)) => relay.close_at = Some(n),
            Some((1, n)) => relay.reply_421_at = Some(n),
            Some((_, n)) => relay.close_in_data_after = Some(n),
            None => {}
        }
        let cfg = if chunking { bdat_cfg(window) } else { data_cfg(window) };
        let (mut s, mut relay) = connect_with(relay, &cfg);
        let d = deliver_many(&mut s, &mut relay, &msgs(&to, MSG), 100);
        prop_assert_eq!(d.len(), to.len());
        // What the relay took with a 2yz: address -> (message index by its prefix, count).
        let mut took: HashMap<String, usize> = HashMap::new();
        for m in relay.messages.iter().filter(|m| m.reply.starts_with('2')) {
            for a in &m.rcpts {
                *took.entry(a.clone()).or_insert(0) += 1;
            }
            // One transaction carries one message's recipients only.
            let owner = m.rcpts.first().map_or("", |a| a.split('u').next().unwrap()).to_string();
            prop_assert!(m.rcpts.iter().all(|a| a.split('u').next().unwrap() == owner));
        }
        for (j, dj) in d.iter().enumerate() {
            prop_assert_eq!(dj.results.len(), to[j].len());
            for (i, r) in dj.results.iter().enumerate() {
                let a = &to[j][i];
                let n = took.get(a).copied().unwrap_or(0);
                prop_assert!(n <= 1, "{} taken {} times", a, n);
                prop_assert_eq!(r.is_delivered(), n == 1, "{}: {:?}", a, r);
                if let Some(refusal) = shape[j][i] {
                    // A recipient the relay refused keeps that refusal's verdict (or a
                    // deferral when the connection went first).
                    prop_assert!(!r.is_delivered());
                    if refusal.starts_with('5') && r.is_failed() {
                        prop_assert_eq!(r.reply.code, 550);
                    }
                }
            }
        }
        if fault.is_none() {
            // Nothing lost: every recipient the relay accepted and whose message got 250 is
            // delivered; only refusals and the finals' 4yz/5yz decide the rest.
            prop_assert!(s.is_usable());
            prop_assert!(d.iter().all(|d| d.connection_lost.is_none()));
        }
    }
}
