//! Hub replicas that are one system.
//!
//! Labs are hashed into a fixed number of slots. Slot `k` is one persistent MQTT session,
//! client id `{region}-slot-{k}`, subscribed to its labs' Sparkplug topics, so one replica at a
//! time handles every edge node's messages in order and a dead owner's unacknowledged messages
//! wait in the broker for the next one. Which replica owns a slot is decided with PostgreSQL, the
//! store they share: membership is the replicas' own connections (`pg_stat_activity`), each
//! slot goes to the member ranked first for it by rendezvous hashing, and an owner holds the
//! slot's session-level advisory lock, which PostgreSQL releases the moment the owner's
//! connection dies. Twins, host sessions and history are committed there ([`shared`]), so any
//! replica serves any lab: its own slots live, the others as their owners last committed them.

pub mod requests;
pub mod sessions;
pub mod shared;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use protocol::LabId;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::host::{HostPolicy, PrimaryHost};
use crate::ingest::{self, IngestConfig};
use crate::outputs::Outputs;
use crate::persist::{self, Storage};
use crate::stats::HubStats;
use crate::twin::TwinRegistry;
use shared::{Mirrored, SharedError, SlotWriter};

/// `[replica]`: this hub is one replica of a region.
#[derive(Debug, Clone)]
pub struct ReplicaConfig {
    /// This replica's name, unique in the region.
    pub id: String,
    /// The region: the prefix of the slot sessions' client ids and the key of its rows.
    pub region: String,
    /// The shared PostgreSQL.
    pub postgres: tokio_postgres::Config,
    /// How many slots the region's labs are spread over; the same on every replica.
    pub slots: u32,
}

/// How often membership is checked, slots are balanced and other replicas' twins are read.
pub const BALANCE_EVERY: Duration = Duration::from_millis(500);
const RECONNECT_AFTER: Duration = Duration::from_secs(1);
/// The first key of the region's advisory locks (the second is the slot).
const LOCK_SPACE: i32 = 0x0de0_1ab5;

/// FNV-1a: stable across builds and machines, which the slot of a lab must be.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The slot of a lab.
pub fn slot_of(lab: &LabId, slots: u32) -> u32 {
    (fnv1a(lab.as_str().as_bytes()) % u64::from(slots.max(1))) as u32
}

/// The member that owns `slot` when `members` are alive. Each slot goes to the member ranked
/// first for it (rendezvous hashing, so a member joining or leaving moves few other slots)
/// that still has room: no member gets more than its fair share, rounded up, which plain
/// rendezvous hashing would not guarantee with few slots.
pub fn owner_of(members: &BTreeSet<String>, slot: u32, slots: u32) -> Option<&String> {
    assignment(members, slots)
        .into_iter()
        .nth(slot as usize)
        .flatten()
}

/// The owner of every slot, in slot order.
pub fn assignment(members: &BTreeSet<String>, slots: u32) -> Vec<Option<&String>> {
    if members.is_empty() {
        return vec![None; slots as usize];
    }
    let share = slots.div_ceil(members.len() as u32);
    let mut load: HashMap<&String, u32> = HashMap::new();
    (0..slots)
        .map(|slot| {
            let mut ranked: Vec<&String> = members.iter().collect();
            ranked.sort_by_key(|member| {
                std::cmp::Reverse(fnv1a(format!("{member}/{slot}").as_bytes()))
            });
            let owner = ranked
                .into_iter()
                .find(|member| load.get(member).copied().unwrap_or(0) < share)?;
            *load.entry(owner).or_default() += 1;
            Some(owner)
        })
        .collect()
}

/// What every slot's ingest shares with the rest of the hub.
#[derive(Debug, Clone)]
pub struct SlotParts {
    /// The MQTT settings; client id and subscriptions are set per slot.
    pub ingest: IngestConfig,
    /// What the slot's Sparkplug host admits.
    pub policy: HostPolicy,
    /// Labs by slot.
    pub labs: Arc<HashMap<u32, Vec<LabId>>>,
    /// The twins this replica serves.
    pub twins: Arc<TwinRegistry>,
    /// Counters.
    pub stats: Arc<HubStats>,
    /// Outputs fed after each commit.
    pub outputs: Outputs,
    /// The replica's command client, for the DCMDs of requests other replicas forward.
    pub commands: rumqttc::AsyncClient,
}

