//! What the agent does with its state directory before it serves anything (OCF-PROTOCOL.md §9
//! "boot-time recovery"):
//!
//! 1. The security state (`security.cbor`) is read first: it is the journal of a factory reset
//!    (`dos.s` RESET with `p` set is written before anything is wiped).
//! 2. The identity (`identity.json`): a missing or unusable one is made again, with the `di` the
//!    security state records if there is one, so an owned device keeps its identity.
//! 3. The identity key (`identity.key`).
//! 4. An interrupted factory reset is finished ([`crate::security::wipe_and_renew`]): cloud
//!    state wiped, new key, new `di`, RFOTM. An unowned device forgets any cloud state.
//!
//! A file that exists but cannot be used (corrupt, unknown version, another device's) is moved
//! aside ([`state::quarantine`]) with an error naming it, and the agent starts in the safe state
//! that file's absence means: no security state = unowned in RFOTM (onboard again); no cloud
//! state = not registered. Only what cannot be repaired (the directory cannot be read or
//! written) stops the agent.

use std::io;
use std::path::Path;

use ocf::security::{DosState, SecurityState};
use rcgen::KeyPair;
use tracing::{info, warn};

use crate::security::{self, save_state, STATE_FILE};
use crate::state::{self, report_and_quarantine, Identity, IDENTITY_FILE};
use crate::{cloud, tls};

/// The state the agent starts with.
pub struct Boot {
    pub identity: Identity,
    pub identity_created: bool,
    pub key: KeyPair,
    pub key_created: bool,
    pub security: SecurityState,
    /// A factory reset that a restart interrupted was finished.
    pub reset_finished: bool,
}

