//! Screw compressor with a receiver tank, start/stop (load/unload) control.
//!
//! The tank pressure integrates free-air delivery minus demand minus leaks:
//! `dp/dt = (q_in − q_out) · p_atm / V`. The motor loads at the cut-in
//! pressure and unloads at cut-out, so the pressure is a sawtooth whose slopes
//! are set by demand. Leaks scale with pressure and never stop: at night, with
//! no demand, a leak-free system holds its pressure and the motor rests,
//! while a leaking one keeps cycling. That waste is visible as duty cycle and
//! as energy — the energy-waste demo.

use std::time::Duration;

use protocol::Unit;

use super::{
    Machine, MachineKind, MachineState, MetricSpec, ParamError, clamp, ewma, finite, substeps,
};
use crate::rng::SimRng;

/// Atmospheric pressure, bar(a).
const P_ATM_BAR: f64 = 1.013;
/// Nominal gauge pressure leaks are specified at, bar(g).
const LEAK_REF_BAR: f64 = 7.0;

/// Parameters of a [`Compressor`]; [`Default`] is an 11 kW screw compressor.
#[derive(Debug, Clone, PartialEq)]
pub struct CompressorParams {
    /// Load (motor on) below this gauge pressure, bar.
    pub cut_in_bar: f64,
    /// Unload above this gauge pressure, bar.
    pub cut_out_bar: f64,
    /// Free-air delivery when loaded, l/s.
    pub capacity_l_s: f64,
    /// Receiver plus piping volume, l.
    pub tank_l: f64,
    /// Air used by production, l/s of free air.
    pub demand_l_s: f64,
    /// Leak flow at 7 bar(g), l/s of free air.
    pub leak_l_s: f64,
    /// Electrical power when loaded, W.
    pub loaded_power_w: f64,
    /// Controller and dryer when unloaded, W.
    pub standby_power_w: f64,
    /// Time constant of the reported duty cycle, s.
    pub duty_window_s: f64,
}

impl Default for CompressorParams {
    fn default() -> Self {
        Self {
            cut_in_bar: 6.5,
            cut_out_bar: 7.5,
            capacity_l_s: 30.0,
            tank_l: 500.0,
            demand_l_s: 12.0,
            leak_l_s: 0.0,
            loaded_power_w: 11_000.0,
            standby_power_w: 150.0,
            duty_window_s: 900.0,
        }
    }
}

/// Simulated compressor. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct Compressor {
    p: CompressorParams,
    rng: SimRng,
    pressure_bar: f64,
    loaded: bool,
    duty: f64,
    starts: u32,
    fault: bool,
    power_on: bool,
    /// Demand fluctuation of production, a slow random walk around 1.
    demand_factor: f64,
    noise: [f64; 2],
}

/// The compressor's metrics.
pub const COMPRESSOR_METRICS: [MetricSpec; 6] = [
    ("air.pressure_bar", Unit::Bar),
    ("motor.power_w", Unit::Watt),
    ("motor.duty_pct", Unit::Percent),
    ("air.flow_l_min", Unit::LitrePerMinute),
    ("motor.starts", Unit::Count),
    ("state.code", Unit::StateCode),
];

const PARAMS: [&str; 5] = ["demand_l_s", "leak_l_s", "cut_out_bar", "fault", "power"];

impl Compressor {
    /// A compressor at cut-in pressure, switched on and unloaded.
    pub fn new(seed: u64, params: CompressorParams) -> Self {
        let cut_in_bar = clamp(params.cut_in_bar, 0.5, 15.0);
        let p = CompressorParams {
            cut_in_bar,
            cut_out_bar: clamp(params.cut_out_bar, cut_in_bar + 0.1, 16.0),
            capacity_l_s: params.capacity_l_s.max(0.1),
            tank_l: params.tank_l.max(1.0),
            demand_l_s: params.demand_l_s.max(0.0),
            leak_l_s: params.leak_l_s.max(0.0),
            duty_window_s: params.duty_window_s.max(1.0),
            ..params
        };
        Self {
            pressure_bar: p.cut_in_bar + 0.01,
            p,
            rng: SimRng::new(seed),
            loaded: false,
            duty: 0.0,
            starts: 0,
            fault: false,
            power_on: true,
            demand_factor: 1.0,
            noise: [0.0; 2],
        }
    }