/// Runs this replica's part of the region until `cancel` fires: `ready` is true while it is a
/// member (connected to the shared store and balanced once).
pub async fn run(
    config: ReplicaConfig,
    parts: SlotParts,
    ready: watch::Sender<bool>,
    cancel: CancellationToken,
) {
    let name = format!("demolab-hub/{}/{}", config.region, config.id);
    loop {
        let result = tokio::select! {
            result = member(&config, &name, &parts, &ready, &cancel) => result,
            () = cancel.cancelled() => Ok(()),
        };
        ready.send_replace(false);
        match result {
            Ok(()) if cancel.is_cancelled() => return,
            Ok(()) => {}
            Err(err) => {
                error!(%err, replica = %config.id, "replica lost the shared store; its slots are stopped, joining again")
            }
        }
        tokio::select! {
            () = tokio::time::sleep(RECONNECT_AFTER) => {}
            () = cancel.cancelled() => return,
        }
    }
}

/// One membership: from connecting to the shared store until it fails or `cancel` fires.
/// Whatever ends it, the slots it runs are stopped before it returns, so a replica that cannot
/// reach the store never keeps a slot whose lock it may have lost.
async fn member(
    config: &ReplicaConfig,
    name: &str,
    parts: &SlotParts,
    ready: &watch::Sender<bool>,
    cancel: &CancellationToken,
) -> Result<(), SharedError> {
    let mut lease = shared::connect(&config.postgres, name).await?;
    shared::migrate(&mut lease, &config.region, config.slots).await?;
    let mut owned: HashMap<u32, RunningSlot> = HashMap::new();
    // Every slot's twins are read once at joining; then only what changes.
    let mut cursors: HashMap<u32, i64> = (0..config.slots).map(|slot| (slot, 0)).collect();
    let result = balance_until_cancelled(
        config,
        parts,
        &lease,
        &mut owned,
        &mut cursors,
        ready,
        cancel,
    )
    .await;
    for (slot, running) in owned.drain() {
        running.stop().await;
        info!(slot, replica = %config.id, "slot released");
    }
    // Dropping the lease connection releases every lock it still holds.
    drop(lease);
    result
}

#[allow(clippy::too_many_arguments)]
async fn balance_until_cancelled(
    config: &ReplicaConfig,
    parts: &SlotParts,
    lease: &Client,
    owned: &mut HashMap<u32, RunningSlot>,
    cursors: &mut HashMap<u32, i64>,
    ready: &watch::Sender<bool>,
    cancel: &CancellationToken,
) -> Result<(), SharedError> {
    let mut ticker = tokio::time::interval(BALANCE_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = cancel.cancelled() => return Ok(()),
        }
        let members = members(lease, &config.region).await?;
        let owners = assignment(&members, config.slots);
        let mine = |slot: u32| {
            owners
                .get(slot as usize)
                .copied()
                .flatten()
                .is_some_and(|m| m == &config.id)
        };

        // Hand over first what another member should have, and clear out slots that stopped
        // on their own (fenced, or their storage failed).
        let leaving: Vec<u32> = owned
            .iter_mut()
            .filter_map(|(slot, running)| (!mine(*slot) || running.finished()).then_some(*slot))
            .collect();
        for slot in leaving {
            if let Some(running) = owned.remove(&slot) {
                running.stop().await;
            }
            lease
                .execute(
                    "SELECT pg_advisory_unlock($1, $2)",
                    &[&LOCK_SPACE, &(slot as i32)],
                )
                .await?;
            cursors.insert(slot, 0);
            info!(slot, replica = %config.id, "slot handed over");
        }
        for slot in 0..config.slots {
            if !mine(slot) || owned.contains_key(&slot) {
                continue;
            }
            let locked: bool = lease
                .query_one(
                    "SELECT pg_try_advisory_lock($1, $2)",
                    &[&LOCK_SPACE, &(slot as i32)],
                )
                .await?
                .get(0);
            if !locked {
                // Its previous owner still holds it: it hands it over, or its connection dies.
                continue;
            }
            match start_slot(config, parts, lease, slot).await {
                Ok(running) => {
                    cursors.remove(&slot);
                    owned.insert(slot, running);
                }
                Err(err) => {
                    warn!(%err, slot, replica = %config.id, "cannot take the slot; trying again");
                    lease
                        .execute(
                            "SELECT pg_advisory_unlock($1, $2)",
                            &[&LOCK_SPACE, &(slot as i32)],
                        )
                        .await?;
                }
            }
        }
        for change in shared::changes_since(lease, &config.region, cursors).await? {
            match change {
                Mirrored::Twin(twin) => parts.twins.mirror([*twin]),
                Mirrored::Retired(key) => parts.twins.forget_mirrored(&key, ingest::now_ms()),
            }
        }
        requests::serve(lease, &config.region, owned, &parts.twins, &parts.commands).await?;
        parts.stats.replica_slots(owned.len(), members.len());
        // Ready once every slot it owns is subscribed: before that, a lab's messages published
        // to a slot's fresh session would have nowhere to go.
        ready.send_replace(owned.values().all(RunningSlot::subscribed));
    }
}

