//! Innovation games: a teacher makes a game from a template, teams join with a code and answer
//! challenges that the hub scores against the machines' own history.
//!
//! A game stages its fault through the demo's scenario control: some minutes into the game the
//! hub starts the template's scenario on one machine of the game's labs, chosen at random, and
//! records when. That machine and that moment are the truth the answers are scored against;
//! energy and limits are judged on the history the teams can read themselves.
//!
//! Teams have no accounts: joining with the code gives a token that reads the game's labs only
//! (REST, streams, and the game's JSON topics over MQTT with the team id as user name), writes
//! nothing, and ends with the game. Joining again with the same name gives the team a new token
//! (a closed laptop, a hub restart). Games, teams, answers and hints are kept in the hub's
//! database, one document written after each change.

pub mod model;
pub mod scoring;
pub mod template;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use protocol::{LabId, MetricName};
use redb::ReadableDatabase;
use serde::{Deserialize, Serialize};

use crate::auth::{Auth, Login, Principal, Role, TeamSeat};
use crate::history::{self, TimeRange};
use crate::scenarios::ScenarioControl;
use crate::store::TwinStore;
use crate::twin::TwinKey;
use model::{Answer, Fault, Game, HintTaken, Periods, Phase, Team};
use scoring::Marked;
use template::{Challenge, ChallengeKind, Direction, GameTemplate, Hint};

/// The document games are kept in.
const DOCUMENT: &str = "games";
/// Join codes use letters and digits nobody confuses when read off a projector.
const CODE_ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
const CODE_LEN: usize = 6;
/// Most teams in one game, and most games kept.
pub const MAX_TEAMS: usize = 64;
/// Most games kept; the oldest ended ones make room.
pub const MAX_GAMES: usize = 200;
const TEAM_NAME_MAX: usize = 40;
/// How far back a meter reading is looked for at a period's edge.
const READING_LOOKBACK_MS: u64 = 120_000;

/// Why a game request was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GameError {
    /// No game with that id, or none the caller may see.
    #[error("no game {0}")]
    NotFound(String),
    /// No open or running game has that join code.
    #[error("no open game has the code {0:?}")]
    BadCode(String),
    /// No template of that name.
    #[error("no game template {0:?}; the hub has {1}")]
    TemplateNotFound(String, String),
    /// No challenge of that id in the game.
    #[error("the game has no challenge {0:?}")]
    ChallengeNotFound(String),
    /// The game is not in a phase that allows this.
    #[error("{0}")]
    WrongPhase(String),
    /// The team answered this challenge already.
    #[error("the team has answered {0} already")]
    AlreadyAnswered(String),
    /// No hint left.
    #[error("no more hints for {0}")]
    NoMoreHints(String),
    /// An energy period is not over yet.
    #[error("the measured period ends at {0} ms since the epoch; answer after it")]
    PeriodNotOver(u64),
    /// A setting or an answer is unusable.
    #[error("{0}")]
    Invalid(String),
    /// No simulated machine of the game's labs can stage the template's fault.
    #[error("{0}")]
    NoMachine(String),
    /// The caller may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// The database failed.
    #[error("storage: {0}")]
    Storage(String),
}

/// What a teacher asks for.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewGame {
    /// Template id (see `GET /api/v1/games/templates`).
    pub template: String,
    /// Display name; the template's title if absent.
    #[serde(default)]
    pub name: Option<String>,
    /// Labs to play on; by default every lab with a machine the template's fault can run on.
    #[serde(default)]
    #[schema(value_type = Option<Vec<String>>)]
    pub labs: Option<Vec<LabId>>,
    /// Playing time in minutes; the template's if absent.
    #[serde(default)]
    pub duration_min: Option<f64>,
    /// Speed of the scenario's changes; the template's if absent.
    #[serde(default)]
    pub speed: Option<f64>,
}

/// A team's place.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Standing {
    /// 1 for the best; equal scores share a rank.
    pub rank: usize,
    /// Team id.
    pub team_id: String,
    /// Team name.
    pub team: String,
    /// Points.
    pub score: u32,
    /// Challenges answered.
    pub answered: usize,
}

/// The truth of one challenge, for the teacher.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct KeyEntry {
    /// The challenge.
    pub challenge: String,
    /// The right answer where one exists yet (`null` for a limit, which is judged on the
    /// history, or before the fault or the measured period).
    pub truth: Option<serde_json::Value>,
}

/// A game as its teacher sees it: everything, with the answer key and the standings.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct GameView {
    /// The game.
    #[serde(flatten)]
    pub game: Game,
    /// When the clock runs out.
    pub ends_at_ms: Option<u64>,
    /// Title of its template.
    pub title: String,
    /// The challenges.
    pub challenges: Vec<Challenge>,
    /// The answer key.
    pub key: Vec<KeyEntry>,
    /// Teams by score.
    pub standings: Vec<Standing>,
}

