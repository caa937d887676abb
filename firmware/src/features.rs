//! On-node features computed over windows, so a node sends a few meaningful numbers per second
//! instead of raw streams: vibration RMS, peak and crest factor; current → power → energy;
//! running/idle/off from power thresholds. Pure and allocation-free.

use protocol::MachineState;

/// Statistics of one window of signal samples.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WindowStats {
    /// Root mean square.
    pub rms: f32,
    /// Largest absolute value.
    pub peak: f32,
    /// Peak / RMS (0 for a silent window): high when impacts dominate, as with bearing damage.
    pub crest: f32,
}

/// RMS, peak and crest factor of `samples` (after removing their mean, so gravity or a DC
/// offset does not count as vibration). `None` for an empty window.
pub fn window_stats(samples: &[f32]) -> Option<WindowStats> {
    if samples.is_empty() {
        return None;
    }
    let n = samples.len() as f32;
    let mean = samples.iter().sum::<f32>() / n;
    let mut sum_sq = 0.0f32;
    let mut peak = 0.0f32;
    for &x in samples {
        let d = x - mean;
        sum_sq += d * d;
        peak = peak.max(abs(d));
    }
    let rms = sqrt(sum_sq / n);
    let crest = if rms > 0.0 { peak / rms } else { 0.0 };
    Some(WindowStats { rms, peak, crest })
}

/// RMS, peak and crest factor of a 3-axis window: each axis has its mean (gravity, offsets)
/// removed, the RMS is over the vector of what remains, the peak is its largest length. Taking
/// the magnitude first would hide vibration across gravity (it barely changes the length).
/// `None` for an empty window or axes of unequal length.
pub fn window_stats_3axis(x: &[f32], y: &[f32], z: &[f32]) -> Option<WindowStats> {
    if x.is_empty() || x.len() != y.len() || x.len() != z.len() {
        return None;
    }
    let n = x.len() as f32;
    let mean = |axis: &[f32]| axis.iter().sum::<f32>() / n;
    let (mx, my, mz) = (mean(x), mean(y), mean(z));
    let mut sum_sq = 0.0f32;
    let mut peak = 0.0f32;
    for i in 0..x.len() {
        let (dx, dy, dz) = (x[i] - mx, y[i] - my, z[i] - mz);
        let sq = dx * dx + dy * dy + dz * dz;
        sum_sq += sq;
        peak = peak.max(sqrt(sq));
    }
    let rms = sqrt(sum_sq / n);
    let crest = if rms > 0.0 { peak / rms } else { 0.0 };
    Some(WindowStats { rms, peak, crest })
}

/// Magnitude of a 3-axis sample.
pub fn magnitude(x: f32, y: f32, z: f32) -> f32 {
    sqrt(x * x + y * y + z * z)
}

fn abs(x: f32) -> f32 {
    if x < 0.0 { -x } else { x }
}

/// Square root without `std` (Newton's method; exact enough for sensor features).
pub fn sqrt(x: f32) -> f32 {
    if x <= 0.0 || x.is_nan() {
        return 0.0;
    }
    if x.is_infinite() {
        return x;
    }
    let mut guess = if x > 1.0 { x / 2.0 } else { 1.0 };
    for _ in 0..40 {
        let next = 0.5 * (guess + x / guess);
        if abs(next - guess) <= f32::EPSILON * next {
            return next;
        }
        guess = next;
    }
    guess
}

/// Integrates power into energy (trapezoidal rule) over the node's own clock.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct EnergyCounter {
    last: Option<(u64, f32)>,
    wh: f64,
}

impl EnergyCounter {
    /// Adds a power reading taken at `uptime_ms`; returns the energy so far, Wh.
    pub fn add(&mut self, uptime_ms: u64, power_w: f32) -> f64 {
        if let Some((last_ms, last_w)) = self.last
            && uptime_ms > last_ms
        {
            let hours = (uptime_ms - last_ms) as f64 / 3_600_000.0;
            self.wh += (f64::from(last_w.max(0.0)) + f64::from(power_w.max(0.0))) / 2.0 * hours;
        }
        self.last = Some((uptime_ms, power_w));
        self.wh
    }
}

