//! The client side of an MQTT 3.1.1 session, sans-IO: it says which bytes to send and digests
//! decoded packets, and the caller moves bytes and supplies the time.

use core::fmt;

use heapless::Vec;

use super::packet::{
    self, Connect, ConnectRefused, EncodeError, Packet, PacketType, Publish, QoS, SubAckCode,
};

/// How long CONNACK and PINGRESP may take before the link counts as dead, unless set with
/// [`MqttSession::with_response_timeout`]. The spec only says "a reasonable amount of time"
/// (3.1.2.10); ten seconds survives a slow cellular link.
pub const DEFAULT_RESPONSE_TIMEOUT_MS: u64 = 10_000;

/// Where the session stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// No connection; [`MqttSession::connect`] starts one.
    Disconnected,
    /// CONNECT sent, CONNACK awaited.
    Connecting,
    /// CONNACK accepted.
    Connected,
}

/// An application message received on a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Message<'a> {
    /// The topic it was published to.
    pub topic: &'a str,
    /// Its payload.
    pub payload: &'a [u8],
}

/// What a received packet meant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event<'p> {
    /// The server accepted the connection.
    Connected {
        /// The server resumed the session stored under this client id.
        session_present: bool,
    },
    /// A message arrived. For QoS 1 send `puback` once the message is safely taken over:
    /// that PUBACK is the promise the server may forget it (spec 4.3.2).
    Message {
        /// The message, borrowing the packet.
        message: Message<'p>,
        /// The PUBACK to send for a QoS 1 message.
        puback: Option<[u8; 4]>,
    },
    /// The server took over the QoS 1 message with this packet id.
    Acked(u16),
    /// The server answered the pending SUBSCRIBE.
    Subscribed {
        /// The SUBSCRIBE's packet id.
        packet_id: u16,
        /// Granted QoS, or failure.
        code: SubAckCode,
    },
    /// The server answered a PINGREQ.
    Pong,
}

/// Why the session refused an operation or a packet. [`is_fatal`](Self::is_fatal) errors end
/// the connection: close the transport and [`MqttSession::connect`] again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionError {
    /// The operation needs [`MqttSession::connect`] first.
    NotConnected,
    /// Every in-flight slot is taken, or a SUBSCRIBE is already pending.
    Busy,
    /// The packet could not be encoded (bad topic, larger than the in-flight slot).
    Encode(EncodeError),
    /// The server refused the connection.
    Refused(ConnectRefused),
    /// A packet the server may not send now: anything before CONNACK [MQTT-3.2.0-1], a second
    /// CONNACK, or a QoS 2 PUBLISH this client never asked for.
    UnexpectedPacket(PacketType),
    /// A PUBACK or SUBACK for a packet id that is not outstanding.
    UnknownPacketId(u16),
    /// No CONNACK within the response timeout.
    ConnAckTimeout,
    /// No PINGRESP within the response timeout.
    PingTimeout,
}

impl SessionError {
    /// Whether the connection is over; the session is then [`State::Disconnected`].
    pub fn is_fatal(&self) -> bool {
        !matches!(self, Self::NotConnected | Self::Busy | Self::Encode(_))
    }
}

impl fmt::Display for SessionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotConnected => f.write_str("not connected"),
            Self::Busy => f.write_str("no free in-flight slot"),
            Self::Encode(e) => write!(f, "cannot encode packet: {e}"),
            Self::Refused(reason) => write!(f, "connection refused: {reason}"),
            Self::UnexpectedPacket(t) => write!(f, "unexpected {t:?} packet"),
            Self::UnknownPacketId(id) => write!(f, "acknowledgement for unknown packet id {id}"),
            Self::ConnAckTimeout => f.write_str("no CONNACK in time"),
            Self::PingTimeout => f.write_str("no PINGRESP in time"),
        }
    }
}

impl core::error::Error for SessionError {}

impl From<EncodeError> for SessionError {
    fn from(error: EncodeError) -> Self {
        Self::Encode(error)
    }
}

/// An unacknowledged QoS 1 PUBLISH, kept encoded so a resend is a copy with DUP set.
#[derive(Debug, Clone)]
struct InFlight<const MAX_PACKET: usize> {
    packet_id: u16,
    packet: Vec<u8, MAX_PACKET>,
}

