//! The load generator: edge nodes publishing paced QoS 1 messages, either as Sparkplug B (the
//! hub and the plain subscriber) or as the same values in small JSON documents (Node-RED).
//!
//! Pacing is by due count, not by sleeping per message: every few milliseconds each edge
//! publishes what its share of the rate makes due since the step began, so the average rate is
//! exact even when a tick comes late, and a generator that cannot keep up shows as a longer step.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use protocol::sparkplug::{BD_SEQ_METRIC, DataType, Metric, MetricValue};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{Value, json};

use crate::latency::Recorder;
pub use demolab_bench::latency::{machine_name, parse_machine};
pub use demolab_bench::sparkplug_load::METRICS;
use demolab_bench::sparkplug_load::encode;

/// The lab every message is for.
pub const LAB: &str = "lab-bench";

/// What the messages look like on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// NBIRTH, DBIRTHs, DDATA on `spBv1.0/{lab}/DDATA/{gateway}/{machine}`.
    Sparkplug,
    /// `{"machine","seq","ts", values…}` on `bench/{lab}/{machine}`, no births.
    Json,
}

/// The five values of sample `seq`: plausible, varying and reproducible from `seq` alone.
fn values(seq: u32, m: u32) -> [f64; 5] {
    let phase = f64::from((seq + m * 7) % 100);
    [
        4_000.0 + 10.0 * phase,
        0.5 + phase / 200.0,
        22.0 + phase / 20.0,
        1.0,
        f64::from(seq),
    ]
}

/// What one paced step achieved.
#[derive(Debug, Clone)]
pub struct StepLoad {
    pub requested_rate: f64,
    pub sent: u64,
    /// From the step's start until the last message was handed to the MQTT client.
    pub publish_s: f64,
    /// From the step's start until the broker acknowledged the last message.
    pub acked_s: f64,
    /// When the broker acknowledged the last message: the load stopped here.
    pub stopped: Instant,
}

impl StepLoad {
    /// Messages per second the broker acknowledged over the step.
    pub fn achieved_rate(&self) -> f64 {
        self.sent as f64 / self.acked_s.max(1e-9)
    }

    pub fn to_json(&self) -> Value {
        json!({
            "requested_msg_per_s": self.requested_rate,
            "sent": self.sent,
            "publish_s": self.publish_s,
            "acked_s": self.acked_s,
            "achieved_msg_per_s": self.achieved_rate(),
        })
    }
}

/// Its event loop is aborted when the edge goes, even on an error path.
#[derive(Debug)]
struct Edge {
    index: u32,
    client: AsyncClient,
    acked: Arc<AtomicU64>,
    published: u64,
    poller: tokio::task::JoinHandle<()>,
    /// Sparkplug payload `seq`, 0..=255 per edge node.
    payload_seq: u64,
    /// Last `node.seq` of each machine (its birth declared 0).
    node_seq: Vec<u32>,
    next_machine: usize,
}

impl Edge {
    fn next_payload_seq(&mut self) -> u64 {
        let s = self.payload_seq % 256;
        self.payload_seq += 1;
        s
    }

    async fn publish(&mut self, topic: String, payload: Vec<u8>) -> anyhow::Result<()> {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .context("handing a message to the MQTT client")?;
        self.published += 1;
        Ok(())
    }

    /// The next machine's next sample; records its send time when `recorder` is measuring.
    async fn publish_sample(
        &mut self,
        format: Format,
        recorder: Option<&Recorder>,
    ) -> anyhow::Result<()> {
        let m = self.next_machine;
        self.next_machine = (m + 1) % self.node_seq.len();
        self.node_seq[m] += 1;
        let seq = self.node_seq[m];
        let m = m as u32;
        let name = machine_name(self.index, m);
        let vals = values(seq, m);
        let (topic, payload) = match format {
            Format::Sparkplug => {
                let mut metrics =
                    vec![Metric::new(DataType::UInt32, MetricValue::Int(seq)).named("node.seq")];
                metrics.extend(
                    METRICS.iter().zip(vals).map(|(n, v)| {
                        Metric::new(DataType::Double, MetricValue::Double(v)).named(*n)
                    }),
                );
                let payload = encode(self.next_payload_seq(), metrics);
                (
                    format!("spBv1.0/{LAB}/DDATA/gw-{}/{name}", self.index),
                    payload,
                )
            }
            Format::Json => {
                let mut doc = serde_json::Map::new();
                doc.insert("machine".into(), name.clone().into());
                doc.insert("seq".into(), seq.into());
                doc.insert("ts".into(), hub::ingest::now_ms().into());
                for (n, v) in METRICS.iter().zip(vals) {
                    doc.insert((*n).into(), v.into());
                }
                (
                    format!("bench/{LAB}/{name}"),
                    serde_json::to_vec(&doc).context("encoding JSON")?,
                )
            }
        };
        if let Some(recorder) = recorder {
            recorder.sent((self.index, m, seq), Instant::now());
        }
        self.publish(topic, payload).await
    }
}

