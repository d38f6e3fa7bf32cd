//! Device security in the daemon (DESIGN.md §4): the files and the cryptography
//! around the sans-IO core. Every access rule is in [`ocf::server`] and [`ocf::security`].
//!
//! - **State**: `STATE/security.cbor`, written atomically with mode 0600 whenever the server
//!   says so ([`ocf::server::Event::PersistSecurityState`], [`crate::server::Agent`]); loaded
//!   and repaired at start by [`crate::boot`] (a file that cannot be used is moved aside and the
//!   device starts unowned). The identity key stays in `STATE/identity.key` ([`crate::tls`]).
//! - **Setup PIN** ([`load_or_create_pin`]): `--pin-file` (factory data, its first line) or
//!   `STATE/pin`; a device with neither makes a random one, stores it (0600) and prints it once
//!   on stdout (`ocf-agent: setup PIN NNNNNNNN`), never through the log.
//! - **Credentials** ([`Credentials`]): the identity key, the secure endpoint's certificate
//!   (self-signed for the key, or the manufacturer's), the CSR of `/oic/sec/csr`, and the TLS
//!   client configuration of the cloud link from `/oic/sec/cred`.
//! - **The local part of a factory reset** ([`wipe_and_renew`]), shared by the running agent,
//!   the boot-time recovery and the offline console command.
//!
//! Never logged: the PIN, keys, `at`, tokens, request bodies.

use std::cell::RefCell;
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;

use ocf::security::{Pin, SecurityState};
use rcgen::KeyPair;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, ServerConfig};
use tracing::{error, warn};

#[cfg(feature = "dtls")]
use crate::dtls_context::{self, DtlsContext};
use crate::server::Agent;
use crate::state::{atomic_write, report_and_quarantine, Identity};
use crate::tls::{self, CloudCredentials};
use crate::tls_server::{self, ServerIdentity};

/// The persisted [`SecurityState`] (CBOR) in the state directory.
pub const STATE_FILE: &str = crate::state::SECURITY_FILE;
/// The setup PIN the device made for itself, in the state directory.
pub const PIN_FILE: &str = "pin";

/// Fills `buf` from the operating system's CSPRNG. There is no safe way to go on without
/// randomness (the PIN, the SPAKE2 scalars), so a failure stops the process.
pub fn random_fill(buf: &mut [u8]) {
    if let Err(e) = getrandom::fill(buf) {
        error!("the operating system gives no random numbers: {e}");
        std::process::abort();
    }
}

