//! Physical machine models that generate plausible shop-floor telemetry.
//!
//! Models are advanced by an injected time step rather than the wall clock and
//! draw all randomness from a seeded [`SimRng`](crate::rng::SimRng), so a
//! scenario replays identically from its seed, in tests as in demos.
//!
//! Every model implements [`Machine`]: a fixed metric table (`feature.property`
//! names with [`Unit`]s, in the index order a node announces them), a `step`
//! in simulated time, the current [`MachineState`], and named parameters that
//! scenarios change while the machine runs (faults, wear, demand, occupancy).
//!
//! ```
//! use std::time::Duration;
//! use demolab_simulators::machines::{Machine, MachineKind};
//!
//! let mut compressor = MachineKind::Compressor.build(7);
//! compressor.set_param("leak_l_s", 6.0).expect("a compressor has a leak");
//! compressor.step(Duration::from_secs(600));
//! let values = compressor.values();
//! assert_eq!(values.len(), compressor.metrics().len());
//! ```

pub mod climate;
pub mod cnc;
pub mod compressor;
pub mod conveyor;
pub mod printer;

use std::fmt;
use std::time::Duration;

pub use climate::{ClimateParams, LabClimate};
pub use cnc::{CncMill, CncParams, CncReading};
pub use compressor::{Compressor, CompressorParams};
pub use conveyor::{ConveyorCell, ConveyorParams};
pub use printer::{Printer3d, PrinterParams};
pub use protocol::MachineState;
use protocol::Unit;
use serde::{Deserialize, Serialize};

/// One metric a model produces: `(name, unit)`, the name a valid `feature.property`.
pub type MetricSpec = (&'static str, Unit);

/// A simulated machine, advanced in simulated time.
///
/// Implementations are deterministic: the same seed and the same sequence of
/// `step`s and `set_param`s give the same values, bit for bit.
pub trait Machine: fmt::Debug + Send + Sync {
    /// Which model this is.
    fn kind(&self) -> MachineKind;
    /// The metrics in index order; [`values`](Self::values) follows it.
    fn metrics(&self) -> &'static [MetricSpec];
    /// Advances simulated time by `dt`. A zero `dt` changes nothing.
    fn step(&mut self, dt: Duration);
    /// The values at the current simulated time, one per metric, as `(name, unit, value)`.
    fn values(&self) -> Vec<(&'static str, Unit, f32)>;
    /// The operating state.
    fn state(&self) -> MachineState;
    /// The parameters [`set_param`](Self::set_param) accepts.
    fn param_names(&self) -> &'static [&'static str];
    /// The current value of a parameter.
    fn param(&self, name: &str) -> Option<f64>;
    /// Changes a parameter (a fault, wear, demand, an operator action); takes
    /// effect from the next step. Values are clamped to the parameter's range.
    fn set_param(&mut self, name: &str, value: f64) -> Result<(), ParamError>;
}

/// A parameter a model does not have, or a value it cannot take.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ParamError {
    /// No such parameter.
    #[error("{kind} has no parameter `{name}`; it has: {known}")]
    Unknown {
        /// The model.
        kind: MachineKind,
        /// The name asked for.
        name: String,
        /// The names it has, comma separated.
        known: String,
    },
    /// NaN or infinite.
    #[error("{kind} parameter `{name}` must be a finite number, not {value}")]
    NotFinite {
        /// The model.
        kind: MachineKind,
        /// The parameter.
        name: String,
        /// The value.
        value: f64,
    },
}

impl ParamError {
    pub(crate) fn unknown(kind: MachineKind, name: &str, known: &[&str]) -> Self {
        Self::Unknown {
            kind,
            name: name.to_owned(),
            known: known.join(", "),
        }
    }
}

/// Checks that `value` is finite, for `set_param` implementations.
pub(crate) fn finite(kind: MachineKind, name: &str, value: f64) -> Result<f64, ParamError> {
    if value.is_finite() {
        Ok(value)
    } else {
        Err(ParamError::NotFinite {
            kind,
            name: name.to_owned(),
            value,
        })
    }
}

/// The machine models, named as the hub catalogue names their kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MachineKind {
    /// [`CncMill`].
    CncMill,
    /// [`Printer3d`].
    #[serde(rename = "3d-printer")]
    Printer3d,
    /// [`Compressor`].
    Compressor,
    /// [`ConveyorCell`].
    Conveyor,
    /// [`LabClimate`].
    LabClimate,
}