impl Drop for Edge {
    fn drop(&mut self) {
        self.poller.abort();
    }
}

/// Edge nodes connected to the broker, each on its own connection.
#[derive(Debug)]
pub struct Generator {
    edges: Vec<Edge>,
    format: Format,
    /// Properties each DBIRTH declares besides [`METRICS`] and `node.seq` (never sent again).
    pub extra_properties: u32,
    /// Connection errors seen by the edges' event loops (they reconnect).
    pub errors: Arc<AtomicU64>,
}

impl Generator {
    pub async fn connect(
        port: u16,
        password: &str,
        edges: u32,
        machines: u32,
        format: Format,
    ) -> anyhow::Result<Self> {
        let errors = Arc::new(AtomicU64::new(0));
        let mut out = Vec::new();
        for index in 0..edges {
            let mut options = MqttOptions::new(
                format!("bench-load-{}-{index}", std::process::id()),
                "127.0.0.1",
                port,
            );
            options.set_credentials("load", password);
            options.set_keep_alive(Duration::from_secs(30));
            options.set_inflight(100);
            let (client, mut events) = AsyncClient::new(options, 1024);
            let acked = Arc::new(AtomicU64::new(0));
            let (connected_tx, mut connected) = tokio::sync::watch::channel(false);
            let poller = {
                let acked = acked.clone();
                let errors = errors.clone();
                tokio::spawn(async move {
                    loop {
                        match events.poll().await {
                            Ok(Event::Incoming(Packet::PubAck(_))) => {
                                acked.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                                connected_tx.send_replace(true);
                            }
                            Ok(_) => {}
                            Err(err) => {
                                errors.fetch_add(1, Ordering::Relaxed);
                                eprintln!("load edge {index}: MQTT error: {err}");
                                tokio::time::sleep(Duration::from_millis(200)).await;
                            }
                        }
                    }
                })
            };
            tokio::time::timeout(Duration::from_secs(10), connected.wait_for(|c| *c))
                .await
                .with_context(|| format!("edge {index} did not connect to the broker"))??;
            out.push(Edge {
                index,
                client,
                acked,
                published: 0,
                poller,
                payload_seq: 0,
                node_seq: vec![0; machines as usize],
                next_machine: 0,
            });
        }
        Ok(Self {
            edges: out,
            format,
            extra_properties: 0,
            errors,
        })
    }

    /// NBIRTH (bdSeq 0) and a DBIRTH per machine, acknowledged by the broker. Nothing for JSON.
    pub async fn births(&mut self) -> anyhow::Result<()> {
        if self.format != Format::Sparkplug {
            return Ok(());
        }
        for edge in &mut self.edges {
            let gateway = format!("gw-{}", edge.index);
            let bd = Metric::new(DataType::UInt64, MetricValue::Long(0)).named(BD_SEQ_METRIC);
            let seq = edge.next_payload_seq();
            edge.publish(
                format!("spBv1.0/{LAB}/NBIRTH/{gateway}"),
                encode(seq, vec![bd]),
            )
            .await?;
            for m in 0..edge.node_seq.len() as u32 {
                let mut metrics: Vec<Metric> = METRICS
                    .iter()
                    .map(|n| Metric::new(DataType::Double, MetricValue::Double(0.0)).named(*n))
                    .collect();
                metrics.extend((0..self.extra_properties).map(|p| {
                    Metric::new(DataType::Double, MetricValue::Double(f64::from(p)))
                        .named(format!("setting.p{p}"))
                }));
                metrics.push(
                    Metric::new(
                        DataType::UInt32,
                        MetricValue::Int(edge.node_seq[m as usize]),
                    )
                    .named("node.seq"),
                );
                let seq = edge.next_payload_seq();
                edge.publish(
                    format!(
                        "spBv1.0/{LAB}/DBIRTH/{gateway}/{}",
                        machine_name(edge.index, m)
                    ),
                    encode(seq, metrics),
                )
                .await?;
            }
        }
        self.wait_acked(Duration::from_secs(10)).await?;
        Ok(())
    }

