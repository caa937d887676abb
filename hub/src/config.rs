//! `hub.toml`: the production hub's configuration file (`demolab-hub --config hub.toml`).
//!
//! Every section has defaults, so an empty file runs a hub with the embedded broker on 1883,
//! the web platform on 8080 and storage under `./data`. Errors name the key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use protocol::HostId;
use serde::Deserialize;

use crate::auth::AuthConfig;
use crate::broker::BrokerConfig;
use crate::broker::access::AccessConfig;
use crate::catalogue::Catalogue;
use crate::directory::{Directory, LabConfig, LinkConfig};
use crate::history::Retention;
use crate::history::influx::InfluxConfig;
use crate::limits::Limits;
use crate::{BrokerSetting, HubConfig, MqttLogin};

/// The file, as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubFile {
    /// `[hub]`.
    #[serde(default)]
    pub hub: HubSection,
    /// `[broker]`.
    #[serde(default)]
    pub broker: BrokerSection,
    /// `[auth]`, `[[auth.users]]`, `[[auth.games]]`.
    #[serde(default)]
    pub auth: AuthConfig,
    /// `[[labs]]` with `[[labs.machines]]`.
    #[serde(default)]
    pub labs: Vec<LabConfig>,
    /// `[[links]]` of virtual production lines.
    #[serde(default)]
    pub links: Vec<LinkConfig>,
    /// `[history]`: how long the embedded history is kept.
    #[serde(default)]
    pub history: Retention,
    /// `[influx]`: the long-term history sink (off when absent).
    #[serde(default)]
    pub influx: Option<InfluxConfig>,
    /// `[limits]`: what the hub accepts from the wire.
    #[serde(default)]
    pub limits: Limits,
}

/// `[hub]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HubSection {
    /// Sparkplug primary host id.
    pub host_id: String,
    /// Web platform and API.
    pub listen: SocketAddr,
    /// Embedded storage directory.
    pub data_dir: PathBuf,
    /// Extra machine kinds (`*.toml`), added to the built-in catalogue.
    pub catalogue_dir: Option<PathBuf>,
    /// How often accepted samples are committed to disk (and acknowledged to the broker).
    pub commit_interval_ms: u64,
    /// Publish retained JSON values on `demolab/{lab}/{machine}/{metric}`.
    pub json_topics: bool,
    /// Take births of labs and machines `[[labs]]` does not list (still capped by `[limits]`).
    /// Off: only configured labs, their listed gateways and machines get twins.
    pub accept_unknown: bool,
    /// An online twin that accepts no sample for this long is marked stale.
    pub stale_after_ms: u64,
}

impl Default for HubSection {
    fn default() -> Self {
        Self {
            host_id: "demolab-hub".into(),
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            data_dir: PathBuf::from("data"),
            catalogue_dir: None,
            commit_interval_ms: 100,
            json_topics: true,
            accept_unknown: false,
            stale_after_ms: crate::DEFAULT_STALE_AFTER.as_millis() as u64,
        }
    }
}

/// `[broker]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerSection {
    /// `embedded` or `external`.
    pub mode: String,
    /// Embedded: where it listens.
    pub listen: SocketAddr,
    /// External: host name.
    pub host: String,
    /// External: port.
    pub port: u16,
    /// The hub's MQTT user name.
    pub username: Option<String>,
    /// Environment variable holding the hub's MQTT password.
    pub password_env: Option<String>,
    /// Share ingest with other hub replicas (`$share/{group}/spBv1.0/#`).
    pub share_group: Option<String>,
    /// Embedded: per-client credentials and topic ACL (see deploy/access.toml); without it the
    /// embedded broker admits anyone.
    pub access_file: Option<PathBuf>,
}

impl Default for BrokerSection {
    fn default() -> Self {
        Self {
            mode: "embedded".into(),
            listen: SocketAddr::from(([0, 0, 0, 0], 1883)),
            host: "localhost".into(),
            port: 1883,
            username: None,
            password_env: None,
            share_group: None,
            access_file: None,
        }
    }
}

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Not valid TOML for this schema (the message names the key and line).
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        message: String,
    },
    /// A value is out of place.
    #[error("{path}: {key}: {problem}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// What is wrong.
        problem: String,
    },
}

