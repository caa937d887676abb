//! Sparkplug B payload messages, written from the specification's field list (proto2, package
//! `org.eclipse.tahu.protobuf`). Field numbers are the contract; names follow Rust style.

use alloc::string::String;
use alloc::vec::Vec;

/// A Sparkplug message body: `Payload` in the specification.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Payload {
    /// Send time, ms since the Unix epoch.
    #[prost(uint64, optional, tag = "1")]
    pub timestamp: Option<u64>,
    /// The metrics.
    #[prost(message, repeated, tag = "2")]
    pub metrics: Vec<Metric>,
    /// Message sequence number 0..=255 (absent in NDEATH and STATE).
    #[prost(uint64, optional, tag = "3")]
    pub seq: Option<u64>,
    /// Optional UUID of the body's schema.
    #[prost(string, optional, tag = "4")]
    pub uuid: Option<String>,
    /// Optional opaque body.
    #[prost(bytes = "vec", optional, tag = "5")]
    pub body: Option<Vec<u8>>,
}

/// One metric: `Payload.Metric` in the specification.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Metric {
    /// Full name; required in births, omitted after when an alias is used.
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    /// Alias announced in the birth, used instead of the name afterwards.
    #[prost(uint64, optional, tag = "2")]
    pub alias: Option<u64>,
    /// Sample time, ms since the Unix epoch.
    #[prost(uint64, optional, tag = "3")]
    pub timestamp: Option<u64>,
    /// A [`DataType`] number.
    #[prost(uint32, optional, tag = "4")]
    pub datatype: Option<u32>,
    /// Set on values replayed from a store-and-forward buffer.
    #[prost(bool, optional, tag = "5")]
    pub is_historical: Option<bool>,
    /// Set on values not to be stored.
    #[prost(bool, optional, tag = "6")]
    pub is_transient: Option<bool>,
    /// Set when the value is null.
    #[prost(bool, optional, tag = "7")]
    pub is_null: Option<bool>,
    /// Optional metadata (multi-part files, descriptions).
    #[prost(message, optional, tag = "8")]
    pub metadata: Option<MetaData>,
    /// Optional properties (engineering units, ranges).
    #[prost(message, optional, tag = "9")]
    pub properties: Option<PropertySet>,
    /// The value.
    #[prost(oneof = "MetricValue", tags = "10, 11, 12, 13, 14, 15, 16")]
    pub value: Option<MetricValue>,
}

/// The `value` oneof of a metric. DataSet (17), Template (18) and extensions (19) are not modelled.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum MetricValue {
    /// Int8/16/32, UInt8/16/32 (signed types are two's complement in the low bits).
    #[prost(uint32, tag = "10")]
    Int(u32),
    /// Int64, UInt64, DateTime.
    #[prost(uint64, tag = "11")]
    Long(u64),
    /// Float.
    #[prost(float, tag = "12")]
    Float(f32),
    /// Double.
    #[prost(double, tag = "13")]
    Double(f64),
    /// Boolean.
    #[prost(bool, tag = "14")]
    Boolean(bool),
    /// String, Text, UUID.
    #[prost(string, tag = "15")]
    String(String),
    /// Bytes, File.
    #[prost(bytes = "vec", tag = "16")]
    Bytes(Vec<u8>),
}

/// `Payload.MetaData` in the specification.
#[derive(Clone, PartialEq, prost::Message)]
pub struct MetaData {
    /// Part of a multi-part metric.
    #[prost(bool, optional, tag = "1")]
    pub is_multi_part: Option<bool>,
    /// MIME type.
    #[prost(string, optional, tag = "2")]
    pub content_type: Option<String>,
    /// Size in bytes.
    #[prost(uint64, optional, tag = "3")]
    pub size: Option<u64>,
    /// Sequence of a multi-part metric.
    #[prost(uint64, optional, tag = "4")]
    pub seq: Option<u64>,
    /// File name.
    #[prost(string, optional, tag = "5")]
    pub file_name: Option<String>,
    /// File type.
    #[prost(string, optional, tag = "6")]
    pub file_type: Option<String>,
    /// MD5 of the content.
    #[prost(string, optional, tag = "7")]
    pub md5: Option<String>,
    /// Free text.
    #[prost(string, optional, tag = "8")]
    pub description: Option<String>,
}

/// `Payload.PropertySet`: parallel lists of keys and values.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PropertySet {
    /// Keys.
    #[prost(string, repeated, tag = "1")]
    pub keys: Vec<String>,
    /// Values, one per key.
    #[prost(message, repeated, tag = "2")]
    pub values: Vec<PropertyValue>,
}

/// `Payload.PropertyValue`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PropertyValue {
    /// A [`DataType`] number.
    #[prost(uint32, optional, tag = "1")]
    pub datatype: Option<u32>,
    /// Null value.
    #[prost(bool, optional, tag = "2")]
    pub is_null: Option<bool>,
    /// The value.
    #[prost(oneof = "PropertyValueKind", tags = "3, 4, 5, 6, 7, 8")]
    pub value: Option<PropertyValueKind>,
}

/// The value oneof of a property (nested property sets, 9 and 10, are not modelled).
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum PropertyValueKind {
    /// 8/16/32-bit integers.
    #[prost(uint32, tag = "3")]
    Int(u32),
    /// 64-bit integers.
    #[prost(uint64, tag = "4")]
    Long(u64),
    /// Float.
    #[prost(float, tag = "5")]
    Float(f32),
    /// Double.
    #[prost(double, tag = "6")]
    Double(f64),
    /// Boolean.
    #[prost(bool, tag = "7")]
    Boolean(bool),
    /// String.
    #[prost(string, tag = "8")]
    String(String),
}