    async fn wait_acked(&self, deadline: Duration) -> anyhow::Result<()> {
        let until = Instant::now() + deadline;
        loop {
            let behind: u64 = self
                .edges
                .iter()
                .map(|e| e.published.saturating_sub(e.acked.load(Ordering::Relaxed)))
                .sum();
            if behind == 0 {
                return Ok(());
            }
            if Instant::now() > until {
                bail!("the broker left {behind} messages unacknowledged for {deadline:?}");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Publishes `rate` messages per second in total for `duration`, spread evenly over the
    /// edges, and waits for the broker's acknowledgements.
    pub async fn run_step(
        &mut self,
        rate: f64,
        duration: Duration,
        recorder: Option<Arc<Recorder>>,
    ) -> anyhow::Result<StepLoad> {
        let edges = std::mem::take(&mut self.edges);
        let n = edges.len() as u64;
        let total = (rate * duration.as_secs_f64()).round() as u64;
        let per_edge_rate = rate / n as f64;
        let format = self.format;
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for (i, mut edge) in edges.into_iter().enumerate() {
            let i = i as u64;
            // Edge i's share, rounded so the shares add up to exactly `total`.
            let share = total * (i + 1) / n - total * i / n;
            let recorder = recorder.clone();
            tasks.spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(4));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut sent = 0u64;
                let result = async {
                    while sent < share {
                        tick.tick().await;
                        let due =
                            ((started.elapsed().as_secs_f64() * per_edge_rate) as u64).min(share);
                        while sent < due {
                            edge.publish_sample(format, recorder.as_deref()).await?;
                            sent += 1;
                        }
                    }
                    anyhow::Ok(())
                }
                .await;
                (edge, sent, started.elapsed(), result)
            });
        }
        let mut sent = 0;
        let mut publish = Duration::ZERO;
        let mut first_error = None;
        while let Some(joined) = tasks.join_next().await {
            let (edge, s, took, result) = joined.context("an edge task panicked")?;
            self.edges.push(edge);
            sent += s;
            publish = publish.max(took);
            if let Err(err) = result {
                first_error.get_or_insert(err);
            }
        }
        self.edges.sort_by_key(|e| e.index);
        if let Some(err) = first_error {
            return Err(err);
        }
        self.wait_acked(Duration::from_secs(60)).await?;
        let stopped = Instant::now();
        Ok(StepLoad {
            requested_rate: rate,
            sent,
            publish_s: publish.as_secs_f64(),
            acked_s: (stopped - started).as_secs_f64(),
            stopped,
        })
    }

    /// Sends one JSON probe for `machine` with `seq` 0 (used to see a consumer is subscribed).
    pub async fn probe(&mut self, machine: &str) -> anyhow::Result<()> {
        let Some(edge) = self.edges.first_mut() else {
            bail!("no edge nodes");
        };
        let doc = json!({"machine": machine, "seq": 0, "ts": hub::ingest::now_ms()});
        edge.publish(format!("bench/{LAB}/{machine}"), serde_json::to_vec(&doc)?)
            .await
    }

    /// Closes the edges' connections (their event loops stop when the edges are dropped);
    /// clean sessions, so the broker forgets them.
    pub fn disconnect(self) {
        drop(self);
    }
}

/// Bytes of a typical DDATA payload in each format (machine m-3-24, node.seq 123456).
pub fn payload_sizes() -> (usize, usize) {
    let (seq, m) = (123_456u32, 24u32);
    let vals = values(seq, m);
    let mut metrics = vec![Metric::new(DataType::UInt32, MetricValue::Int(seq)).named("node.seq")];
    metrics.extend(
        METRICS
            .iter()
            .zip(vals)
            .map(|(n, v)| Metric::new(DataType::Double, MetricValue::Double(v)).named(*n)),
    );
    let sparkplug = encode(200, metrics).len();
    let mut doc = serde_json::Map::new();
    doc.insert("machine".into(), machine_name(3, m).into());
    doc.insert("seq".into(), seq.into());
    doc.insert("ts".into(), hub::ingest::now_ms().into());
    for (n, v) in METRICS.iter().zip(vals) {
        doc.insert((*n).into(), v.into());
    }
    let json = serde_json::to_vec(&doc).map_or(0, |v| v.len());
    (sparkplug, json)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_names_parse_back() {
        assert_eq!(parse_machine(&machine_name(3, 17)), Some((3, 17)));
        assert_eq!(parse_machine("probe"), None);
    }

    #[test]
    fn a_json_sample_is_about_150_bytes() {
        let (_, json) = payload_sizes();
        assert!((120..=200).contains(&json), "{json} bytes");
    }
}
