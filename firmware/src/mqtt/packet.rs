//! MQTT 3.1.1 control packets: encoders for what a client sends, decoders for what a server
//! sends, the remaining-length varint and a streaming [`PacketReader`].
//!
//! Written from the OASIS MQTT 3.1.1 standard (29 October 2014); `[MQTT-x.y.z-n]` tags below
//! name its normative statements. Only QoS 0 and 1 are supported: a node never asks for QoS 2,
//! so PUBREC / PUBREL / PUBCOMP, like UNSUBACK, are refused as unexpected.

use core::fmt;

/// Largest value the 1–4 byte remaining length can carry (spec table 2.4).
pub const MAX_REMAINING_LENGTH: usize = 268_435_455;
/// Largest string or binary field: its length prefix is a `u16` (spec 1.5.3).
pub const MAX_FIELD_LEN: usize = u16::MAX as usize;

/// PINGREQ is always these two bytes (spec 3.12).
pub(crate) const PINGREQ: [u8; 2] = [0xC0, 0x00];
/// DISCONNECT is always these two bytes (spec 3.14).
pub(crate) const DISCONNECT: [u8; 2] = [0xE0, 0x00];

const PROTOCOL_NAME: &[u8] = b"MQTT";
/// Protocol level of 3.1.1 (spec 3.1.2.2).
const PROTOCOL_LEVEL: u8 = 4;
/// The DUP bit of a PUBLISH fixed header (spec 3.3.1.1).
pub(crate) const DUP_FLAG: u8 = 0x08;

/// The control packet types (spec table 2.1). 0 and 15 are reserved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum PacketType {
    Connect = 1,
    ConnAck = 2,
    Publish = 3,
    PubAck = 4,
    PubRec = 5,
    PubRel = 6,
    PubComp = 7,
    Subscribe = 8,
    SubAck = 9,
    Unsubscribe = 10,
    UnsubAck = 11,
    PingReq = 12,
    PingResp = 13,
    Disconnect = 14,
}

impl PacketType {
    /// The type in the high nibble of a fixed header's first byte; `None` if reserved.
    pub fn from_header(byte: u8) -> Option<Self> {
        Some(match byte >> 4 {
            1 => Self::Connect,
            2 => Self::ConnAck,
            3 => Self::Publish,
            4 => Self::PubAck,
            5 => Self::PubRec,
            6 => Self::PubRel,
            7 => Self::PubComp,
            8 => Self::Subscribe,
            9 => Self::SubAck,
            10 => Self::Unsubscribe,
            11 => Self::UnsubAck,
            12 => Self::PingReq,
            13 => Self::PingResp,
            14 => Self::Disconnect,
            _ => return None,
        })
    }
}

/// Quality of service of a message (spec 4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum QoS {
    /// At most once: fire and forget.
    AtMostOnce = 0,
    /// At least once: acknowledged with PUBACK, may be duplicated.
    AtLeastOnce = 1,
    /// Exactly once: a four-packet handshake this client does not speak.
    ExactlyOnce = 2,
}

impl QoS {
    fn from_bits(bits: u8) -> Option<Self> {
        match bits {
            0 => Some(Self::AtMostOnce),
            1 => Some(Self::AtLeastOnce),
            2 => Some(Self::ExactlyOnce),
            _ => None,
        }
    }
}

/// Why a server refused a connection: the non-zero CONNACK return codes (spec table 3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectRefused {
    /// 1: the server does not speak protocol level 4.
    UnacceptableProtocolVersion,
    /// 2: the client identifier is not allowed.
    IdentifierRejected,
    /// 3: the network connection is up but the MQTT service is not.
    ServerUnavailable,
    /// 4: the user name or password is malformed or wrong.
    BadUserNameOrPassword,
    /// 5: the client is not authorised to connect.
    NotAuthorized,
}

impl fmt::Display for ConnectRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::UnacceptableProtocolVersion => "unacceptable protocol version",
            Self::IdentifierRejected => "client identifier rejected",
            Self::ServerUnavailable => "server unavailable",
            Self::BadUserNameOrPassword => "bad user name or password",
            Self::NotAuthorized => "not authorised",
        })
    }
}

impl core::error::Error for ConnectRefused {}

/// One SUBACK return code (spec 3.9.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubAckCode {
    /// The subscription stands; messages arrive with at most this QoS.
    Granted(QoS),
    /// 0x80: the server refused the subscription.
    Failure,
}

/// The last will the server publishes if the client vanishes without DISCONNECT (spec 3.1.2.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Will<'a> {
    /// Where the will is published; a topic name, so no wildcards.
    pub topic: &'a str,
    /// The will message.
    pub payload: &'a [u8],
    /// QoS of the will publication.
    pub qos: QoS,
    /// Whether the server retains the will.
    pub retain: bool,
}

/// The contents of a CONNECT packet (spec 3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Connect<'a> {
    /// Client identifier. Servers must accept 1–23 characters of `[0-9a-zA-Z]`; others may be
    /// refused. Empty only with `clean_session` [MQTT-3.1.3-7].
    pub client_id: &'a str,
    /// Discard any previous session state (subscriptions, queued messages) on connect.
    pub clean_session: bool,
    /// Longest silence the client promises, seconds; 0 disables keep-alive.
    pub keep_alive_s: u16,
    /// Optional last will.
    pub will: Option<Will<'a>>,
    /// Optional user name.
    pub username: Option<&'a str>,
    /// Optional password; requires a user name [MQTT-3.1.2-22].
    pub password: Option<&'a [u8]>,
}

impl<'a> Connect<'a> {
    /// A CONNECT with just a client id and keep-alive: clean session, no will, no credentials.
    pub fn new(client_id: &'a str, keep_alive_s: u16) -> Self {
        Self {
            client_id,
            clean_session: true,
            keep_alive_s,
            will: None,
            username: None,
            password: None,
        }
    }
}

/// A PUBLISH packet, sent or received (spec 3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Publish<'a> {
    /// Topic name (no wildcards).
    pub topic: &'a str,
    /// Delivery guarantee.
    pub qos: QoS,
    /// Present exactly when `qos` is above 0; never 0 [MQTT-2.3.1-1].
    pub packet_id: Option<u16>,
    /// Set on redelivery of a QoS 1 message; always clear at QoS 0 [MQTT-3.3.1-2].
    pub dup: bool,
    /// Whether the server keeps this as the topic's retained message.
    pub retain: bool,
    /// The application message; on decode it borrows the input buffer.
    pub payload: &'a [u8],
}

/// A decoded packet a server sends to a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packet<'a> {
    /// Answer to CONNECT.
    ConnAck {
        /// The server resumed a stored session.
        session_present: bool,
        /// `Ok` when the connection was accepted.
        result: Result<(), ConnectRefused>,
    },
    /// An application message.
    Publish(Publish<'a>),
    /// Acknowledges a QoS 1 PUBLISH.
    PubAck {
        /// The acknowledged packet id.
        packet_id: u16,
    },
    /// Answer to a one-filter SUBSCRIBE.
    SubAck {
        /// The SUBSCRIBE's packet id.
        packet_id: u16,
        /// The outcome for its filter.
        code: SubAckCode,
    },
    /// Answer to PINGREQ.
    PingResp,
}

