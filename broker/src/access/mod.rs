//! Who may connect to a Demolab broker and which topics each client may use.
//!
//! One TOML file is the single source for both brokers: the embedded broker enforces it through
//! mqtt5's authorisation hooks ([`crate::BrokerConfig::access`]), and [`mosquitto`] turns it
//! into Mosquitto's `acl_file` (and, given the plain passwords, its `password_file`).
//!
//! ```toml
//! [[users]]
//! name = "gw-aarhus"                    # the MQTT username; a gateway's is its gateway id
//! password_hash = "$argon2id$v=19$..."  # from `demolab-broker-files hash`
//! role = "gateway"                      # gateway | hub | student | node | viewer
//! lab = "aarhus-machining"
//! ```
//!
//! Each role turns into a list of topic filters the user may publish to and subscribe to
//! ([`User::grants`]); both brokers are driven by exactly that list, so they cannot drift
//! apart. Because MQTT tells a subscriber nothing about who published, the broker is the only
//! place where "a gateway publishes only under its own lab" can be enforced.

pub mod generated;
pub mod mosquitto;
pub mod topic;

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use protocol::{HostId, LabId, NodeId, node_topic};
use serde::{Deserialize, Serialize};

/// Sparkplug B's topic namespace.
const SPARKPLUG: &str = "spBv1.0";
/// Root of the hub's read-only JSON topics `demolab/{lab}/{machine}/{metric}`.
const JSON_ROOT: &str = "demolab";
/// The message types an edge node publishes (NCMD/DCMD go the other way).
const EDGE_MESSAGES: [&str; 6] = ["NBIRTH", "NDEATH", "NDATA", "DBIRTH", "DDEATH", "DDATA"];

/// An access configuration as written in TOML, before validation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessFile {
    /// One entry per client identity.
    #[serde(default)]
    pub users: Vec<UserEntry>,
}

/// One `[[users]]` entry as written.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserEntry {
    /// The MQTT username (`[A-Za-z0-9._-]{1,64}`); for a gateway its gateway id, for a node
    /// its 16-digit hex id unless `node` says otherwise.
    pub name: String,
    /// An argon2 PHC string (`$argon2id$v=19$m=...`). Never the password itself.
    pub password_hash: String,
    /// `gateway`, `hub`, `student`, `node`, `simulator` or `viewer`.
    pub role: String,
    /// A gateway's lab.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lab: Option<String>,
    /// A student's labs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labs: Vec<String>,
    /// A hub's Sparkplug host id (for `spBv1.0/STATE/{host}`); defaults to `name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// A node's hex id; defaults to `name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The network nodes a gateway serves on its lab broker (hex ids): it may read their
    /// uplink and command them. Empty on the hub's broker.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<String>,
}

/// What an access configuration can get wrong.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    /// The file could not be read.
    #[error("cannot read the access configuration {path}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The text is not TOML of the expected shape.
    #[error("the access configuration is not valid TOML: {0}")]
    Parse(#[from] toml::de::Error),
    /// A value is out of range; `key` names it, e.g. `users[2].lab`.
    #[error("{key}: {message}")]
    Invalid {
        /// The offending key.
        key: String,
        /// What is wrong with it.
        message: String,
    },
    /// Hashing a password failed (the OS random source, in practice).
    #[error("cannot hash the password: {0}")]
    Hash(String),
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> AccessError {
    AccessError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

/// A client's role and what it is scoped to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// A lab gateway (Sparkplug edge node) publishing under its own lab only.
    Gateway {
        /// Its lab (Sparkplug group).
        lab: LabId,
        /// Network nodes it serves on a lab broker.
        nodes: Vec<NodeId>,
    },
    /// The hub (Sparkplug primary host application).
    Hub {
        /// Its Sparkplug host id.
        host: HostId,
    },
    /// A student or tool reading the JSON topics of some labs.
    Student {
        /// The labs it may read.
        labs: Vec<LabId>,
    },
    /// A network sensor node on a lab broker.
    Node {
        /// Its hardware id.
        node: NodeId,
    },
    /// A development fleet of simulated sensor nodes (`demolab-sim run`, `fleet`, `replay`):
    /// sends any node's frames and reads any node's commands. Never generated: grant it on a
    /// development lab broker only, where a fake node is the point.
    Simulator,
    /// Staff or a newcomer watching the traffic: reads the Sparkplug and JSON topics of every
    /// lab (and node uplinks on a lab broker), publishes nothing.
    Viewer,
}

/// The topic filters a user may publish to and subscribe to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    /// Filters every published topic (and the Will topic) must match.
    pub publish: Vec<String>,
    /// Filters every subscription must stay within (`$share/{group}/` is judged by what
    /// follows it).
    pub subscribe: Vec<String>,
}

