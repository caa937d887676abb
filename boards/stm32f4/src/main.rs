//! Demolab sensor node on an STM32F411 (NUCLEO-F411RE; a WeAct "Black Pill" F411CE runs the same
//! binary): the real SHT3x, LIS3DH and ADS1115 drivers on I2C1, a debounced machine-running input,
//! and COBS-framed node frames to the gateway over USART2.
//!
//! | signal                    | pin  | NUCLEO-F411RE           |
//! |---------------------------|------|-------------------------|
//! | I2C1 SCL                  | PB8  | CN5 D15 / CN10-3        |
//! | I2C1 SDA                  | PB9  | CN5 D14 / CN10-5        |
//! | USART2 TX (node → gw)     | PA2  | ST-LINK virtual COM     |
//! | USART2 RX (gw → node)     | PA3  | ST-LINK virtual COM     |
//! | machine running (low = on)| PA0  | CN8 A0 / CN7-28         |
//! | identify LED              | PA5  | LD2 (green)             |
//!
//! Clocks: HSI (16 MHz internal RC, factory-trimmed ±1 %) through the PLL to 84 MHz SYSCLK,
//! APB1 42 MHz (USART2, I2C1), APB2 84 MHz. No crystal is needed, so the two boards behave the
//! same. SysTick interrupts at 1 kHz and counts uptime; TIM5 provides the blocking
//! microsecond delays the drivers ask for.
//!
//! Main loop (woken by SysTick at least every millisecond, `wfi` in between): feed the
//! watchdog, hand received frames to `NodeCore::handle` and send the `Ack` (and `Hello`), poll
//! the running input, drain the accelerometer FIFO every 100 ms, and sample whatever metrics
//! are due (every second after boot) into one `Samples` frame.
#![no_std]
#![no_main]
#![deny(unsafe_code)]

mod boot;
mod link;
mod sensors;

use core::cell::RefCell;
use core::sync::atomic::{AtomicU32, Ordering};

use cortex_m::peripheral::syst::SystClkSource;
use cortex_m_rt::{entry, exception};
use embedded_hal::digital::{ErrorType, InputPin};
use firmware::NodeCore;
use firmware::drivers::digital::DebouncedInput;
use heapless::Vec;
use panic_halt as _;
use protocol::cobs::{FrameDecoder, MAX_WIRE_LEN};
use protocol::{AckResult, Command, CommandKind, Event, EventKind, FirmwareVersion, Frame};
use static_cell::ConstStaticCell;
use stm32f4xx_hal::flash::LockedFlash;
use stm32f4xx_hal::i2c::{I2c, Mode};
use stm32f4xx_hal::pac;
use stm32f4xx_hal::prelude::*;
use stm32f4xx_hal::rcc::Config;
use stm32f4xx_hal::serial::{Serial, config::Config as SerialConfig};
use stm32f4xx_hal::watchdog::IndependentWatchdog;

use crate::sensors::{Health, METRIC_COUNT, Schedule, Sensors};

/// The firmware version announced in `Hello`: this crate's version.
const FIRMWARE: FirmwareVersion = FirmwareVersion {
    major: parse_u8(env!("CARGO_PKG_VERSION_MAJOR")),
    minor: parse_u8(env!("CARGO_PKG_VERSION_MINOR")),
    patch: parse_u8(env!("CARGO_PKG_VERSION_PATCH")),
};

const fn parse_u8(digits: &str) -> u8 {
    let bytes = digits.as_bytes();
    let mut value = 0u8;
    let mut i = 0;
    while i < bytes.len() {
        value = value * 10 + (bytes[i] - b'0');
        i += 1;
    }
    value
}