/// Why a packet could not be encoded. Nothing is written that could be sent by mistake: the
/// buffer contents are unspecified after an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncodeError {
    /// The output buffer is smaller than the packet.
    BufferTooSmall {
        /// Bytes the packet needs.
        needed: usize,
        /// Bytes available.
        capacity: usize,
    },
    /// The packet exceeds the 268 435 455-byte remaining length MQTT can express.
    PacketTooLarge,
    /// A string or binary field is longer than 65 535 bytes.
    FieldTooLong,
    /// A topic name is empty or contains a wildcard or U+0000 [MQTT-3.3.2-2] [MQTT-4.7.3-1].
    InvalidTopicName,
    /// A topic filter is empty, contains U+0000 or misplaces a wildcard [MQTT-4.7.1-2/3].
    InvalidTopicFilter,
    /// A QoS above 0 without a packet id, a packet id at QoS 0, packet id 0, or DUP at QoS 0.
    InvalidPacketId,
    /// An empty client id requires a clean session [MQTT-3.1.3-7].
    EmptyClientIdNeedsCleanSession,
    /// A password without a user name [MQTT-3.1.2-22].
    PasswordWithoutUserName,
    /// A client id or user name contains U+0000 [MQTT-1.5.3-2].
    NulInString,
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BufferTooSmall { needed, capacity } => {
                write!(f, "packet needs {needed} bytes, buffer has {capacity}")
            }
            Self::PacketTooLarge => f.write_str("packet exceeds the MQTT remaining-length limit"),
            Self::FieldTooLong => f.write_str("string or binary field exceeds 65535 bytes"),
            Self::InvalidTopicName => f.write_str("invalid topic name"),
            Self::InvalidTopicFilter => f.write_str("invalid topic filter"),
            Self::InvalidPacketId => f.write_str("packet id does not match the QoS"),
            Self::EmptyClientIdNeedsCleanSession => {
                f.write_str("an empty client id requires a clean session")
            }
            Self::PasswordWithoutUserName => f.write_str("a password requires a user name"),
            Self::NulInString => f.write_str("a string field contains U+0000"),
        }
    }
}

impl core::error::Error for EncodeError {}

/// Why received bytes are not a valid server-to-client packet. Each is fatal: the spec has the
/// client close the network connection on a malformed packet (spec 4.8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// The input ends before the packet does.
    Truncated,
    /// The remaining length has a continuation bit on its fourth byte.
    RemainingLengthTooLong,
    /// The remaining length is not in its shortest form (ends in a 0x00 continuation byte).
    RemainingLengthOverlong,
    /// Reserved packet type 0 or 15.
    UnknownPacketType(u8),
    /// A valid type a 3.1.1 server never sends to this client (client-to-server, QoS 2,
    /// UNSUBACK).
    UnexpectedPacketType(PacketType),
    /// Fixed-header flags other than the spec mandates [MQTT-2.2.2-2], including PUBLISH QoS 3
    /// [MQTT-3.3.1-4] and DUP at QoS 0.
    InvalidFlags {
        /// The packet type.
        packet: PacketType,
        /// The low nibble of the first byte.
        flags: u8,
    },
    /// A remaining length that does not fit the packet type (e.g. a CONNACK that is not 2).
    InvalidLength {
        /// The packet type.
        packet: PacketType,
        /// The remaining length received.
        len: usize,
    },
    /// CONNACK acknowledge flags with reserved bits 7–1 set.
    InvalidConnAckFlags(u8),
    /// A CONNACK return code in the reserved range 6–255.
    UnknownConnectReturnCode(u8),
    /// A SUBACK return code other than 0, 1, 2 or 0x80.
    InvalidSubAckCode(u8),
    /// Packet identifier 0 [MQTT-2.3.1-1].
    ZeroPacketId,
    /// A topic name that is not UTF-8, is empty or holds U+0000 or a wildcard.
    InvalidTopic,
    /// A packet larger than the receive buffer.
    PacketTooLarge {
        /// The packet's total size, header included.
        len: usize,
        /// The receive buffer's size.
        capacity: usize,
    },
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated => f.write_str("packet is truncated"),
            Self::RemainingLengthTooLong => f.write_str("remaining length exceeds 4 bytes"),
            Self::RemainingLengthOverlong => f.write_str("remaining length is not minimal"),
            Self::UnknownPacketType(t) => write!(f, "reserved packet type {t}"),
            Self::UnexpectedPacketType(t) => write!(f, "unexpected packet type {t:?}"),
            Self::InvalidFlags { packet, flags } => {
                write!(f, "invalid flags {flags:#06b} on {packet:?}")
            }
            Self::InvalidLength { packet, len } => {
                write!(f, "invalid remaining length {len} for {packet:?}")
            }
            Self::InvalidConnAckFlags(b) => write!(f, "reserved CONNACK flags set: {b:#04x}"),
            Self::UnknownConnectReturnCode(c) => write!(f, "reserved CONNACK return code {c}"),
            Self::InvalidSubAckCode(c) => write!(f, "invalid SUBACK return code {c:#04x}"),
            Self::ZeroPacketId => f.write_str("packet id 0"),
            Self::InvalidTopic => f.write_str("invalid topic name"),
            Self::PacketTooLarge { len, capacity } => {
                write!(
                    f,
                    "packet of {len} bytes exceeds the {capacity}-byte buffer"
                )
            }
        }
    }
}

impl core::error::Error for DecodeError {}

// ---------------------------------------------------------------------------------------------
// Remaining length

/// Writes `value` as a remaining length into `buf`; returns the bytes used (1–4).
pub fn encode_remaining_length(value: usize, buf: &mut [u8]) -> Result<usize, EncodeError> {
    if value > MAX_REMAINING_LENGTH {
        return Err(EncodeError::PacketTooLarge);
    }
    let needed = remaining_length_len(value);
    if buf.len() < needed {
        return Err(EncodeError::BufferTooSmall {
            needed,
            capacity: buf.len(),
        });
    }
    let mut rest = value;
    for slot in buf.iter_mut().take(needed) {
        // Truncation intended: the low seven bits.
        let digit = (rest % 128) as u8;
        rest /= 128;
        *slot = if rest > 0 { digit | 0x80 } else { digit };
    }
    Ok(needed)
}

/// Decodes a remaining length from the start of `bytes`: `Ok(None)` when more bytes are
/// needed, else the value and the bytes it took.
pub fn decode_remaining_length(bytes: &[u8]) -> Result<Option<(usize, usize)>, DecodeError> {
    let mut value = 0usize;
    for (i, &byte) in bytes.iter().enumerate().take(4) {
        value |= usize::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            // A final zero digit after a continuation adds nothing, so a shorter form exists.
            if i > 0 && byte == 0 {
                return Err(DecodeError::RemainingLengthOverlong);
            }
            return Ok(Some((value, i + 1)));
        }
    }
    if bytes.len() >= 4 {
        Err(DecodeError::RemainingLengthTooLong)
    } else {
        Ok(None)
    }
}

