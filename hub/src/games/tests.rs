use std::collections::BTreeSet;
use std::sync::Mutex as StdMutex;

use super::results::csv_cell;
use super::*;
use crate::auth::AuthConfig;
use crate::history::{self, HistoryRow};
use crate::scenarios::{RunningScenario, ScenarioError, ScenarioInfo};

/// Scenario control over two labs' compressors that records what the games start and stop.
/// The demo's own control drives real simulated machines in the end-to-end test.
#[derive(Debug, Default)]
struct Recorder {
    started: StdMutex<Vec<(String, String, f64)>>,
    stopped: StdMutex<Vec<String>>,
}

impl ScenarioControl for Recorder {
    fn available(&self) -> Vec<ScenarioInfo> {
        vec![ScenarioInfo {
            name: "energy-waste".into(),
            title: String::new(),
            description: String::new(),
            machines: vec!["lab-a/compressor-1".into()],
            notes: Vec::new(),
        }]
    }
    fn running(&self) -> Vec<RunningScenario> {
        Vec::new()
    }
    fn start_at_speed(
        &self,
        scenario: &str,
        twin: &TwinKey,
        user: &str,
        now_ms: u64,
        speed: f64,
    ) -> std::result::Result<RunningScenario, ScenarioError> {
        self.started
            .lock()
            .expect("lock")
            .push((scenario.into(), twin.to_string(), speed));
        Ok(RunningScenario {
            twin: twin.to_string(),
            scenario: scenario.into(),
            started_at: now_ms,
            started_by: user.into(),
            title: String::new(),
            notes: Vec::new(),
        })
    }
    fn stop(&self, twin: &TwinKey) -> std::result::Result<(), ScenarioError> {
        self.stopped.lock().expect("lock").push(twin.to_string());
        Ok(())
    }
}

fn teacher(name: &str) -> Principal {
    Principal {
        user: name.into(),
        role: Some(Role::Teacher),
        labs: None,
        team: None,
    }
}

fn setup() -> (
    Arc<Games>,
    Arc<Recorder>,
    Arc<Auth>,
    Arc<TwinStore>,
    tempfile::TempDir,
) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Arc::new(TwinStore::open(dir.path()).expect("store"));
    let auth = Arc::new(Auth::new(AuthConfig::default()).expect("auth"));
    let recorder = Arc::new(Recorder::default());
    let games =
        Arc::new(Games::open(auth.clone(), store.clone(), Some(recorder.clone())).expect("games"));
    (games, recorder, auth, store, dir)
}

/// A compressor whose meter rises 1 Wh/s, 3 Wh/s from `fault_ms`; duty 40 %, 90 % after.
fn write_history(store: &TwinStore, from_ms: u64, to_ms: u64, fault_ms: u64) {
    let key = TwinKey::parse("lab-a/compressor-1").expect("key");
    let mut rows = Vec::new();
    let mut meter = 0.0;
    for (seq, t) in (from_ms..to_ms).step_by(1000).enumerate() {
        let faulty = t >= fault_ms;
        meter += if faulty { 3.0 } else { 1.0 };
        for (metric, value) in [
            ("energy.total_wh", meter),
            ("motor.duty_pct", if faulty { 90.0 } else { 40.0 }),
        ] {
            rows.push(HistoryRow {
                key: key.clone(),
                metric: metric.parse().expect("metric"),
                timestamp_ms: t,
                seq: seq as u32,
                value,
            });
        }
    }
    let txn = store.database().begin_write().expect("txn");
    history::append(&txn, &rows).expect("append");
    txn.commit().expect("commit");
}

