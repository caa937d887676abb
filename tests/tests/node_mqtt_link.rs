//! The firmware's own MQTT 3.1.1 client (`firmware::mqtt`) against the hub's embedded broker:
//! a node built from the real `NodeCore` publishes its Hello and samples at QoS 1 over a
//! blocking `std::net::TcpStream`, an independent rumqttc client watches the uplink, and a
//! command travels back down to the node.

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use bytes::BytesMut;
use firmware::NodeCore;
use firmware::mqtt::packet::{self as mqtt_packet, Connect, Packet, Publish, SubAckCode, Will};
use firmware::mqtt::{MqttClient, QoS as NodeQoS};
use hub::broker::{BrokerConfig, EmbeddedBroker};
use protocol::node_topic::{self, Direction};
use protocol::{Frame, NodeId, codec, golden};
use rumqttc::mqttbytes::v4;
use rumqttc::{AsyncClient, Event, MqttOptions, QoS};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::timeout;

/// Generous for a loaded 2-core box; healthy runs take well under a second.
const DEADLINE: Duration = Duration::from_secs(20);
const SAMPLES: u32 = 100;
const MARKER_TOPIC: &str = "demolab/v1/node/ffffffffffffffff/up";
const MARKER: &[u8] = b"end-of-test";

/// A `std` socket seen through `embedded_io`, as a board's TCP stack would be. Its read
/// timeout surfaces as `WouldBlock`, which embedded-io files under `Other`: a fatal error that
/// ends the node thread instead of the timeout-as-empty-poll a board would map it to.
struct Tcp(TcpStream);

impl embedded_io::ErrorType for Tcp {
    type Error = io::Error;
}

impl embedded_io::Read for Tcp {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        io::Read::read(&mut self.0, buf)
    }
}

impl embedded_io::Write for Tcp {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        io::Write::write(&mut self.0, buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        io::Write::flush(&mut self.0)
    }
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A rumqttc client subscribed to every node uplink.
struct Observer {
    client: AsyncClient,
    incoming: mpsc::UnboundedReceiver<rumqttc::Publish>,
    _event_loop: AbortOnDrop,
}

impl Observer {
    /// Returns once the broker granted the subscription, so nothing the node sends is missed.
    async fn connect(broker: &EmbeddedBroker) -> Result<Self> {
        let addr = broker.local_addr();
        let options = MqttOptions::new("observer", addr.ip().to_string(), addr.port());
        let (client, mut event_loop) = AsyncClient::new(options, 64);
        let (suback_tx, mut suback) = mpsc::unbounded_channel();
        let (tx, incoming) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            // Polling on after an error would reconnect silently; the test should see missing
            // frames instead.
            while let Ok(event) = event_loop.poll().await {
                let test_listening = match event {
                    Event::Incoming(rumqttc::Packet::Publish(publish)) => tx.send(publish).is_ok(),
                    Event::Incoming(rumqttc::Packet::SubAck(ack)) => {
                        let _ = suback_tx.send(ack.return_codes);
                        true
                    }
                    _ => true,
                };
                if !test_listening {
                    return;
                }
            }
        });
        client
            .subscribe(node_topic::ALL_UP, QoS::AtLeastOnce)
            .await
            .context("queue the uplink subscription")?;
        let granted = timeout(DEADLINE, suback.recv())
            .await
            .context("timed out waiting for the observer's SUBACK")?
            .context("observer event loop ended before its SUBACK")?;
        ensure!(
            granted == [v4::SubscribeReasonCode::Success(QoS::AtLeastOnce)],
            "subscription refused: {granted:?}"
        );
        Ok(Self {
            client,
            incoming,
            _event_loop: AbortOnDrop(task),
        })
    }

    /// Every (topic, payload) that arrives before the observer's own end marker.
    ///
    /// The marker is published after the node's publishes were all acknowledged, and the broker
    /// routes a message before acknowledging it, so anything missing by then is lost, not late.
    async fn drain_until_marker(&mut self) -> Result<Vec<(String, Vec<u8>)>> {
        self.client
            .publish(MARKER_TOPIC, QoS::AtLeastOnce, false, MARKER)
            .await
            .context("queue the end marker")?;
        let mut seen = Vec::new();
        loop {
            let publish = timeout(DEADLINE, self.incoming.recv())
                .await
                .context("timed out waiting for the end marker")?
                .context("observer event loop ended")?;
            if publish.topic == MARKER_TOPIC && publish.payload.as_ref() == MARKER {
                return Ok(seen);
            }
            seen.push((publish.topic, publish.payload.to_vec()));
        }
    }
}

fn golden_node() -> NodeCore {
    let Frame::Hello(hello) = golden::hello() else {
        unreachable!("the golden hello is a Hello")
    };
    NodeCore::new(
        hello.node,
        hello.firmware,
        hello.boot,
        hello.machine,
        hello.metrics,
    )
}

/// What the node thread saw on its down topic, and the payload of the Ack it sent back.
struct NodeOutcome {
    topic: String,
    payload: Vec<u8>,
    ack: Vec<u8>,
}

