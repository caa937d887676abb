//! The single writer of the embedded store: commits what ingest accepted (history rows, twins,
//! the host's sessions, alarms) in one transaction, then acknowledges the broker messages it
//! came from, then feeds the outputs that must only see durable data (JSON topics, InfluxDB).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

use tokio::sync::mpsc;
use tracing::{error, warn};

use crate::history;
use crate::ingest::{Ack, Commit};
use crate::outputs::Outputs;
use crate::stats::HubStats;
use crate::store::{StoreError, TwinStore};
use crate::twin::Applied;

/// Name of the host-session document in the store.
pub const HOST_DOCUMENT: &str = "host";

const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);

/// Whether storage has nothing left to commit, how many messages it still owes a commit, and a
/// wake-up for ingest when it has caught up.
///
/// The broker lets only so many messages go unacknowledged per client (the embedded broker's
/// window, `max_inflight_messages` in Mosquitto), so once a batch is full ingest must hand it over
/// the moment storage is free: with the window full no further message would arrive to prompt it.
/// Ingest hands over only to idle storage, never queueing a commit behind a running one, so the
/// window alone bounds what the hub holds while storage is behind.
#[derive(Debug)]
pub struct Idle {
    flag: AtomicBool,
    notify: Notify,
    uncommitted: AtomicUsize,
}

impl Default for Idle {
    fn default() -> Self {
        Self {
            flag: AtomicBool::new(true),
            notify: Notify::new(),
            uncommitted: AtomicUsize::new(0),
        }
    }
}

impl Idle {
    /// Messages handed to storage and not yet committed and acknowledged.
    pub fn uncommitted(&self) -> usize {
        self.uncommitted.load(Ordering::Acquire)
    }

    /// Records messages handed over for a commit.
    pub fn handed_over(&self, messages: usize) {
        self.uncommitted.fetch_add(messages, Ordering::AcqRel);
    }

    fn settled(&self, messages: usize) {
        self.uncommitted.fetch_sub(messages, Ordering::AcqRel);
    }

    /// Claims the idle storage for a hand-over: true at most once per idle spell.
    pub fn claim(&self) -> bool {
        self.flag.swap(false, Ordering::AcqRel)
    }

    /// Gives back a claim that handed nothing over.
    pub fn unclaim(&self) {
        self.flag.store(true, Ordering::Release);
    }

    /// Resolves once storage has become idle since the last call (or was idle before it).
    pub async fn became_idle(&self) {
        self.notify.notified().await;
    }

    fn set(&self) {
        self.flag.store(true, Ordering::Release);
        self.notify.notify_one();
    }
}

/// Where commits go.
#[derive(Debug)]
pub enum Storage {
    /// The hub's embedded store.
    Local(Arc<TwinStore>),
    /// The region's shared store, for one slot this replica owns.
    Shared {
        /// The slot's writer.
        writer: Box<crate::replica::shared::SlotWriter>,
        /// Fired when another replica took the slot over: the slot must stop.
        on_fenced: tokio_util::sync::CancellationToken,
    },
}

impl Storage {
    /// Commits one batch; `Ok(false)` when the slot is no longer this replica's (nothing was
    /// written, and nothing may be acknowledged).
    async fn commit(
        &mut self,
        applied: &Arc<Vec<Applied>>,
        twins: &Arc<Vec<Persisted>>,
        host: &Arc<Option<crate::host::HostSnapshot>>,
        retired: &Arc<Vec<String>>,
    ) -> Result<bool, String> {
        match self {
            Storage::Local(store) => {
                let (store, applied, twins, host, retired) = (
                    store.clone(),
                    applied.clone(),
                    twins.clone(),
                    host.clone(),
                    retired.clone(),
                );
                tokio::task::spawn_blocking(move || {
                    write(&store, &applied, &twins, host.as_ref().as_ref(), &retired)
                })
                .await
                .map_err(|err| format!("storage task failed: {err}"))?
                .map(|()| true)
                .map_err(|err| err.to_string())
            }
            Storage::Shared { writer, on_fenced } => {
                match writer
                    .commit(applied, twins, host.as_ref().as_ref(), retired)
                    .await
                {
                    Ok(()) => Ok(true),
                    Err(err @ crate::replica::shared::SharedError::Fenced { .. }) => {
                        warn!(%err, "slot lost: stopping its ingest without acknowledging");
                        on_fenced.cancel();
                        Ok(false)
                    }
                    Err(err) => Err(err.to_string()),
                }
            }
        }
    }
}

