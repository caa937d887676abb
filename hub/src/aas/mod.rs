//! Asset Administration Shell (AAS v3.0) export of live twins.
//!
//! Each twin is one shell with four submodels, built on request from the twin and its
//! catalogue kind (nothing is stored): `Nameplate` (attributes from the lab configuration),
//! `TechnicalData` (the catalogue), `OperationalData` (live values with units and source
//! timestamps) and `TimeSeries` (linked segments pointing at the hub's history API).
//! [`model`] is the JSON shape, [`package`] the `.aasx` file; the routes are in
//! `hub::api::aas`.
//!
//! ```
//! use demolab_hub::aas::{Part, decode_identifier, encode_identifier, shell_id, parse_submodel_id};
//! let key = demolab_hub::twin::TwinKey::parse("lab-a/mill-1").unwrap();
//! assert_eq!(shell_id(&key), "urn:demolab:aas:lab-a:mill-1");
//! let encoded = encode_identifier(&demolab_hub::aas::submodel_id(&key, Part::Nameplate));
//! let id = decode_identifier("submodelIdentifier", &encoded).unwrap();
//! assert_eq!(parse_submodel_id(&id), Some((key, Part::Nameplate)));
//! ```

pub mod model;
pub mod package;
mod submodels;

use base64ct::{Base64Url, Base64UrlUnpadded, Encoding};

use crate::catalogue::MachineKind;
use crate::twin::{Twin, TwinKey};
use model::{AssetInformation, Environment, LangString, Reference, Shell, Submodel};

/// Every identifier the export makes starts with this (a URN: the hub does not know the URL
/// it is reached under, and identifiers must not change when it moves).
pub const ID_PREFIX: &str = "urn:demolab:";

/// A submodel of a twin's shell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Part {
    /// Digital nameplate (IDTA 02006-2-0 element names and ECLASS ids).
    Nameplate,
    /// The catalogue kind (IDTA 02003 technical data structure).
    TechnicalData,
    /// Live values, state, connectivity and today's KPIs.
    OperationalData,
    /// Linked segments to the history API (IDTA 02008 time series).
    TimeSeries,
}

impl Part {
    /// All parts, in the order of the shell's submodel references.
    pub const ALL: [Part; 4] = [
        Part::Nameplate,
        Part::TechnicalData,
        Part::OperationalData,
        Part::TimeSeries,
    ];

    /// Its idShort (also the last segment of its identifier).
    pub fn id_short(self) -> &'static str {
        match self {
            Part::Nameplate => "Nameplate",
            Part::TechnicalData => "TechnicalData",
            Part::OperationalData => "OperationalData",
            Part::TimeSeries => "TimeSeries",
        }
    }
}

/// A path identifier that cannot be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AasError {
    /// Not base64url.
    #[error(
        "{param} {value:?} is not base64url-encoded (RFC 4648 §5, padding optional): encode the identifier, e.g. {example}"
    )]
    NotBase64 {
        /// The path parameter.
        param: &'static str,
        /// What was sent (cut to 96 characters).
        value: String,
        /// An identifier of ours, encoded.
        example: String,
    },
    /// Decodes to bytes that are not UTF-8 text.
    #[error("{param} {value:?} decodes to bytes that are not UTF-8 text")]
    NotText {
        /// The path parameter.
        param: &'static str,
        /// What was sent (cut to 96 characters).
        value: String,
    },
}

/// The shell's identifier.
pub fn shell_id(key: &TwinKey) -> String {
    format!("{ID_PREFIX}aas:{}:{}", key.lab, key.machine)
}

/// The machine's global asset id.
pub fn asset_id(key: &TwinKey) -> String {
    format!("{ID_PREFIX}asset:{}:{}", key.lab, key.machine)
}

/// A submodel's identifier.
pub fn submodel_id(key: &TwinKey, part: Part) -> String {
    format!(
        "{ID_PREFIX}sm:{}:{}:{}",
        key.lab,
        key.machine,
        part.id_short()
    )
}

/// The shell's idShort (also the `.aasx` file name): `lab__machine` in the idShort alphabet.
pub fn shell_id_short(key: &TwinKey) -> String {
    model::id_short(&format!("{}__{}", key.lab, key.machine))
}

/// The twin of a shell identifier, if it is one of ours.
pub fn parse_shell_id(id: &str) -> Option<TwinKey> {
    let rest = id.strip_prefix(ID_PREFIX)?.strip_prefix("aas:")?;
    let (lab, machine) = rest.split_once(':')?;
    Some(TwinKey {
        lab: lab.parse().ok()?,
        machine: machine.parse().ok()?,
    })
}

/// The twin and part of a submodel identifier, if it is one of ours.
pub fn parse_submodel_id(id: &str) -> Option<(TwinKey, Part)> {
    let rest = id.strip_prefix(ID_PREFIX)?.strip_prefix("sm:")?;
    let mut fields = rest.split(':');
    let (lab, machine, part) = (fields.next()?, fields.next()?, fields.next()?);
    if fields.next().is_some() {
        return None;
    }
    let part = Part::ALL.into_iter().find(|p| p.id_short() == part)?;
    let key = TwinKey {
        lab: lab.parse().ok()?,
        machine: machine.parse().ok()?,
    };
    Some((key, part))
}