/// The node side, blocking, as on a board: connect, subscribe to the down topic, publish every
/// payload at QoS 1, report, then wait for one command, answer it and disconnect.
fn run_node(
    broker: SocketAddr,
    mut node: NodeCore,
    payloads: &[Vec<u8>],
    published: oneshot::Sender<()>,
) -> Result<NodeOutcome> {
    let started = Instant::now();
    let now_ms = || u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let stream = TcpStream::connect(broker).context("connect to the broker")?;
    // The read timeout is the deadline of every blocking call; Nagle would add a delayed-ACK
    // stall to each of the hundred publish round trips.
    stream.set_read_timeout(Some(DEADLINE))?;
    stream.set_write_timeout(Some(DEADLINE))?;
    stream.set_nodelay(true)?;

    let id = node.node();
    let up = node_topic::format(id, Direction::Up);
    let down = node_topic::format(id, Direction::Down);
    let client_id = format!("n{id}");
    let will_topic = format!("{}{id}/will", node_topic::PREFIX);
    let options = Connect {
        client_id: &client_id,
        clean_session: false,
        keep_alive_s: 30,
        will: Some(Will {
            topic: &will_topic,
            payload: b"offline",
            qos: NodeQoS::AtLeastOnce,
            retain: false,
        }),
        username: None,
        password: None,
    };
    let mut client: MqttClient<'_, Tcp> = MqttClient::new(Tcp(stream), options);

    let session_present = client.connect(now_ms()).context("MQTT connect")?;
    ensure!(!session_present, "a fresh broker has no stored session");
    let granted = client.subscribe(&down, now_ms()).context("subscribe")?;
    ensure!(granted == NodeQoS::AtLeastOnce, "granted {granted:?}");
    for payload in payloads {
        client
            .publish_qos1(&up, payload, now_ms())
            .context("publish a frame")?;
    }
    ensure!(client.session_mut().in_flight() == 0, "every publish acked");
    published
        .send(())
        .map_err(|()| anyhow::anyhow!("the test stopped listening"))?;

    let (topic, payload) = loop {
        if let Some(message) = client
            .poll_incoming(now_ms())
            .context("wait for a command")?
        {
            break (message.topic.to_owned(), message.payload.to_vec());
        }
    };
    let command = codec::decode(&payload).context("decode the command")?;
    let reply = node
        .handle(now_ms(), &command)
        .context("the command is for this node")?;
    let ack = codec::encode_to_vec(&reply.ack)?;
    client
        .publish_qos1(&up, &ack, now_ms())
        .context("publish the ack")?;
    client.disconnect().context("disconnect")?;
    ensure!(client.dropped_messages() == 0);
    Ok(NodeOutcome {
        topic,
        payload,
        ack,
    })
}

#[tokio::test]
async fn the_firmware_mqtt_client_delivers_frames_in_order_and_receives_commands() -> Result<()> {
    let broker = EmbeddedBroker::start(BrokerConfig {
        bind: "127.0.0.1:0".parse()?,
        ..Default::default()
    })
    .await?;
    let mut observer = Observer::connect(&broker).await?;

    // The frames the node will send: its Hello, then samples built by the real firmware core.
    let mut node = golden_node();
    let mut payloads = vec![codec::encode_to_vec(&node.hello())?];
    assert_eq!(payloads[0], golden::HELLO);
    for i in 0..SAMPLES {
        let x = i as f32;
        let frame = node
            .sample(
                u64::from(i + 1) * 1000,
                &[(0, 5000.0 + x), (1, 2.0 + x / 100.0), (2, 24.0), (3, 2.0)],
            )
            .map_err(|e| anyhow::anyhow!("sample: {e:?}"))?;
        payloads.push(codec::encode_to_vec(&frame)?);
    }
    let node_id: NodeId = node.node();

    let (published_tx, published) = oneshot::channel();
    let (done_tx, done) = oneshot::channel();
    let addr = broker.local_addr();
    let to_send = payloads.clone();
    // The thread gets a fresh core, numbered from seq 1 like the one that built the payloads,
    // so the Ack it builds is the golden one.
    // Detached on purpose: its socket timeouts end it, and a hung thread must not hang the test.
    thread::spawn(move || {
        let _ = done_tx.send(run_node(addr, golden_node(), &to_send, published_tx));
    });

    let node_failed = "the node thread ended early; its error follows";
    if timeout(DEADLINE, published)
        .await
        .context("timed out waiting for the node's publishes")?
        .is_err()
    {
        let outcome = done.await.context(node_failed)?;
        return outcome.map(|_| ()).context(node_failed);
    }

    let down = node_topic::format(node_id, Direction::Down);
    observer
        .client
        .publish(down.as_str(), QoS::AtLeastOnce, false, golden::COMMAND)
        .await?;
    let outcome = timeout(DEADLINE, done)
        .await
        .context("timed out waiting for the node to receive the command")?
        .context("the node thread panicked")??;
    assert_eq!(outcome.topic, down.as_str());
    assert_eq!(codec::decode(&outcome.payload)?, golden::command());
    assert_eq!(
        outcome.ack,
        golden::ACK,
        "the node answered with the golden Ack"
    );

    let up = node_topic::format(node_id, Direction::Up);
    let seen = observer.drain_until_marker().await?;
    ensure!(
        seen.iter().all(|(topic, _)| topic == up.as_str()),
        "only the node's uplink is expected: {:?}",
        seen.iter().map(|(t, _)| t).collect::<Vec<_>>()
    );
    let seen: Vec<Vec<u8>> = seen.into_iter().map(|(_, payload)| payload).collect();
    payloads.push(golden::ACK.to_vec());
    assert_eq!(
        seen.len(),
        1 + SAMPLES as usize + 1,
        "Hello, {SAMPLES} samples and the Ack, exactly once each"
    );
    assert_eq!(seen, payloads, "byte for byte and in order");

    broker.shutdown().await?;
    Ok(())
}

