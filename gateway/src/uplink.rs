//! The uplink MQTT session to the hub's broker, and the only task that publishes on it.
//!
//! It owns the rumqttc event loop and client. The core asks it to publish with the session
//! generation it believes in; a request from an older session is dropped instead of leaking DDATA
//! into a new session before its NBIRTH (the record stays unacknowledged in the disk buffer and is
//! sent again after the births). It maps PUBACKs back to buffer records, so a record is deleted
//! only after the broker acknowledged it.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use prost::Message;
use protocol::HostId;
use protocol::sparkplug::{BdSeq, MessageType, Payload, Topic};
use rumqttc::{AsyncClient, Event, EventLoop, LastWill, MqttOptions, Outgoing, Packet, QoS};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::buffer::RecordId;
use crate::config::MqttEndpoint;
use crate::edge::{EdgeNode, is_rebirth_request};
use crate::run::now_ms;

const RECONNECT_BACKOFF: Duration = Duration::from_millis(500);

/// What the core asks of the uplink.
#[derive(Debug)]
pub(crate) enum UplinkCommand {
    /// Publish QoS 1 if `generation` is still the live session.
    Publish {
        generation: u64,
        topic: String,
        payload: Vec<u8>,
        record: Option<RecordId>,
    },
    /// Disconnect cleanly (after the NDEATH published before it) and end the task.
    Disconnect,
}

/// What the uplink tells the core.
#[derive(Debug)]
pub(crate) enum UplinkEvent {
    /// A new MQTT session with this generation and bdSeq (its Will carries the same bdSeq).
    Connected { generation: u64, bd_seq: BdSeq },
    /// The session is gone; everything unacknowledged must be sent again in the next one.
    Disconnected,
    /// The host asked for a rebirth (NCMD).
    Rebirth,
    /// The broker acknowledged a buffered record.
    Acked(RecordId),
    /// The primary host's STATE changed.
    HostOnline(bool),
    /// The host sent a machine a command (DCMD).
    DeviceCommand {
        machine: protocol::MachineId,
        payload: Payload,
    },
}

/// Settings of the uplink session.
#[derive(Debug, Clone)]
pub(crate) struct UplinkSettings {
    /// The configured broker, tried first.
    pub broker: MqttEndpoint,
    /// Further nodes of its cluster, tried in turn after it when the connection is lost.
    pub failover: Vec<MqttEndpoint>,
    /// The QoS of the command and STATE subscriptions.
    pub subscribe_qos: QoS,
    pub client_id: String,
    pub primary_host: Option<HostId>,
    pub credentials: Option<crate::config::MqttCredentials>,
    pub tls: Option<broker::tls::ClientTls>,
    /// Most unacknowledged publishes in flight.
    pub inflight: u16,
}

fn will_of(edge: &EdgeNode) -> LastWill {
    let death = edge.death(now_ms());
    LastWill::new(
        death.topic.to_string(),
        death.payload.encode_to_vec(),
        QoS::AtLeastOnce,
        false,
    )
}

/// Parses a Sparkplug 3.0 STATE payload (`{"online":true,"timestamp":…}`).
pub(crate) fn parse_state(payload: &[u8]) -> Option<bool> {
    let text = std::str::from_utf8(payload).ok()?;
    let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    if compact.contains("\"online\":true") {
        Some(true)
    } else if compact.contains("\"online\":false") {
        Some(false)
    } else {
        None
    }
}

