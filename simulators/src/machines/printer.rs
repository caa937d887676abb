//! FDM 3D printer model.
//!
//! Nozzle and bed are first-order thermal plants (heat capacity, loss to the
//! room) driven by PI controllers with saturating heater power and
//! conditional-integration anti-windup, as printer firmware does it. A job
//! heats up (Warming), prints layer after layer (Running) while molten
//! filament draws heat from the nozzle, then waits for the operator to take
//! the part off the bed (Idle) before the next job. Quality drift comes from
//! two parameters: `clog` (a partly blocked nozzle lowers the extruded flow)
//! and `heater_degradation` (an ageing cartridge loses power, so the nozzle
//! sags below its setpoint under load and the flow suffers further).

use std::time::Duration;

use protocol::Unit;

use super::{Machine, MachineKind, MachineState, MetricSpec, ParamError, clamp, finite, substeps};
use crate::rng::SimRng;

/// Heat taken by the filament being melted, W per mm³/s of flow (PLA heated by ~190 K).
const MELT_W_PER_MM3_S: f64 = 0.42;
/// Both temperatures within this of their setpoints end the warm-up.
const READY_BAND_C: f64 = 3.0;
/// Below `setpoint - COLD_FLOW_BAND_C` the melt is too viscous and the flow drops off.
const COLD_FLOW_BAND_C: f64 = 20.0;
/// Controller, fans, steppers: drawn whenever the printer is on, in W.
const ELECTRONICS_W: f64 = 15.0;

/// Parameters of a [`Printer3d`]; [`Default`] is a desktop PLA printer.
#[derive(Debug, Clone, PartialEq)]
pub struct PrinterParams {
    /// Room temperature, °C.
    pub ambient_c: f64,
    /// Nozzle setpoint, °C.
    pub nozzle_setpoint_c: f64,
    /// Bed setpoint, °C.
    pub bed_setpoint_c: f64,
    /// Nozzle heater cartridge power, W.
    pub nozzle_heater_w: f64,
    /// Bed heater power, W.
    pub bed_heater_w: f64,
    /// Nozzle heat capacity, J/K.
    pub nozzle_capacity_j_k: f64,
    /// Nozzle loss to the room, W/K.
    pub nozzle_loss_w_k: f64,
    /// Bed heat capacity, J/K.
    pub bed_capacity_j_k: f64,
    /// Bed loss to the room, W/K.
    pub bed_loss_w_k: f64,
    /// Layers per job.
    pub layers_per_job: u32,
    /// Time per layer, s.
    pub layer_s: f64,
    /// Volumetric flow while printing, mm³/s.
    pub flow_mm3_s: f64,
    /// Pause to remove the part between jobs, s.
    pub unload_s: f64,
    /// Nozzle blockage, 0 (clean) to 1 (blocked).
    pub clog: f64,
    /// Lost heater power, 0 (new) to 1 (dead).
    pub heater_degradation: f64,
}

impl Default for PrinterParams {
    fn default() -> Self {
        Self {
            ambient_c: 22.0,
            nozzle_setpoint_c: 210.0,
            bed_setpoint_c: 60.0,
            nozzle_heater_w: 40.0,
            bed_heater_w: 220.0,
            // τ = C / k = 25 s: a hot end heats up in well under a minute.
            nozzle_capacity_j_k: 3.0,
            nozzle_loss_w_k: 0.12,
            // τ = 150 s, full-power rise ≈ 100 K.
            bed_capacity_j_k: 330.0,
            bed_loss_w_k: 2.2,
            layers_per_job: 120,
            layer_s: 30.0,
            flow_mm3_s: 8.0,
            unload_s: 180.0,
            clog: 0.0,
            heater_degradation: 0.0,
        }
    }
}

/// A PI heater controller with output limits.
#[derive(Debug, Clone)]
struct Pi {
    kp: f64,
    ki: f64,
    integral: f64,
}

