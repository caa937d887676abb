//! The small fixed catalogue of units a metric may carry (SI plus %, rpm, count).

use core::fmt;

use serde::{Deserialize, Serialize};

/// A metric's unit. Encoded on the wire as its variant index, so new units go at the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Unit {
    /// A plain number without unit.
    Dimensionless,
    /// Electrical or mechanical power, W.
    Watt,
    /// Energy, Wh.
    WattHour,
    /// Temperature, °C.
    Celsius,
    /// A ratio, %.
    Percent,
    /// Rotational speed, revolutions per minute.
    Rpm,
    /// A counter (parts, cycles, pulses).
    Count,
    /// Vibration velocity RMS, mm/s (the ISO 10816 severity measure).
    MillimetrePerSecond,
    /// Acceleration in standard gravities, g.
    StandardGravity,
    /// Voltage, V.
    Volt,
    /// Current, A.
    Ampere,
    /// Pressure, bar.
    Bar,
    /// Concentration, ppm (CO2).
    PartsPerMillion,
    /// Duration, s.
    Second,
    /// Frequency, Hz.
    Hertz,
    /// Length, mm.
    Millimetre,
    /// Volume flow, litres per minute.
    LitrePerMinute,
    /// A machine state code (see the machine catalogue).
    StateCode,
}

impl Unit {
    /// Every unit, in wire order.
    pub const ALL: [Unit; 18] = [
        Unit::Dimensionless,
        Unit::Watt,
        Unit::WattHour,
        Unit::Celsius,
        Unit::Percent,
        Unit::Rpm,
        Unit::Count,
        Unit::MillimetrePerSecond,
        Unit::StandardGravity,
        Unit::Volt,
        Unit::Ampere,
        Unit::Bar,
        Unit::PartsPerMillion,
        Unit::Second,
        Unit::Hertz,
        Unit::Millimetre,
        Unit::LitrePerMinute,
        Unit::StateCode,
    ];

    /// The symbol shown to people and used in JSON, e.g. `W`, `degC`, `mm/s`.
    pub const fn symbol(self) -> &'static str {
        match self {
            Unit::Dimensionless => "",
            Unit::Watt => "W",
            Unit::WattHour => "Wh",
            Unit::Celsius => "degC",
            Unit::Percent => "%",
            Unit::Rpm => "rpm",
            Unit::Count => "count",
            Unit::MillimetrePerSecond => "mm/s",
            Unit::StandardGravity => "g",
            Unit::Volt => "V",
            Unit::Ampere => "A",
            Unit::Bar => "bar",
            Unit::PartsPerMillion => "ppm",
            Unit::Second => "s",
            Unit::Hertz => "Hz",
            Unit::Millimetre => "mm",
            Unit::LitrePerMinute => "l/min",
            Unit::StateCode => "state",
        }
    }

    /// The unit for a symbol written by [`Unit::symbol`].
    pub fn from_symbol(symbol: &str) -> Option<Unit> {
        Unit::ALL.into_iter().find(|unit| unit.symbol() == symbol)
    }
}

impl fmt::Display for Unit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.symbol())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_symbol_maps_back_to_its_unit() {
        for unit in Unit::ALL {
            assert_eq!(Unit::from_symbol(unit.symbol()), Some(unit));
        }
        assert_eq!(Unit::from_symbol("furlong"), None);
    }
}
