//! The machine-kind catalogue: what a kind of machine reports, in which units, what is normal,
//! what may be written, and which alarm rules apply.
//!
//! Kinds are TOML files. The ones in `hub/catalogue/` are compiled in; a deployment can add or
//! replace kinds with a directory of its own (`[hub] catalogue_dir`). A twin gets its kind from
//! the lab configuration, or, for a machine nobody configured, from the kind whose metrics best
//! match its birth.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use protocol::{MetricName, Unit};
use serde::{Deserialize, Serialize};

use crate::alarm::{AlarmRule, AnomalyConfig, KindAlarms};

/// The kinds shipped with the hub, as (file name, TOML).
const BUILTIN: &[(&str, &str)] = &[
    ("cnc-mill.toml", include_str!("../catalogue/cnc-mill.toml")),
    (
        "retrofit-lathe.toml",
        include_str!("../catalogue/retrofit-lathe.toml"),
    ),
    (
        "3d-printer.toml",
        include_str!("../catalogue/3d-printer.toml"),
    ),
    (
        "compressor.toml",
        include_str!("../catalogue/compressor.toml"),
    ),
    ("conveyor.toml", include_str!("../catalogue/conveyor.toml")),
    (
        "lab-climate.toml",
        include_str!("../catalogue/lab-climate.toml"),
    ),
];

/// Kind of a machine no catalogue entry matches.
pub const GENERIC_KIND: &str = "generic";

/// One metric of a kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MetricSpec {
    /// `feature.property`.
    pub name: String,
    /// Unit symbol.
    pub unit: String,
    /// English label.
    pub label: String,
    /// Danish label.
    pub label_da: String,
    /// Normal operating range `[low, high]`.
    #[serde(default)]
    pub normal: Option<[f64; 2]>,
}

/// A property an operator may set (a desired value sent to the machine as a Sparkplug DCMD).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WritableSpec {
    /// The DCMD metric.
    pub name: String,
    /// English label.
    pub label: String,
    /// Danish label.
    pub label_da: String,
    /// Unit symbol.
    #[serde(default)]
    pub unit: String,
    /// Smallest accepted value.
    pub min: f64,
    /// Largest accepted value.
    pub max: f64,
    /// An action rather than a setting (blink the LED for a while): a node's reboot does not
    /// undo it, so the hub does not send it again when the node comes back with a new boot.
    #[serde(default)]
    pub momentary: bool,
}

/// A machine kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MachineKind {
    /// Kind id, e.g. `cnc-mill`.
    pub id: String,
    /// English name.
    pub name: String,
    /// Danish name.
    pub name_da: String,
    /// One sentence on what is measured.
    #[serde(default)]
    pub description: String,
    /// Metric whose integral is the machine's energy (for "energy today").
    #[serde(default)]
    pub power_metric: Option<String>,
    /// Monotonic counter of parts or cycles (for "cycles today").
    #[serde(default)]
    pub cycles_metric: Option<String>,
    /// Reported metrics.
    #[serde(default)]
    pub metrics: Vec<MetricSpec>,
    /// Writable properties.
    #[serde(default)]
    pub writable: Vec<WritableSpec>,
    /// Alarm rules (see [`crate::alarm`]).
    #[serde(default)]
    #[schema(value_type = Vec<Object>)]
    pub alarms: Vec<AlarmRule>,
    /// The anomaly score's configuration.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub anomaly: Option<AnomalyConfig>,
    /// `alarms` and `anomaly`, checked, as the alarm engine takes them.
    #[serde(skip)]
    #[schema(ignore)]
    pub rules: Arc<KindAlarms>,
}

impl MachineKind {
    fn generic() -> Self {
        Self {
            id: GENERIC_KIND.into(),
            name: "Machine".into(),
            name_da: "Maskine".into(),
            description: "A machine without a catalogue entry.".into(),
            power_metric: None,
            cycles_metric: None,
            metrics: Vec::new(),
            writable: Vec::new(),
            alarms: Vec::new(),
            anomaly: None,
            rules: Arc::default(),
        }
    }

    /// The spec of a reported metric.
    pub fn metric(&self, name: &str) -> Option<&MetricSpec> {
        self.metrics.iter().find(|m| m.name == name)
    }