/// System clock, from HSI through the PLL (the F411's maximum is 100 MHz; 84 MHz keeps
/// APB1 at an even 42 MHz).
const SYSCLK_MHZ: u32 = 84;
/// I2C standard mode.
const I2C_HZ: u32 = 100_000;
/// The gateway's default line speed.
const BAUD: u32 = 115_200;
/// A running-input level counts once it held this long.
const DEBOUNCE_MS: u32 = 20;
/// Accelerometer FIFO drain interval (the FIFO holds 160 ms at 200 Hz).
const ACCEL_DRAIN_MS: u64 = 100;
/// Independent watchdog timeout. The LSI that clocks it is 17–47 kHz, so the real timeout is
/// 2.7–8.8 s; a main-loop pass takes under 100 ms. It catches a wedged I2C bus (the HAL's
/// blocking I2C has no timeouts) by resetting the node, which then reports `Reset { Watchdog }`.
const WATCHDOG_MS: u32 = 4_000;

/// The frame being sent, COBS-encoded with its delimiter.
static TX_BUF: ConstStaticCell<[u8; MAX_WIRE_LEN]> = ConstStaticCell::new([0; MAX_WIRE_LEN]);
/// The partial frame being received.
static DECODER: ConstStaticCell<FrameDecoder> = ConstStaticCell::new(FrameDecoder::new());

/// Milliseconds since SysTick started, wrapping every 49.7 days (see [`Uptime`]).
static MILLIS: AtomicU32 = AtomicU32::new(0);

#[exception]
fn SysTick() {
    MILLIS.fetch_add(1, Ordering::Relaxed);
}

/// Extends [`MILLIS`] to 64 bits; read it at least once per 49 days (the loop reads it every
/// millisecond).
struct Uptime {
    last: u32,
    high: u64,
}

impl Uptime {
    fn now_ms(&mut self) -> u64 {
        let now = MILLIS.load(Ordering::Relaxed);
        if now < self.last {
            self.high += 1 << 32;
        }
        self.last = now;
        self.high | u64::from(now)
    }
}

/// An input that is asserted when low: the running signal comes from an opto-coupler (or a
/// relay contact) pulling PA0 to ground against the internal pull-up.
struct ActiveLow<P>(P);

impl<P: ErrorType> ErrorType for ActiveLow<P> {
    type Error = P::Error;
}

impl<P: InputPin> InputPin for ActiveLow<P> {
    fn is_high(&mut self) -> Result<bool, Self::Error> {
        self.0.is_low()
    }

    fn is_low(&mut self) -> Result<bool, Self::Error> {
        self.0.is_high()
    }
}

