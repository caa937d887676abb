//! A sensor node on the host: the real firmware runtime and drivers (through [`RetrofitKit`]) on
//! simulated chips, driven by a machine model, linked to a gateway either by a serial line
//! (COBS-framed node frames on a byte stream — a real pseudo-terminal in tests, so the gateway
//! reads a real tty) or by MQTT over TCP with the firmware's own no_std MQTT client.
//!
//! The link can be pulled and restored ([`KitNodeHandle::unplug`]): the node notices (a board sees
//! the USB bridge's DTR/VBUS drop, or its TCP connection fail), keeps sampling into its ring, and
//! reports the exact number of samples its ring had to drop once the link is back.

use std::io::{ErrorKind, Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use firmware::NodeCore;
use firmware::runtime::NodeRuntime;
use firmware::serial_link::SerialLink;
use protocol::{MachineId, NodeId, ResetReason};

use crate::kit::{RetrofitKit, kit_descriptors};
use crate::machines::{CncMill, CncParams};
use crate::node::SIM_FIRMWARE;

/// Frames the node keeps while its cable is out (as a small MCU would).
pub const RING_FRAMES: usize = 64;

/// What runs on the node.
#[derive(Debug, Clone)]
pub struct KitNodeConfig {
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
pub struct KitNodeReport {
    /// Samples taken.
    pub recorded: u32,
    /// The readings of the last sample.
    pub last_readings: Vec<(u8, f32)>,
    /// Commands received from the gateway.
    pub commands: u32,
}

/// A running node.
#[derive(Debug)]
pub struct KitNodeHandle {
    shared: Arc<Shared>,
    thread: JoinHandle<KitNodeReport>,
}

impl KitNodeHandle {
    /// Pulls the cable (or, over MQTT, takes the network away).
    pub fn unplug(&self) {
        self.shared.cable.store(false, Ordering::SeqCst);
    }

    /// Plugs it back in.
    pub fn plug(&self) {
        self.shared.cable.store(true, Ordering::SeqCst);
    }

    /// Samples taken so far.
    pub fn recorded(&self) -> u32 {
        self.shared.recorded.load(Ordering::SeqCst)
    }

    /// Whether the node has finished (sampled `max_samples` and sent its ring).
    pub fn is_finished(&self) -> bool {
        self.shared.done.load(Ordering::SeqCst)
    }

    /// Stops the node (if it has not finished) and returns its report.
    pub fn join(self) -> KitNodeReport {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.thread.join().unwrap_or_default()
    }
}

/// The flags a running node shares with its handle.
#[derive(Debug, Default)]
struct Shared {
    cable: AtomicBool,
    stop: AtomicBool,
    done: AtomicBool,
    recorded: AtomicU32,
}

/// Runs `body` on its own thread with fresh shared flags (cable plugged in).
fn spawn(body: impl FnOnce(&Shared) -> KitNodeReport + Send + 'static) -> KitNodeHandle {
    let shared = Arc::new(Shared {
        cable: AtomicBool::new(true),
        ..Shared::default()
    });
    let thread = {
        let shared = shared.clone();
        std::thread::spawn(move || body(&shared))
    };
    KitNodeHandle { shared, thread }
}

/// The node itself, link aside: firmware runtime, machine model, sensor kit and the node's clock.
struct Simulated {
    config: KitNodeConfig,
    runtime: NodeRuntime<RING_FRAMES>,
    mill: CncMill,
    kit: RetrofitKit,
    report: KitNodeReport,
    period_ms: u32,
    uptime_ms: u64,
}

impl Simulated {
    fn new(config: KitNodeConfig) -> Self {
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
        Self {
            runtime: NodeRuntime::new(core, ResetReason::PowerOn),
            mill: CncMill::new(config.seed, CncParams::default()),
            kit: RetrofitKit::new(config.seed),
            report: KitNodeReport::default(),
            period_ms,
            uptime_ms: 0,
            config,
        }
    }

    fn sampling(&self) -> bool {
        self.config
            .max_samples
            .is_none_or(|max| self.report.recorded < max)
    }

    /// One tick after the link had its turn: marks the node done once everything is out, then
    /// advances the clock and samples. Sampling after sending means the ring only fills while the
    /// link is down, so every drop happens before the next `link_up`, which reports it.
    fn tick(&mut self, link_up: bool, shared: &Shared) {
        // Done, but the link stays open until `join`: closing a pty's master side discards what
        // the other side has not read yet.
        if !self.sampling() && link_up && self.runtime.queued() == 0 {
            shared.done.store(true, Ordering::SeqCst);
        }
        // The node's clock runs whether or not it samples (reconnect backoff counts on it).
        self.uptime_ms += u64::from(self.period_ms);
        if self.sampling() {
            let machine = self.mill.step(self.config.sample_period);
            let sensed = self.kit.sense(self.uptime_ms, &machine);
            self.runtime
                .record(self.uptime_ms, &sensed.readings, &sensed.faults);
            self.report.recorded += 1;
            self.report.last_readings = sensed.readings;
            shared
                .recorded
                .store(self.report.recorded, Ordering::SeqCst);
        }
    }

    fn receive(&mut self, frame: &protocol::Frame) {
        self.report.commands += 1;
        self.runtime.receive(self.uptime_ms, frame);
    }
}

/// Starts the node on its own thread, writing to and reading from `port` (give it a short read
/// timeout so the loop keeps its pace).
pub fn spawn_serial_kit_node<P: Read + Write + Send + 'static>(
    config: KitNodeConfig,
    port: P,
) -> KitNodeHandle {
    spawn(move |shared| run_serial(Simulated::new(config), port, shared))
}

fn run_serial<P: Read + Write>(mut node: Simulated, port: P, shared: &Shared) -> KitNodeReport {
    // The firmware's own serial link, over the host port.
    let mut serial = SerialLink::new(HostPort {
        port,
        pending: Vec::new(),
    });
    let mut link = false;
    while !shared.stop.load(Ordering::SeqCst) {
        match (shared.cable.load(Ordering::SeqCst), link) {
            (true, false) => {
                node.runtime.link_up(node.uptime_ms);
                link = true;
            }
            (false, true) => {
                node.runtime.link_lost(node.uptime_ms);
                link = false;
            }
            _ => {}
        }
        while let Some(frame) = node.runtime.next_frame() {
            if serial.send(frame).is_err() {
                node.runtime.link_lost(node.uptime_ms);
                link = false;
                break;
            }
            node.runtime.frame_sent();
        }
        node.tick(link, shared);
        // Read errors are timeouts (the pace of the loop); a real fault shows as a failed write.
        let _ = serial.poll(|frame| {
            if let Ok(frame) = frame {
                node.receive(&frame);
            }
        });
        std::thread::sleep(node.config.tick_interval);
    }
    node.report
}

/// A host serial port (std `Read`/`Write` with a read timeout) as an `embedded_io` stream.
struct HostPort<P> {
    port: P,
    /// Bytes read while checking readiness, handed out by the next `read`.
    pending: Vec<u8>,
}

impl<P> embedded_io::ErrorType for HostPort<P> {
    type Error = std::io::Error;
}

impl<P: Read> embedded_io::Read for HostPort<P> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.pending.is_empty() {
            return self.port.read(buf);
        }
        let n = buf.len().min(self.pending.len());
        buf[..n].copy_from_slice(&self.pending[..n]);
        self.pending.drain(..n);
        Ok(n)
    }
}