impl Pi {
    /// Heater power for the error `e` over `h` seconds, within `0..=max_w`.
    fn update(&mut self, e: f64, h: f64, max_w: f64) -> f64 {
        let unclamped = self.kp * e + self.ki * (self.integral + e * h);
        // Conditional integration: stop integrating when saturated in the
        // direction of the error, or the integral winds up during heat-up
        // and the temperature overshoots badly.
        let saturated = (unclamped >= max_w && e > 0.0) || (unclamped <= 0.0 && e < 0.0);
        if !saturated {
            self.integral += e * h;
        }
        clamp(self.kp * e + self.ki * self.integral, 0.0, max_w)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Warming,
    Printing,
    Unloading,
}

/// Simulated FDM printer. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct Printer3d {
    p: PrinterParams,
    rng: SimRng,
    phase: Phase,
    phase_elapsed_s: f64,
    nozzle_c: f64,
    bed_c: f64,
    nozzle_pi: Pi,
    bed_pi: Pi,
    nozzle_w: f64,
    bed_w: f64,
    flow: f64,
    /// Flow as a share of the commanded flow, last measured while printing; held between
    /// jobs so a dashboard shows the extruder's condition, not a drop to zero at every pause.
    flow_pct: f64,
    layer: u32,
    jobs: u32,
    fault: bool,
    power_on: bool,
    noise: [f64; 3],
}

/// The printer's metrics.
pub const PRINTER_METRICS: [MetricSpec; 8] = [
    ("nozzle.temperature_c", Unit::Celsius),
    ("bed.temperature_c", Unit::Celsius),
    ("heater.power_w", Unit::Watt),
    ("extruder.flow_pct", Unit::Percent),
    ("print.progress_pct", Unit::Percent),
    ("print.layer", Unit::Count),
    ("state.code", Unit::StateCode),
    ("production.parts", Unit::Count),
];

const PARAMS: [&str; 6] = [
    "clog",
    "heater_degradation",
    "nozzle_setpoint_c",
    "bed_setpoint_c",
    "fault",
    "power",
];

impl Printer3d {
    /// A cold printer, switched on, starting its first job.
    pub fn new(seed: u64, params: PrinterParams) -> Self {
        let p = PrinterParams {
            nozzle_capacity_j_k: params.nozzle_capacity_j_k.max(0.1),
            bed_capacity_j_k: params.bed_capacity_j_k.max(1.0),
            layers_per_job: params.layers_per_job.max(1),
            layer_s: params.layer_s.max(1.0),
            unload_s: params.unload_s.max(1.0),
            clog: clamp(params.clog, 0.0, 1.0),
            heater_degradation: clamp(params.heater_degradation, 0.0, 1.0),
            ..params
        };
        Self {
            nozzle_c: p.ambient_c,
            bed_c: p.ambient_c,
            p,
            rng: SimRng::new(seed),
            phase: Phase::Warming,
            phase_elapsed_s: 0.0,
            nozzle_pi: Pi {
                kp: 4.0,
                ki: 0.15,
                integral: 0.0,
            },
            bed_pi: Pi {
                kp: 40.0,
                ki: 0.4,
                integral: 0.0,
            },
            nozzle_w: 0.0,
            bed_w: 0.0,
            flow: 0.0,
            flow_pct: 100.0,
            layer: 0,
            jobs: 0,
            fault: false,
            power_on: true,
            noise: [0.0; 3],
        }
    }