/// Loads (and repairs) the state directory; see the module docs. `dev_mode` keeps the cloud
/// state of an unowned device (the development mode's cloud link does not need onboarding).
pub fn prepare(dir: &Path, dev_mode: bool) -> Result<Boot, String> {
    state::ensure_dir(dir)
        .map_err(|e| format!("{}: cannot create the state directory: {e}", dir.display()))?;

    remove_stale_temp_files(dir);

    // 1. The security state.
    let security_path = dir.join(STATE_FILE);
    let mut loaded = match std::fs::read(&security_path) {
        Ok(bytes) => match SecurityState::from_cbor(&bytes) {
            Ok(s) => Some(s),
            Err(e) => {
                report_and_quarantine(
                    &security_path,
                    &format!("unusable security state ({e})"),
                    "the device starts unowned (RFOTM) and must be onboarded again",
                );
                None
            }
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(format!("{}: cannot read: {e}", security_path.display())),
    };
    let pending = loaded.as_ref().is_some_and(SecurityState::reset_pending);
    // The di to keep if the identity file must be made again (not during a reset: that makes a
    // new one anyway).
    let recorded_di = loaded
        .as_ref()
        .filter(|_| !pending)
        .map(|s| s.di().to_string());

    // 2. The identity.
    let identity_path = dir.join(IDENTITY_FILE);
    let loaded_identity = if !identity_path.exists() && recorded_di.is_some() {
        // The file is missing but the security state knows the device: keep its di.
        Identity::create(dir, recorded_di.as_deref()).map(|id| (id, true))
    } else {
        Identity::load_or_create(dir)
    };
    let (mut identity, identity_created) = match loaded_identity {
        Ok(loaded) => loaded,
        Err(e) if identity_path.exists() => {
            report_and_quarantine(
                &identity_path,
                &e.reason,
                match &recorded_di {
                    Some(_) => "a new identity file keeps the di of the security state",
                    None => "the device gets a new identity",
                },
            );
            (
                Identity::create(dir, recorded_di.as_deref()).map_err(|e| e.to_string())?,
                true,
            )
        }
        Err(e) => return Err(e.to_string()),
    };
    if let Some(s) = &loaded {
        if !pending && !s.di().eq_ignore_ascii_case(&identity.di) {
            report_and_quarantine(
                &security_path,
                &format!(
                    "it belongs to device {}, not to this device ({})",
                    s.di(),
                    identity.di
                ),
                "the device starts unowned (RFOTM) and must be onboarded again",
            );
            loaded = None;
        }
    }

    // 3. The identity key.
    let key_path = dir.join(tls::IDENTITY_KEY);
    let (mut key, key_created) = match tls::ensure_identity_key(dir) {
        Ok(k) => k,
        Err(e) if key_path.exists() && tls::load_identity_key(&key_path).is_err() => {
            let owned = loaded.as_ref().is_some_and(|s| s.owner().is_some());
            report_and_quarantine(
                &key_path,
                &e,
                if owned {
                    "a new identity key is made; the identity certificate no longer matches it, \
                     so the device cannot reach its cloud until it is reset and onboarded again"
                } else {
                    "a new identity key is made"
                },
            );
            (tls::regenerate_identity_key(dir)?, true)
        }
        Err(e) => return Err(e),
    };

    // 4. Finish an interrupted reset; an unowned device forgets its cloud.
    let (mut security, created) = match loaded {
        Some(s) => (s, false),
        None => (SecurityState::new(&identity.di), true),
    };
    let reset_finished = security.reset_pending();
    if reset_finished {
        info!("finishing a factory reset that was interrupted");
        let outcome = security::wipe_and_renew(dir, &mut security);
        if let Some(e) = &outcome.error {
            warn!("the interrupted factory reset is not fully written: {e}");
        }
        if let Some(renewed) = outcome.identity {
            identity = renewed;
        }
        if let Some(renewed) = outcome.key {
            key = renewed;
        }
    } else {
        if !dev_mode && matches!(security.dos(), DosState::Rfotm | DosState::Reset) {
            let path = dir.join(cloud::STATE_FILE);
            if path.exists() {
                info!("the device is not owned: forgetting the cloud state");
                if let Err(e) = state::remove(&path) {
                    warn!("{}: cannot remove: {e}", path.display());
                }
            }
        }
        if created | security.take_dirty() {
            save_state(dir, &security)
                .map_err(|e| format!("{}: cannot write: {e}", security_path.display()))?;
        }
    }
    // Events of loading or finishing a reset need no action: nothing runs yet.
    let _ = security.take_events();
    let _ = security.take_dirty();
    Ok(Boot {
        identity,
        identity_created,
        key,
        key_created,
        security,
        reset_finished,
    })
}

/// Removes the temp files of writes a crash interrupted before their rename (`.NAME.tmp`, see
/// [`state::atomic_write`]): the file they were to replace is still whole, and they would
/// only sit there.
fn remove_stale_temp_files(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') && name.ends_with(".tmp") {
            info!("removing {name}, left by a write that a restart interrupted");
            if let Err(e) = state::remove(&entry.path()) {
                warn!("{}: cannot remove: {e}", entry.path().display());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::path::PathBuf;

    fn temp_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ocf-boot-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        state::ensure_dir(&d).unwrap();
        d
    }

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    fn owned_state(di: &str) -> SecurityState {
        // An owned state from the core's own test helper would need the OTM; a reset-pending
        // state is enough to tell "kept" from "fresh" where it matters.
        let mut s = SecurityState::new(di);
        let _ = s.take_dirty();
        s
    }

    #[test]
    fn first_start_makes_identity_key_and_state_with_mode_0600() {
        let dir = temp_dir("first");
        let b = prepare(&dir, false).unwrap();
        assert!(b.identity_created && b.key_created && !b.reset_finished);
        assert_eq!(b.security.di(), b.identity.di);
        for f in [IDENTITY_FILE, tls::IDENTITY_KEY, STATE_FILE] {
            assert_eq!(mode(&dir.join(f)), 0o600, "{f}");
        }
        let again = prepare(&dir, false).unwrap();
        assert!(!again.identity_created && !again.key_created);
        assert_eq!(again.identity, b.identity);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_corrupt_security_state_is_moved_aside_and_the_device_starts_unowned() {
        let dir = temp_dir("corrupt-security");
        let first = prepare(&dir, false).unwrap();
        std::fs::write(dir.join(cloud::STATE_FILE), b"registered, say").unwrap();
        std::fs::write(dir.join(STATE_FILE), b"\xa1\x61x\xff garbage").unwrap();
        let b = prepare(&dir, false).unwrap();
        assert_eq!(b.security.dos(), DosState::Rfotm);
        assert!(b.security.owner().is_none());
        assert_eq!(b.identity.di, first.identity.di, "the identity is kept");
        assert!(dir.join("security.cbor.corrupt").exists(), "moved aside");
        assert!(
            SecurityState::from_cbor(&std::fs::read(dir.join(STATE_FILE)).unwrap()).is_ok(),
            "a usable state replaces it"
        );
        assert!(
            !dir.join(cloud::STATE_FILE).exists(),
            "unowned: the cloud state is forgotten"
        );
        // A second bad file goes next to the first; the agent never refuses to start.
        std::fs::write(dir.join(STATE_FILE), b"").unwrap();
        prepare(&dir, false).unwrap();
        assert!(dir.join("security.cbor.corrupt.1").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_unknown_version_is_moved_aside_too() {
        let dir = temp_dir("version");
        let first = prepare(&dir, false).unwrap();
        let mut v: ciborium::Value =
            ciborium::from_reader(std::fs::read(dir.join(STATE_FILE)).unwrap().as_slice()).unwrap();
        if let ciborium::Value::Map(m) = &mut v {
            for (k, val) in m.iter_mut() {
                if k.as_text() == Some("version") {
                    *val = ciborium::Value::Integer(99.into());
                }
            }
        }
        let mut bytes = Vec::new();
        ciborium::into_writer(&v, &mut bytes).unwrap();
        std::fs::write(dir.join(STATE_FILE), &bytes).unwrap();
        let b = prepare(&dir, false).unwrap();
        assert_eq!(b.identity.di, first.identity.di);
        assert_eq!(
            std::fs::read(dir.join("security.cbor.corrupt")).unwrap(),
            bytes,
            "kept for a person to look at"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_corrupt_identity_is_remade_with_the_di_of_the_security_state() {
        let dir = temp_dir("corrupt-identity");
        let first = prepare(&dir, false).unwrap();
        save_state(&dir, &owned_state(&first.identity.di)).unwrap();
        std::fs::write(dir.join(IDENTITY_FILE), b"{\"version\":1,\"di\":").unwrap();
        let b = prepare(&dir, false).unwrap();
        assert_eq!(b.identity.di, first.identity.di);
        assert!(dir.join("identity.json.corrupt").exists());
        // Missing altogether: the same.
        std::fs::remove_file(dir.join(IDENTITY_FILE)).unwrap();
        let b = prepare(&dir, false).unwrap();
        assert_eq!(b.identity.di, first.identity.di);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn another_devices_security_state_is_moved_aside() {
        let dir = temp_dir("other");
        let first = prepare(&dir, false).unwrap();
        save_state(&dir, &owned_state("c0ffee00-0000-4000-8000-0000000000ff")).unwrap();
        let b = prepare(&dir, false).unwrap();
        assert_eq!(b.security.di(), first.identity.di);
        assert!(dir.join("security.cbor.corrupt").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn temp_files_of_interrupted_writes_are_removed() {
        let dir = temp_dir("tmp");
        let first = prepare(&dir, false).unwrap();
        std::fs::write(dir.join(".security.cbor.tmp"), b"half").unwrap();
        let b = prepare(&dir, false).unwrap();
        assert!(!dir.join(".security.cbor.tmp").exists());
        assert_eq!(b.identity, first.identity);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_corrupt_identity_key_is_replaced() {
        let dir = temp_dir("key");
        let first = prepare(&dir, false).unwrap();
        std::fs::write(
            dir.join(tls::IDENTITY_KEY),
            b"-----BEGIN PRIVATE KEY-----\nxx",
        )
        .unwrap();
        let b = prepare(&dir, false).unwrap();
        assert!(b.key_created);
        assert_ne!(b.key.public_key_raw(), first.key.public_key_raw());
        assert!(dir.join("identity.key.corrupt").exists());
        assert_eq!(mode(&dir.join(tls::IDENTITY_KEY)), 0o600);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_interrupted_factory_reset_is_finished_with_a_new_di_and_key() {
        let dir = temp_dir("reset");
        let first = prepare(&dir, false).unwrap();
        let mut s = first.security;
        s.begin_factory_reset();
        save_state(&dir, &s).unwrap();
        for name in [
            cloud::STATE_FILE,
            tls::IDENTITY_CERT,
            tls::CLOUD_CA,
            "identity.key.corrupt",
            "cloud.cbor.corrupt.2",
        ] {
            std::fs::write(dir.join(name), b"x").unwrap();
        }
        let b = prepare(&dir, false).unwrap();
        assert!(b.reset_finished);
        for name in ["identity.key.corrupt", "cloud.cbor.corrupt.2"] {
            assert!(
                !dir.join(name).exists(),
                "{name}: an old key or tokens survive"
            );
        }
        assert_ne!(b.identity.di, first.identity.di, "a new di");
        assert_eq!(b.identity.piid, first.identity.piid, "piid kept");
        assert_eq!(b.security.di(), b.identity.di);
        assert_eq!(b.security.dos(), DosState::Rfotm);
        assert!(!b.security.reset_pending());
        assert_ne!(b.key.public_key_raw(), first.key.public_key_raw());
        for name in [cloud::STATE_FILE, tls::IDENTITY_CERT, tls::CLOUD_CA] {
            assert!(!dir.join(name).exists(), "{name} wiped");
        }
        let persisted =
            SecurityState::from_cbor(&std::fs::read(dir.join(STATE_FILE)).unwrap()).unwrap();
        assert!(!persisted.reset_pending());
        assert_eq!(persisted.di(), b.identity.di);
        // The identity file was already renewed when the crash came: still consistent.
        let mut s = persisted;
        s.begin_factory_reset();
        save_state(&dir, &s).unwrap();
        Identity::renew_di(&dir).unwrap();
        let c = prepare(&dir, false).unwrap();
        assert_eq!(c.security.di(), c.identity.di);
        assert_eq!(c.security.dos(), DosState::Rfotm);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_unowned_device_forgets_its_cloud_state_unless_in_development_mode() {
        let dir = temp_dir("unowned");
        prepare(&dir, false).unwrap();
        std::fs::write(dir.join(cloud::STATE_FILE), b"x").unwrap();
        prepare(&dir, true).unwrap();
        assert!(
            dir.join(cloud::STATE_FILE).exists(),
            "kept in development mode"
        );
        prepare(&dir, false).unwrap();
        assert!(!dir.join(cloud::STATE_FILE).exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