pub(crate) async fn run(
    settings: UplinkSettings,
    mut edge: EdgeNode,
    mut commands: mpsc::Receiver<UplinkCommand>,
    events_tx: mpsc::Sender<UplinkEvent>,
    cancel: CancellationToken,
) {
    let mut broker = 0;
    let options = options_for(&settings, broker, &edge);
    // Room for a full window of data plus births, so `try_publish` never finds the queue full.
    let (client, mut events) = AsyncClient::new(options, usize::from(settings.inflight) * 4 + 256);
    let lab_topics = edge.death(0).topic;
    let (ncmd, dcmd_filter) = match &lab_topics {
        Topic::Message { lab, gateway, .. } => (
            Topic::node(lab, MessageType::NCmd, gateway).to_string(),
            format!("{}/{lab}/DCMD/{gateway}/+", protocol::sparkplug::NAMESPACE),
        ),
        Topic::State { .. } => (String::new(), String::new()),
    };
    let state_topic = settings
        .primary_host
        .as_ref()
        .map(|host| Topic::State { host: host.clone() }.to_string());

    let mut generation = 0u64;
    let mut connected = false;
    // Records in publish order, waiting for rumqttc to assign their packet ids.
    let mut awaiting_pkid: VecDeque<Option<RecordId>> = VecDeque::new();
    let mut by_pkid: HashMap<u16, RecordId> = HashMap::new();
    let mut disconnecting = false;
    loop {
        tokio::select! {
            biased;
            () = cancel.cancelled(), if !disconnecting => {
                // The core publishes NDEATH and asks to disconnect; this is the hard stop.
                drain_then_stop(&client, &mut events).await;
                return;
            }
            command = commands.recv(), if !disconnecting => match command {
                Some(UplinkCommand::Publish { generation: of, topic, payload, record }) => {
                    if !connected || of != generation {
                        debug!(?record, "dropping a publish of an ended session");
                        continue;
                    }
                    match client.try_publish(topic, QoS::AtLeastOnce, false, payload) {
                        Ok(()) => awaiting_pkid.push_back(record),
                        Err(err) => error!(%err, ?record, "uplink queue refused a publish; it is sent again after reconnect"),
                    }
                }
                Some(UplinkCommand::Disconnect) | None => {
                    disconnecting = true;
                    let _ = client.try_disconnect();
                }
            },
            event = events.poll() => match event {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    generation += 1;
                    connected = true;
                    awaiting_pkid.clear();
                    by_pkid.clear();
                                        let mut topics = vec![ncmd.clone(), dcmd_filter.clone()];
                    topics.extend(state_topic.clone());
                    let filters = topics.into_iter().map(|t| rumqttc::SubscribeFilter::new(t, settings.subscribe_qos));
                    if let Err(err) = client.try_subscribe_many(filters) {
                        error!(%err, "cannot subscribe to NCMD/STATE");
                    }
                    info!(generation, bd_seq = edge.bd_seq().value(), "uplink connected");
                    if events_tx.send(UplinkEvent::Connected { generation, bd_seq: edge.bd_seq() }).await.is_err() {
                        return;
                    }
                }
                Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                    if let Some(Some(record)) = awaiting_pkid.pop_front() {
                        by_pkid.insert(pkid, record);
                    }
                }
                Ok(Event::Incoming(Packet::PubAck(ack))) => {
                    if let Some(record) = by_pkid.remove(&ack.pkid)
                        && events_tx.send(UplinkEvent::Acked(record)).await.is_err()
                    {
                        return;
                    }
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    let event = if publish.topic == ncmd {
                        match Payload::decode(publish.payload.as_ref()) {
                            Ok(payload) if is_rebirth_request(&payload) => Some(UplinkEvent::Rebirth),
                            Ok(_) => None,
                            Err(err) => {
                                warn!(%err, "undecodable NCMD payload");
                                None
                            }
                        }                    } else if let Ok(Topic::Message { kind: MessageType::DCmd, machine: Some(machine), .. }) =
                        Topic::parse(&publish.topic)
                    {
                        match Payload::decode(publish.payload.as_ref()) {
                            Ok(payload) => Some(UplinkEvent::DeviceCommand { machine, payload }),
                            Err(err) => {
                                warn!(%err, topic = %publish.topic, "undecodable DCMD payload");
                                None
                            }
                        }
                    } else if Some(&publish.topic) == state_topic.as_ref() {
                        let online = parse_state(&publish.payload);
                        if online.is_none() {
                            warn!(topic = %publish.topic, "unreadable primary host STATE");
                        }
                        online.map(UplinkEvent::HostOnline)
                    } else {
                        None
                    };
                    if let Some(event) = event
                        && events_tx.send(event).await.is_err()
                    {
                        return;
                    }
                }
                Ok(Event::Outgoing(Outgoing::Disconnect)) if disconnecting => {
                    drain_then_stop(&client, &mut events).await;
                    return;
                }
                Ok(_) => {}
                Err(err) => {
                    if disconnecting || cancel.is_cancelled() {
                        return;
                    }
                    if connected {
                        warn!(%err, "uplink MQTT connection lost; buffering until it is back");
                        connected = false;
                        if events_tx.send(UplinkEvent::Disconnected).await.is_err() {
                            return;
                        }
                    }
                    // Every MQTT session gets its own bdSeq, and its Will must carry it.
                    edge.set_bd_seq(edge.bd_seq().next());
                    // A lost connection may be a dead cluster node: the next attempt goes to
                    // the next one. rumqttc keeps one address per event loop, so the whole
                    // options are replaced; its session state (packets in flight) stays.
                    broker = (broker + 1) % (1 + settings.failover.len());
                    events.mqtt_options = options_for(&settings, broker, &edge);
                    if !settings.failover.is_empty() {
                        let next = settings.broker_at(broker);
                        info!(broker = %format!("{}:{}", next.host, next.port), "uplink tries the next broker of the cluster");
                    }
                    tokio::time::sleep(RECONNECT_BACKOFF).await;
                }
            },
        }
    }
}

