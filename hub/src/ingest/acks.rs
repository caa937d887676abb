//! Acknowledgements of stored messages, written by ingest itself: a commit's PUBACKs go out in
//! one write, on the connection their messages arrived on.
//!
//! rumqttc 0.25 flushes its socket after every request (its issue 810), so acknowledging
//! through `AsyncClient::ack` cost a request on its channel, a turn of its event loop, an event
//! back to ingest and a `writev` per message: 3.6 % of the hub's CPU at 10,000 msg/s for the
//! `writev` alone, and a wake-up of the broker for every acknowledgement.

use std::time::Duration;

use rumqttc::{EventLoop, Packet, PubAck, PubRec, StateError};

use crate::host::Delivery;

/// A stored message's acknowledgement, and the connection its message arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    /// Which connection of the session: counted up each time the broker accepts one.
    pub connection: u64,
    /// What the broker needs back.
    pub delivery: Delivery,
}

/// Which connection of the session is open, if one is.
#[derive(Debug, Default)]
pub struct Connection {
    number: u64,
    open: bool,
}

impl Connection {
    /// The broker accepted a (new) connection.
    pub fn opened(&mut self) {
        self.number += 1;
        self.open = true;
    }

    /// The connection is gone; rumqttc opens the next one.
    pub fn lost(&mut self) {
        self.open = false;
    }

    /// Whether a connection is open (the event loop is past its CONNACK).
    pub fn is_open(&self) -> bool {
        self.open
    }

    /// The acknowledgement of `delivery`, which arrived on the current connection.
    pub fn ack(&self, delivery: Delivery) -> Ack {
        Ack {
            connection: self.number,
            delivery,
        }
    }
}

/// Why acknowledgements did not reach the socket.
#[derive(Debug, thiserror::Error)]
pub enum AckError {
    /// The socket refused them.
    #[error("cannot write acknowledgements: {0}")]
    Network(#[from] StateError),
    /// The broker did not take them within the connection timeout.
    #[error("acknowledgements not taken by the broker within {0:?}")]
    Timeout(Duration),
}

/// Writes the acknowledgements of `batch` that belong to the open connection, in order, with
/// one flush; returns how many. The others are left out: the persistent session delivers their
/// messages again on the new connection, where they are acknowledged once handled (the twins
/// drop the duplicates). Sending them on the new connection could acknowledge a message twice,
/// and the second time the packet id may already name a newer message that is not stored yet.
///
/// Only called between two `poll`s of `events`, with the connection open: the bytes go into the
/// event loop's own write buffer, so they cannot interleave with a packet it writes.
pub async fn write(
    events: &mut EventLoop,
    connection: &Connection,
    batch: &[Ack],
) -> Result<usize, AckError> {
    if !connection.is_open() {
        return Ok(0);
    }
    let timeout = Duration::from_secs(events.network_options.connection_timeout());
    let Some(network) = events.network.as_mut() else {
        return Ok(0);
    };
    let written = async {
        let mut sent = 0;
        for ack in batch
            .iter()
            .filter(|ack| ack.connection == connection.number)
        {
            let pkid = ack.delivery.pkid;
            let packet = if ack.delivery.exactly_once {
                Packet::PubRec(PubRec::new(pkid))
            } else {
                Packet::PubAck(PubAck::new(pkid))
            };
            network.write(packet).await?;
            sent += 1;
        }
        network.flush().await?;
        Ok::<_, AckError>(sent)
    };
    tokio::time::timeout(timeout, written)
        .await
        .map_err(|_| AckError::Timeout(timeout))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use rumqttc::{ConnAck, ConnectReturnCode, Event, MqttOptions, Publish, QoS};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    /// Reads packets from a raw broker socket until `count` arrived.
    async fn read_packets(
        socket: &mut TcpStream,
        buffer: &mut BytesMut,
        count: usize,
    ) -> Vec<Packet> {
        let mut packets = Vec::new();
        while packets.len() < count {
            match Packet::read(buffer, 1 << 16) {
                Ok(packet) => packets.push(packet),
                Err(rumqttc::Error::InsufficientBytes(_)) => {
                    let read = socket.read_buf(buffer).await.expect("read from the hub");
                    assert!(read > 0, "the client hung up after {packets:?}");
                }
                Err(err) => panic!("not MQTT: {err}"),
            }
        }
        packets
    }

    fn delivery(pkid: u16, exactly_once: bool) -> Delivery {
        Delivery { pkid, exactly_once }
    }

    #[tokio::test]
    async fn acknowledgements_of_the_open_connection_go_out_in_order_and_the_session_goes_on() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("address").port();
        let mut options = MqttOptions::new("acks", "127.0.0.1", port);
        options.set_manual_acks(true);
        let mut events = EventLoop::new(options, 8);
        let mut connection = Connection::default();
        let stale = connection.ack(delivery(1, false));

        let broker = async {
            let (mut socket, _) = listener.accept().await.expect("accept");
            let mut buffer = BytesMut::new();
            let connect = read_packets(&mut socket, &mut buffer, 1).await;
            assert!(matches!(connect[0], Packet::Connect(..)), "{connect:?}");
            let mut out = BytesMut::new();
            ConnAck::new(ConnectReturnCode::Success, false)
                .write(&mut out)
                .expect("connack");
            socket.write_all(&out).await.expect("write connack");
            (socket, buffer)
        };
        let (connected, (mut socket, mut buffer)) = tokio::join!(events.poll(), broker);
        assert!(matches!(connected, Ok(Event::Incoming(Packet::ConnAck(_)))));
        connection.opened();

        let batch = [
            connection.ack(delivery(7, false)),
            stale,
            connection.ack(delivery(3, true)),
            connection.ack(delivery(9, false)),
        ];
        let sent = write(&mut events, &connection, &batch)
            .await
            .expect("written");
        assert_eq!(sent, 3, "the lost connection's acknowledgement stays out");
        let packets = read_packets(&mut socket, &mut buffer, 3).await;
        assert_eq!(
            packets,
            [
                Packet::PubAck(PubAck::new(7)),
                Packet::PubRec(PubRec::new(3)),
                Packet::PubAck(PubAck::new(9)),
            ]
        );

        // The event loop still reads the session after ingest wrote into it.
        let mut publish = Publish::new("spBv1.0/l/DDATA/g/m", QoS::AtLeastOnce, vec![1, 2]);
        publish.pkid = 10;
        let mut out = BytesMut::new();
        publish.write(&mut out).expect("publish");
        socket.write_all(&out).await.expect("write publish");
        let event = tokio::time::timeout(Duration::from_secs(10), events.poll())
            .await
            .expect("in time")
            .expect("event");
        assert!(
            matches!(&event, Event::Incoming(Packet::Publish(p)) if p.pkid == 10),
            "{event:?}"
        );

        connection.lost();
        assert_eq!(
            write(&mut events, &connection, &batch)
                .await
                .expect("nothing"),
            0,
            "nothing goes out while the connection is down"
        );
    }
}
