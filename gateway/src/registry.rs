//! The nodes a gateway has met, kept on disk beside the buffer.
//!
//! After a restart the lab broker redelivers node messages the dead gateway never acknowledged,
//! and they must be buffered, not dropped for want of a `Hello`: so every `Hello` is saved
//! (write to a temporary file, fsync, rename) and read back at start.
//!
//! Format: a sequence of `[len u16 LE][node frame bytes]`, each frame a `Hello` encoded with
//! `protocol::codec` (so it carries its own CRC).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use protocol::{Frame, Hello, NodeId, codec};
use tracing::warn;

const FILE: &str = "nodes.bin";

/// Why the registry could not be written.
#[derive(Debug, thiserror::Error)]
#[error("cannot save the node registry {path}: {source}")]
pub struct RegistryError {
    path: PathBuf,
    source: std::io::Error,
}

/// Every node's last `Hello`.
#[derive(Debug)]
pub struct NodeRegistry {
    path: PathBuf,
    hellos: BTreeMap<NodeId, Hello>,
}

impl NodeRegistry {
    /// Loads the registry in `dir`; unreadable entries are skipped with a warning (the node's
    /// next `Hello` brings it back).
    pub fn open(dir: &Path) -> Self {
        let path = dir.join(FILE);
        let mut hellos = BTreeMap::new();
        if let Ok(bytes) = std::fs::read(&path) {
            let mut rest = bytes.as_slice();
            while rest.len() >= 2 {
                let len = usize::from(u16::from_le_bytes([rest[0], rest[1]]));
                let Some(frame) = rest.get(2..2 + len) else {
                    warn!(path = %path.display(), "node registry ends mid-entry");
                    break;
                };
                match codec::decode(frame) {
                    Ok(Frame::Hello(hello)) => {
                        hellos.insert(hello.node, hello);
                    }
                    Ok(other) => {
                        warn!(kind = other.kind(), "node registry holds a non-Hello frame")
                    }
                    Err(err) => warn!(%err, "unreadable node registry entry"),
                }
                rest = &rest[2 + len..];
            }
        }
        Self { path, hellos }
    }

    /// The saved `Hello`s.
    pub fn hellos(&self) -> impl Iterator<Item = &Hello> {
        self.hellos.values()
    }

    /// Saves a `Hello` if it differs from the one known.
    pub fn remember(&mut self, hello: &Hello) -> Result<(), RegistryError> {
        if self.hellos.get(&hello.node) == Some(hello) {
            return Ok(());
        }
        self.hellos.insert(hello.node, hello.clone());
        self.save().map_err(|source| RegistryError {
            path: self.path.clone(),
            source,
        })
    }

    fn save(&self) -> std::io::Result<()> {
        let mut bytes = Vec::new();
        for hello in self.hellos.values() {
            let frame = codec::encode_to_vec(&Frame::Hello(hello.clone()))
                .map_err(std::io::Error::other)?;
            bytes.extend((frame.len() as u16).to_le_bytes());
            bytes.extend(frame);
        }
        let temp = self.path.with_extension("tmp");
        let mut file = std::fs::File::create(&temp)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
        std::fs::rename(&temp, &self.path)
    }
}

#[cfg(test)]
mod tests {
    use protocol::golden;

    use super::*;

    #[test]
    fn hellos_survive_a_restart_and_garbage_is_skipped() {
        let dir = tempfile::tempdir().expect("temp dir");
        let Frame::Hello(hello) = golden::hello() else {
            unreachable!("golden hello")
        };
        NodeRegistry::open(dir.path())
            .remember(&hello)
            .expect("save");
        let reopened = NodeRegistry::open(dir.path());
        assert_eq!(reopened.hellos().collect::<Vec<_>>(), vec![&hello]);
        std::fs::write(dir.path().join(FILE), [5, 0, 1, 2, 3]).expect("write");
        assert_eq!(NodeRegistry::open(dir.path()).hellos().count(), 0);
    }
}
