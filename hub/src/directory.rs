//! What the region's configuration says about labs and machines: names, lines, kinds,
//! attributes and the cross-lab links of virtual production lines. Twins are born from Sparkplug
//! births; the directory enriches them.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use std::collections::HashSet;

use protocol::{GatewayId, LabId, MachineId};
use serde::{Deserialize, Serialize};

use crate::catalogue::{Catalogue, MachineKind};
use crate::stats::IngestDrop;
use crate::twin::TwinKey;

/// A lab as configured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LabConfig {
    /// The Sparkplug group id.
    #[schema(value_type = String)]
    pub id: LabId,
    /// Display name.
    #[serde(default)]
    pub name: String,
    /// Where it is.
    #[serde(default)]
    pub location: String,
    /// Edge nodes (gateways) allowed to publish for this lab; empty admits any.
    #[serde(default)]
    #[schema(value_type = Vec<String>)]
    pub gateways: Vec<GatewayId>,
    /// Machines known in advance. Births of others are refused unless this lab sets
    /// `accept_new_machines` or the hub sets `[hub] accept_unknown`.
    #[serde(default)]
    pub machines: Vec<MachineConfig>,
    /// Let machines the list does not name be born (still capped by `limits.max_twins_per_lab`).
    #[serde(default)]
    pub accept_new_machines: bool,
}

/// A machine as configured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MachineConfig {
    /// The Sparkplug device id.
    #[schema(value_type = String)]
    pub id: MachineId,
    /// Catalogue kind.
    #[serde(default)]
    pub kind: Option<String>,
    /// Display name.
    #[serde(default)]
    pub name: Option<String>,
    /// Production line inside the lab.
    #[serde(default)]
    pub line: Option<String>,
    /// Static metadata (vendor, year, ...).
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
}

/// A link of a virtual production line that may cross labs: parts flow from `from` to `to`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LinkConfig {
    /// The virtual line.
    pub line: String,
    /// `lab/machine` upstream.
    pub from: String,
    /// `lab/machine` downstream.
    pub to: String,
}

/// One relation of a twin to another twin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Relation {
    /// The virtual line.
    pub line: String,
    /// `upstream` (parts come from there) or `downstream`.
    pub direction: String,
    /// `lab/machine` of the other twin.
    pub twin: String,
}

/// Why the directory is inconsistent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {problem}")]
pub struct DirectoryError {
    /// The offending key, e.g. `labs[0].machines[2].kind`.
    pub key: String,
    /// What is wrong.
    pub problem: String,
}

/// Labs, machines and links, with the catalogue to resolve kinds.
#[derive(Debug, Clone, Default)]
pub struct Directory {
    catalogue: Catalogue,
    labs: BTreeMap<LabId, LabConfig>,
    machines: HashMap<TwinKey, MachineConfig>,
    links: Vec<LinkConfig>,
}

impl Directory {
    /// Checks and indexes a configuration.
    pub fn new(
        catalogue: Catalogue,
        labs: Vec<LabConfig>,
        links: Vec<LinkConfig>,
    ) -> Result<Self, DirectoryError> {
        // Not `..Self::default()`: that would parse the built-in catalogue only to drop it.
        let mut directory = Self {
            catalogue,
            labs: BTreeMap::new(),
            machines: HashMap::new(),
            links: Vec::new(),
        };
        for (l, lab) in labs.into_iter().enumerate() {
            if directory.labs.contains_key(&lab.id) {
                return Err(DirectoryError {
                    key: format!("labs[{l}].id"),
                    problem: format!("lab {} is listed twice", lab.id),
                });
            }
            for (m, machine) in lab.machines.iter().enumerate() {
                if let Some(kind) = &machine.kind
                    && directory.catalogue.get(kind).is_none()
                {
                    return Err(DirectoryError {
                        key: format!("labs[{l}].machines[{m}].kind"),
                        problem: format!("no kind {kind:?} in the catalogue"),
                    });
                }
                let key = TwinKey {
                    lab: lab.id.clone(),
                    machine: machine.id.clone(),
                };
                if directory.machines.insert(key, machine.clone()).is_some() {
                    return Err(DirectoryError {
                        key: format!("labs[{l}].machines[{m}].id"),
                        problem: format!("machine {} is listed twice", machine.id),
                    });
                }
            }
            directory.labs.insert(lab.id.clone(), lab);
        }
        for (i, link) in links.iter().enumerate() {
            for (field, end) in [("from", &link.from), ("to", &link.to)] {
                if TwinKey::parse(end).is_none() {
                    return Err(DirectoryError {
                        key: format!("links[{i}].{field}"),
                        problem: format!("{end:?} is not lab/machine"),
                    });
                }
            }
        }
        directory.links = links;
        Ok(directory)
    }

