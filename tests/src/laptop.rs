//! A plain MQTT 3.1.1 client on the lab network (a student's laptop, an attacker's), driven
//! packet by packet so a test sees every answer of the broker; and the broker's refusal
//! counters on the hub's `/metrics`.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, MqttOptions, Packet, QoS, SubscribeReasonCode,
};

use crate::{http_get, within};

const DEADLINE: Duration = Duration::from_secs(20);

/// A client of the demo's broker, with its event loop driven here.
#[expect(
    missing_debug_implementations,
    reason = "rumqttc's event loop has no Debug"
)]
pub struct Laptop {
    /// The client.
    pub client: AsyncClient,
    events: EventLoop,
}

impl Laptop {
    /// A client of `addr` with an optional user name and password.
    pub fn new(addr: SocketAddr, id: &str, login: Option<(&str, &str)>) -> Self {
        let mut options = MqttOptions::new(id, addr.ip().to_string(), addr.port());
        if let Some((user, password)) = login {
            options.set_credentials(user, password);
        }
        let (client, events) = AsyncClient::new(options, 16);
        Self { client, events }
    }

    /// The next packet from the broker.
    pub async fn next(&mut self) -> anyhow::Result<Packet> {
        loop {
            match within(DEADLINE, "an MQTT packet", self.events.poll()).await?? {
                Event::Incoming(packet) => return Ok(packet),
                Event::Outgoing(_) => {}
            }
        }
    }

    /// Waits for the CONNACK.
    pub async fn connected(&mut self) -> anyhow::Result<()> {
        match self.next().await? {
            Packet::ConnAck(_) => Ok(()),
            other => bail!("expected CONNACK, got {other:?}"),
        }
    }

    /// Waits until the broker closes the connection (messages still arriving are skipped).
    pub async fn closed(&mut self) -> anyhow::Result<()> {
        within(DEADLINE, "the broker to close the connection", async {
            while self.events.poll().await.is_ok() {}
        })
        .await
    }

    /// Waits for the refusal of the login.
    pub async fn refused(&mut self) -> anyhow::Result<()> {
        match within(DEADLINE, "a refusal", self.events.poll()).await? {
            Err(ConnectionError::ConnectionRefused(_)) => Ok(()),
            other => bail!("expected the login to be refused, got {other:?}"),
        }
    }

    /// Publishes at QoS 1 and waits for the broker's answer (a refused 3.1.1 publish is
    /// answered too, and dropped).
    pub async fn publish(&mut self, topic: &str, payload: Vec<u8>) -> anyhow::Result<()> {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await?;
        loop {
            if let Packet::PubAck(_) = self.next().await? {
                return Ok(());
            }
        }
    }

    /// Subscribes at QoS 1; the broker's answer.
    pub async fn subscribe(&mut self, filter: &str) -> anyhow::Result<SubscribeReasonCode> {
        self.client.subscribe(filter, QoS::AtLeastOnce).await?;
        loop {
            if let Packet::SubAck(ack) = self.next().await? {
                return ack.return_codes.first().copied().context("empty SUBACK");
            }
        }
    }

    /// The next message delivered.
    pub async fn next_publish(&mut self) -> anyhow::Result<rumqttc::Publish> {
        loop {
            if let Packet::Publish(publish) = self.next().await? {
                return Ok(publish);
            }
        }
    }
}

/// `demolab_broker_denied_total{reason=...}` from the hub's `/metrics`.
pub async fn denied(http: SocketAddr, reason: &str) -> anyhow::Result<u64> {
    let (status, body) = http_get(http, "/metrics").await?;
    anyhow::ensure!(status == 200, "/metrics answered {status}");
    let prefix = format!("demolab_broker_denied_total{{reason=\"{reason}\"}} ");
    body.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .with_context(|| format!("no {prefix} in /metrics"))?
        .trim()
        .parse()
        .context("counter value")
}
