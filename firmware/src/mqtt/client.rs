//! A blocking MQTT client over any `embedded_io` byte stream (a TCP socket of the board's
//! network stack, or a `std::net::TcpStream` on a host).
//!
//! Every call blocks in the transport's `read` until the answer it needs arrives, so give the
//! transport a read timeout (reported as `ErrorKind::TimedOut`) if the board must not hang on a
//! dead link; a timeout leaves the connection usable. Any other transport or protocol error
//! ends the connection ([`ClientError::is_fatal`]): open a new transport, hand it over with
//! [`MqttClient::replace_transport`] and [`MqttClient::connect`] again; unacknowledged messages
//! are resent then.

use core::fmt;

use embedded_io::{Error as _, ErrorKind, Read, Write};
use heapless::Vec;

use super::packet::{
    self, Connect, DecodeError, EncodeError, Packet, PacketReader, QoS, SubAckCode,
};
use super::session::{Event, Message, MqttSession, SessionError, State};

/// Why a client call failed.
#[derive(Debug)]
pub enum ClientError<E> {
    /// The transport failed.
    Transport(E),
    /// The peer closed the connection (a read or write of 0 bytes).
    Closed,
    /// The server sent a malformed packet.
    Decode(DecodeError),
    /// The session refused an operation or a packet.
    Session(SessionError),
    /// The server refused the subscription (SUBACK 0x80). The connection stays up.
    SubscribeRefused,
}

impl<E: embedded_io::Error> ClientError<E> {
    /// Whether the connection is over. A transport timeout is not: the bytes read so far stay
    /// buffered and an unacknowledged publish stays in flight, so the call can be retried.
    pub fn is_fatal(&self) -> bool {
        match self {
            Self::Transport(error) => error.kind() != ErrorKind::TimedOut,
            Self::Session(error) => error.is_fatal(),
            Self::SubscribeRefused => false,
            Self::Closed | Self::Decode(_) => true,
        }
    }
}

impl<E: fmt::Debug> fmt::Display for ClientError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Transport(e) => write!(f, "transport error: {e:?}"),
            Self::Closed => f.write_str("connection closed by the peer"),
            Self::Decode(e) => write!(f, "malformed packet: {e}"),
            Self::Session(e) => write!(f, "{e}"),
            Self::SubscribeRefused => f.write_str("subscription refused"),
        }
    }
}

impl<E: fmt::Debug> core::error::Error for ClientError<E> {}

impl<E> From<DecodeError> for ClientError<E> {
    fn from(error: DecodeError) -> Self {
        Self::Decode(error)
    }
}

impl<E> From<SessionError> for ClientError<E> {
    fn from(error: SessionError) -> Self {
        Self::Session(error)
    }
}

impl<E> From<EncodeError> for ClientError<E> {
    fn from(error: EncodeError) -> Self {
        Self::Session(SessionError::Encode(error))
    }
}

/// A blocking MQTT 3.1.1 client: QoS 1 publishes that return once acknowledged, one
/// subscription at a time, and an inbox of received messages.
///
/// `MAX_PACKET` bounds every packet either way (receive buffer, encode buffer, inbox, and each
/// of the `INFLIGHT` stored publishes). Publishes block until acknowledged, so a node needs
/// few in-flight slots: one for the message being sent, one spare for a resend after a
/// reconnect.
#[derive(Debug)]
pub struct MqttClient<'a, T, const MAX_PACKET: usize = 1088, const INFLIGHT: usize = 2> {
    transport: T,
    session: MqttSession<'a, INFLIGHT, MAX_PACKET>,
    reader: PacketReader<MAX_PACKET>,
    scratch: [u8; MAX_PACKET],
    /// Received PUBLISH packets, raw and back to back, until the application takes them.
    inbox: Vec<u8, MAX_PACKET>,
    /// Length of the inbox's first packet, lent out by the last `take_message`.
    lent: usize,
    dropped: u32,
    session_present: bool,
    suback: Option<SubAckCode>,
}

