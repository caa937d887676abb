//! CNC milling machine model.
//!
//! The mill alternates between part cycles (Running) and loading/unloading
//! pauses (Idle), with occasional operator breaks (Off) followed by a spindle
//! warm-up program (Warming). Spindle power follows a per-cycle load profile,
//! vibration follows spindle load and bearing wear, and coolant temperature
//! integrates power through a first-order thermal lag, so the signals relate to
//! each other the way they do on a real machine.
//!
//! Simulated time only moves in [`CncMill::step`], and every random draw comes
//! from one [`SimRng`] seeded at construction: the same seed and the same
//! sequence of steps always produce the same readings.

use std::time::Duration;

use super::MachineState;
use crate::rng::SimRng;

/// Load fraction while the spindle turns without touching material
/// (positioning, approach, retract).
const AIR_CUT_LOAD: f64 = 0.12;
/// Load fraction of the finishing passes, relative to roughing at 1.0.
const FINISH_LOAD: f64 = 0.55;
/// Share of the cutting time spent roughing; the rest is finishing.
const ROUGHING_SHARE: f64 = 0.6;
/// Time for the tool to fully engage or leave the material; avoids
/// unphysical power steps at the start and end of a cut.
const ENGAGE_RAMP_S: f64 = 1.5;
/// Spindle speed fraction at the start of the warm-up program, which then
/// steps up to full speed.
const WARMUP_START_SPEED: f64 = 0.3;
/// Structure-borne background vibration of a machine that is switched off.
const OFF_VIBRATION_MM_S: f64 = 0.05;
/// Extra relative vibration noise at full bearing wear: damaged bearings make
/// the signal spiky, not just larger.
const WEAR_VIBRATION_NOISE: f64 = 0.15;
/// Per-part spread of material hardness, i.e. of the cutting load.
const HARDNESS_SPREAD: f64 = 0.08;
/// Spread of the operator's load/unload time around its nominal value.
const IDLE_SPREAD: f64 = 0.4;
/// Integration sub-step bound: the load profile changes within a cycle, and
/// thermal integration over a long step must still see those changes.
const MAX_SUBSTEP_S: f64 = 1.0;
/// Shortest allowed phase; guarantees progress with degenerate parameters.
const MIN_PHASE_S: f64 = 0.1;
/// Remaining phase time treated as "phase over", so float round-off from
/// summing many small steps cannot leave a sliver of a phase behind.
const PHASE_EPS_S: f64 = 1e-9;

/// Tunable parameters of a [`CncMill`]. [`Default`] gives a mid-size
/// vertical machining centre.
///
/// Out-of-range values are tolerated: [`CncMill::new`] clamps durations to a
/// small positive minimum, powers, gains and noise levels to non-negative,
/// probabilities and wear to `0.0..=1.0`.
#[derive(Debug, Clone, PartialEq)]
pub struct CncParams {
    /// Draw of controller, pumps and fans whenever the machine is on, in W.
    pub idle_power_w: f64,
    /// Extra spindle power at full (roughing) cutting load, in W.
    pub cutting_power_w: f64,
    /// Extra spindle power at full speed during warm-up (no cutting), in W.
    pub warmup_power_w: f64,
    /// Duration of one part program, in s.
    pub part_cycle_s: f64,
    /// Part of the cycle the tool is in material, in s (rest: positioning).
    pub load_s: f64,
    /// Nominal load/unload pause between parts, in s (varied ±40 %).
    pub idle_between_parts_s: f64,
    /// Spindle warm-up program run after each power-on, in s.
    pub warmup_s: f64,
    /// Probability that the operator switches the machine off after a part.
    pub break_chance_per_part: f64,
    /// Shortest break, in s.
    pub break_min_s: f64,
    /// Longest break, in s.
    pub break_max_s: f64,
    /// Shop-floor temperature, in °C; coolant settles here when off.
    pub ambient_c: f64,
    /// Steady-state coolant rise per watt of machine power, in °C/W.
    pub thermal_gain_c_per_w: f64,
    /// Coolant thermal time constant, in s.
    pub thermal_time_constant_s: f64,
    /// Vibration RMS with the spindle stopped (pumps, hydraulics), in mm/s.
    pub idle_vibration_mm_s: f64,
    /// Vibration RMS with the spindle at full speed, not cutting, in mm/s.
    pub spindle_vibration_mm_s: f64,
    /// Extra vibration RMS at full cutting load, in mm/s.
    pub cutting_vibration_mm_s: f64,
    /// Extra vibration RMS at full speed with fully worn bearings, in mm/s.
    /// Scales with wear², since defects grow slowly at first.
    pub bearing_vibration_mm_s: f64,
    /// Power sensor noise (std dev) at idle, in W; grows with cutting load.
    pub power_noise_w: f64,
    /// Vibration noise as a fraction of the mean (std dev).
    pub vibration_noise: f64,
    /// Temperature sensor noise (std dev), in °C.
    pub temperature_noise_c: f64,
    /// Spindle bearing wear, 0.0 (new) to 1.0 (about to fail).
    pub bearing_wear: f64,
}

