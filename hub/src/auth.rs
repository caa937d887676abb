//! Who may do what through the API: users with roles, argon2 password hashes, bearer tokens.
//!
//! Roles are ordered: a `student` reads the labs of their game (and the public labs); an
//! `operator` (demo staff) also writes (desired properties, alarm acknowledgements); an `admin`
//! may do everything. Without a token, only the `public_labs` can be read. Tokens are random,
//! held in memory and expire; a logout or the expiry ends the token's streams too; a hub
//! restart asks everyone to log in again.
//!
//! Logins pass a rate limiter per client address and per address and user name
//! ([`LoginLimiter`]) before a bounded number of argon2 checks run in preallocated memory
//! ([`Hasher`]); an unknown name is checked against a dummy hash so that it answers no faster.

mod counters;
mod limit;
mod network;
mod password;
mod shared;

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use dashmap::DashMap;
use protocol::LabId;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::warn;

pub use counters::{AccessCounters, AccessEvent, LogThrottle};
pub use limit::{Limited, LoginLimiter, LoginLimits, Refusal};
pub use network::{IpRange, client_address, origin_allowed};
pub use password::{Busy, Hasher, PasswordCheck};
pub use shared::{
    FOLLOW_EVERY, SessionShare, ShareError, ShareFuture, SharedSession, TokenHash, token_hash,
};

use crate::ingest::now_ms;

/// A role, from least to most allowed.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Reads the labs of their game.
    Student,
    /// Runs innovation games: creates them from templates, opens, pauses and ends them, sees
    /// every team's answers; reads every lab but writes nothing to machines.
    Teacher,
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

/// Access settings (`[auth]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Labs anyone may read without logging in (a big screen, simulated labs shown on purpose);
    /// students read these besides their game's. `["*"]` makes every lab public and is refused
    /// while games exist, so a game's labs are never public by accident. Empty by default:
    /// every read needs a token.
    pub public_labs: Vec<String>,
    /// How long a token lives, s.
    pub token_ttl_s: u64,
    /// Reverse proxies whose `X-Forwarded-For` names the client (addresses or CIDR ranges).
    /// Nobody else's is believed.
    pub trusted_proxies: Vec<IpRange>,
    /// Origins besides the hub's own whose pages may open the WebSocket stream, e.g.
    /// `https://screen.example.org`.
    pub allowed_origins: Vec<String>,
    /// `[auth.login]`: rate limits and the cost of password checks.
    pub login: LoginLimits,
    /// Users.
    pub users: Vec<UserConfig>,
    /// Games.
    pub games: Vec<GameConfig>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            public_labs: Vec::new(),
            token_ttl_s: 12 * 3600,
            trusted_proxies: Vec::new(),
            allowed_origins: Vec::new(),
            login: LoginLimits::default(),
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
    /// Too many attempts; try again later.
    #[error("too many login attempts; try again in {} s", .0.retry_after_s)]
    RateLimited(Limited),
    /// Every password check was busy for too long.
    #[error("too many logins at once")]
    Busy,
    /// The region's shared session store could not take or give a session.
    #[error(transparent)]
    Shared(#[from] ShareError),
    /// A password could not be hashed.
    #[error("cannot hash the password: {0}")]
    Hash(String),
}

/// Who is asking.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Principal {
    /// User name (`anonymous` without a token).
    pub user: String,
    /// Role; `None` for an anonymous reader.
    pub role: Option<Role>,
    /// The labs they may read; `None` means all.
    #[schema(value_type = Option<Vec<String>>)]
    pub labs: Option<BTreeSet<LabId>>,
    /// For a team token: the game and the team it plays for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub team: Option<TeamSeat>,
}

/// The game and team a team token belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TeamSeat {
    /// The game.
    pub game: String,
    /// The team.
    pub team: String,
}

