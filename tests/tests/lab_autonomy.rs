//! Lab autonomy through real sockets: a lab cut off from the region keeps its local status view
//! on the gateway's ops endpoint (the machines' last values, the cut, a growing backlog) and
//! catches up when the link returns, the samples taken during the cut flagged historical.
//!
//! The nodes are scripted MQTT clients, so the test knows every value and sequence number it
//! sent and which side of the cut each sample was taken on.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use demolab_tests::{
    CuttableProxy, collect_stream_samples, gateway_config, get_json, serve_ops, start_gateway_with,
    start_hub, within,
};
use gateway::{DropReason, MqttEndpoint};
use protocol::node_topic::{self, Direction};
use protocol::{Frame, MetricDescriptor, NodeId, Reading, Unit, codec, golden};
use rumqttc::{AsyncClient, MqttOptions, QoS};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

const LAB: &str = "lab-island";
const GATEWAY: &str = "gw-island";
/// Samples per node while the region is reachable, before the cut.
const BEFORE: u32 = 40;
/// Samples per node in each of the two rounds sent during the cut.
const DURING: u32 = 30;
/// Samples per node after the link returned.
const AFTER: u32 = 20;
const DEADLINE: Duration = Duration::from_secs(30);

/// A node the test scripts: it says `Hello` with two metrics, then sends exactly the samples it
/// is told to, with values that follow from its sequence number.
struct ScriptedNode {
    node: NodeId,
    machine: &'static str,
    client: AsyncClient,
    next_seq: u32,
}

impl ScriptedNode {
    async fn connect(broker_port: u16, node: u64, machine: &'static str) -> anyhow::Result<Self> {
        let node = NodeId(node);
        let mut options = MqttOptions::new(format!("scripted-{node}"), "127.0.0.1", broker_port);
        options.set_keep_alive(Duration::from_secs(30));
        let (client, mut events) = AsyncClient::new(options, 64);
        // The event loop ends with the test's runtime; an error here shows as missing samples.
        tokio::spawn(async move { while events.poll().await.is_ok() {} });
        let Frame::Hello(mut hello) = golden::hello() else {
            bail!("the golden hello is a Hello")
        };
        hello.node = node;
        hello.boot = simulators::node::fresh_boot_id(node);
        hello.machine = Some(machine.parse()?);
        hello.metrics.clear();
        for (index, name, unit) in [
            (0, "coolant.temperature_c", Unit::Celsius),
            (1, "spindle.speed_rpm", Unit::Rpm),
        ] {
            let descriptor = MetricDescriptor {
                index,
                name: name.parse()?,
                unit,
                period_ms: 1000,
            };
            hello
                .metrics
                .push(descriptor)
                .map_err(|_| anyhow::anyhow!("two metrics fit"))?;
        }
        let this = Self {
            node,
            machine,
            client,
            next_seq: 1,
        };
        this.publish(&Frame::Hello(hello)).await?;
        Ok(this)
    }

    /// The values of sample `seq`: exact in f32, different per node.
    fn values(&self, seq: u32) -> (f32, f32) {
        let offset = (self.node.0 % 16) as f32;
        (
            20.0 + offset + seq as f32 / 4.0,
            1000.0 + offset + seq as f32,
        )
    }

    async fn send(&mut self, count: u32) -> anyhow::Result<()> {
        for _ in 0..count {
            let seq = self.next_seq;
            let Frame::Samples(mut samples) = golden::samples() else {
                bail!("the golden samples are Samples")
            };
            samples.node = self.node;
            samples.seq = seq;
            samples.uptime_ms = u64::from(seq) * 1000;
            samples.readings.clear();
            let (temperature, speed) = self.values(seq);
            for (index, value) in [(0, temperature), (1, speed)] {
                samples
                    .readings
                    .push(Reading { index, value })
                    .map_err(|_| anyhow::anyhow!("two readings fit"))?;
            }
            self.publish(&Frame::Samples(samples)).await?;
            self.next_seq += 1;
        }
        Ok(())
    }

    async fn publish(&self, frame: &Frame) -> anyhow::Result<()> {
        let topic = node_topic::format(self.node, Direction::Up);
        self.client
            .publish(
                topic.as_str(),
                QoS::AtLeastOnce,
                false,
                codec::encode_to_vec(frame)?,
            )
            .await?;
        Ok(())
    }

    /// The last sequence number sent.
    fn last_seq(&self) -> u32 {
        self.next_seq - 1
    }
}

