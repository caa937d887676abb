//! Device commands from the hub (Sparkplug DCMD) to nodes, and their results back, sans-IO.
//!
//! DCMD metrics a node understands:
//!
//! | metric | value | node command |
//! |---|---|---|
//! | `node.period_ms` | sample period, ms | `SetPeriod` for every metric |
//! | `node.identify_ms` | how long to blink | `Identify` |
//! | `output.ch{N}` | boolean | `SetOutput { channel: N }` |
//! | `node.request_hello` | true | `RequestHello` |
//!
//! When the node's `Ack` arrives the gateway reports the metric back in a DDATA by name: the new
//! value when it was applied, and always `command.result` (0 ok, 1 invalid argument,
//! 2 unsupported, 3 failed, 4 no node answered in time).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use protocol::sparkplug::{Metric, MetricValue, Payload, metric_value_f64};
use protocol::{AckResult, CommandKind, MachineId, NodeId};

/// Name of the result metric reported after every command.
pub const RESULT_METRIC: &str = protocol::metric_names::COMMAND_RESULT;

/// A command to send, with what to report when it is acknowledged.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedCommand {
    /// The DCMD metric it came from.
    pub metric: String,
    /// The value asked for, echoed when applied.
    pub value: f64,
    /// The node command.
    pub kind: CommandKind,
}

/// Why a DCMD metric was not turned into a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// A metric without a name (aliases are not used for commands).
    #[error("DCMD metric without a name")]
    Unnamed,
    /// A metric this gateway does not know.
    #[error("unknown DCMD metric {0:?}")]
    Unknown(String),
    /// A value out of range or of the wrong type.
    #[error("DCMD metric {0:?} has an unusable value")]
    BadValue(String),
}

/// Turns each DCMD metric into a node command.
pub fn plan(payload: &Payload) -> Vec<Result<PlannedCommand, CommandError>> {
    payload.metrics.iter().map(plan_metric).collect()
}

fn plan_metric(metric: &Metric) -> Result<PlannedCommand, CommandError> {
    let name = metric.name.clone().ok_or(CommandError::Unnamed)?;
    let value =
        metric_value_f64(metric, None).ok_or_else(|| CommandError::BadValue(name.clone()))?;
    let as_u32 = || {
        (value.is_finite() && (0.0..=f64::from(u32::MAX)).contains(&value))
            .then_some(value as u32)
            .ok_or_else(|| CommandError::BadValue(name.clone()))
    };
    let kind = match name.as_str() {
        "node.period_ms" => CommandKind::SetPeriod {
            index: None,
            period_ms: as_u32()?,
        },
        "node.identify_ms" => CommandKind::Identify {
            duration_ms: as_u32()?,
        },
        "node.request_hello" => CommandKind::RequestHello,
        other => match other
            .strip_prefix("output.ch")
            .and_then(|n| n.parse::<u8>().ok())
        {
            Some(channel) => CommandKind::SetOutput {
                channel,
                on: value != 0.0,
            },
            None => return Err(CommandError::Unknown(name)),
        },
    };
    Ok(PlannedCommand {
        metric: name,
        value,
        kind,
    })
}

/// The wire code of a command outcome in `command.result`.
pub fn result_code(result: Option<AckResult>) -> u32 {
    match result {
        Some(AckResult::Ok) => 0,
        Some(AckResult::InvalidArgument) => 1,
        Some(AckResult::Unsupported) => 2,
        Some(AckResult::Failed) => 3,
        None => 4,
    }
}

/// The DDATA metrics reporting a command's outcome (by name: they are not in the DBIRTH).
pub fn result_metrics(
    command: &PlannedCommand,
    result: Option<AckResult>,
    now_ms: u64,
) -> Vec<Metric> {
    let mut metrics = Vec::new();
    if result == Some(AckResult::Ok) {
        metrics.push(
            Metric::new(
                protocol::sparkplug::DataType::Double,
                MetricValue::Double(command.value),
            )
            .named(command.metric.clone())
            .at(now_ms),
        );
    }
    metrics.push(
        Metric::new(
            protocol::sparkplug::DataType::UInt32,
            MetricValue::Long(u64::from(result_code(result))),
        )
        .named(RESULT_METRIC)
        .at(now_ms),
    );
    metrics
}