impl Default for CncParams {
    fn default() -> Self {
        Self {
            idle_power_w: 800.0,
            cutting_power_w: 7500.0,
            warmup_power_w: 1500.0,
            part_cycle_s: 45.0,
            load_s: 36.0,
            idle_between_parts_s: 8.0,
            warmup_s: 60.0,
            break_chance_per_part: 0.02,
            break_min_s: 120.0,
            break_max_s: 420.0,
            ambient_c: 21.0,
            thermal_gain_c_per_w: 0.0016,
            thermal_time_constant_s: 480.0,
            idle_vibration_mm_s: 0.3,
            spindle_vibration_mm_s: 1.3,
            cutting_vibration_mm_s: 1.5,
            bearing_vibration_mm_s: 4.0,
            power_noise_w: 40.0,
            vibration_noise: 0.08,
            temperature_noise_c: 0.05,
            bearing_wear: 0.0,
        }
    }
}

/// `x` if finite and at least `min`, else `min`.
fn at_least(x: f64, min: f64) -> f64 {
    if x.is_finite() { x.max(min) } else { min }
}

/// `x` clamped to `0.0..=1.0`, with NaN as 0.
fn unit(x: f64) -> f64 {
    if x.is_nan() { 0.0 } else { x.clamp(0.0, 1.0) }
}

impl CncParams {
    fn sanitized(self) -> Self {
        let d = Self::default();
        let part_cycle_s = at_least(self.part_cycle_s, MIN_PHASE_S);
        let break_min_s = at_least(self.break_min_s, MIN_PHASE_S);
        Self {
            idle_power_w: at_least(self.idle_power_w, 0.0),
            cutting_power_w: at_least(self.cutting_power_w, 0.0),
            warmup_power_w: at_least(self.warmup_power_w, 0.0),
            part_cycle_s,
            load_s: at_least(self.load_s, 0.0).min(part_cycle_s),
            idle_between_parts_s: at_least(self.idle_between_parts_s, MIN_PHASE_S),
            warmup_s: at_least(self.warmup_s, MIN_PHASE_S),
            break_chance_per_part: unit(self.break_chance_per_part),
            break_min_s,
            break_max_s: at_least(self.break_max_s, break_min_s),
            ambient_c: if self.ambient_c.is_finite() {
                self.ambient_c
            } else {
                d.ambient_c
            },
            thermal_gain_c_per_w: at_least(self.thermal_gain_c_per_w, 0.0),
            // A zero time constant would divide by zero; 1 ms is effectively
            // instantaneous at any sensible step size.
            thermal_time_constant_s: at_least(self.thermal_time_constant_s, 1e-3),
            idle_vibration_mm_s: at_least(self.idle_vibration_mm_s, 0.0),
            spindle_vibration_mm_s: at_least(self.spindle_vibration_mm_s, 0.0),
            cutting_vibration_mm_s: at_least(self.cutting_vibration_mm_s, 0.0),
            bearing_vibration_mm_s: at_least(self.bearing_vibration_mm_s, 0.0),
            power_noise_w: at_least(self.power_noise_w, 0.0),
            vibration_noise: at_least(self.vibration_noise, 0.0),
            temperature_noise_c: at_least(self.temperature_noise_c, 0.0),
            bearing_wear: unit(self.bearing_wear),
        }
    }
}