/// Power thresholds that tell off, idle and running apart for one machine.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StateThresholds {
    /// Below this the machine is off, W.
    pub off_below_w: f32,
    /// At or above this it is running (cutting, printing, pumping), W.
    pub running_from_w: f32,
}

impl StateThresholds {
    /// The state a power reading indicates.
    pub fn state(&self, power_w: f32) -> MachineState {
        if power_w < self.off_below_w {
            MachineState::Off
        } else if power_w >= self.running_from_w {
            MachineState::Running
        } else {
            MachineState::Idle
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sine_has_rms_peak_over_root_two_and_crest_root_two() {
        let mut samples = [0.0f32; 400];
        for (i, s) in samples.iter_mut().enumerate() {
            // 1 + sin: the offset must not count.
            *s = 1.0 + libm_sin(i as f32 * core::f32::consts::TAU / 40.0);
        }
        let stats = window_stats(&samples).expect("samples");
        assert!(
            (stats.rms - core::f32::consts::FRAC_1_SQRT_2).abs() < 1e-3,
            "{stats:?}"
        );
        assert!((stats.peak - 1.0).abs() < 1e-3);
        assert!((stats.crest - core::f32::consts::SQRT_2).abs() < 1e-2);
    }

    // Taylor series is enough for a test signal and keeps the crate free of libm.
    fn libm_sin(x: f32) -> f32 {
        let x =
            (x + core::f32::consts::PI).rem_euclid(core::f32::consts::TAU) - core::f32::consts::PI;
        let (x2, mut term, mut sum) = (x * x, x, x);
        for n in 1..10 {
            term *= -x2 / ((2 * n) as f32 * (2 * n + 1) as f32);
            sum += term;
        }
        sum
    }

    #[test]
    fn an_impact_raises_the_crest_factor() {
        let mut samples = [0.1f32, -0.1].repeat(50);
        let smooth = window_stats(&samples).expect("samples").crest;
        samples[10] = 3.0;
        assert!(window_stats(&samples).expect("samples").crest > 3.0 * smooth);
        assert_eq!(window_stats(&[]), None);
    }

    #[test]
    fn vibration_across_gravity_is_seen_on_three_axes() {
        let mut x = [0.0f32; 64];
        for (i, v) in x.iter_mut().enumerate() {
            *v = if i % 2 == 0 { 0.05 } else { -0.05 };
        }
        let z = [1.0f32; 64];
        let stats = window_stats_3axis(&x, &[0.0; 64], &z).expect("samples");
        assert!(
            (stats.rms - 0.05).abs() < 1e-6 && (stats.crest - 1.0).abs() < 1e-4,
            "{stats:?}"
        );
        assert_eq!(window_stats_3axis(&x, &[0.0; 3], &z), None);
    }

    #[test]
    fn square_roots_are_accurate() {
        for x in [0.0f32, 1e-6, 0.25, 2.0, 1e6] {
            assert!((sqrt(x) * sqrt(x) - x).abs() <= 1e-5 * x.max(1e-6), "{x}");
        }
        assert_eq!(magnitude(3.0, 4.0, 0.0), 5.0);
    }

    #[test]
    fn energy_and_state_follow_power() {
        let mut energy = EnergyCounter::default();
        energy.add(0, 1800.0);
        assert!((energy.add(3_600_000, 1800.0) - 1800.0).abs() < 1e-6);
        let thresholds = StateThresholds {
            off_below_w: 50.0,
            running_from_w: 1500.0,
        };
        assert_eq!(thresholds.state(10.0), MachineState::Off);
        assert_eq!(thresholds.state(800.0), MachineState::Idle);
        assert_eq!(thresholds.state(2000.0), MachineState::Running);
    }
}
