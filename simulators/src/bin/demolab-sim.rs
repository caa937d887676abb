//! `demolab-sim` — run a simulated lab from a scenario, a fleet of nodes for load tests, a
//! PLC-style Modbus TCP device or an OPC UA machine tool, with no hardware.
//!
//! ```text
//! demolab-sim list-scenarios
//! demolab-sim run predictive-maintenance --mqtt 127.0.0.1:1883 --speed 20
//! demolab-sim fleet --mqtt 127.0.0.1:1883 --nodes 1000 --rate 1 --samples 60
//! demolab-sim plc --listen 127.0.0.1:5020 --machine compressor
//! demolab-sim opcua --listen 127.0.0.1:4840 --name cnc-7 --secure --opc-user operator --opc-password-env OPC_PASS
//! demolab-sim record --mqtt 127.0.0.1:1883 --out monday.jsonl --seconds 600
//! demolab-sim replay monday.jsonl --mqtt 127.0.0.1:1883 --speed 10
//! demolab-sim attack --mqtt 127.0.0.1:1883 --lab aarhus-machining --gateway gw-aarhus --machine mill-1
//! ```
//!
//! Against a broker that wants a login (every Demolab broker), add
//! `--username NAME --password-env VARIABLE`.
//!
//! Progress goes to stdout, one line at a time; logs go to stderr (`RUST_LOG`).

use std::io::Write;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use demolab_simulators::fleet::FleetConfig;
use demolab_simulators::machines::MachineKind;
use demolab_simulators::node::NodeLogin;
use demolab_simulators::opcua::{OpcUaSimConfig, start_opcua_sim, user_certificate};
use demolab_simulators::plc::{COUNT_REGISTER, Plc, STATE_REGISTER};
use demolab_simulators::scenario::{self, Scenario};
use demolab_simulators::session;
use demolab_simulators::timeline::Timeline;
use tokio_util::sync::CancellationToken;

/// Demolab simulators: scenarios, fleets and PLCs, deterministic from a seed.
#[derive(Debug, Parser)]
#[command(name = "demolab-sim", version)]
struct Args {
    #[command(subcommand)]
    command: Command,
    /// MQTT user name for brokers that want a login (every Demolab broker does: a
    /// `simulator` account for run/fleet/replay, `viewer` for record).
    #[arg(long, global = true, requires = "password_env")]
    username: Option<String>,
    /// The environment variable holding that user's password.
    #[arg(long, global = true, requires = "username", value_name = "VARIABLE")]
    password_env: Option<String>,
}