/// One sensor sample of a [`CncMill`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CncReading {
    /// Total electrical power of the machine, in W (never negative).
    pub spindle_power_w: f32,
    /// Spindle housing vibration velocity RMS, in mm/s (never negative).
    pub vibration_rms_mm_s: f32,
    /// Coolant tank temperature, in °C.
    pub coolant_temperature_c: f32,
    /// Operating state at the time of the sample.
    pub state: MachineState,
    /// Parts finished since the mill was created.
    pub parts_completed: u32,
}

/// Internal schedule phase. Separate from [`MachineState`] because the model
/// never produces `Fault` on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Off,
    Warming,
    Idle,
    Running,
}

impl Phase {
    fn state(self) -> MachineState {
        match self {
            Self::Off => MachineState::Off,
            Self::Warming => MachineState::Warming,
            Self::Idle => MachineState::Idle,
            Self::Running => MachineState::Running,
        }
    }
}

/// Noise-free physical quantities at one instant.
#[derive(Debug, Clone, Copy)]
struct OperatingPoint {
    power_w: f64,
    /// Spindle speed as a fraction of full speed.
    spindle: f64,
    /// Cutting load as a fraction of full roughing load (incl. hardness).
    load: f64,
}

/// Simulated CNC mill. See the [module docs](self) for the behaviour.
#[derive(Debug, Clone)]
pub struct CncMill {
    params: CncParams,
    rng: SimRng,
    phase: Phase,
    phase_elapsed_s: f64,
    phase_len_s: f64,
    /// Load factor of the part being cut; varies with the raw material.
    hardness: f64,
    /// True coolant temperature; readings add sensor noise on top.
    coolant_c: f64,
    parts_completed: u32,
    /// Stopped by an injected fault: the schedule is frozen, only the
    /// auxiliaries run, until the fault is cleared.
    fault: bool,
    last: CncReading,
}

impl CncMill {
    /// Creates a mill in the Idle state with cold (ambient) coolant, about to
    /// start its first part. All randomness derives from `seed`.
    pub fn new(seed: u64, params: CncParams) -> Self {
        let params = params.sanitized();
        let mut rng = SimRng::new(seed);
        let phase_len_s = idle_duration(&params, &mut rng);
        let mut mill = Self {
            coolant_c: params.ambient_c,
            params,
            rng,
            phase: Phase::Idle,
            phase_elapsed_s: 0.0,
            phase_len_s,
            hardness: 1.0,
            parts_completed: 0,
            fault: false,
            last: CncReading {
                spindle_power_w: 0.0,
                vibration_rms_mm_s: 0.0,
                coolant_temperature_c: 0.0,
                state: MachineState::Idle,
                parts_completed: 0,
            },
        };
        mill.last = mill.sample();
        mill
    }

    /// Advances simulated time by `dt` and returns the reading at the new
    /// time. A zero `dt` returns the previous reading and changes nothing.
    ///
    /// Cost is proportional to simulated time (about one sub-step per
    /// simulated second), so one huge step is no cheaper than many small
    /// ones, but also no less accurate.
    pub fn step(&mut self, dt: Duration) -> CncReading {
        if dt.is_zero() {
            return self.last;
        }
        let mut remaining = dt.as_secs_f64();
        if self.fault {
            // A faulted machine waits for the technician: no part progress,
            // only the auxiliaries keep drawing power and warming the coolant.
            self.integrate_coolant(self.params.idle_power_w, remaining);
            remaining = 0.0;
        }
        while remaining > 0.0 {
            let to_phase_end = self.phase_len_s - self.phase_elapsed_s;
            let chunk = remaining.min(to_phase_end).min(MAX_SUBSTEP_S);
            // Midpoint power keeps the thermal integration second-order
            // accurate while the load profile changes within the chunk.
            let power = self
                .operating_point(self.phase_elapsed_s + chunk / 2.0)
                .power_w;
            self.integrate_coolant(power, chunk);
            self.phase_elapsed_s += chunk;
            remaining -= chunk;
            if self.phase_len_s - self.phase_elapsed_s <= PHASE_EPS_S {
                self.next_phase();
            }
        }
        self.last = self.sample();
        self.last
    }

    /// Sets spindle bearing wear (clamped to `0.0..=1.0`, NaN as 0); takes
    /// effect from the next [`step`](Self::step).
    pub fn set_bearing_wear(&mut self, wear: f64) {
        self.params.bearing_wear = unit(wear);
    }

