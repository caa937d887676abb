//! Login rate limits: token buckets per client address (every attempt) and per client address
//! and user name (failed attempts only), sans-IO: the caller passes the time.
//!
//! Why per address *and* name rather than per name alone: a lockout per name would let anyone
//! lock a real user out for good by failing on purpose. Here a guesser exhausts only its own
//! buckets; the user logs in from their own machine. The hashing cap ([`super::password`])
//! bounds the rate of guesses over all addresses together.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// `[auth.login]`: limits of the login endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoginLimits {
    /// Attempts one client address may make in a burst.
    pub address_burst: u32,
    /// One more attempt per address every this many ms.
    pub address_refill_ms: u64,
    /// Failed attempts one address may make for one user name in a burst.
    pub user_failures: u32,
    /// One more failure per address and name every this many ms.
    pub user_refill_ms: u64,
    /// Password checks running at once (each holds `hash_max_memory_kib`).
    pub hash_concurrency: usize,
    /// How long a login waits for a free check before `503 login_busy`, ms.
    pub hash_wait_ms: u64,
    /// Largest argon2 memory cost a configured hash may have, KiB.
    pub hash_max_memory_kib: u32,
    /// Largest argon2 time cost (passes) a configured hash may have.
    pub hash_max_passes: u32,
    /// Client addresses (and address/name pairs) tracked at most; beyond, logins from new
    /// addresses are refused until old entries refill.
    pub tracked_clients: usize,
}

impl Default for LoginLimits {
    fn default() -> Self {
        Self {
            address_burst: 20,
            address_refill_ms: 3_000,
            user_failures: 5,
            user_refill_ms: 60_000,
            hash_concurrency: 2,
            hash_wait_ms: 2_000,
            hash_max_memory_kib: 64 * 1024,
            hash_max_passes: 8,
            tracked_clients: 4096,
        }
    }
}

/// Why a login attempt was refused before its password was checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The client address made too many attempts.
    Address,
    /// The client address failed too often for this user name.
    User,
    /// Too many clients are tracked to admit a new one.
    TableFull,
}

/// A refused attempt: why, and when to try again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    /// Why.
    pub reason: Refusal,
    /// Seconds until an attempt would pass (≥ 1).
    pub retry_after_s: u64,
}

/// A token bucket kept as the time it will be full again (the generic cell rate algorithm):
/// one number, no rounding, whatever the rate.
#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    /// When the bucket is full again, ms.
    full_at: u64,
}

impl Bucket {
    /// How long until one token is there, ms (0: one is there now).
    fn wait_ms(&self, burst: u32, refill_ms: u64, now_ms: u64) -> u64 {
        let after_taking = self.full_at.max(now_ms) + refill_ms;
        (after_taking - now_ms).saturating_sub(u64::from(burst) * refill_ms)
    }

    /// Takes a token whether or not one is there (a failure that already happened).
    fn take(&mut self, refill_ms: u64, now_ms: u64) {
        self.full_at = self.full_at.max(now_ms) + refill_ms;
    }

    fn is_full(&self, now_ms: u64) -> bool {
        self.full_at <= now_ms
    }
}

fn retry_after_s(wait_ms: u64) -> u64 {
    wait_ms.div_ceil(1000).max(1)
}

/// The address a limit applies to: IPv6 clients by their /64, which one machine usually owns
/// whole, so that rotating through it gains nothing.
fn client_key(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V4(_) => addr,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(bits.into())
            }
        },
    }
}

/// Long names are cut so that a table entry stays small.
fn name_key(user: &str) -> String {
    user.chars().take(64).collect()
}

#[derive(Debug, Default)]
struct Tables {
    addresses: HashMap<IpAddr, Bucket>,
    failures: HashMap<(IpAddr, String), Bucket>,
}

/// The login limiter.
#[derive(Debug)]
pub struct LoginLimiter {
    limits: LoginLimits,
    tables: Mutex<Tables>,
}

impl LoginLimiter {
    /// A limiter with these limits.
    pub fn new(limits: LoginLimits) -> Self {
        Self {
            limits,
            tables: Mutex::default(),
        }
    }

    /// Takes an attempt from `client`'s bucket, or says why not and for how long.
    pub fn admit(&self, client: IpAddr, user: &str, now_ms: u64) -> Result<(), Limited> {
        let l = &self.limits;
        let client = client_key(client);
        let mut tables = self.tables.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(failures) = tables.failures.get(&(client, name_key(user))) {
            let wait = failures.wait_ms(l.user_failures, l.user_refill_ms, now_ms);
            if wait > 0 {
                return Err(Limited {
                    reason: Refusal::User,
                    retry_after_s: retry_after_s(wait),
                });
            }
        }
        if !tables.addresses.contains_key(&client) && tables.addresses.len() >= l.tracked_clients {
            tables.addresses.retain(|_, b| !b.is_full(now_ms));
            if tables.addresses.len() >= l.tracked_clients {
                return Err(Limited {
                    reason: Refusal::TableFull,
                    retry_after_s: retry_after_s(l.address_refill_ms),
                });
            }
        }
        let bucket = tables.addresses.entry(client).or_default();
        let wait = bucket.wait_ms(l.address_burst, l.address_refill_ms, now_ms);
        if wait > 0 {
            return Err(Limited {
                reason: Refusal::Address,
                retry_after_s: retry_after_s(wait),
            });
        }
        bucket.take(l.address_refill_ms, now_ms);
        Ok(())
    }

