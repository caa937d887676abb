//! Demo mode through the hub's API: an operator starts the bearing-wear scenario on a running
//! simulated mill, its vibration climbs at the twin, and stopping it puts the machine back; a
//! student is refused, and bad requests get their documented codes.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use demolab_demo::scenarios::SimulatedScenarios;
use demolab_tests::{
    burst_node, gateway_config, http, hub_config, start_gateway_with, start_hub_with, wait_until,
};
use hub::auth::{AuthConfig, GameConfig, Role, UserConfig, hash_password};
use hub::twin::TwinKey;
use simulators::machines::{CncMill, CncParams, MachineKind};
use simulators::node::run_controlled_node;
use tokio_util::sync::CancellationToken;

async fn login(addr: std::net::SocketAddr, user: &str) -> anyhow::Result<String> {
    let body = serde_json::json!({"user": user, "password": "secret"}).to_string();
    let (status, text) = http(
        addr,
        "POST",
        "/api/v1/auth/login",
        None,
        Some(body.as_bytes()),
    )
    .await?;
    anyhow::ensure!(status == 200, "{status} {text}");
    let doc: serde_json::Value = serde_json::from_str(&text)?;
    Ok(doc["token"].as_str().context("token")?.to_owned())
}

async fn call(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    token: &str,
    body: Option<&str>,
) -> anyhow::Result<(u16, serde_json::Value)> {
    let (status, text) = http(addr, method, path, Some(token), body.map(str::as_bytes)).await?;
    Ok((status, serde_json::from_str(&text).unwrap_or_default()))
}

fn vibration(twins: &hub::twin::TwinRegistry, key: &TwinKey) -> f64 {
    twins
        .get(key)
        .and_then(|t| t.value("spindle.vibration_rms"))
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_runs_a_scenario_on_a_live_simulated_machine() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let key = TwinKey::parse("lab-d/mill-1").context("key")?;
    let mut simulated = SimulatedScenarios::default();
    let control = simulated.add_machine(&key, MachineKind::CncMill);
    let user = |name: &str, role| -> anyhow::Result<UserConfig> {
        Ok(UserConfig {
            name: name.into(),
            role,
            password_hash: hash_password("secret")?,
            game: (role == Role::Student).then(|| "g".to_owned()),
        })
    };
    let hub = start_hub_with(hub::HubConfig {
        scenarios: Some(Arc::new(simulated)),
        auth: AuthConfig {
            users: vec![user("olga", Role::Operator)?, user("sam", Role::Student)?],
            games: vec![GameConfig {
                id: "g".into(),
                name: "G".into(),
                labs: vec!["lab-d".parse()?],
            }],
            ..AuthConfig::default()
        },
        ..hub_config(data.path())
    })
    .await?;
    let addr = hub.http_addr();
    let port = hub.mqtt_addr().port();
    let cancel = CancellationToken::new();
    let _stop = cancel.clone().drop_guard();
    let gateway = start_gateway_with(
        gateway_config(port, "lab-d", "gw-d", &data.path().join("buffer"))?,
        &cancel,
    )
    .await?;
    // A mill simulated a thousand times faster than real time: minutes of wear in a second.
    let mut node = burst_node(port, 0xd3d, "mill-1", 21, 0)?;
    node.max_samples = None;
    node.tick_interval = Duration::from_millis(1);
    let mill = Box::new(CncMill::new(node.seed, CncParams::default()));
    let running = tokio::spawn(run_controlled_node(node, mill, control, cancel.clone()));

    let olga = login(addr, "olga").await?;
    let sam = login(addr, "sam").await?;
    let twins = hub.twins().clone();
    // Healthy production first: the highest vibration of 600 samples (10 simulated minutes).
    let mut healthy_max: f64 = 0.0;
    wait_until(Duration::from_secs(20), "600 healthy samples", || {
        healthy_max = healthy_max.max(vibration(&twins, &key));
        twins.get(&key).is_some_and(|t| t.samples >= 600)
    })
    .await?;

    let (status, list) = call(addr, "GET", "/api/v1/scenarios", &sam, None).await?;
    assert_eq!((status, &list["simulated"]), (200, &true.into()));
    let offered: Vec<&str> = list["available"]
        .as_array()
        .context("available")?
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert_eq!(offered, ["predictive-maintenance"], "only what fits a mill");

    let path = "/api/v1/twins/lab-d/mill-1/scenario";
    let start = r#"{"scenario": "predictive-maintenance"}"#;
    let (status, refused) = call(addr, "POST", path, &sam, Some(start)).await?;
    assert_eq!(
        (status, &refused["error"]["code"]),
        (403, &"forbidden".into())
    );
    let (status, doc) = call(
        addr,
        "POST",
        path,
        &olga,
        Some(r#"{"scenario": "energy-waste"}"#),
    )
    .await?;
    assert_eq!(
        (status, &doc["error"]["code"]),
        (409, &"not_simulated".into()),
        "{doc}"
    );
    let (status, doc) = call(addr, "POST", path, &olga, Some(r#"{"scenario": "nope"}"#)).await?;
    assert_eq!(
        (status, &doc["error"]["code"]),
        (404, &"scenario_not_found".into())
    );
    let (status, doc) = call(addr, "DELETE", path, &olga, None).await?;
    assert_eq!(
        (status, &doc["error"]["code"]),
        (404, &"scenario_not_running".into())
    );

    let (status, started) = call(addr, "POST", path, &olga, Some(start)).await?;
    assert_eq!(
        (status, &started["started_by"]),
        (200, &"olga".into()),
        "{started}"
    );
    wait_until(
        Duration::from_secs(20),
        "the worn bearing's vibration",
        || vibration(&twins, &key) > healthy_max + 2.0,
    )
    .await?;
    let (_, list) = call(addr, "GET", "/api/v1/scenarios", &olga, None).await?;
    assert_eq!(list["running"][0]["scenario"], "predictive-maintenance");

    let (status, _) = call(addr, "DELETE", path, &olga, None).await?;
    assert_eq!(status, 204);
    wait_until(Duration::from_secs(20), "the bearing restored", || {
        vibration(&twins, &key) <= healthy_max
    })
    .await?;
    let (_, list) = call(addr, "GET", "/api/v1/scenarios", &olga, None).await?;
    assert_eq!(list["running"], serde_json::json!([]));

    cancel.cancel();
    let _ = running.await;
    gateway.shutdown().await?;
    hub.shutdown().await?;
    Ok(())
}
