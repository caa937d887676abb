//! Game templates: a teaching case ("this factory wastes energy") as a file — the simulator
//! scenario that stages the fault, how long the game lasts, and the challenges teams answer.
//!
//! The shipped templates in `hub/games/` are compiled in, so every demo can play them with no
//! set-up. Every way in validates and names the offending key.

use serde::{Deserialize, Serialize};

/// The templates shipped with the hub, as (file name, TOML).
const SHIPPED: &[(&str, &str)] = &[
    (
        "energy-waste.toml",
        include_str!("../../games/energy-waste.toml"),
    ),
    (
        "predictive-maintenance.toml",
        include_str!("../../games/predictive-maintenance.toml"),
    ),
    (
        "quality-drift.toml",
        include_str!("../../games/quality-drift.toml"),
    ),
];

/// Longest game a template or a teacher may set, minutes.
pub const MAX_DURATION_MIN: f64 = 8.0 * 60.0;
/// Shortest game, seconds: enough for a healthy period, a fault and a measured period.
pub const MIN_DURATION_S: u64 = 20;

/// A template was rejected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("game template {file}: {key}: {problem}")]
pub struct TemplateError {
    /// The template file.
    pub file: String,
    /// The offending key, e.g. `challenges[2].metric`.
    pub key: String,
    /// What is wrong.
    pub problem: String,
}

/// What a challenge asks, and how an answer is scored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum ChallengeKind {
    /// Which machine has the fault: all points for the right `lab/machine`, none otherwise.
    FaultMachine,
    /// When the fault started: all points within `tolerance_s`, falling linearly to none at
    /// five times that.
    FaultStart {
        /// Full points this close, seconds.
        tolerance_s: f64,
    },
    /// How much energy the fault wasted: the meter's rise over the measured period minus its
    /// rise over the reference period of the same length, both from the hub's history. All
    /// points within 5 %, none from 50 % off.
    EnergyWasted {
        /// A cumulative energy meter, Wh.
        metric: String,
    },
    /// A limit that would have caught the fault: none if no sample after the fault start passes
    /// it; otherwise all points minus `false_alarm_cost` per excursion past it before the fault.
    AlarmThreshold {
        /// The watched metric.
        metric: String,
        /// Which side of the limit is the alarm.
        direction: Direction,
        /// Points lost per false alarm.
        false_alarm_cost: u32,
    },
}

/// The alarm side of a limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// The alarm is a value above the limit.
    Above,
    /// The alarm is a value below the limit.
    Below,
}

/// A hint: text that costs points of its challenge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Hint {
    /// English.
    pub text: String,
    /// Danish.
    pub text_da: String,
    /// Points it costs.
    pub cost: u32,
}

/// One question of a game. Unknown keys are refused by [`ChallengeKind`], which receives
/// every key this struct does not name (serde's `flatten` and `deny_unknown_fields` do not mix
/// on one struct).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Challenge {
    /// Unique within the template.
    pub id: String,
    /// What is asked and how it is scored.
    #[serde(flatten)]
    pub kind: ChallengeKind,
    /// Points for a perfect answer.
    pub points: u32,
    /// English question.
    pub question: String,
    /// Danish question.
    pub question_da: String,
    /// Hints, in the order they are given.
    #[serde(default)]
    pub hints: Vec<Hint>,
}

/// A teaching case.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GameTemplate {
    /// Template id.
    pub id: String,
    /// English title.
    pub title: String,
    /// Danish title.
    pub title_da: String,
    /// The case as the class hears it.
    pub story: String,
    /// Danish.
    pub story_da: String,
    /// The simulator scenario that stages the fault on one machine.
    pub scenario: String,
    /// Default length, minutes.
    pub duration_min: f64,
    /// Default speed of the scenario's changes (times its file).
    pub speed: f64,
    /// The questions.
    pub challenges: Vec<Challenge>,
}

impl GameTemplate {
    /// Parses and validates one template.
    pub fn parse(text: &str, file: &str) -> Result<Self, TemplateError> {
        let error = |key: &str, problem: String| TemplateError {
            file: file.to_owned(),
            key: key.to_owned(),
            problem,
        };
        let template: Self = toml::from_str(text).map_err(|err| {
            let problem = err.message().to_owned();
            error("(file)", problem)
        })?;
        template
            .validate()
            .map_err(|(key, problem)| error(&key, problem))?;
        Ok(template)
    }