    /// The spec of a writable property.
    pub fn writable(&self, name: &str) -> Option<&WritableSpec> {
        self.writable.iter().find(|w| w.name == name)
    }

    fn validate(&self, source: &str) -> Result<(), CatalogueError> {
        let bad = |key: String, problem: String| CatalogueError::Invalid {
            file: source.to_owned(),
            key,
            problem,
        };
        if self.id.is_empty()
            || !self
                .id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(bad(
                "id".into(),
                "use lower-case letters, digits and '-'".into(),
            ));
        }
        for (i, metric) in self.metrics.iter().enumerate() {
            if let Err(err) = MetricName::new(&metric.name) {
                return Err(bad(format!("metrics[{i}].name"), err.to_string()));
            }
            if Unit::from_symbol(&metric.unit).is_none() {
                return Err(bad(
                    format!("metrics[{i}].unit"),
                    format!("unknown unit symbol {:?}", metric.unit),
                ));
            }
            if let Some([low, high]) = metric.normal
                && !(low.is_finite() && high.is_finite() && low < high)
            {
                return Err(bad(
                    format!("metrics[{i}].normal"),
                    "must be [low, high] with low < high".into(),
                ));
            }
        }
        for (i, writable) in self.writable.iter().enumerate() {
            if let Err(err) = MetricName::new(&writable.name) {
                return Err(bad(format!("writable[{i}].name"), err.to_string()));
            }
            if !(writable.min.is_finite()
                && writable.max.is_finite()
                && writable.min <= writable.max)
            {
                return Err(bad(
                    format!("writable[{i}].min"),
                    "min and max must be finite with min <= max".into(),
                ));
            }
        }
        for (key, name) in [
            ("power_metric", &self.power_metric),
            ("cycles_metric", &self.cycles_metric),
        ] {
            if let Some(name) = name
                && self.metric(name).is_none()
            {
                return Err(bad(
                    key.into(),
                    format!("{name:?} is not one of the kind's metrics"),
                ));
            }
        }
        Ok(())
    }
}

/// Why the catalogue could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum CatalogueError {
    /// A file could not be read.
    #[error("cannot read catalogue file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A file is not valid TOML for a kind.
    #[error("catalogue {source_name}: {message}")]
    Parse {
        /// File name.
        source_name: String,
        /// The TOML error, which names the key.
        message: String,
    },
    /// A kind is inconsistent.
    #[error("catalogue {file}: {key}: {problem}")]
    Invalid {
        /// File name.
        file: String,
        /// The offending key.
        key: String,
        /// What is wrong.
        problem: String,
    },
}

/// Every known kind.
#[derive(Debug, Clone)]
pub struct Catalogue {
    kinds: BTreeMap<String, Arc<MachineKind>>,
    generic: Arc<MachineKind>,
}

impl Default for Catalogue {
    fn default() -> Self {
        Self::builtin()
    }
}

impl Catalogue {
    /// The kinds compiled into the hub.
    pub fn builtin() -> Self {
        let mut catalogue = Self {
            kinds: BTreeMap::new(),
            generic: Arc::new(MachineKind::generic()),
        };
        for (name, text) in BUILTIN {
            // The built-in files are tested (see the tests below), so this cannot fail at run time.
            if let Ok(kind) = parse_kind(name, text) {
                catalogue.kinds.insert(kind.id.clone(), Arc::new(kind));
            }
        }
        catalogue
    }

    /// The built-in kinds plus every `*.toml` in `dir` (a file may replace a built-in kind).
    pub fn with_dir(dir: &Path) -> Result<Self, CatalogueError> {
        let mut catalogue = Self::builtin();
        let entries = std::fs::read_dir(dir).map_err(|source| CatalogueError::Read {
            path: dir.to_owned(),
            source,
        })?;
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
            .collect();
        paths.sort();
        for path in paths {
            let text = std::fs::read_to_string(&path).map_err(|source| CatalogueError::Read {
                path: path.clone(),
                source,
            })?;
            let kind = parse_kind(&path.display().to_string(), &text)?;
            catalogue.kinds.insert(kind.id.clone(), Arc::new(kind));
        }
        Ok(catalogue)
    }

    /// A kind by id.
    pub fn get(&self, id: &str) -> Option<&Arc<MachineKind>> {
        self.kinds.get(id)
    }