/// Polls the gateway's local API until `holds` accepts its answer.
/// The gateway dropped nothing, for any reason.
fn assert_no_drops(gateway: &gateway::GatewayHandle) {
    let snapshot = gateway.stats().snapshot();
    for reason in DropReason::ALL {
        assert_eq!(snapshot.dropped(reason), 0, "gateway drops for {reason:?}");
    }
}

async fn wait_for_view(
    ops: SocketAddr,
    what: &str,
    holds: impl Fn(&Value) -> bool,
) -> anyhow::Result<Value> {
    within(DEADLINE, what, async {
        loop {
            let view = get_json(ops, "/api/v1/machines").await?;
            if holds(&view) {
                return Ok::<_, anyhow::Error>(view);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await?
}

/// Whether the view shows every node's last sample.
fn shows_latest(view: &Value, nodes: &[ScriptedNode]) -> bool {
    nodes.iter().all(|node| {
        view["machines"]
            .as_array()
            .and_then(|machines| machines.iter().find(|m| m["machine"] == node.machine))
            .is_some_and(|m| {
                m["metrics"]
                    .as_array()
                    .is_some_and(|metrics| metrics.iter().all(|x| x["seq"] == node.last_seq()))
            })
    })
}

/// Asserts the view's values are exactly the last ones each node sent.
fn assert_latest_values(view: &Value, nodes: &[ScriptedNode]) -> anyhow::Result<()> {
    let machines = view["machines"].as_array().context("machines")?;
    let mut names: Vec<&str> = machines
        .iter()
        .filter_map(|m| m["machine"].as_str())
        .collect();
    names.sort();
    let mut expected: Vec<&str> = nodes.iter().map(|n| n.machine).collect();
    expected.sort();
    assert_eq!(names, expected, "exactly the machines of the lab");
    for node in nodes {
        let machine = machines
            .iter()
            .find(|m| m["machine"] == node.machine)
            .context("machine")?;
        let seq = node.last_seq();
        let (temperature, speed) = node.values(seq);
        let metrics: BTreeMap<&str, (f64, &str, u64)> = machine["metrics"]
            .as_array()
            .context("metrics")?
            .iter()
            .map(|m| {
                let name = m["metric"].as_str().unwrap_or_default();
                let value = m["value"].as_f64().unwrap_or(f64::NAN);
                (
                    name,
                    (
                        value,
                        m["unit"].as_str().unwrap_or_default(),
                        m["seq"].as_u64().unwrap_or(0),
                    ),
                )
            })
            .collect();
        assert_eq!(
            metrics,
            BTreeMap::from([
                (
                    "coolant.temperature_c",
                    (f64::from(temperature), "degC", u64::from(seq))
                ),
                (
                    "spindle.speed_rpm",
                    (f64::from(speed), "rpm", u64::from(seq))
                ),
            ]),
            "{}: the last values sent",
            node.machine
        );
        ensure!(machine["age_ms"].is_u64(), "an age: {machine}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_lab_shows_its_machines_locally_and_catches_up_flagged_historical()
-> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let hub = start_hub(data.path()).await?;
    let port = hub.mqtt_addr().port();
    // Only the uplink to the region goes through the proxy: the nodes and the gateway's
    // southbound session stay on the broker, as a lab's own network would.
    let proxy = CuttableProxy::start(hub.mqtt_addr()).await?;
    let cancel = CancellationToken::new();
    let mut config = gateway_config(port, LAB, GATEWAY, &data.path().join("buffer"))?;
    config.uplink = MqttEndpoint {
        host: "127.0.0.1".into(),
        port: proxy.addr().port(),
    };
    config.primary_host = Some("demolab-hub".parse()?);
    let gateway = start_gateway_with(config, &cancel).await?;
    let ops = serve_ops(&gateway, LAB, GATEWAY, &cancel).await?;
    let (mut stream, _) = tokio_tungstenite::connect_async(format!(
        "ws://{}/api/v1/stream?lab={LAB}",
        hub.http_addr()
    ))
    .await?;

    let mut nodes = vec![
        ScriptedNode::connect(port, 0xa1, "press-1").await?,
        ScriptedNode::connect(port, 0xa2, "lathe-2").await?,
    ];
    for node in &mut nodes {
        node.send(BEFORE).await?;
    }
    let view = wait_for_view(ops, "the samples before the cut, sent", |v| {
        shows_latest(v, &nodes) && v["buffered"] == 0 && v["uplink"]["state"] == "connected"
    })
    .await?;
    assert_latest_values(&view, &nodes)?;
    assert_eq!(view["uplink"]["connected"], true);
    let live = collect_stream_samples(&mut stream, nodes.len() * BEFORE as usize, DEADLINE).await?;

    let cut_at = gateway::now_ms();
    proxy.cut();
    let view = wait_for_view(ops, "the view to show the cut", |v| {
        v["uplink"]["state"] == "disconnected"
    })
    .await?;
    assert_eq!(view["uplink"]["connected"], false);
    let since = view["uplink"]["since_ms"].as_u64().context("since")?;
    assert!(since >= cut_at, "cut off since the cut: {since} < {cut_at}");
    assert_eq!(view["buffered"], 0);

    // The nodes keep sending: the lab sees every value, the backlog grows by exactly as much.
    for round in 1..=2u64 {
        for node in &mut nodes {
            node.send(DURING).await?;
        }
        let buffered = round * nodes.len() as u64 * u64::from(DURING);
        let view = wait_for_view(ops, "the latest values during the cut", |v| {
            shows_latest(v, &nodes) && v["buffered"] == buffered
        })
        .await?;
        assert_latest_values(&view, &nodes)?;
        assert_eq!(view["uplink"]["state"], "disconnected");
        assert_eq!(view["uplink"]["since_ms"], since, "still the same cut");
    }

    proxy.restore();
    let view = wait_for_view(ops, "the backlog to be sent", |v| {
        v["uplink"]["state"] == "connected" && v["buffered"] == 0
    })
    .await?;
    assert_eq!(view["uplink"]["connected"], true);
    let replayed =
        collect_stream_samples(&mut stream, nodes.len() * 2 * DURING as usize, DEADLINE).await?;
    for node in &mut nodes {
        node.send(AFTER).await?;
    }
    let view = wait_for_view(ops, "the samples after the cut", |v| {
        shows_latest(v, &nodes) && v["buffered"] == 0
    })
    .await?;
    assert_latest_values(&view, &nodes)?;
    let after = collect_stream_samples(&mut stream, nodes.len() * AFTER as usize, DEADLINE).await?;

    // Per machine: every sample exactly once, in order, flagged historical exactly when it was
    // taken during the cut.
    let seen: Vec<_> = live.into_iter().chain(replayed).chain(after).collect();
    for node in &nodes {
        let kinds: Vec<(&str, u32)> = seen
            .iter()
            .filter(|(machine, _, _)| machine == node.machine)
            .map(|(_, kind, seq)| (kind.as_str(), *seq))
            .collect();
        let expected: Vec<(&str, u32)> = (1..=node.last_seq())
            .map(|seq| {
                let during = seq > BEFORE && seq <= BEFORE + 2 * DURING;
                (if during { "historical" } else { "sample" }, seq)
            })
            .collect();
        assert_eq!(
            kinds, expected,
            "{}: as the hub received them",
            node.machine
        );
        let twin = hub
            .twins()
            .get(&hub::twin::TwinKey {
                lab: LAB.parse()?,
                machine: node.machine.parse()?,
            })
            .context("twin")?;
        assert_eq!(
            (twin.samples, twin.historical_samples, twin.last_seq),
            (
                u64::from(BEFORE + 2 * DURING + AFTER),
                u64::from(2 * DURING),
                node.last_seq()
            ),
            "{}: the twin's counts",
            node.machine
        );
    }
    assert_no_drops(&gateway);

    cancel.cancel();
    gateway.shutdown().await?;
    hub.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_page_and_api_answer_while_the_region_was_never_reachable() -> anyhow::Result<()>
{
    let data = tempfile::tempdir()?;
    let hub = start_hub(data.path()).await?;
    let port = hub.mqtt_addr().port();
    let proxy = CuttableProxy::start(hub.mqtt_addr()).await?;
    proxy.cut();
    let cancel = CancellationToken::new();
    let mut config = gateway_config(port, LAB, GATEWAY, &data.path().join("buffer"))?;
    config.uplink = MqttEndpoint {
        host: "127.0.0.1".into(),
        port: proxy.addr().port(),
    };
    let gateway = gateway::start(config, cancel.clone())?;
    within(DEADLINE, "the gateway's sources", gateway.sources_ready()).await?;
    let ops = serve_ops(&gateway, LAB, GATEWAY, &cancel).await?;

    let mut node = ScriptedNode::connect(port, 0xb3, "mill-3").await?;
    node.send(5).await?;
    let nodes = [node];
    let view = wait_for_view(ops, "five samples, buffered", |v| {
        shows_latest(v, &nodes) && v["buffered"] == 5
    })
    .await?;
    assert_latest_values(&view, &nodes)?;
    assert_eq!(
        (&view["lab"], &view["gateway"], &view["uplink"]["state"]),
        (
            &Value::from(LAB),
            &Value::from(GATEWAY),
            &Value::from("disconnected")
        )
    );

    let (status, page) = demolab_tests::http_get(ops, "/").await?;
    assert_eq!(status, 200);
    assert!(page.contains("<script>") && page.contains("api/v1/machines"));
    let (status, body) = demolab_tests::http_get(ops, "/api/v1/machines?machine=nope").await?;
    assert_eq!(status, 404, "{body}");
    let error: Value = serde_json::from_str(&body)?;
    assert_eq!(error["error"]["code"], "unknown_machine");
    let (status, _) = demolab_tests::http_get(ops, "/metrics").await?;
    assert_eq!(status, 200, "/metrics stays where it was");

    cancel.cancel();
    gateway.shutdown().await?;
    hub.shutdown().await?;
    Ok(())
}

/// The link stays up but the region's hub goes away (its STATE offline on the broker): the lab's
/// view says `host_offline`, the gateway buffers exactly what the nodes send, and a hub that
/// comes back gets every sample once, the ones from its absence flagged historical.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_gone_from_a_broker_that_stays_shows_as_host_offline() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let broker = hub::broker::EmbeddedBroker::start(hub::broker::BrokerConfig {
        bind: "127.0.0.1:0".parse()?,
        ..hub::broker::BrokerConfig::default()
    })
    .await?;
    let port = broker.local_addr().port();
    let hub_config = || hub::HubConfig {
        broker: hub::BrokerSetting::External {
            host: "127.0.0.1".into(),
            port,
            failover: Vec::new(),
        },
        ..demolab_tests::hub_config(&data.path().join("hub"))
    };
    let hub = demolab_tests::start_hub_with(hub_config()).await?;
    let cancel = CancellationToken::new();
    let mut config = gateway_config(port, LAB, GATEWAY, &data.path().join("buffer"))?;
    config.primary_host = Some("demolab-hub".parse()?);
    let gateway = start_gateway_with(config, &cancel).await?;
    let ops = serve_ops(&gateway, LAB, GATEWAY, &cancel).await?;
    let mut nodes = vec![ScriptedNode::connect(port, 0xb1, "press-1").await?];
    nodes[0].send(BEFORE).await?;
    let key = hub::twin::TwinKey {
        lab: LAB.parse()?,
        machine: "press-1".parse()?,
    };
    demolab_tests::wait_until(DEADLINE, "the samples before, applied", || {
        hub.twins()
            .get(&key)
            .is_some_and(|t| t.samples == u64::from(BEFORE))
    })
    .await?;

    hub.shutdown().await?;
    let view = wait_for_view(ops, "the hub's absence", |v| {
        v["uplink"]["state"] == "host_offline"
    })
    .await?;
    assert_eq!(view["uplink"]["connected"], false);
    nodes[0].send(DURING).await?;
    let view = wait_for_view(ops, "the samples during, buffered", |v| {
        shows_latest(v, &nodes) && v["buffered"] == u64::from(DURING)
    })
    .await?;
    assert_eq!(view["uplink"]["state"], "host_offline");

    let hub = demolab_tests::start_hub_with(hub_config()).await?;
    wait_for_view(ops, "the backlog to be sent", |v| {
        v["uplink"]["state"] == "connected" && v["buffered"] == 0
    })
    .await?;
    demolab_tests::wait_until(DEADLINE, "every sample applied once", || {
        hub.twins()
            .get(&key)
            .is_some_and(|t| t.samples == u64::from(BEFORE + DURING))
    })
    .await?;
    let twin = hub.twins().get(&key).context("twin")?;
    assert_eq!(
        (twin.samples, twin.historical_samples, twin.last_seq),
        (
            u64::from(BEFORE + DURING),
            u64::from(DURING),
            BEFORE + DURING
        ),
        "the samples from the hub's absence arrive once, flagged historical"
    );
    assert_no_drops(&gateway);

    cancel.cancel();
    gateway.shutdown().await?;
    hub.shutdown().await?;
    broker.shutdown().await?;
    Ok(())
}
