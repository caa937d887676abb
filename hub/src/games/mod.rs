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

mod evidence;
pub mod model;
mod play;
mod results;
pub mod scoring;
pub mod template;
mod views;

pub use views::{GameView, Joined, KeyEntry, NewGame, Standing, TeamChallenge, TeamView};

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use protocol::LabId;

use crate::auth::{Auth, Principal, Role};
use crate::scenarios::ScenarioControl;
use crate::store::TwinStore;
use crate::twin::TwinKey;
use model::{Fault, Game, Periods, Phase};
use template::{Challenge, ChallengeKind, GameTemplate};
use views::standings;

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

fn clip(text: &str, max: usize) -> String {
    text.chars().take(max).collect()
}

#[cfg(test)]
mod tests;
