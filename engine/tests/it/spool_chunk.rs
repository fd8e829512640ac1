//! MAXBSMTP chunking and SORT_RECIPIENTS grouping (pure), property-tested.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use smtpw_engine::chunk::{
    chunk, compare_recipients, domain_key, grouped_sizes, uniform_sizes, SortMode,
};

fn rcpts() -> impl Strategy<Value = Vec<String>> {
    // Few domains so that grouping matters; mixed case to exercise the case-insensitive key.
    prop::collection::vec(
        (
            "[a-e]{1,3}",
            prop::sample::select(vec!["a.com", "B.com", "b.COM", "c.org", "d.net", "e.io"]),
        )
            .prop_map(|(l, d)| format!("{l}@{d}")),
        0..300,
    )
}

fn mode() -> impl Strategy<Value = SortMode> {
    prop_oneof![
        Just(SortMode::Unsorted),
        Just(SortMode::Sorted),
        Just(SortMode::DomainGrouped)
    ]
}

proptest! {
    #[test]
    fn every_recipient_in_exactly_one_copy_and_none_above_max(rs in rcpts(), max in 1u32..60, m in mode()) {
        let copies = chunk(&rs, max, m);
        let mut seen = vec![0u32; rs.len()];
        for c in &copies {
            prop_assert!(!c.is_empty());
            prop_assert!(c.len() <= max as usize);
            for &i in c { seen[i] += 1; }
        }
        prop_assert!(seen.iter().all(|&n| n == 1));
    }

    #[test]
    fn unsorted_keeps_the_job_order(rs in rcpts(), max in 1u32..60) {
        let copies = chunk(&rs, max, SortMode::Unsorted);
        let flat: Vec<usize> = copies.iter().flatten().copied().collect();
        prop_assert_eq!(flat, (0..rs.len()).collect::<Vec<_>>());
        // Copies are full except the last.
        for c in copies.iter().rev().skip(1) { prop_assert_eq!(c.len(), max as usize); }
    }

    #[test]
    fn sorted_mode_orders_by_domain_then_address(rs in rcpts(), max in 1u32..60) {
        let copies = chunk(&rs, max, SortMode::Sorted);
        let flat: Vec<&str> = copies.iter().flatten().map(|&i| rs[i].as_str()).collect();
        for w in flat.windows(2) {
            prop_assert!(compare_recipients(w[0], w[1]) != std::cmp::Ordering::Greater, "{} > {}", w[0], w[1]);
        }
    }

    #[test]
    fn mode_two_keeps_domains_together_when_they_fit(rs in rcpts(), max in 1u32..60) {
        let copies = chunk(&rs, max, SortMode::DomainGrouped);
        if rs.len() <= max as usize {
            // Not above MAXBSMTP: one copy in job order.
            let flat: Vec<usize> = copies.iter().flatten().copied().collect();
            prop_assert_eq!(flat, (0..rs.len()).collect::<Vec<_>>());
            prop_assert!(copies.len() <= 1);
        } else {
            let mut per_domain: BTreeMap<String, BTreeSet<usize>> = BTreeMap::new();
            let mut size: BTreeMap<String, usize> = BTreeMap::new();
            for (ci, c) in copies.iter().enumerate() {
                for &i in c {
                    let d = domain_key(&rs[i]);
                    per_domain.entry(d.clone()).or_default().insert(ci);
                    *size.entry(d).or_default() += 1;
                }
            }
            for (d, cs) in &per_domain {
                let n = size[d];
                if n <= max as usize {
                    prop_assert_eq!(cs.len(), 1, "domain {} ({} rcpts) split over {:?}", d, n, cs);
                } else {
                    // A big domain uses as few copies as possible, plus at most one shared one.
                    prop_assert!(cs.len() <= n.div_ceil(max as usize) + 1);
                }
            }
        }
    }

    #[test]
    fn size_plans_cover_the_total(groups in prop::collection::vec(0u32..50, 0..40), max in 1u32..40) {
        let total: u32 = groups.iter().sum();
        let g = grouped_sizes(&groups, max);
        prop_assert_eq!(g.iter().sum::<u32>(), total);
        prop_assert!(g.iter().all(|&s| s >= 1 && s <= max));
        let u: Vec<u32> = uniform_sizes(u64::from(total), max).collect();
        prop_assert_eq!(u.iter().sum::<u32>(), total);
        prop_assert_eq!(u.len() as u32, total.div_ceil(max));
    }
}

#[test]
fn twenty_five_hundred_at_one_thousand() {
    let rs: Vec<String> = (0..2500).map(|i| format!("u{i}@d{}.com", i % 7)).collect();
    for m in [
        SortMode::Unsorted,
        SortMode::Sorted,
        SortMode::DomainGrouped,
    ] {
        let sizes: Vec<usize> = chunk(&rs, 1000, m).iter().map(Vec::len).collect();
        match m {
            SortMode::DomainGrouped => {
                // 7 domains of ~357: two per copy fit, a third does not.
                assert!(sizes.iter().all(|&s| s <= 1000), "{sizes:?}");
                assert_eq!(sizes.iter().sum::<usize>(), 2500);
                assert_eq!(sizes.len(), 4, "{sizes:?}");
            }
            _ => assert_eq!(sizes, vec![1000, 1000, 500]),
        }
    }
}
