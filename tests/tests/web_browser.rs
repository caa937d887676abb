//! The web platform in a real browser (Debian's chromium, driven over WebDriver by chromedriver):
//! one hub, two labs with a gateway and simulated mills each. As an operator: the overview shows
//! both labs, a machine page shows a value changing and charts drawn, an alarm is acknowledged.
//! As a student: only the game's lab, and an acknowledgement the hub refuses, shown as such.
//! Then 50 machines stream and the overview's update-to-paint time is measured in the page.
//!
//! A second test plays a game in the demo region's pages: the teacher console makes it, a team
//! joins on its page and answers, the projector's leaderboard shows the score. Then an operator
//! runs the cybersecurity demonstration from the guide page: the projector shows the narration
//! and the security counters, a rogue client attacks, and the step moves on by itself.
//!
//! Runs when `DEMOLAB_CHROMEDRIVER` names the chromedriver binary; with `CI` set and no driver it
//! fails, elsewhere it is skipped. `DEMOLAB_SCREENSHOTS=1` writes `docs/screenshots/*.png`.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use demolab_demo::scenarios::SimulatedScenarios;
use demolab_tests::{
    burst_node, gateway_config, http, hub_config, start_gateway_with, start_hub_with, within,
};
use fantoccini::{Client, ClientBuilder, Locator};
use hub::auth::{AuthConfig, GameConfig, Role, UserConfig, hash_password};
use hub::{Hub, HubConfig};
use serde_json::{Value, json};
use simulators::machines::{CncMill, CncParams, MachineKind};
use simulators::node::{run_controlled_node, run_mqtt_node};
use simulators::timeline::LiveControl;
use tokio_util::sync::CancellationToken;

/// Machines per lab that stream throughout; the rest of the 50 join for the measurement.
const LIVE_AT_START: u32 = 4;
const MACHINES_PER_LAB: u32 = 25;
const TICK: Duration = Duration::from_millis(300);
const PAINT_UPDATES: u64 = 400;

struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind(("127.0.0.1", 0))?.local_addr()?.port())
}

/// chromedriver on a free port, and a headless chromium session through it.
async fn browser(
    chromedriver: &str,
    profile: &std::path::Path,
) -> anyhow::Result<(Driver, Client)> {
    let port = free_port()?;
    let driver = Driver(
        Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {chromedriver}"))?,
    );
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    poll(
        Duration::from_secs(20),
        "chromedriver to listen",
        || async move { Ok(tokio::net::TcpStream::connect(addr).await.is_ok()) },
    )
    .await?;
    let mut options = json!({
        "args": [
            "--headless", "--no-sandbox", "--disable-background-networking",
            "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1440,1000",
            format!("--user-data-dir={}", profile.display()),
        ],
    });
    if let Ok(binary) = std::env::var("DEMOLAB_CHROMIUM") {
        options["binary"] = binary.into();
    }
    let mut capabilities = serde_json::Map::new();
    capabilities.insert("goog:chromeOptions".into(), options);
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    let client = ClientBuilder::new(connector)
        .capabilities(capabilities)
        .connect(&format!("http://{addr}"))
        .await
        .context("opening a chromium session")?;
    Ok((driver, client))
}

