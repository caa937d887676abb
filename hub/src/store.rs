//! Embedded persistence of twin state under the data directory (redb, one file, crash-safe).

use std::path::{Path, PathBuf};

use redb::{
    Database, Key, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition, TableHandle,
    Value, WriteTransaction,
};

use crate::alarm::MachineSnapshot;
use crate::twin::Twin;

const TWINS: TableDefinition<&str, &[u8]> = TableDefinition::new("twins");
/// The live part of twins (values, counters: see `twin::live`) stored since their whole twin
/// was, by twin id; laid over the whole twin when loading.
const TWIN_LIVE: TableDefinition<&str, &[u8]> = TableDefinition::new("twin_live");
/// Alarm state per twin (records, pending conditions, the anomaly baseline), by twin id.
const ALARMS: TableDefinition<&str, &[u8]> = TableDefinition::new("alarms");
/// Small documents that are written whole: the primary host's sessions.
const DOCUMENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("documents");
/// File name of the database inside the data directory.
pub const DB_FILE: &str = "hub.redb";
/// redb's page cache when the configuration names none. redb's own default is 1 GiB, which it
/// fills as the history grows: the hub's memory then follows its history, not its twins.
pub const DEFAULT_CACHE_BYTES: usize = 32 << 20;

/// Why storage failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The data directory could not be created.
    #[error("cannot create the data directory {path}: {source}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The database failed.
    #[error("database {path}: {source}")]
    Database {
        /// The database file.
        path: PathBuf,
        /// The cause.
        source: Box<redb::Error>,
    },
    /// The history tables failed.
    #[error("history: {0}")]
    History(String),
    /// A backup could not be taken as a whole.
    #[error("backup: {0}")]
    Backup(String),
    /// A stored live part of a twin could not be read.
    #[error("twin {id} in storage: {source}")]
    Live {
        /// The twin id.
        id: String,
        /// The cause.
        source: crate::twin::LiveError,
    },
    /// A stored twin could not be (de)serialised.

    #[error("twin {id} in storage: {source}")]
    Codec {
        /// The twin id.
        id: String,
        /// The cause.
        source: serde_json::Error,
    },
}

/// What a backup holds: rows per table, and the file's size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupStats {
    /// `(table, rows)` for every table in the database.
    pub tables: Vec<(String, u64)>,
    /// Bytes of the backup file.
    pub bytes: u64,
}

/// Twin state on disk.
#[derive(Debug)]
pub struct TwinStore {
    db: Database,
    path: PathBuf,
    /// History series ids committed to `db`, for the next commit that writes them.
    series_ids: std::sync::Mutex<crate::history::SeriesIds>,
}

