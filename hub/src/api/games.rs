//! Innovation games: teachers run them, teams play them (see [`crate::games`]).

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::header;
use axum::http::request::Parts;
use axum::response::IntoResponse;
use serde::Deserialize;

use super::access::client_of;
use super::{ApiError, AppState, Caller, ErrorBody};
use crate::auth::TeamSeat;
use crate::games::model::Answer;
use crate::games::template::{GameTemplate, Hint};
use crate::games::{GameView, Joined, NewGame, Standing, TeamView};
use crate::ingest::now_ms;

/// The game templates (teacher).
#[utoipa::path(get, path = "/api/v1/games/templates", tag = "games",
    responses((status = 200, body = Vec<GameTemplate>),
        (status = 401, description = "`unauthenticated`, `invalid_token`", body = ErrorBody),
        (status = 403, description = "`forbidden` (needs teacher)", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn templates(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<GameTemplate>>, ApiError> {
    signed_in(&caller)?;
    Ok(Json(state.games.templates().to_vec()))
}

fn signed_in(caller: &Caller) -> Result<(), ApiError> {
    if caller.0.role.is_none() {
        return Err(ApiError::Unauthenticated);
    }
    Ok(())
}

/// The caller's games, newest first (teacher: their own; operator: all).
#[utoipa::path(get, path = "/api/v1/games", tag = "games",
    responses((status = 200, body = Vec<GameView>),
        (status = 401, description = "`unauthenticated`, `invalid_token`", body = ErrorBody),
        (status = 403, description = "`forbidden` (needs teacher)", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<GameView>>, ApiError> {
    signed_in(&caller)?;
    Ok(Json(state.games.list(&caller.0, now_ms())?))
}

/// Make a game from a template (teacher); it opens for teams at once and answers with its
/// join code.
#[utoipa::path(post, path = "/api/v1/games", tag = "games",
    request_body = NewGame,
    responses((status = 200, body = GameView),
        (status = 400, description = "`bad_body`", body = ErrorBody),
        (status = 401, description = "`unauthenticated`, `invalid_token`", body = ErrorBody),
        (status = 403, description = "`forbidden` (needs teacher)", body = ErrorBody),
        (status = 404, description = "`template_not_found`", body = ErrorBody),
        (status = 409, description = "`not_simulated`", body = ErrorBody),
        (status = 422, description = "`bad_value`", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    body: Result<Json<NewGame>, JsonRejection>,
) -> Result<Json<GameView>, ApiError> {
    signed_in(&caller)?;
    let Json(request) = body?;
    Ok(Json(state.games.create(&caller.0, &request, now_ms())?))
}

/// One game with its teams, answers, standings and answer key (its teacher).
#[utoipa::path(get, path = "/api/v1/games/{game}", tag = "games",
    params(("game" = String, Path)),
    responses((status = 200, body = GameView),
        (status = 401, description = "`unauthenticated`, `invalid_token`", body = ErrorBody),
        (status = 403, description = "`forbidden` (needs teacher)", body = ErrorBody),
        (status = 404, description = "`game_not_found`", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(game): Path<String>,
) -> Result<Json<GameView>, ApiError> {
    signed_in(&caller)?;
    Ok(Json(state.games.get(&caller.0, &game, now_ms())?))
}

macro_rules! phase_route {
    ($name:ident, $path:literal, $method:ident, $doc:literal) => {
        #[doc = $doc]
        #[utoipa::path(post, path = $path, tag = "games",
            params(("game" = String, Path)),
            responses((status = 200, body = GameView),
                (status = 401, description = "`unauthenticated`, `invalid_token`", body = ErrorBody),
                (status = 403, description = "`forbidden` (needs teacher)", body = ErrorBody),
                (status = 404, description = "`game_not_found`", body = ErrorBody),
                (status = 409, description = "`wrong_phase`", body = ErrorBody)),
            security(("bearer" = [])))]
        pub async fn $name(
            State(state): State<AppState>,
            caller: Caller,
            Path(game): Path<String>,
        ) -> Result<Json<GameView>, ApiError> {
            signed_in(&caller)?;
            Ok(Json(state.games.$method(&caller.0, &game, now_ms())?))
        }
    };
}

phase_route!(
    start,
    "/api/v1/games/{game}/start",
    start,
    "Start the game's clock (teacher); the fault comes some minutes later."
);
phase_route!(
    pause,
    "/api/v1/games/{game}/pause",
    pause,
    "Pause the game (teacher): answers and hints wait, the clock stands."
);
phase_route!(
    resume,
    "/api/v1/games/{game}/resume",
    resume,
    "Resume a paused game (teacher)."
);
phase_route!(
    end,
    "/api/v1/games/{game}/end",
    end,
    "End the game now (teacher): team tokens stop working, the fault is taken back."
);

/// The teams by score: for the game's teacher, its teams, and screens that may read all its
/// labs.
#[utoipa::path(get, path = "/api/v1/games/{game}/leaderboard", tag = "games",
    params(("game" = String, Path)),
    responses((status = 200, body = Vec<Standing>),
        (status = 401, description = "`unauthenticated`, `invalid_token`", body = ErrorBody),
        (status = 404, description = "`game_not_found`", body = ErrorBody)))]
pub async fn leaderboard(
    State(state): State<AppState>,
    caller: Caller,
    Path(game): Path<String>,
) -> Result<Json<Vec<Standing>>, ApiError> {
    Ok(Json(state.games.leaderboard(&caller.0, &game)?))
}

/// The results as CSV: a row per team and challenge, then a total row per team (teacher).
#[utoipa::path(get, path = "/api/v1/games/{game}/results.csv", tag = "games",
    params(("game" = String, Path)),
    responses((status = 200, description = "CSV", content_type = "text/csv", body = String),
        (status = 401, description = "`unauthenticated`, `invalid_token`", body = ErrorBody),
        (status = 403, description = "`forbidden` (needs teacher)", body = ErrorBody),
        (status = 404, description = "`game_not_found`", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn results_csv(
    State(state): State<AppState>,
    caller: Caller,
    Path(game): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    signed_in(&caller)?;
    let csv = state.games.csv(&caller.0, &game)?;
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{game}-results.csv\""),
            ),
        ],
        csv,
    ))
}

