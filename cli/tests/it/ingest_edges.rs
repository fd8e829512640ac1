//! `smtpw queue` counts the entries of `SPOOL/incoming/` as ingest and `--until-empty` do, odd
//! ones included. (The ingest cases themselves are the engine's `ingest_edges` tests.)

use smtpw_testkit::workload::{odd_incoming, ODD_ENTRIES as ODD};

use crate::SMTPW;

#[test]
fn queue_counts_what_ingest_and_until_empty_count() {
    let dir = tempfile::tempdir().unwrap();
    let spool_dir = dir.path().join("spool");
    odd_incoming(&spool_dir);
    drop(
        smtpw_engine::spool::SqliteSpool::open(
            &spool_dir,
            smtpw_engine::spool::SpoolOptions::default(),
            smtpw_engine::clock::SystemClock::shared(),
        )
        .unwrap(),
    );
    let work = smtpw_engine::spool::list_incoming(&spool_dir.join("incoming")).unwrap();
    assert_eq!(work.len(), 2 + ODD.len(), "{work:?}");
    let out = SMTPW.queue_cmd(&spool_dir).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["incoming_files"], work.len() as u64);
}