impl<'a, T: Read + Write, const MAX_PACKET: usize, const INFLIGHT: usize>
    MqttClient<'a, T, MAX_PACKET, INFLIGHT>
{
    /// A client that will connect over `transport` with `options`; nothing is sent yet.
    pub fn new(transport: T, options: Connect<'a>) -> Self {
        Self {
            transport,
            session: MqttSession::new(options),
            reader: PacketReader::new(),
            scratch: [0; MAX_PACKET],
            inbox: Vec::new(),
            lent: 0,
            dropped: 0,
            session_present: false,
            suback: None,
        }
    }

    /// The session, to tune (response timeout) or inspect (in-flight count).
    pub fn session_mut(&mut self) -> &mut MqttSession<'a, INFLIGHT, MAX_PACKET> {
        &mut self.session
    }

    /// Swaps in a freshly opened transport after a failure; returns the old one.
    pub fn replace_transport(&mut self, transport: T) -> T {
        self.session.connection_lost();
        core::mem::replace(&mut self.transport, transport)
    }

    /// The transport, e.g. to close it.
    pub fn into_transport(self) -> T {
        self.transport
    }

    /// Messages dropped unacknowledged because the inbox was full. The server still owns them
    /// and redelivers them when the session resumes.
    pub fn dropped_messages(&self) -> u32 {
        self.dropped
    }

    /// Sends CONNECT, waits for CONNACK, then resends unacknowledged publishes. Returns
    /// whether the server resumed a stored session.
    pub fn connect(&mut self, now_ms: u64) -> Result<bool, ClientError<T::Error>> {
        // Bytes of an earlier connection are meaningless now; the inbox's are still owed to the
        // application, so it is kept.
        self.reader.reset();
        let bytes = self.session.connect(now_ms, &mut self.scratch)?;
        send(&mut self.transport, &mut self.session, bytes)?;
        while self.session.state() == State::Connecting {
            self.pump()?;
        }
        let resent = self
            .session
            .resend_unacked(now_ms)
            .try_for_each(|packet| write_all(&mut self.transport, packet));
        if resent.is_err() {
            self.session.connection_lost();
        }
        resent.map(|()| self.session_present)
    }

    /// Subscribes to `filter` at QoS 1 and waits for the SUBACK; returns the granted QoS.
    pub fn subscribe(&mut self, filter: &str, now_ms: u64) -> Result<QoS, ClientError<T::Error>> {
        self.suback = None;
        let (_, bytes) = self.session.subscribe(filter, now_ms, &mut self.scratch)?;
        send(&mut self.transport, &mut self.session, bytes)?;
        loop {
            match self.suback.take() {
                Some(SubAckCode::Granted(qos)) => return Ok(qos),
                Some(SubAckCode::Failure) => return Err(ClientError::SubscribeRefused),
                None => self.pump()?,
            }
        }
    }

    /// Publishes at QoS 1 and waits for the PUBACK; returns the packet id used. Messages that
    /// arrive meanwhile go to the inbox.
    pub fn publish_qos1(
        &mut self,
        topic: &str,
        payload: &[u8],
        now_ms: u64,
    ) -> Result<u16, ClientError<T::Error>> {
        let packet_id = loop {
            match self.session.publish_qos1(topic, payload, now_ms) {
                Ok((packet_id, bytes)) => {
                    if let Err(error) = write_all(&mut self.transport, bytes) {
                        self.session.connection_lost();
                        return Err(error);
                    }
                    break packet_id;
                }
                // Resent messages fill the window; their PUBACKs free it.
                Err(SessionError::Busy) => self.pump()?,
                Err(error) => return Err(error.into()),
            }
        };
        while self.session.is_in_flight(packet_id) {
            self.pump()?;
        }
        Ok(packet_id)
    }

    /// Sends a PINGREQ if one is due, then returns the next received message: from the inbox
    /// if one is waiting, else after one blocking read of the transport (`None` if that read
    /// brought no message or timed out). The message is removed by the next call.
    pub fn poll_incoming(
        &mut self,
        now_ms: u64,
    ) -> Result<Option<Message<'_>>, ClientError<T::Error>> {
        self.keep_alive(now_ms)?;
        if self.inbox.len() <= self.lent {
            match self.pump() {
                Err(ClientError::Transport(error)) if error.kind() == ErrorKind::TimedOut => {}
                other => other?,
            }
        }
        Ok(self.take_message())
    }

    /// Sends a PINGREQ if one is due, without reading: the PINGRESP is handled by a later
    /// call. Fails once a PINGRESP or CONNACK is overdue.
    pub fn keep_alive(&mut self, now_ms: u64) -> Result<(), ClientError<T::Error>> {
        if let Some(ping) = self.session.poll(now_ms)? {
            send(&mut self.transport, &mut self.session, ping)?;
        }
        Ok(())
    }

    /// Sends DISCONNECT: a clean end, so the server drops the will. Close the transport after.
    pub fn disconnect(&mut self) -> Result<(), ClientError<T::Error>> {
        let bytes = self.session.disconnect();
        write_all(&mut self.transport, bytes)?;
        self.transport.flush().map_err(ClientError::Transport)
    }

    /// One blocking read, then every complete packet in the buffer is handled.
    fn pump(&mut self) -> Result<(), ClientError<T::Error>> {
        let result = self.read_and_handle();
        if result.as_ref().is_err_and(ClientError::is_fatal) {
            self.session.connection_lost();
        }
        result
    }

    fn read_and_handle(&mut self) -> Result<(), ClientError<T::Error>> {
        // Frees inbox room before reading, so a message already handled never crowds out a new one.
        self.release_lent();
        let space = self.reader.space();
        if space.is_empty() {
            // Only a packet larger than the buffer fills it; next_raw names the culprit.
            self.reader.next_raw()?;
            return Err(ClientError::Closed);
        }
        let n = self.transport.read(space).map_err(ClientError::Transport)?;
        if n == 0 {
            return Err(ClientError::Closed);
        }
        self.reader.commit(n);
        while let Some(raw) = self.reader.next_raw()? {
            let (packet, _) = packet::decode(raw)?;
            match self.session.on_packet(packet)? {
                Event::Connected { session_present } => self.session_present = session_present,
                Event::Message { puback, .. } => {
                    // Queue first: the PUBACK tells the server the message is now ours.
                    if self.inbox.extend_from_slice(raw).is_ok() {
                        if let Some(ack) = puback {
                            write_all(&mut self.transport, &ack)?;
                        }
                    } else {
                        self.dropped = self.dropped.saturating_add(1);
                    }
                }
                Event::Subscribed { code, .. } => self.suback = Some(code),
                Event::Acked(_) | Event::Pong => {}
            }
        }
        Ok(())
    }

    /// Drops the message the last `take_message` lent out; its borrow has ended.
    fn release_lent(&mut self) {
        let len = self.inbox.len();
        let lent = self.lent.min(len);
        self.inbox.copy_within(lent..len, 0);
        self.inbox.truncate(len - lent);
        self.lent = 0;
    }

    /// The next message already received (during a publish, say), without any I/O; it is
    /// removed by the next call.
    pub fn take_message(&mut self) -> Option<Message<'_>> {
        self.release_lent();
        // Only decoded PUBLISH packets are queued, so anything else means an empty inbox (or a
        // corrupt one, best emptied rather than left to block every later message).
        let Ok((Packet::Publish(_), len)) = packet::decode(&self.inbox) else {
            self.inbox.clear();
            return None;
        };
        self.lent = len;
        match packet::decode(&self.inbox) {
            Ok((Packet::Publish(publish), _)) => Some(Message {
                topic: publish.topic,
                payload: publish.payload,
            }),
            _ => None,
        }
    }
}

