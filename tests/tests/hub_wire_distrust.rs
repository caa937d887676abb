//! The hub distrusts the wire (issue 11): plain MQTT clients on the hub's own broker try what a
//! compromised or buggy gateway could — forged sequence jumps and deaths, births of labs and
//! machines nobody configured, floods of invented metrics, oversized topics and payloads — and
//! every attempt is refused and counted by reason while the real edge node's data keeps
//! flowing, exactly. An operator retires a twin through the API.

use std::time::Duration;

use anyhow::Context;
use demolab_tests::{
    cheap_password_hash, get_json, http, hub_config, start_hub_with, wait_until, within,
};
use hub::auth::{AuthConfig, GameConfig, Role, UserConfig};
use hub::directory::{Directory, LabConfig, MachineConfig};
use hub::limits::Limits;
use hub::stats::IngestDrop;
use hub::twin::TwinKey;
use hub::{Hub, HubConfig};
use prost::Message;
use protocol::sparkplug::{BD_SEQ_METRIC, DataType, Metric, MetricValue, Payload, REBIRTH_METRIC};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;

const LAB: &str = "lab-w";
const GATEWAY: &str = "gw-w";
const DEADLINE: Duration = Duration::from_secs(10);

fn machine(id: &str) -> anyhow::Result<MachineConfig> {
    Ok(MachineConfig {
        id: id.parse()?,
        kind: None,
        name: None,
        line: None,
        attributes: Default::default(),
    })
}

/// A hub that knows one lab with one gateway and one machine, takes nothing else, has small
/// caps, and an operator and a student.
fn config(data: &std::path::Path) -> anyhow::Result<HubConfig> {
    let lab = LabConfig {
        id: LAB.parse()?,
        name: "Wire lab".into(),
        location: String::new(),
        gateways: vec![GATEWAY.parse()?],
        machines: vec![machine("mill-1")?],
        accept_new_machines: false,
    };
    let user = |name: &str, role, game: Option<&str>| -> anyhow::Result<UserConfig> {
        Ok(UserConfig {
            name: name.into(),
            role,
            password_hash: cheap_password_hash(&format!("{name}-secret"))?,
            game: game.map(str::to_owned),
        })
    };
    Ok(HubConfig {
        directory: std::sync::Arc::new(Directory::new(Default::default(), vec![lab], vec![])?),
        accept_unknown: false,
        json_topics: false,
        limits: Limits {
            max_metrics_per_device: 16,
            max_payload_bytes: 4096,
            seq_window: 1000,
            ..Limits::default()
        },
        auth: AuthConfig {
            public_labs: vec![LAB.into()],
            token_ttl_s: 600,
            users: vec![
                user("olga", Role::Operator, None)?,
                user("sam", Role::Student, Some("g1"))?,
            ],
            games: vec![GameConfig {
                id: "g1".into(),
                name: "Game one".into(),
                labs: vec![LAB.parse()?],
            }],
            ..AuthConfig::default()
        },
        ..hub_config(data)
    })
}

fn double(name: &str, value: f64) -> Metric {
    Metric::new(DataType::Double, MetricValue::Double(value)).named(name)
}

fn node_seq(seq: u32) -> Metric {
    Metric::new(DataType::UInt32, MetricValue::Long(u64::from(seq))).named("node.seq")
}