#[entry]
fn main() -> ! {
    let (Some(dp), Some(cp)) = (pac::Peripherals::take(), cortex_m::Peripherals::take()) else {
        // Only reachable if something took the peripherals before `main`.
        panic!("peripherals already taken");
    };

    let mut rcc = dp.RCC.freeze(Config::hsi().sysclk(SYSCLK_MHZ.MHz()));
    let reset = boot::reset_reason(&rcc);
    // Before any interrupt is enabled: a sector erase stalls the flash for seconds.
    let boot = boot::next_boot_count(&mut LockedFlash::new(dp.FLASH));

    let mut syst = cp.SYST;
    syst.set_clock_source(SystClkSource::Core);
    syst.set_reload(rcc.clocks.sysclk().raw() / 1_000 - 1);
    syst.clear_current();
    syst.enable_interrupt();
    syst.enable_counter();
    let mut uptime = Uptime { last: 0, high: 0 };

    let gpioa = dp.GPIOA.split(&mut rcc);
    let gpiob = dp.GPIOB.split(&mut rcc);
    let mut led = gpioa.pa5.into_push_pull_output();
    let mut running = DebouncedInput::new(ActiveLow(gpioa.pa0.into_pull_up_input()), DEBOUNCE_MS);

    let serial: Serial<pac::USART2> = dp
        .USART2
        .serial(
            (gpioa.pa2, gpioa.pa3),
            SerialConfig::default().baudrate(BAUD.bps()),
            &mut rcc,
        )
        .expect("115200 baud is reachable from a 42 MHz APB1");
    let (tx, rx) = serial.split();
    let mut sender = link::Sender::new(tx, TX_BUF.take());
    let decoder = DECODER.take();

    let i2c = I2c::new(
        dp.I2C1,
        (gpiob.pb8, gpiob.pb9),
        Mode::standard(I2C_HZ.Hz()),
        &mut rcc,
    );
    let bus = RefCell::new(i2c);
    let mut delay = dp.TIM5.delay_us(&mut rcc);
    let mut sensors = Sensors::new(&bus, &mut delay);

    let mut node = NodeCore::new(
        boot::node_id(),
        FIRMWARE,
        boot,
        None,
        sensors::descriptors(),
    );

    // Keep the debug port alive through `wfi`, and pause the watchdog while a debugger halts.
    dp.DBGMCU.cr().modify(|_, w| w.dbg_sleep().set_bit());
    let mut watchdog = IndependentWatchdog::new(dp.IWDG);
    watchdog.stop_on_debug(&dp.DBGMCU, true);
    watchdog.start(WATCHDOG_MS.millis());

    link::start_receiving(rx);
    sender.flush_line();
    sender.send(&node.hello());
    let now = uptime.now_ms();
    sender.send(&event(&node, now, EventKind::Reset { reason: reset }));

    let mut schedule = Schedule::new();
    let mut health = Health::default();
    let mut next_drain_ms = 0u64;
    let mut received = [0u8; 64];
    loop {
        watchdog.feed();
        let now = uptime.now_ms();

        // Commands from the gateway.
        loop {
            let n = link::take_received(&mut received);
            if n == 0 {
                break;
            }
            for &byte in &received[..n] {
                // Undecodable frames are dropped: the gateway gets no `Ack` and sees why.
                if let Some(Ok(frame)) = decoder.push(byte) {
                    answer(&mut node, &mut sender, now, &frame);
                }
            }
        }

        // The running input; its pin cannot fail (`Infallible`).
        let _ = running.poll(now);

        if now >= next_drain_ms {
            sensors.drain_accel();
            next_drain_ms = now + ACCEL_DRAIN_MS;
        }

        let due = schedule.due(now, node.metrics());
        if due != 0 {
            let outcomes = sensors.read(due, running.is_high(), &mut delay);
            let mut readings: Vec<(u8, f32), METRIC_COUNT> = Vec::new();
            let mut events: Vec<EventKind, METRIC_COUNT> = Vec::new();
            for (index, outcome) in (0u8..).zip(outcomes) {
                let Some(outcome) = outcome else {
                    continue;
                };
                if let Ok(value) = outcome {
                    let _ = readings.push((index, value));
                }
                if let Some(kind) = health.update(index, outcome) {
                    let _ = events.push(kind);
                }
            }
            // The readings use announced indexes and fit a frame, so this cannot fail.
            if !readings.is_empty()
                && let Ok(frame) = node.sample(now, &readings)
            {
                sender.send(&frame);
            }
            for kind in events {
                sender.send(&event(&node, now, kind));
            }
        }

        // Identify: blink LD2 at 4 Hz while the gateway asked for it.
        if node.identifying(now) && (now / 125).is_multiple_of(2) {
            led.set_high();
        } else {
            led.set_low();
        }

        cortex_m::asm::wfi();
    }
}

fn event(node: &NodeCore, uptime_ms: u64, kind: EventKind) -> Frame {
    Frame::Event(Event {
        node: node.node(),
        uptime_ms,
        kind,
    })
}

/// Hands a received frame to the node core and sends what it answers.
fn answer(node: &mut NodeCore, sender: &mut link::Sender, now: u64, frame: &Frame) {
    let Some(mut reply) = node.handle(now, frame) else {
        return;
    };
    // This board wires no relay outputs: say so rather than acknowledge a no-op.
    if let Frame::Command(Command {
        kind: CommandKind::SetOutput { .. },
        ..
    }) = frame
        && let Frame::Ack(ack) = &mut reply.ack
        && ack.result == AckResult::Ok
    {
        ack.result = AckResult::Unsupported;
    }
    sender.send(&reply.ack);
    if let Some(hello) = &reply.hello {
        sender.send(hello);
    }
}