impl TwinStore {
    /// Opens (or creates) the store in `data_dir` with the default page cache.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        Self::open_with_cache(data_dir, DEFAULT_CACHE_BYTES)
    }

    /// Opens (or creates) the store in `data_dir`, caching at most `cache_bytes` of its pages.
    pub fn open_with_cache(data_dir: &Path, cache_bytes: usize) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|source| StoreError::CreateDir {
            path: data_dir.to_owned(),
            source,
        })?;
        let path = data_dir.join(DB_FILE);
        let db = redb::Builder::new()
            .set_cache_size(cache_bytes)
            .create(&path)
            .map_err(|e| db_error(&path, e))?;
        let store = Self {
            db,
            path,
            series_ids: Default::default(),
        };
        // Creating the table up front lets `load` treat "no table" as a real error.
        store.write(|_| Ok(()))?;
        store.migrate_history()?;
        Ok(store)
    }

    /// Moves history written one row per sample (hubs before blocks) into blocks, once.
    fn migrate_history(&self) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(|e| db_error(&self.path, e))?;
        let moved = crate::history::migrate_rows_per_sample(&txn)
            .map_err(|e| StoreError::History(e.to_string()))?;
        txn.commit().map_err(|e| db_error(&self.path, e))?;
        if moved > 0 {
            tracing::info!(samples = moved, path = %self.path.display(), "history moved into blocks");
        }
        Ok(())
    }

    fn write(
        &self,
        f: impl FnOnce(&mut redb::Table<'_, &str, &[u8]>) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(|e| db_error(&self.path, e))?;
        {
            let mut table = txn.open_table(TWINS).map_err(|e| db_error(&self.path, e))?;
            f(&mut table)?;
        }
        txn.commit().map_err(|e| db_error(&self.path, e))
    }

    /// Writes a copy of the whole database to the new file `to`, from one read snapshot: the
    /// copy is consistent (whole commits only) while the hub goes on committing. Refuses a
    /// database that holds a table this build does not know, rather than leave it out.
    pub fn backup_to(&self, to: &Path) -> Result<BackupStats, StoreError> {
        let result = self.copy_into(to);
        if result.is_err() {
            // A partial copy must never be mistaken for a backup.
            let _ = std::fs::remove_file(to);
        }
        result
    }

    fn copy_into(&self, to: &Path) -> Result<BackupStats, StoreError> {
        let backup_error = |err: redb::Error| db_error(to, err);
        let snapshot = self.db.begin_read().map_err(|e| db_error(&self.path, e))?;
        let target = redb::Builder::new()
            .create(to)
            .map_err(|e| backup_error(e.into()))?;
        let txn = target.begin_write().map_err(|e| backup_error(e.into()))?;
        let mut tables: Vec<(String, u64)> = [
            copy_table(&snapshot, &txn, TWINS),
            copy_table(&snapshot, &txn, TWIN_LIVE),
            copy_table(&snapshot, &txn, ALARMS),
            copy_table(&snapshot, &txn, DOCUMENTS),
        ]
        .into_iter()
        .filter_map(Result::transpose)
        .collect::<Result<_, _>>()
        .map_err(backup_error)?;
        tables.extend(crate::history::copy_tables(&snapshot, &txn).map_err(backup_error)?);
        for table in snapshot
            .list_tables()
            .map_err(|e| db_error(&self.path, e))?
        {
            if !tables.iter().any(|(name, _)| name == table.name()) {
                return Err(StoreError::Backup(format!(
                    "table `{}` is not covered by the backup; nothing was written",
                    table.name()
                )));
            }
        }
        txn.commit().map_err(|e| backup_error(e.into()))?;
        drop(target);
        let bytes = std::fs::metadata(to).map(|m| m.len()).unwrap_or(0);
        Ok(BackupStats { tables, bytes })
    }

    /// The database, for other tables written in the same transactions (history, alarms).
    pub fn database(&self) -> &Database {
        &self.db
    }

    /// The history series ids this store's commits learnt (one commit at a time takes them).
    pub fn series_ids(&self) -> &std::sync::Mutex<crate::history::SeriesIds> {
        &self.series_ids
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Wraps a database error with the file name.
    pub fn error(&self, err: impl Into<redb::Error>) -> StoreError {
        db_error(&self.path, err)
    }

    /// Writes twins inside a caller's transaction.
    pub fn save_in<'a>(
        &self,
        txn: &redb::WriteTransaction,
        twins: impl IntoIterator<Item = &'a Twin>,
    ) -> Result<(), StoreError> {
        let mut table = txn.open_table(TWINS).map_err(|e| db_error(&self.path, e))?;
        let mut live = txn
            .open_table(TWIN_LIVE)
            .map_err(|e| db_error(&self.path, e))?;
        // One buffer for the whole batch instead of one allocation per twin.
        let mut bytes = Vec::new();
        for twin in twins {
            bytes.clear();
            serde_json::to_writer(&mut bytes, twin).map_err(|source| StoreError::Codec {
                id: twin.id.clone(),
                source,
            })?;
            table
                .insert(twin.id.as_str(), bytes.as_slice())
                .map_err(|e| db_error(&self.path, e))?;
            // The whole twin is newer than any live part stored before it.
            live.remove(twin.id.as_str())
                .map_err(|e| db_error(&self.path, e))?;
        }
        Ok(())
    }

    /// Writes the live parts of twins (`twin::live`) inside a caller's transaction.
    pub fn save_live_in<'a>(
        &self,
        txn: &redb::WriteTransaction,
        parts: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    ) -> Result<(), StoreError> {
        let mut table = txn
            .open_table(TWIN_LIVE)
            .map_err(|e| db_error(&self.path, e))?;
        for (id, bytes) in parts {
            table
                .insert(id, bytes)
                .map_err(|e| db_error(&self.path, e))?;
        }
        Ok(())
    }

    /// Deletes twins and their alarm state inside a caller's transaction (retired twins; their
    /// history stays until retention ages it out).
    pub fn remove_in(
        &self,
        txn: &redb::WriteTransaction,
        ids: &[String],
    ) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        for definition in [TWINS, TWIN_LIVE, ALARMS] {
            let mut table = txn
                .open_table(definition)
                .map_err(|e| db_error(&self.path, e))?;
            for id in ids {
                table
                    .remove(id.as_str())
                    .map_err(|e| db_error(&self.path, e))?;
            }
        }
        Ok(())
    }

    /// Writes the alarm state of twins inside a caller's transaction.
    pub fn save_alarms_in<'a>(
        &self,
        txn: &redb::WriteTransaction,
        alarms: impl IntoIterator<Item = (&'a str, &'a MachineSnapshot)>,
    ) -> Result<(), StoreError> {
        let mut table = txn
            .open_table(ALARMS)
            .map_err(|e| db_error(&self.path, e))?;
        let mut bytes = Vec::new();
        for (id, snapshot) in alarms {
            bytes.clear();
            serde_json::to_writer(&mut bytes, snapshot).map_err(|source| StoreError::Codec {
                id: id.to_owned(),
                source,
            })?;
            table
                .insert(id, bytes.as_slice())
                .map_err(|e| db_error(&self.path, e))?;
        }
        Ok(())
    }

    /// The stored alarm state of every twin that has one.
    pub fn load_alarms(
        &self,
    ) -> Result<std::collections::HashMap<String, MachineSnapshot>, StoreError> {
        Ok(self.load_table(ALARMS)?.into_iter().collect())
    }

    /// Every (key, JSON value) of a table; an absent table is empty.
    fn load_table<T: serde::de::DeserializeOwned>(
        &self,
        definition: TableDefinition<&str, &[u8]>,
    ) -> Result<Vec<(String, T)>, StoreError> {
        let txn = self.db.begin_read().map_err(|e| db_error(&self.path, e))?;
        let table = match txn.open_table(definition) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(err) => return Err(db_error(&self.path, err)),
        };
        let mut rows = Vec::new();
        for entry in table.iter().map_err(|e| db_error(&self.path, e))? {
            let (key, value) = entry.map_err(|e| db_error(&self.path, e))?;
            let row =
                serde_json::from_slice(value.value()).map_err(|source| StoreError::Codec {
                    id: key.value().to_owned(),
                    source,
                })?;
            rows.push((key.value().to_owned(), row));
        }
        Ok(rows)
    }

    /// Writes a document (JSON) inside a caller's transaction.
    pub fn put_document<T: serde::Serialize>(
        &self,
        txn: &redb::WriteTransaction,
        name: &str,
        value: &T,
    ) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(value).map_err(|source| StoreError::Codec {
            id: name.to_owned(),
            source,
        })?;
        let mut table = txn
            .open_table(DOCUMENTS)
            .map_err(|e| db_error(&self.path, e))?;
        table
            .insert(name, bytes.as_slice())
            .map_err(|e| db_error(&self.path, e))?;
        Ok(())
    }

    /// Reads a document written by [`TwinStore::put_document`].
    pub fn document<T: serde::de::DeserializeOwned>(
        &self,
        name: &str,
    ) -> Result<Option<T>, StoreError> {
        let txn = self.db.begin_read().map_err(|e| db_error(&self.path, e))?;
        let table = match txn.open_table(DOCUMENTS) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(err) => return Err(db_error(&self.path, err)),
        };
        let Some(bytes) = table.get(name).map_err(|e| db_error(&self.path, e))? else {
            return Ok(None);
        };
        serde_json::from_slice(bytes.value())
            .map(Some)
            .map_err(|source| StoreError::Codec {
                id: name.to_owned(),
                source,
            })
    }

    /// Every stored twin, its live part laid over it.
    pub fn load(&self) -> Result<Vec<Twin>, StoreError> {
        let mut twins: Vec<Twin> = self
            .load_table(TWINS)?
            .into_iter()
            .map(|(_, twin)| twin)
            .collect();
        let txn = self.db.begin_read().map_err(|e| db_error(&self.path, e))?;
        let live = match txn.open_table(TWIN_LIVE) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(twins),
            Err(err) => return Err(db_error(&self.path, err)),
        };
        for twin in &mut twins {
            if let Some(bytes) = live
                .get(twin.id.as_str())
                .map_err(|e| db_error(&self.path, e))?
            {
                crate::twin::live_over(twin, bytes.value()).map_err(|source| StoreError::Live {
                    id: twin.id.clone(),
                    source,
                })?;
            }
        }
        Ok(twins)
    }

    /// Writes twins in one transaction.
    pub fn save(&self, twins: &[Twin]) -> Result<(), StoreError> {
        if twins.is_empty() {
            return Ok(());
        }
        let txn = self.db.begin_write().map_err(|e| db_error(&self.path, e))?;
        self.save_in(&txn, twins)?;
        txn.commit().map_err(|e| db_error(&self.path, e))
    }
}

