//! The part of the AAS v3.0 metamodel the export uses, serialised as the AAS JSON format
//! (IDTA-01001-3-0, "Part 1": `modelType` tags, camelCase names, values as strings), and the
//! `$value` ("ValueOnly") form of Part 2.
//!
//! AAS lists are either absent or non-empty (an empty `value: []` fails verification), hence
//! the `skip_serializing_if = "Vec::is_empty"` on every list.

use serde::Serialize;
use serde_json::{Map, Value, json};

/// A language-tagged text (`LangStringTextType` / `LangStringNameType`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LangString {
    /// BCP 47 language tag.
    pub language: &'static str,
    /// The text.
    pub text: String,
}

impl LangString {
    /// English text.
    pub fn en(text: impl Into<String>) -> Self {
        Self::new("en", &text.into())
    }

    /// Danish text.
    pub fn da(text: impl Into<String>) -> Self {
        Self::new("da", &text.into())
    }

    /// AAS texts hold at most 1023 characters (`LangStringTextType`); longer configuration
    /// values are cut rather than made invalid.
    fn new(language: &'static str, text: &str) -> Self {
        Self {
            language,
            text: xml_safe(text).chars().take(1023).collect(),
        }
    }

    /// The same text cut to a name's 128 characters (`LangStringNameType`).
    pub fn as_name(mut self) -> Self {
        self.text = self.text.chars().take(128).collect();
        self
    }
}

/// Whether a reference points outside the model (a concept, a template) or at an element of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ReferenceType {
    /// To something outside (semantic ids).
    ExternalReference,
    /// To an identifiable of the model (a submodel).
    ModelReference,
}

/// A reference: its type and its keys.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Reference {
    /// Reference type.
    #[serde(rename = "type")]
    pub kind: ReferenceType,
    /// Keys, from the identifiable down.
    pub keys: Vec<Key>,
}

/// One key of a reference.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Key {
    /// Key type (`GlobalReference`, `Submodel`, ...).
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The identifier.
    pub value: String,
}

impl Reference {
    /// An external reference to a global concept (an IRI or IRDI): the usual `semanticId`.
    pub fn global(value: impl Into<String>) -> Self {
        Self {
            kind: ReferenceType::ExternalReference,
            keys: vec![Key {
                kind: "GlobalReference",
                value: value.into(),
            }],
        }
    }

    /// A model reference to a submodel.
    pub fn submodel(id: impl Into<String>) -> Self {
        Self {
            kind: ReferenceType::ModelReference,
            keys: vec![Key {
                kind: "Submodel",
                value: id.into(),
            }],
        }
    }
}

/// `assetInformation` of a shell.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AssetInformation {
    /// Always `Instance`: a twin is one machine, not a type.
    pub asset_kind: &'static str,
    /// The machine's global id.
    pub global_asset_id: String,
    /// The catalogue kind as the asset type.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub asset_type: Option<String>,
}

/// An Asset Administration Shell.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Shell {
    /// `AssetAdministrationShell`.
    pub model_type: &'static str,
    /// Identifier.
    pub id: String,
    /// Short name.
    pub id_short: String,
    /// Display name (the twin's name).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub display_name: Vec<LangString>,
    /// Description.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub description: Vec<LangString>,
    /// The asset.
    pub asset_information: AssetInformation,
    /// Its submodels.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub submodels: Vec<Reference>,
}

/// A submodel.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Submodel {
    /// `Submodel`.
    pub model_type: &'static str,
    /// Identifier.
    pub id: String,
    /// Short name.
    pub id_short: String,
    /// `Instance`.
    pub kind: &'static str,
    /// The template it follows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub semantic_id: Option<Reference>,
    /// Description.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub description: Vec<LangString>,
    /// Elements.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub submodel_elements: Vec<Element>,
}

/// What every submodel element has.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Common {
    /// Short name, unique among its siblings.
    pub id_short: String,
    /// Meaning.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub semantic_id: Option<Reference>,
    /// Description.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub description: Vec<LangString>,
}

/// A submodel element.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "modelType")]
pub enum Element {
    /// A typed value.
    Property {
        /// Name and meaning.
        #[serde(flatten)]
        common: Common,
        /// XSD type, e.g. `xs:double`.
        #[serde(rename = "valueType")]
        value_type: &'static str,
        /// The value in its XSD lexical form; absent when unknown.
        #[serde(skip_serializing_if = "Option::is_none")]
        value: Option<String>,
    },
    /// Text in several languages.
    MultiLanguageProperty {
        /// Name and meaning.
        #[serde(flatten)]
        common: Common,
        /// The texts.
        #[serde(skip_serializing_if = "Vec::is_empty")]
        value: Vec<LangString>,
    },
    /// A group of elements.
    SubmodelElementCollection {
        /// Name and meaning.
        #[serde(flatten)]
        common: Common,
        /// Members.
        #[serde(skip_serializing_if = "Vec::is_empty")]
        value: Vec<Element>,
    },
}