impl<P: Read> embedded_io::ReadReady for HostPort<P> {
    fn read_ready(&mut self) -> std::io::Result<bool> {
        if self.pending.is_empty() {
            let mut chunk = [0u8; 256];
            match self.port.read(&mut chunk) {
                Ok(n) => self.pending.extend_from_slice(&chunk[..n]),
                Err(err)
                    if matches!(
                        err.kind(),
                        ErrorKind::TimedOut | ErrorKind::WouldBlock | ErrorKind::Interrupted
                    ) => {}
                Err(err) => return Err(err),
            }
        }
        Ok(!self.pending.is_empty())
    }
}

impl<P: Write> embedded_io::Write for HostPort<P> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.port.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.port.flush()
    }
}

/// Starts the node on its own thread, publishing to the MQTT broker at `broker` with the
/// firmware's MQTT 3.1.1 client (QoS 1, one message in flight), and taking commands from its
/// down topic.
pub fn spawn_mqtt_kit_node(config: KitNodeConfig, broker: std::net::SocketAddr) -> KitNodeHandle {
    spawn(move |shared| run_mqtt(Simulated::new(config), broker, shared))
}

/// `std::net::TcpStream` as the firmware's `embedded_io` transport.
struct Tcp(std::net::TcpStream);

impl embedded_io::ErrorType for Tcp {
    type Error = std::io::Error;
}