/// Commands sent and waiting for their `Ack`.
#[derive(Debug, Default)]
pub struct PendingCommands {
    waiting: HashMap<(NodeId, u16), (MachineId, PlannedCommand, Instant)>,
}

impl PendingCommands {
    /// Remembers a sent command.
    pub fn sent(&mut self, node: NodeId, id: u16, machine: MachineId, command: PlannedCommand) {
        self.waiting
            .insert((node, id), (machine, command, Instant::now()));
    }

    /// The command an `Ack` answers.
    pub fn acked(&mut self, node: NodeId, id: u16) -> Option<(MachineId, PlannedCommand)> {
        self.waiting
            .remove(&(node, id))
            .map(|(machine, command, _)| (machine, command))
    }

    /// Commands nobody answered within `timeout`.
    pub fn expired(&mut self, timeout: Duration) -> Vec<(MachineId, PlannedCommand)> {
        let now = Instant::now();
        let late: Vec<(NodeId, u16)> = self
            .waiting
            .iter()
            .filter(|(_, (_, _, at))| now.duration_since(*at) > timeout)
            .map(|(key, _)| *key)
            .collect();
        late.into_iter()
            .filter_map(|key| {
                self.waiting
                    .remove(&key)
                    .map(|(machine, command, _)| (machine, command))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use protocol::sparkplug::DataType;

    use super::*;

    fn dcmd(metrics: Vec<Metric>) -> Payload {
        Payload {
            metrics,
            ..Default::default()
        }
    }

    #[test]
    fn known_metrics_become_node_commands() {
        let payload = dcmd(vec![
            Metric::new(DataType::UInt32, MetricValue::Long(500)).named("node.period_ms"),
            Metric::new(DataType::Boolean, MetricValue::Boolean(true)).named("output.ch2"),
            Metric::new(DataType::UInt32, MetricValue::Int(3000)).named("node.identify_ms"),
        ]);
        let kinds: Vec<CommandKind> = plan(&payload)
            .into_iter()
            .map(|p| p.expect("valid").kind)
            .collect();
        assert_eq!(
            kinds,
            [
                CommandKind::SetPeriod {
                    index: None,
                    period_ms: 500
                },
                CommandKind::SetOutput {
                    channel: 2,
                    on: true
                },
                CommandKind::Identify { duration_ms: 3000 },
            ]
        );
    }

    #[test]
    fn unknown_or_bad_metrics_are_named_in_the_error() {
        let payload = dcmd(vec![
            Metric::new(DataType::Double, MetricValue::Double(1.0)).named("spindle.speed"),
            Metric::new(DataType::Double, MetricValue::Double(-5.0)).named("node.period_ms"),
            Metric::new(DataType::String, MetricValue::String("x".into()))
                .named("node.identify_ms"),
        ]);
        let errors: Vec<CommandError> = plan(&payload)
            .into_iter()
            .map(|p| p.expect_err("invalid"))
            .collect();
        assert_eq!(
            errors,
            [
                CommandError::Unknown("spindle.speed".into()),
                CommandError::BadValue("node.period_ms".into()),
                CommandError::BadValue("node.identify_ms".into()),
            ]
        );
    }

    #[test]
    fn results_echo_the_value_only_when_applied() {
        let command = PlannedCommand {
            metric: "node.period_ms".into(),
            value: 500.0,
            kind: CommandKind::SetPeriod {
                index: None,
                period_ms: 500,
            },
        };
        let ok = result_metrics(&command, Some(AckResult::Ok), 1);
        assert_eq!(ok.len(), 2);
        assert_eq!(ok[1].value, Some(MetricValue::Long(0)));
        let refused = result_metrics(&command, Some(AckResult::InvalidArgument), 1);
        assert_eq!(refused.len(), 1);
        assert_eq!(refused[0].value, Some(MetricValue::Long(1)));
        assert_eq!(
            result_metrics(&command, None, 1)[0].value,
            Some(MetricValue::Long(4))
        );
    }
}
