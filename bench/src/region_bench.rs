//! `region-bench` — throughput of a region with 1, 2 and 3 hub replicas, in one run, written to
//! `bench/results/region.md` and `.json`.
//!
//! One three-node RabbitMQ cluster and one PostgreSQL serve every step (as a region runs them).
//! For each replica count a fresh region (its own slot sessions and rows) gets that many
//! `demolab-hub` processes with `[replica]`; a fleet of simulated labs — each lab one Sparkplug
//! edge node with its machines, on its own cluster node, publishing ready-made DDATA at QoS 1
//! as fast as the cluster takes them — sends every sample, and the step is timed until every
//! history row is committed in PostgreSQL (acknowledged-means-stored). Figures are
//! min/median/max over `--reps` runs.
//!
//! On one machine the broker cluster and PostgreSQL take most of the CPU, so more replicas
//! cannot go faster there. `--replica-cpu 5 --out bench/results/region-capped.md` caps each
//! replica at 5 % of a core with a cgroup quota, as if each ran on a small host of its own:
//! then the replicas are the limit, and the figures show how the work spreads over them.
//!
//! ```text
//! cargo build --release -p demolab-hub -p demolab-bench
//! DEMOLAB_RABBITMQ=/usr/lib/rabbitmq/bin/rabbitmq-server DEMOLAB_POSTGRES=/usr/lib/postgresql/15/bin \
//!   target/release/region-bench --labs 20 --machines 50 --samples 20
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use demolab_bench::sparkplug_load::{METRICS, edge_messages, publish_acked};
use demolab_tests::cluster::{ClusterUser, NODES, RabbitCluster, RegionLab, hub_replica_toml};
use demolab_tests::postgres::Postgres;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet};

/// Measure how a region's throughput grows with hub replicas.
#[derive(Debug, Parser)]
#[command(name = "region-bench", about)]
struct Args {
    /// Labs in the region (one edge node each).
    #[arg(long, default_value_t = 20)]
    labs: u32,
    /// Machines per lab.
    #[arg(long, default_value_t = 50)]
    machines: u32,
    /// Samples per machine per run.
    #[arg(long, default_value_t = 20)]
    samples: u32,
    /// Replica counts to measure, in this order.
    #[arg(long, value_delimiter = ',', default_value = "1,2,3")]
    replicas: Vec<u32>,
    /// Runs per replica count.
    #[arg(long, default_value_t = 3)]
    reps: u32,
    /// Slots of each region: a multiple of every replica count keeps the shares even.
    #[arg(long, default_value_t = 12)]
    slots: u32,
    /// The `demolab-hub` binary (default: beside this one).
    #[arg(long)]
    hub_bin: Option<PathBuf>,
    /// Cap each replica at this share of one core (a cgroup CPU quota of its own), standing
    /// in for replicas on hosts of their own: the replicas are then what limits throughput,
    /// not the broker cluster and PostgreSQL that share this machine with them.
    #[arg(long, value_name = "PERCENT")]
    replica_cpu: Option<u32>,
    /// Where the results go (`.md`, and `.json` beside it).
    #[arg(long, default_value = "bench/results/region.md")]
    out: PathBuf,
}

const PASSWORD_ENV: &str = "DEMOLAB_BENCH_HUB_MQTT_PASSWORD";

fn lab_name(lab: u32) -> String {
    format!("lab-{lab:02}")
}

/// Publishes every lab's messages concurrently at QoS 1, lab `i` on cluster node `i % 3`;
/// returns when the cluster acknowledged all of them.
async fn publish_fleet(
    args: &Args,
    cluster: &RabbitCluster,
    users: &[ClusterUser],
    run: u64,
) -> anyhow::Result<()> {
    let machines: Vec<String> = (0..args.machines).map(|m| format!("m-{m}")).collect();
    let mut labs = tokio::task::JoinSet::new();
    for lab in 0..args.labs {
        let group = lab_name(lab);
        let messages = edge_messages(&group, &format!("gw-{group}"), &machines, args.samples, run);
        let user = &users[lab as usize];
        let addr = cluster.mqtt_addr(lab as usize % NODES);
        let mut options = MqttOptions::new(
            format!("bench-{group}-{run}"),
            addr.ip().to_string(),
            addr.port(),
        );
        options.set_credentials(user.name.clone(), user.password.clone());
        options.set_keep_alive(Duration::from_secs(30));
        labs.spawn(publish_acked(options, messages));
    }
    while let Some(result) = labs.join_next().await {
        result??;
    }
    Ok(())
}

