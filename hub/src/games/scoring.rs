//! How answers are scored: pure functions of the answer, the truth the hub knows (which machine
//! it staged the fault on and when) and the machine's history. Each returns the points before
//! hints and a sentence saying why, which the team sees.

use super::template::Direction;

/// Points and the reason for them.
#[derive(Debug, Clone, PartialEq)]
pub struct Marked {
    /// Points before hint costs.
    pub points: u32,
    /// Why, for the team.
    pub reason: String,
}

/// Fraction of `points` for an error that is full up to `full`, zero from `zero`, linear
/// between, rounded to whole points.
fn closeness(points: u32, error: f64, full: f64, zero: f64) -> u32 {
    if !error.is_finite() || error >= zero {
        return 0;
    }
    if error <= full {
        return points;
    }
    (f64::from(points) * (zero - error) / (zero - full)).round() as u32
}

/// Which machine: `lab/machine`, or the machine id alone where the game has one lab.
pub fn fault_machine(points: u32, answer: &str, truth: &str, single_lab: bool) -> Marked {
    let answer = answer.trim();
    let right =
        answer == truth || (single_lab && truth.split_once('/').is_some_and(|(_, m)| m == answer));
    Marked {
        points: if right { points } else { 0 },
        reason: if right {
            "right machine".into()
        } else {
            format!("{answer} is not the machine with the fault")
        },
    }
}

/// When: all points within `tolerance_s`, none from five times that.
pub fn fault_start(points: u32, answer_ms: u64, truth_ms: u64, tolerance_s: f64) -> Marked {
    let off_s = answer_ms.abs_diff(truth_ms) as f64 / 1000.0;
    Marked {
        points: closeness(points, off_s, tolerance_s, 5.0 * tolerance_s),
        reason: format!("{off_s:.0} s from the fault's start"),
    }
}

/// How much: all points within 5 % of the hub's figure, none from 50 % off. Below 1 Wh the
/// error is taken against 1 Wh, so a near-zero truth does not make every answer infinitely off.
pub fn energy_wasted(points: u32, answer_wh: f64, truth_wh: f64) -> Marked {
    let relative = (answer_wh - truth_wh).abs() / truth_wh.abs().max(1.0);
    Marked {
        points: closeness(points, relative, 0.05, 0.5),
        reason: format!(
            "the hub's figure is {truth_wh:.1} Wh; {:.0} % off",
            relative * 100.0
        ),
    }
}

/// A limit judged against the machine's history: caught if a sample at or after the fault's
/// start passes it; each excursion past it before the fault is a false alarm.
pub fn alarm_threshold(
    points: u32,
    limit: f64,
    direction: Direction,
    false_alarm_cost: u32,
    samples: &[(u64, f64)],
    fault_ms: u64,
) -> Marked {
    let beyond = |value: f64| match direction {
        Direction::Above => value > limit,
        Direction::Below => value < limit,
    };
    let mut false_alarms = 0u32;
    let mut inside_excursion = false;
    let mut caught = false;
    for &(at_ms, value) in samples {
        if !value.is_finite() {
            continue;
        }
        if at_ms >= fault_ms {
            caught |= beyond(value);
            continue;
        }
        let out = beyond(value);
        if out && !inside_excursion {
            false_alarms += 1;
        }
        inside_excursion = out;
    }
    let points = if caught {
        points.saturating_sub(false_alarm_cost.saturating_mul(false_alarms))
    } else {
        0
    };
    let reason = match (caught, false_alarms) {
        (false, _) => "the limit never caught the fault".to_owned(),
        (true, 0) => "caught the fault with no false alarm".to_owned(),
        (true, n) => format!("caught the fault, with {n} false alarm(s) before it"),
    };
    Marked { points, reason }
}