/// The login from `--username` and `--password-env`.
fn login(args: &Args) -> anyhow::Result<Option<NodeLogin>> {
    let (Some(username), Some(var)) = (&args.username, &args.password_env) else {
        return Ok(None);
    };
    let password = std::env::var(var)
        .with_context(|| format!("--password-env: the environment variable {var:?}"))?;
    Ok(Some(NodeLogin {
        username: username.clone(),
        password,
    }))
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Record the node frames on a lab broker to a session file, with their timing (nodes heard
    /// without their Hello are asked for one, so the file replays on its own).
    Record {
        /// The lab broker, host:port.
        #[arg(long)]
        mqtt: String,
        /// The session file to write (JSON lines).
        #[arg(long)]
        out: std::path::PathBuf,
        /// Stop after this many seconds (default: at Ctrl-C).
        #[arg(long)]
        seconds: Option<u64>,
        /// Stop after this many frames.
        #[arg(long)]
        frames: Option<usize>,
    },
    /// Replay a recorded session to a lab broker, so its gateway sees the session again.
    Replay {
        /// The session file.
        session: std::path::PathBuf,
        /// The lab broker, host:port.
        #[arg(long)]
        mqtt: String,
        /// Time factor: 1 is real time, 10 ten times faster, 0 as fast as possible.
        #[arg(long, default_value_t = 1.0)]
        speed: f64,
        /// Keep the recorded boot ids (by default each node gets a new one, so a gateway that
        /// saw the original session does not drop the replay as duplicates).
        #[arg(long)]
        keep_boot: bool,
    },
    /// List the shipped scenarios and what each one shows.
    ListScenarios,
    /// Play a rogue client on the lab network (the live cybersecurity demonstration): log in
    /// without and with a guessed password, then, with `--username`/`--password-env` (a
    /// student's login), publish fake values, command a machine and declare the lab's gateway
    /// dead. Watch the refusals on the hub's projector view or `/metrics`.
    Attack {
        /// The broker, host:port.
        #[arg(long)]
        mqtt: String,
        /// The lab to attack.
        #[arg(long, default_value = "aarhus-machining")]
        lab: String,
        /// Its gateway.
        #[arg(long, default_value = "gw-aarhus")]
        gateway: String,
        /// One of its machines.
        #[arg(long, default_value = "mill-1")]
        machine: String,
    },
    /// Run a scenario: one simulated sensor node per machine, publishing to a lab broker.
    Run {
        /// A shipped scenario name (see list-scenarios) or a path to a scenario TOML file.
        scenario: String,
        /// The lab broker the gateway listens on, host:port.
        #[arg(long)]
        mqtt: String,
        /// Seed of every machine model: the same seed, the same frames.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Simulated seconds per wall second; 0 runs as fast as the broker accepts.
        #[arg(long, default_value_t = 1.0)]
        speed: f64,
        /// First TCP port of the PLCs of machines on a Modbus link (one port each, on 127.0.0.1).
        #[arg(long, default_value_t = 5020)]
        plc_port: u16,
    },
    /// Many nodes from one process, for load tests; prints the message rate reached.
    Fleet {
        /// The broker, host:port.
        #[arg(long)]
        mqtt: String,
        /// Number of nodes.
        #[arg(long, default_value_t = 100)]
        nodes: u32,
        /// Samples per second per node.
        #[arg(long, default_value_t = 1.0)]
        rate: f64,
        /// Samples per node, then stop (default: run until Ctrl-C).
        #[arg(long)]
        samples: Option<u32>,
        /// Payload mix: machine kinds assigned round-robin, comma separated.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "cnc-mill,3d-printer,compressor,conveyor,lab-climate"
        )]
        kinds: Vec<MachineKind>,
        /// New MQTT connections per second.
        #[arg(long, default_value_t = 500)]
        connect_rate: u32,
        /// Seed of the machine models.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// A PLC-style Modbus TCP server exposing a machine's values (register map in the docs of
    /// `demolab_simulators::plc`: input 2i = f32, holding 2i = i32 ×100, holding 1000 = state).
    Plc {
        /// Address to listen on; port 0 picks a free one (printed).
        #[arg(long, default_value = "127.0.0.1:5020")]
        listen: SocketAddr,
        /// Machine model: cnc-mill, 3d-printer, compressor, conveyor, lab-climate.
        #[arg(long)]
        machine: MachineKind,
        /// Seed of the model.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Simulated time per PLC scan, ms.
        #[arg(long, default_value_t = 1000)]
        period_ms: u64,
        /// Simulated seconds to run before serving.
        #[arg(long, default_value_t = 600)]
        warmup_s: u64,
        /// Freeze the registers after the warm-up (for exact checks by a client).
        #[arg(long)]
        hold: bool,
    },
    /// An OPC UA server exposing one machine tool in the umati / OPC 40501 style
    /// (`Objects/Machines/<name>/Identification`, `.../Monitoring`; node ids
    /// `ns=2;s=<name>.Monitoring.<metric>` and a `Counter` that steps once per update).
    Opcua {
        /// Address to listen on; port 0 picks a free one (the endpoint URL is printed).
        #[arg(long, default_value = "127.0.0.1:4840")]
        listen: SocketAddr,
        /// The machine's name (its folder and node id prefix).
        #[arg(long, default_value = "cnc-7")]
        name: String,
        /// Machine model: cnc-mill, 3d-printer, compressor, conveyor, lab-climate.
        #[arg(long, default_value = "cnc-mill")]
        machine: MachineKind,
        /// Seed of the model.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Wall time between updates, ms (each advances the model by the same simulated time).
        #[arg(long, default_value_t = 1000)]
        period_ms: u64,
        /// Also offer Basic256Sha256 Sign and SignAndEncrypt endpoints.
        #[arg(long)]
        secure: bool,
        /// Offer only the secure endpoints (implies --secure).
        #[arg(long)]
        secure_only: bool,
        /// Accept this OPC UA user (then anonymous sessions are refused).
        #[arg(long, requires = "opc_password_env")]
        opc_user: Option<String>,
        /// The environment variable holding that user's password.
        #[arg(long, requires = "opc_user", value_name = "VARIABLE")]
        opc_password_env: Option<String>,
        /// Where the server's self-signed certificate is created and kept.
        #[arg(long, default_value = "opcua-sim-pki")]
        pki_dir: std::path::PathBuf,
        /// Also accept this user by X.509 certificate: its certificate and private key are made
        /// in `<pki-dir>/users/` unless there already, and their paths printed (then anonymous
        /// sessions are refused).
        #[arg(long, value_name = "NAME")]
        x509_user: Option<String>,
        /// A machine clock that is this far off, ms (negative: behind); values carry its time.
        #[arg(
            long,
            default_value_t = 0,
            allow_hyphen_values = true,
            value_name = "MS"
        )]
        clock_offset_ms: i64,
    },
    /// Write a scenario's node frames, computed offline, one hex line per frame (`node hex`):
    /// a reference recording; two runs with the same seed give identical files.
    Frames {
        /// Scenario name or file.
        scenario: String,
        /// Seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Boot id written into the `Hello`s.
        #[arg(long, default_value_t = 1)]
        boot: u32,
    },
}