    fn validate(&self) -> Result<(), (String, String)> {
        valid_id(&self.id).map_err(|p| ("id".to_owned(), p))?;
        if !(self.duration_min * 60.0 >= MIN_DURATION_S as f64
            && self.duration_min <= MAX_DURATION_MIN)
        {
            return Err((
                "duration_min".into(),
                format!(
                    "{} is outside {}..={MAX_DURATION_MIN} minutes",
                    self.duration_min,
                    MIN_DURATION_S as f64 / 60.0
                ),
            ));
        }
        if !(self.speed.is_finite() && (1.0..=1000.0).contains(&self.speed)) {
            return Err((
                "speed".into(),
                format!("{} is outside 1..=1000", self.speed),
            ));
        }
        if self.challenges.is_empty() {
            return Err(("challenges".into(), "a game needs a challenge".into()));
        }
        for (i, challenge) in self.challenges.iter().enumerate() {
            let key = |field: &str| format!("challenges[{i}].{field}");
            valid_id(&challenge.id).map_err(|p| (key("id"), p))?;
            if self.challenges[..i].iter().any(|c| c.id == challenge.id) {
                return Err((key("id"), format!("{:?} is used twice", challenge.id)));
            }
            if challenge.points == 0 {
                return Err((key("points"), "must be at least 1".into()));
            }
            match &challenge.kind {
                ChallengeKind::FaultMachine => {}
                ChallengeKind::FaultStart { tolerance_s } => {
                    if !(tolerance_s.is_finite() && *tolerance_s > 0.0) {
                        return Err((key("tolerance_s"), "must be above 0".into()));
                    }
                }
                ChallengeKind::EnergyWasted { metric } => {
                    valid_metric(metric).map_err(|p| (key("metric"), p))?
                }
                ChallengeKind::AlarmThreshold {
                    metric,
                    false_alarm_cost,
                    ..
                } => {
                    valid_metric(metric).map_err(|p| (key("metric"), p))?;
                    if *false_alarm_cost > challenge.points {
                        return Err((
                            key("false_alarm_cost"),
                            "must not exceed the challenge's points".into(),
                        ));
                    }
                }
            }
            for (h, hint) in challenge.hints.iter().enumerate() {
                if hint.cost > challenge.points {
                    return Err((
                        format!("challenges[{i}].hints[{h}].cost"),
                        "must not exceed the challenge's points".into(),
                    ));
                }
            }
        }
        Ok(())
    }
}

fn valid_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= 48
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!("{id:?} is not 1-48 of a-z, 0-9 and -"))
    }
}

fn valid_metric(metric: &str) -> Result<(), String> {
    metric
        .parse::<protocol::MetricName>()
        .map(|_| ())
        .map_err(|err| format!("{metric:?}: {err}"))
}

/// The shipped templates.
pub fn shipped() -> Vec<GameTemplate> {
    SHIPPED
        .iter()
        .map(|(file, text)| GameTemplate::parse(text, file))
        .collect::<Result<_, _>>()
        // The files are compiled in and tested below: a broken one is a build mistake.
        .unwrap_or_else(|err| panic!("{err}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_templates_parse_and_cover_the_three_cases() {
        let ids: Vec<String> = shipped().into_iter().map(|t| t.id).collect();
        assert_eq!(
            ids,
            ["energy-waste", "predictive-maintenance", "quality-drift"]
        );
    }

    #[test]
    fn errors_name_the_key() {
        let text = SHIPPED[0].1.replace("tolerance_s = 30", "tolerance_s = -1");
        let err = GameTemplate::parse(&text, "x.toml").expect_err("negative tolerance");
        assert_eq!(err.key, "challenges[1].tolerance_s", "{err}");
        let text = SHIPPED[0]
            .1
            .replace("metric = \"energy.total_wh\"", "metric = \"Wh\"");
        let err = GameTemplate::parse(&text, "x.toml").expect_err("bad metric");
        assert_eq!(err.key, "challenges[2].metric", "{err}");
        let text = SHIPPED[0]
            .1
            .replace("duration_min = 20", "duration_min = 9000");
        let err = GameTemplate::parse(&text, "x.toml").expect_err("too long");
        assert_eq!(err.key, "duration_min", "{err}");
        let text = SHIPPED[0]
            .1
            .replace("type = \"fault-machine\"", "type = \"guess\"");
        let err = GameTemplate::parse(&text, "x.toml").expect_err("unknown type");
        assert!(err.problem.contains("guess"), "{err}");
        let text = SHIPPED[0]
            .1
            .replace("tolerance_s = 30", "tolerance_s = 30\ntolerence = 3");
        let err = GameTemplate::parse(&text, "x.toml").expect_err("typo");
        assert!(err.problem.contains("tolerence"), "{err}");
    }
}
