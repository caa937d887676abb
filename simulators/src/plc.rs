//! A PLC-style Modbus TCP server exposing a machine model's values, for the gateway's Modbus
//! source and for any Modbus client.
//!
//! # Register map
//!
//! With the machine's metrics numbered `i = 0, 1, …` in [`Machine::metrics`] order:
//!
//! | table   | address          | content                                              |
//! |---------|------------------|------------------------------------------------------|
//! | input   | `2i`, `2i + 1`   | metric `i` as IEEE 754 `f32`, high word first         |
//! | holding | `2i`, `2i + 1`   | metric `i` × 100, rounded, as `i32`, high word first  |
//! | holding | 1000             | machine state code (`u16`, Off=0 … Fault=4)           |
//! | holding | 1001             | number of metrics (`u16`)                             |
//!
//! Bytes within a register are big-endian, as Modbus specifies. Reads outside the map answer
//! "illegal data address"; writes answer "illegal function". In the gateway's `[[modbus]]`
//! terms: `table = "input"`, `data_type = "f32"` (defaults for word and byte order), or
//! `table = "holding"`, `data_type = "i32"`, `scale = 0.01`.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use protocol::Unit;
use tokio::net::{TcpListener, TcpStream};
use tokio_modbus::server::Service;
use tokio_modbus::server::tcp::{Server, accept_tcp_connection};
use tokio_modbus::{ExceptionCode, Request, Response};
use tokio_util::sync::CancellationToken;

use crate::machines::Machine;
use crate::timeline::Timeline;

/// Holding register of the state code.
pub const STATE_REGISTER: u16 = 1000;
/// Holding register of the metric count.
pub const COUNT_REGISTER: u16 = 1001;

/// The registers at one instant, and the values they encode.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// The values, in metric order.
    pub values: Vec<(&'static str, Unit, f32)>,
    /// Input registers from 0.
    pub input: Vec<u16>,
    /// Holding registers from 0 (the `i32` block).
    pub holding: Vec<u16>,
    /// State code.
    pub state: u16,
}

impl Snapshot {
    /// The registers of `machine` now.
    pub fn of(machine: &dyn Machine) -> Self {
        let values = machine.values();
        let mut input = Vec::with_capacity(values.len() * 2);
        let mut holding = Vec::with_capacity(values.len() * 2);
        for &(_, _, v) in &values {
            let bits = v.to_bits();
            input.extend([(bits >> 16) as u16, bits as u16]);
            // `as` saturates: a value beyond ±21 million reads as the i32 limit.
            let centi = (f64::from(v) * 100.0).round() as i32 as u32;
            holding.extend([(centi >> 16) as u16, centi as u16]);
        }
        Self {
            values,
            input,
            holding,
            state: u16::from(machine.state().code()),
        }
    }

    fn holding_word(&self, address: u16) -> Option<u16> {
        match address {
            STATE_REGISTER => Some(self.state),
            COUNT_REGISTER => u16::try_from(self.values.len()).ok(),
            a => self.holding.get(usize::from(a)).copied(),
        }
    }

    fn read(&self, table: Table, start: u16, count: u16) -> Result<Vec<u16>, ExceptionCode> {
        if count == 0 || count > 125 {
            return Err(ExceptionCode::IllegalDataValue);
        }
        (0..count)
            .map(|i| {
                let a = start.checked_add(i)?;
                match table {
                    Table::Input => self.input.get(usize::from(a)).copied(),
                    Table::Holding => self.holding_word(a),
                }
            })
            .collect::<Option<Vec<u16>>>()
            .ok_or(ExceptionCode::IllegalDataAddress)
    }
}

#[derive(Debug, Clone, Copy)]
enum Table {
    Input,
    Holding,
}

/// The PLC's register memory, shared between the server and whoever wants to look.
#[derive(Debug, Clone, Default)]
pub struct PlcMemory(Arc<Mutex<Snapshot>>);

impl PlcMemory {
    /// The registers now.
    pub fn snapshot(&self) -> Snapshot {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn store(&self, snapshot: Snapshot) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = snapshot;
    }
}

#[derive(Debug, Clone)]
struct PlcService(PlcMemory);

type Answer = Pin<Box<dyn Future<Output = Result<Response, ExceptionCode>> + Send>>;

impl Service for PlcService {
    type Request = Request<'static>;
    type Response = Response;
    type Exception = ExceptionCode;
    type Future = Answer;

