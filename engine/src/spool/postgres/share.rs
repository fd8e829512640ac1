//! DIST_FORWARD shares (DIST-4): the node that ingests a job splits its copies among the live
//! nodes of its DIST_FORWARD in proportion to their weights, counted in recipients.

use crate::config::DistEntry;
use crate::config::SELF;

/// The nodes that take a share, with their weights: DIST_FORWARD's entries with `SELF` read as
/// `me`, those of weight 0 and those not `alive` left out (with why, for the log). Without
/// DIST_FORWARD the node keeps every copy itself.
pub fn sharers(
    dist: &[DistEntry],
    me: &str,
    alive: impl Fn(&str) -> bool,
) -> (Vec<(String, u32)>, Vec<String>) {
    if dist.is_empty() {
        return (vec![(me.to_string(), 1)], Vec::new());
    }
    let mut out: Vec<(String, u32)> = Vec::new();
    let mut left_out = Vec::new();
    for e in dist {
        let name = if e.host.eq_ignore_ascii_case(SELF) {
            me.to_string()
        } else {
            e.host.clone()
        };
        if e.weight == 0 {
            continue;
        }
        let is_me = name.eq_ignore_ascii_case(me);
        if !is_me && !alive(&name) {
            left_out.push(name);
            continue;
        }
        match out.iter_mut().find(|(n, _)| n.eq_ignore_ascii_case(&name)) {
            Some((_, w)) => *w += e.weight,
            None => out.push((name, e.weight)),
        }
    }
    (out, left_out)
}

/// Splits copies among `sharers` by weight: each copy goes to the node furthest below its exact
/// share of the recipients given out once the copy is counted (ties to the earlier entry), so
/// that after any prefix each node's recipients stay close to its exact share.
#[derive(Debug)]
pub struct Splitter {
    nodes: Vec<(String, u32)>,
    given: Vec<u64>,
}

impl Splitter {
    /// A splitter over `nodes` (name, weight), nothing given out yet.
    pub fn new(nodes: Vec<(String, u32)>) -> Self {
        let given = vec![0; nodes.len()];
        Self { nodes, given }
    }

    /// The node that takes a copy of `n` recipients; `None` when nobody takes a share.
    pub fn next(&mut self, n: u64) -> Option<&str> {
        // The node furthest below its exact share of everything given out once this copy is:
        // deficit_i = (total + n) * w_i / W - given_i, compared scaled by W (no division).
        let weight: u128 = self.nodes.iter().map(|(_, w)| u128::from(*w)).sum();
        let total: u128 = self.given.iter().map(|g| u128::from(*g)).sum::<u128>() + u128::from(n);
        let mut best: Option<(usize, i128)> = None;
        for (i, (_, w)) in self.nodes.iter().enumerate() {
            if *w == 0 {
                continue;
            }
            let target = total * u128::from(*w);
            let deficit = i128::try_from(target).unwrap_or(i128::MAX)
                - i128::try_from(u128::from(self.given[i]) * weight).unwrap_or(i128::MAX);
            if best.is_none_or(|(_, d)| deficit > d) {
                best = Some((i, deficit));
            }
        }
        let (i, _) = best?;
        self.given[i] += n;
        Some(self.nodes[i].0.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entry(host: &str, weight: u32) -> DistEntry {
        DistEntry {
            host: host.to_string(),
            weight,
        }
    }

    #[test]
    fn zero_self_keeps_none_and_a_dead_node_gets_no_share() {
        let dist = [
            entry("SELF", 0),
            entry("A", 1),
            entry("B", 2),
            entry("C", 5),
        ];
        let (s, out) = sharers(&dist, "P", |n| n != "C");
        assert_eq!(s, vec![("A".to_string(), 1), ("B".to_string(), 2)]);
        assert_eq!(out, vec!["C".to_string()]);
        let (s, _) = sharers(&[], "P", |_| false);
        assert_eq!(s, vec![("P".to_string(), 1)]);
    }

    proptest! {
        /// After any number of copies, each node's recipients stay within one copy of its
        /// exact share.
        #[test]
        fn shares_follow_the_weights(weights in proptest::collection::vec(0u32..5, 1..5),
                                     sizes in proptest::collection::vec(1u64..100, 1..400)) {
            let nodes: Vec<(String, u32)> =
                weights.iter().enumerate().map(|(i, w)| (format!("n{i}"), *w)).collect();
            let total_w: u64 = weights.iter().map(|w| u64::from(*w)).sum();
            let mut s = Splitter::new(nodes.clone());
            let mut got = vec![0u64; nodes.len()];
            let mut total = 0u64;
            for n in &sizes {
                match s.next(*n) {
                    None => prop_assert_eq!(total_w, 0),
                    Some(name) => {
                        let i = nodes.iter().position(|(m, _)| m == name).unwrap();
                        got[i] += n;
                        total += n;
                    }
                }
            }
            if total_w > 0 {
                for (i, (_, w)) in nodes.iter().enumerate() {
                    let exact = total as f64 * f64::from(*w) / total_w as f64;
                    prop_assert!((got[i] as f64 - exact).abs() <= 100.0,
                        "node {} got {} of {}, exact share {}", i, got[i], total, exact);
                }
            }
        }
    }
}
