//! Operators' changes to a twin another replica owns: the replica that took the API call writes
//! the request to the shared store, the owner carries it out (the DCMD goes out from where the
//! twin's pending state and its answer are tracked, a retirement from where it is committed) and
//! writes the outcome back, which the API call waits for.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use rumqttc::{AsyncClient, QoS};
use serde::{Deserialize, Serialize};
use tokio_postgres::Client;
use tracing::{info, warn};

use super::shared::SharedError;
use super::{LazyClient, ReplicaConfig, RunningSlot, slot_of};
use crate::twin::{DesiredError, TwinKey, TwinRegistry};

/// How long an API call waits for the owner: it serves requests every
/// [`super::BALANCE_EVERY`], and a slot changing hands takes a few of those.
pub const FORWARD_WAIT: Duration = Duration::from_secs(5);
const POLL_EVERY: Duration = Duration::from_millis(50);
/// How long the owner waits for a slot to commit what a request changed before answering.
const COMMIT_WAIT: Duration = Duration::from_secs(2);

/// A change to a twin, carried out by its owner.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TwinRequest {
    /// Set writable properties (a DCMD to the machine).
    Desired {
        /// Metric → value.
        values: BTreeMap<String, f64>,
        /// Who asked.
        user: String,
    },
    /// Retire the twin.
    Retire {
        /// Who asked.
        user: String,
    },
}

/// What the owner made of a request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum RequestOutcome {
    /// Carried out.
    Done,
    /// The owner has no such twin (retired meanwhile).
    NotFound,
    /// The machine went offline meanwhile.
    Offline,
    /// The values are not writable or out of range for the twin's kind.
    Refused {
        /// Why.
        message: String,
    },
    /// The DCMD could not be handed to the broker connection.
    NotSent {
        /// Why.
        message: String,
    },
}

/// Why a forwarded request did not get done.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// The shared store failed.
    #[error(transparent)]
    Shared(#[from] SharedError),
    /// No replica owning the twin answered within [`FORWARD_WAIT`]; the request was withdrawn.
    #[error("no replica owning {0} answered within {1:?}; nothing was changed")]
    Unanswered(String, Duration),
    /// The owner answered: not done.
    #[error("the owning replica did not carry it out: {0:?}")]
    Refused(RequestOutcome),
}

/// The API's way to the owners of twins this replica only mirrors.
#[derive(Debug)]
pub struct Forwarder {
    client: LazyClient,
    slots: u32,
}

impl Forwarder {
    /// Requests of this replica; it connects when first asked.
    pub fn new(config: ReplicaConfig) -> Self {
        let slots = config.slots;
        Self {
            client: LazyClient::new(config, "demolab-requests"),
            slots,
        }
    }

    /// Has the owner of `key` carry out `request`, and waits for it to be done.
    pub async fn forward(&self, key: &TwinKey, request: &TwinRequest) -> Result<(), ForwardError> {
        let region = self.client.region();
        let slot = slot_of(&key.lab, self.slots) as i32;
        let id_text = key.to_string();
        let body = serde_json::to_vec(request).map_err(|source| SharedError::Codec {
            what: "request",
            id: id_text.clone(),
            source,
        })?;
        let id: i64 = self
            .client
            .with(|client| async move {
                Ok(client
                    .query_one(
                        "INSERT INTO demolab_requests (region, slot, twin, request)
                         VALUES ($1, $2, $3, $4) RETURNING id",
                        &[&region, &slot, &id_text, &body],
                    )
                    .await?
                    .get(0))
            })
            .await?;
        let deadline = tokio::time::Instant::now() + FORWARD_WAIT;
        loop {
            tokio::time::sleep(POLL_EVERY).await;
            let expired = tokio::time::Instant::now() >= deadline;
            // At the deadline, withdraw it unless the owner answered meanwhile.
            let outcome: Option<Vec<u8>> = self
                .client
                .with(|client| async move {
                    let row = if expired {
                        client
                            .query_opt(
                                "DELETE FROM demolab_requests WHERE id = $1 RETURNING outcome",
                                &[&id],
                            )
                            .await?
                    } else {
                        client
                            .query_opt("SELECT outcome FROM demolab_requests WHERE id = $1", &[&id])
                            .await?
                    };
                    Ok(row.and_then(|row| row.get::<_, Option<Vec<u8>>>(0)))
                })
                .await?;
            match outcome {
                Some(outcome) => {
                    self.client
                        .with(|client| async move {
                            client
                                .execute("DELETE FROM demolab_requests WHERE id = $1", &[&id])
                                .await?;
                            Ok(())
                        })
                        .await?;
                    let outcome: RequestOutcome =
                        serde_json::from_slice(&outcome).map_err(|source| SharedError::Codec {
                            what: "request outcome",
                            id: id.to_string(),
                            source,
                        })?;
                    return match outcome {
                        RequestOutcome::Done => Ok(()),
                        refused => Err(ForwardError::Refused(refused)),
                    };
                }
                None if expired => {
                    return Err(ForwardError::Unanswered(key.to_string(), FORWARD_WAIT));
                }
                None => {}
            }
        }
    }
}