impl Element {
    /// Its short name.
    pub fn id_short(&self) -> &str {
        match self {
            Element::Property { common, .. }
            | Element::MultiLanguageProperty { common, .. }
            | Element::SubmodelElementCollection { common, .. } => &common.id_short,
        }
    }

    /// The Part 2 "ValueOnly" form: numbers and booleans as JSON values, texts as
    /// `[{"en": "..."}]`, collections as objects by idShort.
    pub fn value_only(&self) -> Value {
        match self {
            Element::Property {
                value_type, value, ..
            } => match (*value_type, value) {
                (_, None) => Value::Null,
                ("xs:double", Some(v)) => v
                    .parse::<f64>()
                    .ok()
                    .and_then(serde_json::Number::from_f64)
                    .map_or_else(|| Value::String(v.clone()), Value::Number),
                ("xs:boolean", Some(v)) => Value::Bool(v == "true"),
                (_, Some(v)) => Value::String(v.clone()),
            },
            Element::MultiLanguageProperty { value, .. } => value
                .iter()
                .map(|l| json!({ l.language: l.text }))
                .collect(),
            Element::SubmodelElementCollection { value, .. } => value_only(value),
        }
    }
}

/// The ValueOnly object of a list of elements.
pub fn value_only(elements: &[Element]) -> Value {
    let map: Map<String, Value> = elements
        .iter()
        .map(|e| (e.id_short().to_owned(), e.value_only()))
        .collect();
    Value::Object(map)
}

/// An environment: shells and submodels (what an `.aasx` carries).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Environment {
    /// Shells.
    pub asset_administration_shells: Vec<Shell>,
    /// Their submodels.
    pub submodels: Vec<Submodel>,
}

/// A property.
pub fn property(
    id_short: impl Into<String>,
    value_type: &'static str,
    value: Option<String>,
) -> Element {
    Element::Property {
        common: common(id_short),
        value_type,
        value: value.map(|v| xml_safe(&v)),
    }
}

/// An `xs:string` property.
pub fn text(id_short: impl Into<String>, value: impl Into<String>) -> Element {
    property(id_short, "xs:string", Some(value.into()))
}

/// An `xs:double` property.
pub fn double(id_short: impl Into<String>, value: Option<f64>) -> Element {
    property(id_short, "xs:double", value.map(xs_double))
}

/// An `xs:dateTime` property from ms since the epoch.
pub fn date_time(id_short: impl Into<String>, ms: Option<u64>) -> Element {
    property(id_short, "xs:dateTime", ms.map(xs_date_time))
}

/// An `xs:boolean` property.
pub fn boolean(id_short: impl Into<String>, value: bool) -> Element {
    property(id_short, "xs:boolean", Some(value.to_string()))
}

/// A multi-language property; empty texts are left out, as AAS allows none.
pub fn multi_language(id_short: impl Into<String>, value: Vec<LangString>) -> Element {
    Element::MultiLanguageProperty {
        common: common(id_short),
        value: value.into_iter().filter(|l| !l.text.is_empty()).collect(),
    }
}

/// A collection.
pub fn collection(id_short: impl Into<String>, value: Vec<Element>) -> Element {
    Element::SubmodelElementCollection {
        common: common(id_short),
        value,
    }
}

fn common(id_short: impl Into<String>) -> Common {
    Common {
        id_short: id_short.into(),
        semantic_id: None,
        description: Vec::new(),
    }
}

impl Element {
    fn common_mut(&mut self) -> &mut Common {
        match self {
            Element::Property { common, .. }
            | Element::MultiLanguageProperty { common, .. }
            | Element::SubmodelElementCollection { common, .. } => common,
        }
    }

    /// With this semantic id (an IRI or IRDI).
    pub fn semantic(mut self, id: impl Into<String>) -> Self {
        self.common_mut().semantic_id = Some(Reference::global(id));
        self
    }

    /// With this description.
    pub fn described(mut self, description: Vec<LangString>) -> Self {
        self.common_mut().description = description;
        self
    }
}

/// `f64` in the `xs:double` lexical space: Rust's `inf` is `INF` there, and Rust never writes
/// an exponent, which keeps tiny and huge values exact but long (still valid).
pub fn xs_double(value: f64) -> String {
    if value.is_nan() {
        "NaN".into()
    } else if value == f64::INFINITY {
        "INF".into()
    } else if value == f64::NEG_INFINITY {
        "-INF".into()
    } else {
        value.to_string()
    }
}