fn remaining_length_len(value: usize) -> usize {
    match value {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// Total size of the packet at the start of `bytes`, header included, once its fixed header is
/// complete; `Ok(None)` while it is not. Reserved packet types fail at the first byte, so a
/// stream of garbage is refused without waiting for a length.
pub fn packet_len(bytes: &[u8]) -> Result<Option<usize>, DecodeError> {
    let Some(&first) = bytes.first() else {
        return Ok(None);
    };
    if PacketType::from_header(first).is_none() {
        return Err(DecodeError::UnknownPacketType(first >> 4));
    }
    Ok(decode_remaining_length(&bytes[1..])?.map(|(len, used)| 1 + used + len))
}

// ---------------------------------------------------------------------------------------------
// Encoding

/// A bounds-checked cursor; the packet size is checked up front, so its errors only guard
/// against a size computation slip.
struct Writer<'b> {
    buf: &'b mut [u8],
    pos: usize,
}

impl<'b> Writer<'b> {
    /// Checks the whole packet fits and writes its fixed header.
    fn start(buf: &'b mut [u8], header: u8, remaining: usize) -> Result<Self, EncodeError> {
        if remaining > MAX_REMAINING_LENGTH {
            return Err(EncodeError::PacketTooLarge);
        }
        let needed = 1 + remaining_length_len(remaining) + remaining;
        if buf.len() < needed {
            return Err(EncodeError::BufferTooSmall {
                needed,
                capacity: buf.len(),
            });
        }
        let mut writer = Self { buf, pos: 0 };
        writer.u8(header)?;
        let used = encode_remaining_length(remaining, &mut writer.buf[1..])?;
        writer.pos += used;
        Ok(writer)
    }

    fn bytes(&mut self, bytes: &[u8]) -> Result<(), EncodeError> {
        let end = self.pos + bytes.len();
        let capacity = self.buf.len();
        let slot = self
            .buf
            .get_mut(self.pos..end)
            .ok_or(EncodeError::BufferTooSmall {
                needed: end,
                capacity,
            })?;
        slot.copy_from_slice(bytes);
        self.pos = end;
        Ok(())
    }

    fn u8(&mut self, value: u8) -> Result<(), EncodeError> {
        self.bytes(&[value])
    }

    fn u16(&mut self, value: u16) -> Result<(), EncodeError> {
        self.bytes(&value.to_be_bytes())
    }

    /// A length-prefixed string or binary field (spec 1.5.3).
    fn field(&mut self, bytes: &[u8]) -> Result<(), EncodeError> {
        let len = u16::try_from(bytes.len()).map_err(|_| EncodeError::FieldTooLong)?;
        self.u16(len)?;
        self.bytes(bytes)
    }

    fn finish(self) -> &'b [u8] {
        &self.buf[..self.pos]
    }
}

fn field_len(bytes: &[u8]) -> Result<usize, EncodeError> {
    if bytes.len() > MAX_FIELD_LEN {
        return Err(EncodeError::FieldTooLong);
    }
    Ok(2 + bytes.len())
}

/// Topic names carry no wildcards and are never empty [MQTT-3.3.2-2] [MQTT-4.7.3-1]; U+0000 is
/// banned in every string [MQTT-1.5.3-2].
fn valid_topic_name(topic: &str) -> bool {
    !topic.is_empty() && !topic.contains(['+', '#', '\0'])
}

/// `#` only as the whole last level, `+` only as a whole level [MQTT-4.7.1-2] [MQTT-4.7.1-3].
fn valid_topic_filter(filter: &str) -> bool {
    if filter.is_empty() || filter.contains('\0') {
        return false;
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        let last = levels.peek().is_none();
        if level.contains('#') && (level != "#" || !last) {
            return false;
        }
        if level.contains('+') && level != "+" {
            return false;
        }
    }
    true
}

/// Encodes a CONNECT (spec 3.1) into `buf`, returning the written prefix.
pub fn encode_connect<'b>(
    connect: &Connect<'_>,
    buf: &'b mut [u8],
) -> Result<&'b [u8], EncodeError> {
    if connect.client_id.is_empty() && !connect.clean_session {
        return Err(EncodeError::EmptyClientIdNeedsCleanSession);
    }
    if connect.client_id.contains('\0') || connect.username.is_some_and(|u| u.contains('\0')) {
        return Err(EncodeError::NulInString);
    }
    if connect.password.is_some() && connect.username.is_none() {
        return Err(EncodeError::PasswordWithoutUserName);
    }
    // Variable header: protocol name, level, flags, keep-alive (spec 3.1.2).
    let mut remaining = field_len(PROTOCOL_NAME)? + 1 + 1 + 2;
    remaining += field_len(connect.client_id.as_bytes())?;
    let mut flags = 0u8;
    if connect.clean_session {
        flags |= 0x02;
    }
    if let Some(will) = &connect.will {
        if !valid_topic_name(will.topic) {
            return Err(EncodeError::InvalidTopicName);
        }
        flags |= 0x04 | ((will.qos as u8) << 3);
        if will.retain {
            flags |= 0x20;
        }
        remaining += field_len(will.topic.as_bytes())? + field_len(will.payload)?;
    }
    if let Some(username) = connect.username {
        flags |= 0x80;
        remaining += field_len(username.as_bytes())?;
    }
    if let Some(password) = connect.password {
        flags |= 0x40;
        remaining += field_len(password)?;
    }

    let mut w = Writer::start(buf, 0x10, remaining)?;
    w.field(PROTOCOL_NAME)?;
    w.u8(PROTOCOL_LEVEL)?;
    w.u8(flags)?;
    w.u16(connect.keep_alive_s)?;
    // Payload order is fixed: client id, will topic, will message, user name, password (3.1.3).
    w.field(connect.client_id.as_bytes())?;
    if let Some(will) = &connect.will {
        w.field(will.topic.as_bytes())?;
        w.field(will.payload)?;
    }
    if let Some(username) = connect.username {
        w.field(username.as_bytes())?;
    }
    if let Some(password) = connect.password {
        w.field(password)?;
    }
    Ok(w.finish())
}