/// Writes a packet produced by the session; a failure ends the connection.
fn send<T: Write, const I: usize, const M: usize>(
    transport: &mut T,
    session: &mut MqttSession<'_, I, M>,
    bytes: &[u8],
) -> Result<(), ClientError<T::Error>> {
    write_all(transport, bytes).inspect_err(|_| session.connection_lost())
}

/// `Write::write_all` panics on a zero-length write; a closed peer is an error here instead.
fn write_all<T: Write>(transport: &mut T, mut bytes: &[u8]) -> Result<(), ClientError<T::Error>> {
    while !bytes.is_empty() {
        match transport.write(bytes) {
            Ok(0) => return Err(ClientError::Closed),
            Ok(n) => bytes = bytes.get(n..).unwrap_or_default(),
            Err(error) => return Err(ClientError::Transport(error)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    extern crate std;

    use std::collections::VecDeque;
    use std::vec::Vec;

    use embedded_io::{ErrorKind, ErrorType};

    use super::*;
    use crate::mqtt::packet::{Publish, encode_publish, puback};

    /// Hands out one scripted chunk per read (split if the buffer is smaller) and records
    /// writes; an empty chunk reads as a timeout, an exhausted script as a closed connection.
    #[derive(Debug, Default)]
    struct Script {
        incoming: VecDeque<Vec<u8>>,
        written: Vec<u8>,
    }

    impl Script {
        fn new(chunks: &[&[u8]]) -> Self {
            Self {
                incoming: chunks.iter().map(|c| c.to_vec()).collect(),
                written: Vec::new(),
            }
        }
    }

    impl ErrorType for Script {
        type Error = ErrorKind;
    }

    impl Read for Script {
        fn read(&mut self, buf: &mut [u8]) -> Result<usize, ErrorKind> {
            let Some(mut chunk) = self.incoming.pop_front() else {
                return Ok(0);
            };
            if chunk.is_empty() {
                return Err(ErrorKind::TimedOut);
            }
            let n = chunk.len().min(buf.len());
            buf[..n].copy_from_slice(&chunk[..n]);
            if n < chunk.len() {
                self.incoming.push_front(chunk.split_off(n));
            }
            Ok(n)
        }
    }

    impl Write for Script {
        fn write(&mut self, buf: &[u8]) -> Result<usize, ErrorKind> {
            // Short writes, so `write_all` must loop.
            let n = buf.len().min(3);
            self.written.extend_from_slice(&buf[..n]);
            Ok(n)
        }

        fn flush(&mut self) -> Result<(), ErrorKind> {
            Ok(())
        }
    }

    const CONNACK: [u8; 4] = [0x20, 0x02, 0x00, 0x00];
    const CONNECT: [u8; 18] = [
        0x10, 0x10, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3C, 0x00, 0x04, b'n',
        b'o', b'd', b'e',
    ];

    fn incoming(topic: &str, id: Option<u16>, payload: &[u8]) -> Vec<u8> {
        let publish = Publish {
            topic,
            qos: if id.is_some() {
                QoS::AtLeastOnce
            } else {
                QoS::AtMostOnce
            },
            packet_id: id,
            dup: false,
            retain: false,
            payload,
        };
        let mut buf = [0u8; 256];
        encode_publish(&publish, &mut buf).expect("fits").to_vec()
    }

    type Client = MqttClient<'static, Script, 128, 2>;

    #[test]
    fn connect_publish_and_receive_in_between() {
        let mut ack_then_message = Vec::new();
        ack_then_message.extend(incoming("cmd", Some(9), b"go"));
        ack_then_message.extend(puback(1));
        let script = Script::new(&[&CONNACK[..1], &CONNACK[1..], &ack_then_message]);
        let mut client = Client::new(script, Connect::new("node", 60));

        assert!(
            !client.connect(0).expect("connects"),
            "no session to resume"
        );
        assert_eq!(client.publish_qos1("up", b"frame", 1).expect("acked"), 1);
        let message = client.poll_incoming(2).expect("queued").expect("a message");
        assert_eq!((message.topic, message.payload), ("cmd", &b"go"[..]));

        let written = &client.transport.written;
        assert_eq!(written[..18], CONNECT);
        let publish = [
            0x32, 0x0B, 0x00, 0x02, b'u', b'p', 0x00, 0x01, b'f', b'r', b'a', b'm', b'e',
        ];
        assert_eq!(written[18..31], publish);
        assert_eq!(
            written[31..],
            puback(9),
            "the queued message was acknowledged"
        );
        // The script is exhausted: the next read reports the closed connection.
        assert!(matches!(client.poll_incoming(3), Err(ClientError::Closed)));
        assert_eq!(client.session.state(), State::Disconnected);
    }

    #[test]
    fn a_publish_cut_off_is_resent_with_dup_after_reconnecting() {
        let mut client = Client::new(Script::new(&[&CONNACK]), Connect::new("node", 60));
        client.connect(0).expect("connects");
        assert!(matches!(
            client.publish_qos1("up", b"x", 1),
            Err(ClientError::Closed)
        ));
        assert_eq!(client.session.in_flight(), 1);

        client.replace_transport(Script::new(&[&CONNACK, &puback(1), &puback(2)]));
        client.connect(10).expect("reconnects");
        assert_eq!(client.publish_qos1("up", b"y", 11).expect("acked"), 2);
        assert_eq!(client.session.in_flight(), 0);
        let written = &client.transport.written;
        assert_eq!(written[..18], CONNECT);
        assert_eq!(
            written[18..27],
            [0x3A, 0x07, 0x00, 0x02, b'u', b'p', 0x00, 0x01, b'x']
        );
        assert_eq!(
            written[27..],
            [0x32, 0x07, 0x00, 0x02, b'u', b'p', 0x00, 0x02, b'y']
        );
    }

    #[test]
    fn subscriptions_and_refusals() {
        let script = Script::new(&[
            &CONNACK,
            &[0x90, 0x03, 0x00, 0x01, 0x01],
            &[0x90, 0x03, 0x00, 0x02, 0x80],
        ]);
        let mut client = Client::new(script, Connect::new("node", 60));
        client.connect(0).expect("connects");
        assert_eq!(
            client.subscribe("down", 0).expect("granted"),
            QoS::AtLeastOnce
        );
        let refused = client.subscribe("other", 0).expect_err("refused");
        assert!(matches!(refused, ClientError::SubscribeRefused) && !refused.is_fatal());
    }

    #[test]
    fn a_refused_connection_is_a_typed_error() {
        let script = Script::new(&[&[0x20, 0x02, 0x00, 0x04]]);
        let mut client = Client::new(script, Connect::new("node", 60));
        assert!(matches!(
            client.connect(0),
            Err(ClientError::Session(SessionError::Refused(
                packet::ConnectRefused::BadUserNameOrPassword
            )))
        ));
    }

    #[test]
    fn a_full_inbox_drops_messages_unacknowledged() {
        // Messages arriving while a publish waits for its PUBACK pile up in the 128-byte
        // inbox: two 62-byte messages fit, the third is dropped without a PUBACK.
        let payload = [7u8; 53];
        let messages: Vec<Vec<u8>> = (1..=3)
            .map(|id| incoming("cmd", Some(id), &payload))
            .collect();
        let script = Script::new(&[
            &CONNACK,
            &messages[0],
            &messages[1],
            &messages[2],
            &puback(1),
        ]);
        let mut client = Client::new(script, Connect::new("node", 60));
        client.connect(0).expect("connects");
        client.publish_qos1("up", b"x", 0).expect("acked");
        assert_eq!(client.dropped_messages(), 1);
        assert!(client.take_message().is_some());
        assert!(client.take_message().is_some());
        assert!(client.take_message().is_none());
        assert!(matches!(client.poll_incoming(0), Err(ClientError::Closed)));
        let acks = &client.transport.written[18 + 9..];
        assert_eq!(acks, [puback(1), puback(2)].concat());
    }

    #[test]
    fn a_read_timeout_is_an_empty_poll_not_a_lost_connection() {
        let message = incoming("cmd", None, b"go");
        let script = Script::new(&[&CONNACK, &message[..3], &[], &message[3..], &[], &puback(1)]);
        let mut client = Client::new(script, Connect::new("node", 60));
        client.connect(0).expect("connects");
        assert!(client.poll_incoming(1).expect("partial").is_none());
        assert!(client.poll_incoming(2).expect("timed out").is_none());
        let got = client
            .poll_incoming(3)
            .expect("rest")
            .map(|m| m.payload.to_vec());
        assert_eq!(got.as_deref(), Some(&b"go"[..]));
        // A timeout while waiting for a PUBACK fails the call but not the connection.
        let timed_out = client.publish_qos1("up", b"x", 4).expect_err("timed out");
        assert!(!timed_out.is_fatal());
        assert_eq!(client.session.state(), State::Connected);
        assert!(client.poll_incoming(5).expect("the late PUBACK").is_none());
        assert_eq!(client.session.in_flight(), 0);
    }

    #[test]
    fn malformed_input_and_keep_alive() {
        let script = Script::new(&[&CONNACK, &[0xD0, 0x00], &[0x40, 0x03, 0x00, 0x01, 0x87]]);
        let mut client = Client::new(script, Connect::new("node", 60));
        client.connect(0).expect("connects");
        assert!(client.poll_incoming(45_000).expect("pong").is_none());
        assert_eq!(client.transport.written[18..], [0xC0, 0x00]);
        assert!(matches!(
            client.poll_incoming(46_000),
            Err(ClientError::Decode(DecodeError::InvalidLength { .. }))
        ));
        assert_eq!(client.session.state(), State::Disconnected);
        client.disconnect().expect("written");
        assert_eq!(client.transport.written[20..], [0xE0, 0x00]);
    }
}
