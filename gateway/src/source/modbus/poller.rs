//! The polling task: connect, read, speak as a virtual node, and recover from failures.

use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use protocol::{FirmwareVersion, Frame, Hello, MetricDescriptor, NodeId, Reading, Samples, Unit};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_modbus::client::{Client as _, Context};
use tokio_modbus::{ExceptionCode, Request, Response, Slave};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::config::{ModbusDevice, RegisterTable};
use super::plan::{ReadBlock, plan_reads};
use crate::source::{Inbound, SourceId};
use crate::stats::{DropReason, GatewayStats};

/// Longest wait between reconnect attempts (unless the poll interval is longer).
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// How one device's link is doing; published by [`run_modbus_device_with_status`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ModbusLinkStatus {
    /// A TCP connection to the device is open.
    pub connected: bool,
    /// TCP connections established so far.
    pub connections: u64,
    /// Polls that produced a `Samples` frame.
    pub polls_ok: u64,
    /// Connect attempts and polls that failed, in all.
    pub failed_polls: u64,
    /// Runs of consecutive failures; each logs one WARN when it starts and one INFO when a poll
    /// succeeds again.
    pub failure_bursts: u64,
    /// Failures in the current run; 0 while the device answers.
    pub burst_failed_polls: u64,
}

/// Polls one Modbus TCP device until `cancel` fires, delivering its `Hello` and `Samples` to
/// `inbound` as the virtual node [`ModbusDevice::node_id`].
///
/// A `Hello` precedes the first `Samples` of every TCP connection (so the first one after start
/// and after each reconnect); `Samples::seq` starts at 1 and keeps counting across reconnects.
/// Failed polls are counted as [`DropReason::ModbusTimeout`] or [`DropReason::ModbusError`].
/// A device that fails validation is logged and not polled. Returns early if `inbound` closes.
pub async fn run_modbus_device(
    device: ModbusDevice,
    inbound: mpsc::Sender<Inbound>,
    stats: Arc<GatewayStats>,
    cancel: CancellationToken,
) {
    let (status, _) = watch::channel(ModbusLinkStatus::default());
    run_modbus_device_with_status(device, inbound, stats, cancel, status).await;
}

/// [`run_modbus_device`], also publishing the link's [`ModbusLinkStatus`] to `status`.
pub async fn run_modbus_device_with_status(
    device: ModbusDevice,
    inbound: mpsc::Sender<Inbound>,
    stats: Arc<GatewayStats>,
    cancel: CancellationToken,
    status: watch::Sender<ModbusLinkStatus>,
) {
    if let Err(err) = device.validate() {
        error!(%err, "modbus device not started");
        return;
    }
    let mut poller = Poller::new(device, inbound, stats, status);
    cancel.run_until_cancelled(poller.run()).await;
    poller.status.send_modify(|s| s.connected = false);
}

/// Why a connect attempt or a poll produced no sample.
#[derive(Debug)]
enum Failure {
    Timeout,
    Io(io::Error),
    Protocol(tokio_modbus::ProtocolError),
    Exception(ExceptionCode),
    /// The answer had the right function code but not the registers asked for.
    WrongAnswer(&'static str),
}

impl Failure {
    fn reason(&self) -> DropReason {
        match self {
            Failure::Timeout => DropReason::ModbusTimeout,
            _ => DropReason::ModbusError,
        }
    }

    /// Whether the connection is still usable. An exception is a well-formed answer (usually a
    /// mapping mistake or a busy device) that reconnecting would not fix; after a timeout or a
    /// garbled answer a late or stray response could still arrive, so the stream is abandoned.
    fn keeps_connection(&self) -> bool {
        matches!(self, Failure::Exception(_))
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Timeout => f.write_str("timed out"),
            Failure::Io(err) => write!(f, "{err}"),
            Failure::Protocol(err) => write!(f, "{err}"),
            Failure::Exception(code) => write!(f, "exception response: {code}"),
            Failure::WrongAnswer(what) => f.write_str(what),
        }
    }
}

/// How a connection's polling loop ended.
enum Ended {
    /// The connection failed; reconnect after a backoff.
    Failed,
    /// Nobody takes frames any more.
    InboundClosed,
}

#[derive(Debug)]
struct Backoff {
    base: Duration,
    cap: Duration,
    next: Duration,
}

