//! What the hub accepts from the wire: size caps, the node sequence window, how long a silent
//! machine stays fresh, and how often an attacker-triggerable refusal may be logged.
//!
//! `[limits]` in `hub.toml`. Every cap is a counted drop (`demolab_hub_dropped_total{reason}`)
//! and at most one log line per reason per `log_interval_ms`, so a flood costs counters, not disk.

use serde::Deserialize;

/// `[limits]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Longest Sparkplug topic accepted, bytes (the longest valid one is about 140).
    pub max_topic_len: usize,
    /// Largest Sparkplug payload accepted, bytes (checked before decoding).
    pub max_payload_bytes: usize,
    /// Metrics one device (twin) may have; more in a birth or in data are dropped.
    pub max_metrics_per_device: usize,
    /// Devices one edge node (gateway) may have born at once.
    pub max_devices_per_edge: usize,
    /// Twins one lab may have.
    pub max_twins_per_lab: usize,
    /// Edge node sessions the host tracks at once, over all labs.
    pub max_edge_nodes: usize,
    /// Longest metric name accepted, bytes (names are `feature.property`, at most 48).
    pub max_metric_name_len: usize,
    /// Longest string value accepted (metric values and birth properties), bytes.
    pub max_string_len: usize,
    /// How far a sample's `node.seq` may run ahead of the twin's last one. A jump beyond it is
    /// refused (`seq_jump`) and the gateway is asked to rebirth, so a forged huge sequence
    /// number cannot make every real sample look stale.
    pub seq_window: u32,
    /// At most one log line per drop reason per this many ms (with a count of the suppressed).
    pub log_interval_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_topic_len: 256,
            max_payload_bytes: 256 * 1024,
            max_metrics_per_device: 256,
            max_devices_per_edge: 256,
            max_twins_per_lab: 1024,
            max_edge_nodes: 256,
            max_metric_name_len: protocol::MetricName::MAX_LEN,
            max_string_len: 256,
            seq_window: 100_000,
            log_interval_ms: 10_000,
        }
    }
}

/// A limit that makes no sense, naming its key (`limits.<key>`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("limits.{key}: {problem}")]
pub struct LimitsError {
    /// The key inside `[limits]`.
    pub key: &'static str,
    /// What is wrong.
    pub problem: String,
}

impl Limits {
    /// Checks every value is in a usable range.
    pub fn validate(&self) -> Result<(), LimitsError> {
        let range = |key: &'static str, value: u64, min: u64, max: u64| {
            if (min..=max).contains(&value) {
                Ok(())
            } else {
                Err(LimitsError {
                    key,
                    problem: format!("must be between {min} and {max}, got {value}"),
                })
            }
        };
        let n = |v: usize| v as u64;
        range("max_topic_len", n(self.max_topic_len), 64, 65_535)?;
        // A DBIRTH of a machine with a few dozen metrics is a few KiB; the MQTT session takes
        // packets of at most 1 MiB.
        range(
            "max_payload_bytes",
            n(self.max_payload_bytes),
            1024,
            1 << 20,
        )?;
        range(
            "max_metrics_per_device",
            n(self.max_metrics_per_device),
            1,
            100_000,
        )?;
        range(
            "max_devices_per_edge",
            n(self.max_devices_per_edge),
            1,
            100_000,
        )?;
        range("max_twins_per_lab", n(self.max_twins_per_lab), 1, 1_000_000)?;
        range("max_edge_nodes", n(self.max_edge_nodes), 1, 100_000)?;
        range(
            "max_metric_name_len",
            n(self.max_metric_name_len),
            3,
            n(protocol::MetricName::MAX_LEN),
        )?;
        range("max_string_len", n(self.max_string_len), 1, 1 << 20)?;
        range(
            "seq_window",
            u64::from(self.seq_window),
            1,
            u64::from(u32::MAX),
        )?;
        range("log_interval_ms", self.log_interval_ms, 0, 3_600_000)
    }
}

/// Cuts echoed wire input for a log line: at most `max` bytes (on a char boundary), with the
/// original length when cut, so a 60 KB topic costs a short line.
pub fn truncated(input: &str, max: usize) -> String {
    if input.len() <= max {
        return input.to_owned();
    }
    let mut end = max;
    while !input.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &input[..end], input.len())
}

/// How much of wire input a log line echoes.
pub const LOG_ECHO_BYTES: usize = 96;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_valid() {
        assert_eq!(Limits::default().validate(), Ok(()));
    }

    #[test]
    fn a_limit_out_of_range_names_its_key() {
        let limits = Limits {
            max_metric_name_len: 49,
            ..Limits::default()
        };
        let err = limits.validate().expect_err("too long for a metric name");
        assert_eq!(err.key, "max_metric_name_len");
        assert!(err.to_string().starts_with("limits.max_metric_name_len"));
        let limits = Limits {
            seq_window: 0,
            ..Limits::default()
        };
        assert_eq!(limits.validate().map_err(|e| e.key), Err("seq_window"));
    }

    #[test]
    fn echoed_input_is_cut_on_a_char_boundary_with_its_length() {
        assert_eq!(truncated("short", 10), "short");
        let long = "é".repeat(100);
        let cut = truncated(&long, 5);
        assert_eq!(cut, "éé… (200 bytes)");
    }
}