impl MachineKind {
    /// Every model.
    pub const ALL: [MachineKind; 5] = [
        MachineKind::CncMill,
        MachineKind::Printer3d,
        MachineKind::Compressor,
        MachineKind::Conveyor,
        MachineKind::LabClimate,
    ];

    /// The catalogue id (`cnc-mill`, `3d-printer`, …).
    pub const fn id(self) -> &'static str {
        match self {
            MachineKind::CncMill => "cnc-mill",
            MachineKind::Printer3d => "3d-printer",
            MachineKind::Compressor => "compressor",
            MachineKind::Conveyor => "conveyor",
            MachineKind::LabClimate => "lab-climate",
        }
    }

    /// A model of this kind with default parameters, all randomness from `seed`.
    pub fn build(self, seed: u64) -> Box<dyn Machine> {
        match self {
            MachineKind::CncMill => Box::new(CncMill::new(seed, CncParams::default())),
            MachineKind::Printer3d => Box::new(Printer3d::new(seed, PrinterParams::default())),
            MachineKind::Compressor => Box::new(Compressor::new(seed, CompressorParams::default())),
            MachineKind::Conveyor => Box::new(ConveyorCell::new(seed, ConveyorParams::default())),
            MachineKind::LabClimate => Box::new(LabClimate::new(seed, ClimateParams::default())),
        }
    }
}

impl fmt::Display for MachineKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.id())
    }
}

impl std::str::FromStr for MachineKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        MachineKind::ALL
            .into_iter()
            .find(|k| k.id() == s)
            .ok_or_else(|| {
                let known: Vec<_> = MachineKind::ALL.iter().map(|k| k.id()).collect();
                format!("unknown machine kind {s:?}; known: {}", known.join(", "))
            })
    }
}

/// Integration sub-step of the continuous models: far below their fastest time
/// constant (a printer nozzle, ~25 s), so explicit Euler stays accurate and
/// stable, while a long step costs proportionally to simulated time.
pub(crate) const SUBSTEP_S: f64 = 0.25;

/// Splits `dt` into sub-steps of at most [`SUBSTEP_S`], calling `f` with each length.
pub(crate) fn substeps(dt: Duration, mut f: impl FnMut(f64)) {
    let mut remaining = dt.as_secs_f64();
    while remaining > 1e-12 {
        let h = remaining.min(SUBSTEP_S);
        f(h);
        remaining -= h;
    }
}

/// `x` clamped to `lo..=hi`, NaN as `lo`.
pub(crate) fn clamp(x: f64, lo: f64, hi: f64) -> f64 {
    if x.is_nan() { lo } else { x.max(lo).min(hi) }
}

/// Moves an exponentially weighted average towards `x` over `h` seconds with time constant `tau_s`.
pub(crate) fn ewma(avg: f64, x: f64, h: f64, tau_s: f64) -> f64 {
    let a = 1.0 - (-h / tau_s.max(1e-3)).exp();
    avg + a * (x - avg)
}

impl Machine for CncMill {
    fn kind(&self) -> MachineKind {
        MachineKind::CncMill
    }

    fn metrics(&self) -> &'static [MetricSpec] {
        &CNC_METRICS
    }

    fn step(&mut self, dt: Duration) {
        CncMill::step(self, dt);
    }

    fn values(&self) -> Vec<(&'static str, Unit, f32)> {
        let r = self.reading();
        let v = [
            r.spindle_power_w,
            r.vibration_rms_mm_s,
            r.coolant_temperature_c,
            f32::from(r.state.code()),
            // Exact up to 2^24 parts, i.e. decades of continuous milling.
            r.parts_completed as f32,
        ];
        CNC_METRICS
            .iter()
            .zip(v)
            .map(|(&(n, u), v)| (n, u, v))
            .collect()
    }

    fn state(&self) -> MachineState {
        self.reading().state
    }

    fn param_names(&self) -> &'static [&'static str] {
        &["bearing_wear", "fault", "break_chance_per_part"]
    }

    fn param(&self, name: &str) -> Option<f64> {
        match name {
            "bearing_wear" => Some(self.params().bearing_wear),
            "fault" => Some(if self.is_faulted() { 1.0 } else { 0.0 }),
            "break_chance_per_part" => Some(self.params().break_chance_per_part),
            _ => None,
        }
    }

    fn set_param(&mut self, name: &str, value: f64) -> Result<(), ParamError> {
        let value = finite(MachineKind::CncMill, name, value)?;
        match name {
            "bearing_wear" => self.set_bearing_wear(value),
            "fault" => self.set_fault(value >= 0.5),
            "break_chance_per_part" => self.set_break_chance(value),
            _ => {
                return Err(ParamError::unknown(
                    MachineKind::CncMill,
                    name,
                    self.param_names(),
                ));
            }
        }
        Ok(())
    }
}