/// Runs until ingest hangs up, committing whatever ingest handed over while the last commit ran
/// in one transaction, and handing each commit's acknowledgements back to ingest (`stored`),
/// which owns the broker connection.
pub async fn run(
    mut commits: mpsc::UnboundedReceiver<Commit>,
    mut storage: Storage,
    stored: mpsc::UnboundedSender<Vec<Ack>>,
    stats: Arc<HubStats>,
    outputs: Outputs,
    idle: Arc<Idle>,
) {
    while let Some(first) = commits.recv().await {
        // Whatever queued up while the last commit ran goes into this one.
        let mut batch = vec![first];
        while let Ok(more) = commits.try_recv() {
            batch.push(more);
        }
        let (mut merged, done) = merge(batch);
        // Storage reads the history rows from the applied samples themselves.
        let applied = Arc::new(std::mem::take(&mut merged.applied));
        let rows: usize = applied.iter().map(|a| a.values.len()).sum();
        let twins = Arc::new(dedup_latest(merged.twins));
        let host = Arc::new(merged.host);
        let retired: Arc<Vec<String>> =
            Arc::new(merged.retired.iter().map(ToString::to_string).collect());
        let mut committed = false;
        loop {
            match storage.commit(&applied, &twins, &host, &retired).await {
                Ok(true) => {
                    committed = true;
                    break;
                }
                // Another replica owns the slot now: the broker hands it what is unacknowledged.
                Ok(false) => break,
                Err(err) => {
                    stats.commit_failed();
                    error!(%err, "cannot commit to storage; retrying (nothing is acknowledged)");
                }
            }
            if commits.is_closed() && !done.is_empty() {
                warn!("stopping with an uncommitted batch: the broker will redeliver it");
                break;
            }
            tokio::time::sleep(RETRY_AFTER_FAILURE).await;
        }
        // Committed, or abandoned at shutdown for the broker to redeliver: no longer owed.
        // Settled before ingest gets the acknowledgements, so that ingest, woken by them, finds
        // storage caught up (it stops reading the broker at `max_uncommitted`).
        idle.settled(merged.acks.len());
        if committed {
            stats.committed(rows);
            if !merged.acks.is_empty() {
                // Ingest ends after storage answers its last `done`, so it takes these.
                let _ = stored.send(merged.acks);
            }
            outputs.committed(&applied);
        }
        for done in done {
            let _ = done.send(committed);
        }
        if commits.is_empty() {
            idle.set();
        }
    }
}

/// Merges commits in the order ingest sent them into one, and the senders to tell when it is
/// done.
fn merge(batch: Vec<Commit>) -> (Commit, Vec<tokio::sync::oneshot::Sender<bool>>) {
    let mut merged = Commit::default();
    let mut done = Vec::new();
    for commit in batch {
        merged.applied.extend(commit.applied);
        merged.acks.extend(commit.acks);
        // A retirement voids earlier copies of the twin; a later copy (born again) is
        // written after the deletion, so it stays.
        if !commit.retired.is_empty() {
            merged
                .twins
                .retain(|twin| !commit.retired.iter().any(|k| k.to_string() == twin.id));
            merged.retired.extend(commit.retired);
        }
        // Later copies of a twin supersede earlier ones.
        merged.twins.extend(commit.twins);
        if commit.host.is_some() {
            merged.host = commit.host;
        }
        done.extend(commit.done);
    }
    (merged, done)
}

type Persisted = crate::twin::StoredTwin;

fn dedup_latest(twins: Vec<Persisted>) -> Vec<Persisted> {
    let mut latest: std::collections::BTreeMap<String, Persisted> =
        std::collections::BTreeMap::new();
    for twin in twins {
        match latest.get_mut(&twin.id) {
            Some(earlier) => earlier.supersede(twin),
            None => {
                latest.insert(twin.id.clone(), twin);
            }
        }
    }
    latest.into_values().collect()
}

fn write(
    store: &TwinStore,
    applied: &[Applied],
    twins: &[Persisted],
    host: Option<&crate::host::HostSnapshot>,
    retired: &[String],
) -> Result<(), StoreError> {
    let mut series_ids = store
        .series_ids()
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let written = write_in(store, &mut series_ids, applied, twins, host, retired);
    match written {
        Ok(()) => series_ids.committed(),
        Err(_) => series_ids.abandoned(),
    }
    written
}

