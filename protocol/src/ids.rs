//! Identifiers of the data path — lab, gateway, machine, node, metric — validated on construction.
//!
//! Every id that crosses a boundary (a topic, a frame, a URL) goes through one of these types, so a
//! bad name is rejected once, at the edge, with a message naming the offending value.

use core::fmt;
use core::str::FromStr;

use heapless::String;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// How much of an offending value an error keeps: enough to recognise it in a log line.
const ECHO_LEN: usize = 64;

/// Which kind of identifier failed validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdKind {
    /// A demolab / Sparkplug group id.
    Lab,
    /// A gateway / Sparkplug edge node id.
    Gateway,
    /// A machine / twin / Sparkplug device id.
    Machine,
    /// A Sparkplug primary host id.
    Host,
    /// A `feature.property` metric name.
    Metric,
    /// A 64-bit node hardware id in hex.
    Node,
}

impl IdKind {
    /// The human name used in error messages.
    pub const fn as_str(self) -> &'static str {
        match self {
            IdKind::Lab => "lab id",
            IdKind::Gateway => "gateway id",
            IdKind::Machine => "machine id",
            IdKind::Host => "host id",
            IdKind::Metric => "metric name",
            IdKind::Node => "node id",
        }
    }
}

impl fmt::Display for IdKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an identifier was rejected. The offending value is kept (truncated to 64 bytes).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The value was empty.
    #[error("{kind} must not be empty")]
    Empty {
        /// Which identifier.
        kind: IdKind,
    },
    /// The value was longer than the kind allows.
    #[error("{kind} {value:?} is {len} bytes long; at most {max} are allowed")]
    TooLong {
        /// Which identifier.
        kind: IdKind,
        /// The offending value (truncated).
        value: String<ECHO_LEN>,
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The value held a character outside the allowed set.
    #[error("{kind} {value:?} has {ch:?} at byte {position}; allowed are {allowed}")]
    InvalidChar {
        /// Which identifier.
        kind: IdKind,
        /// The offending value (truncated).
        value: String<ECHO_LEN>,
        /// The first bad character.
        ch: char,
        /// Its byte offset.
        position: usize,
        /// The allowed set, for the message.
        allowed: &'static str,
    },
    /// A metric name that is not `feature.property`.
    #[error("metric name {value:?} must have the form `feature.property`, e.g. `spindle.power_w`")]
    MetricShape {
        /// The offending value (truncated).
        value: String<ECHO_LEN>,
    },
}

fn echo(value: &str) -> String<ECHO_LEN> {
    let mut out = String::new();
    for ch in value.chars() {
        if out.push(ch).is_err() {
            break;
        }
    }
    out
}

/// Checks `value` against a length limit and a per-character predicate.
fn check_chars(
    kind: IdKind,
    value: &str,
    max: usize,
    allowed: &'static str,
    ok: impl Fn(char) -> bool,
) -> Result<(), IdError> {
    if value.is_empty() {
        return Err(IdError::Empty { kind });
    }
    if value.len() > max {
        return Err(IdError::TooLong {
            kind,
            value: echo(value),
            len: value.len(),
            max,
        });
    }
    if let Some((position, ch)) = value.char_indices().find(|&(_, ch)| !ok(ch)) {
        return Err(IdError::InvalidChar {
            kind,
            value: echo(value),
            ch,
            position,
            allowed,
        });
    }
    Ok(())
}

fn is_slug_char(ch: char) -> bool {
    ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '-'
}

fn is_metric_part_char(ch: char) -> bool {
    ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '_'
}

const SLUG: &str = "a-z, 0-9 and '-'";

/// Declares a validated string identifier backed by a fixed-capacity string (no heap).
///
/// Binary formats (postcard, `is_human_readable() == false`) deserialize it without validation so
/// that frame decoding can report the precise [`IdError`] from its own validation pass;
/// human-readable formats (JSON, TOML) validate while deserializing.
macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident, $max:expr, $validate:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(String<$max>);

        impl $name {
            /// Longest accepted value in bytes.
            pub const MAX_LEN: usize = $max;

            /// Validates `value` and builds the id.
            pub fn new(value: &str) -> Result<Self, IdError> {
                let validate: fn(&str) -> Result<(), IdError> = $validate;
                validate(value)?;
                let mut inner = String::new();
                // Cannot fail: the length was checked against the same capacity.
                let _ = inner.push_str(value);
                Ok(Self(inner))
            }

            /// Re-checks a value that entered through a binary decoder.
            pub fn validate(&self) -> Result<(), IdError> {
                let validate: fn(&str) -> Result<(), IdError> = $validate;
                validate(self.0.as_str())
            }

            /// The id as a string slice.
            pub fn as_str(&self) -> &str {
                self.0.as_str()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(value: &str) -> Result<Self, IdError> {
                Self::new(value)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                self.as_str()
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let human = deserializer.is_human_readable();
                let raw = String::<$max>::deserialize(deserializer)?;
                let id = Self(raw);
                if human {
                    id.validate().map_err(serde::de::Error::custom)?;
                }
                Ok(id)
            }
        }
    };
}

