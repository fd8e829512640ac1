//! DIST_FORWARD shares (DIST-4): the node that ingests a job splits its copies among the live
//! nodes of its DIST_FORWARD in proportion to their weights, counted in recipients; a job under
//! DIST_FORWARD_THRESHOLD is not split, and no node's share of a job is under
//! DIST_FORWARD_MINSIZE (DIST-3).

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

/// DIST_FORWARD_THRESHOLD and DIST_FORWARD_MINSIZE (DIST-3), in recipients; 0: not set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DistLimits {
    /// A job of fewer recipients is not shared out: the node that ingests it delivers it all.
    pub threshold: u64,
    /// No node's share of a job is smaller than this (a smaller one is folded into the
    /// others'); a job smaller than this goes whole to one node.
    pub minsize: u64,
}

impl DistLimits {
    /// SITE.CFG's DIST_FORWARD_THRESHOLD and DIST_FORWARD_MINSIZE.
    pub fn of(config: &crate::config::SiteConfig) -> Self {
        Self {
            threshold: u64::from(config.dist_forward_threshold),
            minsize: u64::from(config.dist_forward_minsize),
        }
    }
}

/// Splits copies among `sharers` by weight: each copy goes to the node furthest below its exact
/// share of the recipients given out once the copy is counted (ties to the earlier entry), so
/// that after any prefix each node's recipients stay close to its exact share.
#[derive(Debug)]
pub struct Splitter {
    nodes: Vec<(String, u32)>,
    given: Vec<u64>,
    /// The ingesting node (it keeps the jobs under the threshold).
    me: String,
    limits: DistLimits,
}

impl Splitter {
    /// A splitter over `nodes` (name, weight), nothing given out yet, without limits.
    pub fn new(nodes: Vec<(String, u32)>) -> Self {
        Self::with_limits(nodes, String::new(), DistLimits::default())
    }

    /// A splitter over `nodes` for jobs that node `me` ingests, with DIST_FORWARD_THRESHOLD
    /// and _MINSIZE.
    pub fn with_limits(nodes: Vec<(String, u32)>, me: String, limits: DistLimits) -> Self {
        let given = vec![0; nodes.len()];
        Self {
            nodes,
            given,
            me,
            limits,
        }
    }

    /// Starts from what this node gave out before (`prior`: recipients by lower-case node name,
    /// see [`Splitter::remember`]), so that the shares stay in proportion across jobs taken in
    /// one at a time (each listener message, each file), not only within one.
    pub fn continuing(mut self, prior: &std::collections::HashMap<String, u64>) -> Self {
        for (i, (name, _)) in self.nodes.iter().enumerate() {
            self.given[i] = prior.get(&name.to_ascii_lowercase()).copied().unwrap_or(0);
        }
        self
    }

    /// Keep what has been given out, for the next [`Splitter::continuing`].
    pub fn remember(&self, into: &mut std::collections::HashMap<String, u64>) {
        for (i, (name, _)) in self.nodes.iter().enumerate() {
            into.insert(name.to_ascii_lowercase(), self.given[i]);
        }
    }

    /// The node that takes a copy of `n` recipients; `None` when nobody takes a share.
    pub fn next(&mut self, n: u64) -> Option<&str> {
        let i = pick(&self.nodes, &self.given, n, |_| true)?;
        self.given[i] += n;
        Some(self.nodes[i].0.as_str())
    }

