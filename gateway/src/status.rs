//! The lab's local view: the last value of every metric of every machine this gateway accepted,
//! and the state of its link to the region, for the status page on the [`ops`](crate::ops)
//! endpoint.
//!
//! A lab cut off from the region still sees its machines here: the core records each sample as
//! it accepts it (before the disk buffer, whatever the uplink does) and publishes every change of
//! its link. Sans-IO: callers pass the wall clock in, so rendering is deterministic in tests.
//!
//! ```
//! use demolab_gateway::status::{LinkState, LocalStatus};
//! let status = LocalStatus::new(0);
//! status.set_link(LinkState::Disconnected, 1_000);
//! assert_eq!(status.link().state, LinkState::Disconnected);
//! ```

use std::collections::BTreeMap;
use std::sync::Mutex;

use protocol::{MachineId, MetricName, Unit};
use serde::Serialize;

use crate::record::BufferedSample;

/// Most machines kept. The real bound is the gateway's own set of machines (its configured
/// nodes, the nodes allowed on the lab broker, its Modbus and OPC UA devices), which is far
/// smaller; this cap only keeps a misconfigured open lab broker from growing the view for ever.
pub const MAX_MACHINES: usize = 1024;
/// Most metrics kept per machine: a node announces at most [`protocol::frame::MAX_METRICS`] per
/// `Hello`, but a machine keeps the metrics of earlier boots too.
pub const MAX_METRICS_PER_MACHINE: usize = 64;

/// Whether samples reach the region live or wait in the disk buffer, to be sent flagged
/// historical.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkState {
    /// The uplink session is up and the primary host (if one is configured) is online.
    Connected,
    /// The uplink session is up but the primary host's STATE says offline.
    HostOffline,
    /// No session with the region's broker.
    Disconnected,
}

/// The link to the region and since when it is in that state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link {
    /// The state.
    pub state: LinkState,
    /// When it began, ms since the epoch (the gateway's start for the first state).
    pub since_ms: u64,
}

/// The last value of one metric.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LastValue {
    /// The value.
    pub value: f32,
    /// Its unit.
    pub unit: Unit,
    /// When it was sampled (the source's time, never after receipt), ms since the epoch.
    pub timestamp_ms: u64,
    /// When the gateway accepted it, ms since the epoch.
    pub received_ms: u64,
    /// The boot of the node that sent it (`None` for Modbus and OPC UA).
    pub boot: Option<u32>,
    /// The node's sequence number of the sample.
    pub seq: u32,
}

impl LastValue {
    /// Whether `self` may replace `current`: a replayed or redelivered older sample never hides
    /// a newer one. The timestamp decides; within one boot, the sequence breaks a tie.
    fn supersedes(&self, current: &LastValue) -> bool {
        match self.timestamp_ms.cmp(&current.timestamp_ms) {
            std::cmp::Ordering::Greater => true,
            std::cmp::Ordering::Less => false,
            std::cmp::Ordering::Equal => self.boot != current.boot || self.seq >= current.seq,
        }
    }
}

/// The last values of every machine, bounded by [`MAX_MACHINES`] and
/// [`MAX_METRICS_PER_MACHINE`].
#[derive(Debug, Default)]
pub struct LastValues {
    machines: BTreeMap<MachineId, BTreeMap<MetricName, LastValue>>,
    /// Values not kept because a cap was reached.
    not_kept: u64,
}

impl LastValues {
    /// Takes in an accepted sample, received at `now_ms`.
    pub fn record(&mut self, sample: &BufferedSample, now_ms: u64) {
        if !self.machines.contains_key(&sample.machine) {
            if self.machines.len() >= MAX_MACHINES {
                self.not_kept += sample.values.len() as u64;
                return;
            }
            self.machines
                .insert(sample.machine.clone(), BTreeMap::new());
        }
        let Some(metrics) = self.machines.get_mut(&sample.machine) else {
            return;
        };
        for (name, unit, value) in &sample.values {
            let incoming = LastValue {
                value: *value,
                unit: *unit,
                timestamp_ms: sample.received_at_ms,
                received_ms: now_ms,
                boot: sample.boot,
                seq: sample.node_seq,
            };
            let full = metrics.len() >= MAX_METRICS_PER_MACHINE;
            match metrics.get_mut(name) {
                Some(current) => {
                    if incoming.supersedes(current) {
                        *current = incoming;
                    }
                }
                None if full => self.not_kept += 1,
                None => {
                    metrics.insert(name.clone(), incoming);
                }
            }
        }
    }

    /// The last values of one machine.
    pub fn machine(&self, machine: &MachineId) -> Option<&BTreeMap<MetricName, LastValue>> {
        self.machines.get(machine)
    }

    /// Every machine's last values, by machine id.
    pub fn machines(&self) -> impl Iterator<Item = (&MachineId, &BTreeMap<MetricName, LastValue>)> {
        self.machines.iter()
    }

    /// Values not kept because a cap was reached.
    pub fn not_kept(&self) -> u64 {
        self.not_kept
    }
}

/// The local view, shared by the core (which writes it once per accepted sample and per link
/// change) and the ops endpoint (which reads it per request). One lock per gateway, never held
/// across IO: at a gateway's rates it is uncontended.
#[derive(Debug)]
pub struct LocalStatus {
    values: Mutex<LastValues>,
    link: Mutex<Link>,
}

