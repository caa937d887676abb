//! The node runtime, sans-IO: when to sample, what to send next, what to do when the link drops.
//!
//! The board (or the host runner) owns the sensors, the clock and the link; it asks
//! [`NodeRuntime::sample_due`], reads its sensors, hands the readings (and any sensor faults) to
//! [`NodeRuntime::record`], and sends [`NodeRuntime::next_frame`] while the link is up. While the
//! link is down frames wait in a fixed ring ([`FrameRing`]); when it overflows the oldest are
//! dropped and the count goes out in a `LinkRegained` event once the link is back. Reconnects back
//! off exponentially. A failing sensor is reported once with `SensorFault` and once more with
//! `SensorRecovered`; the other sensors keep being sampled.

use protocol::codec::{self, MAX_FRAME_LEN};
use protocol::{Event, EventKind, Frame, ResetReason};

use crate::NodeCore;
use crate::ring::FrameRing;

/// First reconnect delay, ms.
pub const BACKOFF_START_MS: u64 = 500;
/// Longest reconnect delay, ms.
pub const BACKOFF_MAX_MS: u64 = 30_000;

/// A node's runtime state with a ring of `RING` frames.
#[derive(Debug)]
pub struct NodeRuntime<const RING: usize> {
    core: NodeCore,
    ring: FrameRing<RING>,
    link_up: bool,
    next_sample_ms: u64,
    reconnect_at_ms: u64,
    backoff_ms: u64,
    /// Bit per metric index: sensors currently in fault.
    faulty: u16,
    encode_failures: u32,
    /// The encoded `Hello`, kept out of the ring: it is the largest frame (a ring slot is sized
    /// for samples), it is always sent first, and a newer one replaces an unsent one.
    hello: heapless::Vec<u8, MAX_FRAME_LEN>,
    hello_pending: bool,
}

impl<const RING: usize> NodeRuntime<RING> {
    /// A booted node: `Hello` and a `Reset` event are queued first, the link starts down.
    pub fn new(core: NodeCore, reset: ResetReason) -> Self {
        let mut runtime = Self {
            core,
            ring: FrameRing::new(),
            link_up: false,
            next_sample_ms: 0,
            reconnect_at_ms: 0,
            backoff_ms: BACKOFF_START_MS,
            faulty: 0,
            encode_failures: 0,
            hello: heapless::Vec::new(),
            hello_pending: false,
        };
        runtime.say_hello();
        runtime.queue_event(0, EventKind::Reset { reason: reset });
        runtime
    }

    /// The firmware core (identity, sequence, outputs).
    pub fn core(&self) -> &NodeCore {
        &self.core
    }

    /// The sample period: the shortest of the metrics' periods.
    pub fn period_ms(&self) -> u64 {
        self.core
            .metrics()
            .iter()
            .map(|d| u64::from(d.period_ms))
            .min()
            .unwrap_or(1000)
    }

    /// Whether it is time to sample.
    pub fn sample_due(&self, now_ms: u64) -> bool {
        now_ms >= self.next_sample_ms
    }

    /// Takes one sampling instant: the readings that worked and the sensors that failed
    /// (metric index, driver error code).
    pub fn record(&mut self, now_ms: u64, readings: &[(u8, f32)], faults: &[(u8, u8)]) {
        self.next_sample_ms = now_ms + self.period_ms();
        let mut failing = 0u16;
        for &(index, code) in faults {
            let bit = 1u16 << (index & 15);
            failing |= bit;
            if self.faulty & bit == 0 {
                self.queue_event(now_ms, EventKind::SensorFault { index, code });
            }
        }
        for index in 0..16u8 {
            let bit = 1u16 << index;
            if self.faulty & bit != 0 && failing & bit == 0 {
                self.queue_event(now_ms, EventKind::SensorRecovered { index });
            }
        }
        self.faulty = failing;
        if let Ok(frame) = self.core.sample(now_ms, readings) {
            self.queue(&frame);
        }
    }

    /// The frame to send next, if the link is up and something waits: a pending `Hello` first.
    pub fn next_frame(&self) -> Option<&[u8]> {
        match (self.link_up, self.hello_pending) {
            (false, _) => None,
            (true, true) => Some(&self.hello),
            (true, false) => self.ring.front(),
        }
    }

    /// The frame from [`NodeRuntime::next_frame`] went out.
    pub fn frame_sent(&mut self) {
        if self.hello_pending {
            self.hello_pending = false;
        } else {
            self.ring.pop();
        }
    }

    fn say_hello(&mut self) {
        let mut buf = [0u8; MAX_FRAME_LEN];
        let encoded = codec::encode(&self.core.hello(), &mut buf)
            .ok()
            .and_then(|bytes| heapless::Vec::from_slice(bytes).ok());
        match encoded {
            Some(hello) => {
                self.hello = hello;
                self.hello_pending = true;
            }
            None => self.encode_failures = self.encode_failures.saturating_add(1),
        }
    }