/// Sparkplug data type numbers (the `DataType` enum of the specification).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
#[allow(missing_docs)]
pub enum DataType {
    Unknown = 0,
    Int8 = 1,
    Int16 = 2,
    Int32 = 3,
    Int64 = 4,
    UInt8 = 5,
    UInt16 = 6,
    UInt32 = 7,
    UInt64 = 8,
    Float = 9,
    Double = 10,
    Boolean = 11,
    String = 12,
    DateTime = 13,
    Text = 14,
    Uuid = 15,
    DataSet = 16,
    Bytes = 17,
    File = 18,
    Template = 19,
    PropertySet = 20,
    PropertySetList = 21,
}

impl DataType {
    /// The type for a wire number, if known.
    pub fn from_u32(value: u32) -> Option<Self> {
        use DataType::*;
        const ALL: [DataType; 22] = [
            Unknown,
            Int8,
            Int16,
            Int32,
            Int64,
            UInt8,
            UInt16,
            UInt32,
            UInt64,
            Float,
            Double,
            Boolean,
            String,
            DateTime,
            Text,
            Uuid,
            DataSet,
            Bytes,
            File,
            Template,
            PropertySet,
            PropertySetList,
        ];
        ALL.get(value as usize).copied()
    }
}

impl Metric {
    /// A metric carrying `value` with its data type; name/alias/timestamp set by the caller.
    pub fn new(datatype: DataType, value: MetricValue) -> Self {
        Metric {
            datatype: Some(datatype as u32),
            value: Some(value),
            ..Default::default()
        }
    }

    /// Builder: set the name.
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Builder: set the alias.
    pub fn aliased(mut self, alias: u64) -> Self {
        self.alias = Some(alias);
        self
    }

    /// Builder: set the timestamp.
    pub fn at(mut self, timestamp_ms: u64) -> Self {
        self.timestamp = Some(timestamp_ms);
        self
    }
}

/// A metric's value as a number, when it is numeric or boolean (1.0 / 0.0). Signed integer
/// types are read as signed; pass the datatype from the birth when the metric omits it (as
/// DDATA metrics should).
pub fn metric_value_f64(metric: &Metric, birth_datatype: Option<DataType>) -> Option<f64> {
    let datatype = metric
        .datatype
        .and_then(DataType::from_u32)
        .or(birth_datatype);
    match metric.value.as_ref()? {
        MetricValue::Int(v) => Some(match datatype {
            Some(DataType::Int8) => f64::from(*v as u8 as i8),
            Some(DataType::Int16) => f64::from(*v as u16 as i16),
            Some(DataType::Int32) => f64::from(*v as i32),
            _ => f64::from(*v),
        }),
        MetricValue::Long(v) => Some(match datatype {
            Some(DataType::Int64) => *v as i64 as f64,
            _ => *v as f64,
        }),
        MetricValue::Float(v) => Some(f64::from(*v)),
        MetricValue::Double(v) => Some(*v),
        MetricValue::Boolean(v) => Some(if *v { 1.0 } else { 0.0 }),
        MetricValue::String(_) | MetricValue::Bytes(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    #[test]
    fn a_payload_round_trips_through_protobuf() {
        let payload = Payload {
            timestamp: Some(1_764_201_600_000),
            seq: Some(0),
            metrics: alloc::vec![
                Metric::new(DataType::UInt64, MetricValue::Long(3)).named("bdSeq"),
                Metric::new(DataType::Float, MetricValue::Float(1234.5))
                    .named("spindle.power_w")
                    .aliased(1)
                    .at(1_764_201_600_000),
            ],
            ..Default::default()
        };
        let bytes = payload.encode_to_vec();
        assert_eq!(Payload::decode(bytes.as_slice()), Ok(payload));
    }

    #[test]
    fn field_numbers_match_the_specification() {
        // Metric { alias = 2: 5, datatype = 4: 9 (Float), float_value = 12: 1.0 }
        let metric = Metric::new(DataType::Float, MetricValue::Float(1.0)).aliased(5);
        assert_eq!(
            metric.encode_to_vec(),
            [0x10, 0x05, 0x20, 0x09, 0x65, 0x00, 0x00, 0x80, 0x3F]
        );
    }

    #[test]
    fn signed_values_are_read_back_as_signed() {
        let metric = Metric::new(DataType::Int32, MetricValue::Int((-5i32) as u32));
        assert_eq!(metric_value_f64(&metric, None), Some(-5.0));
        let untyped = Metric {
            datatype: None,
            ..metric
        };
        assert_eq!(
            metric_value_f64(&untyped, None),
            Some(f64::from(u32::MAX - 4))
        );
        assert_eq!(
            metric_value_f64(&untyped, Some(DataType::Int32)),
            Some(-5.0)
        );
        let metric = Metric::new(DataType::Boolean, MetricValue::Boolean(true));
        assert_eq!(metric_value_f64(&metric, None), Some(1.0));
    }

    #[test]
    fn garbage_is_a_decode_error_not_a_panic() {
        assert!(Payload::decode(&[0xFF, 0xFF, 0xFF][..]).is_err());
    }
}