/// An MQTT 3.1.1 client session: packet ids, in-flight QoS 1 messages, keep-alive.
///
/// Up to `INFLIGHT` QoS 1 messages wait for their PUBACK, each stored encoded in `MAX_PACKET`
/// bytes (so `INFLIGHT × MAX_PACKET` bytes of RAM), which is what lets them be resent after a
/// reconnect without the caller keeping copies.
#[derive(Debug, Clone)]
pub struct MqttSession<'a, const INFLIGHT: usize, const MAX_PACKET: usize> {
    options: Connect<'a>,
    response_timeout_ms: u64,
    state: State,
    next_id: u16,
    inflight: Vec<InFlight<MAX_PACKET>, INFLIGHT>,
    pending_subscribe: Option<u16>,
    connect_sent_ms: u64,
    last_sent_ms: u64,
    ping_sent_ms: Option<u64>,
}

impl<'a, const INFLIGHT: usize, const MAX_PACKET: usize> MqttSession<'a, INFLIGHT, MAX_PACKET> {
    /// A disconnected session that will connect with `options`.
    pub fn new(options: Connect<'a>) -> Self {
        // Ids are allocated by skipping those in use, which needs a free one to exist.
        const {
            assert!(
                INFLIGHT > 0 && INFLIGHT < 0xFFFF,
                "INFLIGHT must be 1..65534"
            )
        };
        Self {
            options,
            response_timeout_ms: DEFAULT_RESPONSE_TIMEOUT_MS,
            state: State::Disconnected,
            next_id: 1,
            inflight: Vec::new(),
            pending_subscribe: None,
            connect_sent_ms: 0,
            last_sent_ms: 0,
            ping_sent_ms: None,
        }
    }

    /// Sets how long CONNACK and PINGRESP may take.
    pub fn with_response_timeout(mut self, timeout_ms: u64) -> Self {
        self.response_timeout_ms = timeout_ms;
        self
    }

    /// Where the session stands.
    pub fn state(&self) -> State {
        self.state
    }

    /// QoS 1 messages still waiting for their PUBACK.
    pub fn in_flight(&self) -> usize {
        self.inflight.len()
    }

    /// Whether the QoS 1 message `packet_id` still waits for its PUBACK.
    pub fn is_in_flight(&self, packet_id: u16) -> bool {
        self.inflight.iter().any(|m| m.packet_id == packet_id)
    }

