//! What a game is, as stored: its settings, its phase, the fault it staged, its teams and their
//! answers. Everything here is plain data that round-trips through JSON; the rules that change
//! it live in [`super::Games`].

use protocol::LabId;
use serde::{Deserialize, Serialize};

/// Where a game is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Created: teams join with the code; the clock has not started.
    Open,
    /// The clock runs; teams answer.
    Running,
    /// The clock stands; answers and hints wait.
    Paused,
    /// Over: team tokens no longer work; the results are final.
    Ended,
}

/// The fault the game stages, and when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Fault {
    /// `lab/machine`.
    pub twin: String,
    /// How long after the start the fault begins, ms.
    pub delay_ms: u64,
    /// When the hub started the scenario, ms since the epoch (the truth of "when").
    pub started_at_ms: Option<u64>,
}

/// The two periods an energy question compares, ms since the epoch, `[from, to)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Periods {
    /// Before any fault: the machine's normal use.
    pub reference: [u64; 2],
    /// After the fault has begun, of the same length.
    pub measured: [u64; 2],
}

/// One answer of a team.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Answer {
    /// The challenge.
    pub challenge: String,
    /// What the team answered (a `lab/machine`, or a number).
    pub value: serde_json::Value,
    /// When, ms since the epoch.
    pub answered_at_ms: u64,
    /// Points before hint costs.
    pub points: u32,
    /// Why.
    pub reason: String,
}

/// A hint a team took.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HintTaken {
    /// The challenge.
    pub challenge: String,
    /// Which of its hints (0 first).
    pub index: usize,
    /// Points it cost.
    pub cost: u32,
}

/// A team.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Team {
    /// Team id (also its MQTT user name).
    pub id: String,
    /// The name the team chose.
    pub name: String,
    /// When it joined, ms since the epoch.
    pub joined_at_ms: u64,
    /// Its answers, one per challenge at most.
    pub answers: Vec<Answer>,
    /// The hints it took.
    pub hints: Vec<HintTaken>,
}

impl Team {
    /// Points of one challenge: the answer's points less the hints taken on it, not below 0.
    pub fn challenge_score(&self, challenge: &str) -> u32 {
        let answered = self
            .answers
            .iter()
            .find(|a| a.challenge == challenge)
            .map_or(0, |a| a.points);
        answered.saturating_sub(self.hint_cost(challenge))
    }

    /// Points the team's hints on `challenge` cost.
    pub fn hint_cost(&self, challenge: &str) -> u32 {
        self.hints
            .iter()
            .filter(|h| h.challenge == challenge)
            .map(|h| h.cost)
            .sum()
    }

    /// The team's score.
    pub fn score<'a>(&self, challenges: impl Iterator<Item = &'a str>) -> u32 {
        challenges.map(|c| self.challenge_score(c)).sum()
    }
}

/// A game.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Game {
    /// Game id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// The template it was made from (its challenges are the game's).
    pub template: String,
    /// The labs whose data the teams read.
    #[schema(value_type = Vec<String>)]
    pub labs: Vec<LabId>,
    /// What teams type to join.
    pub code: String,
    /// Where it is.
    pub phase: Phase,
    /// The teacher who made it.
    pub created_by: String,
    /// When, ms since the epoch.
    pub created_at_ms: u64,
    /// Playing time, ms (pauses do not count).
    pub duration_ms: u64,
    /// Speed of the scenario's changes.
    pub speed: f64,
    /// When the clock started, ms since the epoch.
    pub started_at_ms: Option<u64>,
    /// When the current pause began.
    pub paused_at_ms: Option<u64>,
    /// Pauses so far, ms.
    pub paused_total_ms: u64,
    /// When it ended.
    pub ended_at_ms: Option<u64>,
    /// The staged fault.
    pub fault: Fault,
    /// Set at the start.
    pub periods: Option<Periods>,
    /// Teams.
    pub teams: Vec<Team>,
}

impl Game {
    /// When the clock runs out, ms since the epoch (`None` before the start). A pause under
    /// way pushes it back as it lasts.
    pub fn ends_at_ms(&self, now_ms: u64) -> Option<u64> {
        let running_pause = self.paused_at_ms.map_or(0, |p| now_ms.saturating_sub(p));
        self.started_at_ms.map(|start| {
            start
                .saturating_add(self.duration_ms)
                .saturating_add(self.paused_total_ms)
                .saturating_add(running_pause)
        })
    }

    /// The team with this id.
    pub fn team(&self, id: &str) -> Option<&Team> {
        self.teams.iter().find(|t| t.id == id)
    }
}