    /// Sets the chance of an operator break after each part (clamped to
    /// `0.0..=1.0`); a scenario sets 0 for a machine that must keep cutting.
    pub fn set_break_chance(&mut self, chance: f64) {
        self.params.break_chance_per_part = unit(chance);
    }

    /// Stops the mill with a fault (`true`) or clears it (`false`); takes
    /// effect from the next [`step`](Self::step). While faulted the part
    /// schedule is frozen and the state reads [`MachineState::Fault`].
    pub fn set_fault(&mut self, fault: bool) {
        self.fault = fault;
    }

    /// Whether an injected fault stops the mill.
    pub fn is_faulted(&self) -> bool {
        self.fault
    }

    /// The most recent reading, without advancing time.
    pub fn reading(&self) -> CncReading {
        self.last
    }

    /// The parameters in effect, after clamping.
    pub fn params(&self) -> &CncParams {
        &self.params
    }

    fn next_phase(&mut self) {
        let p = &self.params;
        let (phase, len) = match self.phase {
            Phase::Idle => {
                self.hardness = self.rng.range(1.0 - HARDNESS_SPREAD, 1.0 + HARDNESS_SPREAD);
                (Phase::Running, p.part_cycle_s)
            }
            Phase::Running => {
                self.parts_completed = self.parts_completed.saturating_add(1);
                if self.rng.chance(p.break_chance_per_part) {
                    let len = self.rng.range(p.break_min_s, p.break_max_s);
                    (Phase::Off, len.max(MIN_PHASE_S))
                } else {
                    (Phase::Idle, idle_duration(p, &mut self.rng))
                }
            }
            Phase::Off => (Phase::Warming, p.warmup_s),
            Phase::Warming => (Phase::Idle, idle_duration(p, &mut self.rng)),
        };
        self.phase = phase;
        self.phase_len_s = len;
        self.phase_elapsed_s = 0.0;
    }

    /// Exact solution of dT/dt = (target − T)/τ for constant power over `dt`,
    /// so the result does not depend on how time is sliced.
    fn integrate_coolant(&mut self, power_w: f64, dt_s: f64) {
        let p = &self.params;
        let target = p.ambient_c + p.thermal_gain_c_per_w * power_w;
        let decay = (-dt_s / p.thermal_time_constant_s).exp();
        self.coolant_c = target + (self.coolant_c - target) * decay;
    }

    fn operating_point(&self, t_s: f64) -> OperatingPoint {
        let p = &self.params;
        if self.fault {
            return OperatingPoint {
                power_w: p.idle_power_w,
                spindle: 0.0,
                load: 0.0,
            };
        }
        match self.phase {
            Phase::Off => OperatingPoint {
                power_w: 0.0,
                spindle: 0.0,
                load: 0.0,
            },
            Phase::Idle => OperatingPoint {
                power_w: p.idle_power_w,
                spindle: 0.0,
                load: 0.0,
            },
            Phase::Warming => {
                let progress = (t_s / self.phase_len_s).clamp(0.0, 1.0);
                let spindle = WARMUP_START_SPEED + (1.0 - WARMUP_START_SPEED) * progress;
                OperatingPoint {
                    power_w: p.idle_power_w + p.warmup_power_w * spindle,
                    spindle,
                    load: 0.0,
                }
            }
            Phase::Running => {
                let load = cutting_load(t_s, p.part_cycle_s, p.load_s) * self.hardness;
                OperatingPoint {
                    power_w: p.idle_power_w + p.cutting_power_w * load,
                    spindle: 1.0,
                    load,
                }
            }
        }
    }

