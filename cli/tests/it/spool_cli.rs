//! `smtpw submit` and `smtpw queue` as a user runs them, including `queue` while a process owns
//! the spool.

use std::io::Write;
use std::process::Stdio;

use smtpw_engine::clock::SystemClock;
use smtpw_engine::config::PoolSet;
use smtpw_engine::spool::{CopyResult, Outcome, RcptOutcome, Spool, SpoolOptions, SqliteSpool};

use crate::SMTPW;

#[test]
fn submit_then_queue_while_the_spool_is_owned() {
    let dir = tempfile::tempdir().unwrap();
    let spool_dir = dir.path().join("spool");
    let msg = dir.path().join("m.eml");
    std::fs::write(&msg, "Subject: cli\n\n.leading dot\nbody\n").unwrap();

    // Recipients from standard input, with the forms a user may write.
    let mut child = SMTPW
        .command()
        .args([
            "submit",
            "--from",
            "owner@l.example",
            "--pool",
            "b",
            "--rcpts",
            "-",
            "--spool",
        ])
        .arg(&spool_dir)
        .arg(&msg)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"a@x.example\n<b@y.example>\n\n# comment\n  c@x.example  \n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let said = String::from_utf8(out.stdout).unwrap();
    assert!(
        said.contains("3 recipients") && said.contains("pool B"),
        "{said}"
    );

    let v = SMTPW.queue_json(&spool_dir);
    assert_eq!(v["incoming_files"], 1);
    assert_eq!(v["queued"], 0);

    // A process owns the spool (as the daemon would) and delivers part of it.
    let spool = SqliteSpool::open(
        &spool_dir,
        SpoolOptions {
            max_bsmtp: 2,
            ..Default::default()
        },
        SystemClock::shared(),
    )
    .unwrap();
    spool.ingest_blocking().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let c = spool.claim(PoolSet::ALL).await.unwrap().unwrap();
        assert_eq!(c.rcpts, vec!["a@x.example", "b@y.example"]);
        assert_eq!(
            &c.message[..],
            b"Subject: cli\r\n\r\n.leading dot\r\nbody\r\n"
        );
        let res = CopyResult {
            relay: Some("mx:25".into()),
            tls: None,
            rcpts: vec![
                RcptOutcome {
                    outcome: Outcome::Delivered,
                    reply: "250 ok".into(),
                },
                RcptOutcome {
                    outcome: Outcome::Failed,
                    reply: "550 no".into(),
                },
            ],
        };
        spool.complete(c.copy_id, res).await.unwrap();
    });
    let v = SMTPW.queue_json(&spool_dir);
    assert_eq!(
        (
            v["queued"].as_u64(),
            v["delivered"].as_u64(),
            v["failed"].as_u64()
        ),
        (Some(1), Some(1), Some(1))
    );
    assert_eq!(v["pools"][0]["pool"], "B");
    assert_eq!(v["pools"][0]["state"], "ready");
    assert_eq!(v["incoming_files"], 0);

    let out = SMTPW
        .command()
        .args(["queue", "--spool"])
        .arg(&spool_dir)
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("queued 1 recipients in 1 copies"), "{text}");
    assert!(text.contains("       1  550 no"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>()[..4] == ["B", "ready", "1", "1"]),
        "{text}"
    );

    // A second owner is refused with a clear error.
    let err =
        SqliteSpool::open(&spool_dir, SpoolOptions::default(), SystemClock::shared()).unwrap_err();
    assert!(
        err.to_string().contains("another process holds the lock"),
        "{err}"
    );

    // And once the owner is gone (WAL checkpointed and removed), `queue` still reads it.
    drop(spool);
    drop(rt);
    assert!(!spool_dir.join("spool.db-wal").exists());
    let v = SMTPW.queue_json(&spool_dir);
    assert_eq!(
        (v["queued"].as_u64(), v["delivered"].as_u64()),
        (Some(1), Some(1))
    );
}

#[test]
fn submit_rejects_bad_input_and_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let msg = dir.path().join("m.eml");
    std::fs::write(&msg, "Subject: x\n\nx\n").unwrap();
    let rcpts = dir.path().join("r.txt");
    std::fs::write(&rcpts, "ok@x.example\nnot an address\n").unwrap();
    let out = SMTPW
        .submit_cmd(&dir.path().join("sp"), "o@l", &rcpts, None, &msg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("invalid address \"not an address\""), "{err}");
    let left: Vec<_> = std::fs::read_dir(dir.path().join("sp/incoming"))
        .unwrap()
        .collect();
    assert!(
        left.is_empty(),
        "no job and no temporary file is left: {left:?}"
    );

    let out = SMTPW
        .command()
        .args([
            "submit", "--from", "o@l", "--pool", "AB", "--rcpts", "-", "--spool",
        ])
        .arg(dir.path().join("sp"))
        .arg(&msg)
        .output()
        .unwrap();
    assert!(!out.status.success());
}