async fn attack(
    mqtt: &str,
    lab: String,
    gateway: String,
    machine: String,
    login: Option<&NodeLogin>,
) -> anyhow::Result<()> {
    let (host, port) = mqtt
        .rsplit_once(':')
        .and_then(|(host, port)| Some((host.to_owned(), port.parse().ok()?)))
        .with_context(|| format!("--mqtt: {mqtt:?} is not host:port"))?;
    let target = demolab_simulators::attack::Target {
        host,
        port,
        lab,
        gateway,
        machine,
    };
    if login.is_none() {
        println!("ATTACK no --username: only the logins are tried");
    }
    for attempt in demolab_simulators::attack::run(&target, login).await {
        println!("ATTACK {}: {}", attempt.what, attempt.outcome);
    }
    println!("ATTACK done: the refusals are counted on the hub (/api/v1/security, /metrics)");
    Ok(())
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let args = Args::parse();
    let login = login(&args)?;
    let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
    runtime.block_on(async move {
        let cancel = CancellationToken::new();
        let on_ctrl_c = cancel.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                on_ctrl_c.cancel();
            }
        });
        match args.command {
            Command::ListScenarios => list(),
            Command::Attack {
                mqtt,
                lab,
                gateway,
                machine,
            } => attack(&mqtt, lab, gateway, machine, login.as_ref()).await,
            Command::Record {
                mqtt,
                out,
                seconds,
                frames,
            } => record(&mqtt, login.as_ref(), &out, seconds, frames, cancel).await,
            Command::Replay {
                session,
                mqtt,
                speed,
                keep_boot,
            } => replay(&session, &mqtt, login, speed, !keep_boot, cancel).await,
            Command::Run {
                scenario,
                mqtt,
                seed,
                speed,
                plc_port,
            } => {
                run(
                    &scenario,
                    &mqtt,
                    login.as_ref(),
                    seed,
                    speed,
                    plc_port,
                    cancel,
                )
                .await
            }
            Command::Fleet {
                mqtt,
                nodes,
                rate,
                samples,
                kinds,
                connect_rate,
                seed,
            } => {
                let (host, port) = broker(&mqtt)?;
                let config = FleetConfig {
                    nodes,
                    rate_hz: rate,
                    samples,
                    kinds,
                    seed,
                    connect_rate,
                    broker_host: host,
                    broker_port: port,
                    login,
                };
                fleet(config, cancel).await
            }
            Command::Plc {
                listen,
                machine,
                seed,
                period_ms,
                warmup_s,
                hold,
            } => plc(listen, machine, seed, period_ms, warmup_s, hold, cancel).await,
            Command::Opcua {
                listen,
                name,
                machine,
                seed,
                period_ms,
                secure,
                secure_only,
                opc_user,
                opc_password_env,
                pki_dir,
                x509_user,
                clock_offset_ms,
            } => {
                let users = pki_dir.join("users");
                let mut config = OpcUaSimConfig::new(&name, pki_dir);
                config.listen = listen.to_string();
                config.kind = machine;
                config.seed = seed;
                config.step = Duration::from_millis(period_ms.max(1));
                config.update_interval = Some(config.step);
                config.secure = secure || secure_only;
                config.plain = !secure_only;
                config.clock_offset_ms = clock_offset_ms;
                if let (Some(user), Some(var)) = (opc_user, opc_password_env) {
                    let password = std::env::var(&var).with_context(|| {
                        format!("--opc-password-env: the environment variable {var:?}")
                    })?;
                    config.user = Some((user, password));
                    config.anonymous = false;
                }
                if let Some(user) = x509_user {
                    let (certificate, key) = user_certificate(&users, &user)?;
                    println!(
                        "OPCUA X509 USER name={user} certificate={} private_key={}",
                        certificate.display(),
                        key.display()
                    );
                    config.x509_user = Some((user, certificate));
                    config.anonymous = false;
                }
                opcua(config, cancel).await
            }
            Command::Frames {
                scenario,
                seed,
                boot,
            } => frames(&scenario, seed, boot),
        }
    })
}