impl Backoff {
    fn new(base: Duration) -> Self {
        Self {
            base,
            cap: MAX_BACKOFF.max(base),
            next: base,
        }
    }

    fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = self.next.saturating_mul(2).min(self.cap);
        delay
    }

    fn reset(&mut self) {
        self.next = self.base;
    }
}

#[derive(Debug)]
struct Poller {
    device: ModbusDevice,
    source: SourceId,
    node: NodeId,
    plan: Vec<ReadBlock>,
    poll_every: Duration,
    timeout: Duration,
    inbound: mpsc::Sender<Inbound>,
    stats: Arc<GatewayStats>,
    status: watch::Sender<ModbusLinkStatus>,
    /// The last `Samples::seq` sent; 0 before the first.
    seq: u32,
    /// When the virtual node "booted", for `Samples::uptime_ms`.
    started: Instant,
    /// The virtual node's boot id: new for every gateway process (its `seq` restarts at 1).
    boot: u32,
}

impl Poller {
    fn new(
        device: ModbusDevice,
        inbound: mpsc::Sender<Inbound>,
        stats: Arc<GatewayStats>,
        status: watch::Sender<ModbusLinkStatus>,
    ) -> Self {
        Self {
            source: SourceId::Modbus(device.name.clone()),
            node: device.node_id(),
            plan: plan_reads(&device.registers),
            poll_every: Duration::from_millis(device.poll_interval_ms),
            timeout: Duration::from_millis(device.timeout_ms),
            device,
            inbound,
            stats,
            status,
            seq: 0,
            started: Instant::now(),
            // The wall clock differs between gateway runs, which is all a boot id needs.
            boot: (crate::run::now_ms() ^ (crate::run::now_ms() >> 32)) as u32,
        }
    }

    async fn run(&mut self) {
        let mut backoff = Backoff::new(self.poll_every);
        loop {
            match self.connect().await {
                Ok(mut context) => {
                    debug!(device = %self.device.name, address = %self.device.address, "modbus connected");
                    self.status.send_modify(|s| {
                        s.connected = true;
                        s.connections += 1;
                    });
                    let ended = self.poll_connection(&mut context, &mut backoff).await;
                    // Dropped rather than `disconnect()`ed: after a failure the peer may not be reading, and a
                    // graceful shutdown could wait on it.
                    drop(context);
                    self.status.send_modify(|s| s.connected = false);
                    if let Ended::InboundClosed = ended {
                        debug!(device = %self.device.name, "inbound channel closed; modbus poller stops");
                        return;
                    }
                }
                Err(failure) => self.failed(&failure),
            }
            tokio::time::sleep(backoff.next_delay()).await;
        }
    }

    async fn connect(&self) -> Result<Context, Failure> {
        let stream = tokio::time::timeout(
            self.timeout,
            TcpStream::connect(self.device.address.as_str()),
        )
        .await
        .map_err(|_| Failure::Timeout)?
        .map_err(Failure::Io)?;
        // Requests are tiny and each waits for its answer; Nagle would only add latency.
        if let Err(err) = stream.set_nodelay(true) {
            debug!(%err, "could not set TCP_NODELAY");
        }
        Ok(tokio_modbus::client::tcp::attach_slave(
            stream,
            Slave(self.device.unit_id),
        ))
    }

    async fn poll_connection(&mut self, context: &mut Context, backoff: &mut Backoff) -> Ended {
        let mut ticker = tokio::time::interval(self.poll_every);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut hello_sent = false;
        loop {
            ticker.tick().await;
            let values = match self.poll(context).await {
                Ok(values) => values,
                Err(failure) => {
                    self.failed(&failure);
                    if failure.keeps_connection() {
                        continue;
                    }
                    return Ended::Failed;
                }
            };
            backoff.reset();
            self.recovered();
            if self.seq == u32::MAX {
                // The pipeline treats a Hello as a reboot (its seq restarts), so wrap behind one.
                self.seq = 0;
                self.boot = self.boot.wrapping_add(1);
                hello_sent = false;
            }
            if !hello_sent {
                if !self.send(Frame::Hello(self.hello())).await {
                    return Ended::InboundClosed;
                }
                hello_sent = true;
            }
            self.seq += 1;
            if !self.send(Frame::Samples(self.samples(&values))).await {
                return Ended::InboundClosed;
            }
        }
    }

