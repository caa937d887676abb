//! Serial sensor nodes: COBS-framed node frames over USB/UART ports, with hot-plug.
//!
//! One supervisor task opens the configured ports (and, with scanning, every device matching a
//! pattern), and retries missing or unplugged ones every [`SerialConfig::reopen_interval`]. Each
//! open port gets a blocking reader that turns bytes into [`Inbound`] frames through its own
//! [`FrameDecoder`], and a blocking writer that sends queued commands to the node. A port that
//! fails (unplugged) is reported through [`SerialHandle::lost_ports`], so its machines can be
//! marked offline at once; opened, failed and lost ports are counted in [`GatewayStats`].
//!
//! ```no_run
//! # async fn demo() {
//! use demolab_gateway::source::serial::{SerialConfig, spawn_serial};
//! let (tx, mut rx) = tokio::sync::mpsc::channel(256);
//! let cancel = tokio_util::sync::CancellationToken::new();
//! let config = SerialConfig { scan: true, ..SerialConfig::default() };
//! let stats = std::sync::Arc::new(demolab_gateway::GatewayStats::default());
//! let (handle, mut tasks) = spawn_serial(config, tx, stats, cancel.clone());
//! while let Some(inbound) = rx.recv().await {
//!     println!("{}: {:?}", inbound.source, inbound.frame);
//! }
//! # let _ = handle;
//! cancel.cancel();
//! while tasks.join_next().await.is_some() {}
//! # }
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use protocol::cobs::FrameDecoder;
use protocol::{DecodeError, Frame};
use serialport::TTYPort;
use tokio::runtime::Handle;
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio::task::{Id, JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::{Inbound, SourceId};
use crate::stats::GatewayStats;

/// How long one blocking read waits for bytes; bounds how late a reader notices cancellation.
const READ_TIMEOUT: Duration = Duration::from_millis(100);
/// How long a command write may stall (flow control, a wedged adapter) before it is given up.
const WRITE_TIMEOUT: Duration = Duration::from_millis(500);
/// Commands queued per port; commands are rare, so a full queue means the port is stuck.
const WRITE_QUEUE: usize = 16;
/// Floor for the retry period, so a zero interval cannot become a busy loop.
const MIN_REOPEN_INTERVAL: Duration = Duration::from_millis(10);

/// Which serial ports to use and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SerialConfig {
    /// Ports that are always wanted; a missing one is retried until it appears.
    pub ports: Vec<PathBuf>,
    /// Also pick up every device matching [`SerialConfig::scan_patterns`]. Off in this
    /// library default, because the ports are opened exclusively and a gateway embedded in a
    /// test or the demo must not grab the host's adapters; `gateway.toml` turns it on, since
    /// an edge box's USB serial devices are its nodes.
    pub scan: bool,
    /// Device path patterns; the file name may hold one `*` (`/dev/ttyUSB*`), the directory is
    /// literal. A pattern without `*` is a single path.
    pub scan_patterns: Vec<String>,
    /// Line speed, baud.
    pub baud: u32,
    /// How often missing or unplugged ports are retried and the scan repeated.
    pub reopen_interval: Duration,
}

impl Default for SerialConfig {
    fn default() -> Self {
        Self {
            ports: Vec::new(),
            scan: false,
            scan_patterns: vec!["/dev/ttyUSB*".to_owned(), "/dev/ttyACM*".to_owned()],
            baud: 115_200,
            reopen_interval: Duration::from_secs(1),
        }
    }
}

/// Why a command could not be queued for a serial node.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SerialError {
    /// No port with that path is open (never opened, unplugged, or shut down).
    #[error("serial port {0} is not open")]
    NotOpen(String),
    /// The port's command queue is full: the port is not draining.
    #[error("command queue of serial port {0} is full")]
    QueueFull(String),
}

impl SerialError {
    /// Short stable label, for counters.
    pub fn reason(&self) -> &'static str {
        match self {
            SerialError::NotOpen(_) => "not_open",
            SerialError::QueueFull(_) => "queue_full",
        }
    }
}

