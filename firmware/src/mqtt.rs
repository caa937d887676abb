//! A small MQTT 3.1.1 client for sensor nodes: no heap, no `std`, QoS 0 and 1.
//!
//! Data path position: the node's uplink. Node frames ([`protocol::codec`]) are the payloads
//! of QoS 1 PUBLISHes on `demolab/v1/node/{id}/up`; commands arrive on `.../down`
//! ([`protocol::node_topic`]).
//!
//! Three layers, each usable alone:
//! * [`packet`]: encoders and decoders of the control packets, and a [`PacketReader`] that
//!   reassembles them from a byte stream. Pure functions over caller buffers.
//! * [`session`]: [`MqttSession`], the sans-IO protocol state (packet ids, in-flight QoS 1
//!   messages and their resend, keep-alive, response timeouts).
//! * [`client`]: [`MqttClient`], a thin blocking shell that drives both over any
//!   `embedded_io::{Read, Write}` transport.
//!
//! MQTT 3.1.1 rather than 5 because every broker speaks it and its packets are small enough to
//! encode by hand; the available no_std crates either speak only MQTT 5 or pull in more
//! machinery than a node needs.
//!
//! ```
//! use demolab_firmware::mqtt::{packet, MqttSession, Event};
//! let mut session = MqttSession::<4, 256>::new(packet::Connect::new("node", 60));
//! let mut buf = [0u8; 64];
//! let connect = session.connect(0, &mut buf).unwrap();
//! assert_eq!(connect[0], 0x10);
//! let (connack, _) = packet::decode(&[0x20, 0x02, 0x00, 0x00]).unwrap();
//! assert_eq!(session.on_packet(connack), Ok(Event::Connected { session_present: false }));
//! let (id, publish) = session.publish_qos1("a/b", b"hi", 10).unwrap();
//! assert_eq!(publish, [0x32, 0x09, 0x00, 0x03, b'a', b'/', b'b', 0x00, 0x01, b'h', b'i']);
//! let (puback, _) = packet::decode(&[0x40, 0x02, 0x00, 0x01]).unwrap();
//! assert_eq!(session.on_packet(puback), Ok(Event::Acked(id)));
//! assert_eq!(session.in_flight(), 0);
//! ```

pub mod client;
pub mod packet;
pub mod session;

pub use client::{ClientError, MqttClient};
pub use packet::{DecodeError, EncodeError, Packet, PacketReader, QoS};
pub use session::{Event, Message, MqttSession, SessionError, State};