/// A challenge as a team sees it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TeamChallenge {
    /// Challenge id.
    pub id: String,
    /// What is asked and how it is scored (no truth in it).
    #[serde(flatten)]
    pub kind: ChallengeKind,
    /// Points for a perfect answer.
    pub points: u32,
    /// English.
    pub question: String,
    /// Danish.
    pub question_da: String,
    /// Hints not yet taken.
    pub hints_left: usize,
    /// Cost of the next hint.
    pub next_hint_cost: Option<u32>,
    /// Hints taken, in order.
    pub hints: Vec<Hint>,
    /// The team's answer.
    pub answer: Option<Answer>,
    /// Points after hint costs.
    pub score: u32,
}

/// A game as a team sees it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TeamView {
    /// Game id.
    pub game: String,
    /// Game name.
    pub name: String,
    /// Template title.
    pub title: String,
    /// Danish title.
    pub title_da: String,
    /// The case.
    pub story: String,
    /// Danish.
    pub story_da: String,
    /// Where the game is.
    pub phase: Phase,
    /// The labs the team reads.
    #[schema(value_type = Vec<String>)]
    pub labs: Vec<LabId>,
    /// When the clock started.
    pub started_at_ms: Option<u64>,
    /// When it runs out.
    pub ends_at_ms: Option<u64>,
    /// The energy periods.
    pub periods: Option<Periods>,
    /// Team id.
    pub team_id: String,
    /// Team name.
    pub team: String,
    /// Points.
    pub score: u32,
    /// The challenges.
    pub challenges: Vec<TeamChallenge>,
}

/// A team's new token.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Joined {
    /// Bearer token (also the MQTT password, with `team_id` as user name).
    pub token: String,
    /// When it expires at the latest (it ends with the game).
    pub expires_at: u64,
    /// Game id.
    pub game: String,
    /// Team id.
    pub team_id: String,
    /// Team name.
    pub team: String,
}

/// A fault whose time has come.
struct DueFault {
    game: String,
    twin: String,
    speed: f64,
    scenario: String,
}

#[derive(Debug, Default)]
struct State {
    games: Vec<Game>,
    version: u64,
}

/// The hub's games.
#[derive(Debug)]
pub struct Games {
    auth: Arc<Auth>,
    store: Arc<TwinStore>,
    scenarios: Option<Arc<dyn ScenarioControl>>,
    templates: Vec<GameTemplate>,
    state: Mutex<State>,
    saved: Mutex<u64>,
}

type Result<T> = std::result::Result<T, GameError>;

impl Games {
    /// The games kept in `store`, played with the shipped templates.
    pub fn open(
        auth: Arc<Auth>,
        store: Arc<TwinStore>,
        scenarios: Option<Arc<dyn ScenarioControl>>,
    ) -> Result<Self> {
        let games: Vec<Game> = store
            .document(DOCUMENT)
            .map_err(|err| GameError::Storage(err.to_string()))?
            .unwrap_or_default();
        Ok(Self {
            auth,
            store,
            scenarios,
            templates: template::shipped(),
            state: Mutex::new(State { games, version: 0 }),
            saved: Mutex::new(0),
        })
    }

    /// The templates.
    pub fn templates(&self) -> &[GameTemplate] {
        &self.templates
    }

