//! Persistent state: one small versioned file per concern in the state directory, written
//! atomically (temp file, fsync, rename, fsync of the directory) with mode 0600, so a power
//! loss leaves either the old or the new file, never half of one, and no other user can read it.
//!
//! - [`atomic_write`] and [`remove`] are the only ways the agent changes its state directory.
//!   Each passes a named *persistence point* ([`persistence_point`]): logged at debug level, and
//!   the place where the crash tests kill the process (`OCF_AGENT_KILL_AT`, see there).
//! - A file that exists but cannot be used (corrupt, unknown version) is moved aside with
//!   [`quarantine`] and the caller starts from a safe state instead of refusing to start: a
//!   device that crash-loops on a bad file can never be repaired remotely.
//! - [`StateLock`]: one agent (or one offline `ocf-agent factory-reset`) per state directory.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Creates the state directory (mode 0700) if needed.
pub fn ensure_dir(dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
}

/// The environment variable that makes the agent kill itself at a persistence point (for the
/// crash tests): `write <file>#<n>` (the temp file of the n-th write of `<file>` is on disk, the
/// rename has not happened), `wrote <file>#<n>` (the n-th write is complete), or
/// `remove <file>#<n>`. Unset in production; the points are logged at debug level either way.
pub const KILL_AT_ENV: &str = "OCF_AGENT_KILL_AT";

/// Passes the persistence point `what` (`"wrote security.cbor"`, ...): counts it, logs it, and
/// if [`KILL_AT_ENV`] names this occurrence, dies at once with SIGKILL, as a power cut would
/// (no destructor, no flush, nothing more written).
pub fn persistence_point(what: &str) {
    use std::collections::HashMap;
    use std::sync::Mutex;
    static COUNTS: Mutex<Option<HashMap<String, u32>>> = Mutex::new(None);
    let n = {
        let mut counts = COUNTS.lock().unwrap_or_else(|e| e.into_inner());
        let n = counts
            .get_or_insert_with(HashMap::new)
            .entry(what.to_string())
            .or_insert(0);
        *n += 1;
        *n
    };
    tracing::debug!("persistence point: {what}#{n}");
    if let Some(target) = std::env::var_os(KILL_AT_ENV) {
        if target.to_string_lossy() == format!("{what}#{n}") {
            eprintln!("ocf-agent: killed at persistence point {what}#{n} ({KILL_AT_ENV})");
            // SAFETY: kill(2) on our own pid has no memory-safety preconditions.
            unsafe {
                libc::kill(libc::getpid(), libc::SIGKILL);
            }
        }
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Removes `path` durably (the directory is synced); a missing file is not an error.
pub fn remove(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Ok(()) => {
            File::open(path.parent().unwrap_or(Path::new(".")))?.sync_all()?;
            persistence_point(&format!("remove {}", file_name(path)));
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// How many quarantined copies of one file are kept: a file that keeps going bad must not fill
/// the disk.
const QUARANTINE_KEEP: u32 = 5;

/// Moves a state file that cannot be used out of the way (`<name>.corrupt`, then
/// `<name>.corrupt.1` ... up to [`QUARANTINE_KEEP`] copies, the last one reused), so the agent can
/// start without it and a person can still look at it. Returns where it went.
pub fn quarantine(path: &Path) -> io::Result<PathBuf> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = file_name(path);
    let mut target = dir.join(format!("{name}.corrupt"));
    for i in 1..QUARANTINE_KEEP {
        if !target.exists() {
            break;
        }
        target = dir.join(format!("{name}.corrupt.{i}"));
    }
    fs::rename(path, &target)?;
    // It may hold a key or tokens, whatever mode the damaged file had.
    fs::set_permissions(&target, fs::Permissions::from_mode(0o600))?;
    File::open(dir)?.sync_all()?;
    persistence_point(&format!("quarantine {name}"));
    Ok(target)
}

/// Whether `name` is a quarantined copy made by [`quarantine`].
fn is_quarantined(name: &str) -> bool {
    match name.rsplit_once(".corrupt") {
        Some((base, rest)) => {
            !base.is_empty()
                && (rest.is_empty()
                    || rest
                        .strip_prefix('.')
                        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())))
        }
        None => false,
    }
}

/// Removes every quarantined copy in `dir`: they may hold what a factory reset must wipe (an
/// old identity key, tokens, the owner's credentials).
pub fn remove_quarantined(dir: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if is_quarantined(&entry.file_name().to_string_lossy()) {
            remove(&entry.path())?;
        }
    }
    Ok(())
}

