//! Where committed data goes besides the embedded store: retained JSON topics on the broker for
//! students and tools (Node-RED, Grafana), and the InfluxDB sink for long-term history.

use foldhash::{HashMap, HashMapExt};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use protocol::MetricName;
use tokio_util::sync::CancellationToken;

use crate::MqttLogin;

use crate::history::influx::InfluxSink;
use crate::stats::{HubStats, IngestDrop};
use crate::twin::{Applied, TwinKey, TwinRegistry};

mod json_topics;

/// Root of the read-only JSON topics: `demolab/{lab}/{machine}/{metric}`.
pub const JSON_ROOT: &str = "demolab";

/// How often the JSON topics get the values committed since the last time, when the
/// configuration names no interval.
pub const DEFAULT_JSON_INTERVAL: Duration = Duration::from_millis(250);

/// The newest committed value and its time, per twin and metric, not yet published.
type Latest = HashMap<TwinKey, HashMap<MetricName, (f64, u64)>>;

/// The outputs fed after each commit.
#[derive(Debug, Clone)]
pub struct Outputs {
    json: Option<Arc<Mutex<Latest>>>,
    influx: Option<InfluxSink>,
    stats: Arc<HubStats>,
}

impl Outputs {
    /// No outputs (tests).
    pub fn none(stats: Arc<HubStats>) -> Self {
        Self {
            json: None,
            influx: None,
            stats,
        }
    }

    /// Sends every row to InfluxDB and keeps the newest live value of each metric for the JSON
    /// topics. Neither may slow the store down: when InfluxDB is backed up its rows are dropped
    /// and counted; a JSON value replaced by a newer one before it was published is counted as
    /// superseded (a JSON topic holds the last value; the history keeps them all).
    pub fn committed(&self, applied: &[Applied]) {
        if let Some(influx) = &self.influx {
            for applied in applied {
                for row in applied.rows() {
                    influx.offer(row, applied.gateway.as_deref(), applied.historical);
                }
            }
        }
        let Some(json) = &self.json else {
            return;
        };
        let mut superseded = 0;
        {
            let mut latest = json.lock().unwrap_or_else(PoisonError::into_inner);
            for applied in applied.iter().filter(|a| !a.historical) {
                // Looked up before inserting so the key is cloned once per twin and flush, not
                // once per value.
                let metrics = match latest.get_mut(&applied.key) {
                    Some(metrics) => metrics,
                    None => latest.entry(applied.key.clone()).or_default(),
                };
                for (metric, value) in &applied.values {
                    let newest = (*value, applied.timestamp);
                    match metrics.get_mut(metric) {
                        Some(slot) => {
                            *slot = newest;
                            superseded += 1;
                        }
                        None => {
                            metrics.insert(metric.clone(), newest);
                        }
                    }
                }
            }
        }
        self.stats
            .ingest_dropped_many(IngestDrop::JsonTopicSuperseded, superseded);
    }
}

/// Where and how the JSON-topic publisher connects.
#[derive(Debug, Clone)]
pub struct JsonTopicsBroker {
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// More nodes of the same broker cluster, tried in turn when the connection is lost.
    pub failover: Vec<(String, u16)>,
    /// The hub's login.
    pub login: Option<MqttLogin>,
    /// Its client id.
    pub client_id: String,
    /// TLS, when the hub's clients use it.
    pub tls: Option<broker::tls::ClientTls>,
}

/// Starts the outputs' tasks: the JSON topics get what was committed every `json_interval`.
pub fn start(
    broker: Option<JsonTopicsBroker>,
    json_interval: Duration,
    influx: Option<InfluxSink>,
    twins: Arc<TwinRegistry>,
    stats: Arc<HubStats>,
    cancel: CancellationToken,
    tasks: &mut tokio::task::JoinSet<()>,
) -> Outputs {
    let json = broker.map(|broker| {
        let latest = Arc::new(Mutex::new(Latest::new()));
        tasks.spawn(json_topics::publish(
            broker,
            latest.clone(),
            json_interval,
            twins,
            cancel,
        ));
        latest
    });
    Outputs {
        json,
        influx,
        stats,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn applied(machine: &str, seq: u32, power: f64, historical: bool) -> Applied {
        Applied {
            key: TwinKey::parse(&format!("lab-a/{machine}")).expect("key"),
            timestamp: u64::from(seq) * 1_000,
            seq,
            values: vec![("spindle.power_w".parse().expect("metric"), power)],
            historical,
            gateway: None,
        }
    }

    #[test]
    fn json_topics_keep_the_newest_live_value_and_count_the_ones_it_replaced() {
        let stats = Arc::new(HubStats::default());
        let latest = Arc::new(Mutex::new(Latest::new()));
        let outputs = Outputs {
            json: Some(latest.clone()),
            influx: None,
            stats: stats.clone(),
        };
        outputs.committed(&[
            applied("mill-1", 1, 10.0, false),
            applied("mill-1", 2, 20.0, false),
            applied("mill-2", 1, 5.0, false),
        ]);
        // A replayed sample is history, not the machine's present value.
        outputs.committed(&[
            applied("mill-1", 3, 30.0, false),
            applied("mill-2", 0, 99.0, true),
        ]);
        let due = std::mem::take(&mut *latest.lock().expect("lock"));
        let value = |machine: &str| {
            let key = TwinKey::parse(&format!("lab-a/{machine}")).expect("key");
            due[&key].values().next().copied()
        };
        assert_eq!(value("mill-1"), Some((30.0, 3_000)));
        assert_eq!(value("mill-2"), Some((5.0, 1_000)));
        assert_eq!(stats.dropped(IngestDrop::JsonTopicSuperseded), 2);
    }
}
