//! The demo region's own wiring, attacked from a laptop on the lab network with a plain MQTT
//! 3.1.1 client: the broker the demo starts refuses anonymous clients, and each generated login
//! can use only its own topics. Every refusal is counted on the hub's `/metrics`, the fake values
//! never reach a twin, and the real machines keep delivering throughout.

use std::time::Duration;

use anyhow::Context;
use demolab_demo::region::{Region, mqtt_node_id};
use demolab_tests::laptop::{Laptop, denied};
use demolab_tests::{test_region, wait_until};
use hub::twin::TwinKey;
use prost::Message;
use protocol::sparkplug::{DataType, Metric, MetricValue, Payload};
use rumqttc::{QoS, SubscribeReasonCode};

const DEADLINE: Duration = Duration::from_secs(20);
/// A value no simulated machine produces: finding it on a twin means a forgery got through.
const FORGED: f64 = 987_654.0;

fn forged_ddata() -> Vec<u8> {
    Payload {
        timestamp: Some(hub::ingest::now_ms()),
        seq: Some(1),
        metrics: vec![
            Metric::new(DataType::Double, MetricValue::Double(FORGED)).named("spindle.power_w"),
            Metric::new(DataType::UInt32, MetricValue::Int(4_000_000_000)).named("node.seq"),
        ],
        ..Default::default()
    }
    .encode_to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_laptop_on_the_lab_network_cannot_fake_or_silence_a_machine() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let region = Region::start(test_region(data.path(), 7, Duration::from_millis(100))).await?;
    let outcome = attack(&region).await;
    region.shutdown().await?;
    outcome
}

async fn attack(region: &Region) -> anyhow::Result<()> {
    let mqtt = region.hub().mqtt_addr();
    let http = region.hub().http_addr();
    let accounts = region.accounts();
    let password = |user: &str| {
        accounts
            .password(user)
            .map(ToOwned::to_owned)
            .with_context(|| format!("no login for {user}"))
    };
    let aarhus_mill: TwinKey = TwinKey::parse("aarhus-machining/mill-1").context("key")?;
    let odense_mill: TwinKey = TwinKey::parse("odense-machining/mill-1").context("key")?;
    let twins = region.hub().twins();
    wait_until(DEADLINE, "both mills to report", || {
        [&aarhus_mill, &odense_mill]
            .iter()
            .all(|key| twins.get(key).is_some_and(|t| t.samples >= 3))
    })
    .await?;
    // Everything the demo's own services do is allowed: nothing has been refused yet.
    for reason in ["connect", "publish", "subscribe"] {
        assert_eq!(denied(http, reason).await?, 0, "{reason} before the attack");
    }

    // 1. Anonymous, and a real user name with a guessed password.
    Laptop::new(mqtt, "anon", None).refused().await?;
    Laptop::new(mqtt, "guess", Some(("gw-odense", "password")))
        .refused()
        .await?;
    assert_eq!(denied(http, "connect").await?, 2);

    // 2. Aarhus' gateway login (say, copied off its edge box) forging Odense's mill, forging
    //    another gateway of its own lab, and commanding a node.
    let mut aarhus = Laptop::new(
        mqtt,
        "gw-aarhus-x",
        Some(("gw-aarhus", &password("gw-aarhus")?)),
    );
    aarhus.connected().await?;
    for topic in [
        "spBv1.0/odense-machining/DDATA/gw-odense/mill-1",
        "spBv1.0/odense-machining/NDEATH/gw-odense",
        "spBv1.0/aarhus-machining/DDATA/gw-intruder/mill-1",
        "spBv1.0/aarhus-machining/DCMD/gw-aarhus/mill-1",
        "spBv1.0/STATE/demolab-hub",
    ] {
        aarhus.publish(topic, forged_ddata()).await?;
    }
    // 3. A sensor node's login may only send its own frames.
    let node = mqtt_node_id(0, 0).to_string();
    let mut sensor = Laptop::new(mqtt, "node-x", Some((&node, &password(&node)?)));
    sensor.connected().await?;
    sensor
        .publish(
            "spBv1.0/aarhus-machining/DDATA/gw-aarhus/mill-1",
            forged_ddata(),
        )
        .await?;
    sensor
        .publish(
            &format!("demolab/v1/node/{}/up", mqtt_node_id(1, 0)),
            vec![0; 8],
        )
        .await?;
    // 4. The read-only viewer sees the Sparkplug traffic but cannot add to it.
    let mut viewer = Laptop::new(mqtt, "viewer-x", Some(("viewer", &password("viewer")?)));
    viewer.connected().await?;
    assert_eq!(
        viewer.subscribe("spBv1.0/aarhus-machining/DDATA/#").await?,
        SubscribeReasonCode::Success(QoS::AtLeastOnce)
    );
    let seen = viewer.next_publish().await?;
    assert!(
        seen.topic
            .starts_with("spBv1.0/aarhus-machining/DDATA/gw-aarhus/")
    );
    viewer
        .publish(
            "spBv1.0/aarhus-machining/DDATA/gw-aarhus/mill-1",
            forged_ddata(),
        )
        .await?;
    viewer
        .publish(
            "demolab/aarhus-machining/mill-1/spindle.power_w",
            b"1".to_vec(),
        )
        .await?;
    assert_eq!(denied(http, "publish").await?, 9);

    // 5. The game's login reads its lab's JSON values, and nothing else.
    let mut team = Laptop::new(
        mqtt,
        "team-x",
        Some(("game-energy-hunt", &password("game-energy-hunt")?)),
    );
    team.connected().await?;
    assert_eq!(
        team.subscribe("demolab/aarhus-machining/mill-1/#").await?,
        SubscribeReasonCode::Success(QoS::AtLeastOnce)
    );
    assert!(
        team.next_publish()
            .await?
            .topic
            .starts_with("demolab/aarhus-machining/mill-1/")
    );
    assert_eq!(
        team.subscribe("demolab/odense-machining/#").await?,
        SubscribeReasonCode::Failure
    );
    assert_eq!(
        team.subscribe("spBv1.0/#").await?,
        SubscribeReasonCode::Failure
    );
    assert_eq!(denied(http, "subscribe").await?, 2);

    // Nothing forged reached a twin, and the machines kept delivering in order.
    let before: Vec<u64> = [&aarhus_mill, &odense_mill]
        .iter()
        .map(|key| twins.get(key).map_or(0, |t| t.samples))
        .collect();
    wait_until(DEADLINE, "both mills to deliver 5 more samples", || {
        [&aarhus_mill, &odense_mill]
            .iter()
            .zip(&before)
            .all(|(key, before)| twins.get(key).is_some_and(|t| t.samples >= before + 5))
    })
    .await?;
    for key in [&aarhus_mill, &odense_mill] {
        let twin = twins.get(key).context("twin")?;
        assert!(twin.connectivity.online, "{key} went offline");
        assert_ne!(
            twin.value("spindle.power_w"),
            Some(FORGED),
            "{key} took a forgery"
        );
        assert!(
            twin.last_seq < 1_000_000,
            "{key} jumped to seq {}",
            twin.last_seq
        );
        assert_eq!(twin.historical_samples, 0);
    }
    assert_eq!(denied(http, "connect").await?, 2);
    assert_eq!(denied(http, "publish").await?, 9);
    Ok(())
}