impl UplinkSettings {
    /// Broker `index` of the list (the configured one, then the failover ones), wrapping.
    fn broker_at(&self, index: usize) -> &MqttEndpoint {
        match index % (1 + self.failover.len()) {
            0 => &self.broker,
            i => self.failover.get(i - 1).unwrap_or(&self.broker),
        }
    }
}

/// The uplink's MQTT options for broker `index` (see [`UplinkSettings::broker_at`]), its Will
/// carrying the edge node's current bdSeq.
fn options_for(settings: &UplinkSettings, index: usize, edge: &EdgeNode) -> MqttOptions {
    let broker = settings.broker_at(index);
    let mut options =
        MqttOptions::new(settings.client_id.clone(), broker.host.clone(), broker.port);
    options.set_keep_alive(Duration::from_secs(15));
    // Sparkplug edge nodes use clean sessions; state is re-established by births.
    options.set_clean_session(true);
    options.set_max_packet_size(1 << 20, 1 << 20);
    options.set_inflight(settings.inflight);
    options.set_last_will(will_of(edge));
    if let Some(credentials) = &settings.credentials {
        options.set_credentials(credentials.username.clone(), credentials.password.clone());
    }
    if let Some(tls) = &settings.tls {
        crate::run::use_tls(&mut options, tls);
    }
    options
}

/// Polls briefly so a queued NDEATH and DISCONNECT reach the broker.
async fn drain_then_stop(client: &AsyncClient, events: &mut EventLoop) {
    let _ = client.try_disconnect();
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            match events.poll().await {
                Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_payloads_are_read_with_or_without_spaces() {
        assert_eq!(parse_state(br#"{"online":true,"timestamp":1}"#), Some(true));
        assert_eq!(
            parse_state(br#"{ "online" : false, "timestamp": 1 }"#),
            Some(false)
        );
        assert_eq!(parse_state(b"ONLINE"), None);
    }

    fn endpoint(host: &str, port: u16) -> MqttEndpoint {
        MqttEndpoint {
            host: host.into(),
            port,
        }
    }

    #[test]
    fn after_a_lost_connection_the_next_cluster_node_is_tried_and_the_list_wraps() {
        let settings = UplinkSettings {
            broker: endpoint("a", 1),
            failover: vec![endpoint("b", 2), endpoint("c", 3)],
            subscribe_qos: QoS::AtLeastOnce,
            client_id: "gw-uplink".into(),
            primary_host: None,
            credentials: Some(crate::config::MqttCredentials {
                username: "gw".into(),
                password: "pw".into(),
            }),
            tls: None,
            inflight: 10,
        };
        let edge = EdgeNode::new(
            "lab".parse().expect("lab"),
            "gw".parse().expect("gw"),
            BdSeq::new(0),
        );
        let tried: Vec<_> = (0..4)
            .map(|i| options_for(&settings, i, &edge).broker_address())
            .collect();
        assert_eq!(
            tried,
            [
                ("a".into(), 1),
                ("b".into(), 2),
                ("c".into(), 3),
                ("a".into(), 1)
            ]
        );
        let options = options_for(&settings, 2, &edge);
        assert_eq!(
            options.client_id(),
            "gw-uplink",
            "the same session everywhere"
        );
        assert!(options.credentials().is_some(), "the same login everywhere");
        assert!(options.last_will().is_some(), "the NDEATH Will everywhere");
    }

    #[test]
    fn a_single_broker_is_tried_again_and_again() {
        let settings = UplinkSettings {
            broker: endpoint("a", 1),
            failover: Vec::new(),
            subscribe_qos: QoS::AtLeastOnce,
            client_id: "gw-uplink".into(),
            primary_host: None,
            credentials: None,
            tls: None,
            inflight: 10,
        };
        assert_eq!(settings.broker_at(5), &endpoint("a", 1));
    }
}