fn list() -> anyhow::Result<()> {
    for (name, text) in scenario::SHIPPED {
        let s = Scenario::parse(text, name)?;
        println!("{name:<24} {}", s.title);
        println!(
            "{:<24} lab {}, {} machines, {:?} simulated",
            "",
            s.lab,
            s.machines.len(),
            s.duration
        );
        for x in &s.expectations {
            let (op, v) = match (x.above, x.below) {
                (Some(v), _) => (">", v),
                (_, Some(v)) => ("<", v),
                _ => continue,
            };
            println!(
                "{:<24} expect {} {} {op} {v} within {:?}",
                "", x.machine, x.metric, x.within
            );
        }
    }
    Ok(())
}

async fn record(
    mqtt: &str,
    login: Option<&NodeLogin>,
    out: &std::path::Path,
    seconds: Option<u64>,
    frames: Option<usize>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let (host, port) = broker(mqtt)?;
    println!("recording node frames from mqtt://{host}:{port} (Ctrl-C stops)");
    let limits = session::RecordLimits {
        duration: seconds.map(Duration::from_secs),
        frames,
    };
    let recorded = session::record(&host, port, login, limits, cancel).await?;
    recorded.save(out)?;
    println!(
        "recorded {} frames of {} nodes over {:.1} s to {}",
        recorded.frames.len(),
        recorded.nodes().len(),
        recorded.frames.last().map_or(0, |f| f.at_ms) as f64 / 1000.0,
        out.display()
    );
    Ok(())
}

async fn replay(
    path: &std::path::Path,
    mqtt: &str,
    login: Option<NodeLogin>,
    speed: f64,
    fresh_boot: bool,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    if !(speed >= 0.0 && speed.is_finite()) {
        bail!("--speed must be 0 or more, got {speed}");
    }
    let recorded = session::Session::load(path)?;
    let (host, port) = broker(mqtt)?;
    println!(
        "replaying {} frames of {} nodes from {} to mqtt://{host}:{port} at {speed}×",
        recorded.frames.len(),
        recorded.nodes().len(),
        path.display()
    );
    let options = session::ReplayOptions {
        speed,
        fresh_boot,
        login,
    };
    let stats = session::replay(&recorded, &host, port, options, cancel).await?;
    println!(
        "replayed {} frames ({} before a node's Hello skipped)",
        stats.published, stats.skipped_before_hello
    );
    Ok(())
}