/// `text` with every value a decoder quoted replaced by `…`: runs in backticks (serde's
/// ``unknown variant `…` ``) and in escaped double quotes (serde's `invalid value: string "…"` as
/// ciborium's error shows it, `\"…\"`). In a damaged `cloud.cbor` that value can be a token:
/// it must not reach the log. The rest of the message stays, to say what was wrong.
pub fn redact_quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some((i, quote)) = ["`", "\\\""]
        .iter()
        .filter_map(|q| rest.find(q).map(|i| (i, *q)))
        .min()
    {
        out.push_str(&rest[..i + quote.len()]);
        let after = &rest[i + quote.len()..];
        out.push('…');
        match after.find(quote) {
            Some(end) => {
                out.push_str(quote);
                rest = &after[end + quote.len()..];
            }
            None => return out,
        }
    }
    out.push_str(rest);
    out
}

/// Reports a state file that cannot be used, moves it aside, and says what the agent does
/// instead (`then`). The message names the file, why, and where it went.
pub fn report_and_quarantine(path: &Path, why: &str, then: &str) {
    let why = redact_quoted(why);
    match quarantine(path) {
        Ok(to) => tracing::error!(
            "{}: {why}; moved to {}; {then}",
            path.display(),
            to.display()
        ),
        Err(e) => tracing::error!(
            "{}: {why}; cannot move it aside ({e}); {then}",
            path.display()
        ),
    }
}

/// Replaces `path` with `bytes` atomically; the file ends up with mode 0600.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let tmp = dir.join(format!(".{}.tmp", name.to_string_lossy()));
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        // The mode given to open() is filtered by the umask; make sure.
        f.set_permissions(fs::Permissions::from_mode(0o600))?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    let name = name.to_string_lossy();
    persistence_point(&format!("write {name}"));
    fs::rename(&tmp, path)?;
    // The rename is only durable once the directory entry is on disk.
    File::open(dir)?.sync_all()?;
    persistence_point(&format!("wrote {name}"));
    Ok(())
}

/// An exclusive lock on the state directory (`STATE/agent.lock`, flock(2)), held for the life of
/// the process: two agents on one directory would overwrite each other's state, and the console
/// `factory-reset` must know whether an agent is running.
pub struct StateLock {
    _file: File,
}

pub const LOCK_FILE: &str = "agent.lock";
/// The persisted security state (`ocf::security::SecurityState`, CBOR).
pub const SECURITY_FILE: &str = "security.cbor";
/// The persisted cloud state (`ocf::cloud::PersistedState`, CBOR).
pub const CLOUD_FILE: &str = "cloud.cbor";

impl StateLock {
    /// Takes the lock; `Ok(None)` if another process holds it.
    pub fn try_acquire(dir: &Path) -> io::Result<Option<StateLock>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(dir.join(LOCK_FILE))?;
        // flock(2) on Linux: the kernel drops it when the process ends, however it ends.
        match file.try_lock() {
            Ok(()) => Ok(Some(StateLock { _file: file })),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => Err(e),
        }
    }

    /// Takes the lock for a starting agent; the error says which directory is taken, or which
    /// file could not be locked and why.
    pub fn acquire(dir: &Path) -> Result<StateLock, String> {
        match Self::try_acquire(dir) {
            Ok(Some(lock)) => Ok(lock),
            Ok(None) => Err(format!(
                "{}: another ocf-agent uses this state directory",
                dir.display()
            )),
            Err(e) => Err(format!("{}: {e}", dir.join(LOCK_FILE).display())),
        }
    }
}

/// The device's identity, created on first start and kept for its life (until a factory reset).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub version: u32,
    /// Device UUID.
    pub di: String,
    /// Protocol-independent id.
    pub piid: String,
    /// Platform id for `/oic/p`.
    pub pi: String,
    /// The device name set through `/oic/con`, if the owner set one (else the board's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

pub const IDENTITY_FILE: &str = "identity.json";
const IDENTITY_VERSION: u32 = 1;

