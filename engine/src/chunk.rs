//! Splitting a job's recipients into copies of at most MAXBSMTP recipients (COPY-1), and the
//! SORT_RECIPIENTS orders (COPY-2).
//!
//! - `SORT_RECIPIENTS=0`: recipients keep the job's order; copies are consecutive runs of
//!   MAXBSMTP (the last one shorter).
//! - `1`: recipients are sorted by domain (case-insensitive), then by address; then cut as for 0.
//! - `2`: only when a job has more than MAXBSMTP recipients, they are sorted as for 1 and each
//!   domain's recipients are kept together in one copy where they fit: a domain that does not
//!   fit in the current copy starts a new one; a domain larger than MAXBSMTP fills whole copies
//!   of its own and its remainder may share a copy with the next domains.
//!
//! Because sorting puts each domain's recipients next to each other, a plan is just a list of
//! copy sizes over the (sorted or not) recipient sequence; ingest sorts a million recipients
//! in SQLite and applies these sizes while streaming, and [`chunk`] does the whole thing in
//! memory for small inputs and tests.

use std::cmp::Ordering;

/// SORT_RECIPIENTS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortMode {
    /// 0: job order.
    Unsorted,
    /// 1: by domain, then address.
    Sorted,
    /// 2: sorted and domains kept together, only for jobs above MAXBSMTP.
    DomainGrouped,
}

impl SortMode {
    /// 0, 1, 2; anything else is treated as 0.
    pub fn from_setting(v: u8) -> Self {
        match v {
            1 => SortMode::Sorted,
            2 => SortMode::DomainGrouped,
            _ => SortMode::Unsorted,
        }
    }
    /// Whether a job of `total` recipients is reordered.
    pub fn sorts(self, total: u64, max: u32) -> bool {
        match self {
            SortMode::Unsorted => false,
            SortMode::Sorted => true,
            SortMode::DomainGrouped => total > u64::from(max),
        }
    }
}

/// The domain of an address (after the last `@`), or "" when it has none.
pub fn domain_of(addr: &str) -> &str {
    addr.rfind('@').map_or("", |i| &addr[i + 1..])
}

/// The domain as the sort key uses it: ASCII-lowercased.
pub fn domain_key(addr: &str) -> String {
    domain_of(addr).to_ascii_lowercase()
}

/// The SORT_RECIPIENTS order: domain (case-insensitive), then the address as written.
pub fn compare_recipients(a: &str, b: &str) -> Ordering {
    let (da, db) = (domain_of(a), domain_of(b));
    let by_domain = da
        .bytes()
        .map(|c| c.to_ascii_lowercase())
        .cmp(db.bytes().map(|c| c.to_ascii_lowercase()));
    by_domain.then_with(|| a.cmp(b))
}

/// Copy sizes for `total` recipients cut every `max` (modes 0 and 1, and mode 2 for small jobs).
pub fn uniform_sizes(total: u64, max: u32) -> impl Iterator<Item = u32> {
    let max = max.max(1);
    let full = total / u64::from(max);
    let rem = (total % u64::from(max)) as u32;
    (0..full).map(move |_| max).chain((rem > 0).then_some(rem))
}

/// Copy sizes for mode 2 over consecutive domain groups of the given sizes (in sorted order).
pub fn grouped_sizes(group_sizes: &[u32], max: u32) -> Vec<u32> {
    let max = max.max(1);
    let mut sizes = Vec::new();
    let mut current = 0u32;
    for &g in group_sizes {
        if g == 0 {
            continue;
        }
        if current + g <= max {
            current += g;
            continue;
        }
        // Does not fit in the current copy: start a new one.
        if current > 0 {
            sizes.push(current);
        }
        if g <= max {
            current = g;
        } else {
            let full = g / max;
            sizes.extend(std::iter::repeat_n(max, full as usize));
            current = g % max;
        }
    }
    if current > 0 {
        sizes.push(current);
    }
    sizes
}

/// The whole plan in memory: copies as lists of indices into `rcpts`, in delivery order.
pub fn chunk<S: AsRef<str>>(rcpts: &[S], max: u32, mode: SortMode) -> Vec<Vec<usize>> {
    let total = rcpts.len() as u64;
    let mut order: Vec<usize> = (0..rcpts.len()).collect();
    let sorted = mode.sorts(total, max);
    if sorted {
        order.sort_by(|&a, &b| compare_recipients(rcpts[a].as_ref(), rcpts[b].as_ref()));
    }
    let sizes: Vec<u32> = if sorted && mode == SortMode::DomainGrouped {
        let mut groups = Vec::new();
        let mut prev: Option<String> = None;
        for &i in &order {
            let d = domain_key(rcpts[i].as_ref());
            if prev.as_deref() == Some(d.as_str()) {
                if let Some(last) = groups.last_mut() {
                    *last += 1;
                }
            } else {
                groups.push(1u32);
                prev = Some(d);
            }
        }
        grouped_sizes(&groups, max)
    } else {
        uniform_sizes(total, max).collect()
    };
    let mut out = Vec::with_capacity(sizes.len());
    let mut it = order.into_iter();
    for s in sizes {
        out.push(it.by_ref().take(s as usize).collect());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform() {
        assert_eq!(
            uniform_sizes(2500, 1000).collect::<Vec<_>>(),
            vec![1000, 1000, 500]
        );
        assert_eq!(uniform_sizes(0, 10).count(), 0);
        assert_eq!(uniform_sizes(10, 10).collect::<Vec<_>>(), vec![10]);
    }

    #[test]
    fn grouped() {
        assert_eq!(grouped_sizes(&[3, 3, 3], 5), vec![3, 3, 3]);
        assert_eq!(grouped_sizes(&[2, 3, 4], 5), vec![5, 4]);
        assert_eq!(grouped_sizes(&[2, 12, 1], 5), vec![2, 5, 5, 3]);
    }

    #[test]
    fn domain_order_is_case_insensitive() {
        assert_eq!(compare_recipients("b@A.com", "a@b.com"), Ordering::Less);
        assert_eq!(domain_of("x@y@Z.org"), "Z.org");
        assert_eq!(domain_key("postmaster"), "");
    }
}