/// One validated client identity.
#[derive(Clone, PartialEq, Eq)]
pub struct User {
    name: String,
    password_hash: String,
    role: Role,
}

impl fmt::Debug for User {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The hash is not secret the way a password is, but it has no place in logs.
        f.debug_struct("User")
            .field("name", &self.name)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

impl User {
    /// The MQTT username.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The argon2 PHC string.
    pub fn password_hash(&self) -> &str {
        &self.password_hash
    }

    /// The role and its scope.
    pub fn role(&self) -> &Role {
        &self.role
    }

    /// Whether `password` is this user's (argon2 verification: CPU-heavy, run it off the
    /// async executor).
    pub fn verify_password(&self, password: &[u8]) -> bool {
        verify_password(&self.password_hash, password)
    }

    /// The topic filters this user may publish and subscribe to.
    pub fn grants(&self) -> Grants {
        match &self.role {
            Role::Gateway { lab, nodes } => {
                let gateway = &self.name;
                let mut publish: Vec<String> = EDGE_MESSAGES
                    .iter()
                    .map(|kind| format!("{SPARKPLUG}/{lab}/{kind}/{gateway}/#"))
                    .collect();
                let mut subscribe = vec![
                    format!("{SPARKPLUG}/{lab}/NCMD/{gateway}"),
                    format!("{SPARKPLUG}/{lab}/DCMD/{gateway}/+"),
                    format!("{SPARKPLUG}/STATE/+"),
                ];
                for node in nodes {
                    subscribe.push(format!("{}{node}/up", node_topic::PREFIX));
                    publish.push(format!("{}{node}/down", node_topic::PREFIX));
                }
                Grants { publish, subscribe }
            }
            Role::Hub { host } => Grants {
                publish: vec![
                    format!("{SPARKPLUG}/+/NCMD/#"),
                    format!("{SPARKPLUG}/+/DCMD/#"),
                    format!("{SPARKPLUG}/STATE/{host}"),
                    format!("{JSON_ROOT}/#"),
                ],
                subscribe: vec![format!("{SPARKPLUG}/#")],
            },
            Role::Student { labs } => Grants {
                publish: Vec::new(),
                subscribe: labs
                    .iter()
                    .map(|lab| format!("{JSON_ROOT}/{lab}/#"))
                    .collect(),
            },
            Role::Node { node } => Grants {
                publish: vec![format!("{}{node}/up", node_topic::PREFIX)],
                subscribe: vec![format!("{}{node}/down", node_topic::PREFIX)],
            },
            Role::Simulator => Grants {
                publish: vec![format!("{}+/up", node_topic::PREFIX)],
                subscribe: vec![format!("{}+/down", node_topic::PREFIX)],
            },
            Role::Viewer => Grants {
                publish: Vec::new(),
                subscribe: vec![format!("{SPARKPLUG}/#"), format!("{JSON_ROOT}/#")],
            },
        }
    }

    /// Whether this user may publish to `topic` (also used for the Will topic).
    pub fn may_publish(&self, topic: &str) -> bool {
        self.grants()
            .publish
            .iter()
            .any(|grant| topic::topic_matches(grant, topic))
    }