    /// The node of each copy of one job whose copies hold `sizes` recipients (`None`: nobody's
    /// share, whoever claims it first). A job under the threshold stays with the ingesting node
    /// whole; otherwise each copy goes as by [`Splitter::next`], then while a node's share of
    /// this job is under the minimum size, the smallest such share is taken back and its copies
    /// given to the other nodes that have a share, each to the one furthest below its exact
    /// share.
    pub fn split_job(&mut self, sizes: &[u64]) -> Vec<Option<String>> {
        let total: u64 = sizes.iter().sum();
        if total < self.limits.threshold {
            return vec![Some(self.me.clone()); sizes.len()];
        }
        let mut given = self.given.clone();
        let mut who: Vec<Option<usize>> = Vec::with_capacity(sizes.len());
        for &n in sizes {
            let i = pick(&self.nodes, &given, n, |_| true);
            if let Some(i) = i {
                given[i] += n;
            }
            who.push(i);
        }
        let mut got = vec![0u64; self.nodes.len()];
        for (w, &n) in who.iter().zip(sizes) {
            if let Some(i) = w {
                got[*i] += n;
            }
        }
        loop {
            let holders = got.iter().filter(|g| **g > 0).count();
            // The smallest share under the minimum (ties: the later node).
            let small = got
                .iter()
                .enumerate()
                .filter(|(_, g)| **g > 0 && **g < self.limits.minsize)
                .min_by_key(|(i, g)| (**g, std::cmp::Reverse(*i)))
                .map(|(i, _)| i);
            let Some(out) = small.filter(|_| holders > 1) else {
                break;
            };
            given[out] -= got[out];
            got[out] = 0;
            for (w, &n) in who.iter_mut().zip(sizes) {
                if *w == Some(out) {
                    let to = pick(&self.nodes, &given, n, |j| got[j] > 0);
                    if let Some(j) = to {
                        given[j] += n;
                        got[j] += n;
                    }
                    *w = to;
                }
            }
        }
        self.given = given;
        who.into_iter()
            .map(|w| w.map(|i| self.nodes[i].0.clone()))
            .collect()
    }
}

