//! What the API shows of a game: to its teacher, to a team, on the leaderboard.

use protocol::LabId;
use serde::{Deserialize, Serialize};

use super::model::{Answer, Game, Periods, Phase};
use super::template::{Challenge, ChallengeKind, Hint};

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

pub(super) fn standings(game: &Game, challenges: &[Challenge]) -> Vec<Standing> {
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