    /// The link dropped: keep buffering, try again after the backoff.
    pub fn link_lost(&mut self, now_ms: u64) {
        if self.link_up {
            self.link_up = false;
            self.queue_event(now_ms, EventKind::LinkLost);
            self.reconnect_at_ms = now_ms + self.backoff_ms;
        }
    }

    /// Whether the shell should try to reconnect now.
    pub fn reconnect_due(&self, now_ms: u64) -> bool {
        !self.link_up && now_ms >= self.reconnect_at_ms
    }

    /// A reconnect attempt failed: wait twice as long next time (up to [`BACKOFF_MAX_MS`]).
    pub fn reconnect_failed(&mut self, now_ms: u64) {
        self.reconnect_at_ms = now_ms + self.backoff_ms;
        self.backoff_ms = (self.backoff_ms * 2).min(BACKOFF_MAX_MS);
    }

    /// The link is up: say `Hello` again and report how many samples the ring had to drop
    /// meanwhile — including one the report itself pushes out of a full ring.
    pub fn link_up(&mut self, now_ms: u64) {
        self.link_up = true;
        self.backoff_ms = BACKOFF_START_MS;
        let pushed_out = self.ring.samples_pushed_out_by(1);
        let dropped_samples = self.ring.take_dropped().saturating_add(pushed_out);
        self.queue_event(now_ms, EventKind::LinkRegained { dropped_samples });
        // Already reported above.
        self.ring.take_dropped();
        self.say_hello();
    }

    /// Handles a frame from the gateway (a `Command`), queueing its `Ack` (and `Hello`).
    pub fn receive(&mut self, now_ms: u64, frame: &Frame) {
        if let Some(reply) = self.core.handle(now_ms, frame) {
            self.queue(&reply.ack);
            if reply.hello.is_some() {
                self.say_hello();
            }
            // A new period takes effect from now.
            self.next_sample_ms = self.next_sample_ms.min(now_ms + self.period_ms());
        }
    }

    /// Frames waiting to be sent.
    pub fn queued(&self) -> usize {
        self.ring.len() + usize::from(self.hello_pending)
    }

    /// Frames that could not be encoded (a bug, not a link problem).
    pub fn encode_failures(&self) -> u32 {
        self.encode_failures
    }

    fn queue_event(&mut self, now_ms: u64, kind: EventKind) {
        let event = Frame::Event(Event {
            node: self.core.node(),
            uptime_ms: now_ms,
            kind,
        });
        self.queue(&event);
    }

