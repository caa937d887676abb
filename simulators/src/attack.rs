//! A rogue client on the lab network, for the live cybersecurity demonstration
//! (`demolab-sim attack`): it tries what a curious student or an attacker would — log in without
//! a password or with a guessed one, publish fake sensor values as if it were the lab's gateway,
//! command a machine, and declare the lab's gateway dead (directly and through a Will it leaves
//! behind) — and reports what the broker answered to each.
//!
//! The broker answers a refused MQTT 3.1.1 publish like an accepted one (and drops it), so the
//! client alone cannot tell; the refusals show on the hub's security counters
//! (`/api/v1/security`, `/metrics`), which is what the audience watches.

use std::time::Duration;

use prost::Message;
use protocol::sparkplug::{DataType, Metric, MetricValue, Payload};
use rumqttc::{AsyncClient, ConnectionError, Event, EventLoop, LastWill, MqttOptions, Packet, QoS};

use crate::node::NodeLogin;

const ANSWER_WAIT: Duration = Duration::from_secs(10);
/// A value no simulated machine produces, so a fake that got through would stand out.
pub const FAKE_VALUE: f64 = 987_654.0;

/// Whom to attack.
#[derive(Debug, Clone)]
pub struct Target {
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// The lab (Sparkplug group).
    pub lab: String,
    /// Its gateway (Sparkplug edge node).
    pub gateway: String,
    /// A machine of the lab.
    pub machine: String,
}

/// One attempt and what came of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// What was tried.
    pub what: String,
    /// What the broker answered.
    pub outcome: String,
    /// Whether the broker refused it outright (a publish refusal is invisible to the client).
    pub refused_at_connect: bool,
}

fn options(target: &Target, id: &str, login: Option<(&str, &str)>) -> MqttOptions {
    let mut options = MqttOptions::new(id, target.host.clone(), target.port);
    options.set_keep_alive(Duration::from_secs(5));
    if let Some((user, password)) = login {
        options.set_credentials(user, password);
    }
    options
}

/// Polls until the CONNACK or the refusal.
async fn connect(events: &mut EventLoop) -> Result<(), String> {
    let answer = tokio::time::timeout(ANSWER_WAIT, async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => return Ok(()),
                Ok(_) => {}
                Err(ConnectionError::ConnectionRefused(code)) => {
                    return Err(format!("refused: {code:?}"));
                }
                Err(err) => return Err(format!("failed: {err}")),
            }
        }
    })
    .await;
    answer.unwrap_or_else(|_| Err("no answer".into()))
}

/// Publishes at QoS 1 and waits for the broker's acknowledgement.
async fn publish(
    client: &AsyncClient,
    events: &mut EventLoop,
    topic: &str,
    payload: Vec<u8>,
) -> String {
    if let Err(err) = client
        .publish(topic, QoS::AtLeastOnce, false, payload)
        .await
    {
        return format!("not sent: {err}");
    }
    let acked = tokio::time::timeout(ANSWER_WAIT, async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => return Ok(()),
                Ok(_) => {}
                Err(err) => return Err(err.to_string()),
            }
        }
    })
    .await;
    match acked {
        Ok(Ok(())) => "acknowledged (MQTT 3.1.1 acknowledges a refused publish too)".into(),
        Ok(Err(err)) => format!("connection closed: {err}"),
        Err(_) => "no acknowledgement".into(),
    }
}

fn fake_ddata() -> Vec<u8> {
    Payload {
        timestamp: Some(0),
        seq: Some(1),
        metrics: vec![
            Metric::new(DataType::Double, MetricValue::Double(FAKE_VALUE)).named("spindle.power_w"),
        ],
        ..Default::default()
    }
    .encode_to_vec()
}

fn fake_command() -> Vec<u8> {
    Payload {
        timestamp: Some(0),
        metrics: vec![
            Metric::new(DataType::Double, MetricValue::Double(1.0)).named("node.period_ms"),
        ],
        ..Default::default()
    }
    .encode_to_vec()
}

fn fake_death() -> Vec<u8> {
    Payload {
        timestamp: Some(0),
        metrics: vec![Metric::new(DataType::UInt64, MetricValue::Long(0)).named("bdSeq")],
        ..Default::default()
    }
    .encode_to_vec()
}

/// Runs the attack: two logins without the right password, then with `login` (a student's or
/// a team's, if the attacker has one) fake data, a command, a death and a Will. Returns every
/// attempt in order.
pub async fn run(target: &Target, login: Option<&NodeLogin>) -> Vec<Attempt> {
    let mut attempts = Vec::new();
    let lab = &target.lab;
    let gateway = &target.gateway;
    for (what, credentials) in [
        ("log in without a user name", None),
        (
            "log in as the gateway with a guessed password",
            Some((gateway.as_str(), "password")),
        ),
    ] {
        let (_client, mut events) =
            AsyncClient::new(options(target, "laptop-login", credentials), 8);
        let outcome = connect(&mut events).await;
        attempts.push(Attempt {
            what: what.into(),
            refused_at_connect: outcome.is_err(),
            outcome: outcome.map_or_else(|e| e, |()| "accepted".into()),
        });
    }
    let Some(login) = login else {
        return attempts;
    };
    let credentials = Some((login.username.as_str(), login.password.as_str()));
    let mut with_will = options(target, "laptop", credentials);
    with_will.set_last_will(LastWill::new(
        format!("spBv1.0/{lab}/NDEATH/{gateway}"),
        fake_death(),
        QoS::AtLeastOnce,
        false,
    ));
    let (client, mut events) = AsyncClient::new(with_will, 16);
    if let Err(outcome) = connect(&mut events).await {
        attempts.push(Attempt {
            what: format!("log in as {}", login.username),
            outcome,
            refused_at_connect: true,
        });
        return attempts;
    }
    let machine = &target.machine;
    for (what, topic, payload) in [
        (
            "publish fake sensor values as the lab's gateway",
            format!("spBv1.0/{lab}/DDATA/{gateway}/{machine}"),
            fake_ddata(),
        ),
        (
            "command a machine",
            format!("spBv1.0/{lab}/DCMD/{gateway}/{machine}"),
            fake_command(),
        ),
        (
            "declare the lab's gateway dead",
            format!("spBv1.0/{lab}/NDEATH/{gateway}"),
            fake_death(),
        ),
        (
            "overwrite a machine's JSON value",
            format!("demolab/{lab}/{machine}/spindle.power_w"),
            FAKE_VALUE.to_string().into_bytes(),
        ),
    ] {
        let outcome = publish(&client, &mut events, &topic, payload).await;
        attempts.push(Attempt {
            what: format!("{what} ({topic})"),
            outcome,
            refused_at_connect: false,
        });
    }
    // Vanish without a DISCONNECT, so the broker sends the Will: another try at the death.
    drop(client);
    drop(events);
    attempts.push(Attempt {
        what: format!("leave a Will that declares {gateway} dead, and vanish"),
        outcome: "connection dropped; the broker judges the Will now".into(),
        refused_at_connect: false,
    });
    attempts
}
