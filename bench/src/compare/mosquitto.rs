//! The one Mosquitto broker every peer is measured on: generated config, password file, a free
//! loopback port, killed when dropped.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};

use crate::process::{find_executable, free_port, set_mode, wait_accepting};

/// MQTT users of the run; all share one generated password (the broker is loopback-only and
/// lives as long as the run).
pub const USERS: [&str; 4] = ["hub", "load", "node-red", "counter"];

/// A running Mosquitto, killed on drop.
#[derive(Debug)]
pub struct Mosquitto {
    child: Child,
    pub port: u16,
    pub password: String,
    pub version: String,
    pub config_text: String,
}

impl Mosquitto {
    /// `max_inflight`: Mosquitto's `max_inflight_messages`, left at its default when 0.
    pub fn start(dir: &Path, max_inflight: u32) -> anyhow::Result<Self> {
        let exe = find_executable("mosquitto").context(
            "mosquitto is not installed (not on PATH nor in /usr/sbin): apt-get install mosquitto",
        )?;
        let passwd_exe = find_executable("mosquitto_passwd")
            .context("mosquitto_passwd is not installed: apt-get install mosquitto")?;
        // Started as root, Mosquitto drops to the `mosquitto` user: it must be able to read
        // the temp dir, which tempfile creates owner-only.
        set_mode(dir, 0o755)?;
        let password = format!(
            "bench-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos())
        );
        let passwd_file = dir.join("passwd");
        for (i, user) in USERS.iter().enumerate() {
            let mut cmd = Command::new(&passwd_exe);
            if i == 0 {
                cmd.arg("-c");
            }
            let out = cmd
                .arg("-b")
                .arg(&passwd_file)
                .arg(user)
                .arg(&password)
                .output()
                .context("running mosquitto_passwd")?;
            if !out.status.success() {
                bail!(
                    "mosquitto_passwd failed for {user}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        set_mode(&passwd_file, 0o644)?;
        let port = free_port()?;
        // `max_inflight_messages` as the deployment sets it: it bounds a consumer that
        // acknowledges only what is on disk (the hub). `max_queued_messages` is raised so a lagging consumer is measured as lagging, not
        // silently losing messages.
        let mut config_text = format!(
            "listener {port} 127.0.0.1\n\
             allow_anonymous false\n\
             password_file {passwd}\n\
             max_queued_messages 1000000\n\
             persistence false\n\
             set_tcp_nodelay true\n\
             log_dest stderr\n\
             log_type error\n\
             log_type warning\n",
            passwd = passwd_file.display()
        );
        if max_inflight > 0 {
            config_text.push_str(&format!("max_inflight_messages {max_inflight}\n"));
        }
        let config = dir.join("mosquitto.conf");
        std::fs::write(&config, &config_text)?;
        set_mode(&config, 0o644)?;
        let log = std::fs::File::create(dir.join("mosquitto.log"))?;
        let version = Command::new(&exe)
            .arg("-h")
            .output()
            .ok()
            .and_then(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .next()
                    .map(str::to_owned)
            })
            .unwrap_or_default();
        let child = Command::new(&exe)
            .arg("-c")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", exe.display()))?;
        let mut broker = Self {
            child,
            port,
            password,
            version,
            config_text,
        };
        wait_accepting(
            SocketAddr::from(([127, 0, 0, 1], port)),
            &mut broker.child,
            "mosquitto",
            Duration::from_secs(10),
        )
        .with_context(|| format!("see {}", dir.join("mosquitto.log").display()))?;
        Ok(broker)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
