//! The JSON topics' own MQTT connection: retained QoS 0 publishes, written a round at a time.
//!
//! rumqttc writes its socket after every request, so the newest values of 500 metrics every
//! 250 ms cost 2,000 writes a second in the hub and as many wake-ups of the broker: a tenth of
//! the hub's CPU at 1,000 msg/s. QoS 0 keeps no state beyond the connection, so this client
//! encodes a round into one buffer and writes it at once (in 64 KiB pieces when it is larger).
//! It speaks MQTT 3.1.1 with rumqttc's packet types for CONNECT and what the broker sends back;
//! a PUBLISH is written here because rumqttc's wants an owned topic and payload per packet.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use rumqttc::{ConnAck, ConnectReturnCode, Packet};
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{JSON_ROOT, JsonTopicsBroker, Latest};
use crate::twin::{TwinKey, TwinRegistry};
use protocol::MetricName;

/// Seconds the broker waits without hearing from us before it drops the connection.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Time to connect, finish TLS and get the CONNACK, and to write one round.
const NETWORK_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause before connecting again after a lost connection.
const RECONNECT_AFTER: Duration = Duration::from_millis(500);
/// A round is written in pieces of about this many bytes: with 10,000 twins a round is
/// megabytes, and the buffer would stay that large between rounds.
const WRITE_CHUNK: usize = 64 * 1024;
/// Largest packet accepted from the broker (it only ever sends CONNACK and PINGRESP).
const MAX_INCOMING: usize = 64 * 1024;

