//! The four submodels of a twin's shell. Semantic ids are those of the IDTA templates where a
//! template fits (nameplate, technical data, time series), with the ECLASS ids its elements
//! use; values the templates do not foresee get no semantic id rather than an invented one.

use std::collections::{BTreeMap, BTreeSet};

use super::model::{
    Element, LangString, boolean, collection, date_time, double, id_short, multi_language,
    property, text,
};
use crate::catalogue::MachineKind;
use crate::twin::{Twin, TwinKey};

const NAMEPLATE: &str = "https://admin-shell.io/zvei/nameplate/2/0/Nameplate";
const MANUFACTURER_NAME: &str = "0173-1#02-AAO677#002";
const PRODUCT_DESIGNATION: &str = "0173-1#02-AAW338#001";
const PRODUCT_TYPE: &str = "0173-1#02-AAO057#002";
const SERIAL_NUMBER: &str = "0173-1#02-AAM556#002";
const YEAR_OF_CONSTRUCTION: &str = "0173-1#02-AAP906#001";

const TECHNICAL_DATA: &str = "https://admin-shell.io/ZVEI/TechnicalData/Submodel/1/2";
const GENERAL_INFORMATION: &str =
    "https://admin-shell.io/ZVEI/TechnicalData/GeneralInformation/1/1";
const TECHNICAL_PROPERTIES: &str =
    "https://admin-shell.io/ZVEI/TechnicalData/TechnicalProperties/1/1";
const FURTHER_INFORMATION: &str =
    "https://admin-shell.io/ZVEI/TechnicalData/FurtherInformation/1/1";

const TIME_SERIES: &str = "https://admin-shell.io/idta/TimeSeries/1/1";
const SEGMENTS: &str = "https://admin-shell.io/idta/TimeSeries/Segments/1/1";
const LINKED_SEGMENT: &str = "https://admin-shell.io/idta/TimeSeries/Segments/LinkedSegment/1/1";
const ENDPOINT: &str = "https://admin-shell.io/idta/TimeSeries/Endpoint/1/1";

type Built = (Option<&'static str>, Vec<Element>);

/// The nameplate attribute a configuration key stands for (several spellings are in use).
fn nameplate_field(key: &str) -> Option<&'static str> {
    match key.to_ascii_lowercase().replace(['-', ' '], "_").as_str() {
        "manufacturer" | "vendor" | "manufacturer_name" => Some("ManufacturerName"),
        "model" | "type" | "product_type" => Some("ManufacturerProductType"),
        "serial" | "serial_number" | "serialnumber" => Some("SerialNumber"),
        "year" | "year_of_construction" | "built" => Some("YearOfConstruction"),
        _ => None,
    }
}

fn designation(kind: &MachineKind) -> Vec<LangString> {
    let mut names = vec![LangString::en(&kind.name)];
    if !kind.name_da.is_empty() {
        names.push(LangString::da(&kind.name_da));
    }
    names
}

fn manufacturer(twin: &Twin) -> Option<&str> {
    twin.attributes
        .iter()
        .find(|(key, value)| nameplate_field(key) == Some("ManufacturerName") && !value.is_empty())
        .map(|(_, value)| value.as_str())
}

