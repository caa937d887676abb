//! The hub as a Sparkplug B primary host, spoken to by a hand-driven edge node over a real
//! broker: births create twins, data updates them, duplicates and late replays never move them
//! back, messages that overtake a late one wait for it, deaths mark them stale, a seq gap left
//! open or data without a birth asks for a rebirth, and a gateway a lab does not list is refused.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use demolab_tests::{hub_config, start_hub_with, wait_until, within};
use hub::broker::BrokerConfig;
use hub::directory::{Directory, LabConfig};
use hub::stats::IngestDrop;
use hub::twin::TwinKey;
use hub::{BrokerSetting, Hub, HubConfig};
use prost::Message;
use protocol::sparkplug::{BD_SEQ_METRIC, DataType, Metric, MetricValue, Payload, REBIRTH_METRIC};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;

fn metric(name: &str, value: f64) -> Metric {
    Metric::new(DataType::Double, MetricValue::Double(value)).named(name)
}

fn seq_metric(seq: u32) -> Metric {
    Metric::new(DataType::UInt32, MetricValue::Int(seq)).named("node.seq")
}

fn payload(seq: u64, metrics: Vec<Metric>) -> Vec<u8> {
    Payload {
        timestamp: Some(hub::ingest::now_ms()),
        seq: Some(seq),
        metrics,
        ..Default::default()
    }
    .encode_to_vec()
}

/// A bare edge node: its own MQTT session, publishing what the test tells it to.
struct Edge {
    client: AsyncClient,
    commands: mpsc::UnboundedReceiver<(String, Payload)>,
    lab: &'static str,
    gateway: &'static str,
}