    fn queue(&mut self, frame: &Frame) {
        let mut buf = [0u8; MAX_FRAME_LEN];
        let is_sample = matches!(frame, Frame::Samples(_));
        let pushed = codec::encode(frame, &mut buf)
            .ok()
            .map(|bytes| self.ring.push(bytes, is_sample));
        if !matches!(pushed, Some(Ok(()))) {
            self.encode_failures = self.encode_failures.saturating_add(1);
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use protocol::{Samples, golden};

    use super::*;

    fn runtime<const N: usize>() -> NodeRuntime<N> {
        let Frame::Hello(hello) = golden::hello() else {
            unreachable!("golden hello")
        };
        let core = NodeCore::new(
            hello.node,
            hello.firmware,
            hello.boot,
            hello.machine,
            hello.metrics,
        );
        NodeRuntime::new(core, ResetReason::PowerOn)
    }

    fn drain<const N: usize>(rt: &mut NodeRuntime<N>) -> heapless::Vec<Frame, 64> {
        let mut out = heapless::Vec::new();
        while let Some(bytes) = rt.next_frame() {
            let _ = out.push(codec::decode(bytes).expect("valid frame"));
            rt.frame_sent();
        }
        out
    }

    #[test]
    fn boot_queues_hello_and_reset_and_nothing_leaves_while_the_link_is_down() {
        let mut rt = runtime::<16>();
        assert!(rt.next_frame().is_none());
        rt.link_up(0);
        let frames = drain(&mut rt);
        assert!(matches!(frames[0], Frame::Hello(_)));
        assert!(matches!(
            frames[1],
            Frame::Event(Event {
                kind: EventKind::Reset {
                    reason: ResetReason::PowerOn
                },
                ..
            })
        ));
    }

    #[test]
    fn samples_kept_during_an_outage_arrive_in_order_and_overflow_is_reported_exactly() {
        let mut rt = runtime::<8>();
        rt.link_up(0);
        drain(&mut rt);
        rt.link_lost(1000);
        for t in 1..=20u64 {
            rt.record(t * 1000, &[(0, t as f32)], &[]);
        }
        rt.link_up(30_000);
        let frames = drain(&mut rt);
        let seqs: heapless::Vec<u32, 16> = frames
            .iter()
            .filter_map(|f| {
                if let Frame::Samples(Samples { seq, .. }) = f {
                    Some(*seq)
                } else {
                    None
                }
            })
            .collect();
        // 8 slots: LinkLost, then 20 samples, then LinkRegained; everything older than sample 14
        // was pushed out (the Hello waits outside the ring).
        assert_eq!(seqs.as_slice(), &[14, 15, 16, 17, 18, 19, 20]);
        let dropped = frames.iter().find_map(|f| match f {
            Frame::Event(Event {
                kind: EventKind::LinkRegained { dropped_samples },
                ..
            }) => Some(*dropped_samples),
            _ => None,
        });
        // Exact: 20 samples taken during the outage = 7 delivered + 13 dropped (the LinkLost
        // event that was pushed out too is not a sample).
        assert_eq!(dropped, Some(13));
    }

    #[test]
    fn a_failing_sensor_is_reported_once_and_its_recovery_once() {
        let mut rt = runtime::<32>();
        rt.link_up(0);
        drain(&mut rt);
        rt.record(1000, &[(0, 1.0)], &[(1, 3)]);
        rt.record(2000, &[(0, 1.0)], &[(1, 3)]);
        rt.record(3000, &[(0, 1.0), (1, 2.0)], &[]);
        let frames = drain(&mut rt);
        let events: heapless::Vec<EventKind, 8> = frames
            .iter()
            .filter_map(|f| {
                if let Frame::Event(e) = f {
                    Some(e.kind)
                } else {
                    None
                }
            })
            .collect();
        assert_eq!(
            events.as_slice(),
            &[
                EventKind::SensorFault { index: 1, code: 3 },
                EventKind::SensorRecovered { index: 1 }
            ]
        );
        assert_eq!(
            frames
                .iter()
                .filter(|f| matches!(f, Frame::Samples(_)))
                .count(),
            3
        );
    }

    #[test]
    fn a_hello_larger_than_a_ring_slot_still_goes_out_first() {
        let mut metrics = heapless::Vec::new();
        for index in 0..16u8 {
            let mut name = heapless::String::<48>::new();
            let _ = core::fmt::Write::write_fmt(
                &mut name,
                format_args!("feature_{index:02}.a_rather_long_property_name"),
            );
            let name = protocol::MetricName::new(&name).expect("valid");
            let _ = metrics.push(protocol::MetricDescriptor {
                index,
                name,
                unit: protocol::Unit::Count,
                period_ms: 1000,
            });
        }
        let core = NodeCore::new(
            golden::NODE,
            protocol::FirmwareVersion {
                major: 1,
                minor: 0,
                patch: 0,
            },
            1,
            None,
            metrics,
        );
        let mut rt = NodeRuntime::<4>::new(core, ResetReason::PowerOn);
        rt.link_up(0);
        let first = rt.next_frame().expect("something to send");
        assert!(first.len() > crate::ring::SLOT, "{} bytes", first.len());
        assert!(matches!(codec::decode(first), Ok(Frame::Hello(h)) if h.metrics.len() == 16));
        assert_eq!(rt.encode_failures(), 0);
    }

    #[test]
    fn reconnects_back_off_exponentially_up_to_the_maximum() {
        let mut rt = runtime::<4>();
        rt.link_up(0);
        rt.link_lost(0);
        assert!(!rt.reconnect_due(BACKOFF_START_MS - 1) && rt.reconnect_due(BACKOFF_START_MS));
        let mut now = BACKOFF_START_MS;
        let mut waits = heapless::Vec::<u64, 16>::new();
        for _ in 0..8 {
            rt.reconnect_failed(now);
            let next = (now..now + 100_000)
                .find(|t| rt.reconnect_due(*t))
                .expect("due eventually");
            let _ = waits.push(next - now);
            now = next;
        }
        assert_eq!(
            waits.as_slice(),
            &[500, 1000, 2000, 4000, 8000, 16000, 30000, 30000]
        );
    }

    #[test]
    fn sampling_follows_the_period_and_a_set_period_command() {
        let mut rt = runtime::<8>();
        assert!(rt.sample_due(0));
        rt.record(0, &[(0, 1.0)], &[]);
        assert!(!rt.sample_due(999) && rt.sample_due(1000));
        rt.receive(10, &golden::command()); // period 500 ms for all metrics
        assert!(rt.sample_due(510));
    }

    #[test]
    fn the_whole_node_fits_the_32_kib_budget() {
        // Runtime with a 64-frame ring plus one of each driver: the static state of a node.
        type Node = NodeRuntime<64>;
        let total = core::mem::size_of::<Node>()
            + core::mem::size_of::<crate::drivers::sht3x::Sht3x<()>>()
            + core::mem::size_of::<crate::drivers::lis3dh::Lis3dh<()>>()
            + core::mem::size_of::<crate::drivers::ads1115::Ads1115<()>>();
        std::println!("node static state: {total} bytes");
        assert!(total < 32 * 1024, "node state is {total} bytes");
    }
}
