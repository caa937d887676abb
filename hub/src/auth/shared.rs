//! Sessions shared by the hub replicas of a region, so a plain load balancer may send any
//! request to any replica.
//!
//! A login is written to the shared store before its token is handed out; a replica that does
//! not know a token looks it up there once and keeps it. Ends (logout, a game's end) are written
//! there too, and every replica follows them and ends its copies. The store keeps a token's
//! SHA-256, never the token: whoever reads the database cannot log in with what it holds.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::{Auth, Principal};

/// The SHA-256 of a token, as the shared store keys it.
pub type TokenHash = [u8; 32];

/// The hash under which `token` is shared.
pub fn token_hash(token: &str) -> TokenHash {
    Sha256::digest(token.as_bytes()).into()
}

/// The shared store failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("shared session store: {0}")]
pub struct ShareError(pub String);

/// What a [`SessionShare`] call returns.
pub type ShareFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, ShareError>> + Send + 'a>>;

/// A session as the replicas share it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SharedSession {
    /// Who it is.
    pub principal: Principal,
    /// When it expires, ms since the epoch.
    pub expires_at: u64,
}

/// Where a region's sessions are kept (PostgreSQL, for hub replicas).
pub trait SessionShare: Send + Sync + std::fmt::Debug {
    /// Stores a new session.
    fn put(&self, hash: TokenHash, session: SharedSession) -> ShareFuture<'_, ()>;
    /// A live, not ended session.
    fn get(&self, hash: TokenHash, now_ms: u64) -> ShareFuture<'_, Option<SharedSession>>;
    /// Ends a session.
    fn end(&self, hash: TokenHash) -> ShareFuture<'_, ()>;
    /// Ends every team session of a game.
    fn end_game(&self, game: String) -> ShareFuture<'_, ()>;
    /// Sessions ended after `cursor` (0: any), and the cursor to ask with next.
    fn ended_since(&self, cursor: i64) -> ShareFuture<'_, (Vec<TokenHash>, i64)>;
}

/// A change made locally that other replicas learn from the store, written after the fact.
#[derive(Debug, Clone)]
pub(super) enum Outgoing {
    Put(TokenHash, SharedSession),
    End(TokenHash),
    EndGame(String),
}

/// How often a replica looks for sessions ended elsewhere (and retries what it could not write).
pub const FOLLOW_EVERY: Duration = Duration::from_millis(500);

/// At most this many writes wait for a store that is down; older ones are dropped (and logged).
const OUTBOX_CAP: usize = 10_000;

impl Auth {
    /// Shares this hub's sessions through `share` from now on; [`Auth::follow_shared`] must
    /// run beside it.
    pub fn share_sessions(&self, share: Arc<dyn SessionShare>) {
        let _ = self.share.set(share);
    }

    pub(super) fn send_later(&self, change: Outgoing) {
        if self.share.get().is_none() {
            return;
        }
        let mut outbox = self.outbox.lock().unwrap_or_else(|e| e.into_inner());
        if outbox.len() >= OUTBOX_CAP {
            warn!(
                waiting = outbox.len(),
                "the shared session store is unreachable: dropping the oldest session change"
            );
            outbox.remove(0);
        }
        outbox.push(change);
        drop(outbox);
        self.outbox_ready.notify_one();
    }

    /// A session another replica handed out, looked up in the shared store and kept here.
    pub(super) async fn adopt(
        &self,
        token: &str,
        now_ms: u64,
    ) -> Result<Option<super::Session>, ShareError> {
        let Some(share) = self.share.get() else {
            return Ok(None);
        };
        let Some(shared) = share.get(token_hash(token), now_ms).await? else {
            return Ok(None);
        };
        let session = super::Session {
            principal: shared.principal,
            lifetime: super::Lifetime {
                expires_at: shared.expires_at,
                revoked: CancellationToken::new(),
            },
        };
        self.sessions.insert(token.to_owned(), session.clone());
        Ok(Some(session))
    }

    /// Writes what changed here and ends the sessions other replicas ended, until `cancel`.
    pub async fn follow_shared(self: Arc<Self>, cancel: CancellationToken) {
        let Some(share) = self.share.get().cloned() else {
            return;
        };
        let mut cursor = 0;
        let mut failing = false;
        loop {
            tokio::select! {
                () = self.outbox_ready.notified() => {}
                () = tokio::time::sleep(FOLLOW_EVERY) => {}
                () = cancel.cancelled() => return,
            }
            let result = async {
                self.write_outbox(share.as_ref()).await?;
                let (ended, next) = share.ended_since(cursor).await?;
                cursor = next;
                self.end_local(&ended);
                Ok::<_, ShareError>(())
            }
            .await;
            match result {
                Ok(()) => failing = false,
                Err(err) if !failing => {
                    failing = true;
                    warn!(%err, "cannot follow the region's sessions; retrying");
                }
                Err(_) => {}
            }
        }
    }

    async fn write_outbox(&self, share: &dyn SessionShare) -> Result<(), ShareError> {
        let waiting: Vec<Outgoing> =
            std::mem::take(&mut *self.outbox.lock().unwrap_or_else(|e| e.into_inner()));
        for (done, change) in waiting.iter().enumerate() {
            let result = match change.clone() {
                Outgoing::Put(hash, session) => share.put(hash, session).await,
                Outgoing::End(hash) => share.end(hash).await,
                Outgoing::EndGame(game) => share.end_game(game).await,
            };
            if let Err(err) = result {
                // Put back, in front of what came meanwhile, for the next round.
                let mut outbox = self.outbox.lock().unwrap_or_else(|e| e.into_inner());
                let newer = std::mem::take(&mut *outbox);
                outbox.extend(waiting.into_iter().skip(done));
                outbox.extend(newer);
                return Err(err);
            }
        }
        Ok(())
    }

    /// Ends the local copies of sessions ended elsewhere; their streams end at once.
    fn end_local(&self, ended: &[TokenHash]) {
        if ended.is_empty() {
            return;
        }
        self.sessions.retain(|token, session| {
            let gone = ended.contains(&token_hash(token));
            if gone {
                session.lifetime.revoked.cancel();
            }
            !gone
        });
    }
}