    /// One poll: every planned read, each under the timeout; the scaled values in register order.
    async fn poll(&self, context: &mut Context) -> Result<Vec<f64>, Failure> {
        let registers = &self.device.registers;
        let mut values = vec![f64::NAN; registers.len()];
        for block in &self.plan {
            let words = self.read(context, block).await?;
            for &(index, offset) in &block.members {
                if let (Some(register), Some(words)) = (registers.get(index), words.get(offset..)) {
                    values[index] = register.value(words);
                }
            }
        }
        Ok(values)
    }

    async fn read(&self, context: &mut Context, block: &ReadBlock) -> Result<Vec<u16>, Failure> {
        let request = match block.table {
            RegisterTable::Holding => Request::ReadHoldingRegisters(block.start, block.count),
            RegisterTable::Input => Request::ReadInputRegisters(block.start, block.count),
        };
        // `Client::call` rather than `Reader::read_*`: those `debug_assert` the register count,
        // which would let a misbehaving device panic a debug build.
        let response = tokio::time::timeout(self.timeout, context.call(request))
            .await
            .map_err(|_| Failure::Timeout)?
            .map_err(|err| match err {
                tokio_modbus::Error::Transport(err) => Failure::Io(err),
                tokio_modbus::Error::Protocol(err) => Failure::Protocol(err),
            })?
            .map_err(Failure::Exception)?;
        match response {
            Response::ReadHoldingRegisters(words) | Response::ReadInputRegisters(words)
                if words.len() == usize::from(block.count) =>
            {
                Ok(words)
            }
            Response::ReadHoldingRegisters(_) | Response::ReadInputRegisters(_) => Err(
                Failure::WrongAnswer("answer has the wrong number of registers"),
            ),
            _ => Err(Failure::WrongAnswer("answer is not a register read")),
        }
    }

    fn failed(&self, failure: &Failure) {
        self.stats.dropped(failure.reason());
        let mut first = false;
        self.status.send_modify(|s| {
            first = s.burst_failed_polls == 0;
            if first {
                s.failure_bursts += 1;
            }
            s.burst_failed_polls += 1;
            s.failed_polls += 1;
        });
        if first {
            warn!(device = %self.device.name, address = %self.device.address, error = %failure,
                "modbus device not answering; retrying with backoff");
        } else {
            debug!(device = %self.device.name, error = %failure, "modbus poll failed");
        }
    }

    fn recovered(&self) {
        let mut failed = 0;
        self.status.send_modify(|s| {
            failed = s.burst_failed_polls;
            s.burst_failed_polls = 0;
            s.polls_ok += 1;
        });
        if failed > 0 {
            info!(device = %self.device.name, failed_polls = failed, "modbus device answering again");
        }
    }

    /// Returns false once the pipeline has gone away.
    async fn send(&self, frame: Frame) -> bool {
        let inbound = Inbound {
            source: self.source.clone(),
            frame: Ok(frame),
            taken_at_ms: None,
        };
        self.inbound.send(inbound).await.is_ok()
    }

    fn hello(&self) -> Hello {
        let period_ms = u32::try_from(self.device.poll_interval_ms).unwrap_or(u32::MAX);
        let mut hello = Hello {
            node: self.node,
            firmware: gateway_version(),
            boot: self.boot,
            machine: Some(self.device.machine.clone()),
            metrics: Default::default(),
        };
        for (index, register) in (0u8..).zip(&self.device.registers) {
            let descriptor = MetricDescriptor {
                index,
                name: register.metric.clone(),
                // Validated before polling starts.
                unit: Unit::from_symbol(&register.unit).unwrap_or(Unit::Dimensionless),
                period_ms,
            };
            if hello.metrics.push(descriptor).is_err() {
                break;
            }
        }
        hello
    }

    fn samples(&self, values: &[f64]) -> Samples {
        let mut samples = Samples {
            node: self.node,
            seq: self.seq,
            uptime_ms: u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            readings: Default::default(),
        };
        for (index, value) in (0u8..).zip(values) {
            let value = *value as f32;
            if samples.readings.push(Reading { index, value }).is_err() {
                break;
            }
        }
        samples
    }
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
