//! A team's side of a game: joining with the code, its page, answers and hints.

use super::model::{Answer, Game, HintTaken, Phase, Team};
use super::scoring::{self, Marked};
use super::template::{Challenge, ChallengeKind, GameTemplate, Hint};
use super::views::{Joined, TeamChallenge, TeamView};
use super::{GameError, Games, MAX_TEAMS, Result, TEAM_NAME_MAX};
use crate::auth::{Login, TeamSeat};

impl Games {
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
}
