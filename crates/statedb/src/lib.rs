//! The state database (SQLite): what the file system cannot say well.
//!
//! Not the source of truth for objects or deployments. It holds the transaction
//! history and the (device, inode, mtime, size) → content-digest cache that lets a
//! re-commit skip rehashing unchanged files. WAL mode; the schema version is SQLite's
//! `user_version`, and each migration moves it up by one.

use std::path::Path;

use anyhow::{Context, Result};
use rusqlite::{Connection, params};
use rusqlite_migration::M;
use serde::Serialize;

mod history;
mod inode_cache;
pub use history::HistoryKind;
pub use inode_cache::{Cached, InodeCache, InodeEntry, InodeRows};

/// A download cut short, kept so the next run resumes it (`update-status` lists them).
#[derive(
    Clone,
    Debug,
    PartialEq,
    Eq,
    Serialize,
    serde::Deserialize,
    zvariant::Type,
    zvariant::Value,
    zvariant::OwnedValue,
)]
#[zvariant(signature = "dict")]
pub struct PartialDownload {
    /// What was being fetched.
    pub url: String,
    /// Where its bytes so far are.
    pub path: String,
    /// How many bytes are there.
    pub size: u64,
}

/// One installed package, as the state database keeps package lists (defined here,
/// below the package code, so the store layer imports nothing above it).
#[derive(
    Clone,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Serialize,
    serde::Deserialize,
    zvariant::Type,
    zvariant::Value,
    zvariant::OwnedValue,
)]
#[zvariant(signature = "dict")]
pub struct Package {
    /// Its name.
    pub name: String,
    /// Its architecture (`amd64`, `all`, …).
    pub arch: String,
    /// Its version, as dpkg writes it.
    pub version: String,
}

impl Package {
    /// `name:arch`, how dpkg names a package across architectures.
    pub fn key(&self) -> String {
        format!("{}:{}", self.name, self.arch)
    }
}

/// Migrations in order; entry `i` takes the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: inode cache and transaction history.
    "CREATE TABLE inode_cache (
        dev INTEGER NOT NULL, ino INTEGER NOT NULL,
        mtime_ns INTEGER NOT NULL, size INTEGER NOT NULL,
        content BLOB NOT NULL,
        PRIMARY KEY (dev, ino)) WITHOUT ROWID;
     CREATE TABLE transactions (
        id INTEGER PRIMARY KEY,
        kind TEXT NOT NULL,
        command TEXT NOT NULL,
        uid INTEGER NOT NULL,
        started INTEGER NOT NULL,
        finished INTEGER,
        result TEXT);",
    // 2: the package list of each commit, for `db list` and `db diff`.
    "CREATE TABLE packages (
        commit_id TEXT NOT NULL, name TEXT NOT NULL, arch TEXT NOT NULL,
        version TEXT NOT NULL,
        PRIMARY KEY (commit_id, name, arch)) WITHOUT ROWID;",
    // 3: remote updates: the persisted update state and resumable downloads.
    "CREATE TABLE update_state (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        record TEXT NOT NULL);
     CREATE TABLE downloads (
        blake3 TEXT PRIMARY KEY, url TEXT NOT NULL, path TEXT NOT NULL,
        size INTEGER NOT NULL, started INTEGER NOT NULL);",
    // 4: what an operation touched (the paths `usroverlay --add` wrote, ...).
    "ALTER TABLE transactions ADD COLUMN detail TEXT;",
    // 5: the inode cache as one blob of sorted records per device, with the whole
    // file object of an inode (inode_cache.rs). The old rows are only a cache: dropped.
    "DROP TABLE IF EXISTS inode_cache;
     CREATE TABLE inode_records (dev INTEGER PRIMARY KEY, records BLOB NOT NULL);",
    // 6: one history vocabulary (HistoryKind): the free words older versions wrote
    // for an automatic rollback and for install to-disk take their kinds' words.
    "UPDATE transactions SET kind = 'automatic-rollback' WHERE kind = 'rollback (automatic)';
     UPDATE transactions SET kind = 'install-to-disk'
        WHERE kind = 'install' AND command LIKE '%install to-disk%';",
];

/// An open state database.
pub struct StateDb {
    conn: Connection,
}

