//! The region's login sessions in the shared PostgreSQL: any replica honours a token another
//! one handed out, and a logout or a game's end reaches them all (see
//! [`crate::auth::SessionShare`]).

use crate::auth::{SessionShare, ShareError, ShareFuture, SharedSession, TokenHash};

use super::shared::SharedError;
use super::{LazyClient, ReplicaConfig};

/// How far back each look for ended sessions reaches before the newest end already seen: an
/// end is stamped with PostgreSQL's clock when its statement runs, and a transaction that took
/// its stamp earlier may commit after a later one was read. Ending a session twice is harmless.
const END_OVERLAP_MS: i64 = 5_000;

/// PostgreSQL's clock in ms since the epoch, one clock for every replica.
const NOW_MS: &str = "(extract(epoch from clock_timestamp()) * 1000)::int8";

/// The region's sessions, on a connection of this replica's own.
#[derive(Debug)]
pub struct SharedSessions {
    client: LazyClient,
}

impl SharedSessions {
    /// The sessions of this replica's region; it connects when first asked.
    pub fn new(config: ReplicaConfig) -> Self {
        Self {
            client: LazyClient::new(config, "demolab-sessions"),
        }
    }
}

impl SharedSessions {
    /// Stamps the live sessions whose `column` is `value` as ended now.
    async fn end_where(
        &self,
        column: &str,
        value: &(dyn tokio_postgres::types::ToSql + Sync),
    ) -> Result<(), ShareError> {
        let region = self.client.region();
        let statement = format!(
            "UPDATE demolab_sessions SET ended_ms = {NOW_MS}
             WHERE region = $1 AND {column} = $2 AND ended_ms IS NULL"
        );
        self.client
            .with(|client| async move {
                client.execute(&statement, &[&region, value]).await?;
                Ok(())
            })
            .await
            .map_err(share_error)
    }
}

fn share_error(err: SharedError) -> ShareError {
    ShareError(err.to_string())
}

impl SessionShare for SharedSessions {
    fn put(&self, hash: TokenHash, session: SharedSession) -> ShareFuture<'_, ()> {
        Box::pin(async move {
            let document = serde_json::to_vec(&session)
                .map_err(|err| ShareError(format!("session does not encode: {err}")))?;
            let game = session
                .principal
                .team
                .as_ref()
                .map(|seat| seat.game.clone());
            let expires = i64::try_from(session.expires_at).unwrap_or(i64::MAX);
            let region = self.client.region();
            self.client
                .with(|client| async move {
                    // Expired sessions go as new ones come: the table holds live ones only.
                    client
                        .execute(
                            &format!(
                                "DELETE FROM demolab_sessions WHERE region = $1 AND expires_ms < {NOW_MS}"
                            ),
                            &[&region],
                        )
                        .await?;
                    client
                        .execute(
                            "INSERT INTO demolab_sessions (region, token_sha256, session, expires_ms, game)
                             VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                            &[&region, &hash.as_slice(), &document, &expires, &game],
                        )
                        .await?;
                    Ok(())
                })
                .await
                .map_err(share_error)
        })
    }

    fn get(&self, hash: TokenHash, now_ms: u64) -> ShareFuture<'_, Option<SharedSession>> {
        Box::pin(async move {
            let now = i64::try_from(now_ms).unwrap_or(i64::MAX);
            let region = self.client.region();
            let row = self
                .client
                .with(|client| async move {
                    Ok(client
                        .query_opt(
                            "SELECT session FROM demolab_sessions WHERE region = $1
                             AND token_sha256 = $2 AND ended_ms IS NULL AND expires_ms > $3",
                            &[&region, &hash.as_slice(), &now],
                        )
                        .await?)
                })
                .await
                .map_err(share_error)?;
            row.map(|row| {
                serde_json::from_slice(row.get::<_, &[u8]>(0))
                    .map_err(|err| ShareError(format!("a stored session does not decode: {err}")))
            })
            .transpose()
        })
    }

    fn end(&self, hash: TokenHash) -> ShareFuture<'_, ()> {
        Box::pin(async move { self.end_where("token_sha256", &hash.as_slice()).await })
    }

    fn end_game(&self, game: String) -> ShareFuture<'_, ()> {
        Box::pin(async move { self.end_where("game", &game).await })
    }

    fn ended_since(&self, cursor: i64) -> ShareFuture<'_, (Vec<TokenHash>, i64)> {
        Box::pin(async move {
            let region = self.client.region();
            let rows = self
                .client
                .with(|client| async move {
                    Ok(client
                        .query(
                            "SELECT token_sha256, ended_ms FROM demolab_sessions
                             WHERE region = $1 AND ended_ms > $2",
                            &[&region, &cursor.saturating_sub(END_OVERLAP_MS)],
                        )
                        .await?)
                })
                .await
                .map_err(share_error)?;
            let mut next = cursor;
            let mut ended = Vec::with_capacity(rows.len());
            for row in rows {
                next = next.max(row.get::<_, i64>(1));
                if let Ok(hash) = TokenHash::try_from(row.get::<_, &[u8]>(0)) {
                    ended.push(hash);
                }
            }
            Ok((ended, next))
        })
    }
}