    /// Starts a connection: the CONNECT to send on a freshly opened transport. In-flight
    /// messages are kept for [`resend_unacked`](Self::resend_unacked).
    pub fn connect<'b>(
        &mut self,
        now_ms: u64,
        buf: &'b mut [u8],
    ) -> Result<&'b [u8], SessionError> {
        let bytes = packet::encode_connect(&self.options, buf)?;
        self.state = State::Connecting;
        // Whatever was pending died with the previous connection.
        self.pending_subscribe = None;
        self.ping_sent_ms = None;
        self.connect_sent_ms = now_ms;
        self.last_sent_ms = now_ms;
        Ok(bytes)
    }

    /// Digests a packet from the server.
    pub fn on_packet<'p>(&mut self, packet: Packet<'p>) -> Result<Event<'p>, SessionError> {
        let result = self.handle(packet);
        if result.as_ref().is_err_and(SessionError::is_fatal) {
            self.connection_lost();
        }
        result
    }

    fn handle<'p>(&mut self, packet: Packet<'p>) -> Result<Event<'p>, SessionError> {
        match (self.state, packet) {
            (State::Disconnected, _) => Err(SessionError::NotConnected),
            (
                State::Connecting,
                Packet::ConnAck {
                    session_present,
                    result,
                },
            ) => {
                result.map_err(SessionError::Refused)?;
                self.state = State::Connected;
                Ok(Event::Connected { session_present })
            }
            (State::Connecting, other) | (State::Connected, other @ Packet::ConnAck { .. }) => {
                Err(SessionError::UnexpectedPacket(packet_type(&other)))
            }
            (State::Connected, Packet::Publish(publish)) => {
                let puback = match (publish.qos, publish.packet_id) {
                    (QoS::AtMostOnce, _) => None,
                    (QoS::AtLeastOnce, Some(id)) => Some(packet::puback(id)),
                    // QoS 2 needs PUBREC/PUBREL/PUBCOMP; the subscription asked for at most 1,
                    // so the server may not send it [MQTT-3.8.4-6].
                    _ => return Err(SessionError::UnexpectedPacket(PacketType::Publish)),
                };
                Ok(Event::Message {
                    message: Message {
                        topic: publish.topic,
                        payload: publish.payload,
                    },
                    puback,
                })
            }
            (State::Connected, Packet::PubAck { packet_id }) => {
                let index = self
                    .inflight
                    .iter()
                    .position(|m| m.packet_id == packet_id)
                    .ok_or(SessionError::UnknownPacketId(packet_id))?;
                // `remove`, not `swap_remove`: resends must keep the original order.
                self.inflight.remove(index);
                Ok(Event::Acked(packet_id))
            }
            (State::Connected, Packet::SubAck { packet_id, code }) => {
                if self.pending_subscribe != Some(packet_id) {
                    return Err(SessionError::UnknownPacketId(packet_id));
                }
                self.pending_subscribe = None;
                Ok(Event::Subscribed { packet_id, code })
            }
            (State::Connected, Packet::PingResp) => {
                self.ping_sent_ms = None;
                Ok(Event::Pong)
            }
        }
    }

    /// Stores a QoS 1 message in flight and returns its packet id and the PUBLISH to send.
    /// Allowed right after [`connect`](Self::connect), before CONNACK (spec 3.1.4).
    pub fn publish_qos1(
        &mut self,
        topic: &str,
        payload: &[u8],
        now_ms: u64,
    ) -> Result<(u16, &[u8]), SessionError> {
        if self.state == State::Disconnected {
            return Err(SessionError::NotConnected);
        }
        if self.inflight.is_full() {
            return Err(SessionError::Busy);
        }
        let packet_id = self.allocate_id();
        let publish = Publish {
            topic,
            qos: QoS::AtLeastOnce,
            packet_id: Some(packet_id),
            dup: false,
            retain: false,
            payload,
        };
        // Encoded in place: a MAX_PACKET temporary on a small stack is what this avoids.
        let slot = self
            .inflight
            .push_mut(InFlight {
                packet_id,
                packet: Vec::new(),
            })
            .map_err(|_| SessionError::Busy)?;
        // Cannot fail: the capacity is MAX_PACKET.
        let _ = slot.packet.resize(MAX_PACKET, 0);
        match packet::encode_publish(&publish, &mut slot.packet) {
            Ok(bytes) => {
                let len = bytes.len();
                slot.packet.truncate(len);
            }
            Err(error) => {
                self.inflight.pop();
                return Err(error.into());
            }
        }
        self.last_sent_ms = now_ms;
        let stored = self.inflight.last().map_or(&[][..], |m| &m.packet[..]);
        Ok((packet_id, stored))
    }

    /// A SUBSCRIBE for one filter at QoS 1; returns its packet id and the bytes to send.
    pub fn subscribe<'b>(
        &mut self,
        filter: &str,
        now_ms: u64,
        buf: &'b mut [u8],
    ) -> Result<(u16, &'b [u8]), SessionError> {
        if self.state != State::Connected {
            return Err(SessionError::NotConnected);
        }
        if self.pending_subscribe.is_some() {
            return Err(SessionError::Busy);
        }
        let packet_id = self.allocate_id();
        let bytes = packet::encode_subscribe(packet_id, filter, QoS::AtLeastOnce, buf)?;
        self.pending_subscribe = Some(packet_id);
        self.last_sent_ms = now_ms;
        Ok((packet_id, bytes))
    }

    /// Every unacknowledged QoS 1 PUBLISH, oldest first, with DUP set: send them all after
    /// [`connect`](Self::connect). The spec requires it when resuming a session
    /// [MQTT-4.4.0-1]; after a clean session it still turns a lost PUBACK into a duplicate
    /// rather than a lost message.
    pub fn resend_unacked(&mut self, now_ms: u64) -> impl Iterator<Item = &[u8]> {
        for message in &mut self.inflight {
            if let Some(header) = message.packet.first_mut() {
                *header |= packet::DUP_FLAG;
            }
        }
        if !self.inflight.is_empty() {
            self.last_sent_ms = now_ms;
        }
        self.inflight.iter().map(|m| &m.packet[..])
    }

    /// Keep-alive and response deadlines: returns a PINGREQ to send when one is due, or a
    /// timeout error when the server went quiet. Call it at least a few times per keep-alive.
    pub fn poll(&mut self, now_ms: u64) -> Result<Option<&'static [u8]>, SessionError> {
        let since = |t: u64| now_ms.saturating_sub(t);
        let result = match self.state {
            State::Disconnected => Ok(None),
            State::Connecting if since(self.connect_sent_ms) >= self.response_timeout_ms => {
                Err(SessionError::ConnAckTimeout)
            }
            State::Connecting => Ok(None),
            State::Connected => match self.ping_sent_ms {
                Some(sent) if since(sent) >= self.response_timeout_ms => {
                    Err(SessionError::PingTimeout)
                }
                Some(_) => Ok(None),
                None => {
                    let keep_alive_ms = u64::from(self.options.keep_alive_s) * 1000;
                    // Pinging at three quarters leaves room for a late poll: the client must
                    // not stay silent longer than the keep-alive [MQTT-3.1.2-23].
                    if keep_alive_ms > 0 && since(self.last_sent_ms) >= keep_alive_ms * 3 / 4 {
                        self.ping_sent_ms = Some(now_ms);
                        self.last_sent_ms = now_ms;
                        Ok(Some(&packet::PINGREQ[..]))
                    } else {
                        Ok(None)
                    }
                }
            },
        };
        if result.is_err() {
            self.connection_lost();
        }
        result
    }

    /// Ends the connection cleanly: the DISCONNECT to send before closing the transport. The
    /// server then discards the will (spec 3.14.4).
    pub fn disconnect(&mut self) -> &'static [u8] {
        self.connection_lost();
        &packet::DISCONNECT
    }

    /// Records that the transport failed or was closed.
    pub fn connection_lost(&mut self) {
        self.state = State::Disconnected;
        self.pending_subscribe = None;
        self.ping_sent_ms = None;
    }

    /// The next packet id not in use by an in-flight message or pending SUBSCRIBE
    /// [MQTT-2.3.1-2]; never 0.
    fn allocate_id(&mut self) -> u16 {
        loop {
            let id = self.next_id;
            self.next_id = id.checked_add(1).unwrap_or(1);
            if self.pending_subscribe != Some(id) && !self.is_in_flight(id) {
                return id;
            }
        }
    }
}