/// Copies table `def` from a read snapshot into `to`: `(name, rows)`, or `None` when the
/// snapshot has no such table yet.
pub(crate) fn copy_table<K: Key + 'static, V: Value + 'static>(
    from: &ReadTransaction,
    to: &WriteTransaction,
    def: TableDefinition<K, V>,
) -> Result<Option<(String, u64)>, redb::Error> {
    let source = match from.open_table(def) {
        Ok(table) => table,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(err) => return Err(err.into()),
    };
    let mut target = to.open_table(def)?;
    let mut rows = 0;
    for entry in source.iter()? {
        let (key, value) = entry?;
        target.insert(key.value(), value.value())?;
        rows += 1;
    }
    Ok(Some((def.name().to_owned(), rows)))
}

fn db_error(path: &Path, err: impl Into<redb::Error>) -> StoreError {
    StoreError::Database {
        path: path.to_owned(),
        source: Box::new(err.into()),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::stats::HubStats;
    use crate::twin::{TwinKey, TwinRegistry, TwinUpdate};

    #[test]
    fn twins_survive_reopening_the_store() {
        let dir = tempfile::tempdir().expect("temp dir");
        let registry = TwinRegistry::new(Arc::new(HubStats::default()), Arc::default());
        let key = TwinKey {
            lab: "lab-a".parse().expect("valid"),
            machine: "m-1".parse().expect("valid"),
        };
        registry.apply(TwinUpdate::Birth {
            key: key.clone(),
            boot: Some(1),
            node_seq: None,
            gateway: "gw".parse().expect("valid"),
            metrics: vec![("a.b".parse().expect("valid"), protocol::Unit::Watt)],
            timestamp: 1,
        });
        registry.apply(TwinUpdate::Sample {
            historical: false,
            key: key.clone(),
            seq: 3,
            timestamp: 2,
            values: vec![("a.b".parse().expect("valid"), 42.0)],
        });
        let saved = registry.get(&key).expect("exists");
        TwinStore::open(dir.path())
            .expect("open")
            .save(std::slice::from_ref(&saved))
            .expect("save");
        let loaded = TwinStore::open(dir.path())
            .expect("reopen")
            .load()
            .expect("load");
        assert_eq!(loaded, vec![saved]);
    }

    #[test]
    fn a_backup_copies_every_table_and_refuses_one_it_does_not_know() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = TwinStore::open(dir.path()).expect("store");
        let key = crate::twin::TwinKey {
            lab: "lab-a".parse().expect("id"),
            machine: "mill-1".parse().expect("id"),
        };
        let txn = store.database().begin_write().expect("txn");
        crate::history::append(
            &txn,
            &[crate::history::HistoryRow {
                key,
                metric: "spindle.power_w".parse().expect("metric"),
                timestamp_ms: 1_000,
                seq: 1,
                value: 2.5,
            }],
        )
        .expect("append");
        store
            .put_document(&txn, "host", &"sessions")
            .expect("document");
        txn.commit().expect("commit");

        let copy = dir.path().join("copy.redb");
        let stats = store.backup_to(&copy).expect("backup");
        let rows = |name: &str| stats.tables.iter().find(|(t, _)| t == name).map(|t| t.1);
        assert_eq!(rows("twins"), Some(0));
        assert_eq!(rows("documents"), Some(1));
        assert_eq!(rows("history_series"), Some(1));
        assert_eq!(stats.bytes, std::fs::metadata(&copy).expect("file").len());

        const MYSTERY: TableDefinition<&str, u64> = TableDefinition::new("mystery");
        let txn = store.database().begin_write().expect("txn");
        txn.open_table(MYSTERY)
            .expect("table")
            .insert("x", 1)
            .expect("insert");
        txn.commit().expect("commit");
        let refused = dir.path().join("refused.redb");
        let err = store.backup_to(&refused).expect_err("an unknown table");
        assert!(err.to_string().contains("`mystery`"), "{err}");
        assert!(!refused.exists(), "no partial backup is left");
    }

    #[test]
    fn a_corrupt_database_file_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join(DB_FILE), b"not a database").expect("write");
        let err = TwinStore::open(dir.path()).expect_err("corrupt");
        assert!(err.to_string().contains(DB_FILE), "{err}");
    }
}
