//! Golden byte vectors: one fixed frame of every kind and its exact encoding.
//!
//! Every crate's tests use these, so a change to the byte layout breaks loudly in all of them at
//! once instead of silently desynchronising firmware and gateway.

use heapless::Vec;

use crate::frame::*;
use crate::ids::{MachineId, MetricName, NodeId};
use crate::unit::Unit;

/// The node id used by every golden frame.
pub const NODE: NodeId = NodeId(0x00c0_ffee_0000_0001);

fn name(value: &str) -> MetricName {
    MetricName::new(value).unwrap_or_else(|_| unreachable!("golden names are valid"))
}

fn descriptor(index: u8, metric: &str, unit: Unit, period_ms: u32) -> MetricDescriptor {
    MetricDescriptor {
        index,
        name: name(metric),
        unit,
        period_ms,
    }
}

/// A CNC mill node's hello: four metrics.
pub fn hello() -> Frame {
    let mut metrics = Vec::new();
    for d in [
        descriptor(0, "spindle.power_w", Unit::Watt, 1000),
        descriptor(1, "spindle.vibration_rms", Unit::MillimetrePerSecond, 1000),
        descriptor(2, "coolant.temperature_c", Unit::Celsius, 1000),
        descriptor(3, "state.code", Unit::StateCode, 1000),
    ] {
        let _ = metrics.push(d);
    }
    Frame::Hello(Hello {
        node: NODE,
        firmware: FirmwareVersion {
            major: 0,
            minor: 1,
            patch: 0,
        },
        boot: 0x0b00_7001,
        machine: MachineId::new("mill-1").ok(),
        metrics,
    })
}

/// One sampling instant of that node.
pub fn samples() -> Frame {
    let mut readings = Vec::new();
    for r in [
        Reading {
            index: 0,
            value: 5321.5,
        },
        Reading {
            index: 1,
            value: 2.25,
        },
        Reading {
            index: 2,
            value: 24.5,
        },
        Reading {
            index: 3,
            value: 2.0,
        },
    ] {
        let _ = readings.push(r);
    }
    Frame::Samples(Samples {
        node: NODE,
        seq: 42,
        uptime_ms: 123_456,
        readings,
    })
}

/// A sensor fault event.
pub fn event() -> Frame {
    Frame::Event(Event {
        node: NODE,
        uptime_ms: 99_000,
        kind: EventKind::SensorFault { index: 1, code: 3 },
    })
}

/// A set-period command.
pub fn command() -> Frame {
    Frame::Command(Command {
        node: NODE,
        id: 7,
        kind: CommandKind::SetPeriod {
            index: None,
            period_ms: 500,
        },
    })
}

/// The ack of that command.
pub fn ack() -> Frame {
    Frame::Ack(Ack {
        node: NODE,
        command_id: 7,
        result: AckResult::Ok,
    })
}

/// Encoding of [`hello()`].
pub const HELLO: &[u8] = &[
    1, 0, 129, 128, 128, 128, 224, 253, 191, 96, 0, 1, 0, 129, 224, 129, 88, 1, 6, 109, 105, 108,
    108, 45, 49, 4, 0, 15, 115, 112, 105, 110, 100, 108, 101, 46, 112, 111, 119, 101, 114, 95, 119,
    1, 232, 7, 1, 21, 115, 112, 105, 110, 100, 108, 101, 46, 118, 105, 98, 114, 97, 116, 105, 111,
    110, 95, 114, 109, 115, 7, 232, 7, 2, 21, 99, 111, 111, 108, 97, 110, 116, 46, 116, 101, 109,
    112, 101, 114, 97, 116, 117, 114, 101, 95, 99, 3, 232, 7, 3, 10, 115, 116, 97, 116, 101, 46,
    99, 111, 100, 101, 17, 232, 7, 152, 227,
];
/// Encoding of [`samples()`].
pub const SAMPLES: &[u8] = &[
    1, 1, 129, 128, 128, 128, 224, 253, 191, 96, 42, 192, 196, 7, 4, 0, 0, 76, 166, 69, 1, 0, 0,
    16, 64, 2, 0, 0, 196, 65, 3, 0, 0, 0, 64, 254, 100,
];
/// Encoding of [`event()`].
pub const EVENT: &[u8] = &[
    1, 2, 129, 128, 128, 128, 224, 253, 191, 96, 184, 133, 6, 0, 1, 3, 29, 210,
];
/// Encoding of [`command()`].
pub const COMMAND: &[u8] = &[
    1, 3, 129, 128, 128, 128, 224, 253, 191, 96, 7, 0, 0, 244, 3, 41, 169,
];
/// Encoding of [`ack()`].
pub const ACK: &[u8] = &[1, 4, 129, 128, 128, 128, 224, 253, 191, 96, 7, 0, 167, 6];

/// Every golden frame with its bytes.
pub fn all() -> [(Frame, &'static [u8]); 5] {
    [
        (hello(), HELLO),
        (samples(), SAMPLES),
        (event(), EVENT),
        (command(), COMMAND),
        (ack(), ACK),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec;

    #[test]
    fn golden_bytes_are_what_the_encoder_writes() {
        for (frame, bytes) in all() {
            let mut buf = [0u8; codec::MAX_FRAME_LEN];
            let encoded = codec::encode(&frame, &mut buf).expect("fits");
            assert_eq!(encoded, bytes, "{} changed: {encoded:?}", frame.kind());
        }
    }
}