/// A replica process; killed on drop.
struct Replica {
    child: Child,
    http: SocketAddr,
    /// Removed once the process is gone (fields drop after `drop`).
    _quota: Option<CpuQuota>,
}

/// A CPU quota for processes: a cgroup of their own under the cpu controller (cgroup v2's
/// `cpu.max`, or v1's `cpu.cfs_quota_us`), removed on drop.
struct CpuQuota {
    dir: PathBuf,
}

impl CpuQuota {
    /// At most `percent` of one core, per 100 ms period.
    fn new(name: &str, percent: u32) -> anyhow::Result<Self> {
        let unified = std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers")
            .is_ok_and(|controllers| controllers.split_whitespace().any(|c| c == "cpu"));
        let root = if unified {
            "/sys/fs/cgroup"
        } else {
            "/sys/fs/cgroup/cpu"
        };
        let dir = Path::new(root).join(name);
        std::fs::create_dir_all(&dir).with_context(|| {
            format!(
                "--replica-cpu needs a writable cgroup cpu controller: cannot create {}",
                dir.display()
            )
        })?;
        let quota_us = percent * 1000;
        let written = if unified {
            std::fs::write(dir.join("cpu.max"), format!("{quota_us} 100000"))
        } else {
            std::fs::write(dir.join("cpu.cfs_period_us"), "100000")
                .and_then(|()| std::fs::write(dir.join("cpu.cfs_quota_us"), quota_us.to_string()))
        };
        written.with_context(|| format!("cannot set the CPU quota of {}", dir.display()))?;
        Ok(Self { dir })
    }

    fn add(&self, pid: u32) -> anyhow::Result<()> {
        std::fs::write(self.dir.join("cgroup.procs"), pid.to_string())
            .with_context(|| format!("cannot move process {pid} into {}", self.dir.display()))
    }
}

impl Drop for CpuQuota {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.dir);
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

async fn metric(http: SocketAddr, name: &str) -> Option<u64> {
    let (status, body) = demolab_tests::http_get(http, "/metrics").await.ok()?;
    if status != 200 {
        return None;
    }
    body.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// Starts `count` replicas of region `region`; returns once each is a member and the slots are
/// all owned.
#[allow(clippy::too_many_arguments)]
async fn start_replicas(
    bin: &Path,
    dir: &Path,
    region: &str,
    count: u32,
    args: &Args,
    cluster: &RabbitCluster,
    hub_user: &ClusterUser,
    postgres: &Postgres,
) -> anyhow::Result<Vec<Replica>> {
    let labs: Vec<RegionLab> = (0..args.labs)
        .map(|lab| RegionLab {
            lab: lab_name(lab),
            gateway: format!("gw-{}", lab_name(lab)),
            machines: (0..args.machines).map(|m| format!("m-{m}")).collect(),
        })
        .collect();
    let mut replicas = Vec::new();
    for i in 0..count {
        let id = format!("hub-{i}");
        let http = free_addr()?;
        let config = dir.join(format!("{region}-{id}.toml"));
        std::fs::write(
            &config,
            hub_replica_toml(
                &id,
                region,
                args.slots,
                http,
                &dir.join(format!("{region}-{id}")),
                cluster,
                hub_user,
                PASSWORD_ENV,
                &labs,
                &postgres.connection_string(),
            ),
        )?;
        let child = Command::new(bin)
            .arg("--config")
            .arg(&config)
            .env(PASSWORD_ENV, &hub_user.password)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(config.with_extension("log"))?)
            .spawn()
            .with_context(|| format!("start {}", bin.display()))?;
        let quota = match args.replica_cpu {
            Some(percent) => {
                let quota = CpuQuota::new(&format!("demolab-bench-{region}-{id}"), percent)?;
                quota.add(child.id())?;
                Some(quota)
            }
            None => None,
        };
        replicas.push(Replica {
            child,
            http,
            _quota: quota,
        });
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut owned = 0;
        let mut members_ok = true;
        for replica in &replicas {
            members_ok &=
                metric(replica.http, "demolab_hub_replica_members").await == Some(u64::from(count));
            owned += metric(replica.http, "demolab_hub_replica_slots")
                .await
                .unwrap_or(0);
        }
        for replica in &replicas {
            // Ready means every slot it owns is subscribed.
            members_ok &= matches!(
                demolab_tests::http_get(replica.http, "/readyz").await,
                Ok((200, _))
            );
        }
        if members_ok && owned == u64::from(args.slots) {
            return Ok(replicas);
        }
        if Instant::now() > deadline {
            bail!(
                "{count} replicas did not share the {} slots within 60 s",
                args.slots
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Ends the region's slot sessions (a clean connect with each client id): they would otherwise
/// queue every later run's messages in the cluster and slow the next steps down.
async fn end_sessions(
    region: &str,
    args: &Args,
    cluster: &RabbitCluster,
    user: &ClusterUser,
) -> anyhow::Result<()> {
    let addr = cluster.mqtt_addr(0);
    for slot in 0..args.slots {
        let mut options = MqttOptions::new(
            format!("{region}-slot-{slot}"),
            addr.ip().to_string(),
            addr.port(),
        );
        options.set_credentials(user.name.clone(), user.password.clone());
        options.set_clean_session(true);
        let (client, mut events) = AsyncClient::new(options, 8);
        tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                if let Event::Incoming(Packet::ConnAck(_)) = events.poll().await? {
                    return anyhow::Ok(());
                }
            }
        })
        .await
        .context("ending a slot session")??;
        client.disconnect().await?;
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while events.poll().await.is_ok() {}
        })
        .await;
    }
    Ok(())
}