/// The replicas of the region connected to the shared store now, by id.
async fn members(lease: &Client, region: &str) -> Result<BTreeSet<String>, SharedError> {
    let prefix = format!("demolab-hub/{region}/");
    let rows = lease
        .query(
            "SELECT DISTINCT application_name FROM pg_stat_activity
             WHERE starts_with(application_name, $1)",
            &[&prefix],
        )
        .await?;
    Ok(rows
        .iter()
        .filter_map(|row| {
            row.get::<_, &str>(0)
                .strip_prefix(&prefix)
                .map(str::to_owned)
        })
        .collect())
}

/// A connection to the shared store opened when first needed and again after it closed, for
/// what the API reads and writes there.
#[derive(Debug)]
pub struct LazyClient {
    config: ReplicaConfig,
    /// Its `application_name`, which must not look like a member's.
    name: String,
    client: tokio::sync::RwLock<Option<Arc<Client>>>,
}

impl LazyClient {
    /// A connection of this replica named `{role}/{region}/{id}`.
    pub fn new(config: ReplicaConfig, role: &str) -> Self {
        let name = format!("{role}/{}/{}", config.region, config.id);
        Self {
            config,
            name,
            client: tokio::sync::RwLock::new(None),
        }
    }

    /// The region this connection works for.
    pub fn region(&self) -> &str {
        &self.config.region
    }

    /// Runs `query` on the connection, dropping it when the query failed because it closed.
    pub async fn with<T, F>(&self, query: impl FnOnce(Arc<Client>) -> F) -> Result<T, SharedError>
    where
        F: std::future::Future<Output = Result<T, SharedError>>,
    {
        let client = self.get().await?;
        let result = query(client.clone()).await;
        if result.is_err() && client.is_closed() {
            self.client.write().await.take();
        }
        result
    }

    async fn get(&self) -> Result<Arc<Client>, SharedError> {
        if let Some(client) = self.client.read().await.as_ref().filter(|c| !c.is_closed()) {
            return Ok(client.clone());
        }
        let mut slot = self.client.write().await;
        if let Some(client) = slot.as_ref().filter(|c| !c.is_closed()) {
            return Ok(client.clone());
        }
        let client = Arc::new(shared::connect(&self.config.postgres, &self.name).await?);
        *slot = Some(client.clone());
        Ok(client)
    }
}

/// The history API's reader of the shared store.
#[derive(Debug)]
pub struct SharedHistory {
    client: LazyClient,
}

impl SharedHistory {
    /// A reader for this replica; it connects when first asked.
    pub fn new(config: ReplicaConfig) -> Self {
        Self {
            client: LazyClient::new(config, "demolab-api"),
        }
    }

    /// Buckets of one metric's history, from every replica's commits.
    pub async fn buckets(
        &self,
        key: &crate::twin::TwinKey,
        metric: &str,
        range: crate::history::TimeRange,
        step: u64,
    ) -> Result<Vec<crate::history::Bucket>, SharedError> {
        let region = self.client.region();
        self.client
            .with(|client| async move {
                shared::history_buckets(&client, region, key, metric, range, step).await
            })
            .await
    }
}

/// An owned slot's ingest and storage.
#[derive(Debug)]
struct RunningSlot {
    cancel: CancellationToken,
    tasks: JoinSet<()>,
    /// Ingest and storage, or none for a slot no listed lab hashes to.
    started: usize,
    /// Whether the slot's session is subscribed to its labs.
    subscribed: watch::Receiver<bool>,
    /// Asks the slot's ingest to commit now; none for a slot without labs.
    flushes: Option<tokio::sync::mpsc::UnboundedSender<ingest::FlushRequest>>,
}

impl RunningSlot {
    fn subscribed(&self) -> bool {
        self.started == 0 || *self.subscribed.borrow()
    }

    /// Commits what the slot's twins changed so far (waiting up to `wait`); true once committed.
    async fn commit_now(&self, wait: std::time::Duration) -> bool {
        match &self.flushes {
            Some(flushes) => ingest::flush(flushes, wait).await,
            // No labs, so no twins that could have changed.
            None => true,
        }
    }

    /// Whether ingest or storage ended without being asked to.
    fn finished(&mut self) -> bool {
        while self.tasks.try_join_next().is_some() {}
        self.cancel.is_cancelled() || self.tasks.len() < self.started
    }