fn broker(addr: &str) -> anyhow::Result<(String, u16)> {
    let resolved = addr
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve the broker {addr:?}"))?
        .next()
        .with_context(|| format!("no address for the broker {addr:?}"))?;
    Ok((resolved.ip().to_string(), resolved.port()))
}

async fn run(
    name: &str,
    mqtt: &str,
    login: Option<&NodeLogin>,
    seed: u64,
    speed: f64,
    plc_port: u16,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let s = Scenario::find(name)?;
    if !(speed.is_finite() && speed >= 0.0) {
        bail!("--speed must be a number ≥ 0, not {speed}");
    }
    let (host, port) = broker(mqtt)?;
    println!(
        "scenario {} ({}): {} machines, {:?} simulated at {}x, seed {seed}",
        s.name,
        s.title,
        s.machines.len(),
        s.duration,
        if speed == 0.0 {
            "max".to_owned()
        } else {
            speed.to_string()
        },
    );
    let mut nodes = s.spawn(seed, speed, &host, port, login, &cancel);
    let total = nodes.len();
    // Machines on a Modbus link get a PLC each, on consecutive ports from `plc_port`.
    let mut plcs = tokio::task::JoinSet::new();
    for (i, machine) in s.machines.iter().enumerate() {
        if machine.link != scenario::Link::Modbus {
            continue;
        }
        let Some(model) = s.build_machine(i, seed) else {
            continue;
        };
        let port = plc_port + plcs.len() as u16;
        let listener = tokio::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, port))
            .await
            .with_context(|| {
                format!("cannot listen for the PLC of {} on port {port}", machine.id)
            })?;
        println!(
            "plc {} (Modbus TCP) on {}",
            machine.id,
            listener.local_addr()?
        );
        let plc = Plc::new(model, s.timeline(i), s.sample_period);
        let scan = if speed > 0.0 {
            Duration::try_from_secs_f64(s.sample_period.as_secs_f64() / speed).ok()
        } else {
            None
        };
        plcs.spawn(plc.run(
            listener,
            scan.or(Some(Duration::from_millis(1))),
            cancel.clone(),
        ));
    }
    let started = Instant::now();
    let mut progress = tokio::time::interval(Duration::from_secs(5));
    let mut done = 0;
    let mut failed = 0;
    while done < total {
        tokio::select! {
            joined = nodes.join_next() => match joined {
                Some(Ok(Ok(report))) => {
                    done += 1;
                    println!("node {} finished: {} samples sent", report.node, report.sent);
                }
                Some(Ok(Err(e))) => { done += 1; failed += 1; println!("node failed: {e}"); }
                Some(Err(e)) => { done += 1; failed += 1; println!("node task failed: {e}"); }
                None => break,
            },
            _ = progress.tick() => {
                let sim = started.elapsed().as_secs_f64() * speed;
                println!(
                    "progress: ~{:.0} of {:.0} simulated s, {done}/{total} nodes finished",
                    sim.min(s.duration.as_secs_f64()),
                    s.duration.as_secs_f64()
                );
            }
        }
        let _ = std::io::stdout().flush();
    }
    println!(
        "scenario {} done in {:.1} s wall",
        s.name,
        started.elapsed().as_secs_f64()
    );
    // The MQTT machines are done; PLCs keep serving their last values until Ctrl-C.
    if !plcs.is_empty() {
        println!("PLCs keep serving; Ctrl-C stops them");
        while let Some(result) = plcs.join_next().await {
            result??;
        }
    }
    if failed > 0 {
        bail!("{failed} of {total} nodes failed");
    }
    Ok(())
}

