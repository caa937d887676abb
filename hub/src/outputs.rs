//! Where committed data goes besides the embedded store: retained JSON topics on the broker for
//! students and tools (Node-RED, Grafana), and the InfluxDB sink for long-term history.

use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, QoS};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::MqttLogin;
use crate::history::HistoryRow;
use crate::history::influx::InfluxSink;
use crate::stats::{HubStats, IngestDrop};
use crate::twin::{Applied, TwinRegistry};

/// Root of the read-only JSON topics: `demolab/{lab}/{machine}/{metric}`.
pub const JSON_ROOT: &str = "demolab";

/// One value for a JSON topic.
#[derive(Debug, Clone)]
struct JsonValue {
    topic: String,
    payload: Vec<u8>,
}

/// The outputs fed after each commit.
#[derive(Debug, Clone)]
pub struct Outputs {
    json: Option<mpsc::Sender<JsonValue>>,
    influx: Option<InfluxSink>,
    twins: Arc<TwinRegistry>,
    stats: Arc<HubStats>,
}

impl Outputs {
    /// No outputs (tests).
    pub fn none(twins: Arc<TwinRegistry>, stats: Arc<HubStats>) -> Self {
        Self {
            json: None,
            influx: None,
            twins,
            stats,
        }
    }

    /// Sends live values to the JSON topics and every row to InfluxDB. Neither may slow the
    /// store down: when they are backed up, values are dropped and counted.
    pub fn committed(&self, applied: &[Applied], rows: &[HistoryRow]) {
        if let Some(influx) = &self.influx {
            let mut at = 0;
            for applied in applied {
                let n = applied.values.len();
                for row in &rows[at..at + n] {
                    influx.offer(row, applied.gateway.as_deref(), applied.historical);
                }
                at += n;
            }
        }
        let Some(json) = &self.json else {
            return;
        };
        for applied in applied.iter().filter(|a| !a.historical) {
            let kind = self.twins.kind(&applied.key);
            for (metric, value) in &applied.values {
                let unit = kind
                    .as_ref()
                    .and_then(|k| k.metric(metric.as_str()))
                    .map_or("", |m| m.unit.as_str());
                let payload = serde_json::json!({
                    "value": value,
                    "unit": unit,
                    "timestamp": applied.timestamp,
                });
                let value = JsonValue {
                    topic: format!(
                        "{JSON_ROOT}/{}/{}/{}",
                        applied.key.lab, applied.key.machine, metric
                    ),
                    payload: payload.to_string().into_bytes(),
                };
                if json.try_send(value).is_err() {
                    self.stats.ingest_dropped(IngestDrop::JsonTopicBackpressure);
                }
            }
        }
    }
}

/// Where and how the JSON-topic publisher connects.
#[derive(Debug, Clone)]
pub struct JsonTopicsBroker {
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// The hub's login.
    pub login: Option<MqttLogin>,
    /// Its client id.
    pub client_id: String,
    /// TLS, when the hub's clients use it.
    pub tls: Option<broker::tls::ClientTls>,
}

/// Starts the outputs' tasks.
pub fn start(
    broker: Option<JsonTopicsBroker>,
    influx: Option<InfluxSink>,
    twins: Arc<TwinRegistry>,
    stats: Arc<HubStats>,
    cancel: CancellationToken,
    tasks: &mut tokio::task::JoinSet<()>,
) -> Outputs {
    let json = broker.map(|broker| {
        let (tx, rx) = mpsc::channel(8192);
        tasks.spawn(publish_json(broker, rx, cancel));
        tx
    });
    Outputs {
        json,
        influx,
        twins,
        stats,
    }
}

/// Publishes JSON values retained at QoS 0 on its own connection, so a slow broker never holds
/// up ingest's acknowledgements.
async fn publish_json(
    JsonTopicsBroker {
        host,
        port,
        login,
        client_id,
        tls,
    }: JsonTopicsBroker,
    mut values: mpsc::Receiver<JsonValue>,
    cancel: CancellationToken,
) {
    let mut options = MqttOptions::new(client_id, host, port);
    options.set_keep_alive(Duration::from_secs(15));
    if let Some(login) = login {
        options.set_credentials(login.username, login.password);
    }
    if let Some(tls) = &tls {
        crate::ingest::use_tls(&mut options, tls);
    }
    let (client, mut events) = AsyncClient::new(options, 1024);
    let publisher = async {
        while let Some(value) = values.recv().await {
            if client
                .publish(value.topic, QoS::AtMostOnce, true, value.payload)
                .await
                .is_err()
            {
                break;
            }
        }
    };
    let poller = async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(_) | Event::Outgoing(_)) => {}
                Err(err) => {
                    warn!(%err, "JSON topic connection lost; reconnecting");
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
