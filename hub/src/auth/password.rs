//! Password checks with bounded cost: a small, fixed number of argon2 runs at once, each in a
//! memory buffer kept from one run to the next, and an unknown user name checked against a dummy
//! hash of the same parameters so that it answers as slowly as a wrong password.
//!
//! Why the buffers are kept: argon2 needs `m` KiB per run (19 MiB with its recommended
//! parameters). Allocated per run on many blocking threads, glibc keeps those blocks in
//! per-thread arenas after they are freed, so a burst of logins leaves the process gigabytes
//! larger. Here the memory is `concurrency × max m`, allocated once.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use argon2::{Algorithm, Argon2, Block, Params, PasswordHash, Version};
use tokio::sync::Semaphore;

/// A configured password hash, parsed once.
#[derive(Debug, Clone)]
pub struct PasswordCheck {
    algorithm: Algorithm,
    version: Version,
    params: Params,
    salt: Vec<u8>,
    expected: Vec<u8>,
}

impl PasswordCheck {
    /// Parses an argon2 PHC string; the error says what is wrong with it.
    pub fn parse(phc: &str) -> Result<Self, String> {
        let hash =
            PasswordHash::new(phc).map_err(|err| format!("not an argon2 PHC string ({err})"))?;
        let algorithm = Algorithm::new(hash.algorithm.as_str())
            .map_err(|err| format!("unknown algorithm: {err}"))?;
        let version = match hash.version {
            Some(v) => Version::try_from(v).map_err(|err| format!("version: {err}"))?,
            None => Version::default(),
        };
        let params = Params::try_from(&hash).map_err(|err| format!("parameters: {err}"))?;
        let salt = hash.salt.ok_or("no salt")?.to_vec();
        let expected = hash.hash.ok_or("no hash output")?.as_bytes().to_vec();
        Ok(Self {
            algorithm,
            version,
            params,
            salt,
            expected,
        })
    }

    /// A check with the same algorithm and parameters that no password passes: an unknown user
    /// name costs what a known one does.
    pub fn dummy_like(&self) -> Self {
        Self {
            salt: random_bytes(self.salt.len()),
            expected: random_bytes(self.expected.len()),
            ..self.clone()
        }
    }

    /// An argon2id check with its recommended parameters that no password passes.
    pub fn unmatchable() -> Self {
        Self {
            algorithm: Algorithm::Argon2id,
            version: Version::V0x13,
            params: Params::default(),
            salt: random_bytes(16),
            expected: random_bytes(32),
        }
    }

    /// Memory one check needs, KiB (argon2's `m`).
    pub fn memory_kib(&self) -> u32 {
        self.params.m_cost()
    }

    /// Passes over the memory (argon2's `t`).
    pub fn passes(&self) -> u32 {
        self.params.t_cost()
    }

