//! The Mediator's own identity and what it remembers about devices, in one directory
//! (default `$HOME/.ocf-mediator`, mode 0700):
//!
//! - `mediator.key`: its ECDSA P-256 key, PKCS#8 PEM, mode 0600;
//! - `mediator.crt`: a self-signed certificate for that key with CN `uuid:<mediator uuid>` (the
//!   client certificate it presents to devices; a device records its key as the owner's);
//! - `devices.json`: per device `di`, the SHA-256 of the key (SubjectPublicKeyInfo) of the TLS
//!   certificate the device presented during the ownership transfer that this Mediator
//!   completed, so that later connections are to the same device (a pin: the device's
//!   certificate is self-signed and cannot be checked against a CA). Mode 0600.
//!
//! Files are written to a temporary name and renamed into place.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ocf::x509;
use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, KeyPair,
    KeyUsagePurpose, PublicKeyData, PKCS_ECDSA_P256_SHA256,
};
use serde::{Deserialize, Serialize};

pub const KEY_FILE: &str = "mediator.key";
pub const CERT_FILE: &str = "mediator.crt";
pub const DEVICES_FILE: &str = "devices.json";

/// The Mediator's key and certificate.
pub struct Identity {
    pub dir: PathBuf,
    /// Lower-case UUID from the certificate's CN.
    pub uuid: String,
    pub cert_pem: String,
    /// The DER certificate.
    pub cert_der: Vec<u8>,
    key_pem: String,
    /// SHA-256 of the certificate's SubjectPublicKeyInfo, lower-case hex.
    pub spki_sha256: String,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("dir", &self.dir)
            .field("uuid", &self.uuid)
            .field("spki_sha256", &self.spki_sha256)
            .finish_non_exhaustive()
    }
}

/// `$HOME/.ocf-mediator`, or `.ocf-mediator` in the working directory without `$HOME`.
pub fn default_dir() -> PathBuf {
    match std::env::var_os("HOME") {
        Some(h) if !h.is_empty() => PathBuf::from(h).join(".ocf-mediator"),
        _ => PathBuf::from(".ocf-mediator"),
    }
}

/// A random (version 4) UUID, lower case.
pub fn random_uuid() -> Result<String, String> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).map_err(|e| format!("no randomness from the OS: {e}"))?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = x509::hex(&b);
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    ))
}

impl Identity {
    /// Loads the identity in `dir`, creating the directory (0700), the key and the certificate
    /// when missing. Returns whether it was created.
    pub fn load_or_create(dir: &Path) -> Result<(Identity, bool), String> {
        ensure_private_dir(dir)?;
        let key_path = dir.join(KEY_FILE);
        let cert_path = dir.join(CERT_FILE);
        let mut created = false;
        let key = if key_path.exists() {
            check_private_file(&key_path)?;
            let pem = fs::read_to_string(&key_path)
                .map_err(|e| format!("{}: {e}", key_path.display()))?;
            KeyPair::from_pem(&pem)
                .map_err(|e| format!("{}: not a usable key: {e}", key_path.display()))?
        } else {
            let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
                .map_err(|e| format!("cannot make a key: {e}"))?;
            write_private(&key_path, key.serialize_pem().as_bytes())?;
            let _ = fs::remove_file(&cert_path); // a certificate for another key is useless
            created = true;
            key
        };
        if !key.is_compatible(&PKCS_ECDSA_P256_SHA256) {
            return Err(format!(
                "{}: the key is not an ECDSA P-256 key",
                key_path.display()
            ));
        }
        if !cert_path.exists() {
            let cert = self_signed(&key, &random_uuid()?)?;
            write_private(&cert_path, cert.as_bytes())?;
            created = true;
        }
        let cert_pem =
            fs::read_to_string(&cert_path).map_err(|e| format!("{}: {e}", cert_path.display()))?;
        let cert_der = x509::certificates_from_pem(&cert_pem)
            .map_err(|e| format!("{}: {e}", cert_path.display()))?
            .remove(0);
        let info = x509::Certificate::from_der(&cert_der)
            .map_err(|e| format!("{}: {e}", cert_path.display()))?;
        let uuid = info
            .cn_uuid()
            .ok_or_else(|| format!("{}: the subject CN is not uuid:<UUID>", cert_path.display()))?;
        let key_spki = sha256_hex(&key.subject_public_key_info());
        if key_spki != x509::hex(&info.spki_sha256()) {
            return Err(format!(
                "{} is not the certificate of {}; remove it and a new one is made",
                cert_path.display(),
                key_path.display()
            ));
        }
        Ok((
            Identity {
                dir: dir.to_path_buf(),
                uuid,
                cert_pem,
                cert_der: cert_der.to_vec(),
                key_pem: key.serialize_pem(),
                spki_sha256: key_spki,
            },
            created,
        ))
    }