impl Edge {
    async fn connect(port: u16, lab: &'static str, gateway: &'static str) -> anyhow::Result<Self> {
        let (client, mut events) = AsyncClient::new(
            MqttOptions::new(format!("{lab}-{gateway}"), "127.0.0.1", port),
            64,
        );
        let (tx, commands) = mpsc::unbounded_channel();
        let (subscribed_tx, subscribed) = tokio::sync::oneshot::channel();
        let mut subscribed_tx = Some(subscribed_tx);
        client
            .subscribe(format!("spBv1.0/{lab}/NCMD/{gateway}"), QoS::AtLeastOnce)
            .await?;
        tokio::spawn(async move {
            while let Ok(event) = events.poll().await {
                match event {
                    Event::Incoming(Packet::SubAck(_)) => {
                        if let Some(tx) = subscribed_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Event::Incoming(Packet::Publish(p)) => {
                        if let Ok(payload) = Payload::decode(p.payload) {
                            let _ = tx.send((p.topic, payload));
                        }
                    }
                    _ => {}
                }
            }
        });
        within(Duration::from_secs(5), "the edge subscription", subscribed).await??;
        Ok(Self {
            client,
            commands,
            lab,
            gateway,
        })
    }

    async fn send(&self, kind: &str, device: Option<&str>, bytes: Vec<u8>) -> anyhow::Result<()> {
        let topic = match device {
            Some(device) => format!("spBv1.0/{}/{kind}/{}/{device}", self.lab, self.gateway),
            None => format!("spBv1.0/{}/{kind}/{}", self.lab, self.gateway),
        };
        self.client
            .publish(topic, QoS::AtLeastOnce, false, bytes)
            .await?;
        Ok(())
    }

    async fn born(&self, bd_seq: u64) -> anyhow::Result<()> {
        let bd = Metric::new(DataType::UInt64, MetricValue::Long(bd_seq)).named(BD_SEQ_METRIC);
        self.send("NBIRTH", None, payload(0, vec![bd])).await?;
        let metrics = vec![
            metric("spindle.power_w", 0.0),
            metric("coolant.temperature_c", 20.0),
            seq_metric(0),
        ];
        self.send("DBIRTH", Some("mill-1"), payload(1, metrics))
            .await
    }

    async fn sample(&self, seq: u64, node_seq: u32, power: f64) -> anyhow::Result<()> {
        let metrics = vec![seq_metric(node_seq), metric("spindle.power_w", power)];
        self.send("DDATA", Some("mill-1"), payload(seq, metrics))
            .await
    }

    async fn next_rebirth_request(&mut self) -> anyhow::Result<()> {
        let (topic, payload) = within(
            Duration::from_secs(5),
            "a rebirth request",
            self.commands.recv(),
        )
        .await?
        .context("edge session ended")?;
        assert_eq!(topic, format!("spBv1.0/{}/NCMD/{}", self.lab, self.gateway));
        assert_eq!(payload.metrics[0].name.as_deref(), Some(REBIRTH_METRIC));
        Ok(())
    }
}

async fn hub_with_labs(data: &std::path::Path, labs: Vec<LabConfig>) -> anyhow::Result<Hub> {
    start_hub_with(HubConfig {
        directory: std::sync::Arc::new(Directory::new(Default::default(), labs, vec![])?),
        json_topics: false,
        ..hub_config(data)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_primary_host_keeps_twins_in_sequence_and_asks_for_rebirths() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let hub = hub_with_labs(data.path(), vec![]).await?;
    let twins = hub.twins().clone();
    let stats = hub.stats().clone();
    let mut edge = Edge::connect(hub.mqtt_addr().port(), "lab-s", "gw-s").await?;
    let key = TwinKey::parse("lab-s/mill-1").context("key")?;

    // Data before any birth: dropped, counted, and a rebirth is requested.
    edge.sample(0, 1, 1.0).await?;
    edge.next_rebirth_request().await?;
    assert_eq!(stats.dropped(IngestDrop::DataBeforeBirth), 1);
    assert!(twins.get(&key).is_none());

    // A birth creates the twin, with the catalogue kind its metrics match.
    edge.born(1).await?;
    wait_until(Duration::from_secs(5), "the twin", || {
        twins.get(&key).is_some_and(|t| t.connectivity.online)
    })
    .await?;
    assert_eq!(twins.get(&key).context("twin")?.kind, "cnc-mill");

    // Data updates it in sequence order; a duplicate and a late replay change nothing.
    edge.sample(2, 1, 100.0).await?;
    edge.sample(3, 2, 200.0).await?;
    edge.sample(4, 2, 999.0).await?;
    edge.sample(5, 1, 998.0).await?;
    edge.sample(6, 3, 300.0).await?;
    wait_until(Duration::from_secs(5), "three samples", || {
        twins.get(&key).is_some_and(|t| t.last_seq == 3)
    })
    .await?;
    let twin = twins.get(&key).context("twin")?;
    assert_eq!(
        (twin.samples, twin.value("spindle.power_w")),
        (3, Some(300.0))
    );
    assert_eq!(stats.dropped(IngestDrop::StaleSequence), 2);

    // A Sparkplug seq gap (7 is skipped) asks for a rebirth; the sample itself is kept.
    edge.sample(8, 4, 400.0).await?;
    edge.next_rebirth_request().await?;
    wait_until(Duration::from_secs(5), "the sample after the gap", || {
        twins.get(&key).is_some_and(|t| t.last_seq == 4)
    })
    .await?;

    // An NDEATH of an older session is ignored; the current one marks everything stale.
    let death = |bd_seq| {
        payload(
            0,
            vec![Metric::new(DataType::UInt64, MetricValue::Long(bd_seq)).named(BD_SEQ_METRIC)],
        )
    };
    edge.send("NDEATH", None, death(0)).await?;
    edge.sample(9, 5, 500.0).await?;
    wait_until(
        Duration::from_secs(5),
        "the sample after the old death",
        || twins.get(&key).is_some_and(|t| t.last_seq == 5),
    )
    .await?;
    assert!(twins.get(&key).context("twin")?.connectivity.online);
    edge.send("NDEATH", None, death(1)).await?;
    wait_until(Duration::from_secs(5), "the twin offline", || {
        twins.get(&key).is_some_and(|t| !t.connectivity.online)
    })
    .await?;
    let twin = twins.get(&key).context("twin")?;
    let power = &twin.features["spindle"].properties["power_w"];
    assert!(power.stale && power.reported == Some(500.0), "{power:?}");
    hub.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_that_overtake_a_late_one_wait_for_it_and_are_applied_in_order()
-> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let hub = hub_with_labs(data.path(), vec![]).await?;
    let twins = hub.twins().clone();
    let stats = hub.stats().clone();
    let mut edge = Edge::connect(hub.mqtt_addr().port(), "lab-r", "gw-r").await?;
    let key = TwinKey::parse("lab-r/mill-1").context("key")?;
    edge.born(1).await?;
    wait_until(Duration::from_secs(5), "the twin", || {
        twins.get(&key).is_some_and(|t| t.connectivity.online)
    })
    .await?;

    // What a broker cluster does when a node dies: 3 and 4 arrive before 2.
    edge.sample(3, 2, 200.0).await?;
    edge.sample(4, 3, 300.0).await?;
    wait_until(Duration::from_secs(5), "both received", || {
        stats.messages_received() >= 4
    })
    .await?;
    assert_eq!(
        twins.get(&key).context("twin")?.samples,
        0,
        "held until the gap fills"
    );
    edge.sample(2, 1, 100.0).await?;
    wait_until(Duration::from_secs(5), "all three in order", || {
        twins.get(&key).is_some_and(|t| t.last_seq == 3)
    })
    .await?;
    let twin = twins.get(&key).context("twin")?;
    assert_eq!(
        (twin.samples, twin.value("spindle.power_w")),
        (3, Some(300.0))
    );
    assert!(
        twin.missing_seqs.is_empty(),
        "each applied as a live sample, not a late one: {:?}",
        twin.missing_seqs
    );
    assert_eq!(
        (
            stats.reordered(),
            stats.seq_gaps(),
            stats.dropped(IngestDrop::StaleSequence)
        ),
        (2, 0, 0)
    );
    // The stream goes on, and nobody was asked for a rebirth.
    edge.sample(5, 4, 400.0).await?;
    wait_until(Duration::from_secs(5), "the next sample", || {
        twins.get(&key).is_some_and(|t| t.last_seq == 4)
    })
    .await?;
    assert!(edge.commands.try_recv().is_err(), "no rebirth request");
    let metrics = hub.stats().render(0, 0);
    assert!(
        metrics.contains("demolab_hub_reordered_total 2"),
        "{metrics}"
    );
    hub.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_the_lab_does_not_list_is_refused() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let lab = LabConfig {
        id: "lab-r".parse()?,
        name: "Registered".into(),
        location: String::new(),
        gateways: vec!["gw-ok".parse()?],
        machines: vec![],
        accept_new_machines: true,
    };
    let hub = hub_with_labs(data.path(), vec![lab]).await?;
    let twins = hub.twins().clone();
    let stats = hub.stats().clone();
    let port = hub.mqtt_addr().port();
    let intruder = Edge::connect(port, "lab-r", "gw-evil").await?;
    intruder.born(1).await?;
    let listed = Edge::connect(port, "lab-r", "gw-ok").await?;
    listed.born(1).await?;
    wait_until(Duration::from_secs(5), "the listed gateway's twin", || {
        twins
            .get(&TwinKey::parse("lab-r/mill-1").expect("key"))
            .is_some()
    })
    .await?;
    // Both births of the intruder (NBIRTH and DBIRTH) are dropped and counted.
    wait_until(
        Duration::from_secs(5),
        "the intruder's births dropped",
        || stats.dropped(IngestDrop::UnregisteredGateway) == 2,
    )
    .await?;
    let twin = twins
        .get(&TwinKey::parse("lab-r/mill-1").context("key")?)
        .context("twin")?;
    assert_eq!(twin.connectivity.gateway.as_deref(), Some("gw-ok"));
    hub.shutdown().await?;
    Ok(())
}

/// A hub that commits in batches of 4 (behind an embedded broker with `window` if given), an
/// edge of lab-c connected to it, and the key of that edge's mill.
async fn batching_hub(
    data: &std::path::Path,
    flush_interval: Duration,
    window: Option<u16>,
) -> anyhow::Result<(Hub, Edge, TwinKey)> {
    batching_hub_reading_at_most(data, flush_interval, window, 1024).await
}

/// [`batching_hub`] that stops reading at `max_uncommitted` messages waiting for storage.
async fn batching_hub_reading_at_most(
    data: &std::path::Path,
    flush_interval: Duration,
    window: Option<u16>,
    max_uncommitted: usize,
) -> anyhow::Result<(Hub, Edge, TwinKey)> {
    let mut config = HubConfig {
        flush_interval,
        commit_batch: 4,
        max_uncommitted,
        json_topics: false,
        ..hub_config(data)
    };
    if let Some(window) = window {
        config.broker = BrokerSetting::Embedded(BrokerConfig {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            max_outbound_inflight: window,
            ..BrokerConfig::default()
        });
    }
    let hub = start_hub_with(config).await?;
    let edge = Edge::connect(hub.mqtt_addr().port(), "lab-c", "gw-c").await?;
    let key = TwinKey::parse("lab-c/mill-1").context("key")?;
    Ok((hub, edge, key))
}

/// Group commit: a thin stream waits up to `flush_interval` for company (one commit per
/// message costs an fsync and a copy of the twin, which made the hub's CPU at low rates), and a
/// batch of `commit_batch` messages commits at once, so a broker window full of unacknowledged
/// messages never waits out the interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thin_stream_waits_for_company_and_a_full_batch_commits_at_once() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let (hub, edge, key) = batching_hub(data.path(), Duration::from_secs(30), None).await?;
    let twins = hub.twins().clone();
    let stats = hub.stats().clone();
    let commits_before = stats.commits();

    // The hub's own STATE (it subscribes to all of `spBv1.0/#`), NBIRTH, DBIRTH and one sample
    // make the first batch.
    edge.born(1).await?;
    edge.sample(2, 1, 100.0).await?;
    wait_until(Duration::from_secs(10), "the first batch committed", || {
        stats.commits() > commits_before
    })
    .await?;
    assert_eq!(stats.history_rows(), 1, "one sample's power");
    let commits_before = stats.commits();

    // Three more samples wait for a fourth, applied but not committed.
    for node_seq in 2..=4 {
        edge.sample(
            u64::from(node_seq) + 1,
            node_seq,
            f64::from(node_seq) * 100.0,
        )
        .await?;
    }
    wait_until(Duration::from_secs(5), "three samples applied", || {
        twins.get(&key).is_some_and(|t| t.last_seq == 4)
    })
    .await?;
    assert_eq!(
        stats.commits(),
        commits_before,
        "three messages wait for company"
    );
    assert_eq!(stats.history_rows(), 1);

    // The fourth makes the batch: committed long before the 30 s interval.
    edge.sample(6, 5, 500.0).await?;
    wait_until(
        Duration::from_secs(10),
        "the second batch committed",
        || stats.history_rows() == 5,
    )
    .await?;
    assert_eq!(stats.commits(), commits_before + 1, "in one commit");
    hub.shutdown().await?;
    Ok(())
}

/// Births the edge's machine, sends `samples` samples as fast as the edge's client takes them,
/// and checks every one was committed and applied once, in order.
async fn all_samples_arrive_once_in_order(
    hub: &Hub,
    edge: &Edge,
    key: &TwinKey,
    samples: u32,
) -> anyhow::Result<()> {
    let stats = hub.stats();
    edge.born(1).await?;
    for node_seq in 1..=samples {
        let payload_seq = (u64::from(node_seq) + 1) % 256;
        edge.sample(payload_seq, node_seq, f64::from(node_seq))
            .await?;
    }
    wait_until(Duration::from_secs(30), "every sample committed", || {
        stats.history_rows() == u64::from(samples)
    })
    .await?;
    let twin = hub.twins().get(key).context("twin")?;
    assert_eq!(twin.last_seq, samples, "the last sample is the newest");
    assert_eq!(twin.samples, u64::from(samples), "each sample applied once");
    assert_eq!(stats.seq_gaps(), 0, "in order, nothing skipped");
    Ok(())
}

/// The hub acknowledges only what is on disk and hands storage one batch at a time, so what it
/// holds in memory is bounded by the broker's window however far storage falls behind: a window of
/// 8 with batches of 4 still carries every sample, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_waits_for_storage_is_bounded_by_the_brokers_window() -> anyhow::Result<()> {
    const SAMPLES: u32 = 201;
    let data = tempfile::tempdir()?;
    let (hub, edge, key) = batching_hub(data.path(), Duration::from_secs(1), Some(8)).await?;
    let stats = hub.stats().clone();

    // Far more than the window: the edge's client queues what the broker does not take yet.
    all_samples_arrive_once_in_order(&hub, &edge, &key, SAMPLES).await?;
    let peak = stats.uncommitted_peak();
    assert!(
        (4..=8).contains(&peak),
        "a full batch waited, never more than the window: {peak}"
    );
    hub.shutdown().await?;
    Ok(())
}

/// Behind a broker that lets far more through than storage keeps up with (a window of 1000
/// here; Mosquitto 2.0.11 ignores its own), ingest stops reading at `max_uncommitted` messages
/// waiting for storage and reads on once storage caught up: what the hub holds stays bounded,
/// and every sample still arrives once, in order. This needs acknowledgements that go out
/// while the broker is not read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_stops_reading_while_storage_is_behind_and_loses_nothing() -> anyhow::Result<()> {
    const SAMPLES: u32 = 400;
    const MAX_UNCOMMITTED: usize = 8;
    let data = tempfile::tempdir()?;
    let (hub, edge, key) = batching_hub_reading_at_most(
        data.path(),
        Duration::from_secs(1),
        Some(1000),
        MAX_UNCOMMITTED,
    )
    .await?;
    let stats = hub.stats().clone();

    all_samples_arrive_once_in_order(&hub, &edge, &key, SAMPLES).await?;
    let peak = stats.uncommitted_peak();
    assert!(
        peak <= MAX_UNCOMMITTED as u64,
        "never more than max_uncommitted waited, with the broker's window at 1000: {peak}"
    );
    assert!(
        stats.ingest_pauses() > 0,
        "400 samples as fast as the edge sends them outran storage at least once"
    );
    let metrics = stats.render(1, 1);
    assert!(
        metrics.contains(&format!(
            "demolab_hub_ingest_paused_total {}",
            stats.ingest_pauses()
        )),
        "counted in /metrics"
    );
    hub.shutdown().await?;
    Ok(())
}