    /// Whether this user may subscribe to `filter` (a shared subscription is judged by its
    /// inner filter).
    pub fn may_subscribe(&self, filter: &str) -> bool {
        let Some(inner) = topic::unshare(filter) else {
            return false;
        };
        self.grants()
            .subscribe
            .iter()
            .any(|grant| topic::filter_covered_by(grant, inner))
    }
}

/// Logins the access configuration does not hold: short-lived tokens that another part of the
/// process hands out (a game's team tokens in the hub). Asked only about user names the
/// configuration does not know; such users read the JSON topics of their labs and publish
/// nothing.
pub trait TokenLogins: Send + Sync + fmt::Debug {
    /// The labs `user` may read, if `password` is a live token of theirs.
    fn login(&self, user: &str, password: &[u8]) -> Option<Vec<LabId>>;
    /// The labs `user` may read while a token of theirs lives; `None` once all have ended.
    fn labs(&self, user: &str) -> Option<Vec<LabId>>;
}

impl User {
    /// A reader of `labs`' JSON topics known by a token, not by a password hash.
    pub(crate) fn token_reader(name: &str, labs: Vec<LabId>) -> Self {
        Self {
            name: name.to_owned(),
            password_hash: String::new(),
            role: Role::Student { labs },
        }
    }
}

/// A validated access configuration: every user known by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessConfig {
    users: BTreeMap<String, User>,
}

impl AccessConfig {
    /// Reads and validates a TOML file.
    pub fn load(path: &Path) -> Result<Self, AccessError> {
        let text = std::fs::read_to_string(path).map_err(|source| AccessError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text)
    }

    /// Parses and validates TOML text.
    pub fn parse(text: &str) -> Result<Self, AccessError> {
        let file: AccessFile = toml::from_str(text)?;
        Self::from_file(&file)
    }

    /// Validates an already deserialised file (e.g. a section of a larger config).
    pub fn from_file(file: &AccessFile) -> Result<Self, AccessError> {
        let mut users = BTreeMap::new();
        for (index, entry) in file.users.iter().enumerate() {
            let user = validate_user(index, entry)?;
            if users.contains_key(&user.name) {
                return Err(invalid(
                    format!("users[{index}].name"),
                    format!("user {:?} is defined twice", user.name),
                ));
            }
            users.insert(user.name.clone(), user);
        }
        Ok(Self { users })
    }

    /// The user called `name`.
    pub fn user(&self, name: &str) -> Option<&User> {
        self.users.get(name)
    }

    /// Every user, ordered by name.
    pub fn users(&self) -> impl Iterator<Item = &User> {
        self.users.values()
    }
}

