//! The cloud's persistent state in SQLite (`DATA-DIR/cloud.db`): users, authorisation codes,
//! devices, tokens, the bearer tokens of the client API and published links.
//!
//! Secrets are never stored in clear: authorisation codes and tokens are kept as SHA-256
//! digests ([`digest`]), so the database file alone signs no device in.
//!
//! One [`Store`] wraps one connection behind a mutex; every operation is a short statement, so
//! callers on async tasks simply call it.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use rusqlite::{params, Connection, OptionalExtension};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY,
    created_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS authcodes (
    code_hash TEXT PRIMARY KEY,
    user TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL,
    consumed_by TEXT,
    consumed_ms INTEGER
);
CREATE TABLE IF NOT EXISTS devices (
    di TEXT PRIMARY KEY,
    uid TEXT NOT NULL,
    name TEXT NOT NULL DEFAULT '',
    online INTEGER NOT NULL DEFAULT 0,
    last_seen_ms INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS tokens (
    di TEXT PRIMARY KEY,
    uid TEXT NOT NULL,
    access_hash TEXT NOT NULL,
    refresh_hash TEXT NOT NULL,
    access_expires_ms INTEGER
);
CREATE TABLE IF NOT EXISTS api_tokens (
    token_hash TEXT PRIMARY KEY,
    user TEXT NOT NULL,
    expires_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS links (
    di TEXT NOT NULL,
    href TEXT NOT NULL,
    ins INTEGER NOT NULL,
    link TEXT NOT NULL,
    PRIMARY KEY (di, href)
);
";

/// A storage failure (SQLite error or corrupt row).
#[derive(Debug)]
pub struct StoreError(pub String);

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "storage error: {}", self.0)
    }
}

impl std::error::Error for StoreError {}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError(e.to_string())
    }
}

/// Result of the storage layer.
pub type StoreResult<T> = Result<T, StoreError>;

/// A registered device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRow {
    /// Device UUID.
    pub di: String,
    /// The owning user (the `uid` of the sign-up).
    pub uid: String,
    /// Device name (`n` of the publish), or empty.
    pub name: String,
    /// Whether a connection is signed in for it.
    pub online: bool,
    /// Unix milliseconds of the last sign-in, sign-out or disconnection.
    pub last_seen_ms: u64,
}

/// The token set of a device (digests only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRow {
    /// Device UUID.
    pub di: String,
    /// Owning user.
    pub uid: String,
    /// SHA-256 of the access token (hex).
    pub access_hash: String,
    /// SHA-256 of the refresh token (hex).
    pub refresh_hash: String,
    /// Expiry of the access token in unix milliseconds; `None` = permanent.
    pub access_expires_ms: Option<u64>,
}

/// What happened to an authorisation code presented at sign-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CodeUse {
    /// The code was valid and is now consumed: it belonged to this user.
    Consumed(String),
    /// The same device presented an already consumed code again within the tolerance window
    /// (hub tolerates a duplicated identical sign-up): it belonged to this user.
    Repeated(String),
    /// Unknown, expired, or consumed by another device or too long ago.
    Invalid,
}

/// A published link as stored: its href, RD-assigned `ins` and the JSON of the whole link.
#[derive(Debug, Clone, PartialEq)]
pub struct LinkRow {
    /// Device-local href.
    pub href: String,
    /// RD instance id (CRC-32 of the href).
    pub ins: i64,
    /// The link as JSON (with `ins` and `di`).
    pub link: serde_json::Value,
}

/// The SQLite store.
pub struct Store {
    conn: Mutex<Connection>,
}

/// How long a consumed code may be presented again by the same device (duplicate sign-up).
pub const REPEAT_WINDOW_MS: u64 = 60_000;

impl Store {
    /// Opens (creating if needed) the database file.
    pub fn open(path: &Path) -> StoreResult<Store> {
        // SQLite gives its journal and WAL files the database file's mode: create it 0600.
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(false);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        opts.open(path)
            .map_err(|e| StoreError(format!("cannot create {}: {e}", path.display())))?;
        let conn = Connection::open(path)?;
        Self::init(conn)
    }

    /// An in-memory store, for tests.
    pub fn open_in_memory() -> StoreResult<Store> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(conn: Connection) -> StoreResult<Store> {
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;")
            .or_else(|_| conn.execute_batch("PRAGMA synchronous = NORMAL;"))?;
        conn.execute_batch(SCHEMA)?;
        Ok(Store {
            conn: Mutex::new(conn),
        })
    }

