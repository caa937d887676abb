//! The embedded broker's accounts when nobody wrote an access file: made at first start, so
//! the broker a hub starts never takes anonymous clients.
//!
//! Every service gets its own least-privilege login, kept in `{data_dir}/mqtt/secrets.toml`
//! (owner-only; see [`broker::access::generated`]):
//! - the hub itself (role `hub`, its Sparkplug host id);
//! - each gateway the directory lists for a lab (role `gateway`: publishes only under
//!   `spBv1.0/{its lab}/…/{itself}`);
//! - `viewer` (role `viewer`: reads the Sparkplug and JSON topics, publishes nothing) so a
//!   newcomer can watch the traffic;
//! - per game `game-{id}` (role `student`: reads the JSON topics of the game's labs only);
//! - whatever the caller adds (the demo adds its simulated sensor nodes).
//!
//! A lab whose gateways are not listed gets no gateway login, and its gateway cannot connect:
//! the start-up log says so.

use std::path::PathBuf;

use crate::broker::access::UserEntry;
use crate::broker::access::generated::GeneratedCredentials;
use crate::{BrokerSetting, HubConfig, HubError, MqttLogin};

/// The read-only account for watching the traffic.
pub const VIEWER: &str = "viewer";

/// Where the generated accounts live under a data directory.
pub fn accounts_dir(config: &HubConfig) -> PathBuf {
    config.data_dir.join("mqtt")
}

/// The identities the hub's own broker needs for `config`, before any the caller adds.
pub fn service_identities(config: &HubConfig) -> Vec<UserEntry> {
    let mut wanted = vec![
        UserEntry {
            name: config.host_id.to_string(),
            role: "hub".into(),
            ..UserEntry::default()
        },
        UserEntry {
            name: VIEWER.into(),
            role: "viewer".into(),
            ..UserEntry::default()
        },
    ];
    for lab in config.directory.labs() {
        if lab.gateways.is_empty() {
            tracing::warn!(lab = %lab.id, "no gateways listed for this lab: none gets an MQTT login");
        }
        for gateway in &lab.gateways {
            wanted.push(UserEntry {
                name: gateway.to_string(),
                role: "gateway".into(),
                lab: Some(lab.id.to_string()),
                ..UserEntry::default()
            });
        }
    }
    for game in &config.auth.games {
        let name = format!("game-{}", game.id);
        let usable = name.len() <= 64
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if game.labs.is_empty() || !usable {
            tracing::warn!(game = %game.id, "this game gets no MQTT login (no labs, or an id unusable as a user name)");
            continue;
        }
        wanted.push(UserEntry {
            name,
            role: "student".into(),
            labs: game.labs.iter().map(ToString::to_string).collect(),
            ..UserEntry::default()
        });
    }
    wanted
}

/// Gives an embedded broker without an access configuration generated accounts
/// ([`service_identities`], then changed by `adjust`: the demo adds its sensor nodes and lets
/// each gateway read them) and logs the hub in with its own. Does nothing for an external
/// broker or an embedded one with an access file, and returns `None` then.
pub fn secure_embedded_broker(
    config: &mut HubConfig,
    adjust: impl FnOnce(&mut Vec<UserEntry>),
) -> Result<Option<GeneratedCredentials>, HubError> {
    let BrokerSetting::Embedded(broker) = &config.broker else {
        return Ok(None);
    };
    if broker.access.is_some() {
        return Ok(None);
    }
    let mut wanted = service_identities(config);
    adjust(&mut wanted);
    let dir = accounts_dir(config);
    let credentials = GeneratedCredentials::ensure(&dir, &wanted).map_err(|err| {
        HubError::Config(format!(
            "cannot set up the MQTT accounts in {}: {err}",
            dir.display()
        ))
    })?;
    let host = config.host_id.to_string();
    let password = credentials
        .password(&host)
        .ok_or_else(|| HubError::Config(format!("no generated MQTT password for {host}")))?;
    config.mqtt_login = Some(MqttLogin {
        username: host.clone(),
        password: password.to_owned(),
    });
    if let BrokerSetting::Embedded(broker) = &mut config.broker {
        broker.access = Some(credentials.access().clone());
    }
    tracing::info!(
        accounts = wanted.len(),
        secrets = %credentials.secrets_path().display(),
        "embedded MQTT broker: anonymous clients refused; service passwords are in the secrets file"
    );
    Ok(Some(credentials))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::auth::GameConfig;
    use crate::catalogue::Catalogue;
    use crate::directory::{Directory, LabConfig};

    fn config(data_dir: PathBuf) -> HubConfig {
        let labs = vec![LabConfig {
            id: "lab-a".parse().unwrap(),
            name: "A".into(),
            location: "here".into(),
            gateways: vec!["gw-a".parse().unwrap()],
            machines: Vec::new(),
            accept_new_machines: false,
        }];
        let mut config = HubConfig {
            data_dir,
            directory: Arc::new(Directory::new(Catalogue::builtin(), labs, Vec::new()).unwrap()),
            ..HubConfig::default()
        };
        config.auth.games.push(GameConfig {
            id: "hunt".into(),
            name: "Hunt".into(),
            labs: vec!["lab-a".parse().unwrap()],
        });
        config
    }

    #[test]
    fn an_embedded_broker_without_access_gets_a_login_per_service() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = config(dir.path().to_owned());
        let creds = secure_embedded_broker(&mut config, |_| {})
            .unwrap()
            .unwrap();
        let BrokerSetting::Embedded(broker) = &config.broker else {
            panic!("embedded")
        };
        let access = broker.access.as_ref().unwrap();
        let names: Vec<_> = access.users().map(|u| u.name().to_owned()).collect();
        assert_eq!(names, ["demolab-hub", "game-hunt", "gw-a", "viewer"]);
        let gateway = access.user("gw-a").unwrap();
        assert!(gateway.may_publish("spBv1.0/lab-a/DDATA/gw-a/m1"));
        assert!(!gateway.may_publish("spBv1.0/lab-b/DDATA/gw-a/m1"));
        let login = config.mqtt_login.as_ref().unwrap();
        assert_eq!(login.username, "demolab-hub");
        assert_eq!(creds.password("demolab-hub"), Some(login.password.as_str()));
        assert!(creds.secrets_path().starts_with(dir.path().join("mqtt")));
    }

    #[test]
    fn an_access_file_or_an_external_broker_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let mut external = HubConfig {
            broker: BrokerSetting::External {
                host: "localhost".into(),
                port: 1883,
                failover: Vec::new(),
            },
            ..config(dir.path().to_owned())
        };
        assert!(
            secure_embedded_broker(&mut external, |_| {})
                .unwrap()
                .is_none()
        );
        assert!(external.mqtt_login.is_none());
        assert!(!dir.path().join("mqtt").exists());
    }
}