fn bd_seq(value: u64) -> Metric {
    Metric::new(DataType::UInt64, MetricValue::Long(value)).named(BD_SEQ_METRIC)
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

/// A plain MQTT client publishing whatever the test tells it to, and hearing the NCMDs of the
/// lab's gateway.
struct Client {
    client: AsyncClient,
    commands: mpsc::UnboundedReceiver<Payload>,
    /// Sparkplug seq of the next message, as a real edge node counts it.
    seq: u64,
}

impl Client {
    async fn connect(port: u16, id: &str) -> anyhow::Result<Self> {
        let mut options = MqttOptions::new(id, "127.0.0.1", port);
        options.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut events) = AsyncClient::new(options, 1024);
        let (tx, commands) = mpsc::unbounded_channel();
        let (subscribed_tx, subscribed) = tokio::sync::oneshot::channel();
        let mut subscribed_tx = Some(subscribed_tx);
        client
            .subscribe(format!("spBv1.0/{LAB}/NCMD/{GATEWAY}"), QoS::AtLeastOnce)
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
                            let _ = tx.send(payload);
                        }
                    }
                    _ => {}
                }
            }
        });
        within(DEADLINE, "the subscription", subscribed).await??;
        Ok(Self {
            client,
            commands,
            seq: 0,
        })
    }

    async fn raw(&self, topic: String, bytes: Vec<u8>) -> anyhow::Result<()> {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, bytes)
            .await?;
        Ok(())
    }

    /// Publishes under the lab's gateway, counting the Sparkplug seq like an edge node.
    async fn send(
        &mut self,
        kind: &str,
        device: Option<&str>,
        metrics: Vec<Metric>,
    ) -> anyhow::Result<()> {
        let topic = match device {
            Some(device) => format!("spBv1.0/{LAB}/{kind}/{GATEWAY}/{device}"),
            None => format!("spBv1.0/{LAB}/{kind}/{GATEWAY}"),
        };
        if kind == "NBIRTH" {
            self.seq = 0;
        }
        let bytes = payload(self.seq, metrics);
        self.seq = (self.seq + 1) % 256;
        self.raw(topic, bytes).await
    }

    /// NBIRTH with `bd` and the DBIRTH of `mill-1` reporting `last` as its node.seq.
    async fn born(&mut self, bd: u64, last: u32) -> anyhow::Result<()> {
        self.send("NBIRTH", None, vec![bd_seq(bd)]).await?;
        let metrics = vec![double("spindle.power_w", 0.0), node_seq(last)];
        self.send("DBIRTH", Some("mill-1"), metrics).await
    }

    async fn sample(&mut self, seq: u32, power: f64) -> anyhow::Result<()> {
        let metrics = vec![node_seq(seq), double("spindle.power_w", power)];
        self.send("DDATA", Some("mill-1"), metrics).await
    }

    async fn rebirth_request(&mut self) -> anyhow::Result<()> {
        let payload = within(DEADLINE, "a rebirth request", self.commands.recv())
            .await?
            .context("session ended")?;
        anyhow::ensure!(payload.metrics[0].name.as_deref() == Some(REBIRTH_METRIC));
        Ok(())
    }
}

fn mill() -> TwinKey {
    TwinKey {
        lab: LAB.parse().expect("valid"),
        machine: "mill-1".parse().expect("valid"),
    }
}