    fn template(&self, id: &str) -> Result<&GameTemplate> {
        self.templates.iter().find(|t| t.id == id).ok_or_else(|| {
            let known: Vec<&str> = self.templates.iter().map(|t| t.id.as_str()).collect();
            GameError::TemplateNotFound(id.to_owned(), known.join(", "))
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind; carrying on with it beats
        // refusing every game for the rest of the class.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Changes one game under the lock, then stores all of them.
    fn change<T>(&self, id: &str, f: impl FnOnce(&mut Game) -> Result<T>) -> Result<T> {
        let (out, bytes, version) = {
            let mut state = self.lock();
            let game = state
                .games
                .iter_mut()
                .find(|g| g.id == id)
                .ok_or_else(|| GameError::NotFound(id.to_owned()))?;
            let out = f(game)?;
            state.version += 1;
            (out, state.games.clone(), state.version)
        };
        self.save(&bytes, version)?;
        Ok(out)
    }

    fn save(&self, games: &[Game], version: u64) -> Result<()> {
        let mut saved = self.saved.lock().unwrap_or_else(|e| e.into_inner());
        // A later snapshot may have been written while this one waited.
        if *saved >= version {
            return Ok(());
        }
        let storage = |err: String| GameError::Storage(err);
        let txn = self
            .store
            .database()
            .begin_write()
            .map_err(|e| storage(e.to_string()))?;
        self.store
            .put_document(&txn, DOCUMENT, &games)
            .map_err(|e| storage(e.to_string()))?;
        txn.commit().map_err(|e| storage(e.to_string()))?;
        *saved = version;
        Ok(())
    }

    fn insert(&self, game: Game) -> Result<()> {
        let (games, version) = {
            let mut state = self.lock();
            if state.games.len() >= MAX_GAMES {
                let oldest_ended = state
                    .games
                    .iter()
                    .enumerate()
                    .filter(|(_, g)| g.phase == Phase::Ended)
                    .min_by_key(|(_, g)| g.created_at_ms)
                    .map(|(i, _)| i);
                match oldest_ended {
                    Some(i) => {
                        state.games.remove(i);
                    }
                    None => {
                        return Err(GameError::Invalid(format!(
                            "{MAX_GAMES} games are not over yet; end one first"
                        )));
                    }
                }
            }
            state.games.push(game);
            state.version += 1;
            (state.games.clone(), state.version)
        };
        self.save(&games, version)
    }

    /// Makes a game from a template; it opens for teams at once.
    pub fn create(&self, by: &Principal, request: &NewGame, now_ms: u64) -> Result<GameView> {
        require_teacher(by)?;
        let template = self.template(&request.template)?;
        let duration_min = request.duration_min.unwrap_or(template.duration_min);
        if !(duration_min * 60.0 >= template::MIN_DURATION_S as f64
            && duration_min <= template::MAX_DURATION_MIN)
        {
            return Err(GameError::Invalid(format!(
                "duration_min: {duration_min} is outside {}..={}",
                template::MIN_DURATION_S as f64 / 60.0,
                template::MAX_DURATION_MIN
            )));
        }
        let speed = request.speed.unwrap_or(template.speed);
        if !(speed.is_finite() && (1.0..=1000.0).contains(&speed)) {
            return Err(GameError::Invalid(format!(
                "speed: {speed} is outside 1..=1000"
            )));
        }
        let Some(control) = &self.scenarios else {
            return Err(GameError::NoMachine(
                "this hub runs no simulated machines, so it cannot stage a game's fault".into(),
            ));
        };
        let candidates: Vec<String> = control
            .available()
            .into_iter()
            .filter(|s| s.name == template.scenario)
            .flat_map(|s| s.machines)
            .filter(|twin| {
                TwinKey::parse(twin).is_some_and(|key| {
                    request
                        .labs
                        .as_ref()
                        .is_none_or(|labs| labs.contains(&key.lab))
                })
            })
            .collect();
        if candidates.is_empty() {
            return Err(GameError::NoMachine(format!(
                "no simulated machine in {} can run the scenario {}",
                request
                    .labs
                    .as_ref()
                    .map_or("any lab".to_owned(), |labs| labs
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")),
                template.scenario
            )));
        }
        let labs: Vec<LabId> = match &request.labs {
            Some(labs) => labs.clone(),
            None => candidates
                .iter()
                .filter_map(|twin| TwinKey::parse(twin).map(|k| k.lab))
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect(),
        };
        let twin = candidates[rand::random_range(0..candidates.len())].clone();
        let duration_ms = (duration_min * 60_000.0) as u64;
        // Between a quarter and 40 % into the game: after the reference period (the first
        // fifth), early enough to leave time to find it.
        let delay_ms = duration_ms / 4 + rand::random_range(0..=duration_ms * 3 / 20);
        let code = self.new_code();
        let game = Game {
            id: format!("g-{:08x}", rand::random::<u32>()),
            name: request
                .name
                .as_deref()
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map_or_else(|| template.title.clone(), |n| clip(n, 80)),
            template: template.id.clone(),
            labs,
            code,
            phase: Phase::Open,
            created_by: by.user.clone(),
            created_at_ms: now_ms,
            duration_ms,
            speed,
            started_at_ms: None,
            paused_at_ms: None,
            paused_total_ms: 0,
            ended_at_ms: None,
            fault: Fault {
                twin,
                delay_ms,
                started_at_ms: None,
            },
            periods: None,
            teams: Vec::new(),
        };
        self.insert(game.clone())?;
        tracing::info!(game = %game.id, template = %game.template, by = %by.user, "game created");
        Ok(self.view(game, now_ms))
    }

    fn new_code(&self) -> String {
        let state = self.lock();
        loop {
            let code: String = (0..CODE_LEN)
                .map(|_| CODE_ALPHABET[rand::random_range(0..CODE_ALPHABET.len())] as char)
                .collect();
            if !state
                .games
                .iter()
                .any(|g| g.code == code && g.phase != Phase::Ended)
            {
                return code;
            }
        }
    }

    fn visible(&self, by: &Principal, id: &str) -> Result<Game> {
        require_teacher(by)?;
        let state = self.lock();
        state
            .games
            .iter()
            .find(|g| g.id == id && may_manage(by, g))
            .cloned()
            .ok_or_else(|| GameError::NotFound(id.to_owned()))
    }

    /// The games the caller runs (operators: all), newest first.
    pub fn list(&self, by: &Principal, now_ms: u64) -> Result<Vec<GameView>> {
        require_teacher(by)?;
        let mut games: Vec<Game> = self
            .lock()
            .games
            .iter()
            .filter(|g| may_manage(by, g))
            .cloned()
            .collect();
        games.sort_by_key(|g| std::cmp::Reverse(g.created_at_ms));
        Ok(games.into_iter().map(|g| self.view(g, now_ms)).collect())
    }

    /// One game, for its teacher.
    pub fn get(&self, by: &Principal, id: &str, now_ms: u64) -> Result<GameView> {
        Ok(self.view(self.visible(by, id)?, now_ms))
    }

    fn view(&self, game: Game, now_ms: u64) -> GameView {
        let template = self.template(&game.template).ok();
        let challenges = template.map(|t| t.challenges.clone()).unwrap_or_default();
        let key = challenges
            .iter()
            .map(|c| KeyEntry {
                challenge: c.id.clone(),
                truth: self.truth(&game, c, now_ms),
            })
            .collect();
        GameView {
            ends_at_ms: game.ends_at_ms(now_ms),
            title: template.map(|t| t.title.clone()).unwrap_or_default(),
            standings: standings(&game, &challenges),
            challenges,
            key,
            game,
        }
    }

    fn truth(&self, game: &Game, challenge: &Challenge, now_ms: u64) -> Option<serde_json::Value> {
        match &challenge.kind {
            ChallengeKind::FaultMachine => Some(game.fault.twin.clone().into()),
            ChallengeKind::FaultStart { .. } => game.fault.started_at_ms.map(Into::into),
            ChallengeKind::EnergyWasted { metric } => {
                let periods = game.periods?;
                (now_ms >= periods.measured[1])
                    .then(|| self.energy_wasted(game, metric, periods).ok())
                    .flatten()
                    .map(Into::into)
            }
            ChallengeKind::AlarmThreshold { .. } => None,
        }
    }

    /// Changes the phase of one of the caller's games.
    fn transition(
        &self,
        by: &Principal,
        id: &str,
        now_ms: u64,
        change: impl FnOnce(&mut Game) -> Result<()>,
    ) -> Result<GameView> {
        self.visible(by, id)?;
        let game = self.change(id, |game| {
            change(game)?;
            Ok(game.clone())
        })?;
        tracing::info!(game = %id, phase = ?game.phase, "game phase");
        Ok(self.view(game, now_ms))
    }

    /// Starts the clock.
    pub fn start(&self, by: &Principal, id: &str, now_ms: u64) -> Result<GameView> {
        self.transition(by, id, now_ms, |game| {
            if game.phase != Phase::Open {
                return Err(wrong_phase(game, "only an open game starts"));
            }
            game.phase = Phase::Running;
            game.started_at_ms = Some(now_ms);
            let fifth = game.duration_ms / 5;
            game.periods = Some(Periods {
                reference: [now_ms, now_ms + fifth],
                measured: [now_ms + 3 * fifth, now_ms + 4 * fifth],
            });
            Ok(())
        })
    }

    /// Stops the clock: answers and hints wait; the machines keep running.
    pub fn pause(&self, by: &Principal, id: &str, now_ms: u64) -> Result<GameView> {
        self.transition(by, id, now_ms, |game| {
            if game.phase != Phase::Running {
                return Err(wrong_phase(game, "only a running game pauses"));
            }
            game.phase = Phase::Paused;
            game.paused_at_ms = Some(now_ms);
            Ok(())
        })
    }

    /// Starts the clock again after a pause.
    pub fn resume(&self, by: &Principal, id: &str, now_ms: u64) -> Result<GameView> {
        self.transition(by, id, now_ms, |game| {
            let Some(paused_at) = game.paused_at_ms.filter(|_| game.phase == Phase::Paused) else {
                return Err(wrong_phase(game, "only a paused game resumes"));
            };
            game.paused_total_ms += now_ms.saturating_sub(paused_at);
            game.paused_at_ms = None;
            game.phase = Phase::Running;
            Ok(())
        })
    }

    /// Ends the game now: team tokens stop working, the fault is taken back.
    pub fn end(&self, by: &Principal, id: &str, now_ms: u64) -> Result<GameView> {
        self.visible(by, id)?;
        let game = self.finish(id, now_ms)?;
        Ok(self.view(game, now_ms))
    }

    fn finish(&self, id: &str, now_ms: u64) -> Result<Game> {
        let game = self.change(id, |game| {
            if game.phase == Phase::Ended {
                return Err(GameError::WrongPhase("the game is over already".into()));
            }
            if let Some(paused_at) = game.paused_at_ms.take() {
                game.paused_total_ms += now_ms.saturating_sub(paused_at);
            }
            game.phase = Phase::Ended;
            game.ended_at_ms = Some(now_ms);
            Ok(game.clone())
        })?;
        let ended = self.auth.end_game_sessions(id);
        if game.fault.started_at_ms.is_some()
            && let (Some(control), Some(key)) = (&self.scenarios, TwinKey::parse(&game.fault.twin))
        {
            // Another operator may have stopped it already; nothing is left to take back then.
            let _ = control.stop(&key);
        }
        tracing::info!(game = %id, team_tokens = ended, "game ended");
        Ok(game)
    }

    /// Stages due faults and ends games whose time is up; the hub calls it every half second.
    pub fn tick(&self, now_ms: u64) {
        let (due_faults, due_ends): (Vec<DueFault>, Vec<String>) = {
            let state = self.lock();
            let faults = state
                .games
                .iter()
                .filter(|g| g.phase == Phase::Running && g.fault.started_at_ms.is_none())
                .filter(|g| {
                    g.started_at_ms
                        .is_some_and(|s| now_ms >= s + g.paused_total_ms + g.fault.delay_ms)
                })
                .filter_map(|g| {
                    Some(DueFault {
                        game: g.id.clone(),
                        twin: g.fault.twin.clone(),
                        speed: g.speed,
                        scenario: self.template(&g.template).ok()?.scenario.clone(),
                    })
                })
                .collect();
            let ends = state
                .games
                .iter()
                .filter(|g| g.phase == Phase::Running)
                .filter(|g| g.ends_at_ms(now_ms).is_some_and(|end| now_ms >= end))
                .map(|g| g.id.clone())
                .collect();
            (faults, ends)
        };
        for DueFault {
            game: id,
            twin,
            speed,
            scenario,
        } in due_faults
        {
            let started = match (&self.scenarios, TwinKey::parse(&twin)) {
                (Some(control), Some(key)) => control
                    .start_at_speed(&scenario, &key, &format!("game {id}"), now_ms, speed)
                    .map_err(|err| err.to_string()),
                _ => Err("no scenario control".to_owned()),
            };
            match started {
                Ok(_) => {
                    tracing::info!(game = %id, %twin, %scenario, "game fault staged");
                }
                Err(err) => {
                    tracing::warn!(game = %id, %twin, %scenario, "cannot stage the game's fault: {err}");
                }
            }
            // Recorded even when the scenario could not start, so the tick does not retry it
            // twice a second; the teacher sees the time in the answer key.
            let _ = self.change(&id, |game| {
                game.fault.started_at_ms = Some(now_ms);
                Ok(())
            });
        }
        for id in due_ends {
            let _ = self.finish(&id, now_ms);
        }
    }

    /// A team joins the game with this code (or gets a new token for its name).
    pub fn join(&self, code: &str, team_name: &str, now_ms: u64) -> Result<Joined> {
        let code = code.trim().to_ascii_uppercase();
        let name = team_name.trim();
        if name.is_empty() || name.chars().count() > TEAM_NAME_MAX {
            return Err(GameError::Invalid(format!(
                "team: a name of 1 to {TEAM_NAME_MAX} characters"
            )));
        }
        if name.chars().any(char::is_control) {
            return Err(GameError::Invalid(
                "team: no control characters in a name".into(),
            ));
        }
        let id = {
            let state = self.lock();
            state
                .games
                .iter()
                .find(|g| g.code == code && g.phase != Phase::Ended)
                .map(|g| g.id.clone())
                .ok_or_else(|| GameError::BadCode(code.clone()))?
        };
        let (game, team) = self.change(&id, |game| {
            let existing = game
                .teams
                .iter()
                .find(|t| t.name.to_lowercase() == name.to_lowercase())
                .map(|t| t.id.clone());
            let team = match existing {
                Some(team) => team,
                None => {
                    if game.teams.len() >= MAX_TEAMS {
                        return Err(GameError::Invalid(format!(
                            "the game has {MAX_TEAMS} teams, the most it takes"
                        )));
                    }
                    let team = format!("{}-t{}", game.id, game.teams.len() + 1);
                    game.teams.push(Team {
                        id: team.clone(),
                        name: name.to_owned(),
                        joined_at_ms: now_ms,
                        answers: Vec::new(),
                        hints: Vec::new(),
                    });
                    team
                }
            };
            Ok((game.clone(), team))
        })?;
        let team_name = game
            .team(&team)
            .map_or(name, |t| t.name.as_str())
            .to_owned();
        // The token outlives no game: the tick ends it with the game, and this caps it at the
        // longest a game could still last if it is paused for the rest of the day.
        let expires_at = now_ms.saturating_add(self.auth.config().token_ttl_s * 1000);
        let Login {
            token, expires_at, ..
        } = self.auth.team_session(
            &game.id,
            &team,
            &team_name,
            game.labs.iter().cloned().collect(),
            expires_at,
            now_ms,
        );
        tracing::info!(game = %game.id, team = %team, "team joined");
        Ok(Joined {
            token,
            expires_at,
            game: game.id,
            team_id: team,
            team: team_name,
        })
    }

    fn seat(&self, seat: &TeamSeat) -> Result<(Game, &GameTemplate)> {
        let game = self
            .lock()
            .games
            .iter()
            .find(|g| g.id == seat.game)
            .cloned()
            .ok_or_else(|| GameError::NotFound(seat.game.clone()))?;
        let template = self.template(&game.template)?;
        Ok((game, template))
    }

    /// The game as the team sees it.
    pub fn team_view(&self, seat: &TeamSeat, now_ms: u64) -> Result<TeamView> {
        let (game, template) = self.seat(seat)?;
        let team = game
            .team(&seat.team)
            .ok_or_else(|| GameError::NotFound(seat.team.clone()))?;
        let challenges = template
            .challenges
            .iter()
            .map(|c| {
                let taken = team.hints.iter().filter(|h| h.challenge == c.id).count();
                TeamChallenge {
                    id: c.id.clone(),
                    kind: c.kind.clone(),
                    points: c.points,
                    question: c.question.clone(),
                    question_da: c.question_da.clone(),
                    hints_left: c.hints.len().saturating_sub(taken),
                    next_hint_cost: c.hints.get(taken).map(|h| h.cost),
                    hints: c.hints.iter().take(taken).cloned().collect(),
                    answer: team.answers.iter().find(|a| a.challenge == c.id).cloned(),
                    score: team.challenge_score(&c.id),
                }
            })
            .collect();
        Ok(TeamView {
            game: game.id.clone(),
            name: game.name.clone(),
            title: template.title.clone(),
            title_da: template.title_da.clone(),
            story: template.story.clone(),
            story_da: template.story_da.clone(),
            phase: game.phase,
            labs: game.labs.clone(),
            started_at_ms: game.started_at_ms,
            ends_at_ms: game.ends_at_ms(now_ms),
            periods: game.periods,
            team_id: team.id.clone(),
            team: team.name.clone(),
            score: team.score(template.challenges.iter().map(|c| c.id.as_str())),
            challenges,
        })
    }

    fn playing(game: &Game) -> Result<()> {
        match game.phase {
            Phase::Running => Ok(()),
            Phase::Open => Err(GameError::WrongPhase("the game has not started yet".into())),
            Phase::Paused => Err(GameError::WrongPhase("the game is paused".into())),
            Phase::Ended => Err(GameError::WrongPhase("the game is over".into())),
        }
    }

    /// Scores a team's answer and keeps it. Reads history: call it off the async executor.
    pub fn answer(
        &self,
        seat: &TeamSeat,
        challenge_id: &str,
        value: &serde_json::Value,
        now_ms: u64,
    ) -> Result<Answer> {
        let (game, template) = self.seat(seat)?;
        Self::playing(&game)?;
        let challenge = template
            .challenges
            .iter()
            .find(|c| c.id == challenge_id)
            .ok_or_else(|| GameError::ChallengeNotFound(challenge_id.to_owned()))?;
        if game
            .team(&seat.team)
            .is_some_and(|t| t.answers.iter().any(|a| a.challenge == challenge.id))
        {
            return Err(GameError::AlreadyAnswered(challenge.id.clone()));
        }
        let marked = self.mark(&game, challenge, value, now_ms)?;
        let answer = Answer {
            challenge: challenge.id.clone(),
            value: value.clone(),
            answered_at_ms: now_ms,
            points: marked.points,
            reason: marked.reason,
        };
        let kept = answer.clone();
        self.change(&game.id, move |game| {
            Self::playing(game)?;
            let team = game
                .teams
                .iter_mut()
                .find(|t| t.id == seat.team)
                .ok_or_else(|| GameError::NotFound(seat.team.clone()))?;
            // Checked again under the lock: two answers sent at once keep only the first.
            if team.answers.iter().any(|a| a.challenge == kept.challenge) {
                return Err(GameError::AlreadyAnswered(kept.challenge.clone()));
            }
            team.answers.push(kept);
            Ok(())
        })?;
        Ok(answer)
    }

    fn mark(
        &self,
        game: &Game,
        challenge: &Challenge,
        value: &serde_json::Value,
        now_ms: u64,
    ) -> Result<Marked> {
        let number = || {
            value.as_f64().filter(|v| v.is_finite()).ok_or_else(|| {
                GameError::Invalid(format!("value: {} needs a number", challenge.id))
            })
        };
        let not_staged = || GameError::WrongPhase("the fault has not happened yet".into());
        Ok(match &challenge.kind {
            ChallengeKind::FaultMachine => {
                let answer = value.as_str().ok_or_else(|| {
                    GameError::Invalid(format!(
                        "value: {} needs a machine as \"lab/machine\"",
                        challenge.id
                    ))
                })?;
                scoring::fault_machine(
                    challenge.points,
                    answer,
                    &game.fault.twin,
                    game.labs.len() == 1,
                )
            }
            ChallengeKind::FaultStart { tolerance_s } => {
                let answer = number()?;
                if answer < 0.0 {
                    return Err(GameError::Invalid(
                        "value: a time in ms since the epoch".into(),
                    ));
                }
                let truth = game.fault.started_at_ms.ok_or_else(not_staged)?;
                scoring::fault_start(challenge.points, answer as u64, truth, *tolerance_s)
            }
            ChallengeKind::EnergyWasted { metric } => {
                let answer = number()?;
                let periods = game.periods.ok_or_else(not_staged)?;
                if now_ms < periods.measured[1] {
                    return Err(GameError::PeriodNotOver(periods.measured[1]));
                }
                let truth = self.energy_wasted(game, metric, periods)?;
                scoring::energy_wasted(challenge.points, answer, truth)
            }
            ChallengeKind::AlarmThreshold {
                metric,
                direction,
                false_alarm_cost,
            } => {
                let limit = number()?;
                let fault_ms = game.fault.started_at_ms.ok_or_else(not_staged)?;
                let from_ms = game.started_at_ms.ok_or_else(not_staged)?;
                let samples = self.extremes(game, metric, from_ms, now_ms + 1, *direction)?;
                scoring::alarm_threshold(
                    challenge.points,
                    limit,
                    *direction,
                    *false_alarm_cost,
                    &samples,
                    fault_ms,
                )
            }
        })
    }

    /// Takes the challenge's next hint.
    pub fn hint(&self, seat: &TeamSeat, challenge_id: &str) -> Result<Hint> {
        let (game, template) = self.seat(seat)?;
        Self::playing(&game)?;
        let challenge = template
            .challenges
            .iter()
            .find(|c| c.id == challenge_id)
            .ok_or_else(|| GameError::ChallengeNotFound(challenge_id.to_owned()))?
            .clone();
        self.change(&game.id, |game| {
            Self::playing(game)?;
            let team = game
                .teams
                .iter_mut()
                .find(|t| t.id == seat.team)
                .ok_or_else(|| GameError::NotFound(seat.team.clone()))?;
            let index = team
                .hints
                .iter()
                .filter(|h| h.challenge == challenge.id)
                .count();
            let hint = challenge
                .hints
                .get(index)
                .cloned()
                .ok_or_else(|| GameError::NoMoreHints(challenge.id.clone()))?;
            team.hints.push(HintTaken {
                challenge: challenge.id.clone(),
                index,
                cost: hint.cost,
            });
            Ok(hint)
        })
    }

    /// The teams by score. Teachers of the game, its teams, and whoever may read all its labs
    /// (the lab's big screen) may see it.
    pub fn leaderboard(&self, by: &Principal, id: &str) -> Result<Vec<Standing>> {
        let state = self.lock();
        let game = state
            .games
            .iter()
            .find(|g| g.id == id)
            .ok_or_else(|| GameError::NotFound(id.to_owned()))?;
        let allowed = match &by.team {
            Some(seat) => seat.game == game.id,
            None => may_manage(by, game) || game.labs.iter().all(|lab| by.can_read(lab)),
        };
        if !allowed {
            return Err(GameError::NotFound(id.to_owned()));
        }
        let challenges = self
            .template(&game.template)
            .map(|t| t.challenges.clone())
            .unwrap_or_default();
        Ok(standings(game, &challenges))
    }

    /// The results as CSV: one row per team and challenge, then one total row per team.
    pub fn csv(&self, by: &Principal, id: &str) -> Result<String> {
        let game = self.visible(by, id)?;
        let template = self.template(&game.template)?;
        let mut out = String::from(
            "game,team_id,team,challenge,answer,answered_at_ms,points,hint_cost,score,reason\n",
        );
        for team in &game.teams {
            for challenge in &template.challenges {
                let answer = team.answers.iter().find(|a| a.challenge == challenge.id);
                let row = [
                    csv_cell(&game.id),
                    csv_cell(&team.id),
                    csv_cell(&team.name),
                    csv_cell(&challenge.id),
                    answer.map_or_else(String::new, |a| csv_cell(&value_text(&a.value))),
                    answer.map_or_else(String::new, |a| a.answered_at_ms.to_string()),
                    answer.map_or_else(String::new, |a| a.points.to_string()),
                    team.hint_cost(&challenge.id).to_string(),
                    team.challenge_score(&challenge.id).to_string(),
                    answer.map_or_else(String::new, |a| csv_cell(&a.reason)),
                ];
                out.push_str(&row.join(","));
                out.push('\n');
            }
            let total = team.score(template.challenges.iter().map(|c| c.id.as_str()));
            let hints: u32 = team.hints.iter().map(|h| h.cost).sum();
            out.push_str(&format!(
                "{},{},{},total,,,,{hints},{total},\n",
                csv_cell(&game.id),
                csv_cell(&team.id),
                csv_cell(&team.name)
            ));
        }
        Ok(out)
    }

    fn readings(
        &self,
        game: &Game,
        metric: &str,
        range: TimeRange,
        step_ms: Option<u64>,
    ) -> Result<Vec<history::Bucket>> {
        let key = TwinKey::parse(&game.fault.twin)
            .ok_or_else(|| GameError::Invalid(format!("bad twin {}", game.fault.twin)))?;
        let metric: MetricName = metric
            .parse()
            .map_err(|err| GameError::Invalid(format!("metric {metric}: {err}")))?;
        let storage = |err: String| GameError::Storage(err);
        let txn = self
            .store
            .database()
            .begin_read()
            .map_err(|e| storage(e.to_string()))?;
        history::query(&txn, &key, &metric, range, step_ms).map_err(|e| storage(e.to_string()))
    }

    /// The meter's rise over the measured period less its rise over the reference period.
    fn energy_wasted(&self, game: &Game, metric: &str, periods: Periods) -> Result<f64> {
        let rise = |[from, to]: [u64; 2]| -> Result<f64> {
            // Readings near the two edges only: a long game has more samples than one raw
            // query returns.
            let mut samples = Vec::new();
            for (edge, inside) in [(from, true), (to, false)] {
                let range = TimeRange {
                    from_ms: edge.saturating_sub(READING_LOOKBACK_MS),
                    to_ms: edge + 1 + if inside { READING_LOOKBACK_MS } else { 0 },
                };
                samples.extend(
                    self.readings(game, metric, range, None)?
                        .into_iter()
                        .map(|b| (b.start_ms, b.last)),
                );
            }
            samples.sort_by_key(|(at, _)| *at);
            samples.dedup_by_key(|(at, _)| *at);
            scoring::meter_rise(&samples, from, to).ok_or_else(|| {
                GameError::Invalid(format!(
                    "the hub has no {metric} readings of {} around {from}..{to}",
                    game.fault.twin
                ))
            })
        };
        Ok(rise(periods.measured)? - rise(periods.reference)?)
    }

    /// The metric from `from_ms` to `to_ms` as `(time, value)`: the raw samples with their
    /// exact times where they fit in one query (so a sample just after the fault's start is
    /// never taken for one before it), else at most a few thousand buckets, each its maximum
    /// for an upper limit and its minimum for a lower one, so no excursion is averaged away.
    fn extremes(
        &self,
        game: &Game,
        metric: &str,
        from_ms: u64,
        to_ms: u64,
        direction: Direction,
    ) -> Result<Vec<(u64, f64)>> {
        let range = TimeRange { from_ms, to_ms };
        let raw = self.readings(game, metric, range, None)?;
        let buckets = if raw.len() < history::MAX_POINTS {
            raw
        } else {
            let step = (range.span_ms() / 5_000).max(1);
            self.readings(game, metric, range, Some(step))?
        };
        Ok(buckets
            .into_iter()
            .map(|b| {
                let value = match direction {
                    Direction::Above => b.max,
                    Direction::Below => b.min,
                };
                (b.start_ms, value)
            })
            .collect())
    }
}

fn wrong_phase(game: &Game, rule: &str) -> GameError {
    GameError::WrongPhase(format!("the game is {:?}; {rule}", game.phase))
}

fn require_teacher(by: &Principal) -> Result<()> {
    if by.team.is_none() && by.has(Role::Teacher) {
        Ok(())
    } else {
        Err(GameError::Forbidden(format!(
            "games are run by teachers; {} is not one",
            by.user
        )))
    }
}

/// Teachers manage their own games; operators and admins every game.
fn may_manage(by: &Principal, game: &Game) -> bool {
    by.team.is_none()
        && (by.has(Role::Operator) || (by.has(Role::Teacher) && by.user == game.created_by))
}

fn standings(game: &Game, challenges: &[Challenge]) -> Vec<Standing> {
    let mut rows: Vec<Standing> = game
        .teams
        .iter()
        .map(|team| Standing {
            rank: 0,
            team_id: team.id.clone(),
            team: team.name.clone(),
            score: team.score(challenges.iter().map(|c| c.id.as_str())),
            answered: team.answers.len(),
        })
        .collect();
    rows.sort_by(|a, b| b.score.cmp(&a.score).then_with(|| a.team.cmp(&b.team)));
    for i in 0..rows.len() {
        rows[i].rank = if i > 0 && rows[i].score == rows[i - 1].score {
            rows[i - 1].rank
        } else {
            i + 1
        };
    }
    rows
}

fn clip(text: &str, max: usize) -> String {
    text.chars().take(max).collect()
}

fn value_text(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// One CSV field: quoted when it holds a separator, a quote or a line break; a leading `=`,
/// `+`, `-` or `@` is escaped so a spreadsheet does not run a team's name as a formula.
fn csv_cell(text: &str) -> String {
    let text = if text.starts_with(['=', '+', '-', '@']) && text.parse::<f64>().is_err() {
        format!("'{text}")
    } else {
        text.to_owned()
    };
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text
    }
}

#[cfg(test)]
mod tests;
