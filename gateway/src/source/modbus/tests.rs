//! The poller against a real Modbus TCP server (tokio-modbus `tcp-server`) on loopback, and the
//! config checks.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use protocol::{Frame, Hello, Samples, Unit};
use serde::Deserialize;
use serde::de::IntoDeserializer;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_modbus::server::Service;
use tokio_modbus::server::tcp::{Server, accept_tcp_connection};
use tokio_modbus::{ExceptionCode, Request, Response};
use tokio_util::sync::CancellationToken;

use super::*;
use crate::source::{Inbound, SourceId};
use crate::stats::{DropReason, GatewayStats};

/// Generous: the tests only wait this long when something is broken.
const WAIT: Duration = Duration::from_secs(10);
const NAME: &str = "press-plc";

#[derive(Debug, Default)]
struct Memory {
    holding: HashMap<u16, u16>,
    input: HashMap<u16, u16>,
    /// Every read request served, in order.
    reads: Vec<(RegisterTable, u16, u16)>,
}

impl Memory {
    fn with(table: RegisterTable, start: u16, words: &[u16]) -> Self {
        let mut memory = Memory::default();
        memory.set(table, start, words);
        memory
    }

    fn set(&mut self, table: RegisterTable, start: u16, words: &[u16]) {
        let map = match table {
            RegisterTable::Holding => &mut self.holding,
            RegisterTable::Input => &mut self.input,
        };
        for (address, word) in (start..).zip(words) {
            map.insert(address, *word);
        }
    }
}

/// A PLC-like service: registers from a shared map, and a switch that makes it stop answering.
#[derive(Debug, Clone)]
struct Plc {
    memory: Arc<Mutex<Memory>>,
    stalled: watch::Receiver<bool>,
}

type Answer = Pin<Box<dyn Future<Output = Result<Response, ExceptionCode>> + Send>>;

impl Service for Plc {
    type Request = Request<'static>;
    type Response = Response;
    type Exception = ExceptionCode;
    type Future = Answer;

    fn call(&self, request: Request<'static>) -> Answer {
        let memory = Arc::clone(&self.memory);
        let mut stalled = self.stalled.clone();
        Box::pin(async move {
            // Held until released, like a PLC stuck in a long scan; the TCP link stays up.
            let _ = stalled.wait_for(|stalled| !*stalled).await;
            let (table, start, count) = match request {
                Request::ReadHoldingRegisters(start, count) => {
                    (RegisterTable::Holding, start, count)
                }
                Request::ReadInputRegisters(start, count) => (RegisterTable::Input, start, count),
                _ => return Err(ExceptionCode::IllegalFunction),
            };
            let mut memory = memory.lock().expect("memory lock");
            memory.reads.push((table, start, count));
            let map = match table {
                RegisterTable::Holding => &memory.holding,
                RegisterTable::Input => &memory.input,
            };
            let words = (0..count)
                .map(|i| start.checked_add(i).and_then(|a| map.get(&a).copied()))
                .collect::<Option<Vec<u16>>>()
                .ok_or(ExceptionCode::IllegalDataAddress)?;
            Ok(match table {
                RegisterTable::Holding => Response::ReadHoldingRegisters(words),
                RegisterTable::Input => Response::ReadInputRegisters(words),
            })
        })
    }
}

#[derive(Debug)]
struct PlcServer {
    addr: SocketAddr,
    memory: Arc<Mutex<Memory>>,
    stall: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl PlcServer {
    async fn start(memory: Memory) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        Self::start_on(listener, memory)
    }

    fn start_on(listener: TcpListener, memory: Memory) -> Self {
        let addr = listener.local_addr().expect("local addr");
        let memory = Arc::new(Mutex::new(memory));
        let (stall, stalled) = watch::channel(false);
        let plc = Plc {
            memory: Arc::clone(&memory),
            stalled,
        };
        let task = tokio::spawn(async move {
            let server = Server::new(listener);
            let on_connected = move |stream: TcpStream, socket_addr: SocketAddr| {
                let plc = plc.clone();
                async move { accept_tcp_connection(stream, socket_addr, move |_| Ok(Some(plc.clone()))) }
            };
            let _ = server.serve(&on_connected, |_err| {}).await;
        });
        Self {
            addr,
            memory,
            stall,
            task,
        }
    }