string_id!(
    /// A demolab, and its Sparkplug `group_id`: `[a-z0-9-]{1,32}`, e.g. `aarhus-additive`.
    LabId,
    32,
    |v| check_chars(IdKind::Lab, v, 32, SLUG, is_slug_char)
);

string_id!(
    /// A lab gateway, and its Sparkplug `edge_node_id`: `[a-z0-9-]{1,32}`.
    GatewayId,
    32,
    |v| check_chars(IdKind::Gateway, v, 32, SLUG, is_slug_char)
);

string_id!(
    /// A machine — one digital twin, and its Sparkplug `device_id`: `[a-z0-9-]{1,48}`.
    MachineId,
    48,
    |v| check_chars(IdKind::Machine, v, 48, SLUG, is_slug_char)
);

string_id!(
    /// A Sparkplug primary host application id (the hub): `[a-z0-9-]{1,32}`.
    HostId,
    32,
    |v| check_chars(IdKind::Host, v, 32, SLUG, is_slug_char)
);

string_id!(
    /// A metric name `feature.property`, each part `[a-z0-9_]+`, at most 48 bytes in all.
    MetricName,
    48,
    validate_metric_name
);

fn validate_metric_name(value: &str) -> Result<(), IdError> {
    check_chars(
        IdKind::Metric,
        value,
        48,
        "a-z, 0-9, '_' and one '.'",
        |ch| is_metric_part_char(ch) || ch == '.',
    )?;
    match value.split_once('.') {
        Some((feature, property))
            if !feature.is_empty() && !property.is_empty() && !property.contains('.') =>
        {
            Ok(())
        }
        _ => Err(IdError::MetricShape { value: echo(value) }),
    }
}

impl MetricName {
    /// The feature part (`spindle` of `spindle.power_w`).
    pub fn feature(&self) -> &str {
        self.as_str()
            .split_once('.')
            .map_or("", |(feature, _)| feature)
    }

    /// The property part (`power_w` of `spindle.power_w`).
    pub fn property(&self) -> &str {
        self.as_str()
            .split_once('.')
            .map_or("", |(_, property)| property)
    }
}

/// A physical sensor node's 64-bit hardware id; shown and parsed as 16 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeId(pub u64);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({:016x})", self.0)
    }
}

impl FromStr for NodeId {
    type Err = IdError;
    fn from_str(value: &str) -> Result<Self, IdError> {
        check_chars(IdKind::Node, value, 16, "0-9 and a-f", |ch| {
            ch.is_ascii_digit() || ('a'..='f').contains(&ch)
        })?;
        u64::from_str_radix(value, 16)
            .map(NodeId)
            .map_err(|_| IdError::Empty { kind: IdKind::Node })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_ids_round_trip_through_display() {
        let lab = LabId::new("aarhus-additive").expect("valid");
        assert_eq!(lab.to_string(), "aarhus-additive");
        let metric = MetricName::new("spindle.power_w").expect("valid");
        assert_eq!(
            (metric.feature(), metric.property()),
            ("spindle", "power_w")
        );
        let node: NodeId = "00000000deadbeef".parse().expect("valid");
        assert_eq!(node, NodeId(0xdead_beef));
        assert_eq!(node.to_string(), "00000000deadbeef");
    }

    #[test]
    fn errors_name_the_kind_the_value_and_the_problem() {
        let err = LabId::new("Aarhus").expect_err("upper case");
        assert!(
            matches!(
                err,
                IdError::InvalidChar {
                    ch: 'A',
                    position: 0,
                    ..
                }
            ),
            "{err:?}"
        );
        let text = err.to_string();
        assert!(
            text.contains("lab id") && text.contains("\"Aarhus\""),
            "{text}"
        );

        let err = MachineId::new(&"m".repeat(49)).expect_err("too long");
        assert!(
            matches!(
                err,
                IdError::TooLong {
                    len: 49,
                    max: 48,
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(LabId::new(""), Err(IdError::Empty { kind: IdKind::Lab }));
        assert!(matches!(
            LabId::new("lab/1"),
            Err(IdError::InvalidChar { ch: '/', .. })
        ));
    }

    #[test]
    fn metric_names_need_exactly_one_dot_between_two_parts() {
        for bad in ["power", ".power", "spindle.", "a.b.c", "spindle..power"] {
            assert!(
                matches!(MetricName::new(bad), Err(IdError::MetricShape { .. })),
                "{bad} should be rejected for its shape"
            );
        }
        assert!(matches!(
            MetricName::new("spindle.Power"),
            Err(IdError::InvalidChar {
                ch: 'P',
                position: 8,
                ..
            })
        ));
    }

    #[test]
    fn node_ids_reject_non_hex() {
        assert!(matches!(
            "xyz".parse::<NodeId>(),
            Err(IdError::InvalidChar { ch: 'x', .. })
        ));
        assert!(matches!(
            "00000000000000001".parse::<NodeId>(),
            Err(IdError::TooLong { len: 17, .. })
        ));
    }
}