/// Milliseconds since the epoch as an `xs:dateTime` in UTC, e.g. `2026-12-04T02:43:39.123Z`.
pub fn xs_date_time(ms: u64) -> String {
    let seconds = ms / 1000;
    let days = seconds / 86_400;
    let in_day = seconds % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        in_day / 3600,
        in_day / 60 % 60,
        in_day % 60,
        ms % 1000
    )
}

/// The proleptic Gregorian date of a day count since 1970-01-01, by 400-year eras (each era
/// has exactly 146 097 days, so leap years fall out of the arithmetic).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let shifted = days + 719_468; // days since 0000-03-01: leap days then end the year
    let era = shifted / 146_097;
    let day_of_era = shifted % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = era * 400 + year_of_era + u64::from(month <= 2);
    (year, month, day)
}

/// An idShort from one of our names: AAS allows `[a-zA-Z][a-zA-Z0-9_]*`, so `-` and `.`
/// become `_` and a name starting otherwise gets an `x` in front.
pub fn id_short(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if !out.starts_with(|c: char| c.is_ascii_alphabetic()) {
        out.insert(0, 'x');
    }
    out.truncate(128);
    out
}

/// Strings in AAS must be representable in XML 1.0 (constraint AASd-130): control characters
/// below U+0020 other than tab, line feed and carriage return, and U+FFFE/U+FFFF, are dropped
/// (attribute values come from configuration files).
pub fn xml_safe(text: &str) -> String {
    text.chars()
        .filter(|c| *c >= ' ' || matches!(c, '\t' | '\n' | '\r'))
        .filter(|c| !matches!(c, '\u{FFFE}' | '\u{FFFF}'))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_double_property_carries_its_value_as_an_xsd_string() {
        let element = double("Value", Some(1234.5)).semantic("urn:x");
        let json = serde_json::to_value(&element).expect("serialises");
        assert_eq!(
            json,
            json!({
                "modelType": "Property",
                "idShort": "Value",
                "semanticId": {"type": "ExternalReference",
                               "keys": [{"type": "GlobalReference", "value": "urn:x"}]},
                "valueType": "xs:double",
                "value": "1234.5",
            })
        );
        assert_eq!(element.value_only(), json!(1234.5));
        let unknown = serde_json::to_value(double("Value", None)).expect("serialises");
        assert!(unknown.get("value").is_none(), "{unknown}");
    }

    #[test]
    fn doubles_use_the_xsd_spellings_of_infinity_and_nan() {
        assert_eq!(xs_double(f64::INFINITY), "INF");
        assert_eq!(xs_double(f64::NEG_INFINITY), "-INF");
        assert_eq!(xs_double(f64::NAN), "NaN");
        assert_eq!(xs_double(-0.25), "-0.25");
        assert_eq!(xs_double(3.0), "3");
        assert_eq!(xs_double(1e-7), "0.0000001");
    }

    #[test]
    fn timestamps_become_utc_date_times_with_milliseconds() {
        assert_eq!(xs_date_time(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(xs_date_time(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(xs_date_time(1_796_352_219_123), "2026-12-04T02:43:39.123Z");
        assert_eq!(xs_date_time(4_107_542_399_999), "2100-02-28T23:59:59.999Z");
    }

    #[test]
    fn id_shorts_keep_to_the_aas_alphabet() {
        assert_eq!(id_short("spindle.power_w"), "spindle_power_w");
        assert_eq!(id_short("mill-1"), "mill_1");
        assert_eq!(id_short("3d-printer"), "x3d_printer");
        assert_eq!(id_short(""), "x");
    }

    #[test]
    fn the_value_only_form_follows_the_element_kinds() {
        let elements = vec![
            multi_language(
                "Name",
                vec![LangString::en("Mill"), LangString::da("Fræser")],
            ),
            collection("Spindle", vec![boolean("Stale", false), text("Unit", "W")]),
        ];
        assert_eq!(
            value_only(&elements),
            json!({"Name": [{"en": "Mill"}, {"da": "Fræser"}],
                   "Spindle": {"Stale": false, "Unit": "W"}})
        );
    }

    #[test]
    fn control_characters_are_dropped_from_texts() {
        assert_eq!(xml_safe("a\u{0}b\tc\u{1b}\u{FFFF}"), "ab\tc");
    }

    #[test]
    fn texts_stay_within_the_aas_lengths_and_empty_ones_are_left_out() {
        let long = "x".repeat(5000);
        assert_eq!(LangString::en(&long).text.len(), 1023);
        assert_eq!(LangString::en(&long).as_name().text.len(), 128);
        let json = serde_json::to_value(multi_language("Maker", vec![LangString::en("")]))
            .expect("serialises");
        assert!(json.get("value").is_none(), "{json}");
    }
}
