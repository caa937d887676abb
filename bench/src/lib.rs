//! What the benchmark binaries share: matching what a load generator sent with what a client
//! saw and the latency figures that come of it, and what each process costs, read from `/proc`.

pub mod latency;
pub mod measure;
pub mod sparkplug_load;

use std::path::{Path, PathBuf};

/// Writes `{dir}/{gateway}.toml` for a gateway of lab `lab` whose nodes talk to the broker on
/// `south_port` and whose Sparkplug uplink goes to `uplink_port`, buffering in `buffer_dir`
/// with the given `buffer.fsync` policy; returns its path.
pub fn gateway_toml(
    dir: &Path,
    lab: &str,
    gateway: &str,
    uplink_port: u16,
    south_port: u16,
    buffer_dir: &str,
    fsync: &str,
) -> std::io::Result<PathBuf> {
    let config = dir.join(format!("{gateway}.toml"));
    std::fs::write(
        &config,
        format!(
            "lab = \"{lab}\"\ngateway = \"{gateway}\"\n\
             [uplink]\nhost = \"127.0.0.1\"\nport = {uplink_port}\n\
             [southbound]\nhost = \"127.0.0.1\"\nport = {south_port}\n\
             [buffer]\ndir = \"{buffer_dir}\"\nfsync = \"{fsync}\"\n\
             [ops]\nlisten = \"127.0.0.1:0\"\n"
        ),
    )?;
    Ok(config)
}
