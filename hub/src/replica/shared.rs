//! The region's shared PostgreSQL: what every hub replica must read and whichever replica owns a
//! slot writes — twins with their alarm state, each slot's Sparkplug host sessions, and the
//! sample history.
//!
//! A slot's row carries an `epoch` that a new owner bumps when it takes the slot; every commit
//! checks it in the same transaction, so a replica that lost its slot without knowing it (a
//! stalled process, a network split) can never write over its successor. The row's `commits`
//! counter orders a slot's commits; each twin row carries the counter of the commit that wrote
//! it, so another replica follows the changes with one cursor per slot.

use std::collections::HashMap;

use tokio_postgres::{Client, NoTls, Statement};
use tracing::error;

use crate::alarm::MachineSnapshot;
use crate::history::{Bucket, TimeRange};
use crate::host::HostSnapshot;
use crate::twin::{Twin, TwinKey};

/// Why the shared store failed.
#[derive(Debug, thiserror::Error)]
pub enum SharedError {
    /// PostgreSQL refused or the connection is gone.
    #[error("PostgreSQL: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    /// Another replica took the slot since this one did: its commit must not land.
    #[error("slot {slot} was taken over by another replica (epoch {epoch} is no longer current)")]
    Fenced {
        /// The slot.
        slot: u32,
        /// This replica's epoch of it.
        epoch: i64,
    },
    /// A slot's commit carried only the live part of a twin, which the shared store does not
    /// keep (a bug: a replica's slots hand over whole twins).
    #[error("twin {0} reached the shared store without its whole state and alarm state")]
    NotWhole(String),
    /// A stored document does not decode.
    #[error("stored {what} {id} does not decode: {source}")]
    Codec {
        /// Twin, alarms or host sessions.
        what: &'static str,
        /// Its key.
        id: String,
        /// The cause.
        source: serde_json::Error,
    },
}

/// Opens a connection; its IO runs on a task of its own until the client is dropped.
pub async fn connect(
    config: &tokio_postgres::Config,
    application_name: &str,
) -> Result<Client, SharedError> {
    let mut config = config.clone();
    config.application_name(application_name);
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            error!(%err, "PostgreSQL connection closed");
        }
    });
    Ok(client)
}

/// Creates the tables (once, whichever replica comes first) and the region's slot rows.
pub async fn migrate(client: &mut Client, region: &str, slots: u32) -> Result<(), SharedError> {
    let txn = client.transaction().await?;
    // Two replicas starting together would race on CREATE TABLE IF NOT EXISTS.
    txn.execute("SELECT pg_advisory_xact_lock(4242, 0)", &[])
        .await?;
    txn.batch_execute(
        "CREATE TABLE IF NOT EXISTS demolab_slots (
            region text NOT NULL, slot int4 NOT NULL, owner text,
            epoch int8 NOT NULL DEFAULT 0, commits int8 NOT NULL DEFAULT 0, host bytea,
            PRIMARY KEY (region, slot));
         CREATE TABLE IF NOT EXISTS demolab_twins (
            region text NOT NULL, id text NOT NULL, slot int4 NOT NULL, change int8 NOT NULL,
            twin bytea, alarms bytea, PRIMARY KEY (region, id));
         CREATE INDEX IF NOT EXISTS demolab_twins_by_change ON demolab_twins (region, slot, change);
         CREATE TABLE IF NOT EXISTS demolab_samples (
            applied bigserial, region text NOT NULL, lab text NOT NULL, machine text NOT NULL,
            metric text NOT NULL, ts_ms int8 NOT NULL, seq int8 NOT NULL, value float8 NOT NULL,
            PRIMARY KEY (region, lab, machine, metric, ts_ms, seq));
         CREATE TABLE IF NOT EXISTS demolab_sessions (
            region text NOT NULL, token_sha256 bytea NOT NULL, session bytea NOT NULL,
            expires_ms int8 NOT NULL, game text, ended_ms int8,
            PRIMARY KEY (region, token_sha256));
         CREATE INDEX IF NOT EXISTS demolab_sessions_by_end ON demolab_sessions (region, ended_ms);
         CREATE TABLE IF NOT EXISTS demolab_requests (
            id bigserial PRIMARY KEY, region text NOT NULL, slot int4 NOT NULL,
            twin text NOT NULL, request bytea NOT NULL, outcome bytea);
         CREATE INDEX IF NOT EXISTS demolab_requests_by_slot ON demolab_requests (region, slot, id);",
    )
    .await?;
    txn.execute(
        "INSERT INTO demolab_slots (region, slot) SELECT $1, generate_series(0, $2 - 1)
         ON CONFLICT DO NOTHING",
        &[&region, &(slots as i32)],
    )
    .await?;
    txn.commit().await?;
    Ok(())
}