fn packet_type(packet: &Packet<'_>) -> PacketType {
    match packet {
        Packet::ConnAck { .. } => PacketType::ConnAck,
        Packet::Publish(_) => PacketType::Publish,
        Packet::PubAck { .. } => PacketType::PubAck,
        Packet::SubAck { .. } => PacketType::SubAck,
        Packet::PingResp => PacketType::PingResp,
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use std::vec::Vec;

    use super::*;
    use crate::mqtt::packet::{ConnectRefused, decode};

    type Session = MqttSession<'static, 2, 64>;

    fn packet(bytes: &[u8]) -> Packet<'_> {
        decode(bytes).expect("valid packet").0
    }

    const CONNACK: [u8; 4] = [0x20, 0x02, 0x00, 0x00];

    fn connected() -> Session {
        let mut session = Session::new(Connect::new("node", 60));
        session.connect(0, &mut [0u8; 64]).expect("fits");
        assert_eq!(
            session.on_packet(packet(&CONNACK)),
            Ok(Event::Connected {
                session_present: false
            })
        );
        session
    }

    #[test]
    fn connect_then_connack() {
        let mut session = Session::new(Connect::new("node", 60));
        assert_eq!(session.state(), State::Disconnected);
        let mut buf = [0u8; 64];
        let bytes = session.connect(0, &mut buf).expect("fits");
        assert_eq!(&bytes[..2], [0x10, 0x10]);
        assert_eq!(session.state(), State::Connecting);
        assert_eq!(
            session.on_packet(packet(&[0x20, 0x02, 0x01, 0x00])),
            Ok(Event::Connected {
                session_present: true
            })
        );
        assert_eq!(session.state(), State::Connected);
    }

    #[test]
    fn a_refusal_is_typed_and_disconnects() {
        let mut session = Session::new(Connect::new("node", 60));
        session.connect(0, &mut [0u8; 64]).expect("fits");
        assert_eq!(
            session.on_packet(packet(&[0x20, 0x02, 0x00, 0x05])),
            Err(SessionError::Refused(ConnectRefused::NotAuthorized))
        );
        assert_eq!(session.state(), State::Disconnected);
    }

    #[test]
    fn packets_out_of_order_are_protocol_errors() {
        let mut session = Session::new(Connect::new("node", 60));
        assert_eq!(
            session.on_packet(packet(&CONNACK)),
            Err(SessionError::NotConnected)
        );
        session.connect(0, &mut [0u8; 64]).expect("fits");
        assert_eq!(
            session.on_packet(packet(&[0xD0, 0x00])),
            Err(SessionError::UnexpectedPacket(PacketType::PingResp))
        );
        assert_eq!(session.state(), State::Disconnected);

        let mut session = connected();
        assert_eq!(
            session.on_packet(packet(&CONNACK)),
            Err(SessionError::UnexpectedPacket(PacketType::ConnAck))
        );
        let mut session = connected();
        assert_eq!(
            session.on_packet(packet(&[0x40, 0x02, 0x00, 0x07])),
            Err(SessionError::UnknownPacketId(7))
        );
        assert_eq!(session.state(), State::Disconnected);
    }

    #[test]
    fn qos1_publishes_fill_a_bounded_window() {
        let mut session = connected();
        let (first, bytes) = session.publish_qos1("a/b", b"hi", 1).expect("slot");
        assert_eq!(
            bytes,
            [
                0x32, 0x09, 0x00, 0x03, b'a', b'/', b'b', 0x00, 0x01, b'h', b'i'
            ]
        );
        let (second, _) = session.publish_qos1("a/b", b"ho", 2).expect("slot");
        assert_eq!((first, second), (1, 2));
        assert_eq!(
            session.publish_qos1("a/b", b"no", 3),
            Err(SessionError::Busy)
        );
        assert!(!SessionError::Busy.is_fatal());

        assert_eq!(
            session.on_packet(packet(&[0x40, 0x02, 0x00, 0x01])),
            Ok(Event::Acked(1))
        );
        assert!(!session.is_in_flight(1) && session.is_in_flight(2));
        let (third, _) = session.publish_qos1("a/b", b"ok", 4).expect("slot freed");
        assert_eq!(third, 3);
    }

    #[test]
    fn a_publish_that_does_not_fit_a_slot_is_refused_without_taking_it() {
        let mut session = connected();
        assert_eq!(
            session.publish_qos1("a/b", &[0u8; 60], 1),
            Err(SessionError::Encode(EncodeError::BufferTooSmall {
                needed: 69,
                capacity: 64
            }))
        );
        assert_eq!(
            session.publish_qos1("a/+", b"", 1),
            Err(SessionError::Encode(EncodeError::InvalidTopicName))
        );
        assert_eq!(session.in_flight(), 0);
        assert_eq!(session.state(), State::Connected, "not fatal");
    }

    #[test]
    fn unacked_publishes_are_resent_in_order_with_dup_after_a_reconnect() {
        let mut session = connected();
        let (a, _) = session.publish_qos1("t", b"a", 1).expect("slot");
        let (b, _) = session.publish_qos1("t", b"b", 2).expect("slot");
        session.connection_lost();
        assert_eq!(
            session.publish_qos1("t", b"c", 3),
            Err(SessionError::NotConnected)
        );

        session.connect(10, &mut [0u8; 64]).expect("fits");
        let resent: Vec<Vec<u8>> = session.resend_unacked(10).map(<[u8]>::to_vec).collect();
        assert_eq!(
            resent,
            [
                [0x3A, 0x06, 0x00, 0x01, b't', 0x00, 0x01, b'a'],
                [0x3A, 0x06, 0x00, 0x01, b't', 0x00, 0x02, b'b'],
            ]
        );
        session.on_packet(packet(&CONNACK)).expect("accepted");
        // Acks may come in any order; the rest stays queued in order.
        session
            .on_packet(packet(&crate::mqtt::packet::puback(b)))
            .expect("known");
        assert!(session.is_in_flight(a) && !session.is_in_flight(b));
    }

    #[test]
    fn packet_ids_skip_zero_and_ids_in_use() {
        let mut session = connected();
        session.next_id = u16::MAX;
        let (id, _) = session.publish_qos1("t", b"", 0).expect("slot");
        assert_eq!(id, u16::MAX);
        session.next_id = u16::MAX;
        let (id, _) = session.publish_qos1("t", b"", 0).expect("slot");
        assert_eq!(id, 1, "0 is never used, 65535 is taken");
    }

    #[test]
    fn subscribe_and_suback() {
        let mut session = connected();
        let mut buf = [0u8; 64];
        let (id, bytes) = session.subscribe("a/#", 0, &mut buf).expect("fits");
        assert_eq!(
            bytes,
            [0x82, 0x08, 0x00, 0x01, 0x00, 0x03, b'a', b'/', b'#', 0x01]
        );
        assert_eq!(
            session.subscribe("b", 0, &mut [0u8; 64]),
            Err(SessionError::Busy)
        );
        assert_eq!(
            session.on_packet(packet(&[0x90, 0x03, 0x00, 0x01, 0x80])),
            Ok(Event::Subscribed {
                packet_id: id,
                code: SubAckCode::Failure
            })
        );
        assert_eq!(
            session.on_packet(packet(&[0x90, 0x03, 0x00, 0x01, 0x01])),
            Err(SessionError::UnknownPacketId(1)),
            "only one SUBACK per SUBSCRIBE"
        );
    }

    #[test]
    fn incoming_messages_come_with_their_puback() {
        let mut session = connected();
        let qos1 = [0x32, 0x06, 0x00, 0x01, b't', 0x00, 0x05, b'x'];
        assert_eq!(
            session.on_packet(packet(&qos1)),
            Ok(Event::Message {
                message: Message {
                    topic: "t",
                    payload: b"x"
                },
                puback: Some([0x40, 0x02, 0x00, 0x05]),
            })
        );
        assert_eq!(
            session.on_packet(packet(&[0x30, 0x04, 0x00, 0x01, b't', b'y'])),
            Ok(Event::Message {
                message: Message {
                    topic: "t",
                    payload: b"y"
                },
                puback: None,
            })
        );
        assert_eq!(
            session.on_packet(packet(&[0x34, 0x05, 0x00, 0x01, b't', 0x00, 0x05])),
            Err(SessionError::UnexpectedPacket(PacketType::Publish))
        );
    }

    #[test]
    fn keep_alive_pings_when_quiet_and_times_out_without_pong() {
        // Keep-alive 60 s: ping after 45 s of silence, which any sent packet resets.
        let mut session = connected();
        assert_eq!(session.poll(44_999), Ok(None));
        session.publish_qos1("t", b"", 40_000).expect("slot");
        assert_eq!(session.poll(84_999), Ok(None));
        assert_eq!(session.poll(85_000), Ok(Some(&[0xC0, 0x00][..])));
        assert_eq!(
            session.poll(94_999),
            Ok(None),
            "one ping outstanding at a time"
        );
        assert_eq!(session.on_packet(packet(&[0xD0, 0x00])), Ok(Event::Pong));
        assert_eq!(session.poll(129_999), Ok(None));
        assert_eq!(session.poll(130_000), Ok(Some(&[0xC0, 0x00][..])));
        assert_eq!(session.poll(140_000), Err(SessionError::PingTimeout));
        assert_eq!(session.state(), State::Disconnected);
    }

    #[test]
    fn connack_must_come_in_time_and_keep_alive_zero_never_pings() {
        let mut session = Session::new(Connect::new("node", 0)).with_response_timeout(500);
        session.connect(1_000, &mut [0u8; 64]).expect("fits");
        assert_eq!(session.poll(1_499), Ok(None));
        assert_eq!(session.poll(1_500), Err(SessionError::ConnAckTimeout));

        session.connect(2_000, &mut [0u8; 64]).expect("fits");
        session.on_packet(packet(&CONNACK)).expect("accepted");
        assert_eq!(session.poll(u64::MAX), Ok(None));
    }

    #[test]
    fn disconnect_is_two_bytes_and_ends_the_session() {
        let mut session = connected();
        assert_eq!(session.disconnect(), [0xE0, 0x00]);
        assert_eq!(session.state(), State::Disconnected);
    }
}
