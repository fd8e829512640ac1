//! The spool's in-memory index of queued copies: which are claimable now (per pool, oldest
//! first), which wait for a retry time, which a claim is reading, which are in flight; and a
//! cache of job messages.
//!
//! Every queued copy is in exactly one of those four places at every moment, each move from one
//! to the next made under the one lock that guards the index, so [`Index::queued_copies`] is
//! exact whenever it is read: "nothing queued" never shows while a copy is between two places.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;
use jiff::Timestamp;

use crate::config::{Pool, PoolSet};

/// A job's envelope sender and message, shared by its copies.
#[derive(Debug)]
pub(super) struct JobInfo {
    pub(super) mail_from: String,
    pub(super) message: Bytes,
    pub(super) created: Timestamp,
}

/// A claimed copy, as the writer needs it to record the outcomes.
#[derive(Debug, Clone)]
pub(super) struct InFlight {
    pub(super) job_id: i64,
    pub(super) pool: Pool,
    /// Addresses, one per line.
    pub(super) rcpts: String,
    pub(super) n: usize,
    pub(super) attempts: u32,
    pub(super) job_created: Timestamp,
    /// It holds every recipient of its job (so it is the job's only copy, and no recipient of
    /// the job has an outcome yet): once it is done, so is the job.
    pub(super) whole_job: bool,
    /// Its outcomes are on their way to the writer: it was sent, so it is never given back.
    pub(super) completing: bool,
}

#[derive(Debug)]
pub(super) struct Index {
    ready: Vec<BTreeSet<i64>>,
    /// (not_before ms, copy id).
    deferred: Vec<BTreeSet<(i64, i64)>>,
    /// Taken from `ready` by a claim that is reading the copy from the database.
    claiming: HashMap<i64, Pool>,
    in_flight: HashMap<i64, InFlight>,
    /// Ordered by id: the cache evicts the newest first.
    jobs: BTreeMap<i64, Arc<JobInfo>>,
    /// Bytes of messages in `jobs`.
    cached_bytes: usize,
    /// Rows of claimable copies read ahead of their claims (a claim that reads the database
    /// reads the next ones too, in the same transaction): a claim of one of them needs no read.
    /// A queued copy's row changes only when a completion keeps deferred recipients in it, and
    /// only while it is in flight, so these stay true until the copy is claimed.
    prefetched: HashMap<i64, InFlight>,
    /// Copies whose rows a claim is reading ahead now: not handed to another claim to read
    /// ahead too (two claims at once read the same rows otherwise: 896 rows read twice in a
    /// run of 3,000 copies with 10 workers).
    reading_ahead: HashSet<i64>,
    /// Completions that rewrote a copy's row (deferred recipients kept): rows read across one
    /// of them are not kept (see [`Index::store_prefetched`]).
    row_changes: u64,
}

/// Most rows read ahead and kept in [`Index`] at once.
pub(super) const PREFETCH_MAX: usize = 256;

/// The message cache holds at most this many jobs and about this many bytes (one message
/// larger than the budget is still cached on its own). The jobs of copies in flight stay cached
/// until their last copy is done, and with single-recipient jobs (one copy each) a worker holds
/// up to (COMPLETIONS_OUTSTANDING + 1) x MAXBSMTP of them: 256 jobs made the cache evict the
/// jobs of rows just read ahead, read again at their claim. Their messages are held by the
/// claimed copies anyway, so the count costs little memory; the bytes bound stays.
const JOB_CACHE: usize = 4096;
const JOB_CACHE_BYTES: usize = 256 * 1024 * 1024;

impl Index {
    pub(super) fn new() -> Self {
        Self {
            ready: vec![BTreeSet::new(); Pool::COUNT],
            deferred: vec![BTreeSet::new(); Pool::COUNT],
            claiming: HashMap::new(),
            in_flight: HashMap::new(),
            jobs: BTreeMap::new(),
            cached_bytes: 0,
            prefetched: HashMap::new(),
            reading_ahead: HashSet::new(),
            row_changes: 0,
        }
    }

