//! Keys for OCF's DTLS ownership transfer methods and owned PSK sessions, derived the way
//! iotivity-lite's device side derives them (so its onboarding tools and plgd's interoperate).
//! Pure functions: the daemon's DTLS layer hands in the handshake secrets and uses the keys.
//!
//! - Random PIN (`oxmsel` 1): [`pin_psk`], PBKDF2-HMAC-SHA256 (RFC 8018 §5.2) over the PIN's
//!   ASCII digits, salted with the device UUID's 16 raw bytes. The onboarding tool sends the
//!   PSK identity [`RDP_IDENTITY`] while the device is unowned.
//! - Owner PSK after a transfer: [`owner_psk`], the TLS 1.2 key block (RFC 5246 §6.3) of the
//!   transfer session used as the secret of a second P_SHA256 over the method's label and both
//!   UUIDs (OCF Security Specification §7.3.2).
//! - Owned sessions: the client's PSK identity is its UUID; [`psk_for_identity`] finds the
//!   `/oic/sec/cred` key for it.

use std::fmt;

use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use super::cred::CredStore;
use super::util::{is_uuid, wipe};

/// The PSK identity an onboarding tool sends for the Random PIN method (16 ASCII bytes, no NUL).
pub const RDP_IDENTITY: &[u8] = b"oic.sec.doxm.rdp";
/// PBKDF2 iterations of the Random PIN PSK (iotivity-lite's `oc_tls_pbkdf2`).
pub const PIN_ITERATIONS: u32 = 1000;
/// Length of the Random PIN PSK and of the owner PSK.
pub const PSK_LEN: usize = 16;
/// Length of a TLS 1.2 master secret (RFC 5246 §8.1).
pub const MASTER_SECRET_LEN: usize = 48;

/// `TLS_ECDHE_PSK_WITH_AES_128_CBC_SHA256` (RFC 5489).
pub const TLS_ECDHE_PSK_WITH_AES_128_CBC_SHA256: u16 = 0xC037;
/// `TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256` (RFC 5289).
pub const TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256: u16 = 0xC023;
/// `TLS_ECDHE_ECDSA_WITH_AES_128_CCM` (RFC 7251).
pub const TLS_ECDHE_ECDSA_WITH_AES_128_CCM: u16 = 0xC0AC;
/// `TLS_ECDHE_ECDSA_WITH_AES_256_CCM` (RFC 7251).
pub const TLS_ECDHE_ECDSA_WITH_AES_256_CCM: u16 = 0xC0AD;
/// `TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8` (RFC 7251).
pub const TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8: u16 = 0xC0AE;
/// `TLS_ECDHE_ECDSA_WITH_AES_256_CCM_8` (RFC 7251).
pub const TLS_ECDHE_ECDSA_WITH_AES_256_CCM_8: u16 = 0xC0AF;

/// The ownership transfer methods whose label goes into the owner PSK.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Oxm {
    /// `oxmsel` 0.
    JustWorks,
    /// `oxmsel` 1.
    RandomPin,
    /// `oxmsel` 2.
    MfgCert,
}

impl Oxm {
    /// The `doxm.oxmsel` value.
    pub fn id(self) -> u16 {
        match self {
            Oxm::JustWorks => 0,
            Oxm::RandomPin => 1,
            Oxm::MfgCert => 2,
        }
    }

    pub fn from_id(id: u16) -> Option<Oxm> {
        [Oxm::JustWorks, Oxm::RandomPin, Oxm::MfgCert]
            .into_iter()
            .find(|o| o.id() == id)
    }

    /// The label of the owner PSK derivation (ASCII, no NUL).
    pub fn label(self) -> &'static [u8] {
        match self {
            Oxm::JustWorks => b"oic.sec.doxm.jw",
            Oxm::RandomPin => b"oic.sec.doxm.rdp",
            Oxm::MfgCert => b"oic.sec.doxm.mfgcert",
        }
    }
}

