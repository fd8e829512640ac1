//! The whole conformance suite under `cargo test -p conformance`, through the same runner as
//! `cargo xtask conformance`. Fails listing every failing case with its message.

use conformance::report::{self, Mode};
use conformance::runner::{self, Selection};
use conformance::scenarios;

#[test]
fn every_scenario_passes_in_every_mode() {
    let all = scenarios::all();
    let results = runner::run(&all, &Selection::default(), |_| {});
    let expected: usize = all.iter().map(|s| s.modes.len()).sum();
    // The real-time runs on a PostgreSQL spool: every scenario marked both_spools, or none
    // where PostgreSQL is not installed (testkit says so loudly).
    let on_pg = results
        .iter()
        .filter(|r| r.mode == Mode::RealTimePg)
        .count();
    let both = all.iter().filter(|s| s.both_spools).count();
    assert!(
        on_pg == both || on_pg == 0,
        "{on_pg} real-time-pg runs of {both}"
    );
    assert_eq!(
        results.len(),
        expected + on_pg,
        "every (scenario, mode) ran"
    );
    let failed: Vec<String> = results
        .iter()
        .filter(|r| !r.passed)
        .map(|r| {
            format!(
                "{} ({}):\n  {}",
                r.scenario,
                r.mode,
                r.failure.as_deref().unwrap_or("").replace('\n', "\n  ")
            )
        })
        .collect();
    println!("{}", report::table(&results));
    assert!(
        failed.is_empty(),
        "{} of {} cases failed:\n{}",
        failed.len(),
        results.len(),
        failed.join("\n")
    );
}
