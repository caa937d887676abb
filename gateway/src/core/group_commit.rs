//! Group commit bookkeeping, sans-IO: which node messages wait for which fsync.
//!
//! A node's MQTT message is acknowledged to the lab broker only once its sample is durable. The
//! core appends samples as they come and keeps at most one fsync of the disk buffer running (on
//! a blocking thread, so taking in frames goes on meanwhile). Messages taken while it runs wait
//! for the next one. A sync starts when none runs and either `commit_batch` messages wait or
//! the oldest has waited `commit_wait` ([`GroupCommit::due`]): an fsync costs the machine far
//! more CPU than a message does, so under load each one should cover hundreds of messages,
//! while at a low rate a message waits at most `commit_wait` plus one fsync.

use std::time::{Duration, Instant};

/// Messages (`T`) waiting for durability, oldest first.
#[derive(Debug)]
pub(crate) struct GroupCommit<T> {
    /// Taken in and appended, not covered by the running sync.
    waiting: Vec<T>,
    /// When the oldest of `waiting` came.
    waiting_since: Option<Instant>,
    /// Covered by the running sync.
    syncing: Vec<T>,
    /// When the oldest of `syncing` came.
    syncing_since: Option<Instant>,
    /// A sync is running.
    in_flight: bool,
}

impl<T> Default for GroupCommit<T> {
    fn default() -> Self {
        Self {
            waiting: Vec::new(),
            waiting_since: None,
            syncing: Vec::new(),
            syncing_since: None,
            in_flight: false,
        }
    }
}

impl<T> GroupCommit<T> {
    /// A message, taken in at `now`, whose sample (if it had one) is appended.
    pub(crate) fn push(&mut self, message: T, now: Instant) {
        self.waiting.push(message);
        self.waiting_since.get_or_insert(now);
    }

    /// When the waiting messages should get a sync: at once (when the oldest came) if `batch`
    /// of them wait, else `wait` after the oldest came; `None` if none wait. Whether a sync is
    /// running is the caller's to check.
    pub(crate) fn due(&self, batch: usize, wait: Duration) -> Option<Instant> {
        let since = self.waiting_since?;
        Some(if self.waiting.len() >= batch {
            since
        } else {
            since + wait
        })
    }

    /// Messages not acknowledged yet, whether or not a sync covers them.
    pub(crate) fn unacknowledged(&self) -> usize {
        self.waiting.len() + self.syncing.len()
    }

    /// Whether a sync is running.
    #[cfg(test)]
    pub(crate) fn in_flight(&self) -> bool {
        self.in_flight
    }

    /// A sync starts: it covers every message waiting now. The caller starts none while one
    /// runs.
    pub(crate) fn start(&mut self) {
        debug_assert!(!self.in_flight, "one sync at a time");
        self.in_flight = true;
        self.syncing.append(&mut self.waiting);
        self.syncing_since = self.waiting_since.take().or(self.syncing_since);
    }

    /// The running sync succeeded: acknowledges its messages in order while `ack` accepts them
    /// (a full client queue refuses); the refused ones stay first in line for the next
    /// acknowledgement. Returns how many were acknowledged.
    pub(crate) fn synced(&mut self, ack: impl FnMut(&T) -> bool) -> usize {
        self.in_flight = false;
        let durable = std::mem::take(&mut self.syncing);
        let since = self.syncing_since.take();
        self.acknowledge(durable, since, ack)
    }

    /// The running sync failed: its messages wait again, ahead of newer ones, for a sync that
    /// works.
    pub(crate) fn sync_failed(&mut self) {
        self.in_flight = false;
        self.syncing.append(&mut self.waiting);
        std::mem::swap(&mut self.syncing, &mut self.waiting);
        self.waiting_since = self.syncing_since.take().or(self.waiting_since);
    }

    /// Everything appended so far is durable (a synchronous flush, or nothing needed a sync):
    /// acknowledges every message, the running sync's first, like [`synced`](Self::synced).
    /// A sync still running then ends with nothing left to acknowledge.
    pub(crate) fn all_durable(&mut self, ack: impl FnMut(&T) -> bool) -> usize {
        let mut durable = std::mem::take(&mut self.syncing);
        durable.append(&mut self.waiting);
        let since = self.syncing_since.take().or(self.waiting_since.take());
        self.acknowledge(durable, since, ack)
    }

    fn acknowledge(
        &mut self,
        mut durable: Vec<T>,
        since: Option<Instant>,
        mut ack: impl FnMut(&T) -> bool,
    ) -> usize {
        let acked = durable.iter().take_while(|message| ack(message)).count();
        durable.drain(..acked);
        if !durable.is_empty() {
            // Refused ones are durable: they go first when acknowledgements go next.
            self.waiting_since = since.or(self.waiting_since);
        }
        durable.append(&mut self.waiting);
        if durable.is_empty() {
            self.waiting_since = None;
        }
        self.waiting = durable;
        acked
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAIT: Duration = Duration::from_millis(5);

    /// Acknowledges into `out`, accepting at most `room` messages.
    fn ack_into(out: &mut Vec<u32>, room: usize) -> impl FnMut(&u32) -> bool + '_ {
        move |m| {
            if out.len() < room {
                out.push(*m);
                true
            } else {
                false
            }
        }
    }