/// An identifier as a path segment: base64url without padding (AAS Part 2).
pub fn encode_identifier(id: &str) -> String {
    Base64UrlUnpadded::encode_string(id.as_bytes())
}

/// The identifier in path parameter `param`; padded and unpadded base64url are both accepted.
pub fn decode_identifier(param: &'static str, encoded: &str) -> Result<String, AasError> {
    let shown = || encoded.chars().take(96).collect::<String>();
    let bytes = if encoded.ends_with('=') {
        Base64Url::decode_vec(encoded)
    } else {
        Base64UrlUnpadded::decode_vec(encoded)
    }
    .map_err(|_| AasError::NotBase64 {
        param,
        value: shown(),
        example: encode_identifier(&format!("{ID_PREFIX}aas:lab:machine")),
    })?;
    String::from_utf8(bytes).map_err(|_| AasError::NotText {
        param,
        value: shown(),
    })
}

/// The shell of a twin.
pub fn shell(twin: &Twin, key: &TwinKey, kind: &MachineKind) -> Shell {
    Shell {
        model_type: "AssetAdministrationShell",
        id: shell_id(key),
        id_short: shell_id_short(key),
        display_name: twin
            .name
            .iter()
            .map(|name| LangString::en(name).as_name())
            .filter(|name| !name.text.is_empty())
            .collect(),
        description: vec![LangString::en(format!(
            "Digital twin {} ({}) on the Demolab hub",
            twin.id, kind.name
        ))],
        asset_information: AssetInformation {
            asset_kind: "Instance",
            global_asset_id: asset_id(key),
            asset_type: (!twin.kind.is_empty()).then(|| format!("{ID_PREFIX}kind:{}", twin.kind)),
        },
        submodels: Part::ALL
            .into_iter()
            .map(|part| Reference::submodel(submodel_id(key, part)))
            .collect(),
    }
}

/// One submodel of a twin.
pub fn submodel(twin: &Twin, key: &TwinKey, kind: &MachineKind, part: Part) -> Submodel {
    let (semantic_id, elements) = match part {
        Part::Nameplate => submodels::nameplate(twin, kind),
        Part::TechnicalData => submodels::technical_data(kind),
        Part::OperationalData => submodels::operational_data(twin, kind),
        Part::TimeSeries => submodels::time_series(twin, key, kind),
    };
    Submodel {
        model_type: "Submodel",
        id: submodel_id(key, part),
        id_short: part.id_short().to_owned(),
        kind: "Instance",
        semantic_id: semantic_id.map(Reference::global),
        description: Vec::new(),
        submodel_elements: elements,
    }
}

/// The shell and all its submodels, as one environment (what an `.aasx` carries).
pub fn environment(twin: &Twin, key: &TwinKey, kind: &MachineKind) -> Environment {
    Environment {
        asset_administration_shells: vec![shell(twin, key, kind)],
        submodels: Part::ALL
            .into_iter()
            .map(|part| submodel(twin, key, kind, part))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> TwinKey {
        TwinKey::parse("aarhus-machining/mill-1").expect("valid")
    }

    #[test]
    fn identifiers_round_trip_through_base64url_with_or_without_padding() {
        let id = submodel_id(&key(), Part::OperationalData);
        let encoded = encode_identifier(&id);
        assert!(!encoded.contains(['=', '+', '/']), "{encoded}");
        assert_eq!(
            decode_identifier("submodelIdentifier", &encoded),
            Ok(id.clone())
        );
        let padded = Base64Url::encode_string(id.as_bytes());
        assert_eq!(
            decode_identifier("submodelIdentifier", &padded),
            Ok(id.clone())
        );
        assert_eq!(parse_submodel_id(&id), Some((key(), Part::OperationalData)));
        assert_eq!(parse_shell_id(&shell_id(&key())), Some(key()));
    }

    #[test]
    fn a_bad_identifier_names_the_parameter_and_the_value() {
        let err = decode_identifier("aasIdentifier", "not base64!").expect_err("refused");
        let message = err.to_string();
        assert!(message.contains("aasIdentifier"), "{message}");
        assert!(message.contains("not base64!"), "{message}");
        let not_text = Base64UrlUnpadded::encode_string(&[0xff, 0xfe]);
        assert!(matches!(
            decode_identifier("aasIdentifier", &not_text),
            Err(AasError::NotText { .. })
        ));
    }

    #[test]
    fn foreign_or_malformed_identifiers_are_not_ours() {
        for id in [
            "https://example.com/aas/1",
            "urn:demolab:aas:Lab:mill-1",
            "urn:demolab:aas:lab-a",
            "urn:demolab:sm:lab-a:mill-1:Nope",
            "urn:demolab:sm:lab-a:mill-1:Nameplate:extra",
        ] {
            assert_eq!(parse_shell_id(id), None, "{id}");
            assert_eq!(parse_submodel_id(id), None, "{id}");
        }
    }
}