    /// Turns the current physical state into a noisy sensor reading.
    fn sample(&mut self) -> CncReading {
        // Always three draws, whatever the state, so the random stream (and
        // with it the schedule) does not depend on noise settings or wear.
        let n_power = self.rng.normal(0.0, 1.0);
        let n_vib = self.rng.normal(0.0, 1.0);
        let n_temp = self.rng.normal(0.0, 1.0);

        let p = &self.params;
        let op = self.operating_point(self.phase_elapsed_s);

        let power = if self.phase == Phase::Off && !self.fault {
            0.0
        } else {
            // Cutting forces fluctuate far more than auxiliary loads.
            let std = p.power_noise_w * (1.0 + 2.0 * op.load);
            (op.power_w + std * n_power).max(0.0)
        };

        let wear = p.bearing_wear;
        let vib_mean = if self.phase == Phase::Off && !self.fault {
            OFF_VIBRATION_MM_S
        } else {
            p.idle_vibration_mm_s * (1.0 - op.spindle)
                + p.spindle_vibration_mm_s * op.spindle
                + p.cutting_vibration_mm_s * op.load
                + p.bearing_vibration_mm_s * wear * wear * op.spindle
        };
        let vib_rel = p.vibration_noise + WEAR_VIBRATION_NOISE * wear * op.spindle;
        let vibration = (vib_mean * (1.0 + vib_rel * n_vib)).max(0.0);

        let temperature = self.coolant_c + p.temperature_noise_c * n_temp;

        CncReading {
            spindle_power_w: power as f32,
            vibration_rms_mm_s: vibration as f32,
            coolant_temperature_c: temperature as f32,
            state: if self.fault {
                MachineState::Fault
            } else {
                self.phase.state()
            },
            parts_completed: self.parts_completed,
        }
    }
}

/// Randomised load/unload pause: operators are not metronomes.
fn idle_duration(p: &CncParams, rng: &mut SimRng) -> f64 {
    let factor = rng.range(1.0 - IDLE_SPREAD, 1.0 + IDLE_SPREAD);
    (p.idle_between_parts_s * factor).max(MIN_PHASE_S)
}

/// Cutting load fraction (0..=1, before hardness) at `t_s` into a part cycle:
/// air cut while positioning, the cut centred in the cycle, roughing at full
/// load followed by lighter finishing passes, with ramps as the tool engages
/// and leaves the material.
fn cutting_load(t_s: f64, cycle_s: f64, load_s: f64) -> f64 {
    let lead_in = (cycle_s - load_s) / 2.0;
    let tc = t_s - lead_in;
    if !(0.0..load_s).contains(&tc) {
        return AIR_CUT_LOAD;
    }
    let level = if tc < ROUGHING_SHARE * load_s {
        1.0
    } else {
        FINISH_LOAD
    };
    let engage = (tc / ENGAGE_RAMP_S)
        .min((load_s - tc) / ENGAGE_RAMP_S)
        .min(1.0);
    AIR_CUT_LOAD + (level - AIR_CUT_LOAD) * engage
}

#[cfg(test)]
mod tests {
    use super::*;

    const DT: Duration = Duration::from_millis(100);
    const STEPS_PER_HOUR: usize = 36_000;

    fn run(mill: &mut CncMill, steps: usize) -> Vec<CncReading> {
        (0..steps).map(|_| mill.step(DT)).collect()
    }

    fn mean(xs: impl Iterator<Item = f64>) -> f64 {
        let (sum, n) = xs.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
        assert!(n > 0, "mean of nothing");
        sum / n as f64
    }

    fn mean_where(rs: &[CncReading], state: MachineState, f: fn(&CncReading) -> f32) -> f64 {
        mean(
            rs.iter()
                .filter(|r| r.state == state)
                .map(|r| f64::from(f(r))),
        )
    }

    #[test]
    fn same_seed_same_readings() {
        let mut a = CncMill::new(7, CncParams::default());
        let mut b = CncMill::new(7, CncParams::default());
        assert_eq!(a.reading(), b.reading());
        for i in 0..10_000 {
            assert_eq!(a.step(DT), b.step(DT), "diverged at step {i}");
        }
    }

    #[test]
    fn clone_continues_identically() {
        let mut a = CncMill::new(11, CncParams::default());
        run(&mut a, 1234);
        let mut b = a.clone();
        assert_eq!(run(&mut a, 5000), run(&mut b, 5000));
    }

    #[test]
    fn different_seeds_differ() {
        let a = run(&mut CncMill::new(1, CncParams::default()), 1000);
        let b = run(&mut CncMill::new(2, CncParams::default()), 1000);
        let differing = a.iter().zip(&b).filter(|(x, y)| x != y).count();
        assert!(differing > 900, "only {differing} readings differ");
    }

