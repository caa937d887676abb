//! A sensor node on a serial cable, on the host: the real firmware runtime and drivers (through
//! [`RetrofitKit`]) on simulated chips, driven by a machine model, writing COBS-framed node frames
//! to a byte stream — a real pseudo-terminal in tests, so the gateway reads a real tty.
//!
//! The cable can be unplugged and plugged back ([`SerialNodeHandle::unplug`]): the node notices
//! (a board sees the USB bridge's DTR/VBUS drop), keeps sampling into its ring, and reports the
//! exact number of samples its ring had to drop when the cable is back.

use std::io::{ErrorKind, Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use firmware::NodeCore;
use firmware::runtime::NodeRuntime;
use protocol::cobs::{FrameDecoder, MAX_WIRE_LEN, cobs_encode};
use protocol::{MachineId, NodeId, ResetReason};

use crate::kit::{RetrofitKit, kit_descriptors};
use crate::machines::{CncMill, CncParams};
use crate::node::SIM_FIRMWARE;

/// Frames the node keeps while its cable is out (as a small MCU would).
pub const RING_FRAMES: usize = 64;

/// What runs on the node.
#[derive(Debug, Clone)]
pub struct SerialNodeConfig {
    /// Hardware id.
    pub node: NodeId,
    /// The machine it is clipped to.
    pub machine: MachineId,
    /// This run's boot id.
    pub boot: u32,
    /// Seed of the machine model and the vibration noise.
    pub seed: u64,
    /// Simulated time between samples.
    pub sample_period: Duration,
    /// Wall time between samples (pacing).
    pub tick_interval: Duration,
    /// Stop sampling after this many; the node then runs until its ring is sent.
    pub max_samples: Option<u32>,
}

/// What the node did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SerialNodeReport {
    /// Samples taken.
    pub recorded: u32,
    /// The readings of the last sample.
    pub last_readings: Vec<(u8, f32)>,
    /// Commands received from the gateway.
    pub commands: u32,
}

/// A running serial node.
#[derive(Debug)]
pub struct SerialNodeHandle {
    cable: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicBool>,
    recorded: Arc<AtomicU32>,
    thread: JoinHandle<SerialNodeReport>,
}

impl SerialNodeHandle {
    /// Pulls the cable.
    pub fn unplug(&self) {
        self.cable.store(false, Ordering::SeqCst);
    }

    /// Plugs it back in.
    pub fn plug(&self) {
        self.cable.store(true, Ordering::SeqCst);
    }

    /// Samples taken so far.
    pub fn recorded(&self) -> u32 {
        self.recorded.load(Ordering::SeqCst)
    }

    /// Whether the node has finished (sampled `max_samples` and sent its ring).
    pub fn is_finished(&self) -> bool {
        self.done.load(Ordering::SeqCst)
    }

    /// Stops the node (if it has not finished) and returns its report.
    pub fn join(self) -> SerialNodeReport {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().unwrap_or_default()
    }
}

/// Starts the node on its own thread, writing to and reading from `port` (give it a short read
/// timeout so the loop keeps its pace).
pub fn spawn_serial_node<P: Read + Write + Send + 'static>(
    config: SerialNodeConfig,
    port: P,
) -> SerialNodeHandle {
    let cable = Arc::new(AtomicBool::new(true));
    let stop = Arc::new(AtomicBool::new(false));
    let recorded = Arc::new(AtomicU32::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let thread = {
        let (cable, stop, recorded, done) =
            (cable.clone(), stop.clone(), recorded.clone(), done.clone());
        std::thread::spawn(move || run(config, port, &cable, &stop, &done, &recorded))
    };
    SerialNodeHandle {
        cable,
        stop,
        done,
        recorded,
        thread,
    }
}

fn run<P: Read + Write>(
    config: SerialNodeConfig,
    mut port: P,
    cable: &AtomicBool,
    stop: &AtomicBool,
    done: &AtomicBool,
    recorded: &AtomicU32,
) -> SerialNodeReport {
    let period_ms = u32::try_from(config.sample_period.as_millis())
        .unwrap_or(u32::MAX)
        .max(1);
    let core = NodeCore::new(
        config.node,
        SIM_FIRMWARE,
        config.boot,
        Some(config.machine.clone()),
        kit_descriptors(period_ms),
    );
    let mut runtime = NodeRuntime::<RING_FRAMES>::new(core, ResetReason::PowerOn);
    let mut mill = CncMill::new(config.seed, CncParams::default());
    let mut kit = RetrofitKit::new(config.seed);
    let mut decoder = FrameDecoder::new();
    let mut report = SerialNodeReport::default();
    let mut uptime_ms = 0u64;
    let mut link = false;
    let mut wire = [0u8; MAX_WIRE_LEN];
    let mut incoming = [0u8; 256];
    while !stop.load(Ordering::SeqCst) {
        match (cable.load(Ordering::SeqCst), link) {
            (true, false) => {
                runtime.link_up(uptime_ms);
                link = true;
            }
            (false, true) => {
                runtime.link_lost(uptime_ms);
                link = false;
            }
            _ => {}
        }
        while let Some(frame) = runtime.next_frame() {
            let Some(len) = cobs_encode(frame, &mut wire[..MAX_WIRE_LEN - 1]) else {
                break;
            };
            wire[len] = 0;
            if port.write_all(&wire[..=len]).is_err() {
                runtime.link_lost(uptime_ms);
                link = false;
                break;
            }
            runtime.frame_sent();
        }
        let sampling = config.max_samples.is_none_or(|max| report.recorded < max);
        // Done, but the port stays open until `join`: closing a pty's master side discards
        // what the other side has not read yet.
        if !sampling && link && runtime.queued() == 0 {
            done.store(true, Ordering::SeqCst);
        }
        // Sample after sending: the ring only fills while the cable is out, so every drop
        // happens before the next `link_up`, which reports it.
        if sampling {
            uptime_ms += u64::from(period_ms);
            let machine = mill.step(config.sample_period);
            let sensed = kit.sense(uptime_ms, &machine);
            runtime.record(uptime_ms, &sensed.readings, &sensed.faults);
            report.recorded += 1;
            report.last_readings = sensed.readings;
            recorded.store(report.recorded, Ordering::SeqCst);
        }
        match port.read(&mut incoming) {
            Ok(n) => decoder.feed(&incoming[..n], |frame| {
                if let Ok(frame) = frame {
                    report.commands += 1;
                    runtime.receive(uptime_ms, &frame);
                }
            }),
            Err(err)
                if matches!(
                    err.kind(),
                    ErrorKind::TimedOut | ErrorKind::WouldBlock | ErrorKind::Interrupted
                ) => {}
            Err(_) => {}
        }
        std::thread::sleep(config.tick_interval);
    }
    report
}