/// The digital nameplate from the twin's attributes: the fields the template names, and the
/// rest of the attributes as asset-specific properties. The product designation is the kind's
/// name, in both languages the catalogue has.
pub(super) fn nameplate(twin: &Twin, kind: &MachineKind) -> Built {
    let mut elements = Vec::new();
    if let Some(name) = manufacturer(twin) {
        elements.push(
            multi_language("ManufacturerName", vec![LangString::en(name)])
                .semantic(MANUFACTURER_NAME),
        );
    }
    elements.push(
        multi_language("ManufacturerProductDesignation", designation(kind))
            .semantic(PRODUCT_DESIGNATION),
    );
    let field = |name: &str| {
        twin.attributes
            .iter()
            .find(|(key, value)| nameplate_field(key) == Some(name) && !value.is_empty())
            .map(|(_, value)| value.clone())
    };
    if let Some(model) = field("ManufacturerProductType") {
        elements.push(
            multi_language("ManufacturerProductType", vec![LangString::en(model)])
                .semantic(PRODUCT_TYPE),
        );
    }
    if let Some(serial) = field("SerialNumber") {
        elements.push(text("SerialNumber", serial).semantic(SERIAL_NUMBER));
    }
    if let Some(year) = field("YearOfConstruction") {
        elements.push(text("YearOfConstruction", year).semantic(YEAR_OF_CONSTRUCTION));
    }
    let mut taken: BTreeSet<String> = BTreeSet::new();
    let rest: Vec<Element> = twin
        .attributes
        .iter()
        .filter(|(key, _)| nameplate_field(key).is_none())
        .map(|(key, value)| text(unique(&mut taken, id_short(key)), value))
        .collect();
    if !rest.is_empty() {
        elements.push(collection("AssetSpecificProperties", rest));
    }
    (Some(NAMEPLATE), elements)
}

/// An idShort not yet taken among siblings: `a.b_c` and `a_b.c` both map to `a_b_c`.
fn unique(taken: &mut BTreeSet<String>, wanted: String) -> String {
    let mut candidate = wanted.clone();
    let mut n = 2;
    while !taken.insert(candidate.clone()) {
        candidate = format!("{wanted}_{n}");
        n += 1;
    }
    candidate
}

fn label(kind: &MachineKind, metric: &str) -> Option<Vec<LangString>> {
    kind.metrics.iter().find(|m| m.name == metric).map(|m| {
        let mut names = vec![LangString::en(&m.label)];
        if !m.label_da.is_empty() {
            names.push(LangString::da(&m.label_da));
        }
        names
    })
}

/// The catalogue kind: what the machine measures, in which units, what is normal, and what may
/// be set.
pub(super) fn technical_data(kind: &MachineKind) -> Built {
    let general = collection(
        "GeneralInformation",
        vec![
            multi_language("ManufacturerProductDesignation", designation(kind))
                .semantic(PRODUCT_DESIGNATION),
            text("CatalogueKind", &kind.id),
        ],
    )
    .semantic(GENERAL_INFORMATION);
    let mut taken = BTreeSet::new();
    let metrics: Vec<Element> = kind
        .metrics
        .iter()
        .map(|m| {
            let mut members = vec![
                multi_language("Name", label(kind, &m.name).unwrap_or_default()),
                text("Metric", &m.name),
                text("Unit", &m.unit),
            ];
            if let Some([low, high]) = m.normal {
                members.push(double("NormalLow", Some(low)));
                members.push(double("NormalHigh", Some(high)));
            }
            collection(unique(&mut taken, id_short(&m.name)), members)
        })
        .collect();
    let mut taken = BTreeSet::new();
    let writable: Vec<Element> = kind
        .writable
        .iter()
        .map(|w| {
            let mut names = vec![LangString::en(&w.label)];
            if !w.label_da.is_empty() {
                names.push(LangString::da(&w.label_da));
            }
            collection(
                unique(&mut taken, id_short(&w.name)),
                vec![
                    multi_language("Name", names),
                    text("Metric", &w.name),
                    text("Unit", &w.unit),
                    double("Min", Some(w.min)),
                    double("Max", Some(w.max)),
                ],
            )
        })
        .collect();
    let technical = collection(
        "TechnicalProperties",
        vec![
            collection("Metrics", metrics),
            collection("WritableProperties", writable),
        ],
    )
    .semantic(TECHNICAL_PROPERTIES);
    let mut elements = vec![general, technical];
    if !kind.description.is_empty() {
        elements.push(
            collection(
                "FurtherInformation",
                vec![multi_language(
                    "TextStatement",
                    vec![LangString::en(&kind.description)],
                )],
            )
            .semantic(FURTHER_INFORMATION),
        );
    }
    (Some(TECHNICAL_DATA), elements)
}

/// Every metric the twin has reported, by name, with its unit and catalogue label.
fn live_metrics(twin: &Twin) -> BTreeMap<String, &crate::twin::Property> {
    twin.features
        .iter()
        .flat_map(|(feature, f)| {
            f.properties
                .iter()
                .map(move |(name, p)| (format!("{feature}.{name}"), p))
        })
        .collect()
}