/// Among the nodes `eligible` lets in, the one furthest below its exact share of everything
/// given out once a copy of `n` recipients is: deficit_i = (total + n) * w_i / W - given_i,
/// compared scaled by W (no division); ties to the earlier node.
fn pick(
    nodes: &[(String, u32)],
    given: &[u64],
    n: u64,
    eligible: impl Fn(usize) -> bool,
) -> Option<usize> {
    let weight: u128 = nodes.iter().map(|(_, w)| u128::from(*w)).sum();
    let total: u128 = given.iter().map(|g| u128::from(*g)).sum::<u128>() + u128::from(n);
    let mut best: Option<(usize, i128)> = None;
    for (i, (_, w)) in nodes.iter().enumerate() {
        if *w == 0 || !eligible(i) {
            continue;
        }
        let target = total * u128::from(*w);
        let deficit = i128::try_from(target).unwrap_or(i128::MAX)
            - i128::try_from(u128::from(given[i]) * weight).unwrap_or(i128::MAX);
        if best.is_none_or(|(_, d)| deficit > d) {
            best = Some((i, deficit));
        }
    }
    best.map(|(i, _)| i)
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

    #[test]
    fn a_small_job_stays_home_and_a_small_share_is_folded() {
        let nodes = vec![("A".to_string(), 1), ("B".to_string(), 2)];
        let limits = DistLimits {
            threshold: 100,
            minsize: 40,
        };
        let mut s = Splitter::with_limits(nodes.clone(), "P".into(), limits);
        // 99 recipients: under the threshold, all with the ingesting node (even outside the
        // sharers, as a 0*SELF primary is).
        assert_eq!(s.split_job(&[50, 49]), vec![Some("P".to_string()); 2]);
        // 120 in copies of 10: A's exact share is 40, B's 80; both at least the minimum.
        let w = s.split_job(&[10; 12]);
        let a = w.iter().filter(|w| w.as_deref() == Some("A")).count();
        assert_eq!((a, w.len() - a), (4, 8));
        // 105: A's share would be 35 < 40: folded into B's.
        let mut s = Splitter::with_limits(nodes, "P".into(), limits);
        let w = s.split_job(&[15; 7]);
        assert!(w.iter().all(|w| w.as_deref() == Some("B")), "{w:?}");
    }

    #[test]
    fn one_copy_jobs_taken_one_at_a_time_still_follow_the_weights() {
        // Each job its own transaction (a listener message, a file): a fresh splitter per job
        // gave every one-copy job to the heaviest node; carried over, 30 jobs split 10:20.
        let nodes = vec![("W1".to_string(), 1), ("W2".to_string(), 2)];
        let mut kept = std::collections::HashMap::new();
        let mut got = [0u32; 2];
        for _ in 0..30 {
            let mut s = Splitter::with_limits(nodes.clone(), "P".into(), DistLimits::default())
                .continuing(&kept);
            match s.split_job(&[1])[0].as_deref() {
                Some("W1") => got[0] += 1,
                Some("W2") => got[1] += 1,
                other => panic!("{other:?}"),
            }
            s.remember(&mut kept);
        }
        assert_eq!(got, [10, 20]);
    }

    proptest! {
        /// Every copy of a job goes to a sharer (or, under the threshold, to the ingesting
        /// node); every node's share of a job is either nothing or at least the minimum size,
        /// unless the job goes whole to one node.
        #[test]
        fn no_share_under_the_minimum(weights in proptest::collection::vec(0u32..5, 1..5),
                                      jobs in proptest::collection::vec(
                                          proptest::collection::vec(1u64..100, 1..30), 1..20),
                                      threshold in 0u64..500,
                                      minsize in 0u64..500) {
            let nodes: Vec<(String, u32)> =
                weights.iter().enumerate().map(|(i, w)| (format!("n{i}"), *w)).collect();
            let total_w: u32 = weights.iter().sum();
            let limits = DistLimits { threshold, minsize };
            let mut s = Splitter::with_limits(nodes.clone(), "me".into(), limits);
            for sizes in &jobs {
                let total: u64 = sizes.iter().sum();
                let who = s.split_job(sizes);
                prop_assert_eq!(who.len(), sizes.len());
                if total < threshold {
                    prop_assert!(who.iter().all(|w| w.as_deref() == Some("me")));
                    continue;
                }
                if total_w == 0 {
                    prop_assert!(who.iter().all(Option::is_none));
                    continue;
                }
                let mut got = vec![0u64; nodes.len()];
                for (w, n) in who.iter().zip(sizes) {
                    let name = w.as_deref();
                    let i = nodes.iter().position(|(m, _)| Some(m.as_str()) == name);
                    prop_assert!(i.is_some(), "a copy went to {:?}", name);
                    let i = i.unwrap();
                    prop_assert!(nodes[i].1 > 0, "a copy went to a node of weight 0");
                    got[i] += n;
                }
                let holders = got.iter().filter(|g| **g > 0).count();
                prop_assert!(holders >= 1);
                if holders > 1 {
                    for g in &got {
                        prop_assert!(*g == 0 || *g >= minsize,
                            "a share of {} under the minimum {} (shares {:?})", g, minsize, got);
                    }
                }
            }
        }

        /// Without limits, splitting job by job is the copy-by-copy split.
        #[test]
        fn without_limits_a_job_splits_as_its_copies(
            weights in proptest::collection::vec(0u32..5, 1..5),
            jobs in proptest::collection::vec(proptest::collection::vec(1u64..100, 1..30), 1..20)) {
            let nodes: Vec<(String, u32)> =
                weights.iter().enumerate().map(|(i, w)| (format!("n{i}"), *w)).collect();
            let mut by_job = Splitter::with_limits(nodes.clone(), "me".into(), DistLimits::default());
            let mut by_copy = Splitter::new(nodes);
            for sizes in &jobs {
                let a = by_job.split_job(sizes);
                let b: Vec<Option<String>> =
                    sizes.iter().map(|n| by_copy.next(*n).map(str::to_owned)).collect();
                prop_assert_eq!(a, b);
            }
        }

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
