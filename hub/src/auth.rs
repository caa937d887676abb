//! Who may do what through the API: users with roles, argon2 password hashes, bearer tokens.
//!
//! Roles are ordered: a `student` reads the labs of their game; an `operator` (demo staff) also
//! writes (desired properties, alarm acknowledgements); an `admin` may do everything. Tokens are
//! random, held in memory and expire; a hub restart asks everyone to log in again.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use broker::access::{is_password_hash, verify_password};
use dashmap::DashMap;
use protocol::LabId;
use serde::{Deserialize, Serialize};

/// A role, from least to most allowed.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Reads the labs of their game.
    Student,
    /// Demo staff: reads everything, writes desired properties, acknowledges alarms.
    Operator,
    /// Everything.
    Admin,
}

/// A user as configured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    /// Login name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// Argon2 PHC string (`demolab-hub hash-password` makes one).
    pub password_hash: String,
    /// For students: the game whose labs they may read.
    #[serde(default)]
    pub game: Option<String>,
}

/// An innovation game: which labs its students see.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GameConfig {
    /// Game id.
    pub id: String,
    /// Display name.
    #[serde(default)]
    pub name: String,
    /// Labs whose data the game uses.
    #[schema(value_type = Vec<String>)]
    pub labs: Vec<LabId>,
}

/// Access settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Let requests without a token read every lab (a demo on a big screen); writes always need
    /// an operator token.
    pub anonymous_read: bool,
    /// How long a token lives.
    pub token_ttl_s: u64,
    /// Users.
    pub users: Vec<UserConfig>,
    /// Games.
    pub games: Vec<GameConfig>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            anonymous_read: true,
            token_ttl_s: 12 * 3600,
            users: Vec::new(),
            games: Vec::new(),
        }
    }
}

/// Why an access configuration or a login was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The configuration is inconsistent.
    #[error("{key}: {problem}")]
    Config {
        /// The offending key, e.g. `users[1].game`.
        key: String,
        /// What is wrong.
        problem: String,
    },
    /// Unknown user or wrong password (deliberately not saying which).
    #[error("unknown user or wrong password")]
    BadCredentials,
    /// A password could not be hashed.
    #[error("cannot hash the password: {0}")]
    Hash(String),
}

/// Who is asking.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Principal {
    /// User name (`anonymous` without a token).
    pub user: String,
    /// Role; `None` for an anonymous reader.
    pub role: Option<Role>,
    /// The labs they may read; `None` means all.
    #[schema(value_type = Option<Vec<String>>)]
    pub labs: Option<BTreeSet<LabId>>,
}

impl Principal {
    /// A reader without a token.
    pub fn anonymous() -> Self {
        Self {
            user: "anonymous".into(),
            role: None,
            labs: None,
        }
    }

    /// Whether they may read this lab.
    pub fn can_read(&self, lab: &LabId) -> bool {
        self.labs.as_ref().is_none_or(|labs| labs.contains(lab))
    }

    /// Whether they have at least this role.
    pub fn has(&self, role: Role) -> bool {
        self.role.is_some_and(|own| own >= role)
    }
}

#[derive(Debug, Clone)]
struct Session {
    principal: Principal,
    expires_at: u64,
}

/// A successful login.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Login {
    /// Bearer token for `Authorization: Bearer …`.
    pub token: String,
    /// When it expires, ms since the epoch.
    pub expires_at: u64,
    /// Who it is.
    pub principal: Principal,
}

/// Users, games and live tokens.
#[derive(Debug)]
pub struct Auth {
    config: AuthConfig,
    users: HashMap<String, UserConfig>,
    sessions: DashMap<String, Session>,
}

impl Auth {
    /// Checks the configuration: unique names, valid hashes, students in a known game.
    pub fn new(config: AuthConfig) -> Result<Self, AuthError> {
        let mut users = HashMap::new();
        for (i, user) in config.users.iter().enumerate() {
            let bad = |field: &str, problem: String| AuthError::Config {
                key: format!("users[{i}].{field}"),
                problem,
            };
            if user.name.is_empty() {
                return Err(bad("name", "must not be empty".into()));
            }
            if !is_password_hash(&user.password_hash) {
                return Err(bad(
                    "password_hash",
                    "not an argon2 PHC string (make one with `demolab-hub hash-password`)".into(),
                ));
            }
            match (&user.game, user.role) {
                (None, Role::Student) => {
                    return Err(bad("game", "a student needs a game".into()));
                }
                (Some(game), _) if !config.games.iter().any(|g| &g.id == game) => {
                    return Err(bad("game", format!("no game {game:?} in [[games]]")));
                }
                _ => {}
            }
            if users.insert(user.name.clone(), user.clone()).is_some() {
                return Err(bad("name", format!("user {:?} is listed twice", user.name)));
            }
        }
        Ok(Self {
            config,
            users,
            sessions: DashMap::new(),
        })
    }

