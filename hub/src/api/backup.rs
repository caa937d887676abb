//! An online backup for operators: a consistent copy of the hub's database, taken from one read
//! snapshot while ingest keeps committing, downloaded over the API.

use std::io::Read;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use tokio::sync::mpsc;

use super::{ApiError, AppState, Caller, ErrorBody};
use crate::auth::Role;
use crate::ingest::now_ms;

/// How much of the file one body chunk carries.
const CHUNK: usize = 256 * 1024;

/// Download a backup of the hub's database (`hub.redb`): twins, alarms, the Sparkplug host's
/// sessions, games and the embedded history, as of one instant. Restore by stopping the hub and
/// putting the file in place of `{data_dir}/hub.redb`. Needs the admin role.
#[utoipa::path(get, path = "/api/v1/admin/backup", tag = "operations",
    responses(
        (status = 200, description = "The database file; `X-Demolab-Backup-Rows` lists rows per table", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 401, description = "`unauthenticated`, `invalid_token`", body = ErrorBody),
        (status = 403, description = "`forbidden` (needs admin)", body = ErrorBody),
        (status = 500, description = "`storage`", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn backup(State(state): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    caller.require(Role::Admin)?;
    let store = state.store.clone();
    let taken_ms = now_ms();
    let (file, stats) = tokio::task::spawn_blocking(move || {
        let dir = store.path().parent().map(std::path::Path::to_owned);
        let path = dir
            .unwrap_or_default()
            .join(format!("backup-{taken_ms}.redb.partial"));
        let result = store
            .backup_to(&path)
            .map_err(|err| ApiError::Storage(err.to_string()))
            .and_then(|stats| {
                let file = std::fs::File::open(&path)
                    .map_err(|err| ApiError::Storage(format!("{}: {err}", path.display())))?;
                Ok((file, stats))
            });
        // Unlinked at once: the open file streams on, and no copy is left behind on the hub's
        // disk, whether the download finishes or not.
        let _ = std::fs::remove_file(&path);
        result
    })
    .await
    .map_err(|err| ApiError::Storage(err.to_string()))??;

    let (tx, rx) = mpsc::channel::<std::io::Result<Bytes>>(4);
    tokio::task::spawn_blocking(move || stream_file(file, &tx));
    let body = Body::from_stream(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    }));
    let rows = stats
        .tables
        .iter()
        .map(|(table, rows)| format!("{table}={rows}"))
        .collect::<Vec<_>>()
        .join(",");
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"demolab-hub-{taken_ms}.redb\""),
            ),
            (header::CONTENT_LENGTH, stats.bytes.to_string()),
            (
                header::HeaderName::from_static("x-demolab-backup-rows"),
                rows,
            ),
        ],
        body,
    )
        .into_response())
}

/// Sends `file` in chunks until its end, a read error (which ends the body with it) or the
/// client going away.
fn stream_file(mut file: std::fs::File, tx: &mpsc::Sender<std::io::Result<Bytes>>) {
    loop {
        let mut chunk = vec![0; CHUNK];
        match file.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => {
                chunk.truncate(n);
                if tx.blocking_send(Ok(Bytes::from(chunk))).is_err() {
                    return;
                }
            }
            Err(err) => {
                let _ = tx.blocking_send(Err(err));
                return;
            }
        }
    }
}
