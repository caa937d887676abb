//! Lab climate: air temperature, humidity and CO₂ of a ventilated room.
//!
//! Well-mixed single-zone model. CO₂ and water vapour are exhaled by the
//! occupants and removed by ventilation: `dC/dt = N·g/V − n·(C − C_out)` with
//! `n` air changes per second. Temperature balances occupant heat and a PI
//! heating controller against losses through the envelope and the
//! ventilation. Relative humidity is computed from absolute humidity with the
//! Magnus formula, so it drops as the room warms — as it does in a real one.

use std::time::Duration;

use protocol::Unit;

use super::{Machine, MachineKind, MachineState, MetricSpec, ParamError, clamp, finite, substeps};
use crate::rng::SimRng;

/// Exhaled CO₂ per sedentary adult, m³/s (≈ 18 l/h).
const CO2_PER_PERSON_M3_S: f64 = 5.0e-6;
/// Sensible heat per person, W.
const HEAT_PER_PERSON_W: f64 = 90.0;
/// Moisture per person, g/s (≈ 50 g/h).
const MOISTURE_PER_PERSON_G_S: f64 = 50.0 / 3600.0;
/// Volumetric heat capacity of air, J/(m³·K).
const AIR_J_M3_K: f64 = 1200.0;
/// Air change rate left when the ventilation fails (infiltration), 1/h.
const INFILTRATION_ACH: f64 = 0.3;

/// Parameters of a [`LabClimate`]; [`Default`] is a 200 m³ teaching lab in autumn.
#[derive(Debug, Clone, PartialEq)]
pub struct ClimateParams {
    /// Room volume, m³.
    pub room_m3: f64,
    /// People in the room.
    pub occupancy: f64,
    /// Mechanical ventilation, air changes per hour.
    pub ventilation_ach: f64,
    /// Outdoor temperature, °C.
    pub outdoor_c: f64,
    /// Outdoor CO₂, ppm.
    pub outdoor_co2_ppm: f64,
    /// Outdoor absolute humidity, g/m³.
    pub outdoor_humidity_g_m3: f64,
    /// Heating setpoint, °C.
    pub setpoint_c: f64,
    /// Heating capacity, W.
    pub heater_w: f64,
    /// Envelope loss, W/K.
    pub envelope_w_k: f64,
    /// Heat capacity of the room (air, furniture, inner walls), J/K.
    pub capacity_j_k: f64,
    /// Ventilation fan power per air change per hour, W.
    pub fan_w_per_ach: f64,
}

impl Default for ClimateParams {
    fn default() -> Self {
        Self {
            room_m3: 200.0,
            occupancy: 0.0,
            ventilation_ach: 3.0,
            outdoor_c: 8.0,
            outdoor_co2_ppm: 420.0,
            outdoor_humidity_g_m3: 6.5,
            setpoint_c: 21.0,
            heater_w: 9_000.0,
            envelope_w_k: 120.0,
            capacity_j_k: 2.0e6,
            fan_w_per_ach: 60.0,
        }
    }
}

/// Simulated lab room. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct LabClimate {
    p: ClimateParams,
    rng: SimRng,
    temperature_c: f64,
    co2_ppm: f64,
    humidity_g_m3: f64,
    heater_integral: f64,
    heater_w: f64,
    fault: bool,
    power_on: bool,
    noise: [f64; 3],
}

/// The room's metrics.
pub const CLIMATE_METRICS: [MetricSpec; 6] = [
    ("env.temperature_c", Unit::Celsius),
    ("env.humidity_pct", Unit::Percent),
    ("env.co2_ppm", Unit::PartsPerMillion),
    ("room.occupancy", Unit::Count),
    ("hvac.power_w", Unit::Watt),
    ("state.code", Unit::StateCode),
];

const PARAMS: [&str; 6] = [
    "occupancy",
    "ventilation_ach",
    "outdoor_c",
    "setpoint_c",
    "fault",
    "power",
];