/// Encodes a PUBLISH (spec 3.3) into `buf`, returning the written prefix.
pub fn encode_publish<'b>(
    publish: &Publish<'_>,
    buf: &'b mut [u8],
) -> Result<&'b [u8], EncodeError> {
    if !valid_topic_name(publish.topic) {
        return Err(EncodeError::InvalidTopicName);
    }
    let id_ok = match (publish.qos, publish.packet_id) {
        (QoS::AtMostOnce, None) => !publish.dup,
        (QoS::AtLeastOnce | QoS::ExactlyOnce, Some(id)) => id != 0,
        _ => false,
    };
    if !id_ok {
        return Err(EncodeError::InvalidPacketId);
    }
    let mut header = 0x30 | ((publish.qos as u8) << 1);
    if publish.dup {
        header |= DUP_FLAG;
    }
    if publish.retain {
        header |= 0x01;
    }
    let id_len = if publish.packet_id.is_some() { 2 } else { 0 };
    let remaining = field_len(publish.topic.as_bytes())?
        .checked_add(id_len + publish.payload.len())
        .ok_or(EncodeError::PacketTooLarge)?;
    let mut w = Writer::start(buf, header, remaining)?;
    w.field(publish.topic.as_bytes())?;
    if let Some(id) = publish.packet_id {
        w.u16(id)?;
    }
    // The payload has no length prefix: it is whatever the remaining length leaves (3.3.3).
    w.bytes(publish.payload)?;
    Ok(w.finish())
}

/// The PUBACK for `packet_id` (spec 3.4); fixed size, so no buffer needed.
pub fn puback(packet_id: u16) -> [u8; 4] {
    let [hi, lo] = packet_id.to_be_bytes();
    [0x40, 0x02, hi, lo]
}

/// Encodes a PUBACK (spec 3.4) into `buf`, returning the written prefix.
pub fn encode_puback(packet_id: u16, buf: &mut [u8]) -> Result<&[u8], EncodeError> {
    if packet_id == 0 {
        return Err(EncodeError::InvalidPacketId);
    }
    copy_into(&puback(packet_id), buf)
}

/// Encodes a one-filter SUBSCRIBE (spec 3.8) into `buf`, returning the written prefix.
pub fn encode_subscribe<'b>(
    packet_id: u16,
    filter: &str,
    qos: QoS,
    buf: &'b mut [u8],
) -> Result<&'b [u8], EncodeError> {
    if packet_id == 0 {
        return Err(EncodeError::InvalidPacketId);
    }
    if !valid_topic_filter(filter) {
        return Err(EncodeError::InvalidTopicFilter);
    }
    let remaining = 2 + field_len(filter.as_bytes())? + 1;
    // Flags 0b0010 are mandatory on SUBSCRIBE [MQTT-3.8.1-1].
    let mut w = Writer::start(buf, 0x82, remaining)?;
    w.u16(packet_id)?;
    w.field(filter.as_bytes())?;
    w.u8(qos as u8)?;
    Ok(w.finish())
}

/// Encodes a PINGREQ (spec 3.12) into `buf`, returning the written prefix.
pub fn encode_pingreq(buf: &mut [u8]) -> Result<&[u8], EncodeError> {
    copy_into(&PINGREQ, buf)
}

/// Encodes a DISCONNECT (spec 3.14) into `buf`, returning the written prefix.
pub fn encode_disconnect(buf: &mut [u8]) -> Result<&[u8], EncodeError> {
    copy_into(&DISCONNECT, buf)
}

fn copy_into<'b>(packet: &[u8], buf: &'b mut [u8]) -> Result<&'b [u8], EncodeError> {
    let capacity = buf.len();
    let slot = buf
        .get_mut(..packet.len())
        .ok_or(EncodeError::BufferTooSmall {
            needed: packet.len(),
            capacity,
        })?;
    slot.copy_from_slice(packet);
    Ok(slot)
}

// ---------------------------------------------------------------------------------------------
// Decoding

/// Decodes the packet at the start of `bytes`; returns it and the bytes it took. The packet
/// borrows `bytes` (topic and payload of a PUBLISH).
pub fn decode(bytes: &[u8]) -> Result<(Packet<'_>, usize), DecodeError> {
    let &first = bytes.first().ok_or(DecodeError::Truncated)?;
    let kind = PacketType::from_header(first).ok_or(DecodeError::UnknownPacketType(first >> 4))?;
    let flags = first & 0x0F;
    let (remaining, used) = decode_remaining_length(&bytes[1..])?.ok_or(DecodeError::Truncated)?;
    let total = 1 + used + remaining;
    let body = bytes.get(1 + used..total).ok_or(DecodeError::Truncated)?;
    let fixed_flags = |expected: u8| {
        if flags == expected {
            Ok(())
        } else {
            Err(DecodeError::InvalidFlags {
                packet: kind,
                flags,
            })
        }
    };
    let exact_len = |expected: usize| {
        if body.len() == expected {
            Ok(())
        } else {
            Err(DecodeError::InvalidLength {
                packet: kind,
                len: body.len(),
            })
        }
    };
    let decoded = match kind {
        PacketType::ConnAck => {
            fixed_flags(0)?;
            exact_len(2)?;
            let (ack_flags, code) = (body[0], body[1]);
            if ack_flags & 0xFE != 0 {
                return Err(DecodeError::InvalidConnAckFlags(ack_flags));
            }
            let result = match code {
                0 => Ok(()),
                1 => Err(ConnectRefused::UnacceptableProtocolVersion),
                2 => Err(ConnectRefused::IdentifierRejected),
                3 => Err(ConnectRefused::ServerUnavailable),
                4 => Err(ConnectRefused::BadUserNameOrPassword),
                5 => Err(ConnectRefused::NotAuthorized),
                other => return Err(DecodeError::UnknownConnectReturnCode(other)),
            };
            Packet::ConnAck {
                session_present: ack_flags & 0x01 != 0,
                result,
            }
        }
        PacketType::Publish => Packet::Publish(decode_publish(flags, body)?),
        PacketType::PubAck => {
            fixed_flags(0)?;
            exact_len(2)?;
            Packet::PubAck {
                packet_id: packet_id(body)?,
            }
        }
        PacketType::SubAck => {
            fixed_flags(0)?;
            // One return code per filter [MQTT-3.8.4-5], and this client sends one filter.
            exact_len(3)?;
            let code = match body[2] {
                0x80 => SubAckCode::Failure,
                qos => SubAckCode::Granted(
                    QoS::from_bits(qos).ok_or(DecodeError::InvalidSubAckCode(qos))?,
                ),
            };
            Packet::SubAck {
                packet_id: packet_id(body)?,
                code,
            }
        }
        PacketType::PingResp => {
            fixed_flags(0)?;
            exact_len(0)?;
            Packet::PingResp
        }
        other => return Err(DecodeError::UnexpectedPacketType(other)),
    };
    Ok((decoded, total))
}

fn packet_id(body: &[u8]) -> Result<u16, DecodeError> {
    let bytes = body.get(..2).ok_or(DecodeError::Truncated)?;
    match u16::from_be_bytes([bytes[0], bytes[1]]) {
        0 => Err(DecodeError::ZeroPacketId),
        id => Ok(id),
    }
}