/// CPU ticks so far of every process on the machine, summed by what it is: the broker cluster
/// (`beam.smp`), PostgreSQL, the hub replicas, this benchmark (the fleet), anything else.
fn ticks_by_part() -> HashMap<&'static str, u64> {
    let mut parts = HashMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return parts;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let command = stat
            .split_once('(')
            .and_then(|(_, rest)| rest.rsplit_once(')'))
            .map_or("", |(command, _)| command);
        let part = match command {
            "beam.smp" | "erl_child_setup" | "epmd" | "inet_gethost" => "broker cluster",
            "postgres" => "PostgreSQL",
            "demolab-hub" => "hub replicas",
            "region-bench" => "fleet (this benchmark)",
            _ => "other",
        };
        if let Ok(ticks) = demolab_bench::measure::cpu_ticks(pid) {
            *parts.entry(part).or_default() += ticks;
        }
    }
    parts
}

/// Share of the whole machine (all cores) each part used between two [`ticks_by_part`]
/// readings taken `machine_ticks` machine jiffies apart, in percent.
fn shares(
    before: &HashMap<&'static str, u64>,
    after: &HashMap<&'static str, u64>,
    machine_ticks: u64,
) -> Vec<(&'static str, f64)> {
    let mut shares: Vec<(&'static str, f64)> = after
        .iter()
        .map(|(part, ticks)| {
            let used = ticks.saturating_sub(before.get(part).copied().unwrap_or(0));
            (*part, 100.0 * used as f64 / machine_ticks.max(1) as f64)
        })
        .collect();
    shares.sort_by(|a, b| b.1.total_cmp(&a.1));
    shares
}

/// History rows of `region` committed so far.
async fn committed_rows(db: &tokio_postgres::Client, region: &str) -> anyhow::Result<u64> {
    let row = db
        .query_one(
            "SELECT count(*) FROM demolab_samples WHERE region = $1",
            &[&region],
        )
        .await?;
    Ok(row.get::<_, i64>(0) as u64)
}

#[derive(Debug, Default)]
struct Step {
    replicas: u32,
    /// Samples per second committed, per run.
    rates: Vec<f64>,
    /// Samples per second the cluster acknowledged to the fleet, per run.
    accepted: Vec<f64>,
    /// Share of the whole machine busy during each run, percent.
    busy: Vec<f64>,
    /// Share of the whole machine each part used, per run, percent.
    cpu: std::collections::BTreeMap<&'static str, Vec<f64>>,
}

fn spread(values: &[f64]) -> (f64, f64, f64) {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    (
        sorted[0],
        sorted[sorted.len() / 2],
        sorted[sorted.len() - 1],
    )
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tokio::runtime::Runtime::new()?.block_on(bench(args))
}

async fn bench(args: Args) -> anyhow::Result<()> {
    if args.reps == 0 || args.replicas.is_empty() || args.slots == 0 {
        bail!("--reps, --replicas and --slots must not be empty or zero");
    }
    if args
        .replica_cpu
        .is_some_and(|percent| !(1..=400).contains(&percent))
    {
        bail!("--replica-cpu must be between 1 and 400 (percent of one core)");
    }
    let bin = match &args.hub_bin {
        Some(bin) => bin.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("no directory")?
            .join("demolab-hub"),
    };
    if !bin.is_file() {
        bail!(
            "{} not found: cargo build --release -p demolab-hub",
            bin.display()
        );
    }
    let rabbitmq = std::env::var_os(demolab_tests::cluster::RABBITMQ_ENV)
        .map(PathBuf::from)
        .context("set DEMOLAB_RABBITMQ=/usr/lib/rabbitmq/bin/rabbitmq-server")?;
    let pg_bin = std::env::var_os(demolab_tests::postgres::POSTGRES_ENV)
        .map(PathBuf::from)
        .context("set DEMOLAB_POSTGRES=/usr/lib/postgresql/15/bin")?;
    let samples = u64::from(args.labs) * u64::from(args.machines) * u64::from(args.samples);
    let rows = samples * METRICS.len() as u64;
    println!(
        "region-bench: {} labs × {} machines × {} samples = {samples} samples per run; replicas {:?}, {} runs each",
        args.labs, args.machines, args.samples, args.replicas, args.reps
    );

    let hub_user = ClusterUser::hub("demolab-hub", "hub-pw");
    let lab_users: Vec<ClusterUser> = (0..args.labs)
        .map(|lab| ClusterUser::gateway(&format!("gw-{}", lab_name(lab)), "gw-pw", &lab_name(lab)))
        .collect();
    let mut users = vec![hub_user.clone()];
    users.extend(lab_users.iter().cloned());
    println!("starting a 3-node RabbitMQ cluster and PostgreSQL …");
    let cluster = RabbitCluster::start(&rabbitmq, &users).await?;
    let postgres = Postgres::start(&pg_bin).await?;
    let db = postgres.connect().await?;
    let dir = tempfile::tempdir()?;

    let mut steps = Vec::new();
    let mut run = 0u64;
    for &count in &args.replicas {
        let mut step = Step {
            replicas: count,
            ..Step::default()
        };
        for rep in 0..args.reps {
            run += 1;
            // A fresh region per run: its own slot sessions, twins and rows.
            let region = format!("bench-r{count}-{rep}");
            let replicas = start_replicas(
                &bin,
                dir.path(),
                &region,
                count,
                &args,
                &cluster,
                &hub_user,
                &postgres,
            )
            .await?;
            let cpu_before = ticks_by_part();
            let machine_before = demolab_bench::measure::machine_jiffies();
            let started = Instant::now();
            publish_fleet(&args, &cluster, &lab_users, run).await?;
            let accepted = samples as f64 / started.elapsed().as_secs_f64();
            let deadline = Instant::now() + Duration::from_secs(300);
            let mut report_at = Instant::now() + Duration::from_secs(5);
            loop {
                let done = committed_rows(&db, &region).await?;
                if done >= rows {
                    break;
                }
                if Instant::now() > report_at {
                    report_at += Duration::from_secs(5);
                    println!("    … {done} of {rows} history rows committed");
                }
                if Instant::now() > deadline {
                    let logs: Vec<String> = (0..count)
                        .map(|i| {
                            let log = dir.path().join(format!("{region}-hub-{i}.log"));
                            let text = std::fs::read_to_string(&log).unwrap_or_default();
                            let tail: Vec<&str> = text.lines().rev().take(20).collect();
                            format!(
                                "--- hub-{i} ---\n{}",
                                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                            )
                        })
                        .collect();
                    bail!(
                        "{region}: only {done} of {rows} history rows committed after 5 min\n{}",
                        logs.join("\n")
                    );
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let rate = samples as f64 / started.elapsed().as_secs_f64();
            if let (Some((busy0, total0)), Some((busy1, total1))) =
                (machine_before, demolab_bench::measure::machine_jiffies())
            {
                let total = total1.saturating_sub(total0);
                step.busy
                    .push(100.0 * busy1.saturating_sub(busy0) as f64 / total.max(1) as f64);
                for (part, share) in shares(&cpu_before, &ticks_by_part(), total) {
                    step.cpu.entry(part).or_default().push(share);
                }
            }
            println!(
                "  {count} replica(s), run {}: {rate:.0} samples/s committed (cluster took {accepted:.0}/s)",
                rep + 1
            );
            step.rates.push(rate);
            step.accepted.push(accepted);
            drop(replicas);
            end_sessions(&region, &args, &cluster, &hub_user).await?;
        }
        steps.push(step);
    }
    write(&args, &steps, samples)
}

fn write(args: &Args, steps: &[Step], samples: u64) -> anyhow::Result<()> {
    let base = spread(&steps[0].rates).1;
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mut md = format!(
        "# Region throughput with hub replicas\n\n\
         `region-bench` at commit `{commit}`, {cores} cores, one run of the binary: a 3-node RabbitMQ \
         3.10 cluster and one PostgreSQL shared by every step; {} labs × {} machines, {} samples \
         each ({samples} samples, {} history rows per run), {} slots; {}each figure min / median / max \
         of {} runs, timed from the first publish until every history row is committed.\n\n\
         | replicas | committed samples/s | scaling (median vs 1 replica) | cluster accepted samples/s |\n\
         |---|---|---|---|\n",
        args.labs,
        args.machines,
        args.samples,
        samples * METRICS.len() as u64,
        args.slots,
        args.replica_cpu.map_or(String::new(), |percent| format!(
            "each replica capped at {percent} % of one core (a cgroup CPU quota), standing in for \
             a replica host of its own; "
        )),
        args.reps
    );
    let mut json_steps = Vec::new();
    for step in steps {
        let (lo, mid, hi) = spread(&step.rates);
        let (alo, amid, ahi) = spread(&step.accepted);
        md.push_str(&format!(
            "| {} | {lo:.0} / {mid:.0} / {hi:.0} | {:.2} | {alo:.0} / {amid:.0} / {ahi:.0} |\n",
            step.replicas,
            mid / base
        ));
        json_steps.push(serde_json::json!({
            "replicas": step.replicas,
            "committed_samples_per_s": step.rates,
            "accepted_samples_per_s": step.accepted,
            "scaling_median": mid / base,
            "machine_busy_percent": step.busy,
            "cpu_percent_of_machine": step.cpu,
        }));
    }
    md.push_str(
        "\nWhere the machine's CPU went during the runs (share of all cores, median of the runs):\n\n| replicas | machine busy |",
    );
    let parts: std::collections::BTreeSet<&str> = steps
        .iter()
        .flat_map(|step| step.cpu.keys().copied())
        .collect();
    for part in &parts {
        md.push_str(&format!(" {part} |"));
    }
    md.push_str("\n|---|---|");
    for _ in &parts {
        md.push_str("---|");
    }
    md.push('\n');
    for step in steps {
        let median = |values: &[f64]| {
            if values.is_empty() {
                "–".to_owned()
            } else {
                format!("{:.0} %", spread(values).1)
            }
        };
        md.push_str(&format!("| {} | {} |", step.replicas, median(&step.busy)));
        for part in &parts {
            md.push_str(&format!(
                " {} |",
                median(step.cpu.get(part).map_or(&[][..], Vec::as_slice))
            ));
        }
        md.push('\n');
    }
    md.push_str(&format!(
        "\nReproduce: `cargo build --release -p demolab-hub -p demolab-bench && \
         DEMOLAB_RABBITMQ=/usr/lib/rabbitmq/bin/rabbitmq-server DEMOLAB_POSTGRES=/usr/lib/postgresql/15/bin \
         target/release/region-bench --labs {} --machines {} --samples {} --replicas {} --reps {}{}`\n",
        args.labs,
        args.machines,
        args.samples,
        args.replicas
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(","),
        args.reps,
        args.replica_cpu.map_or(String::new(), |percent| format!(
            " --replica-cpu {percent} --out {}",
            args.out.display()
        ))
    ));
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.out, &md)?;
    let json = serde_json::json!({
        "commit": commit,
        "cores": cores,
        "labs": args.labs,
        "machines": args.machines,
        "samples_per_machine": args.samples,
        "slots": args.slots,
        "replica_cpu_percent_of_a_core": args.replica_cpu,
        "steps": json_steps,
    });
    std::fs::write(
        args.out.with_extension("json"),
        serde_json::to_string_pretty(&json)?,
    )?;
    print!("{md}");
    println!("written to {}", args.out.display());
    Ok(())
}