/// Command queues of the open ports, by path.
type Writers = Arc<Mutex<BTreeMap<String, mpsc::Sender<Vec<u8>>>>>;

/// Sends commands to serial nodes, tells which ports are open and which were lost. Cheap to
/// clone.
#[derive(Debug, Clone, Default)]
pub struct SerialHandle {
    writers: Writers,
    /// Ports lost since the last [`SerialHandle::lost_ports`]; a set, so it stays as small as
    /// the number of ports however often they flap.
    lost: Arc<Mutex<BTreeSet<String>>>,
    lost_notify: Arc<tokio::sync::Notify>,
}

impl SerialHandle {
    /// Queues an already COBS-framed command (delimiter included) for the node on `port`.
    ///
    /// Fails when the port is not open or its queue is full; the command is not kept for later.
    pub fn send(&self, port: &str, framed: Vec<u8>) -> Result<(), SerialError> {
        let writers = self.lock();
        let queue = writers
            .get(port)
            .ok_or_else(|| SerialError::NotOpen(port.to_owned()))?;
        queue.try_send(framed).map_err(|e| match e {
            TrySendError::Full(_) => SerialError::QueueFull(port.to_owned()),
            TrySendError::Closed(_) => SerialError::NotOpen(port.to_owned()),
        })
    }

