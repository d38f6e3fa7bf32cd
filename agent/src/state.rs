//! Persistent state: one small versioned JSON file per concern in the state directory, written
//! atomically (temp file, fsync, rename, fsync of the directory) with mode 0600, so a power
//! loss leaves either the old or the new file, never half of one, and no other user can read it.

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
    fs::rename(&tmp, path)?;
    // The rename is only durable once the directory entry is on disk.
    File::open(dir)?.sync_all()
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

const IDENTITY_FILE: &str = "identity.json";
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
    /// Records a new device name (set through `/oic/con`) in the identity file.
    pub fn save_name(dir: &Path, name: &str) -> Result<(), StateError> {
        let (mut id, _) = Identity::load_or_create(dir)?;
        id.name = Some(name.to_string());
        let path = dir.join(IDENTITY_FILE);
        let bytes = serde_json::to_vec_pretty(&id).map_err(|e| StateError {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        atomic_write(&path, &bytes).map_err(|e| StateError {
            path,
            reason: format!("cannot write: {e}"),
        })
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
                let id = Identity {
                    version: IDENTITY_VERSION,
                    di: uuid::Uuid::new_v4().to_string(),
                    piid: uuid::Uuid::new_v4().to_string(),
                    pi: uuid::Uuid::new_v4().to_string(),
                    name: None,
                };
                let bytes = serde_json::to_vec_pretty(&id).map_err(|e| err(e.to_string()))?;
                atomic_write(&path, &bytes).map_err(|e| err(format!("cannot write: {e}")))?;
                Ok((id, true))
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