    fn db(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite inconsistent (every statement is
        // atomic), so a poisoned lock is simply taken over.
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Creates the user if it does not exist yet.
    pub fn ensure_user(&self, name: &str, now_ms: u64) -> StoreResult<()> {
        self.db().execute(
            "INSERT OR IGNORE INTO users (name, created_ms) VALUES (?1, ?2)",
            params![name, now_ms as i64],
        )?;
        Ok(())
    }

    /// Stores a fresh authorisation code (its digest) for `user`.
    pub fn insert_authcode(
        &self,
        code_hash: &str,
        user: &str,
        now_ms: u64,
        lifetime_ms: u64,
    ) -> StoreResult<()> {
        self.db().execute(
            "INSERT INTO authcodes (code_hash, user, created_ms, expires_ms) VALUES (?1, ?2, ?3, ?4)",
            params![
                code_hash,
                user,
                now_ms as i64,
                now_ms.saturating_add(lifetime_ms) as i64
            ],
        )?;
        Ok(())
    }

    /// Stores a bearer token of the client API (its digest) for `user`; drops expired ones.
    pub fn insert_api_token(
        &self,
        token_hash: &str,
        user: &str,
        now_ms: u64,
        expires_ms: u64,
    ) -> StoreResult<()> {
        let db = self.db();
        db.execute(
            "DELETE FROM api_tokens WHERE expires_ms <= ?1",
            params![now_ms as i64],
        )?;
        db.execute(
            "INSERT OR REPLACE INTO api_tokens (token_hash, user, expires_ms) VALUES (?1, ?2, ?3)",
            params![token_hash, user, expires_ms as i64],
        )?;
        Ok(())
    }

    /// The user of a bearer token that has not expired.
    pub fn api_token_user(&self, token_hash: &str, now_ms: u64) -> StoreResult<Option<String>> {
        Ok(self
            .db()
            .query_row(
                "SELECT user FROM api_tokens WHERE token_hash = ?1 AND expires_ms > ?2",
                params![token_hash, now_ms as i64],
                |r| r.get::<_, String>(0),
            )
            .optional()?)
    }

    /// Consumes an authorisation code for device `di` (single use).
    pub fn use_authcode(&self, code_hash: &str, di: &str, now_ms: u64) -> StoreResult<CodeUse> {
        let mut db = self.db();
        let tx = db.transaction()?;
        let row: Option<(String, i64, Option<String>, Option<i64>)> = tx
            .query_row(
                "SELECT user, expires_ms, consumed_by, consumed_ms FROM authcodes WHERE code_hash = ?1",
                params![code_hash],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()?;
        let result = match row {
            None => CodeUse::Invalid,
            Some((user, expires, None, _)) => {
                if (now_ms as i64) >= expires {
                    CodeUse::Invalid
                } else {
                    tx.execute(
                        "UPDATE authcodes SET consumed_by = ?2, consumed_ms = ?3 WHERE code_hash = ?1",
                        params![code_hash, di, now_ms as i64],
                    )?;
                    CodeUse::Consumed(user)
                }
            }
            Some((user, _, Some(by), Some(at)))
                if by == di && (now_ms as i64).saturating_sub(at) <= REPEAT_WINDOW_MS as i64 =>
            {
                CodeUse::Repeated(user)
            }
            Some(_) => CodeUse::Invalid,
        };
        tx.commit()?;
        Ok(result)
    }

    /// Creates or re-assigns a device to `uid`.
    pub fn upsert_device(&self, di: &str, uid: &str, now_ms: u64) -> StoreResult<()> {
        self.db().execute(
            "INSERT INTO devices (di, uid, last_seen_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT(di) DO UPDATE SET uid = excluded.uid, last_seen_ms = excluded.last_seen_ms",
            params![di, uid, now_ms as i64],
        )?;
        Ok(())
    }

    /// A device by id.
    pub fn device(&self, di: &str) -> StoreResult<Option<DeviceRow>> {
        Ok(self
            .db()
            .query_row(
                "SELECT di, uid, name, online, last_seen_ms FROM devices WHERE di = ?1",
                params![di],
                device_row,
            )
            .optional()?)
    }

    /// All devices, ordered by id.
    pub fn devices(&self) -> StoreResult<Vec<DeviceRow>> {
        let db = self.db();
        let mut stmt =
            db.prepare("SELECT di, uid, name, online, last_seen_ms FROM devices ORDER BY di")?;
        let rows = stmt.query_map([], device_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The devices owned by `uid`, ordered by id.
    pub fn devices_of(&self, uid: &str) -> StoreResult<Vec<DeviceRow>> {
        let db = self.db();
        let mut stmt = db.prepare(
            "SELECT di, uid, name, online, last_seen_ms FROM devices WHERE uid = ?1 ORDER BY di",
        )?;
        let rows = stmt.query_map(params![uid], device_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Sets the online flag and the last-seen time.
    pub fn set_online(&self, di: &str, online: bool, now_ms: u64) -> StoreResult<()> {
        self.db().execute(
            "UPDATE devices SET online = ?2, last_seen_ms = ?3 WHERE di = ?1",
            params![di, online as i64, now_ms as i64],
        )?;
        Ok(())
    }

    /// Marks every device offline (at start-up: no connection survives a restart).
    pub fn mark_all_offline(&self) -> StoreResult<()> {
        self.db()
            .execute("UPDATE devices SET online = 0 WHERE online != 0", [])?;
        Ok(())
    }

    /// Sets the device name.
    pub fn set_name(&self, di: &str, name: &str) -> StoreResult<()> {
        self.db().execute(
            "UPDATE devices SET name = ?2 WHERE di = ?1",
            params![di, name],
        )?;
        Ok(())
    }

    /// Replaces the token set of a device.
    pub fn set_tokens(&self, t: &TokenRow) -> StoreResult<()> {
        self.db().execute(
            "INSERT INTO tokens (di, uid, access_hash, refresh_hash, access_expires_ms)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT(di) DO UPDATE SET uid = excluded.uid, access_hash = excluded.access_hash,
                 refresh_hash = excluded.refresh_hash, access_expires_ms = excluded.access_expires_ms",
            params![
                t.di,
                t.uid,
                t.access_hash,
                t.refresh_hash,
                t.access_expires_ms.map(|v| v as i64)
            ],
        )?;
        Ok(())
    }

    /// The token set of a device.
    pub fn tokens(&self, di: &str) -> StoreResult<Option<TokenRow>> {
        Ok(self
            .db()
            .query_row(
                "SELECT di, uid, access_hash, refresh_hash, access_expires_ms FROM tokens WHERE di = ?1",
                params![di],
                |r| {
                    Ok(TokenRow {
                        di: r.get(0)?,
                        uid: r.get(1)?,
                        access_hash: r.get(2)?,
                        refresh_hash: r.get(3)?,
                        access_expires_ms: r.get::<_, Option<i64>>(4)?.map(|v| v.max(0) as u64),
                    })
                },
            )
            .optional()?)
    }

    /// Deletes a device with its tokens and links (deregistration).
    pub fn delete_device(&self, di: &str) -> StoreResult<()> {
        let mut db = self.db();
        let tx = db.transaction()?;
        tx.execute("DELETE FROM links WHERE di = ?1", params![di])?;
        tx.execute("DELETE FROM tokens WHERE di = ?1", params![di])?;
        tx.execute("DELETE FROM devices WHERE di = ?1", params![di])?;
        tx.commit()?;
        Ok(())
    }

    /// Inserts or replaces published links (keyed by href).
    pub fn upsert_links(&self, di: &str, links: &[LinkRow]) -> StoreResult<()> {
        let mut db = self.db();
        let tx = db.transaction()?;
        for l in links {
            tx.execute(
                "INSERT INTO links (di, href, ins, link) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(di, href) DO UPDATE SET ins = excluded.ins, link = excluded.link",
                params![di, l.href, l.ins, l.link.to_string()],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Deletes the links with the given `ins` values (all of them when `ins` is empty);
    /// returns the hrefs removed.
    pub fn delete_links(&self, di: &str, ins: &[i64]) -> StoreResult<Vec<String>> {
        let mut db = self.db();
        let tx = db.transaction()?;
        let mut removed = Vec::new();
        {
            let mut stmt = tx.prepare("SELECT href, ins FROM links WHERE di = ?1")?;
            let rows = stmt.query_map(params![di], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
            })?;
            for row in rows {
                let (href, i) = row?;
                if ins.is_empty() || ins.contains(&i) {
                    removed.push(href);
                }
            }
        }
        for href in &removed {
            tx.execute(
                "DELETE FROM links WHERE di = ?1 AND href = ?2",
                params![di, href],
            )?;
        }
        tx.commit()?;
        Ok(removed)
    }

    /// The published links of a device, ordered by href.
    pub fn links(&self, di: &str) -> StoreResult<Vec<LinkRow>> {
        let db = self.db();
        let mut stmt =
            db.prepare("SELECT href, ins, link FROM links WHERE di = ?1 ORDER BY href")?;
        let rows = stmt.query_map(params![di], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (href, ins, link) = row?;
            let link = serde_json::from_str(&link)
                .map_err(|e| StoreError(format!("corrupt link {href} of {di}: {e}")))?;
            out.push(LinkRow { href, ins, link });
        }
        Ok(out)
    }
}

fn device_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<DeviceRow> {
    Ok(DeviceRow {
        di: r.get(0)?,
        uid: r.get(1)?,
        name: r.get(2)?,
        online: r.get::<_, i64>(3)? != 0,
        last_seen_ms: r.get::<_, i64>(4)?.max(0) as u64,
    })
}

/// Hex SHA-256 digest of a secret, the form in which codes and tokens are stored.
pub fn digest(secret: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, secret.as_bytes());
    hex(d.as_ref())
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authcodes_are_single_use_and_expire() {
        let s = Store::open_in_memory().unwrap();
        s.insert_authcode(&digest("c1"), "alice", 1000, 10_000)
            .unwrap();
        assert_eq!(
            s.use_authcode(&digest("c1"), "d1", 2000).unwrap(),
            CodeUse::Consumed("alice".into())
        );
        // The same device within the window: a tolerated duplicate.
        assert_eq!(
            s.use_authcode(&digest("c1"), "d1", 3000).unwrap(),
            CodeUse::Repeated("alice".into())
        );
        // Another device, or too late: refused.
        assert_eq!(
            s.use_authcode(&digest("c1"), "d2", 3000).unwrap(),
            CodeUse::Invalid
        );
        assert_eq!(
            s.use_authcode(&digest("c1"), "d1", 2000 + REPEAT_WINDOW_MS + 1)
                .unwrap(),
            CodeUse::Invalid
        );
        s.insert_authcode(&digest("c2"), "alice", 1000, 10_000)
            .unwrap();
        assert_eq!(
            s.use_authcode(&digest("c2"), "d1", 11_000).unwrap(),
            CodeUse::Invalid
        );
        assert_eq!(
            s.use_authcode(&digest("nope"), "d1", 0).unwrap(),
            CodeUse::Invalid
        );
    }

    #[test]
    fn api_tokens_expire() {
        let s = Store::open_in_memory().unwrap();
        s.insert_api_token(&digest("t1"), "alice", 1000, 5000)
            .unwrap();
        assert_eq!(
            s.api_token_user(&digest("t1"), 4999).unwrap(),
            Some("alice".into())
        );
        assert_eq!(s.api_token_user(&digest("t1"), 5000).unwrap(), None);
        assert_eq!(s.api_token_user(&digest("t2"), 0).unwrap(), None);
    }

    #[test]
    fn devices_tokens_links() {
        let s = Store::open_in_memory().unwrap();
        s.upsert_device("d1", "alice", 5).unwrap();
        s.set_name("d1", "Pi").unwrap();
        s.set_online("d1", true, 7).unwrap();
        let d = s.device("d1").unwrap().unwrap();
        assert_eq!((d.name.as_str(), d.online, d.last_seen_ms), ("Pi", true, 7));
        s.mark_all_offline().unwrap();
        assert!(!s.device("d1").unwrap().unwrap().online);
        let t = TokenRow {
            di: "d1".into(),
            uid: "alice".into(),
            access_hash: digest("a"),
            refresh_hash: digest("r"),
            access_expires_ms: None,
        };
        s.set_tokens(&t).unwrap();
        assert_eq!(s.tokens("d1").unwrap(), Some(t));
        let link = |href: &str, ins: i64| LinkRow {
            href: href.into(),
            ins,
            link: serde_json::json!({"href": href, "ins": ins}),
        };
        s.upsert_links("d1", &[link("/a", 1), link("/b", 2), link("/c", 3)])
            .unwrap();
        assert_eq!(s.links("d1").unwrap().len(), 3);
        assert_eq!(
            s.delete_links("d1", &[2, 9]).unwrap(),
            vec!["/b".to_owned()]
        );
        assert_eq!(s.links("d1").unwrap().len(), 2);
        assert_eq!(s.devices_of("alice").unwrap().len(), 1);
        s.delete_device("d1").unwrap();
        assert!(s.device("d1").unwrap().is_none());
        assert!(s.tokens("d1").unwrap().is_none());
        assert!(s.links("d1").unwrap().is_empty());
    }
}