/// The live twin: each reported property with its value, unit, source timestamp and whether
/// it is stale; the state, connectivity and today's KPIs. No IDTA template covers live
/// machine data, so the structure is the twin's own.
pub(super) fn operational_data(twin: &Twin, kind: &MachineKind) -> Built {
    let mut taken = BTreeSet::new();
    let properties: Vec<Element> = live_metrics(twin)
        .into_iter()
        .map(|(metric, p)| {
            let mut members = Vec::new();
            if let Some(names) = label(kind, &metric) {
                members.push(multi_language("Name", names));
            }
            members.extend([
                text("Metric", &metric),
                double("Value", p.reported),
                text("Unit", &p.unit),
                date_time("Timestamp", p.timestamp),
                boolean("Stale", p.stale),
            ]);
            collection(unique(&mut taken, id_short(&metric)), members)
        })
        .collect();
    let connectivity = &twin.connectivity;
    let mut link = vec![
        boolean("Online", connectivity.online),
        boolean("Stale", connectivity.stale),
        date_time("LastSeen", connectivity.last_seen),
    ];
    if let Some(gateway) = &connectivity.gateway {
        link.push(text("Gateway", gateway));
    }
    let kpis = &twin.kpis;
    let elements = vec![
        collection(
            "State",
            vec![
                text("Value", &twin.state.value),
                date_time("Since", twin.state.since),
            ],
        ),
        collection("Connectivity", link),
        collection("Properties", properties),
        collection(
            "KpisToday",
            vec![
                double("EnergyWh", Some(kpis.energy_today_wh)),
                double("RunningSeconds", Some(kpis.running_s)),
                double("ObservedSeconds", Some(kpis.observed_s)),
                double("Utilisation", Some(kpis.utilisation)),
                double("Cycles", Some(kpis.cycles_today)),
            ],
        ),
        property(
            "ActiveAlarms",
            "xs:int",
            Some(twin.alarms.len().to_string()),
        ),
    ];
    (None, elements)
}