/// Why the JSON topics' connection ended.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The socket failed or the broker closed it.
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// Connecting, the handshake or a write took longer than the network timeout.
    #[error("{0} timed out")]
    Timeout(&'static str),
    /// The broker refused the login or the client id.
    #[error("the broker refused the connection: {0:?}")]
    Refused(ConnectReturnCode),
    /// The broker sent something MQTT 3.1.1 does not allow here.
    #[error("the broker sent {0}")]
    Protocol(String),
    /// The broker did not answer a keep-alive ping within the keep-alive time.
    #[error("no answer to the keep-alive ping")]
    PingUnanswered,
    /// The broker's name is not a valid TLS server name.
    #[error("{host:?} is not a valid TLS server name")]
    ServerName { host: String },
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Publishes the newest committed value of each metric every `interval`, reconnecting (and
/// walking the cluster's nodes, as ingest does) when the connection is lost. While it is away,
/// values wait in `latest`, where each metric holds only its newest: memory stays bounded by
/// the twins' metrics.
pub(super) async fn publish(
    broker: JsonTopicsBroker,
    latest: Arc<Mutex<Latest>>,
    interval: Duration,
    twins: Arc<TwinRegistry>,
    cancel: CancellationToken,
) {
    let mut node = 0;
    loop {
        let session = async {
            match connect(&broker, node).await {
                Ok(stream) => serve(stream, &latest, interval, &twins).await,
                Err(err) => err,
            }
        };
        let err = tokio::select! {
            () = cancel.cancelled() => return,
            err = session => err,
        };
        warn!(%err, "JSON topic connection lost; reconnecting");
        if !broker.failover.is_empty() {
            // As ingest does: a lost connection may be a dead cluster node.
            node += 1;
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(RECONNECT_AFTER) => {}
        }
    }
}

/// Opens a session with node `index` of the broker list: TCP, TLS when configured, CONNECT and
/// its CONNACK.
async fn connect(broker: &JsonTopicsBroker, index: usize) -> Result<Box<dyn Io>, LinkError> {
    let (host, port) =
        crate::ingest::nth_broker((&broker.host, broker.port), &broker.failover, index);
    let open = async {
        let tcp = TcpStream::connect((host, port))
            .await
            .map_err(|source| LinkError::Io {
                what: "cannot connect",
                source,
            })?;
        // Each round is one write already; Nagle would only hold it back.
        let _ = tcp.set_nodelay(true);
        let mut stream: Box<dyn Io> =
            match &broker.tls {
                None => Box::new(tcp),
                Some(tls) => {
                    let name = rustls::pki_types::ServerName::try_from(host.to_owned())
                        .map_err(|_| LinkError::ServerName { host: host.into() })?;
                    let connector = tokio_rustls::TlsConnector::from(tls.rustls_config());
                    Box::new(connector.connect(name, tcp).await.map_err(|source| {
                        LinkError::Io {
                            what: "TLS handshake failed",
                            source,
                        }
                    })?)
                }
            };
        let mut connect = rumqttc::Connect::new(broker.client_id.clone());
        connect.keep_alive = KEEP_ALIVE.as_secs() as u16;
        if let Some(login) = &broker.login {
            connect.set_login(login.username.clone(), login.password.clone());
        }
        let mut out = BytesMut::new();
        connect
            .write(&mut out)
            .map_err(|err| LinkError::Protocol(format!("an unwritable CONNECT ({err:?})")))?;
        write_all(&mut stream, &out, "cannot send CONNECT").await?;
        let mut incoming = BytesMut::new();
        match next_packet(&mut stream, &mut incoming).await? {
            Packet::ConnAck(ConnAck {
                code: ConnectReturnCode::Success,
                ..
            }) => Ok(stream),
            Packet::ConnAck(ConnAck { code, .. }) => Err(LinkError::Refused(code)),
            other => Err(LinkError::Protocol(format!("{other:?} before its CONNACK"))),
        }
    };
    let stream = tokio::time::timeout(NETWORK_TIMEOUT, open)
        .await
        .map_err(|_| LinkError::Timeout("connecting"))??;
    info!(host, port, "JSON topics connected");
    Ok(stream)
}

/// Runs a connected session until it fails: a round of publishes every `interval`, a ping when
/// a keep-alive period passed without one, and the broker's answers read and checked.
async fn serve(
    stream: Box<dyn Io>,
    latest: &Mutex<Latest>,
    interval: Duration,
    twins: &TwinRegistry,
) -> LinkError {
    let (mut reader, mut writer) = tokio::io::split(stream);
    let ping_unanswered = AtomicBool::new(false);
    let read = async {
        let mut incoming = BytesMut::new();
        loop {
            match next_packet(&mut reader, &mut incoming).await {
                Ok(Packet::PingResp) => ping_unanswered.store(false, Ordering::Relaxed),
                Ok(other) => return LinkError::Protocol(format!("{other:?} unasked")),
                Err(err) => return err,
            }
        }
    };
    let write = async {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut round = Round::default();
        let mut last_write = Instant::now();
        loop {
            ticker.tick().await;
            let due = std::mem::take(&mut *latest.lock().unwrap_or_else(PoisonError::into_inner));
            if due.is_empty() {
                // Half the keep-alive leaves the broker time to answer before it would give up.
                if last_write.elapsed() < KEEP_ALIVE / 2 {
                    continue;
                }
                if ping_unanswered.swap(true, Ordering::Relaxed) {
                    return LinkError::PingUnanswered;
                }
            }
            let sent = tokio::time::timeout(NETWORK_TIMEOUT, async {
                if due.is_empty() {
                    round.out.clear();
                    round.out.put_slice(&[0xC0, 0x00]);
                    write_all(&mut writer, &round.out, "cannot ping").await
                } else {
                    round.send(&due, twins, &mut writer).await
                }
            })
            .await
            .map_err(|_| LinkError::Timeout("publishing"))
            .and_then(|written| written);
            if let Err(err) = sent {
                // Nothing is lost: the round's values go back unless a newer one came meanwhile.
                restore(latest, due);
                return err;
            }
            last_write = Instant::now();
        }
    };
    tokio::select! {
        err = read => err,
        err = write => err,
    }
}

/// Puts values that could not be published back, behind any newer value of the same metric.
fn restore(latest: &Mutex<Latest>, due: Latest) {
    let mut latest = latest.lock().unwrap_or_else(PoisonError::into_inner);
    for (key, metrics) in due {
        let newer = latest.entry(key).or_default();
        for (metric, value) in metrics {
            newer.entry(metric).or_insert(value);
        }
    }
}

/// One round's packets and the buffers that build them, kept from round to round.
#[derive(Default)]
struct Round {
    out: BytesMut,
    topic: Vec<u8>,
    payload: Vec<u8>,
}

/// A JSON topic's document.
#[derive(Serialize)]
struct Document<'a> {
    value: f64,
    unit: &'a str,
    timestamp: u64,
}

impl Round {
    /// Writes a retained QoS 0 PUBLISH of each value, [`WRITE_CHUNK`] bytes at a time.
    async fn send(
        &mut self,
        due: &Latest,
        twins: &TwinRegistry,
        stream: &mut (impl AsyncWrite + Unpin),
    ) -> Result<(), LinkError> {
        self.out.clear();
        for (key, metrics) in due {
            let kind = twins.kind(key);
            for (metric, &(value, timestamp)) in metrics {
                let unit = kind
                    .as_ref()
                    .and_then(|k| k.metric(metric.as_str()))
                    .map_or("", |m| m.unit.as_str());
                self.encode(key, metric, value, unit, timestamp);
                if self.out.len() >= WRITE_CHUNK {
                    write_all(stream, &self.out, "cannot publish").await?;
                    self.out.clear();
                }
            }
        }
        if self.out.is_empty() {
            return Ok(());
        }
        write_all(stream, &self.out, "cannot publish").await
    }

    fn encode(
        &mut self,
        key: &TwinKey,
        metric: &MetricName,
        value: f64,
        unit: &str,
        timestamp: u64,
    ) {
        use std::io::Write as _;
        self.topic.clear();
        self.payload.clear();
        // Writing to a vector cannot fail; a non-finite value becomes `null`.
        let _ = write!(
            self.topic,
            "{JSON_ROOT}/{}/{}/{metric}",
            key.lab, key.machine
        );
        let _ = serde_json::to_writer(
            &mut self.payload,
            &Document {
                value,
                unit,
                timestamp,
            },
        );
        put_publish(&mut self.out, &self.topic, &self.payload);
    }
}

/// A retained QoS 0 PUBLISH (MQTT 3.1.1 section 3.3): no packet id, so the variable header is
/// the topic alone. Topics are ids joined by `/`, far below the 64 KiB a topic may have.
fn put_publish(out: &mut BytesMut, topic: &[u8], payload: &[u8]) {
    const PUBLISH_RETAINED: u8 = 0x31;
    out.put_u8(PUBLISH_RETAINED);
    let mut remaining = 2 + topic.len() + payload.len();
    // The remaining length: 7 bits a byte, least significant first, the top bit saying more
    // follow.
    loop {
        let byte = (remaining % 128) as u8;
        remaining /= 128;
        if remaining == 0 {
            out.put_u8(byte);
            break;
        }
        out.put_u8(byte | 0x80);
    }
    out.put_u16(topic.len() as u16);
    out.put_slice(topic);
    out.put_slice(payload);
}

async fn write_all(
    stream: &mut (impl AsyncWrite + Unpin),
    bytes: &[u8],
    what: &'static str,
) -> Result<(), LinkError> {
    let io = |source| LinkError::Io { what, source };
    stream.write_all(bytes).await.map_err(io)?;
    // TLS holds written records until flushed.
    stream.flush().await.map_err(io)
}

/// Reads until `buffer` holds a whole packet and takes it out.
async fn next_packet(
    stream: &mut (impl AsyncRead + Unpin),
    buffer: &mut BytesMut,
) -> Result<Packet, LinkError> {
    loop {
        match Packet::read(buffer, MAX_INCOMING) {
            Ok(packet) => return Ok(packet),
            Err(rumqttc::Error::InsufficientBytes(_)) => {}
            Err(err) => return Err(LinkError::Protocol(format!("a bad packet ({err:?})"))),
        }
        let read = stream
            .read_buf(buffer)
            .await
            .map_err(|source| LinkError::Io {
                what: "cannot read from the broker",
                source,
            })?;
        if read == 0 {
            return Err(LinkError::Io {
                what: "the broker closed the connection",
                source: std::io::ErrorKind::UnexpectedEof.into(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The topics and documents of the retained QoS 0 publishes in `bytes`, in order.
    fn decoded(bytes: &[u8]) -> Vec<(String, serde_json::Value)> {
        let mut bytes = BytesMut::from(bytes);
        let mut got = Vec::new();
        while !bytes.is_empty() {
            match Packet::read(&mut bytes, MAX_INCOMING).expect("a whole packet") {
                Packet::Publish(p) => {
                    assert!(p.retain, "{p:?}");
                    assert_eq!(p.qos, rumqttc::QoS::AtMostOnce);
                    let doc: serde_json::Value = serde_json::from_slice(&p.payload).expect("JSON");
                    got.push((p.topic, doc));
                }
                other => panic!("not a publish: {other:?}"),
            }
        }
        got
    }

    #[tokio::test]
    async fn a_large_round_goes_out_whole_in_pieces_and_its_buffer_stays_small() {
        let twins = TwinRegistry::new(Arc::default(), Arc::default());
        let values: Vec<(String, f64, u64)> = (0..3_000)
            .map(|i| (format!("lab-a/mill-{i}"), f64::from(i), 1))
            .collect();
        let due = due(&values
            .iter()
            .map(|(twin, value, at)| (twin.as_str(), "spindle.power_w", *value, *at))
            .collect::<Vec<_>>());
        let mut round = Round::default();
        let mut sent = Vec::new();
        round.send(&due, &twins, &mut sent).await.expect("written");
        assert!(sent.len() > 3 * WRITE_CHUNK, "{} bytes", sent.len());
        assert_eq!(decoded(&sent).len(), 3_000);
        assert!(
            round.out.capacity() <= 4 * WRITE_CHUNK,
            "{} bytes kept",
            round.out.capacity()
        );
    }

    fn due(values: &[(&str, &str, f64, u64)]) -> Latest {
        let mut latest = Latest::default();
        for (twin, metric, value, timestamp) in values {
            latest
                .entry(TwinKey::parse(twin).expect("key"))
                .or_default()
                .insert(
                    metric.parse::<MetricName>().expect("metric"),
                    (*value, *timestamp),
                );
        }
        latest
    }

    #[tokio::test]
    async fn a_round_is_retained_publishes_that_an_mqtt_decoder_reads_back() {
        let twins = TwinRegistry::new(Arc::default(), Arc::default());
        let mut round = Round::default();
        // A packet over 127 bytes takes a two-byte remaining length.
        let long = format!("{}/{}", "l".repeat(32), "m".repeat(48));
        let mut sent = Vec::new();
        round
            .send(
                &due(&[
                    ("lab-a/mill-1", "spindle.power_w", 1250.5, 7),
                    (&long, "spindle.speed_rpm", f64::NAN, 8),
                ]),
                &twins,
                &mut sent,
            )
            .await
            .expect("written");
        let mut got = decoded(&sent);
        got.sort_by(|a, b| a.0.cmp(&b.0));
        let expected = vec![
            (
                "demolab/lab-a/mill-1/spindle.power_w".to_owned(),
                serde_json::json!({"value": 1250.5, "unit": "", "timestamp": 7}),
            ),
            (
                format!("demolab/{long}/spindle.speed_rpm"),
                serde_json::json!({"value": null, "unit": "", "timestamp": 8}),
            ),
        ];
        assert_eq!(got, expected);
    }

    #[test]
    fn values_that_could_not_be_sent_go_back_behind_newer_ones() {
        let latest = Mutex::new(due(&[("lab-a/mill-1", "spindle.power_w", 3.0, 3)]));
        restore(
            &latest,
            due(&[
                ("lab-a/mill-1", "spindle.power_w", 2.0, 2),
                ("lab-a/mill-1", "spindle.speed_rpm", 100.0, 2),
            ]),
        );
        assert_eq!(
            latest.into_inner().expect("lock"),
            due(&[
                ("lab-a/mill-1", "spindle.power_w", 3.0, 3),
                ("lab-a/mill-1", "spindle.speed_rpm", 100.0, 2),
            ])
        );
    }

    /// Starts an embedded broker on an ephemeral port.
    async fn start_broker() -> broker::EmbeddedBroker {
        broker::EmbeddedBroker::start(broker::BrokerConfig {
            bind: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            ..broker::BrokerConfig::default()
        })
        .await
        .expect("broker")
    }

    /// The first retained value a new subscriber to `topic` on `port` gets.
    async fn retained(port: u16, topic: &str) -> serde_json::Value {
        let (client, mut events) = rumqttc::AsyncClient::new(
            rumqttc::MqttOptions::new("json-reader", "127.0.0.1", port),
            16,
        );
        client
            .subscribe(topic, rumqttc::QoS::AtMostOnce)
            .await
            .expect("subscribe");
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if let rumqttc::Event::Incoming(Packet::Publish(p)) =
                    events.poll().await.expect("reader connection")
                {
                    return serde_json::from_slice(&p.payload).expect("JSON");
                }
            }
        })
        .await
        .expect("a retained value in time")
    }

    #[tokio::test]
    async fn publishes_through_a_real_broker_and_moves_to_the_next_node_when_one_dies() {
        let first = start_broker().await;
        let second = start_broker().await;
        let jsonb = JsonTopicsBroker {
            host: "127.0.0.1".into(),
            port: first.local_addr().port(),
            failover: vec![("127.0.0.1".into(), second.local_addr().port())],
            login: None,
            client_id: "demolab-hub-json".into(),
            tls: None,
        };
        let latest = Arc::new(Mutex::new(due(&[(
            "lab-a/mill-1",
            "spindle.power_w",
            1.0,
            1,
        )])));
        let cancel = CancellationToken::new();
        let task = tokio::spawn(publish(
            jsonb,
            latest.clone(),
            Duration::from_millis(10),
            Arc::new(TwinRegistry::new(Arc::default(), Arc::default())),
            cancel.clone(),
        ));
        const TOPIC: &str = "demolab/lab-a/mill-1/spindle.power_w";
        assert_eq!(
            retained(first.local_addr().port(), TOPIC).await["value"],
            1.0
        );

        first.shutdown().await.expect("first node stops");
        // A round written before the publisher notices the dead node is lost with it (QoS 0),
        // so newer values keep coming, as they do from machines, until the next node has one.
        let feeder = {
            let latest = latest.clone();
            tokio::spawn(async move {
                for n in 2_u32.. {
                    latest.lock().expect("lock").extend(due(&[(
                        "lab-a/mill-1",
                        "spindle.power_w",
                        f64::from(n),
                        u64::from(n),
                    )]));
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        };
        let moved = retained(second.local_addr().port(), TOPIC).await;
        assert!(moved["value"].as_f64() >= Some(2.0), "{moved}");
        feeder.abort();
        cancel.cancel();
        task.await.expect("publisher ends");
        second.shutdown().await.expect("second node stops");
    }
}
