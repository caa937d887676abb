//! A real PostgreSQL server for the hub-replica tests: a fresh cluster (`initdb`) in a temp
//! dir, listening only on a Unix socket in that dir, so tests need no port and never meet each
//! other. PostgreSQL refuses to run as root, so under root it runs as the `postgres` user of
//! the Debian package.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// Names the directory of `initdb` and `postgres` (Debian: `/usr/lib/postgresql/15/bin`).
pub const POSTGRES_ENV: &str = "DEMOLAB_POSTGRES";

/// The server binaries from [`POSTGRES_ENV`]; `None` (skip, with a message) outside CI, an error
/// under `CI`: a replica test that silently skipped would prove nothing.
pub fn postgres_binaries(test: &str) -> anyhow::Result<Option<PathBuf>> {
    match std::env::var_os(POSTGRES_ENV).filter(|v| !v.is_empty()) {
        Some(path) => Ok(Some(PathBuf::from(path))),
        None if std::env::var_os("CI").is_some() => bail!(
            "CI is set but {POSTGRES_ENV} is not: the hub replica test must run in CI \
             (set it to /usr/lib/postgresql/15/bin)"
        ),
        None => {
            eprintln!(
                "SKIPPED {test}: set {POSTGRES_ENV}=/usr/lib/postgresql/15/bin \
                 (Debian package postgresql)"
            );
            Ok(None)
        }
    }
}

/// A running server; stopped (SIGKILL) and removed on drop.
#[derive(Debug)]
pub struct Postgres {
    dir: tempfile::TempDir,
    server: Child,
}

/// The role the tests connect as (trusted: the socket is in a private temp dir).
pub const USER: &str = "demolab";

impl Postgres {
    /// Creates a cluster and starts its server; returns once it accepts connections.
    pub async fn start(binaries: &Path) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let uid = Command::new("id").arg("-u").output().context("run id -u")?;
        let as_root = String::from_utf8_lossy(&uid.stdout).trim() == "0";
        if as_root {
            let status = Command::new("chown")
                .args(["postgres", &dir.path().display().to_string()])
                .status()
                .context("chown the cluster dir to the postgres user")?;
            if !status.success() {
                bail!("cannot give {} to the postgres user", dir.path().display());
            }
        }
        let run = |program: &str| {
            let binary = binaries.join(program);
            if as_root {
                let mut command = Command::new("runuser");
                command.args(["-u", "postgres", "--"]).arg(binary);
                command
            } else {
                Command::new(binary)
            }
        };
        let data = dir.path().join("data");
        let init = run("initdb")
            .arg("-D")
            .arg(&data)
            .args(["--auth=trust", "-U", USER, "-E", "UTF8", "--no-sync"])
            .stdout(Stdio::null())
            .output()
            .context("run initdb")?;
        if !init.status.success() {
            bail!("initdb failed: {}", String::from_utf8_lossy(&init.stderr));
        }
        let log = std::fs::File::create(dir.path().join("server.log"))?;
        let server = run("postgres")
            .arg("-D")
            .arg(&data)
            .args(["-c", "listen_addresses="])
            .arg("-c")
            .arg(format!("unix_socket_directories={}", dir.path().display()))
            // A test server: losing its last commits to a power cut is no loss.
            .args(["-c", "fsync=off", "-c", "max_connections=200"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("start postgres")?;
        let postgres = Self { dir, server };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match postgres.config().connect(tokio_postgres::NoTls).await {
                Ok(_) => return Ok(postgres),
                Err(err) if Instant::now() > deadline => {
                    bail!("PostgreSQL did not start: {err}\n{}", postgres.log())
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// A libpq connection string for the `postgres` database, as a hub's config takes it.
    pub fn connection_string(&self) -> String {
        format!(
            "host={} user={USER} dbname=postgres",
            self.dir.path().display()
        )
    }

    /// The same, parsed.
    pub fn config(&self) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        config
            .host_path(self.dir.path())
            .user(USER)
            .dbname("postgres");
        config
    }

    /// A connection for the test's own queries; its IO runs on a task of its own.
    pub async fn connect(&self) -> anyhow::Result<tokio_postgres::Client> {
        let (client, connection) = self.config().connect(tokio_postgres::NoTls).await?;
        tokio::spawn(connection);
        Ok(client)
    }

    /// The server's log, for a failure message.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // `runuser` passes SIGKILL on only as its own death; the server is its child, found by
        // its pid file.
        if let Ok(pid) = std::fs::read_to_string(self.dir.path().join("data/postmaster.pid"))
            && let Some(pid) = pid
                .lines()
                .next()
                .and_then(|l| l.trim().parse::<i32>().ok())
        {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}