/// The setup PIN: the first line of `pin_file` if given and present, else `STATE/pin`; if
/// neither exists a random PIN is made and stored in `STATE/pin` (0600). Returns the PIN and
/// whether it was just created (then the caller prints it once). A file whose first line is not
/// 8 digits is an error naming the file (its content is never echoed).
pub fn load_or_create_pin(
    pin_file: Option<&Path>,
    state_dir: &Path,
) -> Result<(Pin, bool), String> {
    fn read_first_line(path: &Path) -> io::Result<String> {
        let text = std::fs::read(path)?;
        let first = text.split(|b| *b == b'\n').next().unwrap_or_default();
        Ok(String::from_utf8_lossy(first).into_owned())
    }
    let parse = |path: &Path, line: &str| {
        Pin::new(line).map_err(|_| {
            format!(
                "{}: the first line is not an 8-digit setup PIN",
                path.display()
            )
        })
    };
    if let Some(path) = pin_file {
        match read_first_line(path) {
            Ok(line) => return Ok((parse(path, &line)?, false)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                warn!(
                    "{} does not exist; using the setup PIN of the state directory",
                    path.display()
                );
            }
            Err(e) => return Err(format!("{}: cannot read: {e}", path.display())),
        }
    }
    let path = state_dir.join(PIN_FILE);
    match read_first_line(&path) {
        Ok(line) => match Pin::new(line.trim()) {
            Ok(pin) => Ok((pin, false)),
            Err(_) => {
                // The device's own PIN file is state, not factory data: a damaged one must not
                // stop the device for good. A new PIN is made and shown on the console.
                report_and_quarantine(
                    &path,
                    "the first line is not an 8-digit setup PIN",
                    "a new setup PIN is made and shown on the console",
                );
                create_pin(&path)
            }
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => create_pin(&path),
        Err(e) => Err(format!("{}: cannot read: {e}", path.display())),
    }
}

fn create_pin(path: &Path) -> Result<(Pin, bool), String> {
    let pin = Pin::generate(&mut random_fill);
    atomic_write(path, format!("{}\n", pin.expose()).as_bytes())
        .map_err(|e| format!("{}: cannot write: {e}", path.display()))?;
    Ok((pin, true))
}

#[cfg(test)]
/// Loads `STATE/security.cbor`, or the factory state of device `di` if there is none (then
/// `true`). A file that cannot be read or used, or that belongs to another device, is an error
/// naming it.
pub fn load_state(state_dir: &Path, di: &str) -> Result<(SecurityState, bool), String> {
    let path = state_dir.join(STATE_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => {
            let state =
                SecurityState::from_cbor(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
            if !state.di().eq_ignore_ascii_case(di) {
                return Err(format!(
                    "{}: it belongs to device {}, not to this device ({di})",
                    path.display(),
                    state.di()
                ));
            }
            Ok((state, false))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok((SecurityState::new(di), true)),
        Err(e) => Err(format!("{}: cannot read: {e}", path.display())),
    }
}

/// Writes `STATE/security.cbor` atomically (0600).
pub fn save_state(state_dir: &Path, state: &SecurityState) -> io::Result<()> {
    atomic_write(&state_dir.join(STATE_FILE), &state.to_cbor())
}

/// The device's keys and certificates, and the TLS configurations made from them.
pub struct Credentials {
    dir: PathBuf,
    dev_mode: bool,
    key: RefCell<KeyPair>,
    /// The secure endpoint presents a manufacturer certificate (kept across factory resets).
    manufacturer: Option<(ServerIdentity, Arc<ServerConfig>)>,
    /// The DTLS endpoint's cookie key, fresh at each start.
    #[cfg_attr(not(feature = "dtls"), allow(dead_code))]
    cookie_key: [u8; 32],
    /// The DTLS endpoint's context, once a peer needed it (dropped when the certificate is
    /// renewed).
    #[cfg(feature = "dtls")]
    dtls: RefCell<Option<DtlsContext>>,
}

impl Credentials {
    /// The credentials of the state directory `dir`; `manufacturer` is the manufacturer
    /// certificate and key for the secure endpoint, if any.
    pub fn new(
        dir: PathBuf,
        dev_mode: bool,
        key: KeyPair,
        manufacturer: Option<ServerIdentity>,
    ) -> Result<Credentials, String> {
        let manufacturer = match manufacturer {
            Some(m) => {
                let config = tls_server::server_config(&m)?;
                Some((m, config))
            }
            None => None,
        };
        let mut cookie_key = [0u8; 32];
        random_fill(&mut cookie_key);
        Ok(Credentials {
            dir,
            dev_mode,
            key: RefCell::new(key),
            manufacturer,
            cookie_key,
            #[cfg(feature = "dtls")]
            dtls: RefCell::new(None),
        })
    }

    /// Whether the endpoints present a manufacturer certificate.
    pub fn has_manufacturer_certificate(&self) -> bool {
        self.manufacturer.is_some()
    }

    /// The DTLS endpoint's context for device `di`, made when first needed: OpenSSL's
    /// initialisation and the context cost ~0.4 MiB of heap and ~2.7 MiB of mapped library,
    /// which a device that never sees a DTLS peer does not pay. [`Credentials::renew_endpoints`]
    /// drops it, so the next one has the new certificate.
    #[cfg(feature = "dtls")]
    pub fn dtls_context(&self, di: &str) -> Result<DtlsContext, String> {
        if let Some(c) = self.dtls.borrow().as_ref() {
            return Ok(c.clone());
        }
        let c = self.make_dtls_context(di)?;
        *self.dtls.borrow_mut() = Some(c.clone());
        Ok(c)
    }

    #[cfg(feature = "dtls")]
    fn make_dtls_context(&self, di: &str) -> Result<DtlsContext, String> {
        match &self.manufacturer {
            Some((identity, _)) => {
                dtls_context::context(&identity.chain, &identity.key, self.cookie_key)
            }
            None => {
                let identity = tls_server::self_signed(&self.key.borrow(), di)?;
                dtls_context::context(&identity.chain, &identity.key, self.cookie_key)
            }
        }
    }

    /// After `di` or the identity key changed: the secure endpoints' certificates (coaps+tcp,
    /// DTLS) and the CSR of `/oic/sec/csr`.
    pub fn renew_endpoints(&self, agent: &Agent, di: &str) {
        match self.server_config(di) {
            Ok(c) => agent.set_tls_config(c),
            Err(e) => error!("cannot renew the server certificate: {e}"),
        }
        #[cfg(feature = "dtls")]
        self.dtls.borrow_mut().take();
        match self.csr_pem(di) {
            Ok(pem) => agent.server.borrow_mut().set_csr(pem),
            Err(e) => error!("cannot make the CSR: {e}"),
        }
    }

    /// The development mode (`--insecure-dev`).
    pub fn dev_mode(&self) -> bool {
        self.dev_mode
    }

    /// The secure endpoint's TLS configuration for device `di`: the manufacturer certificate,
    /// else a self-signed one for the identity key with CN `uuid:<di>`.
    pub fn server_config(&self, di: &str) -> Result<Arc<ServerConfig>, String> {
        if let Some((_, c)) = &self.manufacturer {
            return Ok(c.clone());
        }
        let identity = tls_server::self_signed(&self.key.borrow(), di)?;
        tls_server::server_config(&identity)
    }

    /// The CSR of `/oic/sec/csr`: PEM, for the identity key, CN `uuid:<di>`.
    pub fn csr_pem(&self, di: &str) -> Result<String, String> {
        tls::csr_pem(&self.key.borrow(), di)
    }

    /// After a factory reset: the new identity key.
    pub fn set_key(&self, key: KeyPair) {
        *self.key.borrow_mut() = key;
    }

    /// The TLS client configuration for the cloud `sid`: the identity certificate of
    /// `/oic/sec/cred` for `di` with the identity key, and the trust anchors provisioned for
    /// `sid` (else every trust anchor). In the development mode the interim files stand in for
    /// what `/oic/sec/cred` lacks.
    pub fn cloud_client_config(
        &self,
        state: &SecurityState,
        sid: &str,
    ) -> Result<Arc<ClientConfig>, String> {
        let di = state.di().to_string();
        let (chain, mut anchors) = {
            let creds = state.creds();
            let chain = creds.identity_chain(&di).map(|c| c.certificates_der());
            let mut anchors: Vec<CertificateDer<'static>> = creds
                .trust_anchors_for(sid)
                .flat_map(|c| c.certificates_der())
                .collect();
            if anchors.is_empty() {
                anchors = creds
                    .trust_anchors()
                    .flat_map(|c| c.certificates_der())
                    .collect();
            }
            (chain, anchors)
        };
        let chain = match chain {
            Some(chain) => chain,
            None if self.dev_mode => tls::file_credentials(&self.dir)?.chain,
            None => {
                return Err(format!(
                    "no identity certificate for uuid:{di} in /oic/sec/cred"
                ))
            }
        };
        if anchors.is_empty() {
            if !self.dev_mode {
                return Err("no trust anchor for the cloud in /oic/sec/cred".into());
            }
            anchors = tls::file_anchors(&self.dir)?;
        }
        let key = tls::private_key_der(&self.key.borrow());
        tls::client_config_from(
            CloudCredentials {
                chain,
                key,
                anchors,
            },
            sid,
        )
    }
}

/// How a factory reset went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResetReport {
    /// The device's new `di`.
    pub di: String,
    /// The cloud was told (or there was no registration to tell it about).
    pub cloud_told: bool,
    /// What could not be written (the reset is then finished on the next start).
    pub error: Option<String>,
}

/// The files of a local reset, see [`wipe_and_renew`].
pub struct Renewed {
    pub identity: Option<Identity>,
    pub key: Option<KeyPair>,
    pub error: Option<String>,
}

/// The local part of a factory reset (OCF-PROTOCOL.md §9 step 2), shared by the running agent,
/// the boot-time recovery and the offline console command. The caller has recorded the reset in
/// `security.cbor` first (`dos.s` RESET, `p` set), so a crash anywhere in here is finished on the
/// next start. In order: quarantined copies of state files, the cloud state and the interim
/// cloud credentials are removed, a new
/// identity key and a new `di` (iotivity-lite makes a new device UUID at RESET) are written, and
/// last the security state: RFOTM, unowned, no credentials, no ACEs, which ends the reset.
///
/// On an error the state in memory is reset all the same (the device must not stay owned), but
/// the file keeps the reset pending.
/// Renews the endpoints' certificates and the CSR whenever an ownership transfer gives the
/// device a new `di` (OCF Security §7.3.1: the Mediator may write `doxm.deviceuuid`).
pub async fn follow_di_changes(
    agent: Rc<Agent>,
    credentials: Rc<Credentials>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut changes = agent.di_changes();
    loop {
        tokio::select! {
            changed = changes.changed() => {
                if changed.is_err() {
                    return;
                }
                let di = changes.borrow_and_update().clone();
                if let Some(di) = di {
                    credentials.renew_endpoints(&agent, &di);
                }
            }
            _ = stop.changed() => return,
        }
    }
}

pub fn wipe_and_renew(dir: &Path, state: &mut SecurityState) -> Renewed {
    let mut errors = Vec::new();
    // Copies moved aside at some start may hold an old key, tokens or the owner's credentials.
    if let Err(e) = crate::state::remove_quarantined(dir) {
        errors.push(format!(
            "{}: cannot remove quarantined files: {e}",
            dir.display()
        ));
    }
    for name in [crate::state::CLOUD_FILE, tls::IDENTITY_CERT, tls::CLOUD_CA] {
        let path = dir.join(name);
        if let Err(e) = crate::state::remove(&path) {
            errors.push(format!("{}: cannot remove: {e}", path.display()));
        }
    }
    let key = tls::regenerate_identity_key(dir)
        .map_err(|e| errors.push(e))
        .ok();
    let identity = Identity::renew_di(dir)
        .map_err(|e| errors.push(e.to_string()))
        .ok();
    let di = identity
        .as_ref()
        .map_or_else(|| uuid::Uuid::new_v4().to_string(), |i| i.di.clone());
    state.reset_with_deviceuuid(&di);
    if errors.is_empty() {
        if let Err(e) = save_state(dir, state) {
            errors.push(format!(
                "{}: cannot write: {e}",
                dir.join(STATE_FILE).display()
            ));
        }
    }
    let _ = state.take_dirty();
    Renewed {
        identity,
        key,
        error: (!errors.is_empty()).then(|| errors.join("; ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ocf::security::DosState;
    use std::os::unix::fs::PermissionsExt;

    const DI: &str = "c0ffee00-0000-4000-8000-000000000001";

    fn temp_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ocf-security-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        crate::state::ensure_dir(&d).unwrap();
        d
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn pin_is_created_once_with_mode_0600_then_kept() {
        let dir = temp_dir("pin-created");
        let (a, created) = load_or_create_pin(None, &dir).unwrap();
        assert!(created);
        assert_eq!(a.expose().len(), 8);
        assert!(a.expose().bytes().all(|b| b.is_ascii_digit()));
        assert_eq!(mode(&dir.join(PIN_FILE)), 0o600);
        assert_eq!(
            std::fs::read_to_string(dir.join(PIN_FILE)).unwrap(),
            format!("{}\n", a.expose())
        );
        let (b, created) = load_or_create_pin(None, &dir).unwrap();
        assert!(!created, "printed once: not created again");
        assert_eq!(a.expose(), b.expose());
        // A missing --pin-file falls back to the state directory's PIN.
        let (c, created) = load_or_create_pin(Some(&dir.join("absent")), &dir).unwrap();
        assert!(!created);
        assert_eq!(c.expose(), a.expose());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn pin_comes_from_the_factory_file_first_line() {
        let dir = temp_dir("pin-file");
        let file = dir.join("factory-pin");
        std::fs::write(&file, "12345678\nserial 42\n").unwrap();
        let (pin, created) = load_or_create_pin(Some(&file), &dir).unwrap();
        assert!(!created);
        assert_eq!(pin.expose(), "12345678");
        assert!(!dir.join(PIN_FILE).exists(), "no PIN of its own is made");
        std::fs::write(&file, "  87654321  \r\n").unwrap();
        assert_eq!(
            load_or_create_pin(Some(&file), &dir).unwrap().0.expose(),
            "87654321"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn malformed_pin_files_are_errors_naming_the_file_without_the_content() {
        let dir = temp_dir("pin-bad");
        let file = dir.join("factory-pin");
        for bad in [
            "1234567",
            "123456789",
            "1234abcd",
            "",
            "\n12345678",
            "12 345678",
        ] {
            std::fs::write(&file, bad).unwrap();
            let e = load_or_create_pin(Some(&file), &dir).unwrap_err();
            assert!(
                e.contains("factory-pin") && e.contains("8-digit"),
                "{bad:?}: {e}"
            );
            if !bad.trim().is_empty() {
                assert!(
                    !e.contains(bad.trim()),
                    "the content must not be echoed: {e}"
                );
            }
        }
        // The device's own PIN file is state: a damaged one is moved aside and a new PIN made
        // (and shown), instead of stopping the device for good.
        std::fs::write(dir.join(PIN_FILE), "1234567x\n").unwrap();
        let (pin, created) = load_or_create_pin(None, &dir).unwrap();
        assert!(created, "a new PIN, to be shown on the console");
        assert_eq!(
            std::fs::read_to_string(dir.join(PIN_FILE)).unwrap(),
            format!("{}\n", pin.expose())
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("pin.corrupt")).unwrap(),
            "1234567x\n"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn security_state_round_trip_with_mode_0600() {
        let dir = temp_dir("state");
        let (mut state, created) = load_state(&dir, DI).unwrap();
        assert!(created);
        assert_eq!(state.dos(), DosState::Rfotm);
        // Something to keep: an ACE-free change of dos is refused while unowned, so go to RESET
        // and back through a reset, which is a real change of the persisted form.
        state.begin_factory_reset();
        assert!(state.reset_pending());
        save_state(&dir, &state).unwrap();
        assert_eq!(mode(&dir.join(STATE_FILE)), 0o600);
        let (loaded, created) = load_state(&dir, DI).unwrap();
        assert!(!created);
        assert!(loaded.reset_pending());
        assert_eq!(loaded.to_cbor(), state.to_cbor());
        // Another device's state is refused, naming the file.
        let e = load_state(&dir, "c0ffee00-0000-4000-8000-000000000002").unwrap_err();
        assert!(e.contains(STATE_FILE) && e.contains("belongs"), "{e}");
        // A corrupt file is an error naming it.
        std::fs::write(dir.join(STATE_FILE), b"\xa1garbage").unwrap();
        let e = load_state(&dir, DI).unwrap_err();
        assert!(
            e.contains(&dir.join(STATE_FILE).display().to_string()),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn csr_is_for_the_identity_key_with_the_device_cn() {
        let dir = temp_dir("csr");
        let (key, _) = tls::ensure_identity_key(&dir).unwrap();
        let creds = Credentials::new(dir.clone(), false, key, None).unwrap();
        let pem = creds.csr_pem(DI).unwrap();
        assert!(pem.starts_with("-----BEGIN CERTIFICATE REQUEST-----"));
        assert!(!pem.contains("PRIVATE KEY"));
        let csr = ocf::x509::Csr::from_pem(&pem).unwrap();
        assert_eq!(csr.cn_uuid().as_deref(), Some(DI));
        let key = tls::ensure_identity_key(&dir).unwrap().0;
        assert_eq!(
            csr.spki_der,
            rcgen::PublicKeyData::subject_public_key_info(&key),
            "the CSR carries the identity key"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