/// Saturation absolute humidity at `t_c`, g/m³ (Magnus formula).
pub fn saturation_g_m3(t_c: f64) -> f64 {
    6.112 * (17.67 * t_c / (t_c + 243.5)).exp() * 216.74 / (273.15 + t_c)
}

impl LabClimate {
    /// An empty room at its setpoint with outdoor CO₂.
    pub fn new(seed: u64, params: ClimateParams) -> Self {
        let p = ClimateParams {
            room_m3: params.room_m3.max(1.0),
            occupancy: params.occupancy.max(0.0),
            ventilation_ach: params.ventilation_ach.max(0.0),
            capacity_j_k: params.capacity_j_k.max(1e3),
            ..params
        };
        Self {
            temperature_c: p.setpoint_c,
            co2_ppm: p.outdoor_co2_ppm,
            humidity_g_m3: p.outdoor_humidity_g_m3,
            p,
            rng: SimRng::new(seed),
            heater_integral: 0.0,
            heater_w: 0.0,
            fault: false,
            power_on: true,
            noise: [0.0; 3],
        }
    }

    fn ach(&self) -> f64 {
        if self.fault || !self.power_on {
            INFILTRATION_ACH
        } else {
            self.p.ventilation_ach.max(INFILTRATION_ACH)
        }
    }

    fn substep(&mut self, h: f64) {
        let p = &self.p;
        let n = self.ach() / 3600.0;
        let people = p.occupancy;
        self.co2_ppm += h
            * (people * CO2_PER_PERSON_M3_S / p.room_m3 * 1e6
                - n * (self.co2_ppm - p.outdoor_co2_ppm));
        self.humidity_g_m3 += h
            * (people * MOISTURE_PER_PERSON_G_S / p.room_m3
                - n * (self.humidity_g_m3 - p.outdoor_humidity_g_m3));

        let heating = self.power_on && !self.fault;
        let e = p.setpoint_c - self.temperature_c;
        let (kp, ki) = (3000.0, 5.0);
        let unclamped = kp * e + ki * (self.heater_integral + e * h);
        let max = if heating { p.heater_w } else { 0.0 };
        if (0.0..=max).contains(&unclamped) {
            self.heater_integral += e * h;
        }
        self.heater_w = clamp(kp * e + ki * self.heater_integral, 0.0, max);
        let loss_w_k = p.envelope_w_k + AIR_J_M3_K * p.room_m3 * n;
        self.temperature_c += h
            * (self.heater_w + people * HEAT_PER_PERSON_W
                - loss_w_k * (self.temperature_c - p.outdoor_c))
            / p.capacity_j_k;
    }
}

impl Machine for LabClimate {
    fn kind(&self) -> MachineKind {
        MachineKind::LabClimate
    }