/// A meter's rise over `[from_ms, to_ms]`: its last reading at or before the end minus its last
/// reading at or before the start (the first reading in the period if none is earlier).
/// `None` without a reading in or before the period.
pub fn meter_rise(samples: &[(u64, f64)], from_ms: u64, to_ms: u64) -> Option<f64> {
    let at = |t: u64| {
        samples
            .iter()
            .rev()
            .find(|(at_ms, v)| *at_ms <= t && v.is_finite())
            .map(|(_, v)| *v)
    };
    let end = at(to_ms)?;
    let start = at(from_ms).or_else(|| {
        samples
            .iter()
            .find(|(at_ms, v)| *at_ms >= from_ms && v.is_finite())
            .map(|(_, v)| *v)
    })?;
    Some(end - start)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closeness_is_full_then_linear_then_zero() {
        assert_eq!(closeness(100, 0.0, 10.0, 50.0), 100);
        assert_eq!(closeness(100, 10.0, 10.0, 50.0), 100);
        assert_eq!(closeness(100, 30.0, 10.0, 50.0), 50);
        assert_eq!(closeness(100, 50.0, 10.0, 50.0), 0);
        assert_eq!(closeness(100, f64::NAN, 10.0, 50.0), 0);
    }

    #[test]
    fn machines_are_named_in_full_unless_the_game_has_one_lab() {
        assert_eq!(
            fault_machine(100, "lab-a/m-2", "lab-a/m-2", false).points,
            100
        );
        assert_eq!(fault_machine(100, "m-2", "lab-a/m-2", false).points, 0);
        assert_eq!(fault_machine(100, " m-2 ", "lab-a/m-2", true).points, 100);
        assert_eq!(fault_machine(100, "m-1", "lab-a/m-2", true).points, 0);
    }

    #[test]
    fn start_and_energy_are_scored_by_closeness() {
        assert_eq!(fault_start(100, 130_000, 100_000, 30.0).points, 100);
        // 60 s off with 30 s tolerance: (150 - 60) / 120 of the points.
        assert_eq!(fault_start(100, 40_000, 100_000, 30.0).points, 75);
        assert_eq!(fault_start(100, 0, 1_000_000, 30.0).points, 0);
        assert_eq!(energy_wasted(100, 104.0, 100.0).points, 100);
        // 20 % off: (0.5 - 0.2) / 0.45 of the points.
        assert_eq!(energy_wasted(100, 120.0, 100.0).points, 67);
        assert_eq!(energy_wasted(100, 300.0, 100.0).points, 0);
        assert_eq!(energy_wasted(100, 0.2, 0.0).points, 67, "against 1 Wh");
    }

    #[test]
    fn a_limit_must_catch_the_fault_and_pays_for_false_alarms() {
        // Noise around 50 with two spikes to 70 before the fault at t = 100; 90 after it.
        let samples: Vec<(u64, f64)> = (0..200u64)
            .map(|t| {
                let value = match t {
                    20 | 21 | 60 => 70.0,
                    t if t >= 100 => 90.0,
                    _ => 50.0,
                };
                (t, value)
            })
            .collect();
        let mark = |limit| alarm_threshold(100, limit, Direction::Above, 25, &samples, 100);
        assert_eq!(mark(80.0).points, 100);
        assert_eq!(mark(60.0).points, 50, "two excursions: {:?}", mark(60.0));
        assert_eq!(mark(40.0).points, 75, "always beyond: one long excursion");
        assert_eq!(mark(95.0).points, 0, "never caught");
        let below = alarm_threshold(100, 45.0, Direction::Below, 25, &samples, 100);
        assert_eq!(below.points, 0);
    }

    #[test]
    fn a_meter_rise_uses_the_readings_at_the_period_edges() {
        let samples = [(10, 1.0), (20, 2.0), (30, 4.0), (40, 8.0)];
        assert_eq!(meter_rise(&samples, 20, 35), Some(2.0));
        assert_eq!(
            meter_rise(&samples, 0, 40),
            Some(7.0),
            "first reading inside"
        );
        assert_eq!(meter_rise(&samples, 0, 5), None);
    }
}