fn write_in(
    store: &TwinStore,
    series_ids: &mut history::SeriesIds,
    applied: &[Applied],
    twins: &[Persisted],
    host: Option<&crate::host::HostSnapshot>,
    retired: &[String],
) -> Result<(), StoreError> {
    let txn = store.database().begin_write().map_err(|e| store.error(e))?;
    history::append_journaled(&txn, applied.iter().flat_map(Applied::rows), series_ids)
        .map_err(|e| StoreError::History(e.to_string()))?;
    // Before the twins: one born again after its retirement is written back.
    store.remove_in(&txn, retired)?;

    // Whole twins first: storing one drops its older live part, which the live parts of this
    // commit then replace.
    store.save_in(&txn, twins.iter().filter_map(|twin| twin.whole.as_ref()))?;
    store.save_live_in(
        &txn,
        twins
            .iter()
            .filter_map(|twin| Some((twin.id.as_str(), twin.live.as_deref()?))),
    )?;
    store.save_alarms_in(
        &txn,
        twins
            .iter()
            .filter_map(|twin| Some((twin.id.as_str(), twin.alarms.as_ref()?))),
    )?;
    if let Some(host) = host {
        store.put_document(&txn, HOST_DOCUMENT, host)?;
    }
    txn.commit().map_err(|e| store.error(e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::twin::{AlarmStates, TwinKey, TwinRegistry, TwinUpdate};

    fn copy_of(registry: &TwinRegistry, key: &TwinKey) -> Persisted {
        registry
            .stored(key, false, AlarmStates::All)
            .expect("a twin")
    }

    /// What ingest hands over: every changed twin as `stored` gives it.
    fn changed(registry: &TwinRegistry) -> Vec<Persisted> {
        registry
            .take_dirty()
            .iter()
            .filter_map(|key| registry.stored(key, false, AlarmStates::All))
            .collect()
    }

    #[test]
    fn twins_stored_by_their_live_part_load_as_they_are_in_memory() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = TwinStore::open(dir.path()).expect("store");
        let registry = TwinRegistry::new(Arc::default(), Arc::default());
        let key = TwinKey::parse("lab-a/m-1").expect("key");
        let power: protocol::MetricName = "spindle.power_w".parse().expect("metric");
        let sample = |seq: u32| TwinUpdate::Sample {
            key: key.clone(),
            seq,
            timestamp: 100 + u64::from(seq),
            values: vec![(power.clone(), 10.0 * f64::from(seq))],
            historical: seq == 2,
        };
        registry.apply(TwinUpdate::Birth {
            key: key.clone(),
            gateway: "gw".parse().expect("valid"),
            boot: Some(7),
            node_seq: Some(0),
            metrics: vec![(power.clone(), protocol::Unit::Watt)],
            timestamp: 100,
        });
        let born = changed(&registry);
        assert!(born[0].whole.is_some(), "a birth stores the whole twin");
        write(&store, &[], &born, None, &[]).expect("commit");
        for seq in 1..=3 {
            registry.apply(sample(seq));
        }
        // Seq 5 skips 4: the twin waits for it (missing_seqs), which only the live part carries.
        registry.apply(sample(5));
        let sampled = changed(&registry);
        assert!(
            sampled[0].whole.is_none() && sampled[0].live.is_some(),
            "samples store only the live part"
        );
        write(&store, &[], &sampled, None, &[]).expect("commit");
        let now = registry.get(&key).expect("twin");
        assert_eq!(now.samples, 4);
        assert_eq!(store.load().expect("load"), vec![now]);

        // A death (more than the live part) and a sample after it, merged into one commit.
        registry.apply(TwinUpdate::Offline {
            key: key.clone(),
            timestamp: 110,
        });
        let died = Commit {
            twins: changed(&registry),
            ..Commit::default()
        };
        assert!(
            died.twins[0].whole.is_some(),
            "a death stores the whole twin"
        );
        registry.apply(sample(6));
        let sampled = Commit {
            twins: changed(&registry),
            ..Commit::default()
        };
        let (merged, _) = merge(vec![died, sampled]);
        write(&store, &[], &dedup_latest(merged.twins), None, &[]).expect("commit");
        let now = registry.get(&key).expect("twin");
        assert_eq!(now.last_seq, 6);
        assert_eq!(store.load().expect("load"), vec![now]);

        // Whole again: the older live part must not be laid over it.
        registry.apply(TwinUpdate::Offline {
            key: key.clone(),
            timestamp: 120,
        });
        let mut died = changed(&registry);
        died[0].live = None;
        write(&store, &[], &died, None, &[]).expect("commit");
        assert_eq!(
            store.load().expect("load"),
            vec![registry.get(&key).expect("twin")]
        );
    }

    #[test]
    fn a_retirement_drops_earlier_copies_and_a_later_birth_is_written_after_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = TwinStore::open(dir.path()).expect("store");
        let registry = TwinRegistry::new(Arc::default(), Arc::default());
        let key = TwinKey::parse("lab-a/m-1").expect("key");
        let birth = || TwinUpdate::Birth {
            key: key.clone(),
            gateway: "gw".parse().expect("valid"),
            boot: None,
            node_seq: None,
            metrics: vec![],
            timestamp: 1,
        };
        registry.apply(birth());
        let saved = Commit {
            twins: vec![copy_of(&registry, &key)],
            ..Commit::default()
        };
        let retired = Commit {
            retired: vec![key.clone()],
            ..Commit::default()
        };
        let (merged, _) = merge(vec![saved, retired]);
        assert!(merged.twins.is_empty(), "the earlier copy is void");
        let ids: Vec<String> = merged.retired.iter().map(ToString::to_string).collect();
        write(&store, &[], &merged.twins, None, &ids).expect("commit");
        assert!(store.load().expect("load").is_empty());

        // Retired, then born again before the next commit: the new twin stays.
        registry.apply(birth());
        let reborn = Commit {
            twins: vec![copy_of(&registry, &key)],
            ..Commit::default()
        };
        let retired = Commit {
            retired: vec![key.clone()],
            ..Commit::default()
        };
        let (merged, _) = merge(vec![retired, reborn]);
        let ids: Vec<String> = merged.retired.iter().map(ToString::to_string).collect();
        write(&store, &[], &merged.twins, None, &ids).expect("commit");
        assert_eq!(store.load().expect("load").len(), 1);
    }
}