/// The CNC mill's metrics, in the order its node announces them.
pub const CNC_METRICS: [MetricSpec; 5] = [
    ("spindle.power_w", Unit::Watt),
    ("spindle.vibration_rms", Unit::MillimetrePerSecond),
    ("coolant.temperature_c", Unit::Celsius),
    ("state.code", Unit::StateCode),
    ("production.parts", Unit::Count),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_model_announces_valid_metric_names_and_matching_values() {
        for kind in MachineKind::ALL {
            let mut m = kind.build(1);
            assert_eq!(m.kind(), kind);
            for (name, _) in m.metrics() {
                protocol::MetricName::new(name).unwrap_or_else(|e| panic!("{kind}: {name}: {e}"));
            }
            m.step(Duration::from_secs(3));
            let values = m.values();
            assert_eq!(values.len(), m.metrics().len(), "{kind}");
            for ((name, unit, v), (n2, u2)) in values.iter().zip(m.metrics()) {
                assert_eq!((name, unit), (n2, u2));
                assert!(v.is_finite(), "{kind} {name} = {v}");
            }
            // Exactly one power metric, so the gateway derives energy from it.
            let watts = m.metrics().iter().filter(|(_, u)| *u == Unit::Watt).count();
            assert_eq!(watts, 1, "{kind}");
            assert!(m.metrics().iter().any(|(n, _)| *n == "state.code"));
        }
    }

    #[test]
    fn every_model_is_deterministic_from_its_seed() {
        for kind in MachineKind::ALL {
            let (mut a, mut b, mut c) = (kind.build(5), kind.build(5), kind.build(6));
            let mut differs = false;
            for i in 0..2000 {
                a.step(Duration::from_secs(1));
                b.step(Duration::from_secs(1));
                c.step(Duration::from_secs(1));
                assert_eq!(a.values(), b.values(), "{kind} diverged at {i}");
                differs |= a.values() != c.values();
            }
            assert!(differs, "{kind}: seeds 5 and 6 gave the same run");
        }
    }

    #[test]
    fn every_model_takes_a_fault_and_recovers() {
        for kind in MachineKind::ALL {
            let mut m = kind.build(3);
            m.step(Duration::from_secs(600));
            m.set_param("fault", 1.0).expect("every model can fault");
            m.step(Duration::from_secs(10));
            assert_eq!(m.state(), MachineState::Fault, "{kind}");
            assert_eq!(m.param("fault"), Some(1.0));
            m.set_param("fault", 0.0).expect("clear");
            m.step(Duration::from_secs(600));
            assert_ne!(m.state(), MachineState::Fault, "{kind}");
        }
    }

    #[test]
    fn unknown_and_non_finite_parameters_are_errors_naming_them() {
        for kind in MachineKind::ALL {
            let mut m = kind.build(1);
            let err = m.set_param("warp_drive", 1.0).expect_err("no such param");
            assert!(err.to_string().contains("warp_drive"), "{err}");
            let name = m.param_names()[0];
            let err = m.set_param(name, f64::NAN).expect_err("NaN");
            assert!(err.to_string().contains(name), "{err}");
            for name in m.param_names() {
                assert!(m.param(name).is_some(), "{kind} {name}");
            }
        }
    }

    #[test]
    fn kinds_parse_from_their_catalogue_ids() {
        for kind in MachineKind::ALL {
            assert_eq!(kind.id().parse::<MachineKind>(), Ok(kind));
        }
        assert!("lathe".parse::<MachineKind>().is_err());
    }
}