impl embedded_io::Read for Tcp {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        std::io::Read::read(&mut self.0, buf)
    }
}

impl embedded_io::Write for Tcp {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        std::io::Write::write(&mut self.0, buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::Write::flush(&mut self.0)
    }
}

/// Publishes block until PUBACK; reads for commands must not stall the sampling loop.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);
const POLL_TIMEOUT: Duration = Duration::from_millis(1);

fn run_mqtt(mut node: Simulated, broker: std::net::SocketAddr, shared: &Shared) -> KitNodeReport {
    use firmware::mqtt::MqttClient;
    use firmware::mqtt::packet::Connect;
    use protocol::node_topic::{Direction, format};

    let id = node.config.node;
    let client_id = format!("kit-{id}");
    let up = format(id, Direction::Up);
    let down = format(id, Direction::Down);
    let started = std::time::Instant::now();
    let wall_ms = || started.elapsed().as_millis() as u64;
    let mut link: Option<(MqttClient<'_, Tcp>, std::net::TcpStream)> = None;
    while !shared.stop.load(Ordering::SeqCst) {
        let now = wall_ms();
        let cable = shared.cable.load(Ordering::SeqCst);
        if !cable && link.take().is_some() {
            node.runtime.link_lost(node.uptime_ms);
        }
        // The runtime's reconnect backoff runs on the node's (simulated) clock, like its sampling.
        if link.is_none() && cable && node.runtime.reconnect_due(node.uptime_ms) {
            let connected = std::net::TcpStream::connect(broker)
                .ok()
                .and_then(|stream| {
                    let control = stream.try_clone().ok()?;
                    control.set_read_timeout(Some(PUBLISH_TIMEOUT)).ok()?;
                    let _ = control.set_nodelay(true);
                    let mut client = MqttClient::new(Tcp(stream), Connect::new(&client_id, 30));
                    client.connect(now).ok()?;
                    client.subscribe(down.as_str(), now).ok()?;
                    Some((client, control))
                });
            match connected {
                Some(established) => {
                    node.runtime.link_up(node.uptime_ms);
                    link = Some(established);
                }
                None => node.runtime.reconnect_failed(node.uptime_ms),
            }
        }
        if let Some((client, _)) = link.as_mut() {
            while let Some(frame) = node.runtime.next_frame() {
                if client.publish_qos1(up.as_str(), frame, wall_ms()).is_err() {
                    break;
                }
                node.runtime.frame_sent();
            }
            if node.runtime.next_frame().is_some() {
                // A publish failed: the connection is gone.
                link = None;
                node.runtime.link_lost(node.uptime_ms);
            }
        }
        node.tick(link.is_some(), shared);
        if let Some((client, control)) = link.as_mut() {
            let _ = control.set_read_timeout(Some(POLL_TIMEOUT));
            let polled = client
                .poll_incoming(wall_ms())
                .map(|message| message.and_then(|m| protocol::codec::decode(m.payload).ok()));
            let _ = control.set_read_timeout(Some(PUBLISH_TIMEOUT));
            match polled {
                Ok(Some(frame)) => node.receive(&frame),
                Ok(None) => {}
                // A read timeout on a socket is WouldBlock on Unix: no command, not a lost link.
                Err(firmware::mqtt::ClientError::Transport(err))
                    if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(err) if err.is_fatal() => {
                    link = None;
                    node.runtime.link_lost(node.uptime_ms);
                }
                Err(_) => {}
            }
        }
        std::thread::sleep(node.config.tick_interval);
    }
    if let Some((mut client, _)) = link {
        let _ = client.disconnect();
    }
    node.report
}
