//! Where committed data goes besides the embedded store: retained JSON topics on the broker for
//! students and tools (Node-RED, Grafana), and the InfluxDB sink for long-term history.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use protocol::MetricName;
use rumqttc::{AsyncClient, Event, MqttOptions, QoS};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::MqttLogin;

use crate::history::influx::InfluxSink;
use crate::stats::{HubStats, IngestDrop};
use crate::twin::{Applied, TwinKey, TwinRegistry};

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
        tasks.spawn(publish_json(
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

/// Publishes JSON values retained at QoS 0 on its own connection, so a slow broker never holds
/// up ingest's acknowledgements. While the broker is slow or away, values wait in `latest`,
/// where each metric holds only its newest: memory stays bounded by the twins' metrics.
async fn publish_json(
    broker: JsonTopicsBroker,
    latest: Arc<Mutex<Latest>>,
    interval: Duration,
    twins: Arc<TwinRegistry>,
    cancel: CancellationToken,
) {
    let (client, mut events) = AsyncClient::new(json_options(&broker, 0), 1024);
    let publisher = async {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let due = std::mem::take(&mut *latest.lock().unwrap_or_else(PoisonError::into_inner));
            for (key, metrics) in due {
                let kind = twins.kind(&key);
                for (metric, (value, timestamp)) in metrics {
                    let unit = kind
                        .as_ref()
                        .and_then(|k| k.metric(metric.as_str()))
                        .map_or("", |m| m.unit.as_str());
                    let payload = serde_json::json!({
                        "value": value,
                        "unit": unit,
                        "timestamp": timestamp,
                    });
                    let topic = format!("{JSON_ROOT}/{}/{}/{metric}", key.lab, key.machine);
                    if client
                        .publish(topic, QoS::AtMostOnce, true, payload.to_string())
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
    };
    let poller = async {
        let mut node = 0;
        loop {
            match events.poll().await {
                Ok(Event::Incoming(_) | Event::Outgoing(_)) => {}
                Err(err) => {
                    warn!(%err, "JSON topic connection lost; reconnecting");
                    if !broker.failover.is_empty() {
                        // As ingest does: a lost connection may be a dead cluster node.
                        node += 1;
                        events.mqtt_options = json_options(&broker, node);
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    };
    tokio::select! {
        () = publisher => {}
        () = poller => {}
        () = cancel.cancelled() => {}
    }
    let _ = client.try_disconnect();
}

/// The JSON publisher's options for node `index` of its broker list.
fn json_options(broker: &JsonTopicsBroker, index: usize) -> MqttOptions {
    let (host, port) =
        crate::ingest::nth_broker((&broker.host, broker.port), &broker.failover, index);
    let mut options = MqttOptions::new(broker.client_id.clone(), host, port);
    options.set_keep_alive(Duration::from_secs(15));
    if let Some(login) = &broker.login {
        options.set_credentials(login.username.clone(), login.password.clone());
    }
    if let Some(tls) = &broker.tls {
        crate::ingest::use_tls(&mut options, tls);
    }
    options
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_json_publisher_walks_the_cluster_nodes_like_ingest() {
        let broker = JsonTopicsBroker {
            host: "a".into(),
            port: 1,
            failover: vec![("b".into(), 2)],
            login: Some(MqttLogin {
                username: "hub".into(),
                password: "pw".into(),
            }),
            client_id: "demolab-hub-json".into(),
            tls: None,
        };
        let nodes: Vec<_> = (0..3)
            .map(|i| json_options(&broker, i).broker_address())
            .collect();
        assert_eq!(nodes, [("a".into(), 1), ("b".into(), 2), ("a".into(), 1)]);
        assert_eq!(json_options(&broker, 1).client_id(), "demolab-hub-json");
    }

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
