//! A whole innovation game through the API of the demo region: the teacher makes the
//! energy-waste game, three teams join with its code, the hub stages the leak on the lab's
//! compressor faster than real time, the teams answer (one right, one close, one wrong) and the
//! scores, the leaderboard and the CSV come out exactly as the scoring rules say. A team token
//! reads its game's lab and nothing else, writes nothing (REST, WebSocket and MQTT), and stops
//! working when the teacher ends the game.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use demolab_demo::region::Region;
use demolab_tests::laptop::{Laptop, denied};
use demolab_tests::{test_region, wait_until, within};
use futures_util::StreamExt;
use hub::ingest::now_ms;
use rumqttc::{QoS, SubscribeReasonCode};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::{self, Message};

const DEADLINE: Duration = Duration::from_secs(30);
const LAB: &str = "aarhus-machining";
const OTHER_LAB: &str = "odense-machining";

/// An API call that must answer `status`; the JSON body (`Null` when empty).
async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
    status: u16,
) -> anyhow::Result<Value> {
    let bytes = body.map(|b| b.to_string().into_bytes());
    let (got, text) = demolab_tests::http(addr, method, path, token, bytes.as_deref()).await?;
    ensure!(
        got == status,
        "{method} {path} answered {got}, not {status}: {text}"
    );
    Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// The error code of a refused call.
async fn refused(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
    status: u16,
) -> anyhow::Result<String> {
    let answer = call(addr, method, path, token, body, status).await?;
    Ok(answer["error"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_owned())
}

struct Team {
    name: &'static str,
    id: String,
    token: String,
}

async fn join(addr: SocketAddr, code: &str, name: &'static str) -> anyhow::Result<Team> {
    let joined = call(
        addr,
        "POST",
        "/api/v1/games/join",
        None,
        Some(json!({ "code": code, "team": name })),
        200,
    )
    .await?;
    Ok(Team {
        name,
        id: joined["team_id"].as_str().context("team_id")?.to_owned(),
        token: joined["token"].as_str().context("token")?.to_owned(),
    })
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn stream(addr: SocketAddr, query: &str) -> Result<Socket, tungstenite::Error> {
    let url = format!("ws://{addr}/api/v1/stream?{query}");
    Ok(tokio_tungstenite::connect_async(url).await?.0)
}

/// `(sample time, value)` of a metric since `from_ms`, read as a team reads it: 1 ms buckets
/// (exact sample times) in windows of at most 9 s, under the API's bucket limit.
async fn samples(
    addr: SocketAddr,
    token: &str,
    machine: &str,
    metric: &str,
    from_ms: u64,
    to_ms: u64,
) -> anyhow::Result<Vec<(u64, f64)>> {
    let mut out = Vec::new();
    let mut from = from_ms;
    while from < to_ms {
        let to = (from + 9_000).min(to_ms);
        let path = format!(
            "/api/v1/twins/{LAB}/{machine}/history?metric={metric}&from={from}&to={to}&step=1"
        );
        let history = call(addr, "GET", &path, Some(token), None, 200).await?;
        for bucket in history["buckets"].as_array().context("buckets")? {
            out.push((
                bucket["start_ms"].as_u64().context("start_ms")?,
                bucket["max"].as_f64().context("max")?,
            ));
        }
        from = to;
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_class_plays_the_energy_waste_game_through_the_api() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let region = Region::start(test_region(data.path(), 7, Duration::from_millis(100))).await?;
    let outcome = play(&region).await;
    region.shutdown().await?;
    outcome
}

async fn play(region: &Region) -> anyhow::Result<()> {
    let http = region.hub().http_addr();
    let mqtt = region.hub().mqtt_addr();
    let missing = region.until_running(DEADLINE).await;
    ensure!(missing.is_empty(), "{missing:?} did not come up");
    let teacher_password = region
        .logins()
        .iter()
        .find(|l| l.name == "teacher")
        .context("the demo has a teacher login")?
        .password
        .clone();
    let login = call(
        http,
        "POST",
        "/api/v1/auth/login",
        None,
        Some(json!({ "user": "teacher", "password": teacher_password })),
        200,
    )
    .await?;
    let teacher = login["token"].as_str().context("token")?.to_owned();
    let teacher = Some(teacher.as_str());

    // The teacher makes the game from the shipped template, on one lab, faster than real time.
    let templates = call(http, "GET", "/api/v1/games/templates", teacher, None, 200).await?;
    let ids: Vec<&str> = templates
        .as_array()
        .context("templates")?
        .iter()
        .filter_map(|t| t["id"].as_str())
        .collect();
    assert_eq!(
        ids,
        ["energy-waste", "predictive-maintenance", "quality-drift"]
    );
    let game = call(
        http,
        "POST",
        "/api/v1/games",
        teacher,
        Some(json!({ "template": "energy-waste", "labs": [LAB], "duration_min": 1.0, "speed": 30.0 })),
        200,
    )
    .await?;
    let id = game["id"].as_str().context("id")?.to_owned();
    let code = game["code"].as_str().context("code")?.to_owned();
    assert_eq!(game["phase"], "open");
    assert_eq!(game["fault"]["twin"], format!("{LAB}/compressor-1"));
    assert_eq!(code.len(), 6);

    // Teams join with the code; a wrong code is refused and counted as a failed attempt.
    let wrong_code = if code == "AAAAAA" { "BBBBBB" } else { "AAAAAA" };
    assert_eq!(
        refused(
            http,
            "POST",
            "/api/v1/games/join",
            None,
            Some(json!({ "code": wrong_code, "team": "Sneaky" })),
            404
        )
        .await?,
        "bad_join_code"
    );
    let right = join(http, &code, "Right").await?;
    let close = join(http, &code.to_lowercase(), "Close").await?;
    let wrong = join(http, &code, "Wrong").await?;
    let token = Some(right.token.as_str());

    // A team token reads its game's lab only and writes nothing.
    let me = call(http, "GET", "/api/v1/auth/me", token, None, 200).await?;
    assert_eq!(me["team"]["game"], id.as_str());
    assert_eq!(me["labs"], json!([LAB]));
    let twins = call(http, "GET", "/api/v1/twins", token, None, 200).await?;
    let labs: Vec<&str> = twins
        .as_array()
        .context("twins")?
        .iter()
        .filter_map(|t| t["lab"].as_str())
        .collect();
    ensure!(
        !labs.is_empty() && labs.iter().all(|lab| *lab == LAB),
        "a team sees {labs:?}"
    );
    let compressor = format!("/api/v1/twins/{LAB}/compressor-1");
    call(http, "GET", &compressor, token, None, 200).await?;
    for (method, path, body) in [
        (
            "GET",
            format!("/api/v1/twins/{OTHER_LAB}/compressor-1"),
            None,
        ),
        (
            "PATCH",
            format!("{compressor}/desired"),
            Some(json!({ "node.identify_ms": 100.0 })),
        ),
        (
            "POST",
            format!("{compressor}/scenario"),
            Some(json!({ "scenario": "energy-waste" })),
        ),
        ("DELETE", compressor.clone(), None),
        (
            "POST",
            "/api/v1/games".to_owned(),
            Some(json!({ "template": "energy-waste" })),
        ),
        ("GET", format!("/api/v1/games/{id}"), None),
        ("POST", format!("/api/v1/games/{id}/end"), None),
        ("GET", format!("/api/v1/games/{id}/results.csv"), None),
    ] {
        assert_eq!(
            refused(http, method, &path, token, body, 403).await?,
            "forbidden",
            "{method} {path}"
        );
    }
    match stream(http, &format!("lab={OTHER_LAB}&token={}", right.token)).await {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 403),
        other => bail!(
            "a stream of another lab was not refused: {:?}",
            other.map(|_| ())
        ),
    }
    let mut socket = stream(http, &format!("token={}", right.token)).await?;
    for _ in 0..5 {
        let message = within(DEADLINE, "a stream message", socket.next())
            .await?
            .context("the stream ended")??;
        let change: Value = serde_json::from_str(message.to_text()?)?;
        if let Some(lab) = change["lab"].as_str() {
            assert_eq!(lab, LAB, "{change}");
        }
    }
    let publishes_denied = denied(http, "publish").await?;
    let subscribes_denied = denied(http, "subscribe").await?;
    let mut laptop = Laptop::new(mqtt, "team-right", Some((&right.id, &right.token)));
    laptop.connected().await?;
    assert_eq!(
        laptop.subscribe(&format!("demolab/{LAB}/#")).await?,
        SubscribeReasonCode::Success(QoS::AtLeastOnce)
    );
    let seen = laptop.next_publish().await?;
    assert!(
        seen.topic.starts_with(&format!("demolab/{LAB}/")),
        "{}",
        seen.topic
    );
    for filter in [format!("demolab/{OTHER_LAB}/#"), "spBv1.0/#".to_owned()] {
        assert_eq!(
            laptop.subscribe(&filter).await?,
            SubscribeReasonCode::Failure,
            "{filter}"
        );
    }
    laptop
        .publish(
            &format!("demolab/{LAB}/compressor-1/motor.duty_pct"),
            b"1".to_vec(),
        )
        .await?;
    assert_eq!(denied(http, "subscribe").await?, subscribes_denied + 2);
    assert_eq!(denied(http, "publish").await?, publishes_denied + 1);
    let mut impostor = Laptop::new(mqtt, "team-x", Some((&wrong.id, &right.token)));
    impostor.refused().await?;

    // The teacher starts the clock; the hub stages the leak some seconds later.
    let started = call(
        http,
        "POST",
        &format!("/api/v1/games/{id}/start"),
        teacher,
        None,
        200,
    )
    .await?;
    let start_ms = started["started_at_ms"].as_u64().context("started")?;
    let measured_end = started["periods"]["measured"][1]
        .as_u64()
        .context("periods")?;
    assert_eq!(
        refused(
            http,
            "POST",
            "/api/v1/team/answers",
            token,
            Some(json!({ "challenge": "how-much", "value": 1.0 })),
            409
        )
        .await?,
        "period_not_over"
    );
    wait_until(
        Duration::from_secs(90),
        "the measured period to end",
        || now_ms() > measured_end + 200,
    )
    .await?;
    let view = call(
        http,
        "GET",
        &format!("/api/v1/games/{id}"),
        teacher,
        None,
        200,
    )
    .await?;
    let truth = |challenge: &str| -> anyhow::Result<Value> {
        view["key"]
            .as_array()
            .context("key")?
            .iter()
            .find(|k| k["challenge"] == challenge)
            .map(|k| k["truth"].clone())
            .filter(|t| !t.is_null())
            .with_context(|| format!("no truth for {challenge}: {view}"))
    };
    let machine = truth("which-machine")?;
    let fault_ms = truth("when")?.as_u64().context("when")?;
    let wasted_wh = truth("how-much")?.as_f64().context("how-much")?;
    assert!(
        fault_ms >= start_ms + 15_000 && fault_ms <= start_ms + 24_000 + 1_000,
        "the fault comes between a quarter and 40 % into the minute: {}",
        fault_ms - start_ms
    );
    assert_eq!(view["fault"]["twin"], machine);

    // A limit the history shows to separate before from after, as a team would find it.
    let duty = samples(
        http,
        &right.token,
        "compressor-1",
        "motor.duty_pct",
        start_ms,
        now_ms(),
    )
    .await?;
    let max_of = |pick: &dyn Fn(u64) -> bool| {
        duty.iter()
            .filter(|(t, _)| pick(*t))
            .map(|(_, v)| *v)
            .fold(f64::MIN, f64::max)
    };
    let (before, after) = (max_of(&|t| t < fault_ms), max_of(&|t| t >= fault_ms));
    let separable = after > before;
    let right_limit = if separable {
        (before + after) / 2.0
    } else {
        // Nothing separates them yet: a limit no sample can pass, which catches nothing.
        1e9
    };
    eprintln!("duty before the leak ≤ {before:.3} %, after ≥ {after:.3} %: separable {separable}");

    let hint = call(
        http,
        "POST",
        "/api/v1/team/hints",
        Some(&close.token),
        Some(json!({ "challenge": "how-much" })),
        200,
    )
    .await?;
    assert_eq!(hint["cost"], 30);
    let scale = wasted_wh.abs().max(1.0);
    let answers: [(&Team, [Value; 4], [u64; 4]); 3] = [
        (
            &right,
            [
                machine.clone(),
                fault_ms.into(),
                wasted_wh.into(),
                right_limit.into(),
            ],
            [100, 100, 100, if separable { 100 } else { 0 }],
        ),
        (
            // One minute off with 30 s tolerance is 75; 20 % off is 67; a limit always passed
            // is one false alarm before the fault: 75.
            &close,
            [
                "compressor-1".into(),
                (fault_ms + 60_000).into(),
                (wasted_wh + 0.2 * scale).into(),
                (-1.0).into(),
            ],
            [100, 75, 67, 75],
        ),
        (
            &wrong,
            [
                format!("{LAB}/mill-1").into(),
                (fault_ms - 600_000).into(),
                (wasted_wh + 10.0 * scale).into(),
                1e9.into(),
            ],
            [0, 0, 0, 0],
        ),
    ];
    let challenges = ["which-machine", "when", "how-much", "alarm"];
    for (team, values, points) in &answers {
        for ((challenge, value), expected) in challenges.iter().zip(values).zip(points) {
            let answer = call(
                http,
                "POST",
                "/api/v1/team/answers",
                Some(&team.token),
                Some(json!({ "challenge": challenge, "value": value })),
                200,
            )
            .await?;
            assert_eq!(
                answer["points"].as_u64(),
                Some(*expected),
                "{} on {challenge}: {answer}",
                team.name
            );
        }
    }
    assert_eq!(
        refused(
            http,
            "POST",
            "/api/v1/team/answers",
            token,
            Some(json!({ "challenge": "when", "value": 0 })),
            409
        )
        .await?,
        "already_answered"
    );

    let right_total = 300 + if separable { 100 } else { 0 };
    let expected = [
        ("Right", right_total, 1),
        ("Close", 287, 2),
        ("Wrong", 0, 3),
    ];
    for viewer in [token, Some(wrong.token.as_str()), None] {
        let board = call(
            http,
            "GET",
            &format!("/api/v1/games/{id}/leaderboard"),
            viewer,
            None,
            200,
        )
        .await?;
        let rows: Vec<(&str, u64, u64)> = board
            .as_array()
            .context("board")?
            .iter()
            .map(|s| {
                (
                    s["team"].as_str().unwrap_or_default(),
                    s["score"].as_u64().unwrap_or_default(),
                    s["rank"].as_u64().unwrap_or_default(),
                )
            })
            .collect();
        assert_eq!(rows, expected, "seen with {viewer:?}");
    }
    let own = call(http, "GET", "/api/v1/team", Some(&close.token), None, 200).await?;
    assert_eq!(own["score"], 287);
    assert_eq!(own["team"], "Close");

    // The CSV holds the same numbers: a row per team and challenge, and a total.
    let (status, csv) = demolab_tests::http(
        http,
        "GET",
        &format!("/api/v1/games/{id}/results.csv"),
        teacher,
        None,
    )
    .await?;
    assert_eq!(status, 200, "{csv}");
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some("game,team_id,team,challenge,answer,answered_at_ms,points,hint_cost,score,reason")
    );
    let rows: Vec<Vec<&str>> = lines.map(|l| l.splitn(10, ',').collect()).collect();
    assert_eq!(rows.len(), 3 * 5, "{csv}");
    for (team, _, points) in &answers {
        for (challenge, points) in challenges.iter().zip(points) {
            let row = rows
                .iter()
                .find(|r| r[2] == team.name && r[3] == *challenge)
                .with_context(|| format!("no row {} {challenge}", team.name))?;
            let hint_cost = if team.name == "Close" && *challenge == "how-much" {
                30
            } else {
                0
            };
            assert_eq!(row[1], team.id);
            assert_eq!(row[6], points.to_string(), "{row:?}");
            assert_eq!(row[7], hint_cost.to_string(), "{row:?}");
            assert_eq!(
                row[8],
                points.saturating_sub(hint_cost).to_string(),
                "{row:?}"
            );
        }
        let total = rows
            .iter()
            .find(|r| r[2] == team.name && r[3] == "total")
            .context("a total row")?;
        let score = expected
            .iter()
            .find(|(name, ..)| *name == team.name)
            .map(|(_, score, _)| *score)
            .unwrap_or_default();
        assert_eq!(total[8], score.to_string(), "{total:?}");
    }

    // The teacher ends the game: team tokens, streams and MQTT logins stop working.
    let ended = call(
        http,
        "POST",
        &format!("/api/v1/games/{id}/end"),
        teacher,
        None,
        200,
    )
    .await?;
    assert_eq!(ended["phase"], "ended");
    assert_eq!(
        refused(http, "GET", "/api/v1/team", token, None, 401).await?,
        "invalid_token"
    );
    loop {
        match within(DEADLINE, "the stream to close", socket.next()).await? {
            Some(Ok(Message::Close(frame))) => {
                let code = frame.map(|f| u16::from(f.code));
                assert_eq!(code, Some(hub::api::CLOSE_SESSION_ENDED));
                break;
            }
            Some(Ok(_)) => {}
            other => bail!("the stream ended without a close frame: {other:?}"),
        }
    }
    // The team's MQTT connection is closed, and it cannot log in again.
    laptop.closed().await?;
    let mut late = Laptop::new(mqtt, "team-late", Some((&right.id, &right.token)));
    late.refused().await?;
    assert_eq!(
        refused(
            http,
            "POST",
            "/api/v1/games/join",
            None,
            Some(json!({ "code": code, "team": "Late" })),
            404
        )
        .await?,
        "bad_join_code"
    );
    let scenarios = call(http, "GET", "/api/v1/scenarios", teacher, None, 200).await?;
    assert_eq!(scenarios["running"], json!([]), "the leak is taken back");
    Ok(())
}
