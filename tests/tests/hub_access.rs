//! A hub whose embedded broker checks credentials and topics: its own ingest and JSON-topic
//! connections log in, a lab's gateway publishes under its lab, and a student reads the JSON
//! values of their lab and nothing of the Sparkplug traffic.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use broker::access::AccessConfig;
use broker::{BrokerConfig, EmbeddedBroker};
use demolab_tests::{
    burst_node, cheap_password_hash, gateway_config, http_get, start_gateway_with, wait_until,
    within,
};
use hub::twin::TwinKey;
use hub::{BrokerSetting, Hub, HubConfig, MqttLogin};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, SubscribeReasonCode};
use simulators::node::run_mqtt_node;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_behind_its_own_access_rules_ingests_and_serves_students() -> anyhow::Result<()> {
    let access = AccessConfig::parse(&format!(
        "[[users]]\nname = \"demolab-hub\"\npassword_hash = \"{}\"\nrole = \"hub\"\n\n\
         [[users]]\nname = \"gw-a\"\npassword_hash = \"{}\"\nrole = \"gateway\"\nlab = \"lab-a\"\n\n\
         [[users]]\nname = \"class-1\"\npassword_hash = \"{}\"\nrole = \"student\"\nlabs = [\"lab-a\"]\n",
        cheap_password_hash("hub-secret")?,
        cheap_password_hash("gw-secret")?,
        cheap_password_hash("student-secret")?,
    ))?;
    let data = tempfile::tempdir()?;
    let hub = Hub::start(HubConfig {
        http_bind: SocketAddr::from(([127, 0, 0, 1], 0)),
        broker: BrokerSetting::Embedded(BrokerConfig {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            access: Some(access),
            ..BrokerConfig::default()
        }),
        data_dir: data.path().to_owned(),
        mqtt_login: Some(MqttLogin {
            username: "demolab-hub".into(),
            password: "hub-secret".into(),
        }),
        // The lab is not configured: this is not about admission.
        accept_unknown: true,
        ..HubConfig::default()
    })
    .await?;
    within(Duration::from_secs(10), "the hub logged in", hub.ready()).await?;
    let hub_port = hub.mqtt_addr().port();

    // The lab's own broker for its nodes; the gateway logs in to the hub's broker only.
    let lab_broker = EmbeddedBroker::start(BrokerConfig {
        bind: SocketAddr::from(([127, 0, 0, 1], 0)),
        ..BrokerConfig::default()
    })
    .await?;
    let lab_port = lab_broker.local_addr().port();
    let cancel = CancellationToken::new();
    let _stop = cancel.clone().drop_guard();
    let mut config = gateway_config(hub_port, "lab-a", "gw-a", &data.path().join("buffer"))?;
    config.southbound = Some(gateway::MqttEndpoint {
        host: "127.0.0.1".into(),
        port: lab_port,
    });
    config.uplink_credentials = Some(gateway::MqttCredentials {
        username: "gw-a".into(),
        password: "gw-secret".into(),
    });
    let gateway = start_gateway_with(config, &cancel).await?;
    run_mqtt_node(burst_node(lab_port, 0xac, "mill-1", 5, 50)?, cancel.clone()).await?;
    let twins = hub.twins().clone();
    let key = TwinKey::parse("lab-a/mill-1").context("key")?;
    wait_until(
        Duration::from_secs(10),
        "all 50 samples at the twin",
        || twins.get(&key).is_some_and(|t| t.samples == 50),
    )
    .await?;

    // A student: the JSON values of their lab, and a refusal for the Sparkplug traffic.
    let mut options = MqttOptions::new("class-1", "127.0.0.1", hub_port);
    options.set_credentials("class-1", "student-secret");
    let (student, mut events) = AsyncClient::new(options, 16);
    student.subscribe("spBv1.0/#", QoS::AtMostOnce).await?;
    student
        .subscribe("demolab/lab-a/mill-1/#", QoS::AtMostOnce)
        .await?;
    let (refused, value) = within(Duration::from_secs(10), "the student's view", async {
        let mut refused = None;
        loop {
            match events.poll().await? {
                Event::Incoming(Packet::SubAck(ack)) if refused.is_none() => {
                    refused = Some(ack.return_codes[0] == SubscribeReasonCode::Failure);
                }
                Event::Incoming(Packet::Publish(p)) => {
                    assert!(
                        p.topic.starts_with("demolab/lab-a/"),
                        "the student got {}",
                        p.topic
                    );
                    let doc: serde_json::Value = serde_json::from_slice(&p.payload)?;
                    return anyhow::Ok((refused, doc));
                }
                _ => {}
            }
        }
    })
    .await??;
    assert_eq!(refused, Some(true), "the Sparkplug subscription is refused");
    assert!(value["value"].is_number(), "{value}");

    let (_, metrics) = http_get(hub.http_addr(), "/metrics").await?;
    assert!(
        metrics.contains("demolab_broker_denied_total{reason=\"subscribe\"} 1"),
        "{metrics}"
    );
    gateway.shutdown().await?;
    lab_broker.shutdown().await?;
    hub.shutdown().await?;
    Ok(())
}