impl LocalStatus {
    /// An empty view of a gateway started at `now_ms`, not connected yet.
    pub fn new(now_ms: u64) -> Self {
        Self {
            values: Mutex::new(LastValues::default()),
            link: Mutex::new(Link {
                state: LinkState::Disconnected,
                since_ms: now_ms,
            }),
        }
    }

    /// Records an accepted sample.
    pub(crate) fn record(&self, sample: &BufferedSample, now_ms: u64) {
        // A poisoned lock only means a reader panicked mid-read; the data is still whole.
        let mut values = self.values.lock().unwrap_or_else(|e| e.into_inner());
        values.record(sample, now_ms);
    }

    /// Publishes the link's state; `since` moves only when the state changes.
    pub fn set_link(&self, state: LinkState, now_ms: u64) {
        let mut link = self.link.lock().unwrap_or_else(|e| e.into_inner());
        if link.state != state {
            *link = Link {
                state,
                since_ms: now_ms,
            };
        }
    }

    /// The link's state.
    pub fn link(&self) -> Link {
        *self.link.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the last values (under the lock: keep it short).
    pub fn with_values<T>(&self, f: impl FnOnce(&LastValues) -> T) -> T {
        f(&self.values.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine(name: &str) -> MachineId {
        name.parse().expect("valid")
    }

    fn sample(machine_name: &str, seq: u32, at_ms: u64, value: f32) -> BufferedSample {
        BufferedSample {
            machine: machine(machine_name),
            boot: Some(7),
            node_seq: seq,
            received_at_ms: at_ms,
            historical: false,
            values: vec![(
                "coolant.temperature_c".parse().expect("valid"),
                Unit::Celsius,
                value,
            )],
        }
    }

    fn last(values: &LastValues, machine_name: &str) -> Option<(u32, f32)> {
        let metrics = values.machine(&machine(machine_name))?;
        let value = metrics.values().next()?;
        Some((value.seq, value.value))
    }

    #[test]
    fn a_newer_sample_replaces_the_last_value_and_an_older_one_does_not() {
        let mut values = LastValues::default();
        values.record(&sample("mill-1", 2, 2_000, 21.5), 2_001);
        values.record(&sample("mill-1", 3, 3_000, 22.5), 3_001);
        // Redelivered after a restart, or replayed: older by timestamp.
        values.record(&sample("mill-1", 1, 1_000, 20.0), 3_002);
        assert_eq!(last(&values, "mill-1"), Some((3, 22.5)));
        let kept = values.machine(&machine("mill-1")).expect("machine");
        assert_eq!(
            kept.values()
                .next()
                .map(|v| (v.timestamp_ms, v.received_ms)),
            Some((3_000, 3_001))
        );
    }

    #[test]
    fn at_the_same_timestamp_the_sequence_decides_within_a_boot_and_a_new_boot_wins() {
        let mut values = LastValues::default();
        values.record(&sample("mill-1", 5, 1_000, 5.0), 1_000);
        values.record(&sample("mill-1", 4, 1_000, 4.0), 1_000);
        assert_eq!(last(&values, "mill-1"), Some((5, 5.0)));
        let mut rebooted = sample("mill-1", 1, 1_000, 1.0);
        rebooted.boot = Some(8);
        values.record(&rebooted, 1_000);
        assert_eq!(last(&values, "mill-1"), Some((1, 1.0)));
    }

    #[test]
    fn machines_and_metrics_beyond_the_caps_are_counted_not_kept() {
        let mut values = LastValues::default();
        for i in 0..MAX_MACHINES {
            values.record(&sample(&format!("m-{i}"), 1, 1, 1.0), 1);
        }
        values.record(&sample("one-too-many", 1, 1, 1.0), 1);
        assert_eq!(values.machines().count(), MAX_MACHINES);
        assert_eq!(last(&values, "one-too-many"), None);
        assert_eq!(values.not_kept(), 1);
        // A known machine still updates at the cap.
        values.record(&sample("m-0", 2, 2, 2.0), 2);
        assert_eq!(last(&values, "m-0"), Some((2, 2.0)));

        let mut wide = sample("m-0", 3, 3, 3.0);
        wide.values = (0..=MAX_METRICS_PER_MACHINE)
            .map(|i| {
                let name = format!("x.m{i}").parse().expect("valid");
                (name, Unit::Count, i as f32)
            })
            .collect();
        values.record(&wide, 3);
        let kept = values.machine(&machine("m-0")).map(BTreeMap::len);
        assert_eq!(kept, Some(MAX_METRICS_PER_MACHINE));
        // The existing metric plus 65 new ones, 64 in all: two were refused.
        assert_eq!(values.not_kept(), 3);
    }

    #[test]
    fn the_link_keeps_its_since_until_its_state_changes() {
        let status = LocalStatus::new(100);
        assert_eq!(
            status.link(),
            Link {
                state: LinkState::Disconnected,
                since_ms: 100
            }
        );
        status.set_link(LinkState::Disconnected, 200);
        assert_eq!(status.link().since_ms, 100);
        status.set_link(LinkState::Connected, 300);
        status.set_link(LinkState::Connected, 400);
        assert_eq!(
            status.link(),
            Link {
                state: LinkState::Connected,
                since_ms: 300
            }
        );
    }
}
