//! Derived KPIs of a twin for the current (UTC) day: energy, utilisation and cycles.
//!
//! They are computed from live samples in source time, so a replay after an outage does not
//! count twice (historical samples never reach here) and the figures do not depend on when the
//! hub received the data.

use serde::{Deserialize, Serialize};

const DAY_MS: u64 = 86_400_000;
/// A gap longer than this between two samples is not attributed to any state or energy: the
/// machine was not observed.
const MAX_GAP_MS: u64 = 60_000;

/// The KPIs and what is needed to continue them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Kpis {
    /// Day the figures are for: days since the Unix epoch (UTC).
    pub day: u64,
    /// Energy used today, Wh.
    pub energy_today_wh: f64,
    /// Time observed running today, s.
    pub running_s: f64,
    /// Time observed at all today, s.
    pub observed_s: f64,
    /// `running_s / observed_s`, 0..1.
    pub utilisation: f64,
    /// Cycles or parts today.
    pub cycles_today: f64,
    #[serde(default)]
    last_timestamp: Option<u64>,
    #[serde(default)]
    last_power_w: Option<f64>,
    #[serde(default)]
    last_energy_wh: Option<f64>,
    #[serde(default)]
    last_cycles: Option<f64>,
}

/// One live sample, as the KPIs need it.
#[derive(Debug, Clone, Copy)]
pub struct KpiSample {
    /// Source time, ms.
    pub timestamp: u64,
    /// The machine was running until this sample (its state before the sample was applied).
    pub was_running: bool,
    /// Spindle or machine power, W.
    pub power_w: Option<f64>,
    /// A monotonic energy meter, Wh (preferred over integrating power when present).
    pub energy_wh: Option<f64>,
    /// A monotonic cycle or part counter.
    pub cycles: Option<f64>,
}

impl Kpis {
    /// Folds one live sample in. Samples older than the last one are ignored.
    pub fn observe(&mut self, sample: KpiSample) {
        if self
            .last_timestamp
            .is_some_and(|last| sample.timestamp < last)
        {
            return;
        }
        let day = sample.timestamp / DAY_MS;
        if day != self.day {
            self.day = day;
            self.energy_today_wh = 0.0;
            self.running_s = 0.0;
            self.observed_s = 0.0;
            self.cycles_today = 0.0;
            // The gap from yesterday's last sample is not split across midnight.
            self.last_timestamp = None;
        }
        let gap = self
            .last_timestamp
            .map(|last| sample.timestamp - last)
            .filter(|gap| *gap <= MAX_GAP_MS);
        if let Some(gap) = gap {
            let seconds = gap as f64 / 1000.0;
            self.observed_s += seconds;
            if sample.was_running {
                self.running_s += seconds;
            }
        }
        match (sample.energy_wh, self.last_energy_wh) {
            // A meter going backwards was reset (a gateway restart): count from the new value.
            (Some(now), Some(before)) if now >= before => self.energy_today_wh += now - before,
            (Some(_), _) => {}
            (None, _) => {
                if let (Some(gap), Some(now), Some(before)) =
                    (gap, sample.power_w, self.last_power_w)
                {
                    let hours = gap as f64 / 3_600_000.0;
                    self.energy_today_wh += (now.max(0.0) + before.max(0.0)) / 2.0 * hours;
                }
            }
        }
        if let (Some(now), Some(before)) = (sample.cycles, self.last_cycles)
            && now >= before
        {
            self.cycles_today += now - before;
        }
        self.utilisation = if self.observed_s > 0.0 {
            self.running_s / self.observed_s
        } else {
            0.0
        };
        self.last_timestamp = Some(sample.timestamp);
        self.last_power_w = sample.power_w.or(self.last_power_w);
        self.last_energy_wh = sample.energy_wh.or(self.last_energy_wh);
        self.last_cycles = sample.cycles.or(self.last_cycles);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(timestamp: u64, was_running: bool, power_w: f64) -> KpiSample {
        KpiSample {
            timestamp,
            was_running,
            power_w: Some(power_w),
            energy_wh: None,
            cycles: None,
        }
    }

    #[test]
    fn power_integrates_to_energy_and_running_time_to_utilisation() {
        let mut kpis = Kpis::default();
        let start = 10 * DAY_MS + 1000;
        // One hour at 1 kW, running for the first half only, sampled every 10 s.
        for i in 0..=360 {
            kpis.observe(sample(start + i * 10_000, i <= 180, 1000.0));
        }
        assert!((kpis.energy_today_wh - 1000.0).abs() < 1e-6, "{kpis:?}");
        assert!((kpis.observed_s - 3600.0).abs() < 1e-9);
        assert!((kpis.utilisation - 0.5).abs() < 1e-9, "{kpis:?}");
    }

    #[test]
    fn meters_and_counters_survive_resets_and_days_roll_over() {
        let mut kpis = Kpis::default();
        let t0 = 3 * DAY_MS;
        for (i, (energy, cycles)) in [(100.0, 5.0), (110.0, 7.0), (3.0, 8.0), (5.0, 9.0)]
            .into_iter()
            .enumerate()
        {
            kpis.observe(KpiSample {
                timestamp: t0 + i as u64 * 1000,
                was_running: true,
                power_w: None,
                energy_wh: Some(energy),
                cycles: Some(cycles),
            });
        }
        // 100 → 110 (+10), reset to 3 (+0), 3 → 5 (+2).
        assert!((kpis.energy_today_wh - 12.0).abs() < 1e-9, "{kpis:?}");
        assert!((kpis.cycles_today - 4.0).abs() < 1e-9);
        kpis.observe(sample(4 * DAY_MS + 5, true, 0.0));
        assert_eq!(kpis.day, 4);
        assert_eq!(kpis.energy_today_wh, 0.0);
        assert_eq!(kpis.observed_s, 0.0);
    }

    #[test]
    fn gaps_and_late_samples_are_not_counted() {
        let mut kpis = Kpis::default();
        kpis.observe(sample(DAY_MS, true, 1000.0));
        kpis.observe(sample(DAY_MS + 2 * MAX_GAP_MS, true, 1000.0));
        kpis.observe(sample(DAY_MS + 1000, true, 1000.0));
        assert_eq!(kpis.observed_s, 0.0);
        assert_eq!(kpis.energy_today_wh, 0.0);
    }
}