/// An independent implementation reads our packets as we meant them, and we read its.
#[test]
fn packets_agree_with_rumqttc_byte_for_byte() -> Result<()> {
    let mut buf = [0u8; 512];
    let theirs = |write: &dyn Fn(&mut BytesMut) -> Result<usize, rumqttc::mqttbytes::Error>| -> Result<Vec<u8>> {
        let mut out = BytesMut::new();
        write(&mut out).map_err(|e| anyhow::anyhow!("rumqttc encode: {e:?}"))?;
        Ok(out.to_vec())
    };

    let mut connect = v4::Connect::new("node-1");
    connect.keep_alive = 30;
    connect.clean_session = false;
    connect.last_will = Some(v4::LastWill::new(
        "w/t",
        b"bye".to_vec(),
        QoS::AtLeastOnce,
        true,
    ));
    connect.set_login("user", "pass");
    let ours = mqtt_packet::encode_connect(
        &Connect {
            client_id: "node-1",
            clean_session: false,
            keep_alive_s: 30,
            will: Some(Will {
                topic: "w/t",
                payload: b"bye",
                qos: NodeQoS::AtLeastOnce,
                retain: true,
            }),
            username: Some("user"),
            password: Some(b"pass"),
        },
        &mut buf,
    )?;
    assert_eq!(ours, theirs(&|b| connect.write(b))?, "CONNECT");

    // 300 bytes of payload: a two-byte remaining length.
    let payload = vec![0xA5u8; 300];
    let mut publish = v4::Publish::new("demolab/v1/node/x/up", QoS::AtLeastOnce, payload.clone());
    publish.pkid = 77;
    publish.dup = true;
    let ours = mqtt_packet::encode_publish(
        &Publish {
            topic: "demolab/v1/node/x/up",
            qos: NodeQoS::AtLeastOnce,
            packet_id: Some(77),
            dup: true,
            retain: false,
            payload: &payload,
        },
        &mut buf,
    )?;
    assert_eq!(ours, theirs(&|b| publish.write(b))?, "PUBLISH");

    let mut subscribe = v4::Subscribe::new("demolab/v1/node/+/down", QoS::AtLeastOnce);
    subscribe.pkid = 5;
    let ours =
        mqtt_packet::encode_subscribe(5, "demolab/v1/node/+/down", NodeQoS::AtLeastOnce, &mut buf)?;
    assert_eq!(ours, theirs(&|b| subscribe.write(b))?, "SUBSCRIBE");
    assert_eq!(
        mqtt_packet::encode_puback(77, &mut buf)?,
        theirs(&|b| v4::PubAck::new(77).write(b))?
    );
    assert_eq!(
        mqtt_packet::encode_pingreq(&mut buf)?,
        theirs(&|b| v4::PingReq.write(b))?
    );
    assert_eq!(
        mqtt_packet::encode_disconnect(&mut buf)?,
        theirs(&|b| v4::Disconnect.write(b))?
    );

    // And the server-to-client direction: what rumqttc writes, we decode.
    let connack =
        theirs(&|b| v4::ConnAck::new(v4::ConnectReturnCode::NotAuthorized, false).write(b))?;
    assert_eq!(
        mqtt_packet::decode(&connack)?.0,
        Packet::ConnAck {
            session_present: false,
            result: Err(mqtt_packet::ConnectRefused::NotAuthorized)
        }
    );
    let suback = v4::SubAck::new(5, vec![v4::SubscribeReasonCode::Success(QoS::AtLeastOnce)]);
    let suback = theirs(&|b| suback.write(b))?;
    assert_eq!(
        mqtt_packet::decode(&suback)?.0,
        Packet::SubAck {
            packet_id: 5,
            code: SubAckCode::Granted(NodeQoS::AtLeastOnce)
        }
    );
    let publish = theirs(&|b| publish.write(b))?;
    assert_eq!(
        mqtt_packet::decode(&publish)?.0,
        Packet::Publish(Publish {
            topic: "demolab/v1/node/x/up",
            qos: NodeQoS::AtLeastOnce,
            packet_id: Some(77),
            dup: true,
            retain: false,
            payload: &payload,
        })
    );
    let pingresp = theirs(&|b| v4::PingResp.write(b))?;
    assert_eq!(mqtt_packet::decode(&pingresp)?.0, Packet::PingResp);
    Ok(())
}