    fn substep(&mut self, h: f64) {
        let p = &self.p;
        let heating = self.power_on && !self.fault;
        let (nozzle_max, bed_max) = if heating {
            (
                p.nozzle_heater_w * (1.0 - p.heater_degradation),
                p.bed_heater_w,
            )
        } else {
            (0.0, 0.0)
        };
        self.nozzle_w = self
            .nozzle_pi
            .update(p.nozzle_setpoint_c - self.nozzle_c, h, nozzle_max);
        self.bed_w = self
            .bed_pi
            .update(p.bed_setpoint_c - self.bed_c, h, bed_max);

        let printing = heating && self.phase == Phase::Printing;
        self.flow = if printing {
            // Too cold a nozzle cannot push the commanded flow through.
            let cold = (p.nozzle_setpoint_c - self.nozzle_c - COLD_FLOW_BAND_C).max(0.0);
            let thermal = clamp(1.0 - cold / 40.0, 0.0, 1.0);
            p.flow_mm3_s * (1.0 - p.clog) * thermal
        } else {
            0.0
        };
        if printing && p.flow_mm3_s > 0.0 {
            self.flow_pct = 100.0 * self.flow / p.flow_mm3_s;
        }
        let melt_w = MELT_W_PER_MM3_S * self.flow;
        self.nozzle_c += h
            * (self.nozzle_w - p.nozzle_loss_w_k * (self.nozzle_c - p.ambient_c) - melt_w)
            / p.nozzle_capacity_j_k;
        self.bed_c +=
            h * (self.bed_w - p.bed_loss_w_k * (self.bed_c - p.ambient_c)) / p.bed_capacity_j_k;

        if !heating {
            return;
        }
        self.phase_elapsed_s += h;
        match self.phase {
            Phase::Warming => {
                if (self.nozzle_c - p.nozzle_setpoint_c).abs() < READY_BAND_C
                    && (self.bed_c - p.bed_setpoint_c).abs() < READY_BAND_C
                {
                    self.phase = Phase::Printing;
                    self.phase_elapsed_s = 0.0;
                    self.layer = 0;
                }
            }
            Phase::Printing => {
                if self.phase_elapsed_s >= p.layer_s {
                    self.phase_elapsed_s -= p.layer_s;
                    self.layer += 1;
                    if self.layer >= p.layers_per_job {
                        self.jobs = self.jobs.saturating_add(1);
                        self.phase = Phase::Unloading;
                        self.phase_elapsed_s = 0.0;
                    }
                }
            }
            Phase::Unloading => {
                if self.phase_elapsed_s >= p.unload_s {
                    self.phase = Phase::Warming;
                    self.phase_elapsed_s = 0.0;
                    self.layer = 0;
                }
            }
        }
    }
}

impl Machine for Printer3d {
    fn kind(&self) -> MachineKind {
        MachineKind::Printer3d
    }