impl Principal {
    /// A reader without a token, who may read `labs` (`None`: all).
    pub fn anonymous(labs: Option<BTreeSet<LabId>>) -> Self {
        Self {
            user: "anonymous".into(),
            role: None,
            labs,
            team: None,
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

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEnd {
    /// Its time ran out.
    Expired,
    /// It was logged out.
    LoggedOut,
}

impl SessionEnd {
    /// Stable code, as streams report it.
    pub const fn code(self) -> &'static str {
        match self {
            SessionEnd::Expired => "token_expired",
            SessionEnd::LoggedOut => "logged_out",
        }
    }
}

/// How long a token lives: what a stream watches to end with it.
#[derive(Debug, Clone)]
pub struct Lifetime {
    /// When it expires, ms since the epoch.
    pub expires_at: u64,
    revoked: CancellationToken,
}

impl Lifetime {
    /// Resolves when the session ends, saying why.
    pub async fn ended(&self) -> SessionEnd {
        let left = self.expires_at.saturating_sub(now_ms());
        tokio::select! {
            () = self.revoked.cancelled() => SessionEnd::LoggedOut,
            () = tokio::time::sleep(Duration::from_millis(left)) => SessionEnd::Expired,
        }
    }
}

#[derive(Debug, Clone)]
struct Session {
    principal: Principal,
    lifetime: Lifetime,
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

#[derive(Debug)]
struct User {
    config: UserConfig,
    check: Arc<PasswordCheck>,
}

/// Users, games, live tokens, and the limits in front of the password checks.
#[derive(Debug)]
pub struct Auth {
    config: AuthConfig,
    users: HashMap<String, User>,
    /// `None`: every lab (`public_labs = ["*"]`).
    public: Option<BTreeSet<LabId>>,
    sessions: DashMap<String, Session>,
    limiter: LoginLimiter,
    hasher: Arc<Hasher>,
    /// What an unknown user name is checked against.
    dummy: Arc<PasswordCheck>,
    counters: AccessCounters,
    refusal_log: LogThrottle,
    /// The region's session store, for a hub replica.
    share: OnceLock<Arc<dyn SessionShare>>,
    /// Changes the region's store has yet to learn (see [`Auth::follow_shared`]).
    outbox: Mutex<Vec<shared::Outgoing>>,
    outbox_ready: tokio::sync::Notify,
}

impl Auth {
    /// Checks the configuration: unique names, valid hashes within the cost limits, students
    /// in a known game, public labs that are lab ids.
    pub fn new(config: AuthConfig) -> Result<Self, AuthError> {
        let limits = &config.login;
        let mut users = HashMap::new();
        for (i, user) in config.users.iter().enumerate() {
            let bad = |field: &str, problem: String| AuthError::Config {
                key: format!("users[{i}].{field}"),
                problem,
            };
            if user.name.is_empty() {
                return Err(bad("name", "must not be empty".into()));
            }
            let check = PasswordCheck::parse(&user.password_hash).map_err(|problem| {
                bad(
                    "password_hash",
                    format!("{problem} (make one with `demolab-hub hash-password`)"),
                )
            })?;
            if check.memory_kib() > limits.hash_max_memory_kib {
                return Err(bad(
                    "password_hash",
                    format!(
                        "argon2 memory m={} KiB is over [auth.login] hash_max_memory_kib = {}",
                        check.memory_kib(),
                        limits.hash_max_memory_kib
                    ),
                ));
            }
            if check.passes() > limits.hash_max_passes {
                return Err(bad(
                    "password_hash",
                    format!(
                        "argon2 passes t={} are over [auth.login] hash_max_passes = {}",
                        check.passes(),
                        limits.hash_max_passes
                    ),
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
            let user = User {
                config: user.clone(),
                check: Arc::new(check),
            };
            if let Some(twice) = users.insert(user.config.name.clone(), user) {
                return Err(bad(
                    "name",
                    format!("user {:?} is listed twice", twice.config.name),
                ));
            }
        }
        let public = public_labs(&config)?;
        if config.token_ttl_s == 0 {
            return Err(AuthError::Config {
                key: "token_ttl_s".into(),
                problem: "must be at least 1".into(),
            });
        }
        if limits.hash_concurrency == 0 {
            return Err(AuthError::Config {
                key: "login.hash_concurrency".into(),
                problem: "must be at least 1".into(),
            });
        }
        // Unknown names cost what the most expensive known one does.
        let dummy = users
            .values()
            .max_by_key(|u| (u.check.memory_kib(), u.check.passes()))
            .map_or_else(PasswordCheck::unmatchable, |u| u.check.dummy_like());
        let memory = users
            .values()
            .map(|u| u.check.memory_kib())
            .chain([dummy.memory_kib()])
            .max()
            .unwrap_or_default();
        Ok(Self {
            hasher: Arc::new(Hasher::new(
                limits.hash_concurrency,
                Duration::from_millis(limits.hash_wait_ms),
                memory,
            )),
            limiter: LoginLimiter::new(limits.clone()),
            dummy: Arc::new(dummy),
            public,
            config,
            users,
            sessions: DashMap::new(),
            counters: AccessCounters::default(),
            refusal_log: LogThrottle::new(REFUSAL_LOG_INTERVAL_MS),
            share: OnceLock::new(),
            outbox: Mutex::new(Vec::new()),
            outbox_ready: tokio::sync::Notify::new(),
        })
    }

    /// Who a request without a token is: an anonymous reader of the public labs, if any.
    pub fn anonymous(&self) -> Option<Principal> {
        match &self.public {
            None => Some(Principal::anonymous(None)),
            Some(labs) if labs.is_empty() => None,
            Some(labs) => Some(Principal::anonymous(Some(labs.clone()))),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &AuthConfig {
        &self.config
    }

    /// Games.
    pub fn games(&self) -> &[GameConfig] {
        &self.config.games
    }

    /// The access counters, for `/metrics`.
    pub fn counters(&self) -> &AccessCounters {
        &self.counters
    }

    /// Checks a password and hands out a token, within the rate limits and the hashing cap.
    /// Unknown names take as long as wrong passwords.
    pub async fn login(
        &self,
        client: IpAddr,
        name: &str,
        password: String,
        now_ms: u64,
    ) -> Result<Login, AuthError> {
        self.admit_attempt(client, name, now_ms)
            .map_err(AuthError::RateLimited)?;
        let user = self.users.get(name);
        let check = user.map_or_else(|| self.dummy.clone(), |u| u.check.clone());
        let matched = match self.hasher.check(check, password).await {
            Ok(matched) => matched,
            Err(Busy) => {
                self.refused(AccessEvent::HashingBusy, client, name, now_ms);
                return Err(AuthError::Busy);
            }
        };
        let Some(user) = user.filter(|_| matched) else {
            self.limiter.failed(client, name, now_ms);
            self.refused(AccessEvent::BadCredentials, client, name, now_ms);
            return Err(AuthError::BadCredentials);
        };
        self.limiter.succeeded(client, name);
        self.counters.count(AccessEvent::Login);
        let login = self.open_session(&user.config, now_ms);
        // In the region's store before the token is handed out: the next request may go to
        // another replica.
        if let Some(share) = self.share.get() {
            let shared = SharedSession {
                principal: login.principal.clone(),
                expires_at: login.expires_at,
            };
            if let Err(err) = share.put(token_hash(&login.token), shared).await {
                self.sessions.remove(&login.token);
                warn!(%err, "login refused: the region's session store is unreachable");
                return Err(err.into());
            }
        }
        Ok(login)
    }

    fn refused(&self, event: AccessEvent, client: IpAddr, name: &str, now_ms: u64) {
        self.counters.count(event);
        if let Some(held_back) = self.refusal_log.admit(now_ms) {
            let user: String = name.chars().take(64).collect();
            warn!(%client, %user, ?event, held_back, "login refused");
        }
    }

    fn open_session(&self, user: &UserConfig, now_ms: u64) -> Login {
        let labs = match (user.role, &user.game) {
            (Role::Student, Some(game)) => Some(
                self.config
                    .games
                    .iter()
                    .filter(|g| &g.id == game)
                    .flat_map(|g| g.labs.iter().cloned())
                    .chain(self.public.iter().flatten().cloned())
                    .collect(),
            ),
            _ => None,
        };
        let principal = Principal {
            user: user.name.clone(),
            role: Some(user.role),
            labs,
            team: None,
        };
        let expires_at = now_ms.saturating_add(self.config.token_ttl_s.saturating_mul(1000));
        self.insert_session(principal, expires_at, now_ms)
    }

    /// A token for a team of a game: it reads the game's labs only (not the public ones, so
    /// that a team sees exactly its game), writes nothing, and lives until `expires_at` or
    /// until [`Auth::end_game_sessions`].
    pub fn team_session(
        &self,
        game: &str,
        team: &str,
        team_name: &str,
        labs: BTreeSet<LabId>,
        expires_at: u64,
        now_ms: u64,
    ) -> Login {
        let principal = Principal {
            user: team_name.to_owned(),
            role: Some(Role::Student),
            labs: Some(labs),
            team: Some(TeamSeat {
                game: game.to_owned(),
                team: team.to_owned(),
            }),
        };
        self.counters.count(AccessEvent::Login);
        let login = self.insert_session(principal, expires_at, now_ms);
        let shared = SharedSession {
            principal: login.principal.clone(),
            expires_at,
        };
        self.send_later(shared::Outgoing::Put(token_hash(&login.token), shared));
        login
    }

    /// Admits an attempt at a guessable secret other than a password (a game's join code)
    /// through the login rate limits, under the pseudo user name `what`.
    pub fn admit_attempt(&self, client: IpAddr, what: &str, now_ms: u64) -> Result<(), Limited> {
        self.limiter
            .admit(client, what, now_ms)
            .inspect_err(|limited| {
                let event = match limited.reason {
                    Refusal::Address => AccessEvent::RateLimitedAddress,
                    Refusal::User => AccessEvent::RateLimitedUser,
                    Refusal::TableFull => AccessEvent::RateLimitedTableFull,
                };
                self.refused(event, client, what, now_ms);
            })
    }

    /// Counts a wrong guess admitted by [`Auth::admit_attempt`].
    pub fn attempt_failed(&self, client: IpAddr, what: &str, now_ms: u64) {
        self.limiter.failed(client, what, now_ms);
    }

    /// Ends every team token of `game` (and the streams opened with them).
    pub fn end_game_sessions(&self, game: &str) -> usize {
        let mut ended = 0;
        self.sessions.retain(|_, session| {
            let of_game = session
                .principal
                .team
                .as_ref()
                .is_some_and(|seat| seat.game == game);
            if of_game {
                session.lifetime.revoked.cancel();
                ended += 1;
            }
            !of_game
        });
        self.send_later(shared::Outgoing::EndGame(game.to_owned()));
        ended
    }

    /// The team of a live team token whose team id is `team` (how the embedded broker checks
    /// an MQTT login of a team: user name = team id, password = token).
    pub fn team_login(&self, team: &str, token: &str, now_ms: u64) -> Option<Principal> {
        self.session(token, now_ms)
            .filter(|p| p.team.as_ref().is_some_and(|seat| seat.team == team))
    }

    /// Whether some live team token belongs to `team`.
    pub fn team_is_live(&self, team: &str, now_ms: u64) -> Option<BTreeSet<LabId>> {
        self.sessions.iter().find_map(|entry| {
            let session = entry.value();
            let seat = session.principal.team.as_ref()?;
            (seat.team == team && session.lifetime.expires_at > now_ms)
                .then(|| session.principal.labs.clone().unwrap_or_default())
        })
    }

    fn insert_session(&self, principal: Principal, expires_at: u64, now_ms: u64) -> Login {
        let token = new_token();
        self.sessions.retain(|_, s| s.lifetime.expires_at > now_ms);
        self.sessions.insert(
            token.clone(),
            Session {
                principal: principal.clone(),
                lifetime: Lifetime {
                    expires_at,
                    revoked: CancellationToken::new(),
                },
            },
        );
        Login {
            token,
            expires_at,
            principal,
        }
    }

    /// The principal of a live token.
    pub fn session(&self, token: &str, now_ms: u64) -> Option<Principal> {
        self.session_with_lifetime(token, now_ms).map(|(p, _)| p)
    }

    /// The principal of a live token and its lifetime, for streams that must end with it.
    pub fn session_with_lifetime(&self, token: &str, now_ms: u64) -> Option<(Principal, Lifetime)> {
        let session = self.sessions.get(token)?;
        (session.lifetime.expires_at > now_ms)
            .then(|| (session.principal.clone(), session.lifetime.clone()))
    }

    /// The principal of a live token and its lifetime, from this hub or, for a replica, from
    /// the region's session store.
    pub async fn resolve(
        &self,
        token: &str,
        now_ms: u64,
    ) -> Result<Option<(Principal, Lifetime)>, AuthError> {
        if let Some(found) = self.session_with_lifetime(token, now_ms) {
            return Ok(Some(found));
        }
        let adopted = self.adopt(token, now_ms).await?;
        Ok(adopted
            .filter(|session| session.lifetime.expires_at > now_ms)
            .map(|session| (session.principal, session.lifetime)))
    }

    /// Ends a session; its streams end at once, here and (within [`FOLLOW_EVERY`]) on the
    /// region's other replicas.
    pub async fn logout(&self, token: &str) {
        if let Some((_, session)) = self.sessions.remove(token) {
            session.lifetime.revoked.cancel();
        }
        if let Some(share) = self.share.get()
            && let Err(err) = share.end(token_hash(token)).await
        {
            warn!(%err, "logout not yet in the region's session store; retrying");
            self.send_later(shared::Outgoing::End(token_hash(token)));
        }
    }
}

/// How often a refused login may be logged (the rest are counted in `held_back`).
const REFUSAL_LOG_INTERVAL_MS: u64 = 10_000;

/// The embedded broker's view of team tokens: MQTT user name = team id, password = token; the
/// team reads the JSON topics of its game's labs while its token lives.
#[derive(Debug)]
pub struct TeamLogins(pub Arc<Auth>);

impl broker::access::TokenLogins for TeamLogins {
    fn login(&self, user: &str, password: &[u8]) -> Option<Vec<LabId>> {
        let token = std::str::from_utf8(password).ok()?;
        self.0
            .team_login(user, token, now_ms())
            .and_then(|p| p.labs)
            .map(|labs| labs.into_iter().collect())
    }

    fn labs(&self, user: &str) -> Option<Vec<LabId>> {
        self.0
            .team_is_live(user, now_ms())
            .map(|labs| labs.into_iter().collect())
    }
}

fn public_labs(config: &AuthConfig) -> Result<Option<BTreeSet<LabId>>, AuthError> {
    let mut labs = BTreeSet::new();
    for (i, lab) in config.public_labs.iter().enumerate() {
        let bad = |problem: String| AuthError::Config {
            key: format!("public_labs[{i}]"),
            problem,
        };
        if lab == "*" {
            if config.public_labs.len() > 1 {
                return Err(bad("\"*\" (every lab) stands alone".into()));
            }
            if !config.games.is_empty() {
                return Err(bad(
                    "\"*\" would make the labs of games public too; list the public labs".into(),
                ));
            }
            return Ok(None);
        }
        labs.insert(lab.parse().map_err(|err| bad(format!("{err}")))?);
    }
    Ok(Some(labs))
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

    const HERE: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    fn cheap(password: &str) -> String {
        use argon2::PasswordHasher;
        let params = argon2::Params::new(64, 1, 1, None).expect("params");
        argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
            .hash_password(password.as_bytes())
            .expect("hash")
            .to_string()
    }

    fn config() -> AuthConfig {
        AuthConfig {
            public_labs: vec!["lab-p".into()],
            token_ttl_s: 60,
            users: vec![
                UserConfig {
                    name: "olga".into(),
                    role: Role::Operator,
                    password_hash: cheap("turning"),
                    game: None,
                },
                UserConfig {
                    name: "sam".into(),
                    role: Role::Student,
                    password_hash: cheap("milling"),
                    game: Some("g1".into()),
                },
            ],
            games: vec![GameConfig {
                id: "g1".into(),
                name: "Game one".into(),
                labs: vec!["lab-a".parse().expect("valid")],
            }],
            ..AuthConfig::default()
        }
    }

    fn lab(id: &str) -> LabId {
        id.parse().expect("valid")
    }

    /// A region's session store kept in memory, for two `Auth`s in one test; the PostgreSQL one
    /// is exercised by `tests/tests/hub_replicas.rs`.
    #[derive(Debug, Default)]
    struct MemoryShare {
        sessions: std::sync::Mutex<HashMap<TokenHash, (SharedSession, Option<i64>)>>,
        ends: std::sync::atomic::AtomicI64,
    }

    impl MemoryShare {
        fn next_end(&self) -> i64 {
            self.ends.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1
        }

        fn stored(&self) -> Vec<TokenHash> {
            self.sessions
                .lock()
                .expect("lock")
                .keys()
                .copied()
                .collect()
        }
    }

    impl SessionShare for MemoryShare {
        fn put(&self, hash: TokenHash, session: SharedSession) -> ShareFuture<'_, ()> {
            self.sessions
                .lock()
                .expect("lock")
                .insert(hash, (session, None));
            Box::pin(async { Ok(()) })
        }

        fn get(&self, hash: TokenHash, now_ms: u64) -> ShareFuture<'_, Option<SharedSession>> {
            let sessions = self.sessions.lock().expect("lock");
            let found = sessions
                .get(&hash)
                .filter(|(session, end)| end.is_none() && session.expires_at > now_ms)
                .map(|(session, _)| session.clone());
            Box::pin(async move { Ok(found) })
        }

        fn end(&self, hash: TokenHash) -> ShareFuture<'_, ()> {
            let end = self.next_end();
            if let Some((_, ended)) = self.sessions.lock().expect("lock").get_mut(&hash) {
                ended.get_or_insert(end);
            }
            Box::pin(async { Ok(()) })
        }

        fn end_game(&self, game: String) -> ShareFuture<'_, ()> {
            let end = self.next_end();
            for (session, ended) in self.sessions.lock().expect("lock").values_mut() {
                if session
                    .principal
                    .team
                    .as_ref()
                    .is_some_and(|seat| seat.game == game)
                {
                    ended.get_or_insert(end);
                }
            }
            Box::pin(async { Ok(()) })
        }

        fn ended_since(&self, cursor: i64) -> ShareFuture<'_, (Vec<TokenHash>, i64)> {
            let sessions = self.sessions.lock().expect("lock");
            let ended: Vec<(TokenHash, i64)> = sessions
                .iter()
                .filter_map(|(hash, (_, end))| end.filter(|e| *e > cursor).map(|e| (*hash, e)))
                .collect();
            let next = ended.iter().map(|(_, e)| *e).max().unwrap_or(cursor);
            Box::pin(async move { Ok((ended.into_iter().map(|(hash, _)| hash).collect(), next)) })
        }
    }

    fn sharing(share: &Arc<MemoryShare>, cancel: &CancellationToken) -> Arc<Auth> {
        let auth = Arc::new(Auth::new(config()).expect("valid"));
        auth.share_sessions(share.clone());
        tokio::spawn(auth.clone().follow_shared(cancel.clone()));
        auth
    }

    /// Waits for `lifetime` to end, at most a few rounds of [`FOLLOW_EVERY`].
    async fn ends(lifetime: &Lifetime) -> SessionEnd {
        tokio::time::timeout(FOLLOW_EVERY * 10, lifetime.ended())
            .await
            .expect("ended in time")
    }

    #[tokio::test]
    async fn replicas_sharing_sessions_honour_each_others_tokens_and_logouts() {
        let share = Arc::new(MemoryShare::default());
        let cancel = CancellationToken::new();
        let _stop = cancel.clone().drop_guard();
        let (a, b) = (sharing(&share, &cancel), sharing(&share, &cancel));
        let now = now_ms();
        let login = a
            .login(HERE, "olga", "turning".into(), now)
            .await
            .expect("login");
        assert_eq!(
            share.stored(),
            vec![token_hash(&login.token)],
            "stored by its hash before the token is handed out"
        );
        let (principal, lifetime) = b
            .resolve(&login.token, now)
            .await
            .expect("store")
            .expect("live");
        assert_eq!(
            (principal.user.as_str(), lifetime.expires_at),
            ("olga", login.expires_at)
        );
        assert!(matches!(b.resolve("made-up", now).await, Ok(None)));
        // Logged out where it was handed out: the replica that adopted it ends it too.
        a.logout(&login.token).await;
        assert_eq!(ends(&lifetime).await, SessionEnd::LoggedOut);
        assert_eq!(b.session(&login.token, now), None);
        assert!(matches!(b.resolve(&login.token, now).await, Ok(None)));
    }

    #[tokio::test]
    async fn a_games_end_reaches_the_team_tokens_other_replicas_adopted() {
        let share = Arc::new(MemoryShare::default());
        let cancel = CancellationToken::new();
        let _stop = cancel.clone().drop_guard();
        let (a, b) = (sharing(&share, &cancel), sharing(&share, &cancel));
        let now = now_ms();
        let team = a.team_session(
            "g1",
            "t1",
            "Team one",
            [lab("lab-a")].into(),
            now + 60_000,
            now,
        );
        // Team tokens reach the store within a round of the follower.
        let adopted = tokio::time::timeout(FOLLOW_EVERY * 10, async {
            loop {
                if let Ok(Some(found)) = b.resolve(&team.token, now).await {
                    return found;
                }
                tokio::time::sleep(FOLLOW_EVERY / 5).await;
            }
        })
        .await
        .expect("shared in time");
        assert_eq!(adopted.0.team, team.principal.team);
        assert_eq!(a.end_game_sessions("g1"), 1);
        assert_eq!(ends(&adopted.1).await, SessionEnd::LoggedOut);
    }

    #[tokio::test]
    async fn logins_give_tokens_scoped_by_role_game_and_public_labs() {
        let auth = Auth::new(config()).expect("valid");
        let operator = auth
            .login(HERE, "olga", "turning".into(), 1000)
            .await
            .expect("login");
        let principal = auth.session(&operator.token, 2000).expect("live");
        assert!(principal.has(Role::Operator) && !principal.has(Role::Admin));
        assert!(principal.can_read(&lab("lab-b")));

        let student = auth
            .login(HERE, "sam", "milling".into(), 1000)
            .await
            .expect("login");
        let principal = auth.session(&student.token, 2000).expect("live");
        assert!(!principal.has(Role::Operator));
        assert!(principal.can_read(&lab("lab-a")) && principal.can_read(&lab("lab-p")));
        assert!(!principal.can_read(&lab("lab-b")));

        let anonymous = auth.anonymous().expect("public labs exist");
        assert!(anonymous.can_read(&lab("lab-p")) && !anonymous.can_read(&lab("lab-a")));

        assert_eq!(auth.session(&student.token, 1000 + 61_000), None, "expired");
        auth.logout(&operator.token).await;
        assert_eq!(auth.session(&operator.token, 2000), None);
        assert_eq!(auth.counters().get(AccessEvent::Login), 2);
    }

    #[tokio::test]
    async fn a_logout_ends_the_lifetime_streams_watch() {
        let auth = Auth::new(config()).expect("valid");
        let login = auth
            .login(HERE, "olga", "turning".into(), now_ms())
            .await
            .expect("login");
        let (_, lifetime) = auth
            .session_with_lifetime(&login.token, now_ms())
            .expect("live");
        auth.logout(&login.token).await;
        assert_eq!(lifetime.ended().await, SessionEnd::LoggedOut);
    }

    #[tokio::test]
    async fn wrong_passwords_and_unknown_users_look_the_same() {
        let auth = Auth::new(config()).expect("valid");
        assert_eq!(
            auth.login(HERE, "olga", "milling".into(), 0)
                .await
                .map(|_| ()),
            Err(AuthError::BadCredentials)
        );
        assert_eq!(
            auth.login(HERE, "nobody", "x".into(), 0).await.map(|_| ()),
            Err(AuthError::BadCredentials)
        );
        assert_eq!(auth.counters().get(AccessEvent::BadCredentials), 2);
    }

    #[tokio::test]
    async fn repeated_failures_are_rate_limited_for_that_address_only() {
        let auth = Auth::new(config()).expect("valid");
        let attacker: IpAddr = "10.0.0.66".parse().expect("ip");
        for _ in 0..5 {
            let refused = auth.login(attacker, "olga", "guess".into(), 0).await;
            assert_eq!(refused.map(|_| ()), Err(AuthError::BadCredentials));
        }
        let refused = auth.login(attacker, "olga", "turning".into(), 0).await;
        assert!(
            matches!(
                refused,
                Err(AuthError::RateLimited(Limited {
                    reason: Refusal::User,
                    ..
                }))
            ),
            "{refused:?}"
        );
        auth.login(HERE, "olga", "turning".into(), 0)
            .await
            .expect("the real user");
        assert_eq!(auth.counters().get(AccessEvent::RateLimitedUser), 1);
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
        let mut bad = config();
        bad.login.hash_max_memory_kib = 32;
        let err = Auth::new(bad).expect_err("too costly");
        assert!(err.to_string().contains("hash_max_memory_kib"), "{err}");
        let mut bad = config();
        bad.public_labs = vec!["*".into()];
        let err = Auth::new(bad).expect_err("every lab while games exist");
        assert!(err.to_string().starts_with("public_labs[0]:"), "{err}");
        let mut bad = config();
        bad.public_labs = vec!["Lab A".into()];
        let err = Auth::new(bad).expect_err("not a lab id");
        assert!(err.to_string().starts_with("public_labs[0]:"), "{err}");
    }

    #[test]
    fn without_games_a_star_makes_every_lab_public_and_nothing_is_public_by_default() {
        let every = AuthConfig {
            public_labs: vec!["*".into()],
            ..AuthConfig::default()
        };
        let anonymous = Auth::new(every)
            .expect("valid")
            .anonymous()
            .expect("readers");
        assert!(anonymous.can_read(&lab("any-lab")));
        assert_eq!(
            Auth::new(AuthConfig::default()).expect("valid").anonymous(),
            None
        );
    }
}