    fn memory(&self) -> std::sync::MutexGuard<'_, Memory> {
        self.memory.lock().expect("memory lock")
    }
}

impl Drop for PlcServer {
    fn drop(&mut self) {
        // Dropping `serve` also cancels its per-connection tasks.
        self.task.abort();
    }
}

fn register(
    metric: &str,
    table: RegisterTable,
    address: u16,
    data_type: RegisterType,
) -> RegisterMap {
    RegisterMap {
        metric: metric.parse().expect("valid metric"),
        unit: String::new(),
        table,
        address,
        data_type,
        word_order: WordOrder::Big,
        byte_order: ByteOrder::Big,
        scale: 1.0,
        offset: 0.0,
    }
}

fn device(addr: SocketAddr, registers: Vec<RegisterMap>) -> ModbusDevice {
    ModbusDevice {
        name: NAME.into(),
        machine: "press-1".parse().expect("valid machine"),
        address: addr.to_string(),
        unit_id: 1,
        poll_interval_ms: 20,
        timeout_ms: 200,
        registers,
    }
}

fn one_register() -> Vec<RegisterMap> {
    vec![register(
        "press.count",
        RegisterTable::Holding,
        0,
        RegisterType::U16,
    )]
}

#[derive(Debug)]
struct Running {
    frames: mpsc::Receiver<Inbound>,
    stats: Arc<GatewayStats>,
    status: watch::Receiver<ModbusLinkStatus>,
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

impl Running {
    fn spawn(device: ModbusDevice) -> Self {
        let (tx, frames) = mpsc::channel(64);
        let stats = Arc::new(GatewayStats::default());
        let (status_tx, status) = watch::channel(ModbusLinkStatus::default());
        let cancel = CancellationToken::new();
        let task = tokio::spawn(run_modbus_device_with_status(
            device,
            tx,
            Arc::clone(&stats),
            cancel.clone(),
            status_tx,
        ));
        Self {
            frames,
            stats,
            status,
            cancel,
            task,
        }
    }

    async fn next(&mut self) -> Frame {
        let inbound = tokio::time::timeout(WAIT, self.frames.recv())
            .await
            .expect("a frame in time")
            .expect("poller still running");
        assert_eq!(inbound.source, SourceId::Modbus(NAME.into()));
        inbound.frame.expect("a decoded frame")
    }

    async fn hello(&mut self) -> Hello {
        match self.next().await {
            Frame::Hello(hello) => hello,
            other => panic!("expected Hello, got {other:?}"),
        }
    }

    async fn samples(&mut self) -> Samples {
        match self.next().await {
            Frame::Samples(samples) => samples,
            other => panic!("expected Samples, got {other:?}"),
        }
    }

    async fn status_until(
        &mut self,
        done: impl FnMut(&ModbusLinkStatus) -> bool,
    ) -> ModbusLinkStatus {
        *tokio::time::timeout(WAIT, self.status.wait_for(done))
            .await
            .expect("status in time")
            .expect("poller still running")
    }

    fn dropped(&self, reason: DropReason) -> u64 {
        self.stats.snapshot().dropped(reason)
    }