fn decode_publish(flags: u8, body: &[u8]) -> Result<Publish<'_>, DecodeError> {
    let invalid = DecodeError::InvalidFlags {
        packet: PacketType::Publish,
        flags,
    };
    let qos = QoS::from_bits((flags >> 1) & 0x03).ok_or(invalid)?;
    let dup = flags & DUP_FLAG != 0;
    if dup && qos == QoS::AtMostOnce {
        return Err(invalid);
    }
    let short = DecodeError::InvalidLength {
        packet: PacketType::Publish,
        len: body.len(),
    };
    let topic_len = body.get(..2).ok_or(short)?;
    let topic_len = usize::from(u16::from_be_bytes([topic_len[0], topic_len[1]]));
    let topic = body.get(2..2 + topic_len).ok_or(short)?;
    let topic = core::str::from_utf8(topic).map_err(|_| DecodeError::InvalidTopic)?;
    if !valid_topic_name(topic) {
        return Err(DecodeError::InvalidTopic);
    }
    let mut rest = &body[2 + topic_len..];
    let packet_id = if qos == QoS::AtMostOnce {
        None
    } else {
        let id = packet_id(rest).map_err(|e| match e {
            DecodeError::Truncated => short,
            other => other,
        })?;
        rest = &rest[2..];
        Some(id)
    };
    Ok(Publish {
        topic,
        qos,
        packet_id,
        dup,
        retain: flags & 0x01 != 0,
        payload: rest,
    })
}

// ---------------------------------------------------------------------------------------------
// Streaming

/// Reassembles packets from a byte stream in a fixed `N`-byte buffer.
///
/// Read from the transport into [`space`](Self::space), [`commit`](Self::commit) what arrived,
/// then take packets with [`next_packet`](Self::next_packet) until it yields `None`. Partial
/// reads and several packets per read are both fine. After an error the stream cannot be
/// trusted (there is no way to find the next packet boundary), so the reader keeps returning
/// that error until [`reset`](Self::reset) for a new connection.
#[derive(Debug, Clone)]
pub struct PacketReader<const N: usize> {
    buf: [u8; N],
    start: usize,
    end: usize,
    failed: Option<DecodeError>,
}

impl<const N: usize> Default for PacketReader<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> PacketReader<N> {
    /// An empty reader. `N` must hold the largest expected packet, header included.
    pub const fn new() -> Self {
        // A fixed header alone takes up to 5 bytes; less could never make progress.
        const { assert!(N >= 5, "a PacketReader needs at least 5 bytes") };
        Self {
            buf: [0; N],
            start: 0,
            end: 0,
            failed: None,
        }
    }

    /// Forgets buffered bytes and any error, for a new connection.
    pub fn reset(&mut self) {
        self.start = 0;
        self.end = 0;
        self.failed = None;
    }

    /// The free tail of the buffer to read into. Empty only while a packet larger than the
    /// buffer is pending, and then [`next_packet`](Self::next_packet) reports it.
    pub fn space(&mut self) -> &mut [u8] {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        &mut self.buf[self.end..]
    }

    /// Records that `n` bytes were written at the start of [`space`](Self::space).
    pub fn commit(&mut self, n: usize) {
        self.end = self.end.saturating_add(n).min(N);
    }

    /// Copies as much of `bytes` as fits; returns how many were taken.
    pub fn feed(&mut self, bytes: &[u8]) -> usize {
        let space = self.space();
        let n = space.len().min(bytes.len());
        space[..n].copy_from_slice(&bytes[..n]);
        self.commit(n);
        n
    }

    /// Bytes buffered but not yet returned as packets.
    pub fn pending(&self) -> usize {
        self.end - self.start
    }

    /// The next complete packet's raw bytes, or `None` until more bytes arrive.
    pub fn next_raw(&mut self) -> Result<Option<&[u8]>, DecodeError> {
        Ok(self.next_range()?.map(|(start, end)| &self.buf[start..end]))
    }