/// Carries out the requests waiting for the slots this replica owns, in the order they came, and
/// answers each once what it changed is committed: a change answered `done` outlives its owner.
/// A slot that cannot commit within [`COMMIT_WAIT`] leaves its requests unanswered, so whoever
/// owns the slot next carries them out again (setting a desired value twice is harmless).
pub(super) async fn serve(
    lease: &Client,
    region: &str,
    owned: &HashMap<u32, RunningSlot>,
    twins: &TwinRegistry,
    commands: &AsyncClient,
) -> Result<(), SharedError> {
    if owned.is_empty() {
        return Ok(());
    }
    let slots: Vec<i32> = owned.keys().map(|slot| *slot as i32).collect();
    let rows = lease
        .query(
            "SELECT id, slot, twin, request FROM demolab_requests
             WHERE region = $1 AND slot = ANY($2) AND outcome IS NULL ORDER BY id",
            &[&region, &slots],
        )
        .await?;
    if rows.is_empty() {
        return Ok(());
    }
    let mut answers = Vec::with_capacity(rows.len());
    for row in rows {
        let id: i64 = row.get(0);
        let slot: i32 = row.get(1);
        let twin: &str = row.get(2);
        let outcome = match (
            TwinKey::parse(twin),
            serde_json::from_slice::<TwinRequest>(row.get(3)),
        ) {
            (Some(key), Ok(request)) => carry_out(&key, request, twins, commands),
            (_, Err(err)) => RequestOutcome::Refused {
                message: format!("the request does not decode: {err}"),
            },
            (None, _) => RequestOutcome::NotFound,
        };
        answers.push((id, slot as u32, outcome));
    }
    let mut committed: HashMap<u32, bool> = HashMap::new();
    for (_, slot, _) in &answers {
        if !committed.contains_key(slot) {
            let stored = match owned.get(slot) {
                Some(running) => running.commit_now(COMMIT_WAIT).await,
                None => false,
            };
            if !stored {
                warn!(
                    slot,
                    "a forwarded change is not committed yet; its request stays open"
                );
            }
            committed.insert(*slot, stored);
        }
    }
    for (id, slot, outcome) in answers {
        if !committed.get(&slot).copied().unwrap_or(false) {
            continue;
        }
        let encoded = serde_json::to_vec(&outcome).map_err(|source| SharedError::Codec {
            what: "request outcome",
            id: id.to_string(),
            source,
        })?;
        lease
            .execute(
                "UPDATE demolab_requests SET outcome = $2 WHERE id = $1",
                &[&id, &encoded],
            )
            .await?;
    }
    Ok(())
}

fn carry_out(
    key: &TwinKey,
    request: TwinRequest,
    twins: &TwinRegistry,
    commands: &AsyncClient,
) -> RequestOutcome {
    let now = crate::ingest::now_ms();
    match request {
        TwinRequest::Retire { user } => match twins.retire(key, now) {
            Some(_) => {
                info!(lab = %key.lab, machine = %key.machine, %user, "twin retired (asked through another replica)");
                RequestOutcome::Done
            }
            None => RequestOutcome::NotFound,
        },
        TwinRequest::Desired { values, user } => {
            let Some(twin) = twins.get(key) else {
                return RequestOutcome::NotFound;
            };
            let Some(gateway) = twin
                .connectivity
                .gateway
                .as_deref()
                .and_then(|g| g.parse().ok())
                .filter(|_| twin.connectivity.online)
            else {
                return RequestOutcome::Offline;
            };
            for (metric, value) in &values {
                if let Err(err) = twins.request_desired(key, metric, *value, &user, now) {
                    return match err {
                        DesiredError::UnknownTwin(_) => RequestOutcome::NotFound,
                        DesiredError::Offline(_) => RequestOutcome::Offline,
                        refused => RequestOutcome::Refused {
                            message: refused.to_string(),
                        },
                    };
                }
            }
            let pairs: Vec<(String, f64)> = values.into_iter().collect();
            let (topic, payload) = crate::host::device_command(key, &gateway, &pairs, now);
            match commands.try_publish(topic, QoS::AtLeastOnce, false, payload) {
                Ok(()) => RequestOutcome::Done,
                Err(err) => {
                    warn!(lab = %key.lab, machine = %key.machine, %err, "cannot send a forwarded DCMD");
                    RequestOutcome::NotSent {
                        message: err.to_string(),
                    }
                }
            }
        }
    }
}
