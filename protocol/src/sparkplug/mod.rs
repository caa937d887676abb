//! Sparkplug B 3.0: payload types, topic names and sequence numbers.
//!
//! Gateways are Sparkplug edge nodes (one per lab, `group_id` = lab), machines are devices, and the
//! hub is the primary host application. Only the parts we use are modelled; unknown protobuf
//! fields (DataSet, Template, extensions) are skipped by the decoder, not rejected.

#[cfg(feature = "alloc")]
mod payload;
mod seq;
mod topic;

#[cfg(feature = "alloc")]
pub use payload::{
    DataType, MetaData, Metric, MetricValue, Payload, PropertySet, PropertyValue,
    PropertyValueKind, metric_value_f64,
};
pub use seq::{BdSeq, SeqCounter, seq_gap};
pub use topic::{MessageType, NAMESPACE, STATE_TOPIC_PART, Topic, TopicError};

/// Metric name of the birth/death sequence number in NBIRTH and NDEATH (spec: `bdSeq`).
pub const BD_SEQ_METRIC: &str = "bdSeq";
/// Metric name of the rebirth request in NCMD (spec: `Node Control/Rebirth`).
pub const REBIRTH_METRIC: &str = "Node Control/Rebirth";