    /// The next complete packet, decoded, or `None` until more bytes arrive.
    pub fn next_packet(&mut self) -> Result<Option<Packet<'_>>, DecodeError> {
        let Some((start, end)) = self.next_range()? else {
            return Ok(None);
        };
        // Borrowing the `buf` field alone leaves `failed` free to record the error.
        match decode(&self.buf[start..end]) {
            Ok((packet, _)) => Ok(Some(packet)),
            Err(error) => {
                self.failed = Some(error);
                Err(error)
            }
        }
    }

    /// Where the next complete packet lies in `buf`, consuming it.
    fn next_range(&mut self) -> Result<Option<(usize, usize)>, DecodeError> {
        if let Some(error) = self.failed {
            return Err(error);
        }
        let pending = &self.buf[self.start..self.end];
        let total = match packet_len(pending) {
            Ok(Some(total)) if total > N => Err(DecodeError::PacketTooLarge {
                len: total,
                capacity: N,
            }),
            Ok(Some(total)) if total > pending.len() => return Ok(None),
            Ok(Some(total)) => Ok(total),
            Ok(None) => return Ok(None),
            Err(error) => Err(error),
        };
        match total {
            Ok(total) => {
                let start = self.start;
                self.start += total;
                Ok(Some((start, start + total)))
            }
            Err(error) => {
                self.failed = Some(error);
                Err(error)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use std::vec::Vec;

    use proptest::prelude::*;

    use super::*;

    fn encoded(f: impl FnOnce(&mut [u8]) -> Result<&[u8], EncodeError>) -> Vec<u8> {
        let mut buf = [0u8; 512];
        f(&mut buf).expect("encodes").to_vec()
    }

    fn decoded(bytes: &[u8]) -> Result<Packet<'_>, DecodeError> {
        decode(bytes).map(|(packet, used)| {
            assert_eq!(used, bytes.len(), "decode takes the whole packet");
            packet
        })
    }

    #[test]
    fn remaining_length_matches_the_spec_table() {
        // Spec table 2.4: the boundaries of each width.
        let table: [(usize, &[u8]); 9] = [
            (0, &[0x00]),
            (127, &[0x7F]),
            (128, &[0x80, 0x01]),
            (16_383, &[0xFF, 0x7F]),
            (16_384, &[0x80, 0x80, 0x01]),
            (2_097_151, &[0xFF, 0xFF, 0x7F]),
            (2_097_152, &[0x80, 0x80, 0x80, 0x01]),
            (268_435_455, &[0xFF, 0xFF, 0xFF, 0x7F]),
            (321, &[0xC1, 0x02]),
        ];
        for (value, bytes) in table {
            let mut buf = [0u8; 4];
            let used = encode_remaining_length(value, &mut buf).expect("in range");
            assert_eq!(&buf[..used], bytes, "encoding {value}");
            assert_eq!(
                decode_remaining_length(bytes),
                Ok(Some((value, bytes.len()))),
                "decoding {value}"
            );
        }
    }

    #[test]
    fn remaining_length_errors() {
        let mut buf = [0u8; 4];
        assert_eq!(
            encode_remaining_length(268_435_456, &mut buf),
            Err(EncodeError::PacketTooLarge)
        );
        assert_eq!(
            encode_remaining_length(128, &mut buf[..1]),
            Err(EncodeError::BufferTooSmall {
                needed: 2,
                capacity: 1
            })
        );
        assert_eq!(
            decode_remaining_length(&[0xFF, 0xFF, 0xFF, 0xFF, 0x7F]),
            Err(DecodeError::RemainingLengthTooLong)
        );
        assert_eq!(
            decode_remaining_length(&[0x80, 0x80, 0x80, 0x80]),
            Err(DecodeError::RemainingLengthTooLong)
        );
        for overlong in [
            &[0x80, 0x00][..],
            &[0xFF, 0x80, 0x00],
            &[0x80, 0x80, 0x80, 0x00],
        ] {
            assert_eq!(
                decode_remaining_length(overlong),
                Err(DecodeError::RemainingLengthOverlong),
                "{overlong:02x?}"
            );
        }
        // Continuation bits with the rest not yet received.
        assert_eq!(decode_remaining_length(&[]), Ok(None));
        assert_eq!(decode_remaining_length(&[0x80]), Ok(None));
        assert_eq!(decode_remaining_length(&[0xFF, 0xFF, 0xFF]), Ok(None));
    }

    #[test]
    fn connect_minimal() {
        let bytes = encoded(|buf| encode_connect(&Connect::new("node", 60), buf));
        #[rustfmt::skip]
        let expected = [
            0x10, 0x10,                                 // CONNECT, remaining length 16
            0x00, 0x04, b'M', b'Q', b'T', b'T',         // protocol name
            0x04,                                       // level 4 = 3.1.1
            0x02,                                       // clean session
            0x00, 0x3C,                                 // keep-alive 60 s
            0x00, 0x04, b'n', b'o', b'd', b'e',         // client id
        ];
        assert_eq!(bytes, expected);
    }

    #[test]
    fn connect_with_will_and_credentials() {
        let connect = Connect {
            client_id: "c",
            clean_session: false,
            keep_alive_s: 10,
            will: Some(Will {
                topic: "w",
                payload: b"x",
                qos: QoS::AtLeastOnce,
                retain: true,
            }),
            username: Some("u"),
            password: Some(b"p"),
        };
        #[rustfmt::skip]
        let expected = [
            0x10, 0x19,
            0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04,
            // user name, password, will retain, will QoS 1, will flag; no clean session
            0b1110_1100,
            0x00, 0x0A,
            0x00, 0x01, b'c',
            0x00, 0x01, b'w',
            0x00, 0x01, b'x',
            0x00, 0x01, b'u',
            0x00, 0x01, b'p',
        ];
        assert_eq!(encoded(|buf| encode_connect(&connect, buf)), expected);
    }

    #[test]
    fn connect_refuses_what_a_server_must_reject() {
        let mut buf = [0u8; 64];
        let mut connect = Connect::new("", 60);
        connect.clean_session = false;
        assert_eq!(
            encode_connect(&connect, &mut buf),
            Err(EncodeError::EmptyClientIdNeedsCleanSession)
        );
        let mut connect = Connect::new("node", 60);
        connect.password = Some(b"secret");
        assert_eq!(
            encode_connect(&connect, &mut buf),
            Err(EncodeError::PasswordWithoutUserName)
        );
        connect.password = None;
        connect.will = Some(Will {
            topic: "a/+",
            payload: b"",
            qos: QoS::AtMostOnce,
            retain: false,
        });
        assert_eq!(
            encode_connect(&connect, &mut buf),
            Err(EncodeError::InvalidTopicName)
        );
        assert_eq!(
            encode_connect(&Connect::new("node", 60), &mut buf[..17]),
            Err(EncodeError::BufferTooSmall {
                needed: 18,
                capacity: 17
            })
        );
    }

    fn publish<'a>(
        topic: &'a str,
        qos: QoS,
        packet_id: Option<u16>,
        payload: &'a [u8],
    ) -> Publish<'a> {
        Publish {
            topic,
            qos,
            packet_id,
            dup: false,
            retain: false,
            payload,
        }
    }

    #[test]
    fn publish_qos1_and_qos0() {
        let qos1 = publish("a/b", QoS::AtLeastOnce, Some(10), b"hi");
        #[rustfmt::skip]
        let expected = [
            0x32, 0x09,                     // PUBLISH, QoS 1, remaining length 9
            0x00, 0x03, b'a', b'/', b'b',   // topic
            0x00, 0x0A,                     // packet id 10
            b'h', b'i',                     // payload, unprefixed
        ];
        assert_eq!(encoded(|buf| encode_publish(&qos1, buf)), expected);
        let resend = Publish { dup: true, ..qos1 };
        assert_eq!(encoded(|buf| encode_publish(&resend, buf))[0], 0x3A);

        let qos0 = Publish {
            retain: true,
            ..publish("a/b", QoS::AtMostOnce, None, b"hi")
        };
        assert_eq!(
            encoded(|buf| encode_publish(&qos0, buf)),
            [0x31, 0x07, 0x00, 0x03, b'a', b'/', b'b', b'h', b'i']
        );
    }

    #[test]
    fn publish_refuses_bad_topics_and_ids() {
        let mut buf = [0u8; 64];
        for topic in ["", "a/+", "a/#", "a\0b"] {
            assert_eq!(
                encode_publish(&publish(topic, QoS::AtMostOnce, None, b""), &mut buf),
                Err(EncodeError::InvalidTopicName),
                "{topic:?}"
            );
        }
        for bad in [
            publish("t", QoS::AtMostOnce, Some(1), b""),
            publish("t", QoS::AtLeastOnce, None, b""),
            publish("t", QoS::AtLeastOnce, Some(0), b""),
            Publish {
                dup: true,
                ..publish("t", QoS::AtMostOnce, None, b"")
            },
        ] {
            assert_eq!(
                encode_publish(&bad, &mut buf),
                Err(EncodeError::InvalidPacketId),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn fixed_small_packets() {
        assert_eq!(
            encoded(|buf| encode_puback(10, buf)),
            [0x40, 0x02, 0x00, 0x0A]
        );
        assert_eq!(puback(0x1234), [0x40, 0x02, 0x12, 0x34]);
        assert_eq!(encoded(encode_pingreq), [0xC0, 0x00]);
        assert_eq!(encoded(encode_disconnect), [0xE0, 0x00]);
        let mut buf = [0u8; 1];
        assert!(matches!(
            encode_pingreq(&mut buf),
            Err(EncodeError::BufferTooSmall { .. })
        ));
        assert_eq!(
            encode_puback(0, &mut [0u8; 4]),
            Err(EncodeError::InvalidPacketId)
        );
    }

    #[test]
    fn subscribe_one_filter() {
        #[rustfmt::skip]
        let expected = [
            0x82, 0x08,                     // SUBSCRIBE with its mandatory 0b0010 flags
            0x00, 0x01,                     // packet id 1
            0x00, 0x03, b'a', b'/', b'#',   // filter
            0x01,                           // requested QoS 1
        ];
        assert_eq!(
            encoded(|buf| encode_subscribe(1, "a/#", QoS::AtLeastOnce, buf)),
            expected
        );
        let mut buf = [0u8; 64];
        for good in ["#", "+", "a/+/c", "+/+/#", "/", "demolab/v1/node/+/up"] {
            assert!(
                encode_subscribe(1, good, QoS::AtLeastOnce, &mut buf).is_ok(),
                "{good:?}"
            );
        }
        for bad in ["", "a/#/b", "a#", "a/b+", "#/", "a\0"] {
            assert_eq!(
                encode_subscribe(1, bad, QoS::AtLeastOnce, &mut buf),
                Err(EncodeError::InvalidTopicFilter),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn connack_return_codes_are_typed() {
        assert_eq!(
            decoded(&[0x20, 0x02, 0x00, 0x00]),
            Ok(Packet::ConnAck {
                session_present: false,
                result: Ok(())
            })
        );
        assert_eq!(
            decoded(&[0x20, 0x02, 0x01, 0x00]),
            Ok(Packet::ConnAck {
                session_present: true,
                result: Ok(())
            })
        );
        let refusals = [
            (1, ConnectRefused::UnacceptableProtocolVersion),
            (2, ConnectRefused::IdentifierRejected),
            (3, ConnectRefused::ServerUnavailable),
            (4, ConnectRefused::BadUserNameOrPassword),
            (5, ConnectRefused::NotAuthorized),
        ];
        for (code, reason) in refusals {
            assert_eq!(
                decoded(&[0x20, 0x02, 0x00, code]),
                Ok(Packet::ConnAck {
                    session_present: false,
                    result: Err(reason)
                })
            );
        }
        assert_eq!(
            decoded(&[0x20, 0x02, 0x00, 0x06]),
            Err(DecodeError::UnknownConnectReturnCode(6))
        );
    }

    #[test]
    fn malformed_connacks() {
        let len = |len| DecodeError::InvalidLength {
            packet: PacketType::ConnAck,
            len,
        };
        assert_eq!(decoded(&[0x20, 0x03, 0x00, 0x00, 0x00]), Err(len(3)));
        assert_eq!(decoded(&[0x20, 0x01, 0x00]), Err(len(1)));
        assert_eq!(
            decoded(&[0x21, 0x02, 0x00, 0x00]),
            Err(DecodeError::InvalidFlags {
                packet: PacketType::ConnAck,
                flags: 1
            })
        );
        assert_eq!(
            decoded(&[0x20, 0x02, 0x02, 0x00]),
            Err(DecodeError::InvalidConnAckFlags(0x02))
        );
    }

    #[test]
    fn publish_decodes_borrowing_its_input() {
        let bytes = [
            0x3B, 0x09, 0x00, 0x03, b'a', b'/', b'b', 0x00, 0x0A, b'h', b'i',
        ];
        let Ok(Packet::Publish(publish)) = decoded(&bytes) else {
            panic!("not a publish");
        };
        assert_eq!(
            publish,
            Publish {
                topic: "a/b",
                qos: QoS::AtLeastOnce,
                packet_id: Some(10),
                dup: true,
                retain: true,
                payload: b"hi",
            }
        );
        assert!(core::ptr::eq(publish.payload.as_ptr(), &bytes[9]));
        assert_eq!(
            decoded(&[0x30, 0x03, 0x00, 0x01, b't']),
            Ok(Packet::Publish(publish_qos0_t()))
        );
    }

    fn publish_qos0_t() -> Publish<'static> {
        publish("t", QoS::AtMostOnce, None, b"")
    }

    #[test]
    fn malformed_publishes() {
        let flags = |flags| DecodeError::InvalidFlags {
            packet: PacketType::Publish,
            flags,
        };
        // QoS 3, and DUP at QoS 0.
        assert_eq!(decoded(&[0x36, 0x03, 0x00, 0x01, b't']), Err(flags(0x06)));
        assert_eq!(decoded(&[0x38, 0x03, 0x00, 0x01, b't']), Err(flags(0x08)));
        // Topic longer than the packet, and a QoS 1 packet without room for its id.
        assert_eq!(
            decoded(&[0x30, 0x03, 0x00, 0x05, b't']),
            Err(DecodeError::InvalidLength {
                packet: PacketType::Publish,
                len: 3
            })
        );
        assert_eq!(
            decoded(&[0x32, 0x04, 0x00, 0x01, b't', 0x00]),
            Err(DecodeError::InvalidLength {
                packet: PacketType::Publish,
                len: 4
            })
        );
        assert_eq!(
            decoded(&[0x32, 0x05, 0x00, 0x01, b't', 0x00, 0x00]),
            Err(DecodeError::ZeroPacketId)
        );
        for topic in [&[0xFF][..], b"a+", b"#", b"\0", b""] {
            let mut bytes = std::vec![0x30, 2 + topic.len() as u8, 0x00, topic.len() as u8];
            bytes.extend_from_slice(topic);
            assert_eq!(decoded(&bytes), Err(DecodeError::InvalidTopic), "{topic:?}");
        }
    }

    #[test]
    fn acks_and_pings() {
        assert_eq!(
            decoded(&[0x40, 0x02, 0x00, 0x0A]),
            Ok(Packet::PubAck { packet_id: 10 })
        );
        assert_eq!(
            decoded(&[0x40, 0x02, 0x00, 0x00]),
            Err(DecodeError::ZeroPacketId)
        );
        // An MQTT 5 style PUBACK with a reason code is malformed in 3.1.1.
        assert_eq!(
            decoded(&[0x40, 0x03, 0x00, 0x0A, 0x87]),
            Err(DecodeError::InvalidLength {
                packet: PacketType::PubAck,
                len: 3
            })
        );
        assert_eq!(
            decoded(&[0x90, 0x03, 0x00, 0x01, 0x01]),
            Ok(Packet::SubAck {
                packet_id: 1,
                code: SubAckCode::Granted(QoS::AtLeastOnce)
            })
        );
        assert_eq!(
            decoded(&[0x90, 0x03, 0x00, 0x01, 0x80]),
            Ok(Packet::SubAck {
                packet_id: 1,
                code: SubAckCode::Failure
            })
        );
        assert_eq!(
            decoded(&[0x90, 0x03, 0x00, 0x01, 0x03]),
            Err(DecodeError::InvalidSubAckCode(3))
        );
        assert_eq!(
            decoded(&[0x90, 0x04, 0x00, 0x01, 0x01, 0x01]),
            Err(DecodeError::InvalidLength {
                packet: PacketType::SubAck,
                len: 4
            })
        );
        assert_eq!(decoded(&[0xD0, 0x00]), Ok(Packet::PingResp));
        assert_eq!(
            decoded(&[0xD0, 0x01, 0x00]),
            Err(DecodeError::InvalidLength {
                packet: PacketType::PingResp,
                len: 1
            })
        );
    }

    #[test]
    fn unknown_unexpected_and_truncated_packets() {
        assert_eq!(
            decoded(&[0x00, 0x00]),
            Err(DecodeError::UnknownPacketType(0))
        );
        assert_eq!(
            decoded(&[0xF0, 0x00]),
            Err(DecodeError::UnknownPacketType(15))
        );
        assert_eq!(
            decoded(&[0xC0, 0x00]),
            Err(DecodeError::UnexpectedPacketType(PacketType::PingReq))
        );
        assert_eq!(
            decoded(&[0x50, 0x02, 0x00, 0x01]),
            Err(DecodeError::UnexpectedPacketType(PacketType::PubRec))
        );
        for truncated in [&[][..], &[0x32], &[0x32, 0x80], &[0x32, 0x09, 0x00, 0x03]] {
            assert_eq!(
                decoded(truncated),
                Err(DecodeError::Truncated),
                "{truncated:02x?}"
            );
        }
        // Decoding takes only the first packet of a longer input.
        assert_eq!(decode(&[0xD0, 0x00, 0xD0, 0x00]), Ok((Packet::PingResp, 2)));
    }

    #[test]
    fn the_reader_reassembles_split_and_batched_packets() {
        let stream = [
            0x20, 0x02, 0x00, 0x00, // CONNACK
            0x40, 0x02, 0x00, 0x01, // PUBACK 1
            0x30, 0x03, 0x00, 0x01, b't', // PUBLISH t
            0xD0, 0x00, // PINGRESP
        ];
        let mut reader = PacketReader::<16>::new();
        let mut seen = 0;
        for byte in stream {
            assert_eq!(reader.feed(&[byte]), 1);
            while let Some(packet) = reader.next_packet().expect("valid stream") {
                seen += 1;
                if seen == 3 {
                    assert_eq!(packet, Packet::Publish(publish_qos0_t()));
                }
            }
        }
        assert_eq!((seen, reader.pending()), (4, 0));

        reader.feed(&stream);
        assert_eq!(
            reader.next_packet(),
            Ok(Some(Packet::ConnAck {
                session_present: false,
                result: Ok(())
            }))
        );
        assert_eq!(
            reader.next_packet(),
            Ok(Some(Packet::PubAck { packet_id: 1 }))
        );
        assert_eq!(reader.next_raw(), Ok(Some(&stream[8..13])));
        assert_eq!(reader.next_packet(), Ok(Some(Packet::PingResp)));
        assert_eq!(reader.next_packet(), Ok(None));
    }

    #[test]
    fn the_reader_refuses_oversize_and_garbage_until_reset() {
        // A 17-byte packet in a 16-byte reader: refused once its header is in.
        let mut reader = PacketReader::<16>::new();
        reader.feed(&[0x30, 0x0F, 0x00]);
        let too_large = DecodeError::PacketTooLarge {
            len: 17,
            capacity: 16,
        };
        assert_eq!(reader.next_packet(), Err(too_large));
        assert_eq!(reader.next_raw(), Err(too_large), "the error sticks");
        reader.reset();
        // Exactly 16 bytes fits.
        let mut full = [0u8; 16];
        full[..4].copy_from_slice(&[0x30, 0x0E, 0x00, 0x01]);
        full[4] = b't';
        assert_eq!(reader.feed(&full), 16);
        assert!(
            matches!(reader.next_packet(), Ok(Some(Packet::Publish(p))) if p.payload.len() == 11)
        );

        reader.feed(&[0xF3]);
        assert_eq!(
            reader.next_packet(),
            Err(DecodeError::UnknownPacketType(15))
        );
        reader.reset();
        reader.feed(&[0x20, 0x03, 0x00, 0x00, 0x00]);
        assert!(matches!(
            reader.next_packet(),
            Err(DecodeError::InvalidLength { .. })
        ));
        assert!(reader.next_packet().is_err());
    }

    proptest! {
        // Failures are reported with their minimal input; a regressions file in the source
        // tree would only go stale.
        #![proptest_config(ProptestConfig {
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        #[test]
        fn decoding_any_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode(&bytes);
            let _ = packet_len(&bytes);
            let _ = decode_remaining_length(&bytes);
        }

        #[test]
        fn the_reader_never_panics_on_any_byte_stream(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..12),
        ) {
            let mut reader = PacketReader::<32>::new();
            let mut failed = false;
            for chunk in &chunks {
                let mut rest = &chunk[..];
                while !rest.is_empty() {
                    let taken = reader.feed(rest);
                    rest = &rest[taken..];
                    loop {
                        match reader.next_packet() {
                            Ok(Some(_)) => prop_assert!(!failed),
                            Ok(None) => break,
                            Err(_) => {
                                failed = true;
                                break;
                            }
                        }
                    }
                    if taken == 0 {
                        // Full and stuck only when the reader has failed.
                        prop_assert!(failed);
                        break;
                    }
                }
            }
        }

        #[test]
        fn publishes_round_trip(
            topic in "[a-z0-9/]{1,20}",
            payload in proptest::collection::vec(any::<u8>(), 0..300),
            qos1 in any::<bool>(),
            packet_id in 1..=u16::MAX,
            dup in any::<bool>(),
            retain in any::<bool>(),
        ) {
            let sent = Publish {
                topic: &topic,
                qos: if qos1 { QoS::AtLeastOnce } else { QoS::AtMostOnce },
                packet_id: qos1.then_some(packet_id),
                dup: dup && qos1,
                retain,
                payload: &payload,
            };
            let mut buf = [0u8; 400];
            let bytes = encode_publish(&sent, &mut buf).expect("fits");
            prop_assert_eq!(decode(bytes), Ok((Packet::Publish(sent), bytes.len())));
        }

        #[test]
        fn any_split_of_a_valid_stream_yields_the_same_packets(
            payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 1..6),
            cuts in proptest::collection::vec(1usize..97, 1..20),
        ) {
            let mut stream = Vec::new();
            for (i, payload) in payloads.iter().enumerate() {
                let mut buf = [0u8; 256];
                let id = u16::try_from(i + 1).expect("few");
                let publish = publish("n/up", QoS::AtLeastOnce, Some(id), payload);
                stream.extend_from_slice(encode_publish(&publish, &mut buf).expect("fits"));
                stream.extend_from_slice(&puback(id));
            }
            let mut reader = PacketReader::<256>::new();
            let mut seen = Vec::new();
            let mut rest = &stream[..];
            let mut cut = cuts.iter().cycle();
            while !rest.is_empty() {
                let n = (*cut.next().expect("cycle")).min(rest.len());
                // The reader may take less than offered while a partial packet fills it.
                let taken = reader.feed(&rest[..n]);
                prop_assert!(taken > 0);
                rest = &rest[taken..];
                while let Some(packet) = reader.next_packet().expect("valid") {
                    seen.push(match packet {
                        Packet::Publish(p) => (p.packet_id, p.payload.to_vec()),
                        Packet::PubAck { packet_id } => (Some(packet_id), Vec::new()),
                        other => panic!("unexpected {other:?}"),
                    });
                }
            }
            let expected: Vec<_> = payloads
                .iter()
                .enumerate()
                .flat_map(|(i, p)| {
                    let id = Some(u16::try_from(i + 1).expect("few"));
                    [(id, p.clone()), (id, Vec::new())]
                })
                .collect();
            prop_assert_eq!(seen, expected);
        }
    }
}
