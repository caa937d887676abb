//! Two hub replicas are one system: a three-node RabbitMQ cluster, a real PostgreSQL shared by
//! the replicas, each replica a real process, three labs each with its own gateway on its own
//! cluster node. The replica that owns a lab is killed with SIGKILL mid-stream, then the
//! broker node the survivor is connected to: every sample of every machine is applied exactly
//! once and in order, and the surviving replica's API serves all of it. A login on one replica
//! is honoured by the other, a logout on either ends it on both, and a token survives the
//! replica that handed it out. An operator's change asked of the replica that does not own the
//! twin is carried out by the one that does, and outlives it.
//!
//! Needs `DEMOLAB_RABBITMQ` and `DEMOLAB_POSTGRES`; skipped without them, failed under `CI`.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use demolab_tests::cluster::{
    ClusterUser, Lab, RabbitCluster, RegionLab, hub_replica_toml, rabbitmq_binary,
};
use demolab_tests::postgres::{Postgres, postgres_binaries};
use demolab_tests::{
    HUB_CHILD_ENV, cheap_password_hash, get_json, http, http_get, login, run_hub_child,
    spawn_hub_process_with, within,
};
use tokio_util::sync::CancellationToken;

const SAMPLES: u32 = 1500;
const SLOTS: u32 = 4;
const REGION: &str = "region-test";
const METRIC: &str = "spindle.power_w";
const PASSWORD_VAR: &str = "DEMOLAB_TEST_HUB_MQTT_PASSWORD";
const DEADLINE: Duration = Duration::from_secs(120);

/// Entry point of a replica process: runs a hub from the file named by the environment.
#[test]
#[ignore = "a hub replica process of the replica test; it starts it"]
fn replica_child() -> anyhow::Result<()> {
    let path = std::env::var(HUB_CHILD_ENV).context("run by the replica test only")?;
    run_hub_child(Path::new(&path))
}

/// Three lab names whose slots the two replicas share: each owns at least one of them.
fn labs_split_between(replicas: &BTreeSet<String>) -> anyhow::Result<Vec<&'static str>> {
    const NAMES: [&str; 12] = [
        "lab-a", "lab-b", "lab-c", "lab-d", "lab-e", "lab-f", "lab-g", "lab-h", "lab-i", "lab-j",
        "lab-k", "lab-l",
    ];
    let owner = |lab: &str| -> anyhow::Result<String> {
        let slot = hub::replica::slot_of(&lab.parse()?, SLOTS);
        hub::replica::owner_of(replicas, slot, SLOTS)
            .cloned()
            .context("an owner")
    };
    let mut chosen = Vec::new();
    let mut owners = BTreeSet::new();
    for name in NAMES {
        let who = owner(name)?;
        if chosen.len() < 2 && owners.contains(&who) {
            continue;
        }
        owners.insert(who);
        chosen.push(name);
        if chosen.len() == 3 {
            break;
        }
    }
    anyhow::ensure!(owners.len() == 2, "the labs all hash to one replica");
    Ok(chosen)
}

fn spawn_replica(
    config: &Path,
    password: &str,
) -> anyhow::Result<(demolab_tests::ChildProcess, std::net::SocketAddr)> {
    spawn_hub_process_with(
        &[
            "replica_child",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ],
        config,
        &[(PASSWORD_VAR, password)],
    )
}

/// The status of `GET /api/v1/auth/me` with `token`.
async fn me(addr: std::net::SocketAddr, token: &str) -> anyhow::Result<u16> {
    Ok(http(addr, "GET", "/api/v1/auth/me", Some(token), None)
        .await?
        .0)
}