    /// A queued copy: claimable now, or from `not_before` (ms since the epoch).
    pub(super) fn add(&mut self, id: i64, pool: Pool, not_before: i64, now: i64) {
        if not_before > now {
            self.deferred[pool.index()].insert((not_before, id));
        } else {
            self.ready[pool.index()].insert(id);
        }
    }

    fn promote(&mut self, pools: PoolSet, now: i64) {
        for p in pools.iter() {
            let d = &mut self.deferred[p.index()];
            while let Some(&(nb, id)) = d.first() {
                if nb > now {
                    break;
                }
                d.pop_first();
                self.ready[p.index()].insert(id);
            }
        }
    }

    /// The first half of a claim: the oldest claimable copy of `pools` (deferred copies due by
    /// `now` included) leaves `ready` for `claiming`, where it still counts as queued. The claim
    /// ends with [`Index::finish_claim`], [`Index::abort_claim`] or [`Index::drop_claim`].
    pub(super) fn begin_claim(&mut self, pools: PoolSet, now: i64) -> Option<(i64, Pool)> {
        let (_, p) = self.next_claimable(pools, now)?;
        let id = self.ready[p.index()].pop_first()?;
        self.claiming.insert(id, p);
        Some((id, p))
    }

    /// Take copy `id` of pool `p`, which [`Index::next_claimable`] just named (nothing else
    /// changed the index since), for a claim, as [`Index::begin_claim`] would have; false if it
    /// is not claimable.
    pub(super) fn begin_claim_next(&mut self, id: i64, p: Pool) -> bool {
        if !self.ready[p.index()].remove(&id) {
            return false;
        }
        self.claiming.insert(id, p);
        true
    }

    /// The copy [`Index::begin_claim`] would take now, left where it is.
    pub(super) fn next_claimable(&mut self, pools: PoolSet, now: i64) -> Option<(i64, Pool)> {
        self.promote(pools, now);
        pools
            .iter()
            .filter_map(|p| self.ready[p.index()].first().map(|&id| (id, p)))
            .min()
    }

    /// An operator's flush: every deferred copy of `pools` is claimable now. Returns how many.
    pub(super) fn flush(&mut self, pools: PoolSet) -> u64 {
        let mut n = 0;
        for p in pools.iter() {
            let d = std::mem::take(&mut self.deferred[p.index()]);
            n += d.len() as u64;
            self.ready[p.index()].extend(d.into_iter().map(|(_, id)| id));
        }
        n
    }

    /// Take one queued copy that no worker holds (claimable or deferred) for a claim, as
    /// [`Index::begin_claim`] does; `None` if it is not waiting (in flight, or unknown).
    pub(super) fn begin_claim_of(&mut self, id: i64) -> Option<Pool> {
        let p = Pool::all().find(|p| {
            self.ready[p.index()].remove(&id) || {
                let d = &mut self.deferred[p.index()];
                let hit = d.iter().find(|(_, i)| *i == id).copied();
                hit.is_some_and(|k| d.remove(&k))
            }
        })?;
        self.claiming.insert(id, p);
        Some(p)
    }

    /// Whether copy `id` is held by a worker (being claimed or in flight).
    pub(super) fn is_held(&self, id: i64) -> bool {
        self.claiming.contains_key(&id) || self.in_flight.contains_key(&id)
    }

    /// The copy was read: it is in flight.
    pub(super) fn finish_claim(&mut self, id: i64, f: InFlight) {
        if self.claiming.remove(&id).is_some() {
            self.in_flight.insert(id, f);
        }
    }

    /// The copy could not be read: claimable again at once.
    pub(super) fn abort_claim(&mut self, id: i64) {
        if let Some(p) = self.claiming.remove(&id) {
            self.ready[p.index()].insert(id);
        }
    }