    #[test]
    fn one_hour_is_plausible() {
        let p = CncParams::default();
        for seed in [0, 1, 2, 3, 42, 0xDEAD_BEEF] {
            let rs = run(&mut CncMill::new(seed, p.clone()), STEPS_PER_HOUR);
            let count = |s| rs.iter().filter(|r| r.state == s).count();
            let (running, idle) = (count(MachineState::Running), count(MachineState::Idle));
            assert!(
                running > STEPS_PER_HOUR / 2,
                "seed {seed}: running {running}"
            );
            assert!(idle > STEPS_PER_HOUR / 20, "seed {seed}: idle {idle}");
            assert_eq!(count(MachineState::Fault), 0);

            let parts = rs.last().expect("readings").parts_completed;
            assert!((40..=90).contains(&parts), "seed {seed}: {parts} parts");
            assert!(rs.windows(2).all(|w| {
                w[1].parts_completed == w[0].parts_completed
                    || (w[1].parts_completed == w[0].parts_completed + 1
                        && w[0].state == MachineState::Running)
            }));

            let power = |r: &CncReading| r.spindle_power_w;
            let p_run = mean_where(&rs, MachineState::Running, power);
            let p_idle = mean_where(&rs, MachineState::Idle, power);
            assert!(p_run > p_idle + 2000.0, "seed {seed}: {p_run} vs {p_idle}");
            assert!(
                (p_idle - p.idle_power_w).abs() < 50.0,
                "seed {seed}: {p_idle}"
            );

            let vib = |r: &CncReading| r.vibration_rms_mm_s;
            let v_run = mean_where(&rs, MachineState::Running, vib);
            let v_idle = mean_where(&rs, MachineState::Idle, vib);
            assert!(
                (1.5..3.0).contains(&v_run),
                "seed {seed}: running vib {v_run}"
            );
            assert!(
                (0.2..0.4).contains(&v_idle),
                "seed {seed}: idle vib {v_idle}"
            );

            for r in &rs {
                assert!(r.spindle_power_w.is_finite() && r.spindle_power_w >= 0.0);
                assert!(r.vibration_rms_mm_s.is_finite() && r.vibration_rms_mm_s >= 0.0);
                let t = f64::from(r.coolant_temperature_c);
                assert!(
                    (p.ambient_c - 1.0..=p.ambient_c + 25.0).contains(&t),
                    "seed {seed}: {t} °C"
                );
            }
            // Thermal lag: the coolant drifts, it never jumps between samples.
            let max_jump = rs
                .windows(2)
                .map(|w| (w[1].coolant_temperature_c - w[0].coolant_temperature_c).abs())
                .fold(0.0f32, f32::max);
            assert!(max_jump < 0.5, "seed {seed}: jump {max_jump}");
            // ...but production does warm it up noticeably within the hour.
            let warmest = rs
                .iter()
                .map(|r| f64::from(r.coolant_temperature_c))
                .fold(f64::MIN, f64::max);
            assert!(warmest > p.ambient_c + 3.0, "seed {seed}: {warmest} °C");
        }
    }

    #[test]
    fn state_transitions_follow_the_schedule() {
        use MachineState::*;
        let rs = run(
            &mut CncMill::new(5, CncParams::default()),
            8 * STEPS_PER_HOUR,
        );
        let mut seen_off = false;
        for w in rs.windows(2) {
            let (a, b) = (w[0].state, w[1].state);
            let ok = a == b
                || matches!(
                    (a, b),
                    (Idle, Running)
                        | (Running, Idle)
                        | (Running, Off)
                        | (Off, Warming)
                        | (Warming, Idle)
                );
            assert!(ok, "illegal transition {a:?} -> {b:?}");
            seen_off |= b == Off;
        }
        assert!(seen_off, "no operator break in a whole shift");
        let off_power = mean_where(&rs, Off, |r| r.spindle_power_w);
        assert_eq!(off_power, 0.0);
        let warm_power = mean_where(&rs, Warming, |r| r.spindle_power_w);
        let idle_power = mean_where(&rs, Idle, |r| r.spindle_power_w);
        assert!(warm_power > idle_power);
    }