    async fn stop(self) {
        self.cancel.cancel();
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("poller stops when cancelled")
            .expect("poller did not panic");
    }
}

fn assert_close(actual: f32, expected: f64, what: &str) {
    assert!(
        (f64::from(actual) - expected).abs() < 1e-3,
        "{what}: {actual} != {expected}"
    );
}

#[tokio::test]
async fn hello_then_samples_decoded_scaled_and_numbered_from_one() {
    use ByteOrder as B;
    use RegisterTable::{Holding, Input};
    use RegisterType as T;
    use WordOrder as W;
    let mut memory = Memory::default();
    memory.set(Holding, 0, &[1234, 0xffff, 0x0001, 0x1170, 0x42f6, 0xe979]);
    memory.set(Holding, 20, &[3]);
    memory.set(Input, 10, &[0xe979, 0x42f6, 0xf642, 0x79e9, 0x90ee, 0xfeff]);
    let plc = PlcServer::start(memory).await;

    let layout = |mut r: RegisterMap, unit: &str, word_order, byte_order, scale, offset| {
        r.unit = unit.into();
        r.word_order = word_order;
        r.byte_order = byte_order;
        r.scale = scale;
        r.offset = offset;
        r
    };
    let registers = vec![
        layout(
            register("press.force", Holding, 0, T::U16),
            "",
            W::Big,
            B::Big,
            0.1,
            0.0,
        ),
        layout(
            register("press.temp", Holding, 1, T::I16),
            "degC",
            W::Big,
            B::Big,
            1.0,
            10.0,
        ),
        layout(
            register("press.parts", Holding, 2, T::U32),
            "count",
            W::Big,
            B::Big,
            1.0,
            0.0,
        ),
        layout(
            register("press.f_bb", Holding, 4, T::F32),
            "bar",
            W::Big,
            B::Big,
            1.0,
            0.0,
        ),
        layout(
            register("press.f_lb", Input, 10, T::F32),
            "bar",
            W::Little,
            B::Big,
            1.0,
            0.0,
        ),
        layout(
            register("press.f_bl", Input, 12, T::F32),
            "bar",
            W::Big,
            B::Little,
            1.0,
            0.0,
        ),
        layout(
            register("press.i_ll", Input, 14, T::I32),
            "W",
            W::Little,
            B::Little,
            0.001,
            0.0,
        ),
        layout(
            register("press.mode", Holding, 20, T::U16),
            "state",
            W::Big,
            B::Big,
            1.0,
            0.0,
        ),
    ];
    let config = device(plc.addr, registers.clone());
    let mut running = Running::spawn(config.clone());

    let hello = running.hello().await;
    assert_eq!(hello.node, config.node_id());
    assert_eq!(hello.machine, Some(config.machine.clone()));
    assert_eq!(hello.metrics.len(), registers.len());
    for ((descriptor, register), index) in hello.metrics.iter().zip(&registers).zip(0u8..) {
        assert_eq!(descriptor.index, index);
        assert_eq!(descriptor.name, register.metric);
        assert_eq!(Some(descriptor.unit), Unit::from_symbol(&register.unit));
        assert_eq!(descriptor.period_ms, 20);
    }

    let first = running.samples().await;
    assert_eq!(first.node, config.node_id());
    assert_eq!(first.seq, 1);
    let expected = [123.4, 9.0, 70000.0, 123.456, 123.456, 123.456, -70.0, 3.0];
    assert_eq!(first.readings.len(), expected.len());
    for ((reading, expected), index) in first.readings.iter().zip(expected).zip(0u8..) {
        assert_eq!(reading.index, index);
        assert_close(
            reading.value,
            expected,
            registers[usize::from(index)].metric.as_str(),
        );
    }
    // Contiguous registers of one table are one request; the gap before 20 is not bridged.
    assert_eq!(
        plc.memory().reads[..3],
        [(Holding, 0, 6), (Holding, 20, 1), (Input, 10, 6)]
    );

    plc.memory().set(Holding, 0, &[2000]);
    let mut seq = 1;
    loop {
        let samples = running.samples().await;
        seq += 1;
        assert_eq!(samples.seq, seq, "consecutive seq on one connection");
        if (samples.readings[0].value - 200.0).abs() < 1e-3 {
            break;
        }
    }
    assert!(running.stats.snapshot().drops.iter().all(|(_, n)| *n == 0));
    let status = *running.status.borrow();
    assert_eq!((status.connections, status.failed_polls), (1, 0));
    running.stop().await;
}

#[tokio::test]
async fn a_stalled_device_counts_timeouts_in_one_burst_and_resumes_with_the_next_seq() {
    let plc = PlcServer::start(Memory::with(RegisterTable::Holding, 0, &[7])).await;
    let mut running = Running::spawn(device(plc.addr, one_register()));
    running.hello().await;
    assert_eq!(running.samples().await.seq, 1);

    plc.stall.send_replace(true);
    let stalled = running.status_until(|s| s.burst_failed_polls >= 3).await;
    assert_eq!(
        stalled.failure_bursts, 1,
        "one WARN for the whole run of failures"
    );
    assert!(running.dropped(DropReason::ModbusTimeout) >= 3);
    assert_eq!(running.dropped(DropReason::ModbusError), 0);

    plc.stall.send_replace(false);
    // Samples already in flight when the stall began may come first; then the reconnect's
    // Hello, then sampling resumes — all without a gap in seq.
    let mut last_seq = 1;
    loop {
        match running.next().await {
            Frame::Samples(samples) => {
                assert_eq!(samples.seq, last_seq + 1);
                last_seq = samples.seq;
            }
            Frame::Hello(_) => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(running.samples().await.seq, last_seq + 1);
    let recovered = *running.status.borrow();
    assert_eq!(recovered.failure_bursts, 1);
    assert_eq!(recovered.burst_failed_polls, 0);
    assert!(
        recovered.connections >= 2,
        "a timed-out link is re-established"
    );
    running.stop().await;
}

#[tokio::test]
async fn refused_connections_count_errors_until_a_server_appears() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    drop(listener);
    let mut running = Running::spawn(device(addr, one_register()));

    let refused = running.status_until(|s| s.failed_polls >= 2).await;
    assert_eq!(refused.failure_bursts, 1);
    assert_eq!(refused.connections, 0);
    assert!(running.dropped(DropReason::ModbusError) >= 2);
    assert_eq!(running.dropped(DropReason::ModbusTimeout), 0);
    assert!(
        running.frames.try_recv().is_err(),
        "nothing to say while unreachable"
    );

    let listener = TcpListener::bind(addr).await.expect("rebind the same port");
    let _plc = PlcServer::start_on(listener, Memory::with(RegisterTable::Holding, 0, &[7]));
    let hello = running.hello().await;
    assert_eq!(hello.node, virtual_node_id(NAME));
    let samples = running.samples().await;
    assert_eq!(samples.seq, 1);
    assert_close(samples.readings[0].value, 7.0, "press.count");
    assert_eq!(running.status.borrow().burst_failed_polls, 0);
    running.stop().await;
}

#[tokio::test]
async fn exception_responses_count_errors_on_the_same_connection() {
    let plc = PlcServer::start(Memory::default()).await;
    let mut running = Running::spawn(device(plc.addr, one_register()));

    let failing = running.status_until(|s| s.failed_polls >= 2).await;
    assert_eq!(failing.failure_bursts, 1);
    assert!(running.dropped(DropReason::ModbusError) >= 2);

    plc.memory().set(RegisterTable::Holding, 0, &[42]);
    running.hello().await;
    let samples = running.samples().await;
    assert_eq!(samples.seq, 1);
    assert_close(samples.readings[0].value, 42.0, "press.count");
    let status = *running.status.borrow();
    assert_eq!(
        status.connections, 1,
        "an exception is an answer, not a broken link"
    );
    assert!(status.connected);
    running.stop().await;
}

#[tokio::test]
async fn an_invalid_device_is_not_polled_and_does_not_panic() {
    let mut config = device("127.0.0.1:502".parse().expect("addr"), one_register());
    config.poll_interval_ms = 0;
    let running = Running::spawn(config);
    tokio::time::timeout(WAIT, running.task)
        .await
        .expect("returns at once")
        .expect("no panic");
}

fn valid() -> ModbusDevice {
    device("127.0.0.1:502".parse().expect("addr"), one_register())
}

fn error_of(edit: impl FnOnce(&mut ModbusDevice)) -> String {
    let mut config = valid();
    edit(&mut config);
    config.validate().expect_err("invalid").to_string()
}

fn assert_names(message: &str, parts: &[&str]) {
    for part in parts {
        assert!(message.contains(part), "{message:?} should name {part:?}");
    }
}

#[test]
fn validation_errors_name_the_device_and_the_key() {
    assert_eq!(valid().validate(), Ok(()));
    for address in ["plc.local:502", "[::1]:502", "10.0.0.5:502"] {
        let mut config = valid();
        config.address = address.into();
        assert_eq!(config.validate(), Ok(()), "{address}");
    }
    for address in ["plc", "plc:0", ":502", "plc:http", "plc:70000", "a b:502"] {
        let message = error_of(|d| d.address = address.into());
        assert_names(&message, &[NAME, "`address`", address]);
    }
    assert_names(&error_of(|d| d.name.clear()), &["`name`"]);
    assert_names(
        &error_of(|d| d.poll_interval_ms = 0),
        &[NAME, "`poll_interval_ms`"],
    );
    assert_names(&error_of(|d| d.timeout_ms = 0), &[NAME, "`timeout_ms`"]);
    assert_names(&error_of(|d| d.registers.clear()), &[NAME, "`registers`"]);
    let too_many = error_of(|d| {
        d.registers = (0..17)
            .map(|i| {
                register(
                    &format!("m.r{i}"),
                    RegisterTable::Input,
                    i,
                    RegisterType::U16,
                )
            })
            .collect();
    });
    assert_names(&too_many, &[NAME, "`registers`", "17", "16"]);
    let duplicate = error_of(|d| {
        let again = register("press.count", RegisterTable::Input, 9, RegisterType::U16);
        d.registers.push(again);
    });
    assert_names(&duplicate, &[NAME, "`metric`", "press.count"]);
    let unit = error_of(|d| d.registers[0].unit = "furlong".into());
    assert_names(&unit, &[NAME, "press.count", "`unit`", "furlong"]);
    let span = error_of(|d| {
        d.registers[0].address = 65535;
        d.registers[0].data_type = RegisterType::F32;
    });
    assert_names(&span, &[NAME, "press.count", "`address`", "65535"]);
    let scale = error_of(|d| d.registers[0].scale = f64::NAN);
    assert_names(&scale, &[NAME, "press.count", "`scale`"]);
    let offset = error_of(|d| d.registers[0].offset = f64::INFINITY);
    assert_names(&offset, &[NAME, "press.count", "`offset`"]);

    let mut last = valid();
    last.registers[0].address = 65535;
    assert_eq!(
        last.validate(),
        Ok(()),
        "a one-register value fits at 65535"
    );
}

#[test]
fn virtual_node_id_is_fnv1a_64_of_the_prefixed_name() {
    // Reference value computed independently (FNV-1a 64 over b"modbus:press-plc").
    assert_eq!(virtual_node_id(NAME).0, 0x8a6f_356e_7edc_4e56);
    assert_eq!(valid().node_id(), virtual_node_id(NAME));
    assert_ne!(virtual_node_id("press-plc2"), virtual_node_id(NAME));
}

#[test]
fn enum_keys_are_lowercase_in_config_files() {
    fn parse<T: for<'de> Deserialize<'de>>(s: &str) -> T {
        let deserializer: serde::de::value::StrDeserializer<'_, serde::de::value::Error> =
            s.into_deserializer();
        T::deserialize(deserializer).expect("known name")
    }
    assert_eq!(parse::<RegisterTable>("holding"), RegisterTable::Holding);
    assert_eq!(parse::<RegisterTable>("input"), RegisterTable::Input);
    for (name, data_type) in [
        ("u16", RegisterType::U16),
        ("i16", RegisterType::I16),
        ("u32", RegisterType::U32),
        ("i32", RegisterType::I32),
        ("f32", RegisterType::F32),
    ] {
        assert_eq!(parse::<RegisterType>(name), data_type);
    }
    assert_eq!(parse::<WordOrder>("little"), WordOrder::Little);
    assert_eq!(parse::<ByteOrder>("big"), ByteOrder::Big);
    assert_eq!(WordOrder::default(), WordOrder::Big);
    assert_eq!(ByteOrder::default(), ByteOrder::Big);
}
