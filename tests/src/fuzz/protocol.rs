//! Node frames, the COBS byte stream, Sparkplug payloads and topics.

use prost::Message;
use protocol::cobs::{
    FrameDecoder, MAX_WIRE_LEN, cobs_decode_in_place, cobs_encode, encode_framed, max_encoded_len,
};
use protocol::codec::{self, MAX_FRAME_LEN};
use protocol::sparkplug::{DataType, Payload, Topic, metric_value_f64};
use protocol::{DecodeError, Frame, node_topic};

const CRC: crc::Crc<u16> = crc::Crc::<u16>::new(&crc::CRC_16_IBM_3740);

/// The frame's canonical bytes: frames hold floats, so NaN makes `==` on frames useless and the
/// encoding is compared instead.
fn encoded(frame: &Frame) -> Vec<u8> {
    let mut buf = [0u8; MAX_FRAME_LEN];
    codec::encode(frame, &mut buf)
        .expect("a frame that decoded fits the frame size when encoded again")
        .to_vec()
}

/// A decode result in comparable form.
fn comparable(result: &Result<Frame, DecodeError>) -> Result<Vec<u8>, DecodeError> {
    result.as_ref().map(encoded).map_err(Clone::clone)
}

/// Node frame decoder. The first byte picks the mode: odd means "reseal", i.e. replace the last
/// two bytes by the right CRC so the input reaches the postcard body and the contract checks
/// (random bytes almost never pass a CRC).
pub fn frame(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut bytes = rest.to_vec();
    if mode & 1 == 1 && bytes.len() >= 2 {
        let body = bytes.len() - 2;
        let crc = CRC.checksum(&bytes[..body]);
        bytes[body..].copy_from_slice(&crc.to_le_bytes());
    }
    match codec::decode(&bytes) {
        Ok(frame) => {
            let again = encoded(&frame);
            let round = codec::decode(&again).expect("a re-encoded frame decodes");
            assert_eq!(encoded(&round), again, "re-encoding is stable");
            assert!(!frame.kind().is_empty());
        }
        Err(err) => {
            assert!(!err.reason().is_empty());
            assert!(!err.to_string().is_empty());
        }
    }
}

/// The streaming COBS frame reader (gateway serial source and node serial link both use it).
///
/// The first two bytes seed the chunk sizes the rest is fed in. Checks: chunking does not change
/// the results; at most one result per delimiter; every decoded frame, framed again, decodes
/// alone to the same frame; plain COBS round-trips the input.
pub fn cobs_stream(data: &[u8]) {
    let (seed, stream) = match data {
        [a, b, rest @ ..] => (u16::from_le_bytes([*a, *b]), rest),
        _ => (1, data),
    };

    let mut byte_wise = Vec::new();
    let mut decoder = FrameDecoder::new();
    for &byte in stream {
        if let Some(result) = decoder.push(byte) {
            byte_wise.push(comparable(&result));
        }
    }

    let mut chunked = Vec::new();
    let mut decoder = FrameDecoder::new();
    let mut rest = stream;
    let mut step = usize::from(seed);
    while !rest.is_empty() {
        let take = (step % 97 + 1).min(rest.len());
        let (chunk, tail) = rest.split_at(take);
        decoder.feed(chunk, |result| chunked.push(comparable(&result)));
        rest = tail;
        step = step.wrapping_mul(31).wrapping_add(7);
    }
    assert_eq!(byte_wise, chunked, "chunk boundaries changed the frames");

    let delimiters = stream.iter().filter(|&&b| b == 0).count();
    assert!(
        byte_wise.len() <= delimiters,
        "more results than delimiters"
    );

    for result in &byte_wise {
        match result {
            Ok(bytes) => {
                let frame = codec::decode(bytes).expect("encoded from a decoded frame");
                let mut wire = [0u8; MAX_WIRE_LEN];
                let framed = encode_framed(&frame, &mut wire).expect("a decoded frame re-frames");
                assert_eq!(framed.last(), Some(&0));
                assert!(!framed[..framed.len() - 1].contains(&0));
                let mut fresh = FrameDecoder::new();
                let mut again = Vec::new();
                fresh.feed(framed, |r| again.push(comparable(&r)));
                assert_eq!(
                    again,
                    [Ok(bytes.clone())],
                    "a re-framed frame decodes alone"
                );
            }
            Err(DecodeError::Oversize { len }) => assert!(*len > 0),
            Err(err) => assert!(!err.reason().is_empty()),
        }
    }

    // Plain COBS: encoding never produces a zero and decodes back to the input.
    let mut enc = vec![0u8; max_encoded_len(stream.len())];
    let n = cobs_encode(stream, &mut enc).expect("worst-case size is enough");
    assert!(!enc[..n].contains(&0));
    let mut dec = enc[..n].to_vec();
    let m = cobs_decode_in_place(&mut dec).expect("own encoding decodes");
    assert_eq!(&dec[..m], stream);
    // Decoding arbitrary bytes in place never grows them.
    let mut raw = stream.to_vec();
    if let Ok(len) = cobs_decode_in_place(&mut raw) {
        assert!(len <= stream.len());
    }
}

/// Sparkplug B payload decoder (prost). Checks that a decoded payload re-encodes to bytes that
/// decode and encode to the same bytes, and that value conversion never panics.
pub fn sparkplug_payload(data: &[u8]) {
    let Ok(payload) = Payload::decode(data) else {
        return;
    };
    let bytes = payload.encode_to_vec();
    let again = Payload::decode(bytes.as_slice()).expect("a re-encoded payload decodes");
    assert_eq!(again.encode_to_vec(), bytes, "re-encoding is stable");
    for metric in &payload.metrics {
        let datatype = metric.datatype.and_then(DataType::from_u32);
        let _ = metric_value_f64(metric, datatype);
        let _ = metric_value_f64(metric, None);
    }
}

/// Sparkplug topic parser, node topic parser and the broker's topic-filter matching. A parsed
/// Sparkplug topic prints back exactly as it came in.
pub fn sparkplug_topic(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Topic::parse(text) {
        Ok(topic) => {
            let printed = topic.to_string();
            assert_eq!(printed, text, "a parsed topic prints as it came");
            assert_eq!(Topic::parse(&printed), Ok(topic));
        }
        Err(err) => assert!(!err.to_string().is_empty()),
    }
    if let Some((node, direction)) = node_topic::parse(text) {
        let formatted = node_topic::format(node, direction);
        assert_eq!(node_topic::parse(&formatted), Some((node, direction)));
    }
    // The broker's ACL matching: `filter\0topic`.
    if let Some((filter, topic)) = text.split_once('\0') {
        let _ = broker::access::topic::topic_matches(filter, topic);
        let _ = broker::access::topic::filter_covered_by(filter, topic);
        let _ = broker::access::topic::unshare(filter);
    }
}