fn validate_user(index: usize, entry: &UserEntry) -> Result<User, AccessError> {
    let key = |field: &str| format!("users[{index}].{field}");
    let name = entry.name.as_str();
    // Mosquitto's files put the name after `user ` and before `:`; keep it to characters
    // that mean nothing to either file.
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(invalid(
            key("name"),
            format!("{name:?} must be 1 to 64 of A-Z, a-z, 0-9, '.', '_' and '-'"),
        ));
    }
    let hash = PasswordHash::new(&entry.password_hash).map_err(|e| {
        invalid(
            key("password_hash"),
            format!("not a PHC string ({e}); make one with `demolab-broker-files hash`"),
        )
    })?;
    if !hash.algorithm.as_str().starts_with("argon2") {
        return Err(invalid(
            key("password_hash"),
            format!("algorithm {} is not argon2", hash.algorithm),
        ));
    }
    let lab = |value: &str, field: &str| {
        let lab = LabId::new(value).map_err(|e| invalid(key(field), e.to_string()))?;
        // `demolab/v1/...` is the node topic tree: a lab called v1 would make its JSON
        // topics and every node's topics one and the same.
        if value == "v1" {
            return Err(invalid(
                key(field),
                "\"v1\" is reserved (demolab/v1/ holds the node topics)",
            ));
        }
        Ok(lab)
    };
    let node = |value: &str, field: &str| {
        value
            .parse::<NodeId>()
            .map_err(|e| invalid(key(field), e.to_string()))
    };
    let unused = |field: &str, present: bool, role: &str| {
        if present {
            Err(invalid(
                key(field),
                format!("has no meaning for role {role}"),
            ))
        } else {
            Ok(())
        }
    };
    let role = match entry.role.as_str() {
        "gateway" => {
            unused("labs", !entry.labs.is_empty(), "gateway")?;
            unused("host", entry.host.is_some(), "gateway")?;
            unused("node", entry.node.is_some(), "gateway")?;
            // The username is the Sparkplug edge node id in its topics.
            protocol::GatewayId::new(name)
                .map_err(|e| invalid(key("name"), format!("a gateway's name: {e}")))?;
            let value = entry
                .lab
                .as_deref()
                .ok_or_else(|| invalid(key("lab"), "a gateway needs its lab"))?;
            let nodes = entry
                .nodes
                .iter()
                .enumerate()
                .map(|(i, n)| node(n, &format!("nodes[{i}]")))
                .collect::<Result<_, _>>()?;
            Role::Gateway {
                lab: lab(value, "lab")?,
                nodes,
            }
        }
        "hub" => {
            unused("lab", entry.lab.is_some(), "hub")?;
            unused("labs", !entry.labs.is_empty(), "hub")?;
            unused("node", entry.node.is_some(), "hub")?;
            unused("nodes", !entry.nodes.is_empty(), "hub")?;
            let (value, field) = match &entry.host {
                Some(host) => (host.as_str(), "host"),
                None => (name, "name"),
            };
            Role::Hub {
                host: HostId::new(value)
                    .map_err(|e| invalid(key(field), format!("a hub's host id: {e}")))?,
            }
        }
        "student" => {
            unused("lab", entry.lab.is_some(), "student (use labs)")?;
            unused("host", entry.host.is_some(), "student")?;
            unused("node", entry.node.is_some(), "student")?;
            unused("nodes", !entry.nodes.is_empty(), "student")?;
            if entry.labs.is_empty() {
                return Err(invalid(key("labs"), "a student needs at least one lab"));
            }
            let labs = entry
                .labs
                .iter()
                .enumerate()
                .map(|(i, l)| lab(l, &format!("labs[{i}]")))
                .collect::<Result<_, _>>()?;
            Role::Student { labs }
        }
        "node" => {
            unused("lab", entry.lab.is_some(), "node")?;
            unused("labs", !entry.labs.is_empty(), "node")?;
            unused("host", entry.host.is_some(), "node")?;
            unused("nodes", !entry.nodes.is_empty(), "node")?;
            let node = match &entry.node {
                Some(value) => node(value, "node")?,
                None => node(name, "name")?,
            };
            Role::Node { node }
        }
        "simulator" | "viewer" => {
            let role = entry.role.as_str();
            unused("lab", entry.lab.is_some(), role)?;
            unused("labs", !entry.labs.is_empty(), role)?;
            unused("host", entry.host.is_some(), role)?;
            unused("node", entry.node.is_some(), role)?;
            unused("nodes", !entry.nodes.is_empty(), role)?;
            if role == "viewer" {
                Role::Viewer
            } else {
                Role::Simulator
            }
        }
        other => {
            return Err(invalid(
                key("role"),
                format!(
                    "unknown role {other:?}; expected gateway, hub, student, node, simulator or viewer"
                ),
            ));
        }
    };
    Ok(User {
        name: name.to_owned(),
        password_hash: entry.password_hash.clone(),
        role,
    })
}

/// Whether `password` matches the argon2 PHC string `hash` (CPU-heavy: run it off the async
/// executor). An unparsable hash matches nothing.
pub fn verify_password(hash: &str, password: &[u8]) -> bool {
    PasswordHash::new(hash)
        .is_ok_and(|hash| Argon2::default().verify_password(password, &hash).is_ok())
}

/// Whether `hash` is a PHC string argon2 can verify against.
pub fn is_password_hash(hash: &str) -> bool {
    PasswordHash::new(hash).is_ok()
}

