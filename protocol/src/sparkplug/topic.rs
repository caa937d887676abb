//! Sparkplug topic names: `spBv1.0/{lab}/{TYPE}/{gateway}[/{machine}]` and `spBv1.0/STATE/{host}`.

use core::fmt;

use crate::ids::{GatewayId, HostId, IdError, LabId, MachineId};

/// The Sparkplug B namespace, first topic level.
pub const NAMESPACE: &str = "spBv1.0";
/// The second level of a primary host's STATE topic.
pub const STATE_TOPIC_PART: &str = "STATE";

/// The Sparkplug message types of edge nodes and devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(missing_docs)]
pub enum MessageType {
    NBirth,
    NDeath,
    NData,
    NCmd,
    DBirth,
    DDeath,
    DData,
    DCmd,
}

impl MessageType {
    /// The topic level, e.g. `NBIRTH`.
    pub const fn as_str(self) -> &'static str {
        match self {
            MessageType::NBirth => "NBIRTH",
            MessageType::NDeath => "NDEATH",
            MessageType::NData => "NDATA",
            MessageType::NCmd => "NCMD",
            MessageType::DBirth => "DBIRTH",
            MessageType::DDeath => "DDEATH",
            MessageType::DData => "DDATA",
            MessageType::DCmd => "DCMD",
        }
    }

    /// Whether the message is about a device (and so its topic names one).
    pub const fn is_device(self) -> bool {
        matches!(
            self,
            MessageType::DBirth | MessageType::DDeath | MessageType::DData | MessageType::DCmd
        )
    }

    fn parse(level: &str) -> Option<Self> {
        Some(match level {
            "NBIRTH" => MessageType::NBirth,
            "NDEATH" => MessageType::NDeath,
            "NDATA" => MessageType::NData,
            "NCMD" => MessageType::NCmd,
            "DBIRTH" => MessageType::DBirth,
            "DDEATH" => MessageType::DDeath,
            "DDATA" => MessageType::DData,
            "DCMD" => MessageType::DCmd,
            _ => return None,
        })
    }
}

impl fmt::Display for MessageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A parsed Sparkplug topic.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Topic {
    /// An edge node or device message.
    Message {
        /// `group_id` — the lab.
        lab: LabId,
        /// The message type.
        kind: MessageType,
        /// `edge_node_id` — the gateway.
        gateway: GatewayId,
        /// `device_id` — the machine; present exactly for device messages.
        machine: Option<MachineId>,
    },
    /// A primary host's STATE.
    State {
        /// The host application id.
        host: HostId,
    },
}

/// Why a topic is not a Sparkplug topic we accept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// The first level is not `spBv1.0`.
    #[error("topic does not start with `spBv1.0/`")]
    WrongNamespace,
    /// Too few levels.
    #[error("topic is missing its {0} level")]
    Missing(&'static str),
    /// The message type level is unknown.
    #[error("unknown Sparkplug message type (expected NBIRTH, NDATA, DDATA, ...)")]
    UnknownMessageType,
    /// A device message without a device, or a node message with one.
    #[error("{kind} topics {}", if kind.is_device() { "need a device level" } else { "must not have a device level" })]
    DeviceLevel {
        /// The message type.
        kind: MessageType,
    },
    /// Levels after the last one.
    #[error("topic has extra levels after the last one")]
    ExtraLevels,
    /// A level is not a valid id.
    #[error(transparent)]
    InvalidId(#[from] IdError),
}

impl Topic {
    /// Parses a topic name.
    pub fn parse(topic: &str) -> Result<Self, TopicError> {
        let mut levels = topic.split('/');
        if levels.next() != Some(NAMESPACE) {
            return Err(TopicError::WrongNamespace);
        }
        let second = levels.next().ok_or(TopicError::Missing("group id"))?;
        if second == STATE_TOPIC_PART {
            let host = HostId::new(levels.next().ok_or(TopicError::Missing("host id"))?)?;
            return match levels.next() {
                None => Ok(Topic::State { host }),
                Some(_) => Err(TopicError::ExtraLevels),
            };
        }
        let lab = LabId::new(second)?;
        let kind_level = levels.next().ok_or(TopicError::Missing("message type"))?;
        let kind = MessageType::parse(kind_level).ok_or(TopicError::UnknownMessageType)?;
        let gateway = GatewayId::new(levels.next().ok_or(TopicError::Missing("edge node id"))?)?;
        let machine = levels.next().map(MachineId::new).transpose()?;
        if levels.next().is_some() {
            return Err(TopicError::ExtraLevels);
        }
        if kind.is_device() != machine.is_some() {
            return Err(TopicError::DeviceLevel { kind });
        }
        Ok(Topic::Message {
            lab,
            kind,
            gateway,
            machine,
        })
    }

    /// An edge node topic (`NBIRTH`, `NDATA`, `NDEATH`, `NCMD`).
    pub fn node(lab: &LabId, kind: MessageType, gateway: &GatewayId) -> Self {
        Topic::Message {
            lab: lab.clone(),
            kind,
            gateway: gateway.clone(),
            machine: None,
        }
    }

    /// A device topic (`DBIRTH`, `DDATA`, `DDEATH`, `DCMD`).
    pub fn device(
        lab: &LabId,
        kind: MessageType,
        gateway: &GatewayId,
        machine: &MachineId,
    ) -> Self {
        Topic::Message {
            lab: lab.clone(),
            kind,
            gateway: gateway.clone(),
            machine: Some(machine.clone()),
        }
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Topic::Message {
                lab,
                kind,
                gateway,
                machine,
            } => {
                write!(f, "{NAMESPACE}/{lab}/{}/{gateway}", kind.as_str())?;
                if let Some(machine) = machine {
                    write!(f, "/{machine}")?;
                }
                Ok(())
            }
            Topic::State { host } => write!(f, "{NAMESPACE}/{STATE_TOPIC_PART}/{host}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use alloc::string::ToString;

    use super::*;

    #[test]
    fn device_and_node_topics_round_trip() {
        for text in [
            "spBv1.0/lab-a/DDATA/gw-a/mill-1",
            "spBv1.0/lab-a/NBIRTH/gw-a",
            "spBv1.0/STATE/hub",
        ] {
            let topic = Topic::parse(text).expect("valid");
            assert_eq!(topic.to_string(), text);
        }
    }

    #[test]
    fn malformed_topics_name_what_is_wrong() {
        assert_eq!(
            Topic::parse("spAv1.0/x/NDATA/g"),
            Err(TopicError::WrongNamespace)
        );
        assert_eq!(
            Topic::parse("spBv1.0/lab-a"),
            Err(TopicError::Missing("message type"))
        );
        assert_eq!(
            Topic::parse("spBv1.0/lab-a/XDATA/g"),
            Err(TopicError::UnknownMessageType)
        );
        assert_eq!(
            Topic::parse("spBv1.0/lab-a/DDATA/g"),
            Err(TopicError::DeviceLevel {
                kind: MessageType::DData
            })
        );
        assert_eq!(
            Topic::parse("spBv1.0/lab-a/NDATA/g/m"),
            Err(TopicError::DeviceLevel {
                kind: MessageType::NData
            })
        );
        assert_eq!(
            Topic::parse("spBv1.0/lab-a/DDATA/g/m/x"),
            Err(TopicError::ExtraLevels)
        );
        let err = Topic::parse("spBv1.0/Lab/NDATA/g").expect_err("upper case group");
        assert!(err.to_string().contains("lab id \"Lab\""), "{err}");
    }
}