    /// Stops ingest, which commits and acknowledges what it accepted before it disconnects.
    async fn stop(mut self) {
        self.cancel.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Takes slot `slot` (its lock is held): fences the previous owner, loads what it committed,
/// and starts the slot's session, which resumes where the previous owner's ended.
async fn start_slot(
    config: &ReplicaConfig,
    parts: &SlotParts,
    lease: &Client,
    slot: u32,
) -> Result<RunningSlot, SharedError> {
    let labs = parts.labs.get(&slot).cloned().unwrap_or_default();
    let cancel = CancellationToken::new();
    let mut tasks = JoinSet::new();
    if labs.is_empty() {
        // Owned all the same, so the region's slots add up; there is nothing to subscribe to.
        return Ok(RunningSlot {
            cancel,
            tasks,
            started: 0,
            subscribed: watch::channel(true).1,
            flushes: None,
        });
    }
    let taken = shared::take_slot(lease, &config.region, slot, &config.id).await?;
    let writer = SlotWriter::new(
        // Not under the members' prefix: a writer is not a member.
        shared::connect(
            &config.postgres,
            &format!("demolab-slot/{}/{}/{slot}", config.region, config.id),
        )
        .await?,
        &config.region,
        slot,
        taken.epoch,
    )
    .await?;
    let twins = taken.twins.len();
    parts.twins.restore(
        taken
            .twins
            .into_iter()
            .map(|(twin, alarms)| (twin, Some(alarms))),
    );
    let mut host = PrimaryHost::new(parts.policy.clone());
    if let Some(snapshot) = taken.host {
        host.restore(snapshot);
    }
    let mut ingest_config = parts.ingest.clone();
    ingest_config.client_id = format!("{}-slot-{slot}", config.region);
    ingest_config.subscriptions = labs
        .iter()
        .map(|lab| format!("{}/{lab}/#", protocol::sparkplug::NAMESPACE))
        .collect();
    ingest_config.labs = Some(Arc::new(labs.iter().cloned().collect()));
    let (client, events) = ingest::connect(&ingest_config);
    let (commit_tx, commit_rx) = tokio::sync::mpsc::unbounded_channel();
    let (stored_tx, stored_rx) = tokio::sync::mpsc::unbounded_channel();
    let idle = Arc::new(persist::Idle::default());
    let (slot_ready, subscribed) = watch::channel(false);
    let (flushes, flush_requests) = tokio::sync::mpsc::unbounded_channel();
    tasks.spawn(ingest::run(
        ingest_config,
        client.clone(),
        events,
        host,
        parts.twins.clone(),
        parts.stats.clone(),
        commit_tx,
        stored_rx,
        idle.clone(),
        Some(flush_requests),
        slot_ready,
        cancel.clone(),
    ));
    tasks.spawn(persist::run(
        commit_rx,
        Storage::Shared {
            writer: Box::new(writer),
            on_fenced: cancel.clone(),
        },
        stored_tx,
        parts.stats.clone(),
        parts.outputs.clone(),
        idle,
    ));
    info!(slot, epoch = taken.epoch, twins, labs = labs.len(), replica = %config.id, "slot taken");
    Ok(RunningSlot {
        cancel,
        tasks,
        started: 2,
        subscribed,
        flushes: Some(flushes),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_member_gets_its_fair_share_and_a_joining_one_moves_few_slots() {
        let two: BTreeSet<String> = ["hub-a", "hub-b"].map(String::from).into();
        let three: BTreeSet<String> = ["hub-a", "hub-b", "hub-c"].map(String::from).into();
        for slots in [1, 2, 4, 7, 16, 64] {
            for members in [&two, &three] {
                let owners = assignment(members, slots);
                let share = slots.div_ceil(members.len() as u32);
                for member in members.iter() {
                    let owned = owners.iter().filter(|o| **o == Some(member)).count() as u32;
                    assert!(owned <= share, "{member} owns {owned} of {slots} slots");
                }
                assert!(
                    owners.iter().all(Option::is_some),
                    "every slot has an owner"
                );
            }
        }
        let (before, after) = (assignment(&two, 64), assignment(&three, 64));
        let moved: Vec<_> = (0..64).filter(|i| before[*i] != after[*i]).collect();
        let to_newcomer = moved
            .iter()
            .filter(|i| after[**i].map(String::as_str) == Some("hub-c"))
            .count();
        // The newcomer takes its share, 21 or 22 slots; the cap moves a few more between the old
        // members, far from a reshuffle of all 64.
        assert!((21..=22).contains(&to_newcomer), "hub-c took {to_newcomer}");
        assert!(moved.len() <= 32, "{} of 64 slots moved", moved.len());
    }

    #[test]
    fn a_lab_always_hashes_to_the_same_slot() {
        let lab: LabId = "lab-aarhus".parse().expect("valid");
        assert_eq!(slot_of(&lab, 16), slot_of(&lab, 16));
        assert!(slot_of(&lab, 16) < 16);
        let spread: BTreeSet<u32> = (0..100)
            .map(|i| slot_of(&format!("lab-{i}").parse().expect("valid"), 8))
            .collect();
        assert_eq!(spread.len(), 8, "100 labs use every one of 8 slots");
    }
}