/// Hashes `plain` into an argon2id PHC string with argon2's recommended parameters and a
/// random salt, for `password_hash`.
pub fn hash_password(plain: &str) -> Result<String, AccessError> {
    Argon2::default()
        .hash_password(plain.as_bytes())
        .map(|hash| hash.to_string())
        .map_err(|e| AccessError::Hash(e.to_string()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A PHC string with the smallest argon2 cost, so that tests stay fast in debug builds.
    fn cheap_hash(plain: &str) -> String {
        let params = argon2::Params::new(8, 1, 1, None).unwrap();
        Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
            .hash_password(plain.as_bytes())
            .unwrap()
            .to_string()
    }

    fn config(users: &str) -> Result<AccessConfig, AccessError> {
        AccessConfig::parse(&users.replace("HASH", &cheap_hash("secret")))
    }

    const EXAMPLE: &str = r#"
        [[users]]
        name = "gw-aarhus"
        password_hash = "HASH"
        role = "gateway"
        lab = "aarhus-machining"

        [[users]]
        name = "hub"
        password_hash = "HASH"
        role = "hub"
        host = "demolab-hub"

        [[users]]
        name = "student-1"
        password_hash = "HASH"
        role = "student"
        labs = ["aarhus-machining"]

        [[users]]
        name = "00000000000000a1"
        password_hash = "HASH"
        role = "node"
    "#;

    #[test]
    fn a_gateway_publishes_only_under_its_own_lab_and_name() {
        let access = config(EXAMPLE).unwrap();
        let gw = access.user("gw-aarhus").unwrap();
        assert!(gw.may_publish("spBv1.0/aarhus-machining/NBIRTH/gw-aarhus"));
        assert!(gw.may_publish("spBv1.0/aarhus-machining/DDATA/gw-aarhus/lathe-1"));
        assert!(gw.may_publish("spBv1.0/aarhus-machining/NDEATH/gw-aarhus"));
        assert!(!gw.may_publish("spBv1.0/odense-additive/NDATA/gw-aarhus"));
        assert!(!gw.may_publish("spBv1.0/aarhus-machining/NDATA/gw-other"));
        assert!(!gw.may_publish("spBv1.0/aarhus-machining/NCMD/gw-aarhus"));
        assert!(!gw.may_publish("spBv1.0/STATE/gw-aarhus"));
        assert!(!gw.may_publish("demolab/aarhus-machining/lathe-1/spindle.power_w"));
        assert!(gw.may_subscribe("spBv1.0/aarhus-machining/NCMD/gw-aarhus"));
        assert!(gw.may_subscribe("spBv1.0/aarhus-machining/DCMD/gw-aarhus/+"));
        assert!(gw.may_subscribe("spBv1.0/STATE/+"));
        assert!(!gw.may_subscribe("spBv1.0/#"));
        assert!(!gw.may_subscribe("spBv1.0/aarhus-machining/NCMD/+"));
    }

    #[test]
    fn the_hub_reads_all_sparkplug_and_writes_commands_state_and_json() {
        let access = config(EXAMPLE).unwrap();
        let hub = access.user("hub").unwrap();
        assert!(hub.may_subscribe("spBv1.0/#"));
        assert!(hub.may_subscribe("$share/hubs/spBv1.0/#"));
        assert!(!hub.may_subscribe("#"));
        assert!(!hub.may_subscribe("$share/hubs/#"));
        assert!(hub.may_publish("spBv1.0/any-lab/NCMD/gw"));
        assert!(hub.may_publish("spBv1.0/any-lab/DCMD/gw/m"));
        assert!(hub.may_publish("spBv1.0/STATE/demolab-hub"));
        assert!(!hub.may_publish("spBv1.0/STATE/other-hub"));
        assert!(!hub.may_publish("spBv1.0/any-lab/NDATA/gw"));
        assert!(hub.may_publish("demolab/aarhus-machining/lathe-1/spindle.power_w"));
    }

    #[test]
    fn a_student_reads_its_labs_json_and_publishes_nothing() {
        let access = config(EXAMPLE).unwrap();
        let student = access.user("student-1").unwrap();
        assert!(student.may_subscribe("demolab/aarhus-machining/#"));
        assert!(student.may_subscribe("demolab/aarhus-machining/lathe-1/+"));
        assert!(!student.may_subscribe("demolab/odense-additive/#"));
        assert!(!student.may_subscribe("demolab/#"));
        assert!(!student.may_subscribe("spBv1.0/#"));
        assert!(!student.may_publish("demolab/aarhus-machining/lathe-1/x.y"));
    }

    #[test]
    fn a_viewer_reads_every_lab_and_publishes_nothing() {
        let hash = hash_password("pw").unwrap();
        let access = config(&format!(
            "[[users]]\nname = \"viewer\"\npassword_hash = \"{hash}\"\nrole = \"viewer\"\n"
        ))
        .unwrap();
        let viewer = access.user("viewer").unwrap();
        assert!(viewer.may_subscribe("spBv1.0/#"));
        assert!(viewer.may_subscribe("demolab/#"));
        assert!(viewer.may_subscribe("demolab/v1/node/+/up"));
        assert!(!viewer.may_subscribe("#"));
        assert!(!viewer.may_publish("spBv1.0/aarhus-machining/DDATA/gw/mill-1"));
        assert!(!viewer.may_publish("demolab/aarhus-machining/mill-1/x.y"));
        let err = config(&format!(
            "[[users]]\nname = \"v\"\npassword_hash = \"{hash}\"\nrole = \"viewer\"\nlab = \"a\"\n"
        ))
        .unwrap_err();
        assert!(err.to_string().contains("users[0].lab"), "{err}");
    }

    #[test]
    fn a_simulator_poses_as_any_node_and_nothing_else() {
        let hash = hash_password("pw").unwrap();
        let access = config(&format!(
            "[[users]]\nname = \"sim\"\npassword_hash = \"{hash}\"\nrole = \"simulator\"\n"
        ))
        .unwrap();
        let sim = access.user("sim").unwrap();
        assert!(sim.may_publish("demolab/v1/node/00000000000000a1/up"));
        assert!(sim.may_subscribe("demolab/v1/node/+/down"));
        assert!(!sim.may_publish("demolab/v1/node/00000000000000a1/down"));
        assert!(!sim.may_publish("spBv1.0/lab/DDATA/gw/m"));
        assert!(!sim.may_subscribe("demolab/#"));
    }

    #[test]
    fn a_node_uses_only_its_own_topics() {
        let access = config(EXAMPLE).unwrap();
        let node = access.user("00000000000000a1").unwrap();
        assert!(node.may_publish("demolab/v1/node/00000000000000a1/up"));
        assert!(!node.may_publish("demolab/v1/node/00000000000000a2/up"));
        assert!(node.may_subscribe("demolab/v1/node/00000000000000a1/down"));
        assert!(!node.may_subscribe("demolab/v1/node/+/down"));
    }

    #[test]
    fn passwords_are_verified_against_the_argon2_hash() {
        let access = config(EXAMPLE).unwrap();
        let hub = access.user("hub").unwrap();
        assert!(hub.verify_password(b"secret"));
        assert!(!hub.verify_password(b"Secret"));
        assert!(!hub.verify_password(b""));
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            (
                EXAMPLE.replace("lab = \"aarhus-machining\"", "lab = \"Aarhus\""),
                "users[0].lab",
            ),
            (
                EXAMPLE.replace("role = \"hub\"", "role = \"admin\""),
                "users[1].role",
            ),
            (
                EXAMPLE.replace("name = \"hub\"", "name = \"gw-aarhus\""),
                "users[1].name",
            ),
            (
                EXAMPLE.replace("labs = [\"aarhus-machining\"]", "labs = [\"v1\"]"),
                "users[2].labs[0]",
            ),
            (
                EXAMPLE.replacen("password_hash = \"HASH\"", "password_hash = \"hunter2\"", 1),
                "users[0].password_hash",
            ),
            (
                EXAMPLE.replace("role = \"node\"", "role = \"node\"\nlab = \"x\""),
                "users[3].lab",
            ),
        ];
        for (text, key) in cases {
            let error = config(&text).unwrap_err();
            assert!(
                error.to_string().starts_with(&format!("{key}: ")),
                "{key}: {error}"
            );
        }
        let error = config("[[users]]\nname = \"x\"\nrole = \"hub\"\nextra = 1").unwrap_err();
        assert!(matches!(error, AccessError::Parse(_)), "{error}");
    }

    #[test]
    fn hash_password_makes_an_argon2id_phc_string_that_verifies() {
        let hash = hash_password("pw").unwrap();
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        let user = validate_user(
            0,
            &UserEntry {
                name: "hub".into(),
                password_hash: hash,
                role: "hub".into(),
                ..UserEntry::default()
            },
        )
        .unwrap();
        assert!(user.verify_password(b"pw"));
    }
}