    /// The copy is not in the database (any more): forget it.
    pub(super) fn drop_claim(&mut self, id: i64) {
        self.claiming.remove(&id);
    }

    /// A copy in flight goes back untouched, claimable from `not_before` (ms; `None` = now).
    /// Returns false if it was not in flight, or if its outcomes are being recorded (it was
    /// sent: giving it back would send it again).
    pub(super) fn release(&mut self, id: i64, not_before: Option<i64>, now: i64) -> bool {
        match self.in_flight.get(&id) {
            Some(f) if !f.completing => {
                let pool = f.pool;
                self.in_flight.remove(&id);
                self.add(id, pool, not_before.unwrap_or(0), now);
                true
            }
            _ => false,
        }
    }

    /// The copy's outcomes go to the writer: it stays in flight until they are recorded.
    pub(super) fn mark_completing(&mut self, id: i64) {
        if let Some(f) = self.in_flight.get_mut(&id) {
            f.completing = true;
        }
    }

    pub(super) fn in_flight(&self, id: i64) -> Option<&InFlight> {
        self.in_flight.get(&id)
    }

    /// How many copies are in flight (claimed and not yet completed or given back).
    pub(super) fn in_flight_len(&self) -> usize {
        self.in_flight.len()
    }

    pub(super) fn in_flight_copies(&self) -> impl Iterator<Item = &InFlight> {
        self.in_flight.values()
    }

    /// A copy's outcomes are recorded: it is done, or (when `retry_at` is given, ms) it waits
    /// for its retry with the recipients that were deferred.
    pub(super) fn complete(&mut self, id: i64, retry_at: Option<i64>) {
        if let Some(f) = self.in_flight.remove(&id) {
            if let Some(nb) = retry_at {
                self.deferred[f.pool.index()].insert((nb, id));
                self.row_changes += 1;
            }
        }
        self.prefetched.remove(&id);
    }

    /// How many rows are read ahead.
    #[cfg(test)]
    pub(super) fn prefetched(&self) -> usize {
        self.prefetched.len()
    }

    /// The recipient count of copy `id`, if its row is read ahead.
    pub(super) fn prefetched_rcpts(&self, id: i64) -> Option<usize> {
        self.prefetched.get(&id).map(|f| f.n)
    }

    /// The row of copy `id` read ahead, if any (taken: a claim of it uses it once).
    pub(super) fn take_prefetched(&mut self, id: i64) -> Option<InFlight> {
        self.prefetched.remove(&id)
    }

    /// Up to `n` of the next claimable copies of `pools` (oldest first) whose rows are not read
    /// ahead yet, and the count of row changes to hand to [`Index::store_prefetched`] with
    /// their rows.
    pub(super) fn prefetch_candidates(&mut self, pools: PoolSet, n: usize) -> (Vec<i64>, u64) {
        let n =
            n.min(PREFETCH_MAX.saturating_sub(self.prefetched.len() + self.reading_ahead.len()));
        let mut ids: Vec<i64> = pools
            .iter()
            .flat_map(|p| {
                self.ready[p.index()]
                    .iter()
                    .filter(|id| {
                        !self.prefetched.contains_key(id) && !self.reading_ahead.contains(id)
                    })
                    .take(n)
                    .copied()
            })
            .collect();
        ids.sort_unstable();
        ids.truncate(n);
        self.reading_ahead.extend(&ids);
        (ids, self.row_changes)
    }

    /// Keep rows read ahead (`ids`, `read_at`: what [`Index::prefetch_candidates`] returned;
    /// `rows`: those read, of copies the database still has): only those of copies still
    /// claimable, and none if a completion rewrote a row meanwhile (the read may have seen a
    /// copy's row before it changed).
    pub(super) fn store_prefetched(
        &mut self,
        ids: &[i64],
        rows: Vec<(i64, InFlight)>,
        read_at: u64,
    ) {
        self.forget_read_ahead(ids);
        if read_at != self.row_changes {
            return;
        }
        for (id, f) in rows {
            if self.prefetched.len() >= PREFETCH_MAX {
                break;
            }
            if self.ready[f.pool.index()].contains(&id) {
                self.prefetched.insert(id, f);
            }
        }
    }