    /// Whether `password` matches, computed in `memory` (at least [`Self::memory_kib`] blocks).
    fn matches(&self, password: &[u8], memory: &mut [Block]) -> bool {
        let argon = Argon2::new(self.algorithm, self.version, self.params.clone());
        let mut out = vec![0u8; self.expected.len()];
        if argon
            .hash_password_into_with_memory(password, &self.salt, &mut out, memory)
            .is_err()
        {
            return false;
        }
        // Constant time: every byte is compared whatever the first difference.
        out.iter()
            .zip(&self.expected)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

fn random_bytes(len: usize) -> Vec<u8> {
    (0..len).map(|_| rand::random()).collect()
}

/// Every permit to hash was taken for longer than the configured wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("too many logins at once")]
pub struct Busy;

/// Runs password checks, at most `concurrency` at once, each in a buffer reused while checks
/// follow each other and freed once none runs.
#[derive(Debug)]
pub struct Hasher {
    permits: Semaphore,
    concurrency: usize,
    wait: Duration,
    blocks: usize,
    buffers: Mutex<Vec<Vec<Block>>>,
}

impl Hasher {
    /// A hasher for checks of up to `max_memory_kib` each.
    pub fn new(concurrency: usize, wait: Duration, max_memory_kib: u32) -> Self {
        Self {
            permits: Semaphore::new(concurrency.max(1)),
            concurrency: concurrency.max(1),
            wait,
            blocks: max_memory_kib as usize,
            buffers: Mutex::new(Vec::new()),
        }
    }

    /// Checks `password` on the blocking pool once a permit is free; [`Busy`] when none frees
    /// within the wait.
    pub async fn check(
        self: &Arc<Self>,
        check: Arc<PasswordCheck>,
        password: String,
    ) -> Result<bool, Busy> {
        let permit = tokio::time::timeout(self.wait, self.permits.acquire())
            .await
            .map_err(|_| Busy)?
            .map_err(|_| Busy)?;
        let hasher = self.clone();
        let matched = tokio::task::spawn_blocking(move || hasher.check_now(&check, &password))
            .await
            .unwrap_or(false);
        drop(permit);
        if self.permits.available_permits() == self.concurrency {
            // A burst of logins reuses the buffers; afterwards they would hold a check's memory
            // cost (19 MiB by default) each for good.
            if let Ok(mut buffers) = self.buffers.lock() {
                buffers.clear();
            }
        }
        Ok(matched)
    }

    /// Checks on this thread (tests, and the blocking task of [`Self::check`]).
    pub fn check_now(&self, check: &PasswordCheck, password: &str) -> bool {
        let mut buffer = self
            .buffers
            .lock()
            .ok()
            .and_then(|mut buffers| buffers.pop())
            .unwrap_or_else(|| vec![Block::new(); self.blocks]);
        let matched = check.matches(password.as_bytes(), &mut buffer);
        if let Ok(mut buffers) = self.buffers.lock() {
            buffers.push(buffer);
        }
        matched
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn phc(password: &str, m: u32) -> String {
        use argon2::PasswordHasher;
        let params = Params::new(m, 1, 1, None).unwrap();
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password(password.as_bytes())
            .unwrap()
            .to_string()
    }

    #[test]
    fn a_parsed_hash_matches_its_password_and_nothing_else() {
        let check = PasswordCheck::parse(&phc("turning", 64)).unwrap();
        let hasher = Hasher::new(1, Duration::from_secs(1), 64);
        assert!(hasher.check_now(&check, "turning"));
        assert!(!hasher.check_now(&check, "milling"));
        assert!(!hasher.check_now(&check.dummy_like(), "turning"));
        assert_eq!(check.memory_kib(), 64);
    }

    #[test]
    fn the_broker_verifier_agrees_with_the_pooled_one() {
        let hash = phc("lathe", 32);
        let check = PasswordCheck::parse(&hash).unwrap();
        let hasher = Hasher::new(1, Duration::from_secs(1), 64);
        for password in ["lathe", "Lathe", ""] {
            assert_eq!(
                hasher.check_now(&check, password),
                broker::access::verify_password(&hash, password.as_bytes()),
                "{password:?}"
            );
        }
    }

    #[test]
    fn broken_hashes_are_refused_with_a_reason() {
        assert!(PasswordCheck::parse("secret").is_err());
        let err = PasswordCheck::parse("$argon2id$v=19$m=64,t=1,p=1$c2FsdHNhbHQ").unwrap_err();
        assert!(err.contains("hash"), "{err}");
    }

    #[tokio::test]
    async fn a_check_waits_for_a_permit_no_longer_than_configured() {
        let check = Arc::new(PasswordCheck::parse(&phc("x", 8)).unwrap());
        let hasher = Arc::new(Hasher::new(1, Duration::from_millis(10), 8));
        let held = hasher.permits.acquire().await.unwrap();
        assert_eq!(hasher.check(check.clone(), "x".into()).await, Err(Busy));
        drop(held);
        assert_eq!(hasher.check(check, "x".into()).await, Ok(true));
    }

    #[tokio::test]
    async fn buffers_are_reused_while_checks_overlap_and_freed_once_none_runs() {
        let check = Arc::new(PasswordCheck::parse(&phc("x", 8)).unwrap());
        let hasher = Arc::new(Hasher::new(2, Duration::from_millis(10), 8));
        // Another login is being checked meanwhile.
        let other = hasher.permits.acquire().await.unwrap();
        assert_eq!(hasher.check(check.clone(), "x".into()).await, Ok(true));
        assert_eq!(
            hasher.buffers.lock().unwrap().len(),
            1,
            "kept for the burst"
        );
        drop(other);
        assert_eq!(hasher.check(check, "y".into()).await, Ok(false));
        assert!(hasher.buffers.lock().unwrap().is_empty(), "freed when idle");
    }
}
