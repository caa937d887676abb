//! A gateway logs in to a broker that refuses anonymous clients, and everything its uplink
//! needs (birth, Will, command and STATE subscriptions) passes that broker's ACL.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::bail;
use broker::access::AccessConfig;
use broker::{BrokerConfig, EmbeddedBroker};
use demolab_tests::{cheap_password_hash, gateway_config, start_gateway_with, within};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

#[tokio::test]
async fn a_gateway_with_credentials_is_born_on_an_access_controlled_broker() -> anyhow::Result<()> {
    let access = AccessConfig::parse(&format!(
        "[[users]]\nname = \"gw-a\"\npassword_hash = \"{}\"\nrole = \"gateway\"\nlab = \"lab-a\"\n\n\
         [[users]]\nname = \"demolab-hub\"\npassword_hash = \"{}\"\nrole = \"hub\"\n",
        cheap_password_hash("gw-secret")?,
        cheap_password_hash("hub-secret")?,
    ))?;
    let broker = EmbeddedBroker::start(BrokerConfig {
        bind: SocketAddr::from(([127, 0, 0, 1], 0)),
        access: Some(access),
        ..BrokerConfig::default()
    })
    .await?;
    let port = broker.local_addr().port();

    // The hub's view: every Sparkplug message.
    let mut options = MqttOptions::new("hub", "127.0.0.1", port);
    options.set_credentials("demolab-hub", "hub-secret");
    let (hub, mut hub_events) = AsyncClient::new(options, 64);
    hub.subscribe("spBv1.0/#", QoS::AtLeastOnce).await?;
    // The primary host online (retained, as Sparkplug 3.0 hosts do): a gateway with a primary
    // host is born only then, and reading it needs the gateway's STATE grant.
    hub.publish(
        "spBv1.0/STATE/demolab-hub",
        QoS::AtLeastOnce,
        true,
        r#"{"online":true,"timestamp":1}"#,
    )
    .await?;
    within(
        Duration::from_secs(10),
        "the hub's SUBACK and PUBACK",
        async {
            let (mut subscribed, mut published) = (false, false);
            while !(subscribed && published) {
                match hub_events.poll().await? {
                    Event::Incoming(Packet::SubAck(_)) => subscribed = true,
                    Event::Incoming(Packet::PubAck(_)) => published = true,
                    _ => {}
                }
            }
            anyhow::Ok(())
        },
    )
    .await??;

    let buffer = tempfile::tempdir()?;
    let mut config = gateway_config(port, "lab-a", "gw-a", buffer.path())?;
    // A serial/Modbus-only gateway: its southbound would be an anonymous client here.
    config.southbound = None;
    config.primary_host = Some("demolab-hub".parse()?);
    config.uplink_credentials = Some(gateway::MqttCredentials {
        username: "gw-a".into(),
        password: "gw-secret".into(),
    });
    let cancel = tokio_util::sync::CancellationToken::new();
    let gateway = start_gateway_with(config, &cancel).await?;

    let birth = within(Duration::from_secs(10), "the gateway's NBIRTH", async {
        loop {
            match hub_events.poll().await? {
                Event::Incoming(Packet::Publish(publish)) if publish.topic.contains("/NBIRTH/") => {
                    return anyhow::Ok(publish.topic);
                }
                Event::Incoming(Packet::Disconnect) => bail!("the hub was disconnected"),
                _ => continue,
            }
        }
    })
    .await??;
    assert_eq!(birth, "spBv1.0/lab-a/NBIRTH/gw-a");
    let denials = broker.denials().snapshot();
    assert_eq!(
        denials,
        broker::Denials::default(),
        "nothing of the gateway's was refused"
    );

    gateway.shutdown().await?;
    broker.shutdown().await?;
    Ok(())
}