    /// The read ahead of `ids` ([`Index::prefetch_candidates`]) is over without rows to keep
    /// (it failed).
    pub(super) fn forget_read_ahead(&mut self, ids: &[i64]) {
        for id in ids {
            self.reading_ahead.remove(id);
        }
    }

    /// The earliest retry time (ms) of a deferred copy of `pools`.
    pub(super) fn next_due(&self, pools: PoolSet) -> Option<i64> {
        pools
            .iter()
            .filter_map(|p| self.deferred[p.index()].first().map(|&(nb, _)| nb))
            .min()
    }

    /// Copies still queued: claimable, waiting for a retry, being claimed or in flight.
    pub(super) fn queued_copies(&self) -> u64 {
        let r: usize = self.ready.iter().map(BTreeSet::len).sum();
        let d: usize = self.deferred.iter().map(BTreeSet::len).sum();
        (r + d + self.claiming.len() + self.in_flight.len()) as u64
    }

    pub(super) fn cached_job(&self, job_id: i64) -> Option<Arc<JobInfo>> {
        self.jobs.get(&job_id).cloned()
    }

    pub(super) fn cache_job(&mut self, job_id: i64, job: Arc<JobInfo>) {
        let size = job.message.len();
        // Evict the newest jobs first: FIFO claims come back to the oldest soonest.
        while !self.jobs.is_empty()
            && (self.jobs.len() >= JOB_CACHE || self.cached_bytes + size > JOB_CACHE_BYTES)
        {
            let Some(&k) = self.jobs.keys().next_back() else {
                break;
            };
            self.uncache_job(k);
        }
        self.cached_bytes += size;
        if let Some(old) = self.jobs.insert(job_id, job) {
            self.cached_bytes -= old.message.len();
        }
    }

    pub(super) fn uncache_job(&mut self, job_id: i64) {
        if let Some(old) = self.jobs.remove(&job_id) {
            self.cached_bytes -= old.message.len();
        }
    }
}

#[cfg(test)]
mod tests {
    //! A model of where each copy is, checked against the index after every step of random
    //! sequences, claims split in their two halves with other steps in between.

    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Place {
        Ready,
        Deferred(i64),
        Claiming,
        InFlight,
        /// In flight, its outcomes on their way to the writer.
        Completing,
    }