    /// Paths of the ports open right now, sorted.
    pub fn open_ports(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    /// Waits until at least one open port was lost (unplugged, hung up) and returns the lost
    /// ports' paths; may return none when another call took them first.
    pub async fn lost_ports(&self) -> Vec<String> {
        self.lost_notify.notified().await;
        let mut lost = self.lost.lock().unwrap_or_else(PoisonError::into_inner);
        std::mem::take(&mut *lost).into_iter().collect()
    }

    fn port_lost(&self, path: &str) {
        self.lost
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(path.to_owned());
        // A stored permit if nobody waits yet, so no loss goes unnoticed.
        self.lost_notify.notify_one();
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, mpsc::Sender<Vec<u8>>>> {
        // The map stays consistent across a panic (single insert/remove), so poisoning is moot.
        self.writers.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Starts the serial source: a supervisor that opens ports, keeps them open and feeds every
/// decoded frame or framing error into `inbound` (waiting for room: back-pressure, no drops).
///
/// Must be called inside a Tokio runtime. On `cancel` every port closes within about a read
/// timeout (100 ms) and the returned set completes; it also completes if `inbound` is closed.
///
/// Opened, failing and lost ports are counted in `stats`.
pub fn spawn_serial(
    config: SerialConfig,
    inbound: mpsc::Sender<Inbound>,
    stats: Arc<GatewayStats>,
    cancel: CancellationToken,
) -> (SerialHandle, JoinSet<()>) {
    let handle = SerialHandle::default();
    let mut tasks = JoinSet::new();
    tasks.spawn(supervise(
        config,
        inbound,
        stats,
        cancel.child_token(),
        handle.clone(),
    ));
    (handle, tasks)
}

/// Why a port's reader stopped.
#[derive(Debug)]
enum PortEnd {
    /// Shutdown, or the pipeline went away.
    Stopped,
    /// The device failed: unplugged, hung up, or a hard IO error.
    Lost(io::Error),
}

async fn supervise(
    config: SerialConfig,
    inbound: mpsc::Sender<Inbound>,
    stats: Arc<GatewayStats>,
    stop: CancellationToken,
    handle: SerialHandle,
) {
    let interval = config.reopen_interval.max(MIN_REOPEN_INTERVAL);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut readers: JoinSet<PortEnd> = JoinSet::new();
    let mut running: HashMap<Id, String> = HashMap::new();
    // Last open error per path, so a port that stays missing is reported once, not every tick.
    let mut failing: HashMap<String, String> = HashMap::new();
    let configured: BTreeSet<String> = config
        .ports
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();

    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => break,
            Some(joined) = readers.join_next_with_id() => {
                let (id, end) = match joined {
                    Ok((id, end)) => (id, Some(end)),
                    Err(e) => (e.id(), None),
                };
                let path = running.remove(&id).unwrap_or_default();
                stats.serial_port_closed(!matches!(end, Some(PortEnd::Stopped)));
                match end {
                    Some(PortEnd::Lost(e)) => {
                        // Recovered on its own when the device returns; its machines go stale
                        // after the liveness timeout meanwhile.
                        warn!(port = %path, error = %e, retry = ?interval,
                            "serial port lost (unplugged?); waiting for it to return");
                        handle.port_lost(&path);
                    }
                    Some(PortEnd::Stopped) => debug!(port = %path, "serial port closed"),
                    None => {
                        // A panicked reader never reached its own cleanup.
                        handle.lock().remove(&path);
                        error!(port = %path, "serial port reader panicked; reopening");
                    }
                }
                if inbound.is_closed() {
                    break;
                }
            }
            _ = tick.tick() => {
                if inbound.is_closed() {
                    break;
                }
                let wanted = wanted_ports(&config);
                failing.retain(|path, _| wanted.contains(path));
                let open: BTreeSet<&String> = running.values().collect();
                let missing: Vec<String> =
                    wanted.iter().filter(|p| !open.contains(p)).cloned().collect();
                if missing.is_empty() {
                    continue;
                }
                let baud = config.baud;
                // Opening can do USB control transfers; keep it off the async workers.
                let Ok(attempts) =
                    tokio::task::spawn_blocking(move || open_all(missing, baud)).await
                else {
                    continue;
                };
                for (path, attempt) in attempts {
                    match attempt {
                        Ok((reader, writer)) => {
                            failing.remove(&path);
                            stats.serial_port_adopted();
                            let found_by = if configured.contains(&path) { "config" } else { "scan" };
                            info!(port = %path, baud, found_by,
                                "serial port adopted; its node names the machine in its Hello");
                            let (queue_tx, queue_rx) = mpsc::channel(WRITE_QUEUE);
                            // Registered before the reader starts, so once a frame has arrived
                            // from a port, commands to it are accepted.
                            handle.lock().insert(path.clone(), queue_tx);
                            let port = PortTask {
                                path: path.clone(),
                                inbound: inbound.clone(),
                                stop: stop.clone(),
                                writers: handle.writers.clone(),
                            };
                            let id = readers
                                .spawn_blocking(move || port.run(reader, writer, queue_rx))
                                .id();
                            running.insert(id, path);
                        }
                        Err(e) => {
                            let message = e.to_string();
                            if failing.get(&path) != Some(&message) {
                                stats.serial_port_failed();
                                warn!(port = %path, error = %message, retry = ?interval,
                                    "cannot open serial port; retrying");
                                failing.insert(path, message);
                            } else {
                                debug!(port = %path, error = %message, "serial port still unavailable");
                            }
                        }
                    }
                }
            }
        }
    }

    // Also reached when the pipeline is gone; the other readers must not outlive it.
    stop.cancel();
    while readers.join_next().await.is_some() {}
    debug!("serial source stopped");
}

/// The configured ports plus, with scanning, the matching devices; each path once.
fn wanted_ports(config: &SerialConfig) -> BTreeSet<String> {
    let mut wanted: BTreeSet<String> = config
        .ports
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    if config.scan {
        for pattern in &config.scan_patterns {
            wanted.extend(
                scan_pattern(pattern)
                    .iter()
                    .map(|p| p.to_string_lossy().into_owned()),
            );
        }
    }
    wanted
}

/// Paths matching `pattern`, whose file name may hold one `*`; sorted.
fn scan_pattern(pattern: &str) -> Vec<PathBuf> {
    let path = Path::new(pattern);
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return Vec::new();
    };
    let Some((prefix, suffix)) = name.split_once('*') else {
        return if path.exists() {
            vec![path.to_path_buf()]
        } else {
            Vec::new()
        };
    };
    let parent = path.parent().unwrap_or(Path::new(""));
    let dir = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|entry| {
            entry.file_name().to_str().is_some_and(|n| {
                n.len() >= prefix.len() + suffix.len()
                    && n.starts_with(prefix)
                    && n.ends_with(suffix)
            })
        })
        .map(|entry| parent.join(entry.file_name()))
        .collect();
    found.sort();
    found
}

