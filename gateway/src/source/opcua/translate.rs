//! Sans-IO: data change notifications in, node frames out.
//!
//! Each configured machine is a virtual node. A change becomes one `Samples` frame with one
//! reading; `seq` counts accepted changes per machine. The server's source timestamp orders
//! changes per variable: a change not newer than the last one taken is a redelivery (a
//! subscription recreated after a reconnect reports every variable's current value again) and
//! is dropped and counted, never forwarded twice.

use opcua::types::{DataValue, DateTime, Variant};
use protocol::{FirmwareVersion, Frame, Hello, MetricDescriptor, NodeId, Reading, Samples, Unit};

use super::config::{OpcUaServer, opcua_node_id};
use crate::stats::DropReason;

/// 100 ns ticks between 1601-01-01 (the OPC UA epoch) and 1970-01-01.
const UNIX_EPOCH_TICKS: i64 = 116_444_736_000_000_000;

/// What became of one change.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    /// Frames to hand to the pipeline, in order (a `Hello` first when one is due).
    Frames {
        frames: Vec<Frame>,
        /// The change's source (else server) timestamp, Unix ms: when the machine measured
        /// it, which is what history and alarms should see, not when the gateway heard of it.
        taken_at_ms: Option<u64>,
    },
    /// Not a sample, for this reason.
    Dropped(DropReason),
}

#[derive(Debug)]
struct MachineState {
    node: NodeId,
    hello: Hello,
    /// The last `Samples::seq` sent; 0 before the first.
    seq: u32,
    hello_due: bool,
    /// Per metric, the source timestamp (ticks) of the last change taken.
    last: Vec<Option<i64>>,
}

/// The translation state of one server's machines.
#[derive(Debug)]
pub struct Translator {
    machines: Vec<MachineState>,
    /// Unix ms the virtual nodes "booted": `uptime_ms` is the source time since then.
    started_ms: u64,
}

impl Translator {
    /// State for `server`'s machines, booted at `now_ms` with boot id `boot`.
    pub fn new(server: &OpcUaServer, boot: u32, now_ms: u64) -> Self {
        let machines = server
            .machines
            .iter()
            .map(|m| {
                let node = opcua_node_id(&server.name, &m.machine);
                let mut hello = Hello {
                    node,
                    firmware: gateway_version(),
                    boot,
                    machine: Some(m.machine.clone()),
                    metrics: Default::default(),
                };
                for (index, metric) in (0u8..).zip(&m.metrics) {
                    let descriptor = MetricDescriptor {
                        index,
                        name: metric.metric.clone(),
                        // Validated before the client starts.
                        unit: Unit::from_symbol(&metric.unit).unwrap_or(Unit::Dimensionless),
                        // Changes arrive at most once per publishing interval, batched.
                        period_ms: u32::try_from(server.publishing_interval_ms).unwrap_or(u32::MAX),
                    };
                    if hello.metrics.push(descriptor).is_err() {
                        break;
                    }
                }
                MachineState {
                    node,
                    hello,
                    seq: 0,
                    hello_due: true,
                    last: vec![None; m.metrics.len()],
                }
            })
            .collect();
        Self {
            machines,
            started_ms: now_ms,
        }
    }

    /// Announce every machine again before its next sample (after a reconnect, as a Modbus
    /// device does per connection; `seq` keeps counting).
    pub fn reconnected(&mut self) {
        for machine in &mut self.machines {
            machine.hello_due = true;
        }
    }

    /// The virtual node ids, in machine order.
    pub fn nodes(&self) -> Vec<NodeId> {
        self.machines.iter().map(|m| m.node).collect()
    }

