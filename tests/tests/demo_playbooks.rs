//! Guided demonstrations in the demo region, through the API: the cybersecurity playbook moves
//! on by itself once a rogue client (`demolab-sim attack`'s code) has been refused and counted;
//! a machine playbook starts its scenario and a reset takes it back; the virtual line across the
//! two labs is shown in flow order.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, ensure};
use demolab_demo::region::Region;
use demolab_tests::{http, test_region, within};
use serde_json::{Value, json};
use simulators::attack::{Target, run as attack};
use simulators::node::NodeLogin;

const DEADLINE: Duration = Duration::from_secs(30);

async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> anyhow::Result<(u16, Value)> {
    let bytes = body.map(|b| b.to_string().into_bytes());
    let (status, text) = http(addr, method, path, token, bytes.as_deref()).await?;
    Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
}

/// Polls the running demonstration until `step`, failing after the deadline.
async fn until_step(addr: SocketAddr, step: u64) -> anyhow::Result<Value> {
    within(DEADLINE, &format!("step {step}"), async {
        loop {
            let (_, run) = call(addr, "GET", "/api/v1/playbooks/run", None, None).await?;
            if run["step"].as_u64() == Some(step) {
                return anyhow::Ok(run);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn playbooks_run_on_the_demo_region() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let region = Region::start(test_region(data.path(), 5, Duration::from_millis(100))).await?;
    let outcome = demonstrate(&region).await;
    region.shutdown().await?;
    outcome
}

async fn demonstrate(region: &Region) -> anyhow::Result<()> {
    let api = region.hub().http_addr();
    let mqtt = region.hub().mqtt_addr();
    ensure!(region.until_running(DEADLINE).await.is_empty());
    let (status, login) = call(
        api,
        "POST",
        "/api/v1/auth/login",
        None,
        Some(json!({ "user": "operator", "password": "operator-pw" })),
    )
    .await?;
    ensure!(status == 200, "login: {login}");
    let operator = login["token"].as_str().context("token")?.to_owned();
    let operator = Some(operator.as_str());

    // Visitors may watch, only operators run a demonstration.
    let (status, playbooks) = call(api, "GET", "/api/v1/playbooks", None, None).await?;
    assert_eq!(status, 200);
    assert_eq!(playbooks.as_array().map(Vec::len), Some(4));
    let (status, _) = call(
        api,
        "POST",
        "/api/v1/playbooks/run",
        None,
        Some(json!({ "playbook": "cybersecurity" })),
    )
    .await?;
    assert_eq!(status, 401);

    // The cybersecurity playbook waits for refused attempts, and they come from the attack.
    let (status, run) = call(
        api,
        "POST",
        "/api/v1/playbooks/run",
        operator,
        Some(json!({ "playbook": "cybersecurity" })),
    )
    .await?;
    assert_eq!((status, run["step"].as_u64()), (200, Some(0)), "{run}");
    let (_, run) = call(api, "POST", "/api/v1/playbooks/run/next", operator, None).await?;
    assert_eq!(
        (run["step"].as_u64(), run["waiting"].as_bool()),
        (Some(1), Some(true))
    );
    let (_, before) = call(api, "GET", "/api/v1/security", None, None).await?;
    let viewer = NodeLogin {
        username: "viewer".into(),
        password: region
            .accounts()
            .password("viewer")
            .context("the viewer login")?
            .to_owned(),
    };
    let target = Target {
        host: mqtt.ip().to_string(),
        port: mqtt.port(),
        lab: "aarhus-machining".into(),
        gateway: "gw-aarhus".into(),
        machine: "mill-1".into(),
    };
    let attempts = attack(&target, Some(&viewer)).await;
    assert_eq!(attempts.len(), 7, "{attempts:#?}");
    assert!(attempts[0].refused_at_connect && attempts[1].refused_at_connect);
    until_step(api, 2).await?;
    let counter = |doc: &Value, key: &str| doc[key].as_u64().unwrap_or_default();
    within(DEADLINE, "the Will to be refused too", async {
        loop {
            let (_, after) = call(api, "GET", "/api/v1/security", None, None).await?;
            if counter(&after, "mqtt_publishes_refused")
                == counter(&before, "mqtt_publishes_refused") + 5
            {
                return anyhow::Ok(after);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await??;
    let (_, after) = call(api, "GET", "/api/v1/security", None, None).await?;
    assert_eq!(
        counter(&after, "mqtt_logins_refused"),
        counter(&before, "mqtt_logins_refused") + 2
    );
    // Nothing fake reached the twin.
    let (_, mill) = call(
        api,
        "GET",
        "/api/v1/twins/aarhus-machining/mill-1",
        operator,
        None,
    )
    .await?;
    assert_ne!(
        mill["features"]["spindle"]["properties"]["power_w"]["reported"].as_f64(),
        Some(simulators::attack::FAKE_VALUE)
    );

    // A machine playbook starts its scenario on the chosen mill; a reset takes it back.
    let (status, run) = call(
        api,
        "POST",
        "/api/v1/playbooks/run",
        operator,
        Some(json!({ "playbook": "predictive-maintenance", "twin": "odense-machining/mill-1" })),
    )
    .await?;
    assert_eq!(
        (status, &run["twin"]),
        (200, &json!("odense-machining/mill-1"))
    );
    call(api, "POST", "/api/v1/playbooks/run/next", operator, None).await?;
    let (_, scenarios) = call(api, "GET", "/api/v1/scenarios", operator, None).await?;
    assert_eq!(
        scenarios["running"][0]["twin"], "odense-machining/mill-1",
        "{scenarios}"
    );
    // The audience hears what happens: the scenario file's notes, then what to watch.
    assert_eq!(
        scenarios["running"][0]["notes"],
        json!([
            "At once: the outer race of the spindle bearing starts to pit",
            "Watch spindle.vibration_rms go above 4: a worn bearing adds up to 4 mm/s at full speed",
            "Watch anomaly.score go above 5: the hub flags the drift well before the wear is complete",
        ]),
        "{scenarios}"
    );
    let (status, _) = call(api, "DELETE", "/api/v1/playbooks/run", operator, None).await?;
    assert_eq!(status, 204);
    let (_, scenarios) = call(api, "GET", "/api/v1/scenarios", operator, None).await?;
    assert_eq!(scenarios["running"], json!([]));
    let (_, run) = call(api, "GET", "/api/v1/playbooks/run", None, None).await?;
    assert_eq!(run, Value::Null);
    let (status, _) = call(
        api,
        "POST",
        "/api/v1/playbooks/run",
        operator,
        Some(json!({ "playbook": "predictive-maintenance", "twin": "odense-machining/compressor-1" })),
    )
    .await?;
    assert_eq!(status, 409, "a compressor is not a mill");

    // The virtual line across the two labs, in flow order.
    let (_, lines) = call(api, "GET", "/api/v1/lines", None, None).await?;
    let stations: Vec<&str> = lines[0]["stations"]
        .as_array()
        .context("stations")?
        .iter()
        .filter_map(|s| s["twin"].as_str())
        .collect();
    assert_eq!(lines[0]["line"], "virtual-line-1");
    assert_eq!(
        stations,
        ["aarhus-machining/mill-1", "odense-machining/lathe-1"]
    );
    Ok(())
}