async fn wait_for_seq(hub: &Hub, seq: u32) -> anyhow::Result<()> {
    let twins = hub.twins().clone();
    wait_until(DEADLINE, &format!("the twin at node.seq {seq}"), || {
        twins.get(&mill()).is_some_and(|t| t.last_seq == seq)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_sequence_jumps_and_deaths_neither_freeze_nor_kill_a_live_twin() -> anyhow::Result<()>
{
    let data = tempfile::tempdir()?;
    let hub = start_hub_with(config(data.path())?).await?;
    let stats = hub.stats().clone();
    let twins = hub.twins().clone();
    let port = hub.mqtt_addr().port();
    let mut edge = Client::connect(port, "real-edge").await?;
    let mut forger = Client::connect(port, "student-laptop").await?;
    edge.born(1, 0).await?;
    for seq in 1..=10 {
        edge.sample(seq, f64::from(seq)).await?;
    }
    wait_for_seq(&hub, 10).await?;

    // A DDATA with a huge node.seq: refused, and the real edge node is asked to rebirth.
    forger.seq = 200;
    forger
        .send(
            "DDATA",
            Some("mill-1"),
            vec![node_seq(4_000_000_000), double("spindle.power_w", 666.0)],
        )
        .await?;
    wait_until(DEADLINE, "the jump refused", || {
        stats.dropped(IngestDrop::SeqJump) == 1
    })
    .await?;
    edge.rebirth_request().await?;
    // The real samples keep applying.
    for seq in 11..=20 {
        edge.sample(seq, f64::from(seq)).await?;
    }
    wait_for_seq(&hub, 20).await?;
    let twin = twins.get(&mill()).context("twin")?;
    assert_eq!(
        (twin.samples, twin.value("spindle.power_w")),
        (20, Some(20.0))
    );
    assert!(twin.connectivity.online && !twin.connectivity.stale);

    // Deaths with a wrong bdSeq, or none, are refused; the twin stays online.
    forger.send("NDEATH", None, vec![bd_seq(7)]).await?;
    forger.send("NDEATH", None, vec![]).await?;
    wait_until(DEADLINE, "both deaths refused", || {
        stats.dropped(IngestDrop::BdSeqMismatch) == 2
    })
    .await?;
    assert!(twins.get(&mill()).context("twin")?.connectivity.online);

    // The edge node answers the rebirth request; its DBIRTH re-anchors the window.
    edge.born(2, 20).await?;
    for seq in 21..=25 {
        edge.sample(seq, f64::from(seq)).await?;
    }
    wait_for_seq(&hub, 25).await?;
    let twin = twins.get(&mill()).context("twin")?;
    assert_eq!(
        (twin.samples, twin.value("spindle.power_w")),
        (25, Some(25.0))
    );
    assert_eq!(stats.dropped(IngestDrop::SeqJump), 1);
    assert_eq!(stats.dropped(IngestDrop::StaleSequence), 0);
    assert_eq!(stats.samples_applied(), 25);
    // The real death of the current session still works.
    edge.send("NDEATH", None, vec![bd_seq(2)]).await?;
    wait_until(DEADLINE, "the twin offline", || {
        twins.get(&mill()).is_some_and(|t| !t.connectivity.online)
    })
    .await?;
    hub.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_machine_whose_samples_stop_being_accepted_goes_stale_and_recovers() -> anyhow::Result<()>
{
    let data = tempfile::tempdir()?;
    let hub = start_hub_with(HubConfig {
        stale_after: Duration::from_secs(1),
        ..config(data.path())?
    })
    .await?;
    let twins = hub.twins().clone();
    let mut edge = Client::connect(hub.mqtt_addr().port(), "real-edge").await?;
    edge.born(1, 0).await?;
    edge.sample(1, 1.0).await?;
    wait_for_seq(&hub, 1).await?;
    // A duplicate is no sign of life.
    edge.sample(1, 1.0).await?;
    wait_until(DEADLINE, "the silent twin stale", || {
        twins.get(&mill()).is_some_and(|t| {
            t.connectivity.online
                && t.connectivity.stale
                && t.features["spindle"].properties["power_w"].stale
        })
    })
    .await?;
    assert_eq!(hub.stats().twins_silenced(), 1);
    edge.sample(2, 2.0).await?;
    wait_until(DEADLINE, "the twin fresh again", || {
        twins.get(&mill()).is_some_and(|t| {
            t.last_seq == 2
                && !t.connectivity.stale
                && !t.features["spindle"].properties["power_w"].stale
        })
    })
    .await?;
    hub.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn births_nobody_configured_are_counted_and_nothing_is_stored_even_after_a_restart()
-> anyhow::Result<()> {
    const LABS: u64 = 200;
    const MACHINES: u64 = 50;
    let data = tempfile::tempdir()?;
    let hub = start_hub_with(config(data.path())?).await?;
    let stats = hub.stats().clone();
    let mut client = Client::connect(hub.mqtt_addr().port(), "student-laptop").await?;
    for n in 0..LABS {
        let lab = format!("fake-lab-{n}");
        let bd = payload(0, vec![bd_seq(1)]);
        client.raw(format!("spBv1.0/{lab}/NBIRTH/gw-x"), bd).await?;
        let birth = payload(1, vec![double("spindle.power_w", 0.0), node_seq(0)]);
        client
            .raw(format!("spBv1.0/{lab}/DBIRTH/gw-x/mill-1"), birth)
            .await?;
    }
    // The configured lab's gateway, births of machines the lab does not list.
    client.born(1, 0).await?;
    for n in 0..MACHINES {
        let metrics = vec![double("spindle.power_w", 0.0), node_seq(0)];
        client
            .send("DBIRTH", Some(&format!("ghost-{n}")), metrics)
            .await?;
        // Their data is dropped too, without asking for rebirths that would be refused again.
        client
            .send("DDATA", Some(&format!("ghost-{n}")), vec![node_seq(1)])
            .await?;
    }
    wait_until(DEADLINE, "every unconfigured birth refused", || {
        stats.dropped(IngestDrop::UnknownLab) == 2 * LABS
            && stats.dropped(IngestDrop::UnknownMachine) == 2 * MACHINES
    })
    .await?;
    // Only the configured machine exists.
    wait_until(DEADLINE, "the configured twin", || {
        hub.twins().get(&mill()).is_some()
    })
    .await?;
    assert_eq!(hub.twins().len(), 1);
    assert_eq!(stats.dropped(IngestDrop::DataBeforeBirth), 0);
    assert!(client.commands.try_recv().is_err(), "no rebirth requested");
    let labs = get_json(hub.http_addr(), "/api/v1/labs").await?;
    assert_eq!(labs.as_array().map(Vec::len), Some(1), "{labs}");
    hub.shutdown().await?;

    let hub = start_hub_with(config(data.path())?).await?;
    assert_eq!(hub.twins().len(), 1, "nothing else was stored");
    let twins = get_json(hub.http_addr(), "/api/v1/twins").await?;
    assert_eq!(twins.as_array().map(Vec::len), Some(1), "{twins}");
    hub.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invented_metrics_and_oversized_input_are_capped_and_counted_while_data_flows()
-> anyhow::Result<()> {
    const INVENTED: usize = 5_000;
    const CAP: u64 = 16;
    let data = tempfile::tempdir()?;
    let hub = start_hub_with(HubConfig {
        limits: Limits {
            max_metrics_per_device: CAP as usize,
            // Room for the metric floods; the payload test sends more than this.
            max_payload_bytes: 512 * 1024,
            ..Limits::default()
        },
        ..config(data.path())?
    })
    .await?;
    let stats = hub.stats().clone();
    let twins = hub.twins().clone();
    let mut edge = Client::connect(hub.mqtt_addr().port(), "edge").await?;
    edge.send("NBIRTH", None, vec![bd_seq(1)]).await?;
    // A DBIRTH announcing thousands of metrics keeps the cap.
    let mut metrics: Vec<Metric> = (0..INVENTED)
        .map(|i| double(&format!("f.m{i}"), 0.0))
        .collect();
    metrics.push(node_seq(0));
    edge.send("DBIRTH", Some("mill-1"), metrics).await?;
    // Data inventing thousands more adds none of them.
    let mut invented: Vec<Metric> = (0..INVENTED)
        .map(|i| double(&format!("x.n{i}"), 1.0))
        .collect();
    invented.push(node_seq(1));
    edge.send("DDATA", Some("mill-1"), invented).await?;
    wait_for_seq(&hub, 1).await?;
    // Birth: all past the cap; data: all past the cap in the message, then the cap's worth
    // that the twin (full from its birth) has no room for.
    let expected = (INVENTED as u64 - CAP) + (INVENTED as u64 - CAP) + CAP;
    wait_until(DEADLINE, "the invented metrics counted", || {
        stats.dropped(IngestDrop::TooManyMetrics) == expected
    })
    .await?;
    assert_eq!(
        twins.get(&mill()).context("twin")?.property_count(),
        CAP as usize
    );

    // Oversized topics (60 KB each) and payloads are counted without being parsed.
    for _ in 0..50 {
        edge.raw(
            format!("spBv1.0/{LAB}/DDATA/{}", "g".repeat(60_000)),
            vec![1],
        )
        .await?;
    }
    let big = payload(3, vec![double("f.m0", 0.0); 40_000]);
    anyhow::ensure!(big.len() > 512 * 1024, "{} bytes", big.len());
    edge.raw(format!("spBv1.0/{LAB}/DDATA/{GATEWAY}/mill-1"), big)
        .await?;
    wait_until(DEADLINE, "the oversized input counted", || {
        stats.dropped(IngestDrop::TopicTooLong) == 50
            && stats.dropped(IngestDrop::PayloadTooLarge) == 1
    })
    .await?;
    assert_eq!(stats.dropped(IngestDrop::BadTopic), 0, "never parsed");

    // Still serving: real data applies and the API answers.
    edge.seq = 4;
    edge.send(
        "DDATA",
        Some("mill-1"),
        vec![node_seq(2), double("f.m0", 42.0)],
    )
    .await?;
    wait_for_seq(&hub, 2).await?;
    assert_eq!(
        twins.get(&mill()).context("twin")?.value("f.m0"),
        Some(42.0)
    );
    let metrics = http(hub.http_addr(), "GET", "/metrics", None, None).await?;
    assert!(
        metrics.1.contains(&format!(
            "demolab_hub_dropped_total{{reason=\"too_many_metrics\"}} {expected}"
        )),
        "{}",
        metrics.1
    );
    hub.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_retires_a_twin_from_the_api_the_store_and_the_streams() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let hub = start_hub_with(config(data.path())?).await?;
    let addr = hub.http_addr();
    let mut edge = Client::connect(hub.mqtt_addr().port(), "edge").await?;
    edge.born(1, 0).await?;
    edge.sample(1, 1.0).await?;
    wait_for_seq(&hub, 1).await?;
    let path = format!("/api/v1/twins/{LAB}/mill-1");
    let mut changes = hub.twins().subscribe();

    let (status, body) = http(addr, "DELETE", &path, None, None).await?;
    assert_eq!(status, 401, "{body}");
    let student = demolab_tests::login(addr, "sam").await?;
    let (status, body) = http(addr, "DELETE", &path, Some(&student), None).await?;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("\"forbidden\""), "{body}");
    let operator = demolab_tests::login(addr, "olga").await?;
    let (status, body) = http(addr, "DELETE", &path, Some(&operator), None).await?;
    assert_eq!(status, 204, "{body}");
    let (status, body) = http(addr, "GET", &path, None, None).await?;
    assert_eq!(status, 404, "{body}");
    let (status, body) = http(addr, "DELETE", &path, Some(&operator), None).await?;
    assert!(status == 404 && body.contains("twin_not_found"), "{body}");
    let change = within(DEADLINE, "the retired change", changes.recv()).await??;
    assert_eq!(
        (change.kind.as_str(), change.machine.as_str()),
        ("retired", "mill-1")
    );
    assert_eq!(hub.stats().twins_retired(), 1);
    // Its data is dropped until it is born again.
    edge.sample(2, 2.0).await?;
    let stats = hub.stats().clone();
    wait_until(DEADLINE, "the sample of the retired twin dropped", || {
        stats.dropped(IngestDrop::UnknownTwin) == 1
    })
    .await?;
    hub.shutdown().await?;

    // Gone from the store too.
    let hub = start_hub_with(config(data.path())?).await?;
    assert!(hub.twins().get(&mill()).is_none());
    // A configured machine comes back when its gateway births it again.
    let mut edge = Client::connect(hub.mqtt_addr().port(), "edge").await?;
    edge.born(2, 2).await?;
    edge.sample(3, 3.0).await?;
    wait_for_seq(&hub, 3).await?;
    let twin = get_json(hub.http_addr(), &path).await?;
    assert_eq!(twin["samples"], 1, "a new twin: {twin}");
    hub.shutdown().await?;
    Ok(())
}