#[test]
fn a_game_is_created_joined_played_scored_and_kept_across_a_restart() {
    let (games, recorder, auth, store, dir) = setup();
    let t0 = 1_000_000;
    let request = NewGame {
        template: "energy-waste".into(),
        duration_min: Some(10.0),
        speed: Some(30.0),
        ..NewGame::default()
    };
    let student = Principal {
        role: Some(Role::Student),
        ..teacher("sam")
    };
    assert!(matches!(
        games.create(&student, &request, t0),
        Err(GameError::Forbidden(_))
    ));
    let view = games
        .create(&teacher("tea"), &request, t0)
        .expect("created");
    let id = view.game.id.clone();
    assert_eq!(view.game.fault.twin, "lab-a/compressor-1");
    assert_eq!(view.game.labs, vec!["lab-a".parse::<LabId>().expect("lab")]);
    assert!(
        matches!(
            games.get(&teacher("other"), &id, t0),
            Err(GameError::NotFound(_))
        ),
        "a teacher sees only their own games"
    );

    let a = games
        .join(&view.game.code.to_lowercase(), "Alpha", t0)
        .expect("joins");
    let b = games.join(&view.game.code, "Beta", t0).expect("joins");
    let again = games.join(&view.game.code, " alpha ", t0).expect("rejoins");
    assert_eq!(again.team_id, a.team_id, "the same name is the same team");
    assert!(matches!(
        games.join("ZZZZZZ", "Gamma", t0),
        Err(GameError::BadCode(_))
    ));
    let seat = |joined: &Joined| {
        auth.session(&joined.token, t0)
            .and_then(|p| p.team)
            .expect("a team token")
    };
    let principal = auth.session(&a.token, t0).expect("live");
    assert_eq!(
        principal.labs,
        Some(BTreeSet::from(["lab-a".parse().expect("lab")]))
    );
    assert!(!principal.has(Role::Teacher));
    assert!(matches!(
        games.answer(&seat(&a), "which-machine", &"compressor-1".into(), t0),
        Err(GameError::WrongPhase(_))
    ));

    games.start(&teacher("tea"), &id, t0).expect("starts");
    let game = games.get(&teacher("tea"), &id, t0).expect("game").game;
    let fault_ms = t0 + game.fault.delay_ms;
    assert!(
        (150_000..=240_000).contains(&game.fault.delay_ms),
        "between a quarter and 40 % of 10 min: {}",
        game.fault.delay_ms
    );
    games.tick(fault_ms - 1);
    assert!(recorder.started.lock().expect("lock").is_empty());
    games.tick(fault_ms);
    assert_eq!(
        *recorder.started.lock().expect("lock"),
        vec![(
            "energy-waste".to_owned(),
            "lab-a/compressor-1".to_owned(),
            30.0
        )]
    );
    let periods = games
        .get(&teacher("tea"), &id, t0)
        .expect("game")
        .game
        .periods
        .expect("set");
    write_history(&store, t0 - 60_000, periods.measured[1] + 5_000, fault_ms);
    let now = periods.measured[1] + 1_000;

    // Reference: 120 s at 1 Wh/s; measured: 120 s at 3 Wh/s: 240 Wh wasted.
    let key = games.get(&teacher("tea"), &id, now).expect("game").key;
    assert_eq!(key[2].truth, Some(240.0.into()), "{key:?}");
    let answer = |joined: &Joined, challenge: &str, value: serde_json::Value| {
        games
            .answer(&seat(joined), challenge, &value, now)
            .expect("scored")
            .points
    };
    assert_eq!(answer(&a, "which-machine", "compressor-1".into()), 100);
    assert_eq!(answer(&b, "which-machine", "lab-a/mill-1".into()), 0);
    assert_eq!(answer(&a, "when", (fault_ms + 20_000).into()), 100);
    assert_eq!(answer(&b, "when", (fault_ms - 90_000).into()), 50);
    assert_eq!(answer(&a, "how-much", 240.0.into()), 100);
    assert_eq!(answer(&b, "how-much", 288.0.into()), 67);
    assert_eq!(answer(&a, "alarm", 60.0.into()), 100);
    assert_eq!(answer(&b, "alarm", 30.0.into()), 75, "one false alarm");
    assert!(matches!(
        games.answer(&seat(&a), "alarm", &50.0.into(), now),
        Err(GameError::AlreadyAnswered(_))
    ));
    let hint = games.hint(&seat(&b), "alarm").expect("a hint");
    assert_eq!(hint.cost, 25);
    assert!(matches!(
        games.hint(&seat(&b), "alarm"),
        Err(GameError::NoMoreHints(_))
    ));

    let board = games.leaderboard(&teacher("tea"), &id).expect("board");
    let scores: Vec<(&str, u32, usize)> = board
        .iter()
        .map(|s| (s.team.as_str(), s.score, s.rank))
        .collect();
    assert_eq!(scores, [("Alpha", 400, 1), ("Beta", 167, 2)]);
    let csv = games.csv(&teacher("tea"), &id).expect("csv");
    assert!(csv.contains(",Beta,alarm,30.0,"), "{csv}");
    assert!(
        csv.contains(",75,25,50,\"caught the fault, with 1 false alarm(s) before it\""),
        "{csv}"
    );
    assert!(csv.contains(",Beta,total,,,,25,167,"), "{csv}");

    games.end(&teacher("tea"), &id, now).expect("ends");
    assert_eq!(
        auth.session(&a.token, now),
        None,
        "team tokens end with the game"
    );
    assert_eq!(
        *recorder.stopped.lock().expect("lock"),
        vec!["lab-a/compressor-1".to_owned()]
    );

    drop(games);
    let reopened = Games::open(auth, store, None).expect("reopened");
    let kept = reopened.get(&teacher("tea"), &id, now).expect("kept");
    assert_eq!(kept.game.phase, Phase::Ended);
    assert_eq!(kept.standings, board);
    drop(dir);
}

#[test]
fn the_clock_ends_a_game_and_pauses_do_not_count() {
    let (games, _recorder, auth, _store, _dir) = setup();
    let request = NewGame {
        template: "energy-waste".into(),
        duration_min: Some(1.0),
        ..NewGame::default()
    };
    let view = games.create(&teacher("tea"), &request, 0).expect("created");
    let id = view.game.id;
    let team = games.join(&view.game.code, "Alpha", 0).expect("joins");
    games.start(&teacher("tea"), &id, 1_000).expect("starts");
    games.pause(&teacher("tea"), &id, 11_000).expect("pauses");
    let seat = auth
        .session(&team.token, 12_000)
        .and_then(|p| p.team)
        .expect("team");
    assert!(matches!(
        games.hint(&seat, "alarm"),
        Err(GameError::WrongPhase(_))
    ));
    games.resume(&teacher("tea"), &id, 41_000).expect("resumes");
    // 60 s of play from 1 s, plus a 30 s pause: over at 91 s.
    games.tick(90_999);
    assert_eq!(
        games
            .get(&teacher("tea"), &id, 90_999)
            .expect("game")
            .game
            .phase,
        Phase::Running
    );
    games.tick(91_000);
    assert_eq!(
        games
            .get(&teacher("tea"), &id, 91_000)
            .expect("game")
            .game
            .phase,
        Phase::Ended
    );
    assert_eq!(auth.session(&team.token, 91_000), None);
}

#[test]
fn csv_cells_are_quoted_and_formulas_defused() {
    assert_eq!(csv_cell("Alpha"), "Alpha");
    assert_eq!(csv_cell("a,b"), "\"a,b\"");
    assert_eq!(csv_cell("say \"hi\""), "\"say \"\"hi\"\"\"");
    assert_eq!(csv_cell("=1+1"), "'=1+1");
    assert_eq!(csv_cell("-12.5"), "-12.5");
}