    /// For labs that list their gateways: which gateways may publish for them.
    pub fn registrations(&self) -> HashMap<LabId, HashSet<GatewayId>> {
        self.labs
            .values()
            .filter(|lab| !lab.gateways.is_empty())
            .map(|lab| (lab.id.clone(), lab.gateways.iter().cloned().collect()))
            .collect()
    }

    /// Whether messages of this edge node are taken: its lab is listed (or `accept_unknown`),
    /// and the lab lists it among its gateways (or lists none).
    pub fn admit_edge(
        &self,
        lab: &LabId,
        gateway: &GatewayId,
        accept_unknown: bool,
    ) -> Result<(), IngestDrop> {
        match self.labs.get(lab) {
            Some(config) if config.gateways.is_empty() || config.gateways.contains(gateway) => {
                Ok(())
            }
            Some(_) => Err(IngestDrop::UnregisteredGateway),
            None if accept_unknown => Ok(()),
            None => Err(IngestDrop::UnknownLab),
        }
    }

    /// Whether a machine may be born: listed in its lab, or its lab (`accept_new_machines`)
    /// or the hub (`accept_unknown`) takes new ones.
    pub fn admit_machine(&self, key: &TwinKey, accept_unknown: bool) -> Result<(), IngestDrop> {
        let listed = self.machines.contains_key(key);
        let lab_takes_new = self
            .labs
            .get(&key.lab)
            .is_some_and(|l| l.accept_new_machines);
        if listed || lab_takes_new || accept_unknown {
            Ok(())
        } else {
            Err(IngestDrop::UnknownMachine)
        }
    }

    /// The catalogue.
    pub fn catalogue(&self) -> &Catalogue {
        &self.catalogue
    }

    /// Configured labs.
    pub fn labs(&self) -> impl Iterator<Item = &LabConfig> {
        self.labs.values()
    }

    /// A configured lab.
    pub fn lab(&self, id: &LabId) -> Option<&LabConfig> {
        self.labs.get(id)
    }

    /// A configured machine.
    pub fn machine(&self, key: &TwinKey) -> Option<&MachineConfig> {
        self.machines.get(key)
    }

