//! Desired values survive a node's reboot, through real sockets: an operator sets a simulated
//! node's sample period over the REST API, the node restarts with a new boot id and its
//! firmware defaults, and the hub — seeing the new boot in the gateway's DBIRTH — marks the value
//! `pending`, sends the DCMD again, and shows `applied` only once the node has acknowledged it.
//! A spy on the node's up topic checks that the node really samples at the desired period.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use demolab_tests::{
    burst_node, cheap_password_hash, gateway_config, http, hub_config, start_gateway_with,
    start_hub_with, wait_until, within,
};
use hub::HubConfig;
use hub::auth::{AuthConfig, Role, UserConfig};
use hub::twin::{DesiredStatus, TwinKey};
use protocol::Frame;
use protocol::node_topic::{Direction, format};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use simulators::node::{MqttNodeConfig, run_mqtt_node};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const NODE: u64 = 0xb007;
const FIRST_BOOT: u32 = 0x0000_b001;
const SECOND_BOOT: u32 = 0x0000_b002;
/// The node's firmware default, which it runs again after every boot.
const DEFAULT_PERIOD_MS: u64 = 1000;
const DESIRED_PERIOD_MS: u64 = 500;

fn node(port: u16, boot: u32) -> anyhow::Result<MqttNodeConfig> {
    let mut config = burst_node(port, NODE, "mill-1", 7, 0)?;
    config.boot = boot;
    config.max_samples = None;
    config.sample_period = Duration::from_millis(DEFAULT_PERIOD_MS);
    config.tick_interval = Duration::from_millis(20);
    Ok(config)
}

/// What the spy saw on the node's up topic, in order.
#[derive(Debug)]
enum Seen {
    /// A boot, with the shortest sample period the node announced for it.
    Hello {
        boot: u32,
        period_ms: Option<u32>,
    },
    Sample {
        uptime_ms: u64,
    },
}

