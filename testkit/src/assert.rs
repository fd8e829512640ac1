//! Delivery assertions: what a relay got against what was submitted, naming what is missing,
//! repeated or unexpected.

use std::collections::{BTreeMap, BTreeSet};

use crate::Failure;

/// How many times each item occurs.
pub fn counts<I: IntoIterator<Item = String>>(items: I) -> BTreeMap<String, u32> {
    let mut m = BTreeMap::new();
    for i in items {
        *m.entry(i).or_insert(0) += 1;
    }
    m
}

/// What was delivered against what was wanted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Deliveries {
    /// Wanted, never delivered (in the order wanted).
    pub missing: Vec<String>,
    /// Delivered more than once, with how many times.
    pub repeated: BTreeMap<String, u32>,
    /// Delivered, never wanted.
    pub unexpected: Vec<String>,
}

impl Deliveries {
    /// Compare the deliveries `got` (with repeats) with the recipients `want`.
    pub fn of(want: &[String], got: impl IntoIterator<Item = String>) -> Deliveries {
        let seen = counts(got);
        let wanted: BTreeSet<&String> = want.iter().collect();
        Deliveries {
            missing: want
                .iter()
                .filter(|w| !seen.contains_key(*w))
                .cloned()
                .collect(),
            repeated: seen
                .iter()
                .filter(|(_, n)| **n > 1)
                .map(|(k, n)| (k.clone(), *n))
                .collect(),
            unexpected: seen
                .keys()
                .filter(|k| !wanted.contains(k))
                .cloned()
                .collect(),
        }
    }

    /// Deliveries beyond the first, over all recipients.
    pub fn repeats(&self) -> u64 {
        self.repeated.values().map(|n| u64::from(n - 1)).sum()
    }

    /// Every wanted recipient delivered exactly once, and nothing else.
    pub fn exactly_once(&self) -> bool {
        self.missing.is_empty() && self.repeated.is_empty() && self.unexpected.is_empty()
    }

    /// The counts with the first few of each, for a failure message.
    pub fn describe(&self) -> String {
        format!(
            "{} missing (e.g. {:?}), {} delivered more than once (e.g. {:?}), {} unexpected (e.g. {:?})",
            self.missing.len(),
            self.missing.iter().take(3).collect::<Vec<_>>(),
            self.repeated.len(),
            self.repeated.iter().take(3).collect::<Vec<_>>(),
            self.unexpected.len(),
            self.unexpected.iter().take(3).collect::<Vec<_>>()
        )
    }
}

/// Every one of `want` delivered exactly once in `got` (and nothing else): Ok, or a failure naming
/// the first few missing, repeated and unexpected addresses.
pub fn exactly_once(want: &[String], got: Vec<String>, where_: &str) -> Result<(), Failure> {
    let d = Deliveries::of(want, got);
    if d.exactly_once() {
        return Ok(());
    }
    Err(Failure::new(
        format!(
            "each of the {} recipients delivered exactly once at {where_}",
            want.len()
        ),
        d.describe(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exactly_once_names_what_is_wrong() {
        let want: Vec<String> = vec!["a".into(), "b".into()];
        assert!(exactly_once(&want, vec!["b".into(), "a".into()], "x").is_ok());
        let f = exactly_once(&want, vec!["a".into(), "a".into(), "c".into()], "x").unwrap_err();
        assert!(f.got.contains("1 missing"), "{f}");
        assert!(f.got.contains("1 delivered more than once"), "{f}");
        assert!(f.got.contains("1 unexpected"), "{f}");
    }

    #[test]
    fn deliveries_count_repeats() {
        let want: Vec<String> = vec!["a".into(), "b".into(), "c".into()];
        let d = Deliveries::of(&want, ["a", "a", "a", "b", "b", "x"].map(String::from));
        assert_eq!(d.missing, vec!["c".to_string()]);
        assert_eq!(d.repeats(), 3);
        assert_eq!(d.unexpected, vec!["x".to_string()]);
        assert!(!d.exactly_once());
    }
}
