//! The whole conformance suite under `cargo test -p conformance`, through the same runner as
//! `cargo xtask conformance`. Fails listing every failing case with its message.

use conformance::report;
use conformance::runner::{self, Selection};
use conformance::scenarios;

#[test]
fn every_scenario_passes_in_every_mode() {
    let all = scenarios::all();
    let results = runner::run(&all, &Selection::default(), |_| {});
    let expected: usize = all.iter().map(|s| s.modes.len()).sum();
    assert_eq!(results.len(), expected, "every (scenario, mode) ran");
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