/// A join code and a team name.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JoinRequest {
    /// The code the teacher shows.
    pub code: String,
    /// The team's name; the same name again gives that team a new token.
    pub team: String,
}

/// Join a game with its code: no account, a token for the team that reads the game's labs only
/// and ends with the game. Wrong codes count against the login rate limits.
#[utoipa::path(post, path = "/api/v1/games/join", tag = "games",
    request_body = JoinRequest,
    responses((status = 200, body = Joined),
        (status = 400, description = "`bad_body`", body = ErrorBody),
        (status = 404, description = "`bad_join_code`", body = ErrorBody),
        (status = 422, description = "`bad_value`", body = ErrorBody),
        (status = 429, description = "`rate_limited` (see `Retry-After`)", body = ErrorBody)))]
pub async fn join(
    State(state): State<AppState>,
    parts: Parts,
    body: Result<Json<JoinRequest>, JsonRejection>,
) -> Result<Json<Joined>, ApiError> {
    let Json(request) = body?;
    let client = client_of(&parts, &state);
    let now = now_ms();
    state
        .auth
        .admit_attempt(client, JOIN_ATTEMPTS, now)
        .map_err(|limited| ApiError::RateLimited {
            retry_after_s: limited.retry_after_s,
        })?;
    state
        .games
        .join(&request.code, &request.team, now)
        .map(Json)
        .map_err(|err| {
            if matches!(err, crate::games::GameError::BadCode(_)) {
                state.auth.attempt_failed(client, JOIN_ATTEMPTS, now);
            }
            err.into()
        })
}

/// The pseudo user name join attempts are limited under.
const JOIN_ATTEMPTS: &str = "(game join code)";

fn seat(caller: &Caller) -> Result<&TeamSeat, ApiError> {
    match (&caller.0.team, caller.0.role) {
        (Some(seat), _) => Ok(seat),
        (None, None) => Err(ApiError::Unauthenticated),
        (None, Some(_)) => Err(ApiError::Forbidden(format!(
            "{} is not a team: join a game with its code",
            caller.0.user
        ))),
    }
}

/// The caller's game, challenges, hints taken, answers and score (team token).
#[utoipa::path(get, path = "/api/v1/team", tag = "games",
    responses((status = 200, body = TeamView),
        (status = 401, description = "`unauthenticated`, `invalid_token`", body = ErrorBody),
        (status = 403, description = "`forbidden` (not a team token)", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn team(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<TeamView>, ApiError> {
    Ok(Json(state.games.team_view(seat(&caller)?, now_ms())?))
}

/// A team's answer to one challenge.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AnswerRequest {
    /// Challenge id.
    pub challenge: String,
    /// `"lab/machine"` for a machine; a number otherwise (a time in ms since the epoch, Wh, or
    /// a limit in the metric's unit).
    pub value: serde_json::Value,
}

/// Answer a challenge (team token): scored at once against what the hub knows and keeps; one
/// answer per challenge.
#[utoipa::path(post, path = "/api/v1/team/answers", tag = "games",
    request_body = AnswerRequest,
    responses((status = 200, body = Answer),
        (status = 400, description = "`bad_body`", body = ErrorBody),
        (status = 401, description = "`unauthenticated`, `invalid_token`", body = ErrorBody),
        (status = 403, description = "`forbidden` (not a team token)", body = ErrorBody),
        (status = 404, description = "`challenge_not_found`", body = ErrorBody),
        (status = 409, description = "`wrong_phase`, `already_answered`, `period_not_over`", body = ErrorBody),
        (status = 422, description = "`bad_value`", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn answer(
    State(state): State<AppState>,
    caller: Caller,
    body: Result<Json<AnswerRequest>, JsonRejection>,
) -> Result<Json<Answer>, ApiError> {
    let seat = seat(&caller)?.clone();
    let Json(request) = body?;
    let games = state.games.clone();
    // Scoring reads the machine's history from the database.
    tokio::task::spawn_blocking(move || {
        games.answer(&seat, &request.challenge, &request.value, now_ms())
    })
    .await
    .map_err(|err| ApiError::Storage(err.to_string()))?
    .map(Json)
    .map_err(Into::into)
}

/// Which challenge a hint is for.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HintRequest {
    /// Challenge id.
    pub challenge: String,
}

/// Take the challenge's next hint (team token); its cost comes off that challenge's points.
#[utoipa::path(post, path = "/api/v1/team/hints", tag = "games",
    request_body = HintRequest,
    responses((status = 200, body = Hint),
        (status = 400, description = "`bad_body`", body = ErrorBody),
        (status = 401, description = "`unauthenticated`, `invalid_token`", body = ErrorBody),
        (status = 403, description = "`forbidden` (not a team token)", body = ErrorBody),
        (status = 404, description = "`challenge_not_found`", body = ErrorBody),
        (status = 409, description = "`wrong_phase`, `no_more_hints`", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn hint(
    State(state): State<AppState>,
    caller: Caller,
    body: Result<Json<HintRequest>, JsonRejection>,
) -> Result<Json<Hint>, ApiError> {
    let seat = seat(&caller)?;
    let Json(request) = body?;
    Ok(Json(state.games.hint(seat, &request.challenge)?))
}