    fn call(&self, request: Request<'static>) -> Answer {
        let memory = self.0.snapshot();
        let answer = match request {
            Request::ReadInputRegisters(start, count) => memory
                .read(Table::Input, start, count)
                .map(Response::ReadInputRegisters),
            Request::ReadHoldingRegisters(start, count) => memory
                .read(Table::Holding, start, count)
                .map(Response::ReadHoldingRegisters),
            _ => Err(ExceptionCode::IllegalFunction),
        };
        Box::pin(std::future::ready(answer))
    }
}

/// A simulated PLC: a machine model, its timeline, and the register memory it keeps current.
#[derive(Debug)]
pub struct Plc {
    machine: Box<dyn Machine>,
    timeline: Timeline,
    sample_period: Duration,
    uptime_ms: u64,
    memory: PlcMemory,
}

impl Plc {
    /// A PLC over `machine`, advancing it by `sample_period` of simulated time per scan.
    pub fn new(machine: Box<dyn Machine>, timeline: Timeline, sample_period: Duration) -> Self {
        let memory = PlcMemory::default();
        memory.store(Snapshot::of(&*machine));
        Self {
            machine,
            timeline,
            sample_period,
            uptime_ms: 0,
            memory,
        }
    }

    /// Runs `scans` scans at once, without a server: a warm-up before serving.
    pub fn advance(&mut self, scans: u32) {
        for _ in 0..scans {
            self.scan();
        }
    }

    fn scan(&mut self) {
        self.timeline
            .apply_due(&mut *self.machine, self.uptime_ms, protocol::NodeId(0));
        self.machine.step(self.sample_period);
        self.uptime_ms += u64::try_from(self.sample_period.as_millis()).unwrap_or(u64::MAX);
        self.memory.store(Snapshot::of(&*self.machine));
    }

    /// The register memory, to read what the PLC serves.
    pub fn memory(&self) -> PlcMemory {
        self.memory.clone()
    }

    /// Serves Modbus TCP on `listener` until `cancel`, scanning every `scan_interval` of wall
    /// time, or never (`None`: the registers hold still, for exact checks).
    pub async fn run(
        mut self,
        listener: TcpListener,
        scan_interval: Option<Duration>,
        cancel: CancellationToken,
    ) -> std::io::Result<()> {
        let service = PlcService(self.memory.clone());
        let server = Server::new(listener);
        let on_connected = move |stream: TcpStream, socket_addr: SocketAddr| {
            let service = service.clone();
            async move {
                tracing::debug!(%socket_addr, "Modbus client connected");
                accept_tcp_connection(stream, socket_addr, move |_| Ok(Some(service.clone())))
            }
        };
        let on_error = |error| tracing::warn!(%error, "Modbus connection failed");
        let serve = server.serve(&on_connected, on_error);
        tokio::pin!(serve);
        let mut ticker = scan_interval
            .filter(|d| !d.is_zero())
            .map(tokio::time::interval);
        loop {
            tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                served = &mut serve => return served,
                () = async {
                    match ticker.as_mut() {
                        Some(t) => { t.tick().await; }
                        None => std::future::pending().await,
                    }
                } => self.scan(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machines::MachineKind;

    #[test]
    fn registers_encode_every_value_two_ways() {
        let mut m = MachineKind::Compressor.build(1);
        m.step(Duration::from_secs(100));
        let s = Snapshot::of(&*m);
        assert_eq!(s.input.len(), 2 * s.values.len());
        for (i, &(_, _, v)) in s.values.iter().enumerate() {
            let f =
                f32::from_bits((u32::from(s.input[2 * i]) << 16) | u32::from(s.input[2 * i + 1]));
            assert_eq!(f, v);
            let c = ((u32::from(s.holding[2 * i]) << 16) | u32::from(s.holding[2 * i + 1])) as i32;
            assert!((f64::from(c) / 100.0 - f64::from(v)).abs() <= 0.005 + 1e-9);
        }
        assert_eq!(
            s.read(Table::Holding, STATE_REGISTER, 2),
            Ok(vec![s.state, 6])
        );
        assert_eq!(
            s.read(Table::Input, 11, 2),
            Err(ExceptionCode::IllegalDataAddress)
        );
        assert_eq!(
            s.read(Table::Input, 0, 0),
            Err(ExceptionCode::IllegalDataValue)
        );
    }
}