    /// The kind of machines no entry matches.
    pub fn generic(&self) -> &Arc<MachineKind> {
        &self.generic
    }

    /// Every kind, by id.
    pub fn kinds(&self) -> impl Iterator<Item = &Arc<MachineKind>> {
        self.kinds.values()
    }

    /// The kind whose metrics best cover a birth's metrics: the most shared metrics, and at
    /// least half of the birth's. Bookkeeping metrics (`node.*`, `command.*`) don't count.
    pub fn infer<'a>(&self, metrics: impl IntoIterator<Item = &'a str>) -> &Arc<MachineKind> {
        let metrics: Vec<&str> = metrics
            .into_iter()
            .filter(|m| !m.starts_with("node.") && !m.starts_with("command."))
            .collect();
        let best = self
            .kinds
            .values()
            .map(|kind| {
                let shared = metrics.iter().filter(|m| kind.metric(m).is_some()).count();
                (shared, kind)
            })
            .filter(|(shared, _)| *shared > 0 && *shared * 2 >= metrics.len())
            // On a tie, the kind with fewer metrics of its own fits better; then the first id.
            .max_by(|(a, ka), (b, kb)| {
                a.cmp(b)
                    .then(kb.metrics.len().cmp(&ka.metrics.len()))
                    .then(kb.id.cmp(&ka.id))
            });
        best.map_or(&self.generic, |(_, kind)| kind)
    }
}

fn parse_kind(source_name: &str, text: &str) -> Result<MachineKind, CatalogueError> {
    let mut kind: MachineKind = toml::from_str(text).map_err(|err| CatalogueError::Parse {
        source_name: source_name.to_owned(),
        message: err.to_string(),
    })?;
    kind.validate(source_name)?;
    let rules = KindAlarms::new(kind.alarms.clone(), kind.anomaly.clone()).map_err(|err| {
        CatalogueError::Invalid {
            file: source_name.to_owned(),
            key: err.key.clone(),
            problem: err.reason.clone(),
        }
    })?;
    kind.rules = Arc::new(rules);
    Ok(kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_kind_parses_and_validates() {
        for (name, text) in BUILTIN {
            let kind = parse_kind(name, text).unwrap_or_else(|err| panic!("{err}"));
            assert_eq!(format!("{}.toml", kind.id), *name);
        }
        assert_eq!(Catalogue::builtin().kinds().count(), BUILTIN.len());
    }

    #[test]
    fn kinds_are_inferred_from_birth_metrics() {
        let catalogue = Catalogue::builtin();
        let mill = [
            "spindle.power_w",
            "spindle.vibration_rms",
            "coolant.temperature_c",
            "state.code",
            "production.parts",
            "node.seq",
        ];
        assert_eq!(catalogue.infer(mill).id, "cnc-mill");
        let lathe = ["spindle.power_w", "vibration.rms_g", "vibration.crest"];
        assert_eq!(catalogue.infer(lathe).id, "retrofit-lathe");
        assert_eq!(catalogue.infer(["oven.temp_c"]).id, GENERIC_KIND);
        // Shared by both: the smaller kind wins the tie.
        let either = ["spindle.power_w", "coolant.temperature_c"];
        assert_eq!(catalogue.infer(either).id, "cnc-mill");
    }

    #[test]
    fn errors_name_the_file_and_key() {
        let text = BUILTIN[0]
            .1
            .replace("unit = \"W\"", "unit = \"horsepower\"");
        let err = parse_kind("mine.toml", &text).expect_err("bad unit");
        let message = err.to_string();
        assert!(
            message.contains("mine.toml") && message.contains("metrics[0].unit"),
            "{message}"
        );

        let err = parse_kind(
            "x.toml",
            "id = \"x\"\nname = \"X\"\nname_da = \"X\"\ncolour = 1\n",
        )
        .expect_err("unknown key");
        assert!(err.to_string().contains("colour"), "{err}");

        let text = BUILTIN[0].1.replace(
            "cycles_metric = \"production.parts\"",
            "cycles_metric = \"nope.x\"",
        );
        let err = parse_kind("y.toml", &text).expect_err("bad reference");
        assert!(err.to_string().contains("cycles_metric"), "{err}");
    }
}
