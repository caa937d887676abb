//! The firmware's MQTT 3.1.1 packet decoder and streaming reader: a node runs them on whatever
//! the network sends it.

use firmware::mqtt::packet::{self, DecodeError, Packet, PacketReader};

/// The firmware client's receive buffer (`MqttClient`'s default `MAX_PACKET`).
const CLIENT_BUFFER: usize = 1088;

/// What one packet in a stream turns into, owned, for comparing two ways of reading.
type Outcome = Result<String, DecodeError>;

/// Reads `stream` packet by packet with the one-shot decoder: the reference the streaming
/// reader must agree with. Stops at the first error or where the stream runs out.
fn reference<const N: usize>(stream: &[u8]) -> Vec<Outcome> {
    let mut out = Vec::new();
    let mut rest = stream;
    loop {
        let total = match packet::packet_len(rest) {
            Err(err) => {
                out.push(Err(err));
                return out;
            }
            Ok(None) => return out,
            Ok(Some(total)) if total > N => {
                out.push(Err(DecodeError::PacketTooLarge {
                    len: total,
                    capacity: N,
                }));
                return out;
            }
            Ok(Some(total)) if total > rest.len() => return out,
            Ok(Some(total)) => total,
        };
        match packet::decode(&rest[..total]) {
            Ok((packet, used)) => {
                assert_eq!(used, total, "decode and packet_len agree on the size");
                out.push(Ok(format!("{packet:?}")));
            }
            Err(err) => {
                out.push(Err(err));
                return out;
            }
        }
        rest = &rest[total..];
    }
}

/// Feeds `stream` to a `PacketReader<N>` in chunks of the seeded sizes.
fn streamed<const N: usize>(stream: &[u8], seed: u8) -> Vec<Outcome> {
    let mut reader = PacketReader::<N>::new();
    let mut out = Vec::new();
    let mut rest = stream;
    let mut step = usize::from(seed);
    loop {
        // Drain every complete packet first.
        loop {
            match reader.next_packet() {
                Ok(Some(packet)) => out.push(Ok(format!("{packet:?}"))),
                Ok(None) => break,
                Err(err) => {
                    // Errors are sticky: the stream cannot be trusted after one.
                    assert_eq!(reader.next_packet().map(|p| p.is_some()), Err(err));
                    out.push(Err(err));
                    return out;
                }
            }
        }
        assert!(
            reader.pending() <= N,
            "the reader never holds more than N bytes"
        );
        if rest.is_empty() {
            return out;
        }
        let want = (step % 61 + 1).min(rest.len());
        let taken = reader.feed(&rest[..want]);
        // A full buffer must come with an error, or the connection would hang for good.
        if taken == 0 {
            let err = reader
                .next_packet()
                .map(|p| p.is_some())
                .expect_err("a reader that takes no bytes reports why");
            out.push(Err(err));
            return out;
        }
        rest = &rest[taken..];
        step = step.wrapping_mul(13).wrapping_add(5);
    }
}

/// The packet decoder and the streaming reader. Checks: a decoded PUBLISH encodes back to the
/// exact bytes it came from; the reader (two buffer sizes, arbitrary chunking) yields what the
/// one-shot decoder yields; its errors are sticky; it never stalls with a full buffer.
pub fn mqtt_packets(data: &[u8]) {
    let Some((&seed, stream)) = data.split_first() else {
        return;
    };
    if let Ok((packet, used)) = packet::decode(stream) {
        assert!(used <= stream.len());
        if let Packet::Publish(publish) = packet {
            let mut buf = vec![0u8; used];
            let encoded = packet::encode_publish(&publish, &mut buf)
                .expect("a decoded PUBLISH encodes into as many bytes");
            assert_eq!(
                encoded,
                &stream[..used],
                "PUBLISH round-trips byte for byte"
            );
        }
    }
    assert_eq!(
        streamed::<CLIENT_BUFFER>(stream, seed),
        reference::<CLIENT_BUFFER>(stream)
    );
    assert_eq!(streamed::<16>(stream, seed), reference::<16>(stream));
}
