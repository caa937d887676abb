//! The access configuration enforced inside mqtt5, and the count of what it refused.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use mqtt5::broker::auth::{AuthProvider, AuthResult};
use mqtt5::packet::connect::ConnectPacket;
use mqtt5::protocol::v5::reason_codes::ReasonCode;

use tokio::sync::Semaphore;

use crate::access::{AccessConfig, TokenLogins, User};
use crate::throttle::{LogThrottle, echo};

/// How many requests the broker refused, by kind. Always zero on an open broker.
#[derive(Debug, Default)]
pub struct DenialCounters {
    connect: AtomicU64,
    publish: AtomicU64,
    subscribe: AtomicU64,
}

/// One reading of [`DenialCounters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Denials {
    /// CONNECTs refused: anonymous, unknown user or wrong password.
    pub connect: u64,
    /// PUBLISHes (and Wills) to a topic the client may not publish to.
    pub publish: u64,
    /// Subscriptions to a filter the client may not read (also counted when a restored
    /// persistent session loses one).
    pub subscribe: u64,
}

impl DenialCounters {
    /// The current counts.
    pub fn snapshot(&self) -> Denials {
        Denials {
            connect: self.connect.load(Ordering::Relaxed),
            publish: self.publish.load(Ordering::Relaxed),
            subscribe: self.subscribe.load(Ordering::Relaxed),
        }
    }

    /// The counts in Prometheus' text format, as
    /// `demolab_broker_denied_total{reason="connect|publish|subscribe"}`.
    pub fn render_prometheus(&self) -> String {
        let d = self.snapshot();
        format!(
            "# HELP demolab_broker_denied_total Requests the embedded MQTT broker refused.\n\
             # TYPE demolab_broker_denied_total counter\n\
             demolab_broker_denied_total{{reason=\"connect\"}} {}\n\
             demolab_broker_denied_total{{reason=\"publish\"}} {}\n\
             demolab_broker_denied_total{{reason=\"subscribe\"}} {}\n",
            d.connect, d.publish, d.subscribe
        )
    }
}

/// Password checks running at once. Each holds an argon2 buffer (19 MiB for the default cost),
/// so a flood of CONNECTs with a known name must queue here instead of growing memory.
const CONCURRENT_VERIFICATIONS: usize = 4;
/// How long a CONNECT may wait for a free check before it is refused as "server busy".
const VERIFICATION_WAIT: Duration = Duration::from_secs(5);

/// mqtt5's hook, answering from an [`AccessConfig`].
pub(crate) struct AccessProvider {
    access: Arc<AccessConfig>,
    tokens: Option<Arc<dyn TokenLogins>>,
    /// `(user, client id)` of the connections logged in with a token, so they can be closed
    /// when the token ends ([`AccessProvider::ended_token_clients`]).
    token_clients: std::sync::Mutex<Vec<(String, String)>>,
    denials: Arc<DenialCounters>,
    verifications: Semaphore,
    login_log: LogThrottle,
    topic_log: LogThrottle,
}

impl AccessProvider {
    pub(crate) fn new(
        access: AccessConfig,
        tokens: Option<Arc<dyn TokenLogins>>,
        denials: Arc<DenialCounters>,
    ) -> Self {
        Self {
            access: Arc::new(access),
            tokens,
            token_clients: std::sync::Mutex::default(),
            denials,
            verifications: Semaphore::new(CONCURRENT_VERIFICATIONS),
            login_log: LogThrottle::default(),
            topic_log: LogThrottle::default(),
        }
    }

    async fn check_connect(&self, connect: &ConnectPacket) -> AuthResult {
        let refuse = |code: ReasonCode, why: &str| {
            self.denials.connect.fetch_add(1, Ordering::Relaxed);
            if let Some(held_back) = self.login_log.allow() {
                tracing::warn!(
                    client_id = %echo(&connect.client_id),
                    username = %echo(connect.username.as_deref().unwrap_or("")),
                    held_back,
                    "MQTT login refused: {why}"
                );
            }
            AuthResult::fail(code)
        };
        let Some(name) = connect.username.as_deref() else {
            return refuse(ReasonCode::NotAuthorized, "anonymous");
        };
        let Some(password) = connect.password.clone() else {
            return refuse(ReasonCode::BadUsernameOrPassword, "no password");
        };
        let Some(user) = self.access.user(name) else {
            // A token is checked by lookup, not by argon2: no verification slot needed.
            return match self.tokens.as_ref().and_then(|t| t.login(name, &password)) {
                Some(_) => {
                    self.token_clients
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push((name.to_owned(), connect.client_id.clone()));
                    AuthResult::success_with_user(name)
                }
                None => refuse(ReasonCode::BadUsernameOrPassword, "unknown user"),
            };
        };
        let user = user.clone();
        let Ok(Ok(_permit)) =
            tokio::time::timeout(VERIFICATION_WAIT, self.verifications.acquire()).await
        else {
            return refuse(ReasonCode::ServerBusy, "too many logins at once");
        };
        // argon2 is tens of milliseconds of CPU by design: keep it off the executor threads
        // that carry everyone else's traffic.
        let verified = tokio::task::spawn_blocking(move || user.verify_password(&password))
            .await
            .unwrap_or(false);
        if verified {
            AuthResult::success_with_user(name)
        } else {
            refuse(ReasonCode::BadUsernameOrPassword, "wrong password")
        }
    }

