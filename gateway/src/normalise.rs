//! Validation and cheap derived values of the pipeline, per sample.
//!
//! Readings outside what their unit can physically be are dropped (and counted) instead of being
//! forwarded as truth; machines whose node reports power but not energy get an energy counter
//! integrated here, close to the data, from the node's own uptime clock.

use protocol::{MetricName, Unit};

/// The derived energy metric.
pub const ENERGY_METRIC: &str = protocol::metric_names::ENERGY_TOTAL_WH;

/// Whether `value` can be a reading in `unit` (wide bounds: they catch broken sensors and unit
/// mix-ups, not unusual machines).
pub fn plausible(unit: Unit, value: f32) -> bool {
    let (low, high) = match unit {
        Unit::Percent => (0.0, 100.0),
        Unit::Celsius => (-273.15, 3000.0),
        Unit::Watt => (-1.0e7, 1.0e8),
        Unit::Count
        | Unit::WattHour
        | Unit::Rpm
        | Unit::Hertz
        | Unit::Second
        | Unit::PartsPerMillion => (0.0, f32::MAX),
        Unit::MillimetrePerSecond => (0.0, 1.0e4),
        Unit::StandardGravity => (-1.0e3, 1.0e3),
        Unit::Bar => (-1.0, 1.0e4),
        Unit::StateCode => (0.0, 255.0),
        _ => (f32::MIN, f32::MAX),
    };
    (low..=high).contains(&value)
}

/// The energy metric name.
pub fn energy_metric() -> MetricName {
    MetricName::new(ENERGY_METRIC).unwrap_or_else(|_| unreachable!("valid literal"))
}

/// Integrates power into energy over a node's uptime (trapezoidal rule).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EnergyMeter {
    last: Option<(u64, f32)>,
    total_wh: f64,
}

impl EnergyMeter {
    /// Adds a power reading taken at `uptime_ms` and returns the energy so far, Wh.
    pub fn add(&mut self, uptime_ms: u64, power_w: f32) -> f64 {
        if let Some((last_ms, last_w)) = self.last
            && uptime_ms > last_ms
        {
            let hours = (uptime_ms - last_ms) as f64 / 3_600_000.0;
            // Negative power (regeneration) is not consumption.
            let mean_w = (f64::from(last_w.max(0.0)) + f64::from(power_w.max(0.0))) / 2.0;
            self.total_wh += mean_w * hours;
        }
        self.last = Some((uptime_ms, power_w));
        self.total_wh
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_constant_kilowatt_for_an_hour_is_a_kilowatt_hour() {
        let mut meter = EnergyMeter::default();
        assert_eq!(meter.add(0, 1000.0), 0.0);
        let mut total = 0.0;
        for second in 1..=3600u64 {
            total = meter.add(second * 1000, 1000.0);
        }
        assert!((total - 1000.0).abs() < 1e-6, "{total}");
    }

    #[test]
    fn implausible_readings_are_caught_by_unit() {
        assert!(plausible(Unit::Percent, 55.0));
        assert!(!plausible(Unit::Percent, 140.0));
        assert!(!plausible(Unit::Celsius, -300.0));
        assert!(!plausible(Unit::Count, -1.0));
        assert!(plausible(Unit::Dimensionless, -1.0e30));
    }
}