/// The Random PIN PSK: PBKDF2-HMAC-SHA256 (RFC 8018 §5.2), password = the PIN as shown (its
/// ASCII digits), salt = the 16 raw bytes of `doxm.deviceuuid`, [`PIN_ITERATIONS`], 16 bytes.
pub fn pin_psk(pin: &[u8], device_uuid: &[u8; 16]) -> [u8; PSK_LEN] {
    let mut key = [0; PSK_LEN];
    pbkdf2::pbkdf2_hmac::<Sha256>(pin, device_uuid, PIN_ITERATIONS, &mut key);
    key
}

/// HMAC-SHA256 keyed with `secret` of any length. The key is padded (or first hashed) to the
/// block size here, as RFC 2104 §2 does, so keying cannot fail.
fn hmac_sha256(secret: &[u8]) -> Hmac<Sha256> {
    let mut block = [0u8; 64];
    if secret.len() > block.len() {
        block[..32].copy_from_slice(&Sha256::digest(secret));
    } else {
        block[..secret.len()].copy_from_slice(secret);
    }
    let mac = <Hmac<Sha256> as KeyInit>::new(&block.into());
    wipe(&mut block);
    mac
}

/// P_SHA256(secret, seed) (RFC 5246 §5), filling `out`; `seed` is the concatenation of its
/// parts. The TLS 1.2 PRF is this with `label ‖ seed` as the seed.
pub fn p_sha256(secret: &[u8], seed: &[&[u8]], out: &mut [u8]) {
    let keyed = hmac_sha256(secret);
    // A(1) = HMAC(secret, seed); A(i) = HMAC(secret, A(i-1)).
    let mut a = keyed.clone();
    for part in seed {
        a.update(part);
    }
    let mut a = a.finalize().into_bytes();
    for chunk in out.chunks_mut(32) {
        let mut block = keyed.clone();
        block.update(&a);
        for part in seed {
            block.update(part);
        }
        let block = block.finalize().into_bytes();
        chunk.copy_from_slice(&block[..chunk.len()]);
        let mut next = keyed.clone();
        next.update(&a);
        a = next.finalize().into_bytes();
    }
}

/// Length of the TLS 1.2 key block of `suite`: 2 × (MAC key + encryption key + fixed IV),
/// RFC 5246 §6.3. CBC suites have no fixed IV in TLS 1.2 (the IV travels in each record,
/// §6.2.3.2); CCM suites have no MAC key and a 4-byte implicit nonce part (RFC 6655 §3, which
/// RFC 7251 applies to ECDHE-ECDSA). `None` for a suite the DTLS methods do not use
/// (iotivity-lite would derive with an empty key block there; refuse instead).
pub fn key_block_len(suite: u16) -> Option<usize> {
    let (mac_key, enc_key, fixed_iv) = match suite {
        TLS_ECDHE_PSK_WITH_AES_128_CBC_SHA256 | TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256 => {
            (32, 16, 0)
        }
        TLS_ECDHE_ECDSA_WITH_AES_128_CCM | TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8 => (0, 16, 4),
        TLS_ECDHE_ECDSA_WITH_AES_256_CCM | TLS_ECDHE_ECDSA_WITH_AES_256_CCM_8 => (0, 32, 4),
        _ => return None,
    };
    Some(2 * (mac_key + enc_key + fixed_iv))
}

/// What the DTLS layer knows after the ownership transfer session's handshake.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionSecrets {
    pub master_secret: [u8; MASTER_SECRET_LEN],
    pub client_random: [u8; 32],
    pub server_random: [u8; 32],
    /// The negotiated cipher suite (IANA number).
    pub suite: u16,
}