/// One row of the transaction history.
#[derive(Clone, Debug, Serialize, zvariant::Type, zvariant::Value, zvariant::OwnedValue)]
#[zvariant(signature = "dict")]
pub struct HistoryEntry {
    /// Sequence number.
    pub id: i64,
    /// What it records: a [`HistoryKind`]'s word (kept as a word, so a row written
    /// by a newer arbor still reads).
    pub kind: String,
    /// The command line or D-Bus call that started it.
    pub command: String,
    /// Who started it.
    pub uid: u32,
    /// Unix time it started.
    pub started: i64,
    /// Unix time it ended, if it did.
    pub finished: Option<i64>,
    /// "ok", or the error.
    pub result: Option<String>,
    /// What it touched, when the operation says (`usroverlay --add` lists its paths).
    pub detail: Option<String>,
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl StateDb {
    /// Opens (creating if needed) and migrates the database at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let mut conn = Connection::open(path)
            .with_context(|| format!("opening state database {}", path.display()))?;
        conn.busy_timeout(std::time::Duration::from_secs(30))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        let version: usize = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version > MIGRATIONS.len() {
            anyhow::bail!(
                "state database {} has schema version {version}, newer than this arbor knows ({})",
                path.display(),
                MIGRATIONS.len()
            );
        }
        // rusqlite_migration keeps the schema version in `user_version`, as arbor did
        // before it, so existing databases carry on from where they are.
        rusqlite_migration::Migrations::new(MIGRATIONS.iter().map(|s| M::up(s)).collect())
            .to_latest(&mut conn)
            .with_context(|| format!("migrating state database {}", path.display()))?;
        Ok(StateDb { conn })
    }

    /// Starts a history row; returns its id for [`StateDb::end_history_row`].
    pub fn begin_history_row(&self, kind: HistoryKind, command: &str, uid: u32) -> Result<i64> {
        self.conn.execute(
            "INSERT INTO transactions (kind, command, uid, started) VALUES (?1, ?2, ?3, ?4)",
            params![kind.as_str(), command, uid, now()],
        )?;
        Ok(self.conn.last_insert_rowid())
    }

    /// Records what the operation of a history row touched, beside its command line.
    pub fn set_history_detail(&self, id: i64, detail: &str) -> Result<()> {
        self.conn.execute(
            "UPDATE transactions SET detail = ?1 WHERE id = ?2",
            params![detail, id],
        )?;
        Ok(())
    }

    /// Ends a history row: "ok" (once the work is durable) or the error.
    pub fn end_history_row(&self, id: i64, result: &Result<(), String>) -> Result<()> {
        let text = match result {
            Ok(()) => "ok".to_string(),
            Err(e) => e.clone(),
        };
        self.conn.execute(
            "UPDATE transactions SET finished = ?1, result = ?2 WHERE id = ?3",
            params![now(), text, id],
        )?;
        Ok(())
    }