    fn running(&self) -> bool {
        self.power_on && !self.fault
    }

    fn substep(&mut self, h: f64) {
        let p = &self.p;
        if self.running() {
            if self.pressure_bar <= p.cut_in_bar && !self.loaded {
                self.loaded = true;
                self.starts = self.starts.saturating_add(1);
            } else if self.pressure_bar >= p.cut_out_bar {
                self.loaded = false;
            }
        } else {
            self.loaded = false;
        }
        let q_in = if self.loaded { p.capacity_l_s } else { 0.0 };
        let gauge = self.pressure_bar.max(0.0);
        let q_out = p.demand_l_s * self.demand_factor * f64::from(u8::from(gauge > 0.5))
            + p.leak_l_s * (gauge / LEAK_REF_BAR).sqrt();
        self.pressure_bar =
            (self.pressure_bar + h * (q_in - q_out) * P_ATM_BAR / p.tank_l).max(0.0);
        let on = if self.loaded { 1.0 } else { 0.0 };
        self.duty = ewma(self.duty, on, h, p.duty_window_s);
    }
}

impl Machine for Compressor {
    fn kind(&self) -> MachineKind {
        MachineKind::Compressor
    }

    fn metrics(&self) -> &'static [MetricSpec] {
        &COMPRESSOR_METRICS
    }

    fn step(&mut self, dt: Duration) {
        if dt.is_zero() {
            return;
        }
        // Demand wanders by a few percent per minute as tools start and stop.
        let walk = self
            .rng
            .normal(0.0, 0.02 * dt.as_secs_f64().sqrt().min(10.0));
        self.demand_factor = clamp(
            self.demand_factor + walk - 0.01 * (self.demand_factor - 1.0),
            0.6,
            1.4,
        );
        substeps(dt, |h| self.substep(h));
        self.noise = [self.rng.normal(0.0, 0.01), self.rng.normal(0.0, 0.01)];
    }

    fn values(&self) -> Vec<(&'static str, Unit, f32)> {
        let p = &self.p;
        let power = if !self.power_on {
            0.0
        } else if self.loaded {
            p.loaded_power_w * (1.0 + self.noise[1])
        } else {
            p.standby_power_w
        };
        let flow = if self.loaded {
            p.capacity_l_s * 60.0
        } else {
            0.0
        };
        let v = [
            (self.pressure_bar + self.noise[0]).max(0.0),
            power,
            100.0 * self.duty,
            flow,
            f64::from(self.starts),
            f64::from(self.state().code()),
        ];
        COMPRESSOR_METRICS
            .iter()
            .zip(v)
            .map(|(&(n, u), v)| (n, u, v as f32))
            .collect()
    }

    fn state(&self) -> MachineState {
        if self.fault {
            MachineState::Fault
        } else if !self.power_on {
            MachineState::Off
        } else if self.loaded {
            MachineState::Running
        } else {
            MachineState::Idle
        }
    }

    fn param_names(&self) -> &'static [&'static str] {
        &PARAMS
    }

    fn param(&self, name: &str) -> Option<f64> {
        let p = &self.p;
        Some(match name {
            "demand_l_s" => p.demand_l_s,
            "leak_l_s" => p.leak_l_s,
            "cut_out_bar" => p.cut_out_bar,
            "fault" => f64::from(u8::from(self.fault)),
            "power" => f64::from(u8::from(self.power_on)),
            _ => return None,
        })
    }

    fn set_param(&mut self, name: &str, value: f64) -> Result<(), ParamError> {
        let value = finite(MachineKind::Compressor, name, value)?;
        match name {
            "demand_l_s" => self.p.demand_l_s = clamp(value, 0.0, 1e4),
            "leak_l_s" => self.p.leak_l_s = clamp(value, 0.0, 1e4),
            "cut_out_bar" => self.p.cut_out_bar = clamp(value, self.p.cut_in_bar + 0.1, 16.0),
            "fault" => self.fault = value >= 0.5,
            "power" => self.power_on = value >= 0.5,
            _ => return Err(ParamError::unknown(MachineKind::Compressor, name, &PARAMS)),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(m: &mut Compressor, secs: u64) -> Vec<Vec<f32>> {
        (0..secs)
            .map(|_| {
                m.step(Duration::from_secs(1));
                m.values().into_iter().map(|(_, _, v)| v).collect()
            })
            .collect()
    }

    #[test]
    fn pressure_is_a_sawtooth_between_cut_in_and_cut_out() {
        let mut m = Compressor::new(1, CompressorParams::default());
        let rs = run(&mut m, 3600);
        let (lo, hi) = rs
            .iter()
            .skip(60)
            .fold((f32::MAX, f32::MIN), |(lo, hi), r| {
                (lo.min(r[0]), hi.max(r[0]))
            });
        assert!((6.35..6.5).contains(&lo), "low {lo}");
        assert!((7.5..7.65).contains(&hi), "high {hi}");
        let starts = rs.last().map(|r| r[4]).unwrap_or_default();
        // ≈ 28 s loaded + 42 s unloaded per cycle.
        assert!((35.0..70.0).contains(&starts), "{starts} starts");
        let duty = rs.last().map(|r| r[2]).unwrap_or_default();
        assert!((30.0..55.0).contains(&duty), "duty {duty}");
    }

    #[test]
    fn a_leak_keeps_the_motor_cycling_at_night() {
        let night = CompressorParams {
            demand_l_s: 0.0,
            ..CompressorParams::default()
        };
        let mut tight = Compressor::new(2, night.clone());
        let mut leaky = Compressor::new(
            2,
            CompressorParams {
                leak_l_s: 6.0,
                ..night
            },
        );
        let (t, l) = (run(&mut tight, 3 * 3600), run(&mut leaky, 3 * 3600));
        let duty = |rs: &[Vec<f32>]| rs.last().map(|r| r[2]).unwrap_or_default();
        assert!(duty(&t) < 1.0, "tight duty {}", duty(&t));
        assert!(duty(&l) > 15.0, "leaky duty {}", duty(&l));
        let energy = |rs: &[Vec<f32>]| rs.iter().map(|r| f64::from(r[1])).sum::<f64>() / 3.6e6;
        assert!(
            energy(&l) > energy(&t) + 5.0,
            "{} vs {} kWh",
            energy(&l),
            energy(&t)
        );
    }

    #[test]
    fn duty_cycle_rises_with_the_leak() {
        let mut last = 0.0;
        for leak in [0.0, 3.0, 6.0, 9.0] {
            let mut m = Compressor::new(
                3,
                CompressorParams {
                    leak_l_s: leak,
                    ..CompressorParams::default()
                },
            );
            let duty = run(&mut m, 7200).last().map(|r| r[2]).unwrap_or_default();
            assert!(duty > last, "leak {leak}: duty {duty} not above {last}");
            last = duty;
        }
    }

    #[test]
    fn switched_off_it_draws_nothing_and_loses_pressure_to_demand() {
        let mut m = Compressor::new(4, CompressorParams::default());
        run(&mut m, 600);
        m.set_param("power", 0.0).expect("param");
        let rs = run(&mut m, 600);
        let last = rs.last().expect("ran");
        assert_eq!((last[1], last[5]), (0.0, 0.0));
        assert!(last[0] < 1.0, "pressure {}", last[0]);
    }
}