    #[test]
    fn bearing_wear_raises_running_vibration() {
        let healthy = run(&mut CncMill::new(9, CncParams::default()), STEPS_PER_HOUR);
        let worn_params = CncParams {
            bearing_wear: 0.8,
            ..CncParams::default()
        };
        let worn = run(&mut CncMill::new(9, worn_params), STEPS_PER_HOUR);
        let vib = |r: &CncReading| r.vibration_rms_mm_s;
        let v_healthy = mean_where(&healthy, MachineState::Running, vib);
        let v_worn = mean_where(&worn, MachineState::Running, vib);
        assert!(v_worn > v_healthy + 1.5, "{v_worn} vs {v_healthy}");
        // Wear changes the vibration only, not the production schedule.
        let states = |rs: &[CncReading]| rs.iter().map(|r| r.state).collect::<Vec<_>>();
        assert_eq!(states(&healthy), states(&worn));

        // set_bearing_wear on a running mill has the same effect.
        let mut mill = CncMill::new(9, CncParams::default());
        mill.set_bearing_wear(0.8);
        assert_eq!(mill.params().bearing_wear, 0.8);
        let v_set = mean_where(&run(&mut mill, STEPS_PER_HOUR), MachineState::Running, vib);
        assert!(v_set > v_healthy + 1.5);
        mill.set_bearing_wear(f64::NAN);
        assert_eq!(mill.params().bearing_wear, 0.0);
        mill.set_bearing_wear(7.0);
        assert_eq!(mill.params().bearing_wear, 1.0);
    }

    #[test]
    fn zero_step_changes_nothing() {
        let mut mill = CncMill::new(3, CncParams::default());
        let first = mill.reading();
        assert_eq!(mill.step(Duration::ZERO), first);
        run(&mut mill, 777);
        let before = mill.clone();
        let r = mill.reading();
        for _ in 0..10 {
            assert_eq!(mill.step(Duration::ZERO), r);
        }
        assert_eq!(mill.reading(), r);
        // The hidden state (RNG included) is untouched too.
        let mut before = before;
        assert_eq!(run(&mut mill, 100), run(&mut before, 100));
    }

    #[test]
    fn reading_returns_last_step() {
        let mut mill = CncMill::new(4, CncParams::default());
        for _ in 0..100 {
            let r = mill.step(DT);
            assert_eq!(mill.reading(), r);
        }
    }

    #[test]
    fn long_steps_match_short_steps_on_average() {
        let mut coarse = CncMill::new(21, CncParams::default());
        let r = coarse.step(Duration::from_secs(3600));
        assert!(
            (40..=90).contains(&r.parts_completed),
            "{}",
            r.parts_completed
        );
        let t = f64::from(r.coolant_temperature_c);
        assert!(t > 24.0 && t < 46.0, "{t}");
        // Ten-second steps cross phase boundaries inside a step.
        let rs: Vec<_> = (0..360)
            .map(|_| coarse.step(Duration::from_secs(10)))
            .collect();
        assert!(rs.iter().all(|r| r.spindle_power_w.is_finite()));
    }

    #[test]
    fn degenerate_params_do_not_hang_or_panic() {
        let params = CncParams {
            part_cycle_s: 0.0,
            load_s: f64::INFINITY,
            idle_between_parts_s: f64::NAN,
            warmup_s: -5.0,
            break_chance_per_part: 2.0,
            break_min_s: f64::NAN,
            break_max_s: -1.0,
            ambient_c: f64::NAN,
            thermal_time_constant_s: 0.0,
            power_noise_w: -3.0,
            bearing_wear: f64::INFINITY,
            ..CncParams::default()
        };
        let mut mill = CncMill::new(0, params);
        for _ in 0..100 {
            let r = mill.step(Duration::from_secs(1));
            assert!(r.spindle_power_w.is_finite() && r.spindle_power_w >= 0.0);
            assert!(r.vibration_rms_mm_s.is_finite() && r.vibration_rms_mm_s >= 0.0);
            assert!(r.coolant_temperature_c.is_finite());
        }
    }

    #[test]
    fn load_profile_shape() {
        let p = CncParams::default();
        let at = |t| cutting_load(t, p.part_cycle_s, p.load_s);
        assert_eq!(at(0.0), AIR_CUT_LOAD);
        assert_eq!(at(10.0), 1.0);
        assert_eq!(at(35.0), FINISH_LOAD);
        assert_eq!(at(44.9), AIR_CUT_LOAD);
        // Engagement ramps: no jump from air cut to full load.
        let lead_in = (p.part_cycle_s - p.load_s) / 2.0;
        assert!(at(lead_in + 0.1) < 0.2);
        for i in 0..450 {
            let v = at(f64::from(i) * 0.1);
            assert!((AIR_CUT_LOAD..=1.0).contains(&v), "{v}");
        }
    }
}