/// A gauge of the replica's `/metrics`.
async fn gauge(addr: std::net::SocketAddr, name: &str) -> Option<u64> {
    let (status, body) = http_get(addr, "/metrics").await.ok()?;
    if status != 200 {
        return None;
    }
    body.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// Polls until `accept` holds for the replica's gauges, with a deadline.
async fn until_gauges(what: &str, check: impl AsyncFn() -> bool) -> anyhow::Result<()> {
    within(DEADLINE, what, async {
        while !check().await {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
}

/// The twin's `samples` and `last_seq` as the replica at `addr` serves them.
async fn twin_counts(addr: std::net::SocketAddr, lab: &Lab) -> Option<(u64, u64)> {
    let twin = get_json(addr, &format!("/api/v1/twins/{}/{}", lab.name, lab.machine))
        .await
        .ok()?;
    Some((twin["samples"].as_u64()?, twin["last_seq"].as_u64()?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_lose_no_sample_when_one_dies_and_then_a_broker_node() -> anyhow::Result<()> {
    let test = "two_replicas_lose_no_sample_when_one_dies_and_then_a_broker_node";
    let (Some(rabbitmq), Some(postgres)) = (rabbitmq_binary(test)?, postgres_binaries(test)?)
    else {
        return Ok(());
    };
    let postgres = Postgres::start(&postgres).await?;
    let replicas: BTreeSet<String> = ["hub-a", "hub-b"].map(String::from).into();
    let names = labs_split_between(&replicas)?;
    let mut labs = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let machine: &'static str = ["mill-1", "mill-2", "mill-3"][i];
        labs.push(Lab::start(name, machine, 0xd0 + i as u64).await?);
    }
    let hub_user = ClusterUser::hub("demolab-hub", "hub-pw");
    let gateway_users: Vec<ClusterUser> = labs
        .iter()
        .map(|lab| ClusterUser::gateway(&format!("gw-{}", lab.name), "gw-pw", lab.name))
        .collect();
    let mut users = vec![hub_user.clone()];
    users.extend(gateway_users.iter().cloned());
    let mut cluster = RabbitCluster::start(&rabbitmq, &users).await?;
    let data = tempfile::tempdir()?;

    let region_labs: Vec<RegionLab> = labs
        .iter()
        .map(|lab| RegionLab {
            lab: lab.name.into(),
            gateway: format!("gw-{}", lab.name),
            machines: vec![lab.machine.into()],
        })
        .collect();
    let operator = format!(
        "[[auth.users]]\nname = \"operator\"\nrole = \"operator\"\npassword_hash = \"{}\"\n",
        cheap_password_hash("operator-secret")?
    );
    let mut processes = Vec::new();
    for id in &replicas {
        let config = data.path().join(format!("{id}.toml"));
        std::fs::write(
            &config,
            hub_replica_toml(
                id,
                REGION,
                SLOTS,
                std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
                &data.path().join(id),
                &cluster,
                &hub_user,
                PASSWORD_VAR,
                &region_labs,
                &postgres.connection_string(),
            ) + &operator,
        )?;
        processes.push((id.clone(), spawn_replica(&config, &hub_user.password)?));
    }
    let replica_logs = || {
        replicas
            .iter()
            .map(|id| {
                let log = std::fs::read_to_string(demolab_tests::child_log(
                    &data.path().join(format!("{id}.toml")),
                ))
                .unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                format!(
                    "--- {id} ---\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    let addrs: Vec<std::net::SocketAddr> = processes.iter().map(|(_, (_, addr))| *addr).collect();
    until_gauges("both replicas members, every slot owned once", async || {
        let mut owned = 0;
        for addr in &addrs {
            if gauge(*addr, "demolab_hub_replica_members").await != Some(2) {
                return false;
            }
            owned += gauge(*addr, "demolab_hub_replica_slots").await.unwrap_or(0);
        }
        owned == u64::from(SLOTS)
    })
    .await
    .map_err(|e| e.context(format!("{}\n{}", replica_logs(), postgres.log())))?;

    // A login is the region's: a plain load balancer may send the next request anywhere.
    let token = login(addrs[0], "operator").await?;
    assert_eq!(
        me(addrs[1], &token).await?,
        200,
        "the other replica honours it"
    );
    let (status, _) = http(addrs[1], "POST", "/api/v1/auth/logout", Some(&token), None).await?;
    assert_eq!(status, 204);
    assert_eq!(me(addrs[1], &token).await?, 401);
    until_gauges(
        "the logout ends the token where it was handed out",
        async || me(addrs[0], &token).await.ok() == Some(401),
    )
    .await
    .map_err(|e| e.context(replica_logs()))?;

    // The replica that owns the first lab dies; the other one serves the region from then on.
    let first_slot = hub::replica::slot_of(&labs[0].name.parse()?, SLOTS);
    let victim_id = hub::replica::owner_of(&replicas, first_slot, SLOTS)
        .context("an owner")?
        .clone();
    let victim = processes
        .iter()
        .position(|(id, _)| *id == victim_id)
        .context("the victim")?;
    let survivor = addrs[1 - victim];
    let lasting = login(addrs[victim], "operator").await?;

    let cancel = CancellationToken::new();
    let _stop = cancel.clone().drop_guard();
    let mut gateways = Vec::new();
    for (i, (lab, user)) in labs.iter().zip(&gateway_users).enumerate() {
        gateways.push(
            lab.start_gateway(&cluster, i, user, data.path(), &cancel)
                .await?,
        );
    }
    let mut senders = Vec::new();
    for (i, lab) in labs.iter().enumerate() {
        senders.push(lab.stream(60 + i as u64, SAMPLES, &cancel)?);
    }

    let progress = async |at_least: u64| {
        for lab in &labs {
            match twin_counts(survivor, lab).await {
                Some((samples, _)) if samples >= at_least => {}
                _ => return false,
            }
        }
        true
    };
    until_gauges(
        "a third of every stream, seen from the survivor",
        async || progress(u64::from(SAMPLES / 3)).await,
    )
    .await
    .map_err(|e| e.context(replica_logs()))?;
    // An operator's change to a twin the victim owns, asked of the survivor: the owner carries
    // it out, and commits it, so it outlives the owner's death below.
    let desired_path = format!("/api/v1/twins/{}/{}/desired", labs[0].name, labs[0].machine);
    let (status, body) = http(
        survivor,
        "PATCH",
        &desired_path,
        Some(&lasting),
        Some(br#"{"node.period_ms": 500}"#),
    )
    .await?;
    assert_eq!(status, 202, "{body}");
    let asked_by = async |addr| {
        let twin = get_json(
            addr,
            &format!("/api/v1/twins/{}/{}", labs[0].name, labs[0].machine),
        )
        .await
        .ok()?;
        let desired = &twin["desired"]["node.period_ms"];
        (desired["value"].as_f64() == Some(500.0))
            .then(|| desired["requested_by"].as_str().map(str::to_owned))
            .flatten()
    };
    assert_eq!(
        asked_by(addrs[victim]).await.as_deref(),
        Some("operator"),
        "carried out by the owner before the answer"
    );
    let (_, (victim_process, _)) = &mut processes[victim];
    victim_process.kill()?;
    victim_process.wait()?;
    until_gauges("the survivor owns every slot", async || {
        gauge(survivor, "demolab_hub_replica_slots").await == Some(u64::from(SLOTS))
    })
    .await
    .map_err(|e| e.context(replica_logs()))?;
    assert_eq!(
        me(survivor, &lasting).await?,
        200,
        "a token outlives the replica that handed it out"
    );
    assert_eq!(
        asked_by(survivor).await.as_deref(),
        Some("operator"),
        "the forwarded change outlives its owner"
    );
    until_gauges(
        "two thirds of every stream after the takeover",
        async || progress(u64::from(2 * SAMPLES / 3)).await,
    )
    .await
    .map_err(|e| e.context(replica_logs()))?;
    // The survivor's sessions, its own slots' and the ones it took over, are on node 0.
    cluster.kill(0)?;

    for sender in senders {
        let report = within(DEADLINE, "the node", sender).await???;
        assert_eq!(report.sent, SAMPLES);
    }
    let samples = u64::from(SAMPLES);
    let seen = until_gauges("every sample at the survivor", async || {
        let mut all = true;
        for lab in &labs {
            all &= twin_counts(survivor, lab).await == Some((samples, samples));
        }
        all
    })
    .await
    .map_err(|e| e.context(format!("{}\n{}", replica_logs(), cluster.logs())));
    if let Err(err) = seen {
        let mut counts = Vec::new();
        for lab in &labs {
            counts.push((lab.name, twin_counts(survivor, lab).await));
        }
        let gateways: Vec<_> = gateways
            .iter()
            .map(|g| {
                let s = g.stats().snapshot();
                (
                    s.frames_received,
                    s.samples_forwarded,
                    s.births_published,
                    s.uplink_sessions,
                    s.buffer_depth,
                    s.drops,
                )
            })
            .collect();
        return Err(err.context(format!(
            "twins (samples, last seq) at the survivor: {counts:?}\ngateways (frames, forwarded, births, sessions, buffered, drops): {gateways:?}"
        )));
    }

    let db = postgres.connect().await?;
    for lab in &labs {
        // Exactly once: the twin's counter, which travelled through the takeover in the
        // shared store, would count a sample applied twice.
        assert_eq!(
            twin_counts(survivor, lab).await,
            Some((samples, samples)),
            "{}: applied once each",
            lab.name
        );
        // In order: the history rows in the order they were committed, by both replicas. The
        // twin is served from memory, ahead of its last commit.
        let committed = async || {
            db.query_one(
                "SELECT count(*) FROM demolab_samples
                 WHERE region = $1 AND lab = $2 AND machine = $3 AND metric = $4",
                &[&REGION, &lab.name, &lab.machine, &METRIC],
            )
            .await
            .is_ok_and(|row| row.get::<_, i64>(0) >= i64::from(SAMPLES))
        };
        until_gauges("every sample committed", committed).await?;
        let seqs: Vec<u32> = db
            .query(
                "SELECT seq FROM demolab_samples
                 WHERE region = $1 AND lab = $2 AND machine = $3 AND metric = $4
                 ORDER BY applied",
                &[&REGION, &lab.name, &lab.machine, &METRIC],
            )
            .await?
            .iter()
            .map(|row| row.get::<_, i64>(0) as u32)
            .collect();
        assert_eq!(
            seqs,
            (1..=SAMPLES).collect::<Vec<_>>(),
            "{}: every sample committed once, in order",
            lab.name
        );
        // Readable from the survivor's API: the history of a range aligned to its buckets.
        let step = 4 * 86_400_000;
        let from = (hub::ingest::now_ms() / step - 1) * step;
        let history = get_json(
            survivor,
            &format!(
                "/api/v1/twins/{}/{}/history?metric={METRIC}&from={from}&to={}&step={step}",
                lab.name,
                lab.machine,
                from + 3 * step
            ),
        )
        .await?;
        let counted: u64 = history["buckets"]
            .as_array()
            .context("buckets")?
            .iter()
            .filter_map(|b| b["count"].as_u64())
            .sum();
        assert_eq!(counted, samples, "{}: {history}", lab.name);
    }
    drop(gateways);
    cancel.cancel();
    Ok(())
}