/// Opens each port twice over: the reader's handle and a duplicate for the writer.
fn open_all(
    paths: Vec<String>,
    baud: u32,
) -> Vec<(String, serialport::Result<(TTYPort, TTYPort)>)> {
    paths
        .into_iter()
        .map(|path| {
            let opened = serialport::new(path.as_str(), baud)
                .timeout(READ_TIMEOUT)
                .open_native()
                .and_then(|reader| {
                    let mut writer = reader.try_clone_native()?;
                    serialport::SerialPort::set_timeout(&mut writer, WRITE_TIMEOUT)?;
                    Ok((reader, writer))
                });
            (path, opened)
        })
        .collect()
}

/// Everything one open port's reader needs.
struct PortTask {
    path: String,
    inbound: mpsc::Sender<Inbound>,
    stop: CancellationToken,
    writers: Writers,
}

/// Removes the port's command queue when the reader ends (even by panic), which is what stops
/// its writer and makes [`SerialHandle::send`] report the port as not open.
struct Unregister<'a> {
    writers: &'a Writers,
    path: &'a str,
}

impl Drop for Unregister<'_> {
    fn drop(&mut self) {
        // No new queue for this path can exist yet: the supervisor reopens only after this
        // reader's task has finished.
        self.writers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(self.path);
    }
}

impl PortTask {
    /// Runs on a blocking thread until shutdown or the port is lost.
    fn run(self, reader: TTYPort, writer: TTYPort, queue: mpsc::Receiver<Vec<u8>>) -> PortEnd {
        std::thread::scope(|scope| {
            scope.spawn(|| write_commands(&self.path, writer, queue));
            let _unregister = Unregister {
                writers: &self.writers,
                path: &self.path,
            };
            self.read(reader)
        })
    }

