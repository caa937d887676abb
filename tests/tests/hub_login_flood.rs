//! A flood of bogus logins against the hub's real HTTP server leaves its memory bounded and a
//! real user able to log in. Alone in its test binary, so that the process's resident memory
//! is the hub's and this test's only.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use demolab_tests::{http, hub_config, start_hub_with, within};
use hub::HubConfig;
use hub::auth::{AuthConfig, LoginLimits, Role, UserConfig, hash_password};

const FLOOD: usize = 500;
const CONCURRENT: usize = 64;
const MIB: u64 = 1024 * 1024;

/// A field of `/proc/self/status` in bytes (`VmRSS`, `VmHWM`).
fn status_bytes(field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no {field} in /proc/self/status"))?;
    Ok(kib * 1024)
}

async fn login(addr: SocketAddr, user: &str, password: &str) -> anyhow::Result<(u16, String)> {
    let body = serde_json::json!({"user": user, "password": password}).to_string();
    http(
        addr,
        "POST",
        "/api/v1/auth/login",
        None,
        Some(body.as_bytes()),
    )
    .await
}

fn metric(text: &str, series: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_flood_leaves_memory_bounded_and_the_real_user_in() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    // argon2's recommended cost (19 MiB per check), as `demolab-hub hash-password` writes it.
    let hash = hash_password("olga-secret")?;
    let hub = start_hub_with(HubConfig {
        auth: AuthConfig {
            users: vec![UserConfig {
                name: "olga".into(),
                role: Role::Operator,
                password_hash: hash,
                game: None,
            }],
            // Every flooding request reaches the password checks (one address, many names):
            // what is measured is the hashing cap, not the rate limit in front of it.
            login: LoginLimits {
                address_burst: 10_000,
                hash_wait_ms: 100,
                ..LoginLimits::default()
            },
            ..AuthConfig::default()
        },
        // A closed connection leaves the server's count a moment after the client moved on, so
        // 64 at a time from one address can briefly be 65 there: the connection cap is not
        // what this test measures.
        http: hub::http::HttpLimits {
            max_connections_per_client: 4 * CONCURRENT,
            ..hub::http::HttpLimits::default()
        },
        ..hub_config(data.path())
    })
    .await?;
    let addr = hub.http_addr();
    let (status, _) = login(addr, "olga", "olga-secret").await?;
    assert_eq!(status, 200, "warm-up login");

    let before = status_bytes("VmRSS")?;
    // Resets VmHWM to the current RSS (Linux ≥ 4.0), so that it shows the flood's peak.
    let peak_known = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    let gate = Arc::new(tokio::sync::Semaphore::new(CONCURRENT));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..FLOOD {
        let gate = gate.clone();
        tasks.spawn(async move {
            let _slot = gate.acquire_owned().await?;
            let (status, body) = login(addr, &format!("intruder-{i}"), "guess").await?;
            anyhow::Ok((status, body))
        });
    }
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    within(Duration::from_secs(120), "the flood", async {
        while let Some(result) = tasks.join_next().await {
            let (status, body) = result??;
            anyhow::ensure!(
                (status == 401 && body.contains("bad_credentials"))
                    || (status == 503 && body.contains("login_busy")),
                "{status} {body}"
            );
            *statuses.entry(status).or_default() += 1;
        }
        anyhow::Ok(())
    })
    .await??;
    let after = status_bytes("VmRSS")?;
    let peak = if peak_known {
        status_bytes("VmHWM")?
    } else {
        after
    };
    let (rejected, busy) = (statuses.get(&401).copied(), statuses.get(&503).copied());
    eprintln!(
        "flood of {FLOOD} ({CONCURRENT} at once): {rejected:?} × 401, {busy:?} × 503; RSS {} MiB before, {} MiB peak, {} MiB after",
        before / MIB,
        peak / MIB,
        after / MIB
    );
    assert_eq!(
        rejected.unwrap_or(0) + busy.unwrap_or(0),
        FLOOD,
        "{statuses:?}"
    );
    assert!(
        busy.unwrap_or(0) > 0,
        "the cap turned some away: {statuses:?}"
    );
    // Two checks at once, 19 MiB each, in buffers kept between checks: the second buffer and
    // the connections' own memory are all that may be added.
    assert!(
        peak.saturating_sub(before) < 80 * MIB,
        "peak RSS grew by {} MiB",
        peak.saturating_sub(before) / MIB
    );
    assert!(
        after.saturating_sub(before) < 80 * MIB,
        "RSS stayed {} MiB larger",
        after.saturating_sub(before) / MIB
    );

    // Every refusal is counted by reason.
    let (_, metrics) = http(addr, "GET", "/metrics", None, None).await?;
    let refused = "demolab_hub_login_refused_total";
    assert_eq!(
        metric(
            &metrics,
            &format!("{refused}{{reason=\"bad_credentials\"}}")
        ),
        Some(rejected.unwrap_or(0) as u64)
    );
    assert_eq!(
        metric(&metrics, &format!("{refused}{{reason=\"hashing_busy\"}}")),
        Some(busy.unwrap_or(0) as u64)
    );

    // The real user still gets in.
    let (status, body) = login(addr, "olga", "olga-secret").await?;
    assert_eq!(status, 200, "{body}");
    hub.shutdown().await?;
    Ok(())
}