    /// Records the installed packages of a commit (replacing what was recorded).
    pub fn store_packages(&mut self, commit: &str, pkgs: &[Package]) -> Result<()> {
        let tx = self.conn.transaction()?;
        tx.execute("DELETE FROM packages WHERE commit_id = ?1", params![commit])?;
        {
            let mut stmt = tx.prepare(
                "INSERT INTO packages (commit_id, name, arch, version) VALUES (?1, ?2, ?3, ?4)",
            )?;
            for p in pkgs {
                stmt.execute(params![commit, p.name, p.arch, p.version])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// The packages recorded for a commit; `None` when nothing was recorded.
    pub fn packages(&self, commit: &str) -> Result<Option<Vec<Package>>> {
        let mut stmt = self.conn.prepare(
            "SELECT name, arch, version FROM packages WHERE commit_id = ?1 ORDER BY name, arch",
        )?;
        let rows = stmt.query_map(params![commit], |r| {
            Ok(Package {
                name: r.get(0)?,
                arch: r.get(1)?,
                version: r.get(2)?,
            })
        })?;
        let list: Vec<Package> = rows.collect::<Result<_, _>>()?;
        Ok((!list.is_empty()).then_some(list))
    }

    /// The persisted update state (JSON of `update::UpdateRecord`), if any.
    pub fn update_record(&self) -> Result<Option<String>> {
        use rusqlite::OptionalExtension;
        Ok(self
            .conn
            .query_row("SELECT record FROM update_state WHERE id = 1", [], |r| {
                r.get(0)
            })
            .optional()?)
    }

    /// Replaces the persisted update state.
    pub fn set_update_record(&self, json: &str) -> Result<()> {
        self.conn.execute(
            "INSERT OR REPLACE INTO update_state (id, record) VALUES (1, ?1)",
            params![json],
        )?;
        Ok(())
    }

    /// Records a download in progress (it resumes from its file on the next run).
    pub fn download_started(&self, blake3: &str, url: &str, path: &Path, size: u64) -> Result<()> {
        self.conn.execute(
            "INSERT OR IGNORE INTO downloads (blake3, url, path, size, started) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![blake3, url, path.to_string_lossy(), size as i64, now()],
        )?;
        Ok(())
    }

    /// Forgets a finished download.
    pub fn download_finished(&self, blake3: &str) -> Result<()> {
        self.conn
            .execute("DELETE FROM downloads WHERE blake3 = ?1", params![blake3])?;
        Ok(())
    }

    /// Downloads in progress: (url, partial file, size).
    pub fn downloads(&self) -> Result<Vec<PartialDownload>> {
        let mut stmt = self
            .conn
            .prepare("SELECT url, path, size FROM downloads ORDER BY started")?;
        let rows = stmt.query_map([], |r| {
            Ok(PartialDownload {
                url: r.get(0)?,
                path: r.get(1)?,
                size: r.get::<_, i64>(2)? as u64,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The transaction history, newest first.
    pub fn history(&self, limit: usize) -> Result<Vec<HistoryEntry>> {
        let mut stmt = self.conn.prepare(
            "SELECT id, kind, command, uid, started, finished, result, detail FROM transactions ORDER BY id DESC LIMIT ?1",
        )?;
        let rows = stmt.query_map(params![limit as i64], |r| {
            Ok(HistoryEntry {
                id: r.get(0)?,
                kind: r.get(1)?,
                command: r.get(2)?,
                uid: r.get(3)?,
                started: r.get(4)?,
                finished: r.get(5)?,
                result: r.get(6)?,
                detail: r.get(7)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_records_results() {
        let t = tempfile::tempdir().unwrap();
        let db = StateDb::open(&t.path().join("s.db")).unwrap();
        let id = db
            .begin_history_row(HistoryKind::Commit, "arbor commit x", 0)
            .unwrap();
        db.end_history_row(id, &Err("boom".into())).unwrap();
        let h = db.history(10).unwrap();
        assert_eq!(h.len(), 1);
        assert_eq!(h[0].result.as_deref(), Some("boom"));
        assert_eq!(h[0].detail, None);
        let id = db
            .begin_history_row(HistoryKind::Usroverlay, "arbor usroverlay", 0)
            .unwrap();
        db.set_history_detail(id, "added /usr/bin/x").unwrap();
        db.end_history_row(id, &Ok(())).unwrap();
        let h = db.history(1).unwrap();
        assert_eq!(h[0].detail.as_deref(), Some("added /usr/bin/x"));
    }

    #[test]
    fn an_older_database_is_migrated_where_it_stands() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("s.db");
        drop(StateDb::open(&path).unwrap());
        // Back to version 3, as an arbor before the history's detail column left it
        // (with its inode cache of a row per inode, and a row in it).
        let c = Connection::open(&path).unwrap();
        c.execute_batch(
            "ALTER TABLE transactions DROP COLUMN detail; DROP TABLE inode_records;
             CREATE TABLE inode_cache (dev INTEGER NOT NULL, ino INTEGER NOT NULL,
                mtime_ns INTEGER NOT NULL, size INTEGER NOT NULL, content BLOB NOT NULL,
                PRIMARY KEY (dev, ino)) WITHOUT ROWID;
             INSERT INTO inode_cache VALUES (1, 2, 3, 4, x'00');
             INSERT INTO transactions (kind, command, uid, started)
                VALUES ('rollback (automatic)', 'arbor health-check', 0, 1),
                       ('install', 'arbor install to-disk /dev/vdb', 0, 2),
                       ('install', 'arbor install htop', 0, 3);
             PRAGMA user_version = 3;",
        )
        .unwrap();
        drop(c);
        let db = StateDb::open(&path).unwrap();
        // The old free words take their kinds' words; package layering stays install.
        let kinds: Vec<String> = db.history(3).unwrap().into_iter().map(|h| h.kind).collect();
        assert_eq!(kinds, ["install", "install-to-disk", "automatic-rollback"]);
        let id = db
            .begin_history_row(HistoryKind::Deploy, "arbor deploy", 0)
            .unwrap();
        db.set_history_detail(id, "migrated").unwrap();
        assert_eq!(
            db.history(1).unwrap()[0].detail.as_deref(),
            Some("migrated")
        );
        assert!(
            db.load_inode_cache(&[1]).unwrap().is_empty(),
            "the old cache is dropped"
        );
        // A newer schema than this arbor knows is refused, not rewritten.
        db.conn.pragma_update(None, "user_version", 99).unwrap();
        drop(db);
        let e = StateDb::open(&path).err().unwrap();
        assert!(e.to_string().contains("newer than this arbor knows"), "{e}");
    }
}