    fn metrics(&self) -> &'static [MetricSpec] {
        &PRINTER_METRICS
    }

    fn step(&mut self, dt: Duration) {
        if dt.is_zero() {
            return;
        }
        substeps(dt, |h| self.substep(h));
        self.noise = [
            self.rng.normal(0.0, 0.4),
            self.rng.normal(0.0, 0.15),
            self.rng.normal(0.0, 1.5),
        ];
    }

    fn values(&self) -> Vec<(&'static str, Unit, f32)> {
        let p = &self.p;
        let power = if self.power_on {
            (ELECTRONICS_W + self.nozzle_w + self.bed_w + self.noise[2]).max(0.0)
        } else {
            0.0
        };
        let progress = match self.phase {
            Phase::Printing => 100.0 * f64::from(self.layer) / f64::from(p.layers_per_job),
            Phase::Unloading => 100.0,
            Phase::Warming => 0.0,
        };
        let v = [
            self.nozzle_c + self.noise[0],
            self.bed_c + self.noise[1],
            power,
            self.flow_pct,
            progress,
            f64::from(self.layer),
            f64::from(self.state().code()),
            f64::from(self.jobs),
        ];
        PRINTER_METRICS
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
        } else {
            match self.phase {
                Phase::Warming => MachineState::Warming,
                Phase::Printing => MachineState::Running,
                Phase::Unloading => MachineState::Idle,
            }
        }
    }

    fn param_names(&self) -> &'static [&'static str] {
        &PARAMS
    }

    fn param(&self, name: &str) -> Option<f64> {
        let p = &self.p;
        Some(match name {
            "clog" => p.clog,
            "heater_degradation" => p.heater_degradation,
            "nozzle_setpoint_c" => p.nozzle_setpoint_c,
            "bed_setpoint_c" => p.bed_setpoint_c,
            "fault" => f64::from(u8::from(self.fault)),
            "power" => f64::from(u8::from(self.power_on)),
            _ => return None,
        })
    }

    fn set_param(&mut self, name: &str, value: f64) -> Result<(), ParamError> {
        let value = finite(MachineKind::Printer3d, name, value)?;
        match name {
            "clog" => self.p.clog = clamp(value, 0.0, 1.0),
            "heater_degradation" => self.p.heater_degradation = clamp(value, 0.0, 1.0),
            "nozzle_setpoint_c" => self.p.nozzle_setpoint_c = clamp(value, 0.0, 300.0),
            "bed_setpoint_c" => self.p.bed_setpoint_c = clamp(value, 0.0, 120.0),
            "fault" => self.fault = value >= 0.5,
            "power" => {
                let on = value >= 0.5;
                if on && !self.power_on {
                    // A power cycle aborts the job: the next one starts from a warm-up.
                    self.phase = Phase::Warming;
                    self.phase_elapsed_s = 0.0;
                    self.layer = 0;
                }
                self.power_on = on;
            }
            _ => return Err(ParamError::unknown(MachineKind::Printer3d, name, &PARAMS)),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(m: &mut Printer3d, secs: u64) -> Vec<Vec<f32>> {
        (0..secs)
            .map(|_| {
                m.step(Duration::from_secs(1));
                m.values().into_iter().map(|(_, _, v)| v).collect()
            })
            .collect()
    }

    fn mean(xs: impl Iterator<Item = f32>) -> f64 {
        let (s, n) = xs.fold((0.0, 0), |(s, n), x| (s + f64::from(x), n + 1));
        assert!(n > 0);
        s / f64::from(n)
    }

    #[test]
    fn nozzle_and_bed_settle_near_their_setpoints_while_printing() {
        let mut m = Printer3d::new(1, PrinterParams::default());
        let rs = run(&mut m, 3 * 3600);
        let printing: Vec<_> = rs.iter().filter(|r| r[6] == 2.0).collect();
        assert!(printing.len() > 3600, "printed {} s", printing.len());
        let nozzle = mean(printing.iter().map(|r| r[0]));
        let bed = mean(printing.iter().map(|r| r[1]));
        assert!((nozzle - 210.0).abs() < 1.5, "nozzle {nozzle}");
        assert!((bed - 60.0).abs() < 1.0, "bed {bed}");
        // No wild overshoot during heat-up (anti-windup).
        let peak = rs.iter().map(|r| r[0]).fold(f32::MIN, f32::max);
        assert!(peak < 222.0, "nozzle overshoot to {peak}");
        // Flow at nominal and jobs finished.
        assert!(mean(printing.iter().map(|r| r[3])) > 97.0);
        assert!(rs.last().map(|r| r[7]).unwrap_or_default() >= 2.0);
    }

    #[test]
    fn warm_up_takes_about_as_long_as_the_bed_needs() {
        let mut m = Printer3d::new(2, PrinterParams::default());
        let rs = run(&mut m, 1200);
        let first_print = rs.iter().position(|r| r[6] == 2.0).expect("prints");
        assert!((60..600).contains(&first_print), "warm-up {first_print} s");
        assert!(rs[..first_print].iter().all(|r| r[6] == 3.0));
    }

    #[test]
    fn a_clog_and_a_weak_heater_lower_the_flow_and_the_nozzle_temperature() {
        let mut healthy = Printer3d::new(3, PrinterParams::default());
        let mut drifted = Printer3d::new(
            3,
            PrinterParams {
                clog: 0.3,
                heater_degradation: 0.4,
                ..PrinterParams::default()
            },
        );
        let printing =
            |rs: &[Vec<f32>], i: usize| mean(rs.iter().filter(|r| r[6] == 2.0).map(|r| r[i]));
        let (h, d) = (run(&mut healthy, 7200), run(&mut drifted, 7200));
        let (fh, fd) = (printing(&h, 3), printing(&d, 3));
        assert!(fd < fh - 25.0, "flow {fd} vs {fh}");
        let (nh, nd) = (printing(&h, 0), printing(&d, 0));
        assert!(nd < nh - 3.0, "nozzle {nd} vs {nh}");
    }

    #[test]
    fn power_off_cools_down_and_draws_nothing() {
        let mut m = Printer3d::new(4, PrinterParams::default());
        run(&mut m, 1800);
        m.set_param("power", 0.0).expect("param");
        let rs = run(&mut m, 1800);
        let last = rs.last().expect("ran");
        assert_eq!((last[2], last[6]), (0.0, 0.0));
        assert!(last[0] < 40.0, "nozzle still {}", last[0]);
    }
}