    fn metrics(&self) -> &'static [MetricSpec] {
        &CLIMATE_METRICS
    }

    fn step(&mut self, dt: Duration) {
        if dt.is_zero() {
            return;
        }
        substeps(dt, |h| self.substep(h));
        self.noise = [
            self.rng.normal(0.0, 0.05),
            self.rng.normal(0.0, 0.4),
            self.rng.normal(0.0, 8.0),
        ];
    }

    fn values(&self) -> Vec<(&'static str, Unit, f32)> {
        let p = &self.p;
        let rh = 100.0 * self.humidity_g_m3 / saturation_g_m3(self.temperature_c);
        let power = if self.power_on {
            self.heater_w
                + if self.fault {
                    0.0
                } else {
                    p.fan_w_per_ach * p.ventilation_ach
                }
        } else {
            0.0
        };
        let v = [
            self.temperature_c + self.noise[0],
            clamp(rh + self.noise[1], 0.0, 100.0),
            (self.co2_ppm + self.noise[2]).max(0.0),
            p.occupancy.round(),
            power,
            f64::from(self.state().code()),
        ];
        CLIMATE_METRICS
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
        } else if self.p.occupancy >= 0.5 {
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
            "occupancy" => p.occupancy,
            "ventilation_ach" => p.ventilation_ach,
            "outdoor_c" => p.outdoor_c,
            "setpoint_c" => p.setpoint_c,
            "fault" => f64::from(u8::from(self.fault)),
            "power" => f64::from(u8::from(self.power_on)),
            _ => return None,
        })
    }

    fn set_param(&mut self, name: &str, value: f64) -> Result<(), ParamError> {
        let value = finite(MachineKind::LabClimate, name, value)?;
        match name {
            "occupancy" => self.p.occupancy = clamp(value, 0.0, 1000.0),
            "ventilation_ach" => self.p.ventilation_ach = clamp(value, 0.0, 50.0),
            "outdoor_c" => self.p.outdoor_c = clamp(value, -40.0, 50.0),
            "setpoint_c" => self.p.setpoint_c = clamp(value, 5.0, 35.0),
            "fault" => self.fault = value >= 0.5,
            "power" => self.power_on = value >= 0.5,
            _ => return Err(ParamError::unknown(MachineKind::LabClimate, name, &PARAMS)),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(m: &mut LabClimate, secs: u64) -> Vec<Vec<f32>> {
        (0..secs)
            .map(|_| {
                m.step(Duration::from_secs(1));
                m.values().into_iter().map(|(_, _, v)| v).collect()
            })
            .collect()
    }

    #[test]
    fn co2_rises_with_occupancy_towards_the_steady_state_and_falls_when_they_leave() {
        let mut m = LabClimate::new(1, ClimateParams::default());
        let empty = run(&mut m, 600);
        assert!((empty.last().expect("ran")[2] - 420.0).abs() < 40.0);
        m.set_param("occupancy", 20.0).expect("param");
        let class = run(&mut m, 3 * 3600);
        // Steady state: 420 + 20·5e-6/200·1e6 / (3/3600) = 1020 ppm.
        let co2 = class.last().expect("ran")[2];
        assert!((960.0..1080.0).contains(&co2), "{co2} ppm");
        assert_eq!(class.last().expect("ran")[5], 2.0);
        // Occupants warm the room: the heater works less.
        let heater_empty = empty.last().expect("ran")[4];
        let heater_class = class.last().expect("ran")[4];
        assert!(
            heater_class < heater_empty - 500.0,
            "{heater_class} vs {heater_empty}"
        );
        m.set_param("occupancy", 0.0).expect("param");
        let after = run(&mut m, 2 * 3600);
        assert!(after.last().expect("ran")[2] < 500.0);
    }

    #[test]
    fn failed_ventilation_lets_co2_and_humidity_climb() {
        let mut ok = LabClimate::new(
            2,
            ClimateParams {
                occupancy: 15.0,
                ..ClimateParams::default()
            },
        );
        let mut broken = ok.clone();
        broken.set_param("fault", 1.0).expect("param");
        let (a, b) = (run(&mut ok, 2 * 3600), run(&mut broken, 2 * 3600));
        let (a, b) = (a.last().expect("ran"), b.last().expect("ran"));
        assert!(b[2] > a[2] + 1000.0, "co2 {} vs {}", b[2], a[2]);
        assert!(b[1] > a[1] + 10.0, "rh {} vs {}", b[1], a[1]);
    }

    #[test]
    fn the_heater_holds_the_setpoint_in_an_empty_room() {
        let mut m = LabClimate::new(3, ClimateParams::default());
        let rs = run(&mut m, 4 * 3600);
        let t = rs.last().expect("ran")[0];
        assert!((t - 21.0).abs() < 0.3, "{t} °C");
        let rh = rs.last().expect("ran")[1];
        assert!((20.0..60.0).contains(&rh), "{rh} %");
    }
}