/// Polls `script` (a function body returning a value) until it returns something truthy.
async fn until_js(
    client: &Client,
    what: &str,
    script: &str,
    deadline: Duration,
) -> anyhow::Result<Value> {
    let end = Instant::now() + deadline;
    loop {
        let value = client.execute(script, vec![]).await?;
        let truthy = match &value {
            Value::Null | Value::Bool(false) => false,
            Value::Number(n) => n.as_f64().is_some_and(|n| n != 0.0),
            Value::String(s) => !s.is_empty(),
            _ => true,
        };
        if truthy {
            return Ok(value);
        }
        if Instant::now() > end {
            let text = client
                .execute("return document.body.innerText.slice(0, 2000)", vec![])
                .await
                .unwrap_or_default();
            bail!("timed out waiting for {what}; page text: {text}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn log_in(client: &Client, base: &str, user: &str) -> anyhow::Result<()> {
    log_in_with(client, base, user, &format!("{user}-secret")).await
}

async fn log_in_with(
    client: &Client,
    base: &str,
    user: &str,
    password: &str,
) -> anyhow::Result<()> {
    client.goto(&format!("{base}/login")).await?;
    let name = client
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css("input[name=user]"))
        .await?;
    name.send_keys(user).await?;
    client
        .find(Locator::Css("input[name=password]"))
        .await?
        .send_keys(password)
        .await?;
    client
        .find(Locator::Css("form.login button[type=submit]"))
        .await?
        .click()
        .await?;
    until_js(
        client,
        &format!("{user} to be logged in"),
        &format!("return document.getElementById('who').textContent.startsWith('{user}')"),
        Duration::from_secs(15),
    )
    .await?;
    Ok(())
}

async fn screenshot(client: &Client, name: &str) -> anyhow::Result<()> {
    if std::env::var("DEMOLAB_SCREENSHOTS").as_deref() != Ok("1") {
        return Ok(());
    }
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/screenshots");
    std::fs::create_dir_all(&dir)?;
    let png = client.screenshot().await?;
    std::fs::write(dir.join(name), png)?;
    println!("wrote docs/screenshots/{name}");
    Ok(())
}

fn user(name: &str, role: Role, game: Option<&str>) -> anyhow::Result<UserConfig> {
    Ok(UserConfig {
        name: name.into(),
        role,
        password_hash: hash_password(&format!("{name}-secret"))?,
        game: game.map(str::to_owned),
    })
}

/// The hub, with lab-a/mill-1 a simulated machine whose scenarios operators can start (demo
/// mode); returns the control its node must run with.
async fn start_hub(data: &std::path::Path) -> anyhow::Result<(Hub, LiveControl)> {
    let mut simulated = SimulatedScenarios::default();
    let control = simulated.add_machine(
        &hub::twin::TwinKey::parse("lab-a/mill-1").context("key")?,
        MachineKind::CncMill,
    );
    let hub = start_hub_with(HubConfig {
        scenarios: Some(std::sync::Arc::new(simulated)),
        auth: AuthConfig {
            token_ttl_s: 3600,
            users: vec![
                user("operator", Role::Operator, None)?,
                user("student", Role::Student, Some("game"))?,
            ],
            games: vec![GameConfig {
                id: "game".into(),
                name: "Innovation game".into(),
                labs: vec!["lab-a".parse()?],
            }],
            ..AuthConfig::default()
        },
        ..hub_config(data)
    })
    .await?;
    Ok((hub, control))
}

fn node_id(lab: u64, machine: u32) -> u64 {
    0xb0_0000 | lab << 8 | u64::from(machine)
}

/// A lab's gateway, knowing all its mills (so later ones can join), with a short liveness
/// timeout so that a mill that stops goes offline and raises its alarm quickly.
async fn start_lab(
    mqtt_port: u16,
    lab_index: u64,
    data: &std::path::Path,
    cancel: &CancellationToken,
) -> anyhow::Result<gateway::GatewayHandle> {
    let lab = format!("lab-{}", ['a', 'b'][lab_index as usize]);
    let gateway = format!("gw-{}", ['a', 'b'][lab_index as usize]);
    let mut config = gateway_config(mqtt_port, &lab, &gateway, &data.join(&gateway))?;
    config.liveness_timeout = Duration::from_secs(1);
    config.accept_unconfigured_nodes = false;
    // + 3: the newcomer, born while the overview is open.
    for machine in 1..=MACHINES_PER_LAB + 3 {
        config.nodes.insert(
            protocol::NodeId(node_id(lab_index, machine)),
            format!("mill-{machine}").parse()?,
        );
    }
    start_gateway_with(config, cancel).await
}

fn spawn_live(
    mqtt_port: u16,
    lab_index: u64,
    machines: std::ops::RangeInclusive<u32>,
    control: Option<&LiveControl>,
    cancel: &CancellationToken,
) -> anyhow::Result<()> {
    for machine in machines {
        let mut node = burst_node(
            mqtt_port,
            node_id(lab_index, machine),
            &format!("mill-{machine}"),
            u64::from(machine) + lab_index * 100,
            0,
        )?;
        node.max_samples = None;
        node.tick_interval = TICK;
        match control.filter(|_| lab_index == 0 && machine == 1) {
            Some(control) => {
                let mill = Box::new(CncMill::new(node.seed, CncParams::default()));
                tokio::spawn(run_controlled_node(
                    node,
                    mill,
                    control.clone(),
                    cancel.clone(),
                ));
            }
            None => {
                tokio::spawn(run_mqtt_node(node, cancel.clone()));
            }
        }
    }
    Ok(())
}

/// One browser at a time: the paint-time measurement must not share two cores with a second
/// chromium.
static ONE_BROWSER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The chromedriver binary, or `None` when the browser tests are skipped here.
fn chromedriver() -> anyhow::Result<Option<String>> {
    let Ok(chromedriver) = std::env::var("DEMOLAB_CHROMEDRIVER") else {
        if std::env::var_os("CI").is_some() {
            bail!("CI is set but DEMOLAB_CHROMEDRIVER is not: the browser test must run in CI");
        }
        println!(
            "skipped: set DEMOLAB_CHROMEDRIVER to the chromedriver binary to run the browser test"
        );
        return Ok(None);
    };
    Ok(Some(chromedriver))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_platform_works_in_a_real_browser() -> anyhow::Result<()> {
    let Some(chromedriver) = chromedriver()? else {
        return Ok(());
    };
    let _alone = ONE_BROWSER.lock().await;
    let data = tempfile::tempdir()?;
    let (hub, control) = start_hub(data.path()).await?;
    let api = hub.http_addr();
    let port = hub.mqtt_addr().port();
    let base = format!("http://{api}");
    let cancel = CancellationToken::new();
    let _stop = cancel.clone().drop_guard();
    let gateways = [
        start_lab(port, 0, data.path(), &cancel).await?,
        start_lab(port, 1, data.path(), &cancel).await?,
    ];
    spawn_live(port, 0, 1..=LIVE_AT_START, Some(&control), &cancel)?;
    spawn_live(port, 1, 1..=LIVE_AT_START, None, &cancel)?;
    // Two mills in lab-a that send a few samples and stop: each raises an offline alarm.
    let quiet = [MACHINES_PER_LAB + 1, MACHINES_PER_LAB + 2];
    for machine in quiet {
        let node = burst_node(port, node_id(0, machine), &format!("mill-{machine}"), 7, 20)?;
        run_mqtt_node(node, cancel.clone()).await?;
    }
    let alarm_of = |machine: u32| format!("lab-a/mill-{machine}/offline/1");
    let operator_token = api_login(api, "operator").await?;
    for machine in quiet {
        let path = format!("/api/v1/alarms/{}", alarm_of(machine));
        poll(Duration::from_secs(20), "the offline alarm", || {
            let path = path.clone();
            let token = operator_token.clone();
            async move {
                let (status, _) = http(api, "GET", &path, Some(&token), None).await?;
                Ok(status == 200)
            }
        })
        .await?;
    }

    let profile = tempfile::tempdir()?;
    let (_driver, client) = browser(&chromedriver, profile.path()).await?;
    let result = async {
        // Without a login the page asks for one.
        client.goto(&base).await?;
        until_js(&client, "the login form", "return document.querySelector('form.login') !== null", Duration::from_secs(15)).await?;

        // Operator: both labs on the overview.
        log_in(&client, &base, "operator").await?;
        client.goto(&base).await?;
        let labs = until_js(&client, "both labs with their machines",
            "const labs = [...document.querySelectorAll('section.lab')].map(s => s.dataset.lab); \
             return document.querySelectorAll('.card').length >= 10 ? labs : null",
            Duration::from_secs(15)).await?;
        assert_eq!(labs, json!(["lab-a", "lab-b"]));
        until_js(&client, "an offline card with its alarm",
            &format!("const c = document.querySelector('.card[data-twin=\"{}\"]'); \
                      return c && c.dataset.state === 'offline' && c.querySelector('.alarm-line').textContent.includes('⚠')",
                "lab-a/mill-26"),
            Duration::from_secs(10)).await?;
        until_js(&client, "live values on the cards",
            "return [...document.querySelectorAll('.card[data-state=\"running\"], .card[data-state=\"idle\"], .card[data-state=\"warming\"], .card[data-state=\"off\"]')].length >= 4",
            Duration::from_secs(15)).await?;
        screenshot(&client, "overview.png").await?;

        // A machine born after the page loaded (a node plugged in) gets its card from the
        // stream: same document, no reload.
        client.execute("window.__sameDocument = true", vec![]).await?;
        let newcomer = MACHINES_PER_LAB + 3;
        spawn_live(port, 1, newcomer..=newcomer, None, &cancel)?;
        until_js(&client, "the newcomer's live card without a reload",
            &format!("const c = document.querySelector('.card[data-twin=\"lab-b/mill-{newcomer}\"]'); \
                      return window.__sameDocument === true && c !== null && c.dataset.state !== 'offline'"),
            Duration::from_secs(20)).await?;

        // A machine: a live value changes, charts are drawn.
        client.find(Locator::Css(".card[data-twin=\"lab-a/mill-1\"]")).await?.click().await?;
        until_js(&client, "the machine page", "return location.pathname === '/machine/lab-a/mill-1' && document.querySelector('.machine')", Duration::from_secs(10)).await?;
        let before = until_js(&client, "live values", "const v = [...document.querySelectorAll('.big-value')].map(e => e.textContent).join('|'); return v.includes('–') ? null : v", Duration::from_secs(15)).await?;
        until_js(&client, "a live value to change",
            &format!("return [...document.querySelectorAll('.big-value')].map(e => e.textContent).join('|') !== {before}"),
            Duration::from_secs(15)).await?;
        until_js(&client, "a live chart drawn",
            "return Number(document.querySelector('canvas.chart[data-metric=\"spindle.power_w\"]').dataset.points || 0) >= 2",
            Duration::from_secs(15)).await?;
        until_js(&client, "the history chart drawn",
            "return Number(document.getElementById('history-chart').dataset.points || 0) >= 1",
            Duration::from_secs(15)).await?;
        // A range change redraws from the hub's downsampled history.
        client.find(Locator::Css("button.seg[data-range=\"last_15m\"]")).await?.click().await?;
        until_js(&client, "the 15-minute history", "return document.querySelector('button.seg.on').dataset.range === 'last_15m' && Number(document.getElementById('history-chart').dataset.points) >= 1", Duration::from_secs(10)).await?;
        screenshot(&client, "machine.png").await?;

        // Demo mode: the operator starts the bearing-wear scenario on this simulated mill, sees
        // it running, and stops it.
        client.find(Locator::Css("button.demo-start")).await?.click().await?;
        until_js(&client, "the running scenario",
            "const s = document.querySelector('.demo-status'); return s && s.textContent.includes('A spindle bearing wears out') && s.textContent.includes('outer race') && s.textContent.includes('operator')",
            Duration::from_secs(10)).await?;
        let running = get_json_as(api, "/api/v1/scenarios", &operator_token).await?;
        assert_eq!(running["running"][0]["twin"], "lab-a/mill-1");
        client.find(Locator::Css("button.demo-stop")).await?.click().await?;
        until_js(&client, "the scenario stopped",
            "return document.querySelector('.demo-status').textContent === 'No scenario running'",
            Duration::from_secs(10)).await?;

        // The protocol view shows the hops of a sample with Sparkplug seq, bdSeq and latency.
        client.goto(&format!("{base}/machine/lab-a/mill-1/protocol")).await?;
        let flow = until_js(&client, "the path of a sample",
            "const f = document.querySelector('ol.flow'); return f && f.querySelectorAll('.hop').length === 5 ? f.innerText : null",
            Duration::from_secs(15)).await?;
        screenshot(&client, "protocol.png").await?;
        let flow = flow.as_str().unwrap_or_default();
        assert!(flow.contains("spBv1.0/lab-a/DDATA/gw-a/mill-1") && flow.contains("ms"), "{flow}");

        // Operator acknowledges the offline alarm of the first quiet mill.
        let (operator_alarm, student_alarm) = (alarm_of(quiet[0]), alarm_of(quiet[1]));
        client.goto(&format!("{base}/machine/lab-a/mill-{}", quiet[0])).await?;
        let ack = client.wait().at_most(Duration::from_secs(15))
            .for_element(Locator::Css(&format!("li.alarm[data-alarm=\"{operator_alarm}\"] button.ack"))).await?;
        ack.click().await?;
        until_js(&client, "the acknowledged alarm",
            &format!("const a = document.querySelector('li.alarm[data-alarm=\"{operator_alarm}\"]'); return a && a.classList.contains('acked')"),
            Duration::from_secs(10)).await?;
        let alarm = get_json_as(api, &format!("/api/v1/alarms/{operator_alarm}"), &operator_token).await?;
        assert_eq!((&alarm["state"], &alarm["acknowledged_by"]), (&json!("active_ack"), &json!("operator")));

        // Student: only the game's lab, and the hub's refusal shown on an acknowledgement.
        client.find(Locator::Id("auth")).await?.click().await?;
        log_in(&client, &base, "student").await?;
        client.goto(&base).await?;
        let labs = until_js(&client, "the student's overview",
            "const labs = [...document.querySelectorAll('section.lab')].map(s => s.dataset.lab); return labs.length ? labs : null",
            Duration::from_secs(15)).await?;
        assert_eq!(labs, json!(["lab-a"]));
        client.goto(&format!("{base}/machine/lab-a/mill-{}", quiet[1])).await?;
        let ack = client.wait().at_most(Duration::from_secs(15))
            .for_element(Locator::Css(&format!("li.alarm[data-alarm=\"{student_alarm}\"] button.ack"))).await?;
        ack.click().await?;
        let refusal = until_js(&client, "the refusal",
            &format!("return document.querySelector('li.alarm[data-alarm=\"{student_alarm}\"] .refusal').textContent"),
            Duration::from_secs(10)).await?;
        let refusal = refusal.as_str().unwrap_or_default();
        assert!(refusal.contains("403") && refusal.contains("forbidden"), "{refusal}");
        // The toast fades in: read its text, not its rendering.
        let toast = client
            .execute("return document.getElementById('toast').textContent", vec![])
            .await?;
        assert!(toast.as_str().is_some_and(|t| t.contains("forbidden")), "{toast}");
        let alarm = get_json_as(api, &format!("/api/v1/alarms/{student_alarm}"), &operator_token).await?;
        assert_eq!(alarm["state"], "active_unack");

        // 50 machines streaming: the overview's update-to-paint time.
        spawn_live(port, 0, LIVE_AT_START + 1..=MACHINES_PER_LAB, None, &cancel)?;
        spawn_live(port, 1, LIVE_AT_START + 1..=MACHINES_PER_LAB, None, &cancel)?;
        poll(Duration::from_secs(30), "50 machines online", || async {
            let twins = get_json_as(api, "/api/v1/twins?online=true", &operator_token).await?;
            Ok(twins.as_array().map_or(0, Vec::len) >= 2 * MACHINES_PER_LAB as usize)
        })
        .await?;
        client.find(Locator::Id("auth")).await?.click().await?;
        log_in(&client, &base, "operator").await?;
        client.goto(&base).await?;
        until_js(&client, "50 streaming cards",
            "return document.querySelectorAll('.card[data-state]:not([data-state=\"offline\"])').length >= 50",
            Duration::from_secs(20)).await?;
        client.execute("window.__demolabPerf.reset()", vec![]).await?;
        let started = Instant::now();
        until_js(&client, "enough updates painted",
            &format!("return window.__demolabPerf.count >= {PAINT_UPDATES}"),
            Duration::from_secs(60)).await?;
        let summary = client.execute("return window.__demolabPerf.summary()", vec![]).await?;
        let figure = |key: &str| summary[key].as_f64().unwrap_or(f64::NAN);
        println!(
            "update-to-paint with 50 machines: {} updates in {:.1} s, p50 {:.1} ms, p95 {:.1} ms, max {:.1} ms",
            summary["count"], started.elapsed().as_secs_f64(), figure("p50"), figure("p95"), figure("max"),
        );
        assert!(figure("p95") < 100.0, "p95 update-to-paint {summary}");
        anyhow::Ok(())
    }
    .await;
    let _ = client.close().await;
    cancel.cancel();
    for gateway in gateways {
        gateway.shutdown().await?;
    }
    within(Duration::from_secs(10), "the hub to stop", hub.shutdown()).await??;
    result
}

async fn get_json_as(api: SocketAddr, path: &str, token: &str) -> anyhow::Result<Value> {
    let (status, body) = http(api, "GET", path, Some(token), None).await?;
    anyhow::ensure!(status == 200, "GET {path}: {status} {body}");
    Ok(serde_json::from_str(&body)?)
}

async fn api_login(api: SocketAddr, user: &str) -> anyhow::Result<String> {
    let body = json!({"user": user, "password": format!("{user}-secret")}).to_string();
    let (status, body) = http(
        api,
        "POST",
        "/api/v1/auth/login",
        None,
        Some(body.as_bytes()),
    )
    .await?;
    anyhow::ensure!(status == 200, "login {user}: {status} {body}");
    let doc: Value = serde_json::from_str(&body)?;
    Ok(doc["token"].as_str().context("token")?.to_owned())
}

/// Polls an async `condition` every 50 ms until it holds, failing after `deadline`.
async fn poll<F, Fut>(deadline: Duration, what: &str, mut condition: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    within(deadline, what, async {
        loop {
            if condition().await? {
                return anyhow::Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_game_is_run_played_and_shown_in_the_pages() -> anyhow::Result<()> {
    let Some(chromedriver) = chromedriver()? else {
        return Ok(());
    };
    let _alone = ONE_BROWSER.lock().await;
    let data = tempfile::tempdir()?;
    let region = demolab_demo::region::Region::start(demolab_tests::test_region(
        data.path(),
        3,
        Duration::from_millis(200),
    ))
    .await?;
    let profile = tempfile::tempdir()?;
    let (_driver, client) = browser(&chromedriver, profile.path()).await?;
    let result = play_in_pages(&region, &client).await;
    let _ = client.close().await;
    region.shutdown().await?;
    result
}

async fn play_in_pages(
    region: &demolab_demo::region::Region,
    client: &Client,
) -> anyhow::Result<()> {
    let api = region.hub().http_addr();
    let base = format!("http://{api}");
    let password = region
        .logins()
        .iter()
        .find(|l| l.name == "teacher")
        .context("a teacher login")?
        .password
        .clone();
    anyhow::ensure!(
        region
            .until_running(Duration::from_secs(30))
            .await
            .is_empty()
    );

    // The teacher makes a one-lab game on the console.
    log_in_with(client, &base, "teacher", &password).await?;
    client.goto(&format!("{base}/games")).await?;
    client
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css("form.new-game select[name=lab]"))
        .await?
        .select_by_value("aarhus-machining")
        .await?;
    let minutes = client
        .find(Locator::Css("form.new-game input[name=duration_min]"))
        .await?;
    minutes.clear().await?;
    minutes.send_keys("5").await?;
    client
        .find(Locator::Css("form.new-game button[type=submit]"))
        .await?
        .click()
        .await?;
    let code = until_js(
        client,
        "the new game's join code",
        "return document.querySelector('.game[data-phase=open] .code')?.textContent",
        Duration::from_secs(15),
    )
    .await?;
    let code = code.as_str().context("code")?.to_owned();
    let game = until_js(
        client,
        "the game id",
        "return document.querySelector('.game[data-phase=open]')?.dataset.game",
        Duration::from_secs(5),
    )
    .await?;
    let game = game.as_str().context("game id")?.to_owned();
    client
        .find(Locator::Css(
            ".game[data-phase=open] button[data-action=start]",
        ))
        .await?
        .click()
        .await?;
    until_js(
        client,
        "the game to run",
        "return document.querySelector('.game[data-phase=running]')",
        Duration::from_secs(10),
    )
    .await?;
    screenshot(client, "games-teacher.png").await?;

    // A team joins on its page with the code and answers which machine has the fault.
    client.find(Locator::Id("auth")).await?.click().await?;
    client.goto(&format!("{base}/team")).await?;
    client
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css("form.join input[name=code]"))
        .await?
        .send_keys(&code.to_lowercase())
        .await?;
    client
        .find(Locator::Css("form.join input[name=team]"))
        .await?
        .send_keys("Team Turbine")
        .await?;
    client
        .find(Locator::Css("form.join button[type=submit]"))
        .await?
        .click()
        .await?;
    let machine = client
        .wait()
        .at_most(Duration::from_secs(15))
        .for_element(Locator::Css(
            ".challenge[data-challenge=which-machine] input[name=value]",
        ))
        .await?;
    machine.send_keys("compressor-1").await?;
    client
        .find(Locator::Css(
            ".challenge[data-challenge=which-machine] button[type=submit]",
        ))
        .await?
        .click()
        .await?;
    until_js(
        client,
        "the scored answer",
        "return document.querySelector('.challenge[data-challenge=which-machine] .answered')?.textContent.includes('100')",
        Duration::from_secs(10),
    )
    .await?;
    client
        .find(Locator::Css(".challenge[data-challenge=when] button.ghost"))
        .await?
        .click()
        .await?;
    until_js(
        client,
        "the hint",
        "return document.querySelector('.challenge[data-challenge=when] .hint')",
        Duration::from_secs(10),
    )
    .await?;
    let score = until_js(
        client,
        "the team's score",
        "return document.querySelector('.team-score')?.textContent === '100' && 100",
        Duration::from_secs(10),
    )
    .await?;
    assert_eq!(score, json!(100));
    screenshot(client, "games-team.png").await?;

    // The projector shows the leaderboard (the demo's lab is public: no login on the screen).
    client.find(Locator::Id("auth")).await?.click().await?;
    client.goto(&format!("{base}/leaderboard/{game}")).await?;
    let row = until_js(
        client,
        "the leaderboard row",
        "const row = document.querySelector('.leaderboard tbody tr'); return row && row.innerText",
        Duration::from_secs(10),
    )
    .await?;
    let row = row.as_str().unwrap_or_default();
    assert!(row.contains("Team Turbine") && row.contains("100"), "{row}");
    screenshot(client, "games-leaderboard.png").await?;
    demonstrate_in_pages(region, client, &base).await
}

/// Starts a playbook from the operator's guide page and waits for its first step.
async fn start_on_guide_page(client: &Client, base: &str, playbook: &str) -> anyhow::Result<()> {
    client.goto(&format!("{base}/guide")).await?;
    client
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css("form.guide-controls select[name=playbook]"))
        .await?
        .select_by_value(playbook)
        .await?;
    client
        .find(Locator::Css("form.guide-controls button[type=submit]"))
        .await?
        .click()
        .await?;
    until_js(
        client,
        &format!("{playbook} to run"),
        "const h = document.querySelector('.guide-status h3'); return Boolean(h && h.textContent.includes(' 1/'))",
        Duration::from_secs(10),
    )
    .await?;
    Ok(())
}

async fn demonstrate_in_pages(
    region: &demolab_demo::region::Region,
    client: &Client,
    base: &str,
) -> anyhow::Result<()> {
    log_in_with(client, base, "operator", "operator-pw").await?;
    // The overview shows the virtual line across the two labs, in flow order.
    let stations = until_js(
        client,
        "the virtual line on the overview",
        "const s = [...document.querySelectorAll('.line[data-line=virtual-line-1] .station')].map((n) => n.dataset.twin); return s.length === 2 && s",
        Duration::from_secs(15),
    )
    .await?;
    assert_eq!(
        stations,
        json!(["aarhus-machining/mill-1", "odense-machining/lathe-1"])
    );
    start_on_guide_page(client, base, "cybersecurity").await?;
    client
        .find(Locator::Css("form.guide-controls button[data-action=next]"))
        .await?
        .click()
        .await?;
    until_js(
        client,
        "step 2",
        "return document.querySelector('.guide-status h3')?.textContent.includes('2/3')",
        Duration::from_secs(10),
    )
    .await?;
    client.goto(&format!("{base}/screen")).await?;
    until_js(
        client,
        "the projector's narration and security panel",
        "return document.querySelector('.guide .narration[data-step=\"1\"]') && document.querySelector('[data-panel=security]')",
        Duration::from_secs(15),
    )
    .await?;
    let mqtt = region.hub().mqtt_addr();
    let viewer = simulators::node::NodeLogin {
        username: "viewer".into(),
        password: region
            .accounts()
            .password("viewer")
            .context("the viewer login")?
            .to_owned(),
    };
    let target = simulators::attack::Target {
        host: mqtt.ip().to_string(),
        port: mqtt.port(),
        lab: "aarhus-machining".into(),
        gateway: "gw-aarhus".into(),
        machine: "mill-1".into(),
    };
    simulators::attack::run(&target, Some(&viewer)).await;
    until_js(
        client,
        "the step to move on by itself",
        "return document.querySelector('.guide .narration[data-step=\"2\"]')",
        Duration::from_secs(15),
    )
    .await?;
    let refused = until_js(
        client,
        "the refused publishes on the panel",
        "const n = document.querySelector('[data-counter=mqtt_publishes_refused] strong'); return n && Number(n.textContent) >= 4 && n.textContent",
        Duration::from_secs(15),
    )
    .await?;
    println!("security panel: {refused} publishes refused");
    screenshot(client, "playbook-security.png").await?;

    // The line across the two labs, as the virtual-line demonstration shows it.
    start_on_guide_page(client, base, "virtual-line").await?;
    client.goto(&format!("{base}/screen")).await?;
    until_js(
        client,
        "the line on the projector",
        "return document.querySelectorAll('.guide-extra .line .station').length === 2",
        Duration::from_secs(15),
    )
    .await?;
    screenshot(client, "playbook-line.png").await?;
    Ok(())
}
