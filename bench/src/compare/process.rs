//! Child processes of the run: free ports, readiness by connecting, found executables, and a
//! guard that kills a child however the run ends.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// Holds a free loopback port for a moment: bind port 0, read it, drop the listener. Another
/// process could take it in between; the readiness checks would then fail loudly, not hang.
pub fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding a free port")?;
    Ok(listener.local_addr()?.port())
}

/// Waits until `addr` accepts a TCP connection or `child` exits, failing after `deadline`.
pub fn wait_accepting(
    addr: SocketAddr,
    child: &mut Child,
    what: &str,
    deadline: Duration,
) -> anyhow::Result<()> {
    let until = Instant::now() + deadline;
    loop {
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            bail!("{what} exited ({status}) before accepting connections on {addr}");
        }
        if Instant::now() > until {
            bail!("{what} did not accept connections on {addr} within {deadline:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The `mosquitto` executable: on PATH, else Debian's /usr/sbin.
pub fn find_executable(name: &str) -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    });
    on_path.or_else(|| {
        [Path::new("/usr/sbin"), Path::new("/usr/bin")]
            .iter()
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    })
}

/// A child process killed (and reaped) when dropped, so an error or panic in the run leaves no
/// broker, hub or Node-RED behind.
#[derive(Debug)]
pub struct Guard(pub Child);

impl Guard {
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn set_mode(path: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:o} {}", path.display()))
}
