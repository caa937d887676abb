//! Conveyor-fed robot cell: a cycle counter, the cycle time, and micro-stops.
//!
//! Each cycle takes the ideal cycle time plus a little spread. With a given
//! chance per cycle the cell suffers a micro-stop (a jammed part, a light
//! curtain trip): it stands (Idle) for a short random time and the cycle that
//! contains the stop is longer. Micro-stops are the classic hidden OEE
//! performance loss — the machine is "running" all shift, yet makes fewer
//! parts — and `cell.performance_pct` (ideal over actual cycle time, smoothed)
//! shows it.

use std::time::Duration;

use protocol::Unit;

use super::{Machine, MachineKind, MachineState, MetricSpec, ParamError, clamp, finite};
use crate::rng::SimRng;

/// Smoothing of the average cycle time behind the performance figure, per cycle.
const PERFORMANCE_ALPHA: f64 = 0.05;

/// Parameters of a [`ConveyorCell`]; [`Default`] is a pick-and-place cell.
#[derive(Debug, Clone, PartialEq)]
pub struct ConveyorParams {
    /// Ideal cycle time, s.
    pub ideal_cycle_s: f64,
    /// Relative spread (std dev) of a cycle around its ideal time.
    pub cycle_spread: f64,
    /// Chance of a micro-stop per cycle.
    pub microstop_chance: f64,
    /// Shortest micro-stop, s.
    pub microstop_min_s: f64,
    /// Longest micro-stop, s.
    pub microstop_max_s: f64,
    /// Drive and robot power while moving, W.
    pub moving_power_w: f64,
    /// Power while standing (controls, holding brakes), W.
    pub standing_power_w: f64,
}

impl Default for ConveyorParams {
    fn default() -> Self {
        Self {
            ideal_cycle_s: 12.0,
            cycle_spread: 0.03,
            microstop_chance: 0.02,
            microstop_min_s: 10.0,
            microstop_max_s: 60.0,
            moving_power_w: 2_400.0,
            standing_power_w: 350.0,
        }
    }
}

/// Simulated conveyor / robot cell. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct ConveyorCell {
    p: ConveyorParams,
    rng: SimRng,
    /// Moving time still needed by the current cycle, s.
    work_left_s: f64,
    /// Standing time left in a micro-stop, s.
    stop_left_s: f64,
    /// Time spent in the current cycle, s.
    cycle_elapsed_s: f64,
    last_cycle_s: f64,
    /// Smoothed cycle time; performance is the ideal cycle time over it, as OEE defines it
    /// (ideal time per part times parts, over the time taken).
    avg_cycle_s: f64,
    cycles: u32,
    microstops: u32,
    fault: bool,
    power_on: bool,
    noise: f64,
}

/// The cell's metrics.
pub const CONVEYOR_METRICS: [MetricSpec; 6] = [
    ("drive.power_w", Unit::Watt),
    ("cell.cycle_time_s", Unit::Second),
    ("production.cycles", Unit::Count),
    ("cell.microstops", Unit::Count),
    ("cell.performance_pct", Unit::Percent),
    ("state.code", Unit::StateCode),
];

const PARAMS: [&str; 4] = ["microstop_chance", "ideal_cycle_s", "fault", "power"];

impl ConveyorCell {
    /// A cell starting its first cycle.
    pub fn new(seed: u64, params: ConveyorParams) -> Self {
        let microstop_min_s = params.microstop_min_s.max(0.0);
        let p = ConveyorParams {
            ideal_cycle_s: params.ideal_cycle_s.max(0.5),
            cycle_spread: clamp(params.cycle_spread, 0.0, 0.5),
            microstop_chance: clamp(params.microstop_chance, 0.0, 1.0),
            microstop_min_s,
            microstop_max_s: params.microstop_max_s.max(microstop_min_s),
            ..params
        };
        let mut cell = Self {
            last_cycle_s: p.ideal_cycle_s,
            avg_cycle_s: p.ideal_cycle_s,
            p,
            rng: SimRng::new(seed),
            work_left_s: 0.0,
            stop_left_s: 0.0,
            cycle_elapsed_s: 0.0,
            cycles: 0,
            microstops: 0,
            fault: false,
            power_on: true,
            noise: 0.0,
        };
        cell.start_cycle();
        cell
    }

    fn start_cycle(&mut self) {
        let p = &self.p;
        let spread = self.rng.normal(0.0, p.cycle_spread);
        self.work_left_s = p.ideal_cycle_s * (1.0 + spread).max(0.5);
        // Drawn every cycle, stop or not, so the stream does not depend on the chance.
        let stop = self.rng.chance(p.microstop_chance);
        let len = self.rng.range(p.microstop_min_s, p.microstop_max_s);
        if stop {
            self.stop_left_s = len;
            self.microstops = self.microstops.saturating_add(1);
        }
        self.cycle_elapsed_s = 0.0;
    }

    fn advance(&mut self, mut t: f64) {
        while t > 1e-12 {
            if !self.power_on || self.fault {
                return;
            }
            // A micro-stop strikes midway through the cycle.
            let halfway = self.work_left_s > self.p.ideal_cycle_s / 2.0;
            let h = if self.stop_left_s > 0.0 && !halfway {
                let h = t.min(self.stop_left_s);
                self.stop_left_s -= h;
                h
            } else {
                let until_stop = if self.stop_left_s > 0.0 {
                    self.work_left_s - self.p.ideal_cycle_s / 2.0
                } else {
                    self.work_left_s
                };
                let h = t.min(until_stop.max(1e-9));
                self.work_left_s -= h;
                h
            };
            self.cycle_elapsed_s += h;
            t -= h;
            if self.work_left_s <= 1e-9 && self.stop_left_s <= 0.0 {
                self.cycles = self.cycles.saturating_add(1);
                self.last_cycle_s = self.cycle_elapsed_s;
                self.avg_cycle_s += PERFORMANCE_ALPHA * (self.cycle_elapsed_s - self.avg_cycle_s);
                self.start_cycle();
            }
        }
    }

