//! Completions handed to a spool's writer together ([`super::Spool::complete_many`]): one request
//! and one answer for the group, one result per copy.

use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use super::sqlite::lock;
use super::SpoolError;

/// The results of a group of completions, one per copy in the order given.
pub(super) type Results = Vec<Result<(), SpoolError>>;
/// How the writer answers a group (`Err`: the group as a whole, e.g. the writer stopped).
pub(super) type Answer = oneshot::Sender<Result<Results, SpoolError>>;

/// A group of completions waiting for their results; answered once every copy has one.
struct Group {
    state: Mutex<GroupState>,
}

struct GroupState {
    results: Vec<Option<Result<(), SpoolError>>>,
    left: usize,
    answer: Option<Answer>,
}

impl Group {
    fn set(&self, slot: usize, r: Result<(), SpoolError>) {
        let mut st = lock(&self.state);
        let Some(cell) = st.results.get_mut(slot) else {
            return;
        };
        if cell.is_some() {
            return;
        }
        *cell = Some(r);
        st.left -= 1;
        if st.left == 0 {
            let results = std::mem::take(&mut st.results)
                .into_iter()
                .map(|r| r.unwrap_or(Err(SpoolError::WriterGone)))
                .collect();
            if let Some(a) = st.answer.take() {
                let _ = a.send(Ok(results));
            }
        }
    }
}

/// One copy's place in its group: the writer answers through it exactly once (if it is
/// dropped unanswered, the copy's result is [`SpoolError::WriterGone`]).
pub(super) struct Done {
    group: Arc<Group>,
    slot: usize,
    sent: bool,
}

impl Done {
    /// `n` places answering `answer` together, once each has its result.
    pub(super) fn group(n: usize, answer: Answer) -> Vec<Done> {
        let group = Arc::new(Group {
            state: Mutex::new(GroupState {
                results: (0..n).map(|_| None).collect(),
                left: n,
                answer: Some(answer),
            }),
        });
        if n == 0 {
            if let Some(a) = lock(&group.state).answer.take() {
                let _ = a.send(Ok(Vec::new()));
            }
        }
        (0..n)
            .map(|slot| Done {
                group: group.clone(),
                slot,
                sent: false,
            })
            .collect()
    }

    /// This copy's result.
    pub(super) fn send(mut self, r: Result<(), SpoolError>) {
        self.sent = true;
        self.group.set(self.slot, r);
    }
}

impl Drop for Done {
    fn drop(&mut self) {
        if !self.sent {
            self.group.set(self.slot, Err(SpoolError::WriterGone));
        }
    }
}

/// Put the writer's answer to a group in the caller's result slots: its results in `slots`
/// order, or, when the writer is gone (it answers every group it takes), `WriterGone` for each.
pub(super) fn place(
    out: &mut [Option<Result<(), SpoolError>>],
    slots: Vec<usize>,
    answer: Result<Results, SpoolError>,
) {
    match answer {
        Ok(results) => {
            for (slot, r) in slots.into_iter().zip(results) {
                out[slot] = Some(r);
            }
        }
        Err(_) => {
            for slot in slots {
                out[slot] = Some(Err(SpoolError::WriterGone));
            }
        }
    }
}

/// The results of a `complete_many`, one per copy; a slot nobody filled is `WriterGone`.
pub(super) fn finish(out: Vec<Option<Result<(), SpoolError>>>) -> Results {
    out.into_iter()
        .map(|r| r.unwrap_or(Err(SpoolError::WriterGone)))
        .collect()
}

/// Wait for several futures together (as `futures::future::join_all`, without the crate): their
/// outputs in the order given.
pub(super) async fn join_all<F: std::future::Future>(futs: Vec<F>) -> Vec<F::Output> {
    let mut futs: Vec<std::pin::Pin<Box<F>>> = futs.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = futs.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, o) in futs.iter_mut().zip(out.iter_mut()) {
            if o.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *o = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().flatten().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_answers_once_every_copy_has_its_result_in_order() {
        let (tx, mut rx) = oneshot::channel();
        let mut places = Done::group(3, tx);
        let c = places.pop().unwrap();
        let b = places.pop().unwrap();
        let a = places.pop().unwrap();
        c.send(Err(SpoolError::NotClaimed(3)));
        a.send(Ok(()));
        assert!(rx.try_recv().is_err(), "not before the last one");
        drop(b);
        let r = rx.try_recv().unwrap().unwrap();
        assert!(r[0].is_ok());
        assert!(matches!(r[1], Err(SpoolError::WriterGone)));
        assert!(matches!(r[2], Err(SpoolError::NotClaimed(3))));
    }

    #[test]
    fn an_empty_group_is_answered_at_once() {
        let (tx, mut rx) = oneshot::channel();
        assert!(Done::group(0, tx).is_empty());
        assert!(rx.try_recv().unwrap().unwrap().is_empty());
    }

    #[tokio::test]
    async fn join_all_keeps_the_order() {
        let futs: Vec<_> = (0..5u64)
            .map(|i| async move {
                tokio::time::sleep(std::time::Duration::from_millis(10 * (5 - i))).await;
                i
            })
            .collect();
        assert_eq!(join_all(futs).await, vec![0, 1, 2, 3, 4]);
    }
}