    #[derive(Debug, Clone)]
    enum Step {
        Add {
            id: i64,
            pool: usize,
            delay: i64,
        },
        BeginClaim {
            pools: u32,
        },
        FinishClaim {
            pick: usize,
        },
        AbortClaim {
            pick: usize,
        },
        DropClaim {
            pick: usize,
        },
        Release {
            pick: usize,
            delay: Option<i64>,
        },
        MarkCompleting {
            pick: usize,
        },
        Complete {
            pick: usize,
            retry_in: Option<i64>,
        },
        Tick {
            ms: i64,
        },
        /// An operator's flush of some pools.
        Flush {
            pools: u32,
        },
        /// A cancel's claim of one given copy.
        ClaimOf {
            pick: usize,
        },
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            3 => (0i64..40, 0usize..3, prop_oneof![Just(0i64), 1i64..50])
                .prop_map(|(id, pool, delay)| Step::Add { id, pool, delay }),
            4 => (1u32..8).prop_map(|pools| Step::BeginClaim { pools }),
            3 => any::<usize>().prop_map(|pick| Step::FinishClaim { pick }),
            1 => any::<usize>().prop_map(|pick| Step::AbortClaim { pick }),
            1 => any::<usize>().prop_map(|pick| Step::DropClaim { pick }),
            2 => (any::<usize>(), proptest::option::of(1i64..50))
                .prop_map(|(pick, delay)| Step::Release { pick, delay }),
            2 => any::<usize>().prop_map(|pick| Step::MarkCompleting { pick }),
            3 => (any::<usize>(), proptest::option::of(1i64..50))
                .prop_map(|(pick, retry_in)| Step::Complete { pick, retry_in }),
            2 => (1i64..30).prop_map(|ms| Step::Tick { ms }),
            1 => (1u32..8).prop_map(|pools| Step::Flush { pools }),
            2 => any::<usize>().prop_map(|pick| Step::ClaimOf { pick }),
        ]
    }

    fn pool(i: usize) -> Pool {
        Pool::from_index(i).expect("pool index")
    }

    /// Two claims reading ahead at once get different rows to read; rows whose read ended
    /// (kept, or failed) can be read ahead again, and the rows kept are not handed out again.
    #[test]
    fn two_reads_ahead_at_once_never_read_the_same_rows() {
        let mut idx = Index::new();
        let a = pool(0);
        for id in 1..=10 {
            idx.add(id, a, 0, 0);
        }
        let all = PoolSet::from_iter([a]);
        let (first, at) = idx.prefetch_candidates(all, 4);
        let (second, _) = idx.prefetch_candidates(all, 4);
        assert_eq!(first, [1, 2, 3, 4]);
        assert_eq!(second, [5, 6, 7, 8]);
        // The first read keeps its rows; the second fails.
        let rows = first.iter().map(|id| (*id, in_flight(a))).collect();
        idx.store_prefetched(&first, rows, at);
        idx.forget_read_ahead(&second);
        assert_eq!(idx.prefetched(), 4);
        let (third, _) = idx.prefetch_candidates(all, 8);
        assert_eq!(third, [5, 6, 7, 8, 9, 10]);
    }

    fn pool_set(bits: u32) -> PoolSet {
        (0..3).filter(|i| bits & (1 << i) != 0).map(pool).collect()
    }

    fn in_flight(pool: Pool) -> InFlight {
        InFlight {
            job_id: 1,
            pool,
            rcpts: "a@b".into(),
            n: 1,
            attempts: 0,
            job_created: Timestamp::UNIX_EPOCH,
            whole_job: true,
            completing: false,
        }
    }

    /// The `pick`-th copy (in id order) of those in `place`.
    fn nth(
        model: &BTreeMap<i64, (Pool, Place)>,
        place: fn(Place) -> bool,
        pick: usize,
    ) -> Option<i64> {
        let ids: Vec<i64> = model
            .iter()
            .filter(|(_, (_, p))| place(*p))
            .map(|(&id, _)| id)
            .collect();
        (!ids.is_empty()).then(|| ids[pick % ids.len()])
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn queued_copies_is_exact_at_every_step(steps in proptest::collection::vec(step(), 1..120)) {
            let mut idx = Index::new();
            let mut model: BTreeMap<i64, (Pool, Place)> = BTreeMap::new();
            let mut now = 1_000i64;
            for s in steps {
                match s {
                    Step::Add { id, pool: p, delay } => {
                        // Ids are unique: ingest hands out each once.
                        if model.contains_key(&id) {
                            continue;
                        }
                        idx.add(id, pool(p), now + delay, now);
                        let place = if delay > 0 { Place::Deferred(now + delay) } else { Place::Ready };
                        model.insert(id, (pool(p), place));
                    }
                    Step::BeginClaim { pools } => {
                        let set = pool_set(pools);
                        for (_, (p, place)) in model.iter_mut() {
                            if let Place::Deferred(nb) = *place {
                                if nb <= now && set.contains(*p) {
                                    *place = Place::Ready;
                                }
                            }
                        }
                        let expect = model
                            .iter()
                            .filter(|(_, (p, place))| *place == Place::Ready && set.contains(*p))
                            .map(|(&id, (p, _))| (id, *p))
                            .next();
                        let got = idx.begin_claim(set, now);
                        prop_assert_eq!(got, expect, "the oldest claimable copy");
                        if let Some((id, _)) = got {
                            model.get_mut(&id).expect("known").1 = Place::Claiming;
                        }
                    }
                    Step::FinishClaim { pick } => {
                        if let Some(id) = nth(&model, |p| p == Place::Claiming, pick) {
                            let p = model[&id].0;
                            idx.finish_claim(id, in_flight(p));
                            model.get_mut(&id).expect("known").1 = Place::InFlight;
                        }
                    }
                    Step::AbortClaim { pick } => {
                        if let Some(id) = nth(&model, |p| p == Place::Claiming, pick) {
                            idx.abort_claim(id);
                            model.get_mut(&id).expect("known").1 = Place::Ready;
                        }
                    }
                    Step::DropClaim { pick } => {
                        if let Some(id) = nth(&model, |p| p == Place::Claiming, pick) {
                            idx.drop_claim(id);
                            model.remove(&id);
                        }
                    }
                    Step::MarkCompleting { pick } => {
                        if let Some(id) = nth(&model, |p| p == Place::InFlight, pick) {
                            idx.mark_completing(id);
                            model.get_mut(&id).expect("known").1 = Place::Completing;
                        }
                    }
                    Step::Release { pick, delay } => {
                        // Also tried on a copy that is not in flight, or whose outcomes are
                        // being recorded: nothing changes then.
                        let id = nth(&model, |p| p == Place::InFlight, pick)
                            .or_else(|| model.keys().nth(pick % model.len().max(1)).copied());
                        if let Some(id) = id {
                            let was = model[&id].1 == Place::InFlight;
                            prop_assert_eq!(idx.release(id, delay.map(|d| now + d), now), was);
                            if was {
                                model.get_mut(&id).expect("known").1 = match delay {
                                    Some(d) => Place::Deferred(now + d),
                                    None => Place::Ready,
                                };
                            }
                        }
                    }
                    Step::Complete { pick, retry_in } => {
                        // The writer records what was marked completing (or, in older paths,
                        // what is simply in flight).
                        if let Some(id) = nth(&model, |p| matches!(p, Place::InFlight | Place::Completing), pick) {
                            idx.complete(id, retry_in.map(|r| now + r));
                            match retry_in {
                                Some(r) => model.get_mut(&id).expect("known").1 = Place::Deferred(now + r),
                                None => {
                                    model.remove(&id);
                                }
                            }
                        }
                    }
                    Step::Tick { ms } => now += ms,
                    Step::Flush { pools } => {
                        let set = pool_set(pools);
                        let mut n = 0;
                        for (_, (p, place)) in model.iter_mut() {
                            if matches!(place, Place::Deferred(_)) && set.contains(*p) {
                                *place = Place::Ready;
                                n += 1;
                            }
                        }
                        prop_assert_eq!(idx.flush(set), n, "every deferred copy of the pools");
                    }
                    Step::ClaimOf { pick } => {
                        if let Some(id) = model.keys().nth(pick % model.len().max(1)).copied() {
                            let (p, place) = model[&id];
                            let held = matches!(place, Place::Claiming | Place::InFlight | Place::Completing);
                            prop_assert_eq!(idx.is_held(id), held);
                            let waiting = matches!(place, Place::Ready | Place::Deferred(_));
                            prop_assert_eq!(idx.begin_claim_of(id), waiting.then_some(p));
                            if waiting {
                                model.get_mut(&id).expect("known").1 = Place::Claiming;
                            }
                        }
                    }
                }
                prop_assert_eq!(idx.queued_copies(), model.len() as u64);
                let due = model
                    .values()
                    .filter_map(|(_, p)| match p {
                        Place::Deferred(nb) => Some(*nb),
                        _ => None,
                    })
                    .min();
                prop_assert_eq!(idx.next_due(PoolSet::ALL), due);
            }
        }
    }
}