    /// One data change of metric `metric` of machine `machine`, received at `now_ms`.
    pub fn change(
        &mut self,
        machine: usize,
        metric: usize,
        value: &DataValue,
        now_ms: u64,
    ) -> Outcome {
        let started_ms = self.started_ms;
        let Some(state) = self.machines.get_mut(machine) else {
            return Outcome::Dropped(DropReason::UnknownMetric);
        };
        let (Some(last), Ok(index)) = (state.last.get_mut(metric), u8::try_from(metric)) else {
            return Outcome::Dropped(DropReason::UnknownMetric);
        };
        if value.status.is_some_and(|s| s.is_bad()) {
            return Outcome::Dropped(DropReason::OpcUaBadStatus);
        }
        let Some(number) = value.value.as_ref().and_then(numeric) else {
            return Outcome::Dropped(DropReason::OpcUaNotNumeric);
        };
        let ticks = value
            .source_timestamp
            .or(value.server_timestamp)
            .map(|t| t.ticks());
        if let (Some(ticks), Some(previous)) = (ticks, *last)
            && ticks <= previous
        {
            return Outcome::Dropped(DropReason::OpcUaDuplicate);
        }
        if ticks.is_some() {
            *last = ticks;
        }
        let taken_ms = ticks.map_or(now_ms, ticks_to_unix_ms);
        let mut frames = Vec::with_capacity(2);
        if state.seq == u32::MAX {
            // The pipeline takes a Hello as a reboot: wrap behind a new boot.
            state.seq = 0;
            state.hello.boot = state.hello.boot.wrapping_add(1);
            state.hello_due = true;
        }
        if state.hello_due {
            frames.push(Frame::Hello(state.hello.clone()));
            state.hello_due = false;
        }
        state.seq += 1;
        let mut samples = Samples {
            node: state.node,
            seq: state.seq,
            uptime_ms: taken_ms.saturating_sub(started_ms),
            readings: Default::default(),
        };
        // One reading always fits.
        let _ = samples.readings.push(Reading {
            index,
            value: number as f32,
        });
        frames.push(Frame::Samples(samples));
        Outcome::Frames {
            frames,
            taken_at_ms: ticks.map(ticks_to_unix_ms),
        }
    }
}

/// A variant as a number: the numeric types and booleans (0 or 1).
fn numeric(value: &Variant) -> Option<f64> {
    match value {
        Variant::Boolean(b) => Some(f64::from(u8::from(*b))),
        other => other.as_f64(),
    }
}

/// OPC UA ticks as Unix milliseconds (0 before 1970).
fn ticks_to_unix_ms(ticks: i64) -> u64 {
    u64::try_from((ticks - UNIX_EPOCH_TICKS) / 10_000).unwrap_or(0)
}

/// The Unix ms of an OPC UA time, for tests and logs.
pub fn unix_ms(time: &DateTime) -> u64 {
    ticks_to_unix_ms(time.ticks())
}

/// A virtual node's "firmware" is the gateway that runs it.
fn gateway_version() -> FirmwareVersion {
    let part = |s: &str| s.parse().unwrap_or(0);
    FirmwareVersion {
        major: part(env!("CARGO_PKG_VERSION_MAJOR")),
        minor: part(env!("CARGO_PKG_VERSION_MINOR")),
        patch: part(env!("CARGO_PKG_VERSION_PATCH")),
    }
}

#[cfg(test)]
mod tests {
    use opcua::types::StatusCode;

    use super::super::config::{OpcUaMachine, OpcUaMetric};
    use super::*;

    fn server() -> OpcUaServer {
        let metric = |node: &str, name: &str, unit: &str| OpcUaMetric {
            node_id: node.into(),
            metric: name.parse().expect("valid"),
            unit: unit.into(),
        };
        OpcUaServer::new(
            "cell",
            "opc.tcp://127.0.0.1:4840/",
            vec![OpcUaMachine {
                machine: "cnc-7".parse().expect("valid"),
                metrics: vec![
                    metric("ns=2;s=Speed", "spindle.speed_rpm", "rpm"),
                    metric("ns=2;s=Count", "process.count", "count"),
                ],
            }],
        )
    }

    fn at(ms: i64, value: Variant) -> DataValue {
        let time = DateTime::from(UNIX_EPOCH_TICKS + ms * 10_000);
        DataValue {
            value: Some(value),
            status: Some(StatusCode::Good),
            source_timestamp: Some(time),
            server_timestamp: Some(time),
            ..Default::default()
        }
    }