    /// The kind of a machine: configured, else inferred from the metrics of its birth.
    pub fn kind_of<'a>(
        &self,
        key: &TwinKey,
        birth_metrics: impl IntoIterator<Item = &'a str>,
    ) -> Arc<MachineKind> {
        self.machines
            .get(key)
            .and_then(|m| m.kind.as_deref())
            .and_then(|kind| self.catalogue.get(kind))
            .unwrap_or_else(|| self.catalogue.infer(birth_metrics))
            .clone()
    }

    /// The kind with this id, or the generic kind.
    pub fn kind(&self, id: &str) -> Arc<MachineKind> {
        self.catalogue
            .get(id)
            .unwrap_or_else(|| self.catalogue.generic())
            .clone()
    }

    /// The links of the virtual production lines.
    pub fn links(&self) -> &[LinkConfig] {
        &self.links
    }

    /// The cross-lab relations of a twin.
    pub fn relations(&self, key: &TwinKey) -> Vec<Relation> {
        let id = key.to_string();
        self.links
            .iter()
            .filter_map(|link| {
                if link.to == id {
                    Some(Relation {
                        line: link.line.clone(),
                        direction: "upstream".into(),
                        twin: link.from.clone(),
                    })
                } else if link.from == id {
                    Some(Relation {
                        line: link.line.clone(),
                        direction: "downstream".into(),
                        twin: link.to.clone(),
                    })
                } else {
                    None
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lab(id: &str, machines: &[(&str, Option<&str>)]) -> LabConfig {
        LabConfig {
            id: id.parse().expect("valid"),
            name: id.into(),
            location: String::new(),
            gateways: Vec::new(),
            accept_new_machines: false,
            machines: machines
                .iter()
                .map(|(m, kind)| MachineConfig {
                    id: m.parse().expect("valid"),
                    kind: kind.map(str::to_owned),
                    name: None,
                    line: Some("line-a".into()),
                    attributes: BTreeMap::new(),
                })
                .collect(),
        }
    }

    #[test]
    fn configured_kinds_win_over_inference_and_links_give_relations() {
        let directory = Directory::new(
            Catalogue::builtin(),
            vec![
                lab("lab-a", &[("m-1", Some("retrofit-lathe"))]),
                lab("lab-b", &[]),
            ],
            vec![LinkConfig {
                line: "virtual-1".into(),
                from: "lab-a/m-1".into(),
                to: "lab-b/m-9".into(),
            }],
        )
        .expect("valid");
        let key = TwinKey::parse("lab-a/m-1").expect("key");
        assert_eq!(
            directory.kind_of(&key, ["spindle.vibration_rms"]).id,
            "retrofit-lathe"
        );
        let other = TwinKey::parse("lab-b/m-9").expect("key");
        assert_eq!(
            directory
                .kind_of(&other, ["spindle.vibration_rms", "spindle.power_w"])
                .id,
            "cnc-mill"
        );
        assert_eq!(directory.relations(&other)[0].direction, "upstream");
        assert_eq!(directory.relations(&key)[0].twin, "lab-b/m-9");
    }

    #[test]
    fn only_listed_labs_gateways_and_machines_are_admitted_unless_configured_otherwise() {
        let mut open = lab("lab-b", &[]);
        open.accept_new_machines = true;
        let mut listed = lab("lab-a", &[("m-1", None)]);
        listed.gateways = vec!["gw-a".parse().expect("valid")];
        let directory =
            Directory::new(Catalogue::builtin(), vec![listed, open], vec![]).expect("valid");
        fn lab_id(s: &str) -> LabId {
            s.parse().expect("valid")
        }
        fn id(s: &str) -> GatewayId {
            s.parse().expect("valid")
        }
        let gw = id("gw-a");
        assert_eq!(directory.admit_edge(&lab_id("lab-a"), &gw, false), Ok(()));
        assert_eq!(
            directory.admit_edge(&lab_id("lab-a"), &id("gw-x"), true),
            Err(IngestDrop::UnregisteredGateway),
            "accepting unknown labs does not open a listed lab's gateways"
        );
        assert_eq!(
            directory.admit_edge(&lab_id("lab-b"), &id("gw-x"), false),
            Ok(())
        );
        assert_eq!(
            directory.admit_edge(&lab_id("lab-z"), &gw, false),
            Err(IngestDrop::UnknownLab)
        );
        assert_eq!(directory.admit_edge(&lab_id("lab-z"), &gw, true), Ok(()));
        let key = |s| TwinKey::parse(s).expect("key");
        assert_eq!(directory.admit_machine(&key("lab-a/m-1"), false), Ok(()));
        assert_eq!(
            directory.admit_machine(&key("lab-a/m-2"), false),
            Err(IngestDrop::UnknownMachine)
        );
        assert_eq!(directory.admit_machine(&key("lab-a/m-2"), true), Ok(()));
        assert_eq!(directory.admit_machine(&key("lab-b/m-9"), false), Ok(()));
    }

    #[test]
    fn errors_name_the_key() {
        let err = Directory::new(
            Catalogue::builtin(),
            vec![lab("lab-a", &[("m-1", Some("toaster"))])],
            vec![],
        )
        .expect_err("unknown kind");
        assert_eq!(err.key, "labs[0].machines[0].kind");
        let err = Directory::new(
            Catalogue::builtin(),
            vec![],
            vec![LinkConfig {
                line: "l".into(),
                from: "nope".into(),
                to: "a/b".into(),
            }],
        )
        .expect_err("bad link");
        assert_eq!(err.key, "links[0].from");
    }
}