/// What a new owner of a slot starts from: the slot's last committed state.
#[derive(Debug)]
pub struct TakenSlot {
    /// This owner's epoch, which its commits carry.
    pub epoch: i64,
    /// The Sparkplug host sessions of the slot's edge nodes.
    pub host: Option<HostSnapshot>,
    /// The slot's twins with their alarm state.
    pub twins: Vec<(Twin, MachineSnapshot)>,
}

/// Takes slot `slot` for `owner` (who holds its lease): bumps the epoch, which fences the
/// previous owner's commits, and reads what that owner last committed.
pub async fn take_slot(
    client: &Client,
    region: &str,
    slot: u32,
    owner: &str,
) -> Result<TakenSlot, SharedError> {
    let row = client
        .query_one(
            "UPDATE demolab_slots SET owner = $3, epoch = epoch + 1
             WHERE region = $1 AND slot = $2 RETURNING epoch, host",
            &[&region, &(slot as i32), &owner],
        )
        .await?;
    let epoch: i64 = row.get(0);
    let host = row
        .get::<_, Option<&[u8]>>(1)
        .map(|bytes| decode("host sessions", &format!("slot {slot}"), bytes))
        .transpose()?;
    let rows = client
        .query(
            "SELECT id, twin, alarms FROM demolab_twins
             WHERE region = $1 AND slot = $2 AND twin IS NOT NULL",
            &[&region, &(slot as i32)],
        )
        .await?;
    let twins = rows
        .iter()
        .map(|row| decode_twin(row.get(0), row.get(1), row.get(2)))
        .collect::<Result<_, _>>()?;
    Ok(TakenSlot { epoch, host, twins })
}

fn decode<T: serde::de::DeserializeOwned>(
    what: &'static str,
    id: &str,
    bytes: &[u8],
) -> Result<T, SharedError> {
    serde_json::from_slice(bytes).map_err(|source| SharedError::Codec {
        what,
        id: id.to_owned(),
        source,
    })
}

fn decode_twin(
    id: &str,
    twin: &[u8],
    alarms: &[u8],
) -> Result<(Twin, MachineSnapshot), SharedError> {
    Ok((decode("twin", id, twin)?, decode("alarms", id, alarms)?))
}

/// A twin another replica committed since the follower's cursor.
#[derive(Debug)]
pub enum Mirrored {
    /// The twin as committed, with its alarm state.
    Twin(Box<(Twin, MachineSnapshot)>),
    /// Retired by its owner.
    Retired(TwinKey),
}