    /// The private key, PKCS#8 PEM. Never print it.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    pub fn key_path(&self) -> PathBuf {
        self.dir.join(KEY_FILE)
    }

    pub fn cert_path(&self) -> PathBuf {
        self.dir.join(CERT_FILE)
    }

    pub fn devices_path(&self) -> PathBuf {
        self.dir.join(DEVICES_FILE)
    }
}

/// A self-signed certificate for `key`, CN `uuid:<uuid>`, EKUs clientAuth and serverAuth.
fn self_signed(key: &KeyPair, uuid: &str) -> Result<String, String> {
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(|e| e.to_string())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("uuid:{uuid}"));
    params.distinguished_name = dn;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyAgreement,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ClientAuth,
        ExtendedKeyUsagePurpose::ServerAuth,
    ];
    params
        .self_signed(key)
        .map(|c| c.pem())
        .map_err(|e| format!("cannot make the Mediator's certificate: {e}"))
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    x509::hex(&Sha256::digest(bytes))
}

/// Creates `dir` with mode 0700 if missing; warns about an existing one others can read.
fn ensure_private_dir(dir: &Path) -> Result<(), String> {
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        // The umask may have taken bits away, never added: set it exactly.
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .map_err(|e| format!("{}: {e}", dir.display()))?;
        return Ok(());
    }
    let meta = fs::metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if !meta.is_dir() {
        return Err(format!("{} is not a directory", dir.display()));
    }
    if meta.permissions().mode() & 0o077 != 0 {
        eprintln!(
            "ocf-mediator: warning: {} can be read by others (mode {:o}); it holds the Mediator's private key",
            dir.display(),
            meta.permissions().mode() & 0o777
        );
    }
    Ok(())
}

fn check_private_file(path: &Path) -> Result<(), String> {
    let meta = fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(format!(
            "{} can be read by others (mode {:o}): chmod 600 it, or remove it to make a new identity",
            path.display(),
            meta.permissions().mode() & 0o777
        ));
    }
    Ok(())
}

/// Writes `bytes` to `path` with mode 0600, through a temporary file renamed into place.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    result.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        format!("cannot write {}: {e}", path.display())
    })
}

/// What the Mediator remembers about a device it took ownership of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinnedDevice {
    /// SHA-256 of the device certificate's SubjectPublicKeyInfo (its key), lower-case hex.
    pub spki_sha256: String,
    /// SHA-256 of the whole DER certificate seen at the ownership transfer (for reference:
    /// the key is what is checked, so a re-issued certificate for the same key is fine).
    pub cert_sha256: String,
    /// The endpoint used.
    pub endpoint: String,
    /// When ownership was taken (Unix seconds).
    pub owned_since: u64,
}

/// `devices.json`: `{"devices": {"<di>": PinnedDevice}}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Devices {
    #[serde(default)]
    pub devices: BTreeMap<String, PinnedDevice>,
}

impl Devices {
    /// Loads `devices.json` from `dir` (empty when missing).
    pub fn load(dir: &Path) -> Result<Devices, String> {
        let path = dir.join(DEVICES_FILE);
        match fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Devices::default()),
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }

    pub fn save(&self, dir: &Path) -> Result<(), String> {
        let mut text = serde_json::to_vec_pretty(self).map_err(|e| e.to_string())?;
        text.push(b'\n');
        write_private(&dir.join(DEVICES_FILE), &text)
    }

    /// The device whose key has this fingerprint.
    pub fn by_key(&self, spki_sha256: &str) -> Option<(&str, &PinnedDevice)> {
        self.devices
            .iter()
            .find(|(_, d)| d.spki_sha256.eq_ignore_ascii_case(spki_sha256))
            .map(|(di, d)| (di.as_str(), d))
    }
}

/// Checks a device's presented key against the pin for `di`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PinCheck {
    /// Never onboarded by this Mediator: nothing to compare with.
    Unknown,
    /// The key is the one recorded at the ownership transfer.
    Match,
    /// Another key: a different device or a man in the middle.
    Mismatch { pinned: String },
}

