//! A game's results: the leaderboard and the CSV export.

use super::views::{Standing, standings};
use super::{GameError, Games, Result, may_manage};
use crate::auth::Principal;

impl Games {
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
}

fn value_text(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// One CSV field: quoted when it holds a separator, a quote or a line break; a leading `=`,
/// `+`, `-` or `@` is escaped so a spreadsheet does not run a team's name as a formula.
pub(super) fn csv_cell(text: &str) -> String {
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