/// Twins committed in `slots` after each slot's cursor; moves the cursors past them.
pub async fn changes_since(
    client: &Client,
    region: &str,
    cursors: &mut HashMap<u32, i64>,
) -> Result<Vec<Mirrored>, SharedError> {
    if cursors.is_empty() {
        return Ok(Vec::new());
    }
    let (slots, after): (Vec<i32>, Vec<i64>) =
        cursors.iter().map(|(slot, at)| (*slot as i32, *at)).unzip();
    let rows = client
        .query(
            "SELECT t.slot, t.change, t.id, t.twin, t.alarms FROM demolab_twins t
             JOIN UNNEST($2::int4[], $3::int8[]) AS c(slot, after)
               ON t.slot = c.slot AND t.change > c.after
             WHERE t.region = $1 ORDER BY t.change",
            &[&region, &slots, &after],
        )
        .await?;
    let mut changes = Vec::with_capacity(rows.len());
    for row in &rows {
        let slot = row.get::<_, i32>(0) as u32;
        let change: i64 = row.get(1);
        let id: &str = row.get(2);
        let cursor = cursors.entry(slot).or_default();
        *cursor = (*cursor).max(change);
        match (
            row.get::<_, Option<&[u8]>>(3),
            row.get::<_, Option<&[u8]>>(4),
        ) {
            (Some(twin), Some(alarms)) => {
                changes.push(Mirrored::Twin(Box::new(decode_twin(id, twin, alarms)?)))
            }
            _ => {
                if let Some(key) = TwinKey::parse(id) {
                    changes.push(Mirrored::Retired(key));
                }
            }
        }
    }
    Ok(changes)
}

/// The last commit counter of every slot of the region.
pub async fn slot_commits(client: &Client, region: &str) -> Result<HashMap<u32, i64>, SharedError> {
    let rows = client
        .query(
            "SELECT slot, commits FROM demolab_slots WHERE region = $1",
            &[&region],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| (row.get::<_, i32>(0) as u32, row.get::<_, i64>(1)))
        .collect())
}

/// Buckets of one metric's samples, aligned to `step` from the epoch (as the embedded history).
pub async fn history_buckets(
    client: &Client,
    region: &str,
    key: &TwinKey,
    metric: &str,
    range: TimeRange,
    step: u64,
) -> Result<Vec<Bucket>, SharedError> {
    let step = step.max(1) as i64;
    let rows = client
        .query(
            "SELECT (ts_ms / $5) * $5, count(*), min(value), max(value), avg(value),
                    (array_agg(value ORDER BY ts_ms DESC, seq DESC))[1]
             FROM demolab_samples
             WHERE region = $1 AND lab = $2 AND machine = $3 AND metric = $4
               AND ts_ms >= $6 AND ts_ms < $7
             GROUP BY 1 ORDER BY 1",
            &[
                &region,
                &key.lab.as_str(),
                &key.machine.as_str(),
                &metric,
                &step,
                &(range.from_ms as i64),
                &(range.to_ms as i64),
            ],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| Bucket {
            start_ms: row.get::<_, i64>(0) as u64,
            count: row.get::<_, i64>(1) as u64,
            min: row.get(2),
            max: row.get(3),
            mean: row.get(4),
            last: row.get(5),
        })
        .collect())
}

/// The writer of one owned slot: commits what its ingest accepted, fenced by its epoch.
#[derive(Debug)]
pub struct SlotWriter {
    client: Client,
    region: String,
    slot: u32,
    epoch: i64,
    fence: Statement,
    samples: Statement,
    retire: Statement,
    twins: Statement,
}

impl SlotWriter {
    /// Prepares the writer of `slot`, taken at `epoch`, on its own connection.
    pub async fn new(
        client: Client,
        region: &str,
        slot: u32,
        epoch: i64,
    ) -> Result<Self, SharedError> {
        let fence = client
            .prepare(
                "UPDATE demolab_slots SET commits = commits + 1, host = COALESCE($4, host)
                 WHERE region = $1 AND slot = $2 AND epoch = $3 RETURNING commits",
            )
            .await?;
        let samples = client
            .prepare(
                "INSERT INTO demolab_samples (region, lab, machine, metric, ts_ms, seq, value)
                 SELECT $1, * FROM UNNEST($2::text[], $3::text[], $4::text[], $5::int8[],
                                          $6::int8[], $7::float8[])
                 ON CONFLICT DO NOTHING",
            )
            .await?;
        let retire = client
            .prepare(
                "UPDATE demolab_twins SET twin = NULL, alarms = NULL, change = $3
                 WHERE region = $1 AND id = ANY($2::text[])",
            )
            .await?;
        let twins = client
            .prepare(
                "INSERT INTO demolab_twins (region, id, slot, change, twin, alarms)
                 SELECT $1, id, $2, $3, twin, alarms
                 FROM UNNEST($4::text[], $5::bytea[], $6::bytea[]) AS t(id, twin, alarms)
                 ON CONFLICT (region, id) DO UPDATE SET slot = EXCLUDED.slot,
                   change = EXCLUDED.change, twin = EXCLUDED.twin, alarms = EXCLUDED.alarms",
            )
            .await?;
        Ok(Self {
            client,
            region: region.to_owned(),
            slot,
            epoch,
            fence,
            samples,
            retire,
            twins,
        })
    }