    fn standing(&self) -> bool {
        self.stop_left_s > 0.0 && self.work_left_s <= self.p.ideal_cycle_s / 2.0
    }
}

impl Machine for ConveyorCell {
    fn kind(&self) -> MachineKind {
        MachineKind::Conveyor
    }

    fn metrics(&self) -> &'static [MetricSpec] {
        &CONVEYOR_METRICS
    }

    fn step(&mut self, dt: Duration) {
        if dt.is_zero() {
            return;
        }
        self.advance(dt.as_secs_f64());
        self.noise = self.rng.normal(0.0, 0.03);
    }

    fn values(&self) -> Vec<(&'static str, Unit, f32)> {
        let p = &self.p;
        let power = match self.state() {
            MachineState::Off => 0.0,
            MachineState::Running => p.moving_power_w * (1.0 + self.noise),
            _ => p.standing_power_w * (1.0 + self.noise),
        };
        let v = [
            power.max(0.0),
            self.last_cycle_s,
            f64::from(self.cycles),
            f64::from(self.microstops),
            clamp(
                100.0 * p.ideal_cycle_s / self.avg_cycle_s.max(1e-3),
                0.0,
                100.0,
            ),
            f64::from(self.state().code()),
        ];
        CONVEYOR_METRICS
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
        } else if self.standing() {
            MachineState::Idle
        } else {
            MachineState::Running
        }
    }

    fn param_names(&self) -> &'static [&'static str] {
        &PARAMS
    }

    fn param(&self, name: &str) -> Option<f64> {
        Some(match name {
            "microstop_chance" => self.p.microstop_chance,
            "ideal_cycle_s" => self.p.ideal_cycle_s,
            "fault" => f64::from(u8::from(self.fault)),
            "power" => f64::from(u8::from(self.power_on)),
            _ => return None,
        })
    }

    fn set_param(&mut self, name: &str, value: f64) -> Result<(), ParamError> {
        let value = finite(MachineKind::Conveyor, name, value)?;
        match name {
            "microstop_chance" => self.p.microstop_chance = clamp(value, 0.0, 1.0),
            "ideal_cycle_s" => self.p.ideal_cycle_s = clamp(value, 0.5, 3600.0),
            "fault" => self.fault = value >= 0.5,
            "power" => self.power_on = value >= 0.5,
            _ => return Err(ParamError::unknown(MachineKind::Conveyor, name, &PARAMS)),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(m: &mut ConveyorCell, secs: u64) -> Vec<Vec<f32>> {
        (0..secs)
            .map(|_| {
                m.step(Duration::from_secs(1));
                m.values().into_iter().map(|(_, _, v)| v).collect()
            })
            .collect()
    }

    #[test]
    fn without_micro_stops_the_cell_runs_at_its_ideal_rate() {
        let mut m = ConveyorCell::new(
            1,
            ConveyorParams {
                microstop_chance: 0.0,
                ..ConveyorParams::default()
            },
        );
        let rs = run(&mut m, 3600);
        let cycles = rs.last().map(|r| r[2]).unwrap_or_default();
        assert!((290.0..=310.0).contains(&cycles), "{cycles} cycles");
        assert!(rs.iter().all(|r| r[5] == 2.0 && r[3] == 0.0));
        assert!(rs.last().map(|r| r[4]).unwrap_or_default() > 97.0);
    }

    #[test]
    fn micro_stops_lower_throughput_and_performance() {
        let rate = |chance: f64| {
            let mut m = ConveyorCell::new(
                2,
                ConveyorParams {
                    microstop_chance: chance,
                    ..ConveyorParams::default()
                },
            );
            let rs = run(&mut m, 4 * 3600);
            let last = rs.last().cloned().unwrap_or_default();
            let idle = rs.iter().filter(|r| r[5] == 1.0).count();
            (last[2], last[3], last[4], idle)
        };
        let (c0, s0, _, idle0) = rate(0.02);
        let (c1, s1, perf1, idle1) = rate(0.25);
        assert!(s1 > s0 * 5.0, "stops {s1} vs {s0}");
        assert!(c1 < c0 * 0.8, "cycles {c1} vs {c0}");
        assert!(perf1 < 80.0, "performance {perf1}");
        assert!(idle1 > idle0 * 5, "idle {idle1} vs {idle0}");
    }

    #[test]
    fn a_micro_stop_lengthens_the_cycle_that_contains_it() {
        let mut m = ConveyorCell::new(
            3,
            ConveyorParams {
                microstop_chance: 1.0,
                microstop_min_s: 20.0,
                microstop_max_s: 20.0,
                cycle_spread: 0.0,
                ..ConveyorParams::default()
            },
        );
        let rs = run(&mut m, 200);
        let last = rs.last().expect("ran");
        assert!((last[1] - 32.0).abs() < 0.01, "cycle {}", last[1]);
        assert_eq!(last[2], 6.0);
    }
}