/// Subscribes to the node's up topic and decodes every frame, as a second listener beside the
/// gateway.
async fn spy(
    port: u16,
    cancel: CancellationToken,
) -> anyhow::Result<mpsc::UnboundedReceiver<Seen>> {
    let (client, mut events) =
        AsyncClient::new(MqttOptions::new("resync-spy", "127.0.0.1", port), 16);
    let up = format(protocol::NodeId(NODE), Direction::Up);
    client.subscribe(up.as_str(), QoS::AtLeastOnce).await?;
    let (seen_tx, seen) = mpsc::unbounded_channel();
    let (subscribed_tx, subscribed) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let _client = client;
        let mut subscribed_tx = Some(subscribed_tx);
        loop {
            let event = tokio::select! {
                event = events.poll() => event,
                () = cancel.cancelled() => break,
            };
            match event {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(tx) = subscribed_tx.take() {
                        let _ = tx.send(());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    let seen = match protocol::codec::decode(&publish.payload) {
                        Ok(Frame::Hello(hello)) => Seen::Hello {
                            boot: hello.boot,
                            period_ms: hello.metrics.iter().map(|m| m.period_ms).min(),
                        },
                        Ok(Frame::Samples(samples)) => Seen::Sample {
                            uptime_ms: samples.uptime_ms,
                        },
                        _ => continue,
                    };
                    if seen_tx.send(seen).is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });
    within(
        Duration::from_secs(10),
        "the spy's subscription",
        subscribed,
    )
    .await??;
    Ok(seen)
}

async fn login(addr: SocketAddr) -> anyhow::Result<String> {
    let body = br#"{"user": "olga", "password": "olga-secret"}"#;
    let (status, body) = http(addr, "POST", "/api/v1/auth/login", None, Some(body)).await?;
    anyhow::ensure!(status == 200, "login: {status} {body}");
    let doc: serde_json::Value = serde_json::from_str(&body)?;
    Ok(doc["token"].as_str().context("token")?.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebooted_node_gets_its_desired_period_again_and_the_twin_is_pending_until_it_reports_it()
-> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let config = HubConfig {
        auth: AuthConfig {
            users: vec![UserConfig {
                name: "olga".into(),
                role: Role::Operator,
                password_hash: cheap_password_hash("olga-secret")?,
                game: None,
            }],
            ..hub_config(data.path()).auth
        },
        ..hub_config(data.path())
    };
    let hub = start_hub_with(config).await?;
    let addr = hub.http_addr();
    let port = hub.mqtt_addr().port();
    let cancel = CancellationToken::new();
    let _stop = cancel.clone().drop_guard();
    let gateway = start_gateway_with(
        gateway_config(port, "lab-a", "gw-a", &data.path().join("buffer"))?,
        &cancel,
    )
    .await?;
    let mut seen = spy(port, cancel.child_token()).await?;
    let twins = hub.twins().clone();
    let key = TwinKey::parse("lab-a/mill-1").context("key")?;
    let status = |twins: &hub::twin::TwinRegistry| {
        twins
            .get(&key)
            .and_then(|t| t.desired.get("node.period_ms").map(|d| d.status))
    };

    // First boot: the operator sets the period and the node applies it.
    let first = cancel.child_token();
    let first_run = tokio::spawn(run_mqtt_node(node(port, FIRST_BOOT)?, first.clone()));
    wait_until(Duration::from_secs(20), "the node's first samples", || {
        twins.get(&key).is_some_and(|t| t.samples > 0)
    })
    .await?;
    let token = login(addr).await?;
    let (code, body) = http(
        addr,
        "PATCH",
        "/api/v1/twins/lab-a/mill-1/desired",
        Some(&token),
        Some(br#"{"node.period_ms": 500}"#),
    )
    .await?;
    assert_eq!(code, 202, "{body}");
    wait_until(Duration::from_secs(10), "the first boot to apply", || {
        status(&twins) == Some(DesiredStatus::Applied)
    })
    .await?;

    // Reboot: the node comes back with a new boot id and its default period.
    first.cancel();
    first_run.await??;
    let mut changes = twins.subscribe();
    let second = tokio::spawn(run_mqtt_node(
        node(port, SECOND_BOOT)?,
        cancel.child_token(),
    ));

    // The twin's desired-value changes for the new boot, in order: pending (sent again), then
    // applied once the node's acknowledgement came back through the gateway.
    let mut statuses = Vec::new();
    within(Duration::from_secs(20), "pending, then applied", async {
        while statuses.last() != Some(&DesiredStatus::Applied) {
            let change = match changes.recv().await {
                Ok(change) => change,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(err) => return Err(anyhow::Error::from(err)),
            };
            if change.machine != "mill-1" {
                continue;
            }
            if let Some(period) = change
                .desired
                .as_ref()
                .and_then(|d| d.get("node.period_ms"))
            {
                statuses.push(period.status);
            }
        }
        anyhow::Ok(())
    })
    .await??;
    assert_eq!(
        statuses,
        [DesiredStatus::Pending, DesiredStatus::Applied],
        "the value must read pending from the new boot until the node reports it"
    );
    let twin = twins.get(&key).context("twin")?;
    assert_eq!(twin.boot, Some(SECOND_BOOT));
    let period = &twin.desired["node.period_ms"];
    assert_eq!(period.value, 500.0);
    assert_eq!(
        period.requested_by, "olga",
        "the operator's request, not a new one"
    );
    assert!(period.resent_at.is_some());
    assert_eq!(twin.value("node.period_ms"), Some(500.0));
    assert!(!twin.features["node"].properties["period_ms"].stale);

    // The node itself: its second Hello announces the default period (the reboot lost the
    // setting); it samples at that period at first (at least the sample that made the gateway's
    // DBIRTH), and once the DCMD is through, every 500 ms.
    let (announced, deltas) = within(
        Duration::from_secs(20),
        "the node to sample every 500 ms",
        async {
            let mut announced = None;
            let mut uptimes: Vec<u64> = Vec::new();
            loop {
                let deltas: Vec<u64> = uptimes.windows(2).map(|w| w[1] - w[0]).collect();
                if deltas.len() >= 5
                    && deltas[deltas.len() - 5..]
                        .iter()
                        .all(|d| *d == DESIRED_PERIOD_MS)
                {
                    return anyhow::Ok((announced, deltas));
                }
                match seen.recv().await.context("the spy stopped")? {
                    Seen::Hello { boot, period_ms } if boot == SECOND_BOOT => {
                        announced = period_ms.map(u64::from);
                    }
                    Seen::Sample { uptime_ms } if announced.is_some() => uptimes.push(uptime_ms),
                    Seen::Hello { .. } | Seen::Sample { .. } => {}
                }
            }
        },
    )
    .await??;
    assert_eq!(announced, Some(DEFAULT_PERIOD_MS));
    assert!(
        deltas
            .iter()
            .all(|d| *d == DEFAULT_PERIOD_MS || *d == DESIRED_PERIOD_MS),
        "{deltas:?}"
    );
    // Once changed, the period never goes back to the default.
    let first_desired = deltas.iter().position(|d| *d == DESIRED_PERIOD_MS);
    assert!(
        first_desired.is_some_and(|i| deltas[i..].iter().all(|d| *d == DESIRED_PERIOD_MS)),
        "{deltas:?}"
    );

    // The API tells the same story.
    let (code, body) = http(
        addr,
        "GET",
        "/api/v1/twins/lab-a/mill-1",
        Some(&token),
        None,
    )
    .await?;
    assert_eq!(code, 200, "{body}");
    let doc: serde_json::Value = serde_json::from_str(&body)?;
    assert_eq!(
        doc["desired"]["node.period_ms"]["status"], "applied",
        "{doc}"
    );

    cancel.cancel();
    second.await??;
    gateway.shutdown().await?;
    hub.shutdown().await?;
    Ok(())
}