    fn seqs(outcome: &Outcome) -> Vec<(&'static str, u32)> {
        match outcome {
            Outcome::Frames { frames, .. } => frames
                .iter()
                .map(|f| match f {
                    Frame::Hello(_) => ("hello", 0),
                    Frame::Samples(s) => ("samples", s.seq),
                    _ => ("other", 0),
                })
                .collect(),
            Outcome::Dropped(_) => Vec::new(),
        }
    }

    #[test]
    fn the_first_change_is_announced_and_later_ones_count_up() {
        let mut t = Translator::new(&server(), 7, 1_000);
        assert_eq!(
            seqs(&t.change(0, 0, &at(2_000, Variant::Double(1.0)), 0)),
            [("hello", 0), ("samples", 1)]
        );
        let outcome = t.change(0, 1, &at(2_500, Variant::UInt32(2)), 0);
        assert_eq!(seqs(&outcome), [("samples", 2)]);
        let Outcome::Frames {
            frames,
            taken_at_ms,
        } = outcome
        else {
            panic!("frames expected");
        };
        assert_eq!(taken_at_ms, Some(2_500), "the source timestamp, Unix ms");
        let Frame::Samples(s) = &frames[0] else {
            panic!("samples expected");
        };
        assert_eq!(s.uptime_ms, 1_500, "source time since the virtual boot");
        assert_eq!(
            s.readings[0],
            Reading {
                index: 1,
                value: 2.0
            }
        );
    }

    #[test]
    fn a_redelivered_or_older_value_is_a_counted_duplicate() {
        let mut t = Translator::new(&server(), 7, 0);
        let first = at(2_000, Variant::Double(1.0));
        assert!(matches!(t.change(0, 0, &first, 0), Outcome::Frames { .. }));
        assert_eq!(
            t.change(0, 0, &first, 0),
            Outcome::Dropped(DropReason::OpcUaDuplicate)
        );
        assert_eq!(
            t.change(0, 0, &at(1_000, Variant::Double(0.5)), 0),
            Outcome::Dropped(DropReason::OpcUaDuplicate)
        );
        // The other variable has its own history.
        assert!(matches!(
            t.change(0, 1, &at(1_000, Variant::Int64(3)), 0),
            Outcome::Frames { .. }
        ));
    }

    #[test]
    fn bad_values_and_text_are_counted_not_forwarded() {
        let mut t = Translator::new(&server(), 7, 0);
        let mut bad = at(2_000, Variant::Double(1.0));
        bad.status = Some(StatusCode::BadCommunicationError);
        assert_eq!(
            t.change(0, 0, &bad, 0),
            Outcome::Dropped(DropReason::OpcUaBadStatus)
        );
        assert_eq!(
            t.change(0, 0, &at(2_000, Variant::from("text")), 0),
            Outcome::Dropped(DropReason::OpcUaNotNumeric)
        );
        assert_eq!(
            t.change(3, 0, &at(2_000, Variant::Double(1.0)), 0),
            Outcome::Dropped(DropReason::UnknownMetric)
        );
        // A bad value does not advance the timestamp: the good one at the same time is taken.
        assert!(matches!(
            t.change(0, 0, &at(2_000, Variant::Boolean(true)), 0),
            Outcome::Frames { .. }
        ));
    }

    #[test]
    fn a_value_without_timestamps_is_left_for_the_gateway_to_date() {
        let mut t = Translator::new(&server(), 7, 0);
        let undated = DataValue {
            value: Some(Variant::Double(1.0)),
            status: Some(StatusCode::Good),
            ..Default::default()
        };
        let outcome = t.change(0, 0, &undated, 42);
        assert!(
            matches!(
                outcome,
                Outcome::Frames {
                    taken_at_ms: None,
                    ..
                }
            ),
            "{outcome:?}"
        );
    }

    #[test]
    fn a_reconnect_announces_again_without_restarting_seq() {
        let mut t = Translator::new(&server(), 7, 0);
        let _ = t.change(0, 0, &at(1, Variant::Double(1.0)), 0);
        t.reconnected();
        assert_eq!(
            seqs(&t.change(0, 0, &at(2, Variant::Double(1.0)), 0)),
            [("hello", 0), ("samples", 2)]
        );
    }
}