/// A state file that exists but cannot be used.
#[derive(Debug)]
pub struct StateError {
    pub path: PathBuf,
    pub reason: String,
}

impl std::fmt::Display for StateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.reason)
    }
}

impl std::error::Error for StateError {}

impl Identity {
    /// Writes a new identity: `di` if given (recovered from the security state), else a new
    /// one; new `piid` and `pi`.
    pub fn create(dir: &Path, di: Option<&str>) -> Result<Identity, StateError> {
        let id = Identity {
            version: IDENTITY_VERSION,
            di: di.map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_string),
            piid: uuid::Uuid::new_v4().to_string(),
            pi: uuid::Uuid::new_v4().to_string(),
            name: None,
        };
        id.save(dir)?;
        Ok(id)
    }

    /// The identity after a factory reset: a new `di` (iotivity-lite makes a new device UUID at
    /// RESET, `oc_sec_doxm_default`), the name back to the board's; `piid` and `pi` are kept
    /// (the platform is the same hardware; `piid` is immutable per the `/oic/d` schema).
    pub fn renew_di(dir: &Path) -> Result<Identity, StateError> {
        let mut id = match Identity::load_or_create(dir) {
            Ok((id, _)) => id,
            // An unusable file is replaced whole.
            Err(_) => return Identity::create(dir, None),
        };
        id.di = uuid::Uuid::new_v4().to_string();
        id.name = None;
        id.save(dir)?;
        Ok(id)
    }

    fn save(&self, dir: &Path) -> Result<(), StateError> {
        let path = dir.join(IDENTITY_FILE);
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| StateError {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        atomic_write(&path, &bytes).map_err(|e| StateError {
            path,
            reason: format!("cannot write: {e}"),
        })
    }

    /// Records the `di` an ownership transfer gave the device (`doxm.deviceuuid`).
    pub fn save_di(dir: &Path, di: &str) -> Result<(), StateError> {
        let (mut id, _) = Identity::load_or_create(dir)?;
        id.di = di.to_string();
        id.save(dir)
    }

    /// Records a new device name (set through `/oic/con`) in the identity file.
    pub fn save_name(dir: &Path, name: &str) -> Result<(), StateError> {
        let (mut id, _) = Identity::load_or_create(dir)?;
        id.name = Some(name.to_string());
        id.save(dir)
    }

    /// Loads the identity from `dir`, creating it on first start.
    pub fn load_or_create(dir: &Path) -> Result<(Identity, bool), StateError> {
        let path = dir.join(IDENTITY_FILE);
        let err = |reason: String| StateError {
            path: path.clone(),
            reason,
        };
        match fs::read(&path) {
            Ok(bytes) => {
                let id: Identity = serde_json::from_slice(&bytes)
                    .map_err(|e| err(format!("not a valid identity file: {e}")))?;
                if id.version != IDENTITY_VERSION {
                    return Err(err(format!(
                        "identity file version {} is not supported (expected {IDENTITY_VERSION})",
                        id.version
                    )));
                }
                for (name, value) in [("di", &id.di), ("piid", &id.piid), ("pi", &id.pi)] {
                    if uuid::Uuid::parse_str(value).is_err() {
                        return Err(err(format!("{name} {value:?} is not a UUID")));
                    }
                }
                Ok((id, false))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                ensure_dir(dir).map_err(|e| err(format!("cannot create state directory: {e}")))?;
                Ok((Identity::create(dir, None)?, true))
            }
            Err(e) => Err(err(format!("cannot read: {e}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ocf-state-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn a_second_lock_on_the_state_directory_is_refused_with_a_clear_message() {
        let dir = tempdir("lock");
        ensure_dir(&dir).unwrap();
        let first = StateLock::acquire(&dir).unwrap();
        assert!(StateLock::try_acquire(&dir).unwrap().is_none());
        match StateLock::acquire(&dir) {
            Ok(_) => panic!("a second lock was granted"),
            Err(e) => assert_eq!(
                e,
                format!(
                    "{}: another ocf-agent uses this state directory",
                    dir.display()
                )
            ),
        }
        drop(first);
        assert!(StateLock::try_acquire(&dir).unwrap().is_some());
        // A lock file that cannot be opened is an I/O error naming it.
        let other = tempdir("lock-unusable");
        fs::create_dir_all(other.join(LOCK_FILE)).unwrap();
        let e = StateLock::acquire(&other).err().unwrap();
        assert!(
            e.starts_with(&format!("{}: ", other.join(LOCK_FILE).display())),
            "{e}"
        );
        let _ = fs::remove_dir_all(&dir);
        let _ = fs::remove_dir_all(&other);
    }

    #[test]
    fn identity_is_created_once_and_kept() {
        let dir = tempdir("keep");
        let (a, created) = Identity::load_or_create(&dir).unwrap();
        assert!(created);
        let (b, created) = Identity::load_or_create(&dir).unwrap();
        assert!(!created);
        assert_eq!(a, b);
        assert_ne!(a.di, a.piid);
        let mode = fs::metadata(dir.join(IDENTITY_FILE))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        let mode = fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        assert!(!dir.join(".identity.json.tmp").exists());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn corrupt_identity_is_reported_with_its_path() {
        let dir = tempdir("corrupt");
        ensure_dir(&dir).unwrap();
        fs::write(dir.join(IDENTITY_FILE), b"{\"version\":1,\"di\":").unwrap();
        let e = Identity::load_or_create(&dir).unwrap_err();
        assert!(e.to_string().contains("identity.json"), "{e}");
        fs::write(
            dir.join(IDENTITY_FILE),
            br#"{"version":9,"di":"x","piid":"y","pi":"z"}"#,
        )
        .unwrap();
        assert!(Identity::load_or_create(&dir)
            .unwrap_err()
            .reason
            .contains("version 9"));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn quarantined_copies_are_recognised_and_removed() {
        for yes in [
            "cloud.cbor.corrupt",
            "identity.key.corrupt.1",
            "pin.corrupt.4",
        ] {
            assert!(is_quarantined(yes), "{yes}");
        }
        for no in [
            "cloud.cbor",
            ".corrupt",
            "x.corrupt.",
            "x.corrupt.a",
            "x.corruptx",
        ] {
            assert!(!is_quarantined(no), "{no}");
        }
        let dir = tempdir("quarantine");
        ensure_dir(&dir).unwrap();
        atomic_write(&dir.join("identity.key"), b"k").unwrap();
        assert_eq!(
            quarantine(&dir.join("identity.key")).unwrap(),
            dir.join("identity.key.corrupt")
        );
        assert_eq!(
            fs::metadata(dir.join("identity.key.corrupt"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
        fs::write(dir.join("identity.key"), b"k2").unwrap();
        fs::set_permissions(dir.join("identity.key"), fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(
            quarantine(&dir.join("identity.key")).unwrap(),
            dir.join("identity.key.corrupt.1")
        );
        assert_eq!(
            fs::metadata(dir.join("identity.key.corrupt.1"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600,
            "a world-readable damaged file is not left readable"
        );
        atomic_write(&dir.join("keep.json"), b"{}").unwrap();
        remove_quarantined(&dir).unwrap();
        let left: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left, ["keep.json"]);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn quoted_values_in_decoding_errors_are_redacted() {
        // What serde says about a token where a state name belongs.
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct Persisted {
            cps: ocf::cloud::Cps,
        }
        let mut bytes = Vec::new();
        ciborium::into_writer(
            &ciborium::Value::Map(vec![(
                "cps".into(),
                ciborium::Value::Text("SECRET-TOKEN".into()),
            )]),
            &mut bytes,
        )
        .unwrap();
        let e = ciborium::from_reader::<Persisted, _>(bytes.as_slice())
            .unwrap_err()
            .to_string();
        assert!(e.contains("SECRET-TOKEN"), "the premise: {e}");
        let r = redact_quoted(&e);
        assert!(
            !r.contains("SECRET") && r.contains("unknown variant `…`, expected"),
            "{r}"
        );
        assert_eq!(
            redact_quoted(r#"a \"b\" c `d` "e" `f"#),
            r#"a \"…\" c `…` "e" `…"#
        );
    }

    #[test]
    fn atomic_write_replaces_content() {
        let dir = tempdir("atomic");
        ensure_dir(&dir).unwrap();
        let p = dir.join("x.json");
        atomic_write(&p, b"one").unwrap();
        atomic_write(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        fs::remove_dir_all(&dir).unwrap();
    }
}