pub fn check_pin(devices: &Devices, di: &str, spki_sha256: &str) -> PinCheck {
    match devices.devices.get(&di.to_ascii_lowercase()) {
        None => PinCheck::Unknown,
        Some(d) if d.spki_sha256.eq_ignore_ascii_case(spki_sha256) => PinCheck::Match,
        Some(d) => PinCheck::Mismatch {
            pinned: d.spki_sha256.clone(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(tag: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("ocf-mediator-test-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn identity_is_created_private_and_reloaded() {
        let dir = temp("identity").join("nested");
        let (id, created) = Identity::load_or_create(&dir).unwrap();
        assert!(created);
        assert!(ocf::security::is_uuid(&id.uuid), "{}", id.uuid);
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&id.key_path()), 0o600);
        assert_eq!(mode(&id.cert_path()), 0o600);
        assert!(id.key_pem().starts_with("-----BEGIN PRIVATE KEY-----"));
        assert!(id.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        let info = x509::Certificate::from_der(&id.cert_der).unwrap();
        assert_eq!(
            info.subject_cn(),
            Some(format!("uuid:{}", id.uuid).as_str())
        );
        // The Debug form has neither the key nor the certificate.
        let dbg = format!("{id:?}");
        assert!(!dbg.contains("PRIVATE"), "{dbg}");

        let (again, created) = Identity::load_or_create(&dir).unwrap();
        assert!(!created);
        assert_eq!(again.uuid, id.uuid);
        assert_eq!(again.spki_sha256, id.spki_sha256);

        // A lost certificate is made again for the same key (the key is what devices know).
        fs::remove_file(id.cert_path()).unwrap();
        let (third, created) = Identity::load_or_create(&dir).unwrap();
        assert!(created);
        assert_eq!(third.spki_sha256, id.spki_sha256);

        // A key others can read is refused.
        fs::set_permissions(id.key_path(), fs::Permissions::from_mode(0o644)).unwrap();
        assert!(Identity::load_or_create(&dir)
            .unwrap_err()
            .contains("chmod 600"));
        let _ = fs::remove_dir_all(dir.parent().unwrap());
    }

    #[test]
    fn two_identities_differ() {
        let a = temp("a");
        let b = temp("b");
        let (ia, _) = Identity::load_or_create(&a).unwrap();
        let (ib, _) = Identity::load_or_create(&b).unwrap();
        assert_ne!(ia.uuid, ib.uuid);
        assert_ne!(ia.spki_sha256, ib.spki_sha256);
        let _ = fs::remove_dir_all(a);
        let _ = fs::remove_dir_all(b);
    }

    #[test]
    fn random_uuids_are_version_4() {
        let u = random_uuid().unwrap();
        assert!(ocf::security::is_uuid(&u));
        assert_eq!(&u[14..15], "4");
        assert!("89ab".contains(&u[19..20]));
        assert_ne!(u, random_uuid().unwrap());
    }

    #[test]
    fn devices_are_pinned_by_key() {
        let dir = temp("pins");
        fs::create_dir_all(&dir).unwrap();
        let mut devs = Devices::load(&dir).unwrap();
        assert!(devs.devices.is_empty());
        devs.devices.insert(
            "aaaaaaaa-0000-0000-0000-000000000001".into(),
            PinnedDevice {
                spki_sha256: "ab".repeat(32),
                cert_sha256: "cd".repeat(32),
                endpoint: "coaps+tcp://127.0.0.1:1".into(),
                owned_since: 1,
            },
        );
        devs.save(&dir).unwrap();
        assert_eq!(mode(&dir.join(DEVICES_FILE)), 0o600);
        let back = Devices::load(&dir).unwrap();
        assert_eq!(back, devs);
        let di = "AAAAAAAA-0000-0000-0000-000000000001";
        assert_eq!(check_pin(&back, di, &"AB".repeat(32)), PinCheck::Match);
        assert_eq!(
            check_pin(&back, di, &"00".repeat(32)),
            PinCheck::Mismatch {
                pinned: "ab".repeat(32)
            }
        );
        assert_eq!(
            check_pin(&back, "bbbbbbbb-0000-0000-0000-000000000001", "00"),
            PinCheck::Unknown
        );
        assert_eq!(
            back.by_key(&"ab".repeat(32)).map(|(d, _)| d),
            Some("aaaaaaaa-0000-0000-0000-000000000001")
        );
        fs::write(dir.join(DEVICES_FILE), "{").unwrap();
        assert!(Devices::load(&dir).is_err());
        let _ = fs::remove_dir_all(dir);
    }
}