    fn read(&self, mut port: TTYPort) -> PortEnd {
        let runtime = Handle::current();
        let mut decoder = FrameDecoder::new();
        let mut burst = Burst::default();
        let mut buf = [0u8; 512];
        let mut results = Vec::new();
        loop {
            if self.stop.is_cancelled() {
                return PortEnd::Stopped;
            }
            match port.read(&mut buf) {
                // A hung-up tty reads as end of file on some drivers instead of failing.
                Ok(0) => {
                    return PortEnd::Lost(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "end of file",
                    ));
                }
                Ok(n) => {
                    decoder.feed(&buf[..n], |result| results.push(result));
                    for frame in results.drain(..) {
                        burst.record(&self.path, &frame);
                        if !self.deliver(&runtime, frame) {
                            return PortEnd::Stopped;
                        }
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::TimedOut
                            | io::ErrorKind::WouldBlock
                            | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return PortEnd::Lost(e),
            }
        }
    }

    /// Hands one result to the pipeline, waiting for room; false when shutting down.
    fn deliver(&self, runtime: &Handle, frame: Result<Frame, DecodeError>) -> bool {
        let item = Inbound {
            source: SourceId::Serial(self.path.clone()),
            frame,
            taken_at_ms: None,
        };
        match self.inbound.try_send(item) {
            Ok(()) => true,
            Err(TrySendError::Closed(_)) => false,
            // Not `blocking_send`: a stalled pipeline must not keep this thread from shutdown.
            Err(TrySendError::Full(item)) => runtime.block_on(async {
                tokio::select! {
                    biased;
                    sent = self.inbound.send(item) => sent.is_ok(),
                    () = self.stop.cancelled() => false,
                }
            }),
        }
    }
}

/// Sends queued commands until the port's queue is removed.
fn write_commands(path: &str, mut port: TTYPort, mut queue: mpsc::Receiver<Vec<u8>>) {
    // After a failed write the node may hold half a frame; a lone delimiter makes its decoder
    // drop that instead of gluing it to the next command.
    let mut resync = false;
    while let Some(framed) = queue.blocking_recv() {
        let written = if resync { port.write_all(&[0]) } else { Ok(()) }
            .and_then(|()| port.write_all(&framed));
        match written {
            Ok(()) => resync = false,
            Err(e) => {
                warn!(port = %path, error = %e, "command write to serial port failed");
                resync = true;
            }
        }
    }
}

/// Framing-error bursts on one port: logged when one starts and when it ends, not per frame.
#[derive(Debug, Default)]
struct Burst {
    errors: u64,
}

impl Burst {
    fn record(&mut self, path: &str, frame: &Result<Frame, DecodeError>) {
        match frame {
            Err(e) => {
                if self.errors == 0 {
                    warn!(port = %path, reason = e.reason(), error = %e,
                        "undecodable bytes on serial port; further errors counted until frames decode again");
                }
                self.errors += 1;
            }
            Ok(_) if self.errors > 0 => {
                info!(port = %path, errors = self.errors, "serial port decodes frames again");
                self.errors = 0;
            }
            Ok(_) => {}
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::os::unix::fs::symlink;

    use protocol::cobs::{MAX_WIRE_LEN, cobs_encode, encode_framed};
    use protocol::codec::{self, MAX_FRAME_LEN};
    use protocol::golden;
    use serialport::SerialPort;

    use super::*;

    const DEADLINE: Duration = Duration::from_secs(10);

    fn stats() -> Arc<GatewayStats> {
        Arc::new(GatewayStats::default())
    }

    fn framed(frame: &Frame) -> Vec<u8> {
        let mut buf = [0u8; MAX_WIRE_LEN];
        encode_framed(frame, &mut buf).unwrap().to_vec()
    }

    fn samples(seq: u32) -> Frame {
        let Frame::Samples(mut samples) = golden::samples() else {
            unreachable!("golden samples are samples")
        };
        samples.seq = seq;
        Frame::Samples(samples)
    }

    /// A pty pair: (master = the node's end, slave = the device the gateway opens, its path).
    /// The slave stays open so bytes written before the gateway opens it are buffered.
    fn pty() -> (TTYPort, TTYPort, String) {
        let (mut master, slave) = TTYPort::pair().unwrap();
        // Generous: the master blocks whenever the gateway applies back-pressure.
        master.set_timeout(DEADLINE).unwrap();
        let name = slave.name().unwrap();
        (master, slave, name)
    }

    /// Writes on a thread (the pty fills up under back-pressure) and hands the master back,
    /// because dropping it would unplug the port.
    fn write_in_thread(mut master: TTYPort, bytes: Vec<u8>) -> std::thread::JoinHandle<TTYPort> {
        std::thread::spawn(move || {
            master.write_all(&bytes).unwrap();
            master
        })
    }

    fn config(ports: Vec<PathBuf>) -> SerialConfig {
        SerialConfig {
            ports,
            reopen_interval: Duration::from_millis(20),
            ..SerialConfig::default()
        }
    }

    async fn next(rx: &mut mpsc::Receiver<Inbound>) -> Inbound {
        tokio::time::timeout(DEADLINE, rx.recv())
            .await
            .expect("an inbound frame before the deadline")
            .expect("the source is running")
    }

    async fn shutdown(cancel: CancellationToken, mut tasks: JoinSet<()>) {
        cancel.cancel();
        tokio::time::timeout(Duration::from_secs(2), async {
            while let Some(joined) = tasks.join_next().await {
                joined.unwrap();
            }
        })
        .await
        .expect("serial source stops promptly on cancel");
    }

    #[tokio::test]
    async fn golden_frames_arrive_in_order_exactly_once() {
        let (master, _slave, path) = pty();
        // Small on purpose: the reader must wait for room, never drop.
        let (tx, mut rx) = mpsc::channel(4);
        let cancel = CancellationToken::new();
        let (handle, tasks) = spawn_serial(
            config(vec![path.clone().into()]),
            tx,
            stats(),
            cancel.clone(),
        );

        let stream: Vec<u8> = (1..=500).flat_map(|seq| framed(&samples(seq))).collect();
        let writer = write_in_thread(master, stream);
        for seq in 1..=500 {
            let inbound = next(&mut rx).await;
            assert_eq!(inbound.source, SourceId::Serial(path.clone()));
            assert_eq!(inbound.frame, Ok(samples(seq)));
        }
        let _master = writer.join().unwrap();
        assert!(rx.try_recv().is_err(), "nothing beyond the 500 frames");
        assert_eq!(handle.open_ports(), [path]);
        shutdown(cancel, tasks).await;
    }

    #[tokio::test]
    async fn each_bad_frame_is_one_error_with_its_reason_and_good_frames_continue() {
        let (master, _slave, path) = pty();
        let (tx, mut rx) = mpsc::channel(16);
        let cancel = CancellationToken::new();
        let (_handle, tasks) = spawn_serial(
            config(vec![path.clone().into()]),
            tx,
            stats(),
            cancel.clone(),
        );

        let mut raw = [0u8; MAX_FRAME_LEN];
        let raw = codec::encode(&golden::samples(), &mut raw)
            .unwrap()
            .to_vec();
        let mut bad_crc = raw.clone();
        *bad_crc.last_mut().unwrap() ^= 0x5A;
        let mut bad_crc_wire = [0u8; MAX_WIRE_LEN];
        let n = cobs_encode(&bad_crc, &mut bad_crc_wire).unwrap();

        let mut stream = framed(&golden::hello());
        stream.extend([0x13, 0x37, 0xAB, 0x00]);
        stream.extend(framed(&golden::samples()));
        stream.extend(&bad_crc_wire[..n]);
        stream.push(0);
        stream.extend(framed(&golden::event()));
        stream.extend([0x03, 0x01, 0x02, 0x00]);
        stream.extend(framed(&golden::command()));
        stream.extend(vec![0x55; MAX_WIRE_LEN + 10]);
        stream.push(0);
        stream.extend(framed(&golden::ack()));
        let writer = write_in_thread(master, stream);

        let expected: [Result<Frame, &str>; 9] = [
            Ok(golden::hello()),
            Err("bad_cobs"),
            Ok(golden::samples()),
            Err("bad_crc"),
            Ok(golden::event()),
            Err("truncated"),
            Ok(golden::command()),
            Err("oversize"),
            Ok(golden::ack()),
        ];
        for want in expected {
            let got = next(&mut rx).await;
            assert_eq!(got.source, SourceId::Serial(path.clone()));
            assert_eq!(
                got.frame.as_ref().map_err(DecodeError::reason),
                want.as_ref().map_err(|r| *r)
            );
        }
        let _master = writer.join().unwrap();
        assert!(rx.try_recv().is_err(), "one result per frame");
        shutdown(cancel, tasks).await;
    }

    #[tokio::test]
    async fn an_unplugged_port_comes_back_at_the_same_path() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("node");
        let link_name = link.to_string_lossy().into_owned();
        let (master, slave, target) = pty();
        symlink(&target, &link).unwrap();
        let (tx, mut rx) = mpsc::channel(16);
        let cancel = CancellationToken::new();
        let (handle, tasks) = spawn_serial(config(vec![link.clone()]), tx, stats(), cancel.clone());

        let before: Vec<u8> = (1..=3).flat_map(|seq| framed(&samples(seq))).collect();
        let master = write_in_thread(master, before).join().unwrap();
        for seq in 1..=3 {
            let got = next(&mut rx).await;
            assert_eq!(got.source, SourceId::Serial(link_name.clone()));
            assert_eq!(got.frame, Ok(samples(seq)));
        }

        // Unplug: the master closing hangs up the slave under the gateway.
        drop(master);
        drop(slave);
        let lost = tokio::time::timeout(DEADLINE, handle.lost_ports())
            .await
            .unwrap();
        assert_eq!(lost, vec![link_name.clone()], "the unplug is reported");
        // Plug back in: a new device behind the same path, swapped atomically.
        let (master, _slave, target) = pty();
        let fresh = dir.path().join("node.new");
        symlink(&target, &fresh).unwrap();
        std::fs::rename(&fresh, &link).unwrap();

        let after: Vec<u8> = (4..=6).flat_map(|seq| framed(&samples(seq))).collect();
        let _master = write_in_thread(master, after).join().unwrap();
        for seq in 4..=6 {
            let got = next(&mut rx).await;
            assert_eq!(got.source, SourceId::Serial(link_name.clone()));
            assert_eq!(got.frame, Ok(samples(seq)));
        }
        assert_eq!(handle.open_ports(), [link_name]);
        shutdown(cancel, tasks).await;
    }

    #[tokio::test]
    async fn a_sent_command_reaches_the_node() {
        let (master, _slave, path) = pty();
        let (tx, mut rx) = mpsc::channel(16);
        let cancel = CancellationToken::new();
        let (handle, tasks) = spawn_serial(
            config(vec![path.clone().into()]),
            tx,
            stats(),
            cancel.clone(),
        );

        // A frame from the node proves the port is open, without polling for it.
        let master = write_in_thread(master, framed(&golden::hello()))
            .join()
            .unwrap();
        assert_eq!(next(&mut rx).await.frame, Ok(golden::hello()));

        handle.send(&path, framed(&golden::command())).unwrap();
        assert_eq!(
            handle.send("/dev/ttyNOPE0", framed(&golden::command())),
            Err(SerialError::NotOpen("/dev/ttyNOPE0".to_owned()))
        );
        let received = tokio::task::spawn_blocking(move || {
            let mut master = master;
            let mut decoder = FrameDecoder::new();
            let mut byte = [0u8; 1];
            loop {
                master.read_exact(&mut byte).unwrap();
                if let Some(result) = decoder.push(byte[0]) {
                    return (result, master);
                }
            }
        });
        let (result, _master) = tokio::time::timeout(DEADLINE, received)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(result, Ok(golden::command()));
        shutdown(cancel, tasks).await;
    }

    #[tokio::test]
    async fn scanning_picks_up_matching_devices_only() {
        let dir = tempfile::tempdir().unwrap();
        let mut masters = Vec::new();
        let mut slaves = Vec::new();
        let mut paths = Vec::new();
        for name in ["ttyUSB0", "ttyUSB1", "ttyS0"] {
            let (master, slave, target) = pty();
            let link = dir.path().join(name);
            symlink(&target, &link).unwrap();
            masters.push(master);
            slaves.push(slave);
            paths.push(link.to_string_lossy().into_owned());
        }
        let (tx, mut rx) = mpsc::channel(16);
        let cancel = CancellationToken::new();
        let pattern = format!("{}/ttyUSB*", dir.path().display());
        let config = SerialConfig {
            scan: true,
            scan_patterns: vec![pattern],
            ..config(Vec::new())
        };
        let (handle, tasks) = spawn_serial(config, tx, stats(), cancel.clone());

        for master in &mut masters {
            master.write_all(&framed(&golden::hello())).unwrap();
        }
        let mut sources = vec![next(&mut rx).await.source, next(&mut rx).await.source];
        sources.sort();
        assert_eq!(
            sources,
            [
                SourceId::Serial(paths[0].clone()),
                SourceId::Serial(paths[1].clone())
            ]
        );
        // Both were opened in the same pass, so the set is complete by now.
        assert_eq!(handle.open_ports(), paths[..2]);
        shutdown(cancel, tasks).await;
    }

    #[test]
    fn patterns_match_prefix_and_suffix_around_the_star() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["ttyUSB0", "ttyUSB12", "ttyACM0", "xttyUSB0", "ttyUSB3.lock"] {
            std::fs::write(dir.path().join(name), b"").unwrap();
        }
        let scan = |pattern: &str| -> Vec<String> {
            scan_pattern(&format!("{}/{pattern}", dir.path().display()))
                .iter()
                .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
                .collect()
        };
        assert_eq!(scan("ttyUSB*"), ["ttyUSB0", "ttyUSB12", "ttyUSB3.lock"]);
        assert_eq!(scan("ttyUSB*.lock"), ["ttyUSB3.lock"]);
        assert_eq!(scan("ttyACM0"), ["ttyACM0"]);
        assert_eq!(scan("ttyACM1"), Vec::<String>::new());
        assert!(scan_pattern("/nonexistent-dir/ttyUSB*").is_empty());
    }
}