    /// Records a failed attempt of `client` for `user`.
    pub fn failed(&self, client: IpAddr, user: &str, now_ms: u64) {
        let l = &self.limits;
        let key = (client_key(client), name_key(user));
        let mut tables = self.tables.lock().unwrap_or_else(|p| p.into_inner());
        if !tables.failures.contains_key(&key) && tables.failures.len() >= l.tracked_clients {
            tables.failures.retain(|_, b| !b.is_full(now_ms));
            // Still full: the entry nearest to full makes room (the address buckets still
            // limit that client).
            if tables.failures.len() >= l.tracked_clients
                && let Some(oldest) = tables
                    .failures
                    .iter()
                    .min_by_key(|(_, b)| b.full_at)
                    .map(|(k, _)| k.clone())
            {
                tables.failures.remove(&oldest);
            }
        }
        tables
            .failures
            .entry(key)
            .or_default()
            .take(l.user_refill_ms, now_ms);
    }

    /// Forgets the failures of `client` for `user` after it logged in.
    pub fn succeeded(&self, client: IpAddr, user: &str) {
        let mut tables = self.tables.lock().unwrap_or_else(|p| p.into_inner());
        tables
            .failures
            .remove(&(client_key(client), name_key(user)));
    }

    /// Address and address/name entries tracked now.
    pub fn tracked(&self) -> (usize, usize) {
        let tables = self.tables.lock().unwrap_or_else(|p| p.into_inner());
        (tables.addresses.len(), tables.failures.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> LoginLimits {
        LoginLimits {
            address_burst: 3,
            address_refill_ms: 1000,
            user_failures: 2,
            user_refill_ms: 10_000,
            tracked_clients: 4,
            ..LoginLimits::default()
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("address")
    }

    #[test]
    fn an_address_gets_its_burst_then_one_attempt_per_refill() {
        let limiter = LoginLimiter::new(limits());
        let a = ip("10.0.0.1");
        for _ in 0..3 {
            assert_eq!(limiter.admit(a, "olga", 0), Ok(()));
        }
        assert_eq!(
            limiter.admit(a, "olga", 0),
            Err(Limited {
                reason: Refusal::Address,
                retry_after_s: 1
            })
        );
        assert_eq!(
            limiter.admit(ip("10.0.0.2"), "olga", 0),
            Ok(()),
            "others pass"
        );
        assert_eq!(
            limiter.admit(a, "olga", 999).map_err(|l| l.reason),
            Err(Refusal::Address)
        );
        assert_eq!(limiter.admit(a, "olga", 1000), Ok(()));
    }

    #[test]
    fn failures_lock_out_the_failing_address_for_that_name_only() {
        let limiter = LoginLimiter::new(limits());
        let (attacker, user) = (ip("10.0.0.66"), ip("10.0.0.7"));
        limiter.failed(attacker, "olga", 0);
        limiter.failed(attacker, "olga", 0);
        assert_eq!(
            limiter.admit(attacker, "olga", 0),
            Err(Limited {
                reason: Refusal::User,
                retry_after_s: 10
            })
        );
        assert_eq!(limiter.admit(attacker, "sam", 0), Ok(()), "another name");
        assert_eq!(limiter.admit(user, "olga", 0), Ok(()), "the real user");
        assert_eq!(
            limiter.admit(attacker, "olga", 9_999).map_err(|l| l.reason),
            Err(Refusal::User)
        );
        assert_eq!(limiter.admit(attacker, "olga", 10_000), Ok(()), "refilled");
        limiter.succeeded(attacker, "olga");
        assert_eq!(limiter.tracked().1, 0);
    }

    #[test]
    fn an_ipv6_client_is_limited_by_its_64_prefix() {
        let limiter = LoginLimiter::new(limits());
        for host in 1..=3 {
            let addr = ip(&format!("2001:db8:1:2::{host}"));
            assert_eq!(limiter.admit(addr, "x", 0), Ok(()));
        }
        assert_eq!(
            limiter
                .admit(ip("2001:db8:1:2::99"), "x", 0)
                .map_err(|l| l.reason),
            Err(Refusal::Address)
        );
        assert_eq!(limiter.admit(ip("2001:db8:1:3::1"), "x", 0), Ok(()));
    }

    #[test]
    fn the_tables_stay_bounded_and_refilled_entries_make_room() {
        let limiter = LoginLimiter::new(limits());
        for host in 1..=4 {
            let addr = ip(&format!("10.0.1.{host}"));
            assert_eq!(limiter.admit(addr, "x", 0), Ok(()));
            limiter.failed(addr, &format!("name-{host}"), 0);
        }
        assert_eq!(
            limiter.admit(ip("10.0.1.5"), "x", 0).map_err(|l| l.reason),
            Err(Refusal::TableFull)
        );
        limiter.failed(ip("10.0.1.5"), "y", 0);
        assert_eq!(limiter.tracked(), (4, 4), "the oldest failure made room");
        assert_eq!(
            limiter.admit(ip("10.0.1.5"), "x", 1000),
            Ok(()),
            "after a refill"
        );
    }
}