    #[test]
    fn messages_taken_during_a_sync_wait_for_the_next_one() {
        let mut commit = GroupCommit::default();
        (1..=3).for_each(|m| commit.push(m, Instant::now()));
        commit.start();
        (4..=5).for_each(|m| commit.push(m, Instant::now()));
        assert!(commit.in_flight());
        assert_eq!(commit.unacknowledged(), 5);

        let mut acked = Vec::new();
        assert_eq!(commit.synced(ack_into(&mut acked, usize::MAX)), 3);
        assert_eq!(acked, [1, 2, 3]);
        assert!(!commit.in_flight());
        assert_eq!(commit.unacknowledged(), 2);

        commit.start();
        let mut acked = Vec::new();
        assert_eq!(commit.synced(ack_into(&mut acked, usize::MAX)), 2);
        assert_eq!(acked, [4, 5]);
        assert_eq!(commit.unacknowledged(), 0);
    }

    #[test]
    fn a_failed_sync_puts_its_messages_back_ahead_of_newer_ones() {
        let mut commit = GroupCommit::default();
        (1..=2).for_each(|m| commit.push(m, Instant::now()));
        commit.start();
        commit.push(3, Instant::now());
        commit.sync_failed();
        assert!(!commit.in_flight());
        assert_eq!(commit.unacknowledged(), 3);

        commit.start();
        let mut acked = Vec::new();
        assert_eq!(commit.synced(ack_into(&mut acked, usize::MAX)), 3);
        assert_eq!(acked, [1, 2, 3]);
    }

    #[test]
    fn acknowledgements_a_full_queue_refuses_go_first_next_time() {
        let mut commit = GroupCommit::default();
        (1..=4).for_each(|m| commit.push(m, Instant::now()));
        commit.start();
        commit.push(5, Instant::now());
        let mut acked = Vec::new();
        assert_eq!(commit.synced(ack_into(&mut acked, 2)), 2);
        assert_eq!(acked, [1, 2]);
        assert_eq!(commit.unacknowledged(), 3);

        commit.start();
        let mut acked = Vec::new();
        assert_eq!(commit.synced(ack_into(&mut acked, usize::MAX)), 3);
        assert_eq!(acked, [3, 4, 5]);
    }

    #[test]
    fn a_flush_acknowledges_everything_and_the_running_sync_then_ends_empty() {
        let mut commit = GroupCommit::default();
        (1..=2).for_each(|m| commit.push(m, Instant::now()));
        commit.start();
        commit.push(3, Instant::now());
        let mut acked = Vec::new();
        assert_eq!(commit.all_durable(ack_into(&mut acked, usize::MAX)), 3);
        assert_eq!(acked, [1, 2, 3]);
        assert!(commit.in_flight(), "the sync itself still runs");

        let mut acked = Vec::new();
        assert_eq!(commit.synced(ack_into(&mut acked, usize::MAX)), 0);
        assert!(acked.is_empty());
        assert!(!commit.in_flight());
        assert_eq!(commit.unacknowledged(), 0);
    }

    #[test]
    fn every_message_is_acknowledged_once_and_in_order_whatever_the_interleaving() {
        // Messages arrive between syncs that succeed, fail or meet a full queue, in a fixed
        // pattern; at the end every message is acknowledged exactly once, in arrival order.
        let mut commit = GroupCommit::default();
        let mut acked = Vec::new();
        let mut next = 0u32;
        for round in 0..200u32 {
            for _ in 0..round % 7 {
                commit.push(next, Instant::now());
                next += 1;
            }
            if !commit.in_flight() {
                commit.start();
            }
            for _ in 0..round % 3 {
                commit.push(next, Instant::now());
                next += 1;
            }
            match round % 5 {
                0 => commit.sync_failed(),
                1 => {
                    let room = acked.len() + 2;
                    commit.synced(ack_into(&mut acked, room));
                }
                _ => {
                    commit.synced(ack_into(&mut acked, usize::MAX));
                }
            }
        }
        commit.all_durable(ack_into(&mut acked, usize::MAX));
        assert_eq!(acked, (0..next).collect::<Vec<_>>());
        assert_eq!(commit.unacknowledged(), 0);
    }

    #[test]
    fn a_sync_is_due_at_once_for_a_full_batch_and_after_the_wait_for_a_few() {
        let start = Instant::now();
        let mut commit = GroupCommit::default();
        assert_eq!(commit.due(3, WAIT), None, "nothing waits");
        commit.push(1, start);
        commit.push(2, start + Duration::from_millis(1));
        assert_eq!(
            commit.due(3, WAIT),
            Some(start + WAIT),
            "the oldest sets the time"
        );
        commit.push(3, start + Duration::from_millis(2));
        assert_eq!(
            commit.due(3, WAIT),
            Some(start),
            "a full batch is due at once"
        );

        commit.start();
        assert_eq!(commit.due(3, WAIT), None, "all of them are syncing");
        let later = start + Duration::from_millis(3);
        commit.push(4, later);
        assert_eq!(commit.due(3, WAIT), Some(later + WAIT));
        let mut acked = Vec::new();
        commit.synced(ack_into(&mut acked, usize::MAX));
        assert_eq!(acked, [1, 2, 3]);
        assert_eq!(
            commit.due(3, WAIT),
            Some(later + WAIT),
            "4 keeps its own time"
        );
    }

    #[test]
    fn requeued_messages_keep_the_time_of_the_oldest() {
        let start = Instant::now();
        let mut commit = GroupCommit::default();
        commit.push(1, start);
        commit.start();
        commit.push(2, start + Duration::from_millis(2));
        commit.sync_failed();
        assert_eq!(commit.due(10, WAIT), Some(start + WAIT));

        commit.start();
        let mut acked = Vec::new();
        commit.synced(ack_into(&mut acked, 1));
        assert_eq!(acked, [1]);
        assert_eq!(
            commit.due(10, WAIT),
            Some(start + WAIT),
            "2, refused by a full queue, is due with its batch's time"
        );
        commit.all_durable(ack_into(&mut acked, usize::MAX));
        assert_eq!(acked, [1, 2]);
        assert_eq!(commit.due(10, WAIT), None);
    }
}