    /// Whether requests without a token may read.
    pub fn anonymous_read(&self) -> bool {
        self.config.anonymous_read
    }

    /// Games.
    pub fn games(&self) -> &[GameConfig] {
        &self.config.games
    }

    /// Checks a password and hands out a token.
    pub fn login(&self, name: &str, password: &str, now_ms: u64) -> Result<Login, AuthError> {
        let user = self.users.get(name).ok_or(AuthError::BadCredentials)?;
        if !verify_password(&user.password_hash, password.as_bytes()) {
            return Err(AuthError::BadCredentials);
        }
        let labs = match (user.role, &user.game) {
            (Role::Student, Some(game)) => Some(
                self.config
                    .games
                    .iter()
                    .filter(|g| &g.id == game)
                    .flat_map(|g| g.labs.iter().cloned())
                    .collect(),
            ),
            _ => None,
        };
        let principal = Principal {
            user: user.name.clone(),
            role: Some(user.role),
            labs,
        };
        let token = new_token();
        let expires_at = now_ms + Duration::from_secs(self.config.token_ttl_s).as_millis() as u64;
        self.sessions.retain(|_, s| s.expires_at > now_ms);
        self.sessions.insert(
            token.clone(),
            Session {
                principal: principal.clone(),
                expires_at,
            },
        );
        Ok(Login {
            token,
            expires_at,
            principal,
        })
    }

    /// The principal of a live token.
    pub fn session(&self, token: &str, now_ms: u64) -> Option<Principal> {
        let session = self.sessions.get(token)?;
        (session.expires_at > now_ms).then(|| session.principal.clone())
    }

    /// Ends a session.
    pub fn logout(&self, token: &str) {
        self.sessions.remove(token);
    }
}

/// An argon2id PHC string for a password, for configuration files.
pub fn hash_password(password: &str) -> Result<String, AuthError> {
    broker::access::hash_password(password).map_err(|err| AuthError::Hash(err.to_string()))
}

fn new_token() -> String {
    use std::fmt::Write;
    let bytes: [u8; 32] = rand::random();
    bytes.iter().fold(String::with_capacity(64), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> AuthConfig {
        AuthConfig {
            anonymous_read: false,
            token_ttl_s: 60,
            users: vec![
                UserConfig {
                    name: "olga".into(),
                    role: Role::Operator,
                    password_hash: hash_password("turning").expect("hash"),
                    game: None,
                },
                UserConfig {
                    name: "sam".into(),
                    role: Role::Student,
                    password_hash: hash_password("milling").expect("hash"),
                    game: Some("g1".into()),
                },
            ],
            games: vec![GameConfig {
                id: "g1".into(),
                name: "Game one".into(),
                labs: vec!["lab-a".parse().expect("valid")],
            }],
        }
    }

    #[test]
    fn logins_give_tokens_scoped_by_role_and_game() {
        let auth = Auth::new(config()).expect("valid");
        let operator = auth.login("olga", "turning", 1000).expect("login");
        let principal = auth.session(&operator.token, 2000).expect("live");
        assert!(principal.has(Role::Operator) && !principal.has(Role::Admin));
        assert!(principal.can_read(&"lab-b".parse().expect("valid")));

        let student = auth.login("sam", "milling", 1000).expect("login");
        let principal = auth.session(&student.token, 2000).expect("live");
        assert!(!principal.has(Role::Operator));
        assert!(principal.can_read(&"lab-a".parse().expect("valid")));
        assert!(!principal.can_read(&"lab-b".parse().expect("valid")));

        assert_eq!(auth.session(&student.token, 1000 + 61_000), None, "expired");
        auth.logout(&operator.token);
        assert_eq!(auth.session(&operator.token, 2000), None);
    }

    #[test]
    fn wrong_passwords_and_unknown_users_look_the_same() {
        let auth = Auth::new(config()).expect("valid");
        assert_eq!(
            auth.login("olga", "milling", 0).map(|_| ()),
            Err(AuthError::BadCredentials)
        );
        assert_eq!(
            auth.login("nobody", "x", 0).map(|_| ()),
            Err(AuthError::BadCredentials)
        );
    }

    #[test]
    fn configuration_errors_name_the_key() {
        let mut bad = config();
        bad.users[1].game = Some("g2".into());
        let err = Auth::new(bad).expect_err("unknown game");
        assert!(err.to_string().starts_with("users[1].game:"), "{err}");
        let mut bad = config();
        bad.users[0].password_hash = "secret".into();
        let err = Auth::new(bad).expect_err("plain password");
        assert!(
            err.to_string().starts_with("users[0].password_hash:"),
            "{err}"
        );
    }
}