impl HubFile {
    /// Reads and parses a file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Parses file text (`path` is only used in messages).
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|err| ConfigError::Parse {
            path: path.to_owned(),
            message: err.to_string(),
        })
    }

    /// Validates everything and builds the runtime configuration.
    pub fn into_config(self, path: &Path) -> Result<HubConfig, ConfigError> {
        let invalid = |key: &str, problem: String| ConfigError::Invalid {
            path: path.to_owned(),
            key: key.to_owned(),
            problem,
        };
        let host_id = HostId::new(&self.hub.host_id)
            .map_err(|err| invalid("hub.host_id", err.to_string()))?;
        if self.hub.commit_interval_ms == 0 || self.hub.commit_interval_ms > 10_000 {
            return Err(invalid(
                "hub.commit_interval_ms",
                "must be between 1 and 10000".into(),
            ));
        }
        if !(1_000..=86_400_000).contains(&self.hub.stale_after_ms) {
            return Err(invalid(
                "hub.stale_after_ms",
                format!(
                    "must be between 1000 and 86400000, got {}",
                    self.hub.stale_after_ms
                ),
            ));
        }
        self.limits
            .validate()
            .map_err(|err| invalid(&format!("limits.{}", err.key), err.problem))?;
        self.history
            .validate()
            .map_err(|err| invalid("history", err.to_string()))?;
        if let Some(influx) = &self.influx {
            influx
                .validate()
                .map_err(|err| invalid("influx", err.to_string()))?;
        }
        let catalogue = match &self.hub.catalogue_dir {
            Some(dir) => Catalogue::with_dir(dir)
                .map_err(|err| invalid("hub.catalogue_dir", err.to_string()))?,
            None => Catalogue::builtin(),
        };
        let directory = Directory::new(catalogue, self.labs, self.links)
            .map_err(|err| invalid(&err.key, err.problem))?;
        crate::auth::Auth::new(self.auth.clone()).map_err(|err| match err {
            crate::auth::AuthError::Config { key, problem } => {
                invalid(&format!("auth.{key}"), problem)
            }
            other => invalid("auth", other.to_string()),
        })?;
        let login = match (&self.broker.username, &self.broker.password_env) {
            (None, None) => None,
            (Some(username), Some(var)) => {
                let password = std::env::var(var).map_err(|_| {
                    invalid(
                        "broker.password_env",
                        format!("environment variable {var} is not set"),
                    )
                })?;
                Some(MqttLogin {
                    username: username.clone(),
                    password,
                })
            }
            (Some(_), None) => {
                return Err(invalid(
                    "broker.password_env",
                    "needed with broker.username".into(),
                ));
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "broker.username",
                    "needed with broker.password_env".into(),
                ));
            }
        };
        let broker = match self.broker.mode.as_str() {
            "embedded" => {
                let access = match &self.broker.access_file {
                    Some(file) => Some(
                        AccessConfig::load(file)
                            .map_err(|err| invalid("broker.access_file", err.to_string()))?,
                    ),
                    None => None,
                };
                BrokerSetting::Embedded(BrokerConfig {
                    bind: self.broker.listen,
                    access,
                    ..BrokerConfig::default()
                })
            }
            "external" => BrokerSetting::External {
                host: self.broker.host.clone(),
                port: self.broker.port,
            },
            other => {
                return Err(invalid(
                    "broker.mode",
                    format!("{other:?} is neither \"embedded\" nor \"external\""),
                ));
            }
        };
        Ok(HubConfig {
            host_id,
            http_bind: self.hub.listen,
            broker,
            data_dir: self.hub.data_dir,
            flush_interval: Duration::from_millis(self.hub.commit_interval_ms),
            extra_metrics: None,
            directory: Arc::new(directory),
            auth: self.auth,
            mqtt_login: login,
            share_group: self.broker.share_group,
            json_topics: self.hub.json_topics,
            retention: self.history,
            influx: self.influx,
            scenarios: None,
            accept_unknown: self.hub.accept_unknown,
            limits: self.limits,
            stale_after: Duration::from_millis(self.hub.stale_after_ms),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<HubConfig, ConfigError> {
        let path = Path::new("hub.toml");
        HubFile::parse(path, text)?.into_config(path)
    }

    #[test]
    fn an_empty_file_is_a_working_demo_hub() {
        let config = load("").expect("defaults");
        assert_eq!(config.http_bind.port(), 8080);
        assert!(matches!(config.broker, BrokerSetting::Embedded(_)));
        assert!(!config.accept_unknown, "only configured labs by default");
        assert_eq!(config.limits, Limits::default());
    }

    #[test]
    fn the_shipped_example_loads() {
        let text = include_str!("../../deploy/hub.toml");
        let path = Path::new("deploy/hub.toml");
        let file = HubFile::parse(path, text).expect("parses");
        assert!(!file.labs.is_empty());
        assert!(!file.auth.users.is_empty());
        assert_eq!(
            file.limits,
            Limits::default(),
            "the example documents the defaults"
        );
        assert!(!file.hub.accept_unknown);
        file.limits.validate().expect("valid limits");
    }

    #[test]
    fn errors_name_the_key() {
        let err = load("[hub]\nlisten = \"nowhere\"\n").expect_err("bad address");
        assert!(err.to_string().contains("listen"), "{err}");
        let err = load("[broker]\nmode = \"cloud\"\n").expect_err("bad mode");
        assert!(err.to_string().contains("broker.mode"), "{err}");
        let err =
            load("[[labs]]\nid = \"lab-a\"\n[[labs.machines]]\nid = \"m\"\nkind = \"toaster\"\n")
                .expect_err("unknown kind");
        assert!(
            err.to_string().contains("labs[0].machines[0].kind"),
            "{err}"
        );
        let err = load("[hub]\nhost_id = \"no/slash\"\n").expect_err("bad id");
        assert!(err.to_string().contains("hub.host_id"), "{err}");
        let err = load("[broker]\nusername = \"hub\"\n").expect_err("no password");
        assert!(err.to_string().contains("broker.password_env"), "{err}");
        let err = load("[auth]\nanonymous_read = \"yes\"\n").expect_err("bad type");
        assert!(err.to_string().contains("anonymous_read"), "{err}");
        let err = load("[limits]\nmax_topic_len = 10\n").expect_err("too small");
        assert!(err.to_string().contains("limits.max_topic_len"), "{err}");
        let err = load("[limits]\nmax_topics = 10\n").expect_err("unknown key");
        assert!(err.to_string().contains("max_topics"), "{err}");
        let err = load("[hub]\nstale_after_ms = 5\n").expect_err("too short");
        assert!(err.to_string().contains("hub.stale_after_ms"), "{err}");
    }
}