    /// The slot.
    pub fn slot(&self) -> u32 {
        self.slot
    }

    /// Commits one batch in one transaction, or nothing if the slot was taken over.
    pub async fn commit(
        &mut self,
        applied: &[crate::twin::Applied],
        twins: &[crate::twin::StoredTwin],
        host: Option<&HostSnapshot>,
        retired: &[String],
    ) -> Result<(), SharedError> {
        let encode = |what: &'static str, id: &str, value: &dyn erased::Json| {
            value.to_json().map_err(|source| SharedError::Codec {
                what,
                id: id.to_owned(),
                source,
            })
        };
        let host = host
            .map(|host| encode("host sessions", "host", host))
            .transpose()?;
        let mut ids = Vec::with_capacity(twins.len());
        let mut twin_docs = Vec::with_capacity(twins.len());
        let mut alarm_docs = Vec::with_capacity(twins.len());
        for stored in twins {
            // A slot's ingest always hands over whole twins (the other replicas mirror them).
            let (Some(twin), Some(alarms)) = (&stored.whole, &stored.alarms) else {
                return Err(SharedError::NotWhole(stored.id.clone()));
            };
            ids.push(twin.id.as_str());
            twin_docs.push(encode("twin", &twin.id, twin)?);
            alarm_docs.push(encode("alarms", &twin.id, alarms)?);
        }
        let rows: usize = applied.iter().map(|a| a.values.len()).sum();
        let mut labs = Vec::with_capacity(rows);
        let mut machines = Vec::with_capacity(rows);
        let mut metrics = Vec::with_capacity(rows);
        let mut times = Vec::with_capacity(rows);
        let mut seqs = Vec::with_capacity(rows);
        let mut values = Vec::with_capacity(rows);
        for row in applied.iter().flat_map(crate::twin::Applied::rows) {
            labs.push(row.key.lab.as_str());
            machines.push(row.key.machine.as_str());
            metrics.push(row.metric.as_str());
            times.push(row.timestamp_ms as i64);
            seqs.push(i64::from(row.seq));
            values.push(row.value);
        }

        let slot = self.slot as i32;
        let txn = self.client.transaction().await?;
        let Some(fenced) = txn
            .query_opt(&self.fence, &[&self.region, &slot, &self.epoch, &host])
            .await?
        else {
            return Err(SharedError::Fenced {
                slot: self.slot,
                epoch: self.epoch,
            });
        };
        let change: i64 = fenced.get(0);
        if rows > 0 {
            txn.execute(
                &self.samples,
                &[
                    &self.region,
                    &labs,
                    &machines,
                    &metrics,
                    &times,
                    &seqs,
                    &values,
                ],
            )
            .await?;
        }
        // Before the twins: one born again after its retirement is written back.
        if !retired.is_empty() {
            txn.execute(&self.retire, &[&self.region, &retired, &change])
                .await?;
        }
        if !ids.is_empty() {
            txn.execute(
                &self.twins,
                &[&self.region, &slot, &change, &ids, &twin_docs, &alarm_docs],
            )
            .await?;
        }
        txn.commit().await?;
        Ok(())
    }
}

/// JSON encoding behind one object-safe call, so documents of several types share one helper.
mod erased {
    pub trait Json {
        fn to_json(&self) -> Result<Vec<u8>, serde_json::Error>;
    }

    impl<T: serde::Serialize> Json for T {
        fn to_json(&self) -> Result<Vec<u8>, serde_json::Error> {
            serde_json::to_vec(self)
        }
    }
}