impl fmt::Debug for SessionSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionSecrets {{ suite: {:#06x}, .. }}", self.suite)
    }
}

impl Drop for SessionSecrets {
    fn drop(&mut self) {
        wipe(&mut self.master_secret);
    }
}

/// The session's key block (RFC 5246 §6.3): PRF(master_secret, "key expansion",
/// server_random ‖ client_random), [`key_block_len`] bytes.
fn key_block(s: &SessionSecrets) -> Option<Vec<u8>> {
    let mut block = vec![0; key_block_len(s.suite)?];
    p_sha256(
        &s.master_secret,
        &[b"key expansion", &s.server_random, &s.client_random],
        &mut block,
    );
    Some(block)
}

/// The owner PSK of an ownership transfer: P_SHA256(key block, oxm label ‖ owner UUID ‖
/// device UUID), 16 bytes (OCF Security Specification §7.3.2; iotivity-lite's
/// `oc_sec_derive_owner_psk`). `device_uuid` is `doxm.deviceuuid` when the credential is
/// written. `None` for a suite without a [`key_block_len`].
pub fn owner_psk(
    s: &SessionSecrets,
    oxm: Oxm,
    owner_uuid: &[u8; 16],
    device_uuid: &[u8; 16],
) -> Option<[u8; PSK_LEN]> {
    let mut block = key_block(s)?;
    let mut key = [0; PSK_LEN];
    p_sha256(&block, &[oxm.label(), owner_uuid, device_uuid], &mut key);
    wipe(&mut block);
    Some(key)
}

/// The 16 raw bytes of a UUID in its 36-character text form.
pub fn uuid_bytes(text: &str) -> Option<[u8; 16]> {
    if !is_uuid(text) {
        return None;
    }
    let hex: Vec<u8> = text.bytes().filter(|b| *b != b'-').collect();
    let mut out = [0u8; 16];
    for (byte, pair) in out.iter_mut().zip(hex.chunks(2)) {
        let pair = std::str::from_utf8(pair).ok()?;
        *byte = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(out)
}

/// The lower-case text form of a UUID's 16 raw bytes.
pub fn uuid_text(bytes: &[u8; 16]) -> String {
    let mut s = String::with_capacity(36);
    for (i, b) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// The PSK of an owned session's client, by the PSK identity it sent: its UUID as 16 raw bytes
/// (what iotivity-lite and plgd send), or the 36-character text form, because command-line
/// DTLS clients (libcoap's `coap-client -u`, `openssl s_client -psk_identity`) cannot send
/// binary identities. The key is that of the newest symmetric pair-wise credential (credtype 1)
/// whose `subjectuuid` is that UUID; `None` for anything else, which fails the handshake.
/// [`RDP_IDENTITY`] is not special here: while unowned the caller checks it first.
pub fn psk_for_identity<'a>(identity: &[u8], creds: &'a CredStore) -> Option<&'a [u8]> {
    let subject = match identity.len() {
        16 => uuid_text(identity.try_into().ok()?),
        36 => std::str::from_utf8(identity)
            .ok()
            .filter(|s| is_uuid(s))?
            .to_ascii_lowercase(),
        _ => return None,
    };
    creds.psk_for(&subject)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::security::cred::CredUsage;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn arr<const N: usize>(s: &str) -> [u8; N] {
        hex(s).try_into().unwrap()
    }

    #[test]
    fn pin_psk_matches_pbkdf2_vectors() {
        // The research probe's vector; DTLS handshakes with `openssl s_client` used it.
        assert_eq!(
            pin_psk(b"12345678", &[0x22; 16]).to_vec(),
            hex("219a5ed21e798d7bd573f55ac9548116")
        );
        // Python: hashlib.pbkdf2_hmac('sha256', b"90210417", salt, 1000, 16).
        let salt = uuid_bytes("5a1e0b2c-9d4f-4e7a-8b3c-6d5e7f809112").unwrap();
        assert_eq!(
            pin_psk(b"90210417", &salt).to_vec(),
            hex("26a9736bbda645522578c48e4260f143")
        );
    }

    #[test]
    fn p_sha256_matches_the_published_tls12_prf_vector() {
        // TLS 1.2 PRF-SHA256 known answer (IETF TLS WG list), checked here with Python's hmac.
        let secret = hex("9bbe436ba940f017b17652849a71db35");
        let seed = hex("a0ba9f936cda311827a6f796ffd5198c");
        let mut out = [0u8; 100];
        p_sha256(&secret, &[b"test label", &seed], &mut out);
        assert_eq!(
            out.to_vec(),
            hex(concat!(
                "e3f229ba727be17b8d122620557cd453c2aab21d07c3d495329b52d4e61edb5a",
                "6b301791e90d35c9c9a46b4e14baf9af0fa022f7077def17abfd3797c0564bab",
                "4fbc91666e9def9b97fce34f796789baa48082d122ee42c5a72e5a5110fff701",
                "87347b66"
            ))
        );
        // Seed parts are concatenated; secrets longer than a block are hashed first.
        let mut split = [0u8; 100];
        p_sha256(
            &secret,
            &[b"test ", b"label", &seed[..3], &seed[3..]],
            &mut split,
        );
        assert_eq!(split, out);
        let long = [0x5c; 100];
        let mut a = [0u8; 20];
        let mut b = [0u8; 20];
        p_sha256(&long, &[b"x"], &mut a);
        p_sha256(&Sha256::digest(long), &[b"x"], &mut b);
        assert_eq!(a, b);
    }

    #[test]
    fn key_block_lengths_follow_the_suite() {
        assert_eq!(
            key_block_len(TLS_ECDHE_PSK_WITH_AES_128_CBC_SHA256),
            Some(96)
        );
        assert_eq!(
            key_block_len(TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256),
            Some(96)
        );
        assert_eq!(key_block_len(TLS_ECDHE_ECDSA_WITH_AES_128_CCM), Some(40));
        assert_eq!(key_block_len(TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8), Some(40));
        assert_eq!(key_block_len(TLS_ECDHE_ECDSA_WITH_AES_256_CCM), Some(72));
        assert_eq!(key_block_len(TLS_ECDHE_ECDSA_WITH_AES_256_CCM_8), Some(72));
        // AES-128-GCM (iotivity-lite uses a non-standard 120 there) and the rest: refused.
        assert_eq!(key_block_len(0xC02B), None);
        assert_eq!(key_block_len(0xFF00), None);
    }

    /// One OpenSSL 3.0 DTLS 1.2 handshake of the research probe: its secrets, OpenSSL's
    /// `export_keying_material("EXPORTER-probe", 32)` (RFC 5705: PRF(ms, label, cr ‖ sr)),
    /// and the owner PSK for owner 11…11, device 22…22, checked with Python's hmac.
    struct Handshake {
        suite: u16,
        ms: &'static str,
        cr: &'static str,
        sr: &'static str,
        exporter: &'static str,
        oxm: Oxm,
        owner_psk: &'static str,
    }

    const HANDSHAKES: [Handshake; 5] = [
        Handshake {
            suite: TLS_ECDHE_PSK_WITH_AES_128_CBC_SHA256,
            ms: "5db248171e98a2234ba44d763d1cf144009ae48e185ee9a41358b73f3e7afdff505a238e4a3741f6d562e6356b88e604",
            cr: "6a5fe77e44e260b7fd19d07466d2a7bcd6c00a24b90f4cfc37a179844a982ce5",
            sr: "138521fd9d123260e901168a4f4184db39202d2a26a9ab23cae44e5396cab817",
            exporter: "bd96aa77eeb82714e06e88c274873dd815d3fa10f805c81720bf3a2e36ab231e",
            oxm: Oxm::RandomPin,
            owner_psk: "55a2dcbc1404037562c7f748ba178b0a",
        },
        Handshake {
            suite: TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8,
            ms: "6fd60720f4cc2e8146c855ea385f875416cc14472ef4b0d989813ac50e78846de521aeffe1aa5caf84632779d8e529c5",
            cr: "f62910677e8c3f4228b5c74add17c9e4ea71ed658295d1bf8e526e59d59e5dbf",
            sr: "cb45a2a3662ecc44a6898d347857a707b78ace40272df4a2da5cc6a58d61650d",
            exporter: "cdf12297f803f09d0d9b42a1df2cdb733ed429206a1eb26985b2d7c5a1624701",
            oxm: Oxm::MfgCert,
            owner_psk: "86fabd0c9fcf06aa5d273215add181a5",
        },
        Handshake {
            suite: TLS_ECDHE_ECDSA_WITH_AES_128_CCM,
            ms: "2b3872c56d07d3d85d60c1a7c333e19b792adbbec2f7fae126f703b3083c95f15b798787dae2adc8dca21218198242b9",
            cr: "4fa9543c615360d518a758c4103f82596c20dbc7695fb8d99fc7d9e3c41bb770",
            sr: "2ded8da142f9d8237aa55bdd9aaf1ce54ea201c3e39f80d890bcbb32f6caf7f7",
            exporter: "bd827ef7ed7a5a13269527f10fb6d98964e322142474907694c4ca1c8e69b432",
            oxm: Oxm::MfgCert,
            owner_psk: "c9605e441f397e57d3dc06737bffa11a",
        },
        Handshake {
            suite: TLS_ECDHE_ECDSA_WITH_AES_256_CCM_8,
            ms: "b18912ea8a655a2463112da3cb94458abcb1602bbaa1cc502306f1ecce3c5844a651ca0aa3730bdad1e848cb292a2512",
            cr: "4f8b12071278f0216c1425cf0e5cb2c0b6d7e64227a7aa8fd0118b821907562d",
            sr: "0744f2bd7b63e96757f6889db7446b12d46424979ef83f7b0b16daf42091929d",
            exporter: "e4090d0f3591fc9ae3e7c32a4d9df8e427f66593c316ec88a29f0c51c1597714",
            oxm: Oxm::MfgCert,
            owner_psk: "cc9bdd5a89d33beb23bd482da072f4a6",
        },
        Handshake {
            suite: TLS_ECDHE_ECDSA_WITH_AES_256_CCM,
            ms: "07951d9315be897de94ac2a94673a409f83f29f00d7ccaab7c0054fd9f1ee70502e7eaa8062009aa9c6f2f32bd6f7006",
            cr: "924005b62977bc8e8eeb5c460526f1520c1a02e0252bc4961382692c970f1864",
            sr: "bdee96af1ca71dd6553a4852e548b5037b114715633a1d6b3ef54ead3daea6fb",
            exporter: "d4449230df5d4183c2df4177b7c97f7f66b9066813bfa73bb733689a1a4745a6",
            oxm: Oxm::MfgCert,
            owner_psk: "4b2a2ac0f4e425159fbb2bd3a8f49922",
        },
    ];

    fn secrets(h: &Handshake) -> SessionSecrets {
        SessionSecrets {
            master_secret: arr(h.ms),
            client_random: arr(h.cr),
            server_random: arr(h.sr),
            suite: h.suite,
        }
    }

    #[test]
    fn prf_matches_openssl_exporter_of_real_handshakes() {
        for h in &HANDSHAKES {
            let s = secrets(h);
            let mut out = [0u8; 32];
            p_sha256(
                &s.master_secret,
                &[b"EXPORTER-probe", &s.client_random, &s.server_random],
                &mut out,
            );
            assert_eq!(out.to_vec(), hex(h.exporter), "suite {:#06x}", h.suite);
        }
    }

    #[test]
    fn owner_psk_of_real_handshakes() {
        let (owner, device) = ([0x11; 16], [0x22; 16]);
        for h in &HANDSHAKES {
            let s = secrets(h);
            let key = owner_psk(&s, h.oxm, &owner, &device).unwrap();
            assert_eq!(key.to_vec(), hex(h.owner_psk), "suite {:#06x}", h.suite);
            // Every input counts: order of the UUIDs, the label, the randoms' order.
            assert_ne!(owner_psk(&s, h.oxm, &device, &owner), Some(key));
            assert_ne!(owner_psk(&s, Oxm::JustWorks, &owner, &device), Some(key));
            let mut swapped = s.clone();
            std::mem::swap(&mut swapped.client_random, &mut swapped.server_random);
            assert_ne!(owner_psk(&swapped, h.oxm, &owner, &device), Some(key));
        }
        // The key block of the first handshake (96 bytes), checked with Python's hmac.
        let block = key_block(&secrets(&HANDSHAKES[0])).unwrap();
        assert_eq!(
            block,
            hex(concat!(
                "ad60df3d6571f75fad70b6fa8fcf7777e21a75548081b5e83a9f7933768f1c4f",
                "b0501d5ef7f947ee831a876c5368c0ce0221bd9be965cf4a885e41d7dd7f6a61",
                "efe512caeb5f499f55991c0155d5c4ff329e0f15a6d6394157c73a0384a45a62"
            ))
        );
        let mut gcm = secrets(&HANDSHAKES[0]);
        gcm.suite = 0xC02B;
        assert_eq!(owner_psk(&gcm, Oxm::MfgCert, &owner, &device), None);
        assert!(!format!("{gcm:?}").contains("5db2"));
    }

    #[test]
    fn oxm_labels_and_ids() {
        assert_eq!(Oxm::JustWorks.label(), b"oic.sec.doxm.jw");
        assert_eq!(Oxm::RandomPin.label(), RDP_IDENTITY);
        assert_eq!(Oxm::MfgCert.label(), b"oic.sec.doxm.mfgcert");
        for o in [Oxm::JustWorks, Oxm::RandomPin, Oxm::MfgCert] {
            assert_eq!(Oxm::from_id(o.id()), Some(o));
        }
        assert_eq!(Oxm::from_id(0xFF00), None);
    }

    #[test]
    fn psk_for_identity_by_binary_and_text_uuid() {
        use crate::security::cred::NewCred;
        let owner = "5a1e0b2c-9d4f-4e7a-8b3c-6d5e7f809112";
        let other = "aaaaaaaa-0000-0000-0000-000000000001";
        let mut creds = CredStore::new();
        assert_eq!(psk_for_identity(&uuid_bytes(owner).unwrap(), &creds), None);
        creds
            .add(NewCred::psk(None, owner, &[7; 16]).unwrap())
            .unwrap();
        creds
            .add(NewCred::psk(None, other, &[9; 32]).unwrap())
            .unwrap();

        let key = Some(&[7u8; 16][..]);
        assert_eq!(psk_for_identity(&uuid_bytes(owner).unwrap(), &creds), key);
        assert_eq!(psk_for_identity(owner.as_bytes(), &creds), key);
        let upper = owner.to_ascii_uppercase();
        assert_eq!(psk_for_identity(upper.as_bytes(), &creds), key);
        assert_eq!(
            psk_for_identity(other.as_bytes(), &creds),
            Some(&[9u8; 32][..])
        );

        // The newest credential for a subject wins.
        creds
            .add(NewCred::psk(None, owner, &[8; 16]).unwrap())
            .unwrap();
        assert_eq!(
            psk_for_identity(owner.as_bytes(), &creds),
            Some(&[8u8; 16][..])
        );

        for unknown in [
            &uuid_bytes("5a1e0b2c-9d4f-4e7a-8b3c-6d5e7f809113").unwrap()[..],
            b"5a1e0b2c-9d4f-4e7a-8b3c-6d5e7f809113",
            RDP_IDENTITY,
            b"",
            b"5a1e0b2c9d4f4e7a8b3c6d5e7f809112",
            b"5a1e0b2c-9d4f-4e7a-8b3c-6d5e7f80911\xff",
            &[0xff; 36],
            &[0; 300],
        ] {
            assert_eq!(psk_for_identity(unknown, &creds), None, "{unknown:?}");
        }
        // Certificates have no key.
        let mut certs = CredStore::new();
        let ca = crate::x509::tests::CA_CERT;
        certs
            .add(NewCred::new(None, owner, CredUsage::TrustCa, ca, other).unwrap())
            .unwrap();
        assert_eq!(psk_for_identity(owner.as_bytes(), &certs), None);
    }

    #[test]
    fn uuid_text_and_bytes_round_trip() {
        let t = "5a1e0b2c-9d4f-4e7a-8b3c-6d5e7f809112";
        let b = uuid_bytes(t).unwrap();
        assert_eq!(b[0], 0x5a);
        assert_eq!(b[15], 0x12);
        assert_eq!(uuid_text(&b), t);
        assert_eq!(uuid_bytes(&t.to_ascii_uppercase()), Some(b));
        assert_eq!(uuid_bytes("5a1e0b2c9d4f4e7a8b3c6d5e7f809112"), None);
        assert_eq!(uuid_bytes("ü"), None);
    }
}