    /// Client ids of token logins whose tokens have all ended; forgets them. (A client id
    /// reconnecting under a live token is recorded again at its login.)
    pub(crate) fn ended_token_clients(&self) -> Vec<String> {
        let Some(tokens) = &self.tokens else {
            return Vec::new();
        };
        let mut clients = self.token_clients.lock().unwrap_or_else(|e| e.into_inner());
        let mut ended = Vec::new();
        clients.retain(|(user, client)| {
            let live = tokens.labs(user).is_some();
            if !live {
                ended.push(client.clone());
            }
            live
        });
        ended
    }

    /// A token user while one of its tokens lives (token users publish nothing, so only
    /// subscriptions ask).
    fn token_reader(&self, name: &str) -> Option<User> {
        let labs = self.tokens.as_ref()?.labs(name)?;
        Some(User::token_reader(name, labs))
    }

    fn judge(
        &self,
        allowed: bool,
        counter: &AtomicU64,
        what: &str,
        user: Option<&str>,
        topic: &str,
    ) -> bool {
        if !allowed {
            counter.fetch_add(1, Ordering::Relaxed);
            if let Some(held_back) = self.topic_log.allow() {
                tracing::warn!(
                    username = %echo(user.unwrap_or("")),
                    topic = %echo(topic),
                    held_back,
                    "MQTT {what} denied"
                );
            }
        }
        allowed
    }
}

impl AuthProvider for AccessProvider {
    fn authenticate<'a>(
        &'a self,
        connect: &'a ConnectPacket,
        _client_addr: SocketAddr,
    ) -> Pin<Box<dyn Future<Output = mqtt5::Result<AuthResult>> + Send + 'a>> {
        Box::pin(async move { Ok(self.check_connect(connect).await) })
    }

    fn authorize_publish<'a>(
        &'a self,
        _client_id: &str,
        user_id: Option<&'a str>,
        topic: &'a str,
    ) -> Pin<Box<dyn Future<Output = bool> + Send + 'a>> {
        // `user_id` is the username `authenticate` accepted; None cannot get this far.
        let allowed = user_id
            .and_then(|name| self.access.user(name))
            .is_some_and(|user| user.may_publish(topic));
        let allowed = self.judge(allowed, &self.denials.publish, "publish", user_id, topic);
        Box::pin(std::future::ready(allowed))
    }

    fn authorize_subscribe<'a>(
        &'a self,
        _client_id: &str,
        user_id: Option<&'a str>,
        topic_filter: &'a str,
    ) -> Pin<Box<dyn Future<Output = bool> + Send + 'a>> {
        let allowed = user_id.is_some_and(|name| match self.access.user(name) {
            Some(user) => user.may_subscribe(topic_filter),
            None => self
                .token_reader(name)
                .is_some_and(|user| user.may_subscribe(topic_filter)),
        });
        let allowed = self.judge(
            allowed,
            &self.denials.subscribe,
            "subscribe",
            user_id,
            topic_filter,
        );
        Box::pin(std::future::ready(allowed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_render_as_prometheus_text() {
        let counters = DenialCounters::default();
        counters.publish.fetch_add(3, Ordering::Relaxed);
        let text = counters.render_prometheus();
        assert!(text.contains("# TYPE demolab_broker_denied_total counter\n"));
        assert!(text.contains("demolab_broker_denied_total{reason=\"connect\"} 0\n"));
        assert!(text.contains("demolab_broker_denied_total{reason=\"publish\"} 3\n"));
        assert!(text.contains("demolab_broker_denied_total{reason=\"subscribe\"} 0\n"));
    }
}