async fn fleet(config: FleetConfig, cancel: CancellationToken) -> anyhow::Result<()> {
    println!(
        "fleet: {} nodes at {} Hz each ({} msgs/s offered), kinds {:?}",
        config.nodes,
        config.rate_hz,
        f64::from(config.nodes) * config.rate_hz,
        config.kinds.iter().map(|k| k.id()).collect::<Vec<_>>()
    );
    let started = Instant::now();
    let mut nodes = config.spawn(&cancel).await?;
    println!(
        "fleet: {} nodes started in {:.1} s",
        nodes.len(),
        started.elapsed().as_secs_f64()
    );
    let (mut sent, mut done, mut failed) = (0u64, 0u32, 0u32);
    let mut progress = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            joined = nodes.join_next() => match joined {
                Some(Ok(Ok(report))) => { done += 1; sent += u64::from(report.sent); }
                Some(_) => { done += 1; failed += 1; }
                None => break,
            },
            _ = progress.tick() => {
                println!("fleet: {:.0} s, {done} nodes finished", started.elapsed().as_secs_f64());
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "fleet: {sent} samples from {done} nodes in {secs:.1} s = {:.0} msgs/s; {failed} nodes failed",
        sent as f64 / secs.max(1e-9)
    );
    if failed > 0 {
        bail!("{failed} nodes failed");
    }
    Ok(())
}

async fn plc(
    listen: SocketAddr,
    kind: MachineKind,
    seed: u64,
    period_ms: u64,
    warmup_s: u64,
    hold: bool,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let period = Duration::from_millis(period_ms.max(1));
    let mut plc = Plc::new(kind.build(seed), Timeline::default(), period);
    let scans = u32::try_from(warmup_s.saturating_mul(1000) / period_ms.max(1)).unwrap_or(u32::MAX);
    plc.advance(scans);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let addr = listener.local_addr()?;
    let snapshot = plc.memory().snapshot();
    println!(
        "PLC LISTENING addr={addr} machine={kind} metrics={} state_register={STATE_REGISTER} count_register={COUNT_REGISTER} hold={hold}",
        snapshot.values.len()
    );
    let values: Vec<String> = snapshot
        .values
        .iter()
        .map(|(name, unit, v)| {
            format!(
                "{{\"metric\":\"{name}\",\"unit\":\"{}\",\"value\":{v:?}}}",
                unit.symbol()
            )
        })
        .collect();
    println!(
        "PLC VALUES {{\"state\":{},\"values\":[{}]}}",
        snapshot.state,
        values.join(",")
    );
    let _ = std::io::stdout().flush();
    plc.run(listener, (!hold).then_some(period), cancel).await?;
    Ok(())
}

async fn opcua(config: OpcUaSimConfig, cancel: CancellationToken) -> anyhow::Result<()> {
    let secure = config.secure;
    let plain = config.plain;
    // Every identity a session may activate with, e.g. `anonymous` or `user:op,x509:gw`.
    let logins: Vec<String> = [
        config.anonymous.then(|| "anonymous".to_owned()),
        config.user.as_ref().map(|(u, _)| format!("user:{u}")),
        config.x509_user.as_ref().map(|(u, _)| format!("x509:{u}")),
    ]
    .into_iter()
    .flatten()
    .collect();
    let sim = start_opcua_sim(config, cancel.clone()).await?;
    println!(
        "OPCUA LISTENING endpoint={} namespace={} counter={} none={plain} basic256sha256={secure} logins={}",
        sim.endpoint_url(),
        sim.namespace(),
        sim.node_id("Counter"),
        logins.join(",")
    );
    let _ = std::io::stdout().flush();
    cancel.cancelled().await;
    sim.stop().await;
    Ok(())
}

fn frames(name: &str, seed: u64, boot: u32) -> anyhow::Result<()> {
    let s = Scenario::find(name)?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for (node, frames) in s.offline_frames(seed, boot)? {
        for f in frames {
            let hex: String = f.iter().map(|b| format!("{b:02x}")).collect();
            writeln!(out, "{node} {hex}")?;
        }
    }
    out.flush()?;
    Ok(())
}