/// One linked segment per metric (from the catalogue and whatever the twin reported): the
/// history endpoint (relative to the hub) and the query that selects the metric. The data stay
/// in the hub, fetched when wanted, so the export stays small and never stale.
pub(super) fn time_series(twin: &Twin, key: &TwinKey, kind: &MachineKind) -> Built {
    let live = live_metrics(twin);
    let mut metrics: BTreeMap<String, String> = kind
        .metrics
        .iter()
        .map(|m| (m.name.clone(), m.unit.clone()))
        .collect();
    for (metric, p) in &live {
        metrics
            .entry(metric.clone())
            .or_insert_with(|| p.unit.clone());
    }
    let endpoint = format!("/api/v1/twins/{}/{}/history", key.lab, key.machine);
    let mut taken = BTreeSet::new();
    let segments: Vec<Element> = metrics
        .into_iter()
        .map(|(metric, unit)| {
            let mut members = Vec::new();
            if let Some(names) = label(kind, &metric) {
                members.push(multi_language("Name", names));
            }
            members.extend([
                text("Endpoint", &endpoint).semantic(ENDPOINT),
                text("Query", format!("metric={metric}")),
                text("Metric", &metric),
                text("Unit", unit),
            ]);
            collection(unique(&mut taken, id_short(&metric)), members).semantic(LINKED_SEGMENT)
        })
        .collect();
    (
        Some(TIME_SERIES),
        vec![collection("Segments", segments).semantic(SEGMENTS)],
    )
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;
    use crate::catalogue::Catalogue;
    use crate::twin::{Feature, Property};

    fn mill() -> (Twin, TwinKey, MachineKind) {
        let key = TwinKey::parse("lab-a/mill-1").expect("valid");
        let mut twin: Twin = serde_json::from_value(serde_json::json!({
            "id": "lab-a/mill-1", "lab": "lab-a", "machine": "mill-1", "kind": "cnc-mill",
            "attributes": {"manufacturer": "Haas", "serial": "S-1", "room-a": "B.12",
                           "room.a": "x"},
            "connectivity": {"online": true, "gateway": "gw-a", "last_seen": 1000},
            "state": {"value": "running", "since": 500},
            "features": {}, "last_seq": 1, "samples": 1,
        }))
        .expect("twin");
        twin.features.insert(
            "spindle".into(),
            Feature {
                properties: [(
                    "power_w".to_owned(),
                    Property {
                        reported: Some(5100.5),
                        unit: "W".into(),
                        timestamp: Some(1_796_352_219_123),
                        stale: false,
                    },
                )]
                .into(),
            },
        );
        let kind = Catalogue::builtin()
            .get("cnc-mill")
            .map(|k| MachineKind::clone(k))
            .expect("kind");
        (twin, key, kind)
    }

    fn find<'a>(elements: &'a Value, id_short: &str) -> &'a Value {
        elements
            .as_array()
            .and_then(|a| a.iter().find(|e| e["idShort"] == id_short))
            .unwrap_or_else(|| panic!("no {id_short} in {elements}"))
    }

    #[test]
    fn a_live_property_carries_value_unit_and_source_timestamp() {
        let (twin, _, kind) = mill();
        let (_, elements) = operational_data(&twin, &kind);
        let json = serde_json::to_value(&elements).expect("serialises");
        let power = find(&find(&json, "Properties")["value"], "spindle_power_w");
        assert_eq!(power["modelType"], "SubmodelElementCollection");
        let members = &power["value"];
        assert_eq!(find(members, "Value")["value"], "5100.5");
        assert_eq!(find(members, "Value")["valueType"], "xs:double");
        assert_eq!(find(members, "Unit")["value"], "W");
        assert_eq!(
            find(members, "Timestamp")["value"],
            "2026-12-04T02:43:39.123Z"
        );
        assert_eq!(find(members, "Metric")["value"], "spindle.power_w");
        assert_eq!(find(members, "Name")["value"][0]["text"], "Spindle power");
    }

    #[test]
    fn the_nameplate_takes_known_attributes_and_keeps_the_rest() {
        let (twin, _, kind) = mill();
        let (semantic, elements) = nameplate(&twin, &kind);
        assert_eq!(semantic, Some(NAMEPLATE));
        let json = serde_json::to_value(&elements).expect("serialises");
        let maker = find(&json, "ManufacturerName");
        assert_eq!(maker["modelType"], "MultiLanguageProperty");
        assert_eq!(maker["semanticId"]["keys"][0]["value"], MANUFACTURER_NAME);
        assert_eq!(find(&json, "SerialNumber")["value"], "S-1");
        let rest = &find(&json, "AssetSpecificProperties")["value"];
        let names: Vec<&str> = rest
            .as_array()
            .expect("list")
            .iter()
            .filter_map(|e| e["idShort"].as_str())
            .collect();
        assert_eq!(names, ["room_a", "room_a_2"]);
    }

    #[test]
    fn time_series_segments_point_at_the_history_api() {
        let (twin, key, kind) = mill();
        let (_, elements) = time_series(&twin, &key, &kind);
        let json = serde_json::to_value(&elements).expect("serialises");
        let segment = find(&find(&json, "Segments")["value"], "spindle_power_w");
        assert_eq!(segment["semanticId"]["keys"][0]["value"], LINKED_SEGMENT);
        assert_eq!(
            find(&segment["value"], "Endpoint")["value"],
            "/api/v1/twins/lab-a/mill-1/history"
        );
        assert_eq!(
            find(&segment["value"], "Query")["value"],
            "metric=spindle.power_w"
        );
    }

    #[test]
    fn colliding_id_shorts_get_a_suffix() {
        let mut taken = BTreeSet::new();
        assert_eq!(unique(&mut taken, "a_b".into()), "a_b");
        assert_eq!(unique(&mut taken, "a_b".into()), "a_b_2");
        assert_eq!(unique(&mut taken, "a_b".into()), "a_b_3");
    }
}
