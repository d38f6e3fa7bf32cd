//! Ownership transfer without DTLS: SPAKE2 with the setup PIN, confirmed over the TLS session.
//!
//! # Why and what
//!
//! The OCF ownership transfer methods run over DTLS, which rustls does not implement. This
//! device offers one vendor method instead, `x.org.ocfpi.spake2` (doxm `oxms` = `[0xFF00]`,
//! see [`super::doxm`]), on the secure coaps+tcp endpoint:
//!
//! 1. The Mediator opens TLS to the device, presenting its own client certificate (self-signed
//!    is fine; its CN must be `uuid:<mediator uuid>`). Both ends compute the TLS exporter
//!    (RFC 8446 §7.5 / RFC 5705) with label [`EXPORTER_LABEL`] (`EXPORTER-ocfpi-otm`), no
//!    context (`None`), [`EXPORTER_LEN`] = 32 bytes.
//! 2. SPAKE2 (RustCrypto `spake2` 0.4, Ed25519 group), Mediator = side A with identity
//!    `ocf-mediator`, device = side B with identity `ocf-device:<di>`, password = the 8 ASCII
//!    digits of the PIN. Both derive the 32-byte key `K`.
//! 3. Key confirmation bound to the TLS session:
//!    `confirm_b = HMAC-SHA256(K, "ocfpi-otm confirm device\0" || exporter)` (device → Mediator)
//!    and `confirm_a = HMAC-SHA256(K, "ocfpi-otm confirm mediator\0" || exporter)` (Mediator →
//!    device). Each side checks the other's in constant time.
//!
//! A passive listener sees only SPAKE2 messages (random group elements) and MACs: nothing about
//! the PIN. An active attacker gets one PIN guess per attempt (SPAKE2), and attempts are rate
//! limited. A man in the middle that terminates TLS on both sides has different exporter values
//! on its two legs, so even by relaying the PAKE messages unchanged it cannot produce a
//! confirmation that fits the other leg without `K`: the Mediator refuses the device's
//! confirmation and the device refuses the Mediator's. When step 2 succeeds, the client
//! certificate of *this* TLS session becomes the owner (its key fingerprint and CN UUID).
//!
//! # Wire format (CBOR, Content-Format 10000; byte strings are CBOR major type 2)
//!
//! Both steps are POSTs to [`OTM_HREF`] (`/oic/sec/otm`) on the same TLS connection:
//!
//! | | body |
//! |---|---|
//! | step 1 request | `{"step": 1, "pake": h'41…'}` — SPAKE2 message A, 33 bytes (`'A'` + point) |
//! | step 1 answer, 2.04 | `{"step": 1, "pake": h'42…', "confirm": h'…'}` — message B (33 bytes), `confirm_b` (32 bytes) |
//! | step 2 request | `{"step": 2, "confirm": h'…'}` — `confirm_a` (32 bytes) |
//! | step 2 answer, 2.04 | `{"step": 2, "owned": true, "deviceuuid": "<di>", "devowneruuid": "<owner uuid>"}` |
//!
//! Errors (diagnostic text payload): 4.00 malformed body or no step 1 on this connection, 4.01
//! key confirmation failed (wrong PIN or not end to end) or no usable client certificate, 4.03
//! already owned, **4.29 Too Many Requests with Max-Age** = seconds to wait (RFC 8516) while
//! rate limited, 4.05 for methods other than POST, 5.00 if the daemon passed a bad exporter.
//!
//! # Rate limiting
//!
//! Every step 1 that the device answers counts as a failed attempt until its step 2 confirms;
//! only a confirmed step 2 clears the count. (Counting at step 1 matters: `confirm_b` already
//! lets a guesser check its one guess offline, so stopping after step 1 must cost an attempt
//! too.) With `n` ≥ [`FREE_ATTEMPTS`] (5) failures, a new step 1 is refused until
//! `2^(n-5)` s after the last failure, at most [`MAX_DELAY`] (1 h): 1 s, 2 s, 4 s, … The count
//! is kept in memory. Half-done sessions expire after [`SESSION_TIMEOUT`]; at most
//! [`MAX_SESSIONS`] are kept (the oldest goes first).

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

use coap_lite::ResponseType;
use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use spake2::{Ed25519Group, Identity, Password, Spake2};

use super::util::wipe;
use super::OTM_HREF;
use crate::model::{decode_payload, encode_payload, ContentFormat};
use crate::resource::{Method, Request, Response, Value};

/// TLS exporter label (RFC 5705 / RFC 8446 §7.5); context: none.
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-ocfpi-otm";
/// TLS exporter output length.
pub const EXPORTER_LEN: usize = 32;
/// SPAKE2 identity of side A (the Mediator).
pub const MEDIATOR_IDENTITY: &str = "ocf-mediator";
/// Length of a SPAKE2 message (side byte + compressed Ed25519 point).
pub const PAKE_MSG_LEN: usize = 33;
/// Length of a confirmation MAC.
pub const CONFIRM_LEN: usize = 32;
/// Failed attempts allowed before delays start.
pub const FREE_ATTEMPTS: u32 = 5;
/// Longest delay between attempts.
pub const MAX_DELAY: Duration = Duration::from_secs(3600);
/// A step 1 without its step 2 is forgotten after this long.
pub const SESSION_TIMEOUT: Duration = Duration::from_secs(60);
/// Most half-done sessions kept at once.
pub const MAX_SESSIONS: usize = 4;

const LABEL_DEVICE_CONFIRM: &[u8] = b"ocfpi-otm confirm device\0";
const LABEL_MEDIATOR_CONFIRM: &[u8] = b"ocfpi-otm confirm mediator\0";

/// A boxed source of cryptographically secure random bytes for [`DeviceOtm`] (the daemon
/// passes a closure around `getrandom::fill`).
pub type RandomSource = Box<dyn FnMut(&mut [u8])>;

/// SPAKE2 identity of side B (the device `di`).
pub fn device_identity(di: &str) -> String {
    format!("ocf-device:{di}")
}

// ---------------------------------------------------------------------------------------------
// PIN
// ---------------------------------------------------------------------------------------------

/// The setup PIN: exactly 8 ASCII digits. Its `Debug` never shows it; it is wiped on drop.
#[derive(Clone, PartialEq, Eq)]
pub struct Pin([u8; 8]);

/// A PIN that is not 8 digits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinError;

impl fmt::Display for PinError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a PIN is exactly 8 decimal digits")
    }
}

impl std::error::Error for PinError {}

impl Pin {
    /// Parses a PIN (surrounding whitespace is ignored, e.g. from a file).
    pub fn new(s: &str) -> Result<Pin, PinError> {
        let s = s.trim().as_bytes();
        if s.len() != 8 || !s.iter().all(u8::is_ascii_digit) {
            return Err(PinError);
        }
        let mut b = [0u8; 8];
        b.copy_from_slice(s);
        Ok(Pin(b))
    }

    /// A uniformly random PIN from `rng` (rejection sampling, no modulo bias).
    pub fn generate(rng: &mut dyn FnMut(&mut [u8])) -> Pin {
        // The largest multiple of 10^8 that fits in u32.
        const LIMIT: u32 = 4_200_000_000;
        loop {
            let mut buf = [0u8; 4];
            rng(&mut buf);
            let n = u32::from_le_bytes(buf);
            wipe(&mut buf);
            if n < LIMIT {
                let mut v = n % 100_000_000;
                let mut b = [0u8; 8];
                for d in b.iter_mut().rev() {
                    *d = b'0' + (v % 10) as u8;
                    v /= 10;
                }
                return Pin(b);
            }
        }
    }

    /// The digits, for showing once on the console or storing in the state directory. Never
    /// log it.
    pub fn expose(&self) -> &str {
        // Only ASCII digits are ever stored.
        std::str::from_utf8(&self.0).unwrap_or("")
    }
}

impl fmt::Debug for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Pin(<redacted>)")
    }
}

impl Drop for Pin {
    fn drop(&mut self) {
        wipe(&mut self.0);
    }
}

// ---------------------------------------------------------------------------------------------
// Key confirmation
// ---------------------------------------------------------------------------------------------

/// The SPAKE2 output `K`.
struct SharedKey([u8; 32]);

impl SharedKey {
    fn from_vec(mut v: Vec<u8>) -> SharedKey {
        let mut k = [0u8; 32];
        let n = v.len().min(32);
        k[..n].copy_from_slice(&v[..n]);
        wipe(&mut v);
        SharedKey(k)
    }

    fn mac(&self, label: &[u8], exporter: &[u8]) -> Hmac<Sha256> {
        // HMAC pads a key shorter than the hash's block (64 bytes) with zeros (RFC 2104 §2),
        // so the padded fixed-size key is the same key, and no length check can fail.
        let mut block = [0u8; 64];
        block[..32].copy_from_slice(&self.0);
        let mut mac = <Hmac<Sha256> as KeyInit>::new(&block.into());
        wipe(&mut block);
        mac.update(label);
        mac.update(exporter);
        mac
    }

    fn confirm(&self, label: &[u8], exporter: &[u8]) -> [u8; CONFIRM_LEN] {
        self.mac(label, exporter).finalize().into_bytes().into()
    }

    /// Constant-time check of a received confirmation.
    fn verify(&self, label: &[u8], exporter: &[u8], received: &[u8]) -> bool {
        self.mac(label, exporter).verify_slice(received).is_ok()
    }
}

impl Drop for SharedKey {
    fn drop(&mut self) {
        wipe(&mut self.0);
    }
}

impl fmt::Debug for SharedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SharedKey(<redacted>)")
    }
}

/// `rand_core` adapter for a caller's random source.
struct Rng<'a>(&'a mut dyn FnMut(&mut [u8]));

impl rand_core::RngCore for Rng<'_> {
    fn next_u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        (self.0)(&mut b);
        u32::from_le_bytes(b)
    }

    fn next_u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        (self.0)(&mut b);
        u64::from_le_bytes(b)
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        (self.0)(dest)
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        (self.0)(dest);
        Ok(())
    }
}

impl rand_core::CryptoRng for Rng<'_> {}

fn check_exporter(exporter: &[u8]) -> Result<(), OtmError> {
    if exporter.len() == EXPORTER_LEN {
        Ok(())
    } else {
        Err(OtmError::BadExporter)
    }
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// Why an ownership transfer step failed.
#[derive(Debug, Clone, PartialEq)]
pub enum OtmError {
    /// Key confirmation failed: wrong PIN, or the TLS session is not end to end (a man in the
    /// middle). 4.01.
    Unauthorized,
    /// Too many failed attempts: try again after `retry_after`. 4.29 with Max-Age.
    RateLimited { retry_after: Duration },
    /// A malformed message. 4.00.
    BadMessage(String),
    /// Step 2 without a live step 1 on this connection (never sent, expired, or already used).
    /// 4.00.
    NoSession,
    /// The exporter value is not [`EXPORTER_LEN`] bytes (a bug in the caller). 5.00.
    BadExporter,
    /// The device already has an owner. 4.03.
    AlreadyOwned,
    /// The Mediator presented no client certificate with CN `uuid:<uuid>`, so it could not be
    /// recognised as the owner later. 4.01.
    NoClientCertificate,
    /// (Mediator side) the device answered with an error.
    Rejected {
        code: ResponseType,
        diagnostic: String,
    },
}

impl OtmError {
    /// The CoAP response code the device answers with.
    pub fn code(&self) -> ResponseType {
        match self {
            OtmError::Unauthorized | OtmError::NoClientCertificate => ResponseType::Unauthorized,
            OtmError::RateLimited { .. } => ResponseType::TooManyRequests,
            OtmError::BadMessage(_) | OtmError::NoSession => ResponseType::BadRequest,
            OtmError::BadExporter => ResponseType::InternalServerError,
            OtmError::AlreadyOwned => ResponseType::Forbidden,
            OtmError::Rejected { code, .. } => *code,
        }
    }

    /// Max-Age (seconds, rounded up) for a rate-limited answer.
    pub fn max_age(&self) -> Option<u32> {
        match self {
            OtmError::RateLimited { retry_after } => {
                let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
                Some(u32::try_from(secs).unwrap_or(u32::MAX))
            }
            _ => None,
        }
    }
}

impl fmt::Display for OtmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OtmError::Unauthorized => f.write_str(
                "key confirmation failed: wrong PIN, or the TLS session is not end to end",
            ),
            OtmError::RateLimited { .. } => write!(
                f,
                "too many failed attempts: try again in {} s",
                self.max_age().unwrap_or(0)
            ),
            OtmError::BadMessage(m) => write!(f, "bad ownership transfer message: {m}"),
            OtmError::NoSession => {
                f.write_str("no step 1 on this connection (never sent, expired or already used)")
            }
            OtmError::BadExporter => {
                write!(
                    f,
                    "internal error: the TLS exporter value is not {EXPORTER_LEN} bytes"
                )
            }
            OtmError::AlreadyOwned => f.write_str("the device is already owned"),
            OtmError::NoClientCertificate => f.write_str(
                "ownership transfer needs a client certificate whose CN is uuid:<owner uuid>",
            ),
            OtmError::Rejected { code, diagnostic } => {
                write!(f, "the device refused: {code:?}: {diagnostic}")
            }
        }
    }
}

impl std::error::Error for OtmError {}

// ---------------------------------------------------------------------------------------------
// Device side
// ---------------------------------------------------------------------------------------------

/// The device's answer to step 1.
#[derive(Clone, PartialEq, Eq)]
pub struct Step1Reply {
    /// SPAKE2 message B.
    pub pake_msg_b: Vec<u8>,
    /// `confirm_b`.
    pub confirm_b: Vec<u8>,
}

impl fmt::Debug for Step1Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Public values, but long and useless in a log.
        f.debug_struct("Step1Reply")
            .field(
                "pake_msg_b",
                &format_args!("<{} bytes>", self.pake_msg_b.len()),
            )
            .field(
                "confirm_b",
                &format_args!("<{} bytes>", self.confirm_b.len()),
            )
            .finish()
    }
}

/// Step 2 confirmed: the peer of `session_id` knows the PIN and sees the same TLS session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnershipGranted {
    pub session_id: u64,
}

struct Session {
    key: SharedKey,
    exporter: [u8; EXPORTER_LEN],
    started: Instant,
}

/// The device side of the ownership transfer, per TLS session (the daemon's connection id).
pub struct DeviceOtm {
    pin: Pin,
    id_b: String,
    rng: RandomSource,
    sessions: BTreeMap<u64, Session>,
    failures: u32,
    last_failure: Option<Instant>,
}

impl fmt::Debug for DeviceOtm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceOtm")
            .field("pin", &self.pin)
            .field("identity", &self.id_b)
            .field("sessions", &self.sessions.len())
            .field("failures", &self.failures)
            .finish()
    }
}

impl DeviceOtm {
    /// The device `di` with setup PIN `pin`; `rng` supplies SPAKE2's random scalars.
    pub fn new(pin: Pin, di: &str, rng: RandomSource) -> DeviceOtm {
        DeviceOtm {
            pin,
            id_b: device_identity(di),
            rng,
            sessions: BTreeMap::new(),
            failures: 0,
            last_failure: None,
        }
    }

    /// Failed (or unconfirmed) attempts since the last success.
    pub fn failed_attempts(&self) -> u32 {
        self.failures
    }

    /// How long a new step 1 must still wait, if it must.
    pub fn retry_after(&self, now: Instant) -> Option<Duration> {
        if self.failures < FREE_ATTEMPTS {
            return None;
        }
        let exp = self.failures - FREE_ATTEMPTS;
        let delay = if exp >= 12 {
            MAX_DELAY
        } else {
            Duration::from_secs(1u64 << exp).min(MAX_DELAY)
        };
        let until = self.last_failure?.checked_add(delay)?;
        (now < until).then(|| until.saturating_duration_since(now))
    }

    /// Forgets half-done sessions older than [`SESSION_TIMEOUT`].
    pub fn expire(&mut self, now: Instant) {
        self.sessions
            .retain(|_, s| now.saturating_duration_since(s.started) < SESSION_TIMEOUT);
    }

    /// When the next half-done session expires (for the daemon's timer; optional, since every
    /// call expires stale sessions first).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.sessions
            .values()
            .filter_map(|s| s.started.checked_add(SESSION_TIMEOUT))
            .min()
    }

    /// Forgets the session of a closed connection.
    pub fn drop_session(&mut self, session_id: u64) {
        self.sessions.remove(&session_id);
    }

    /// Step 1: the Mediator's SPAKE2 message on connection `session_id`, whose TLS exporter is
    /// `exporter`. Answers message B and `confirm_b`; counts an attempt (see the module docs).
    pub fn handle_step1(
        &mut self,
        session_id: u64,
        pake_msg_a: &[u8],
        exporter: &[u8],
        now: Instant,
    ) -> Result<Step1Reply, OtmError> {
        self.expire(now);
        check_exporter(exporter)?;
        if pake_msg_a.len() != PAKE_MSG_LEN {
            return Err(OtmError::BadMessage(format!(
                "the SPAKE2 message must be {PAKE_MSG_LEN} bytes"
            )));
        }
        if let Some(retry_after) = self.retry_after(now) {
            return Err(OtmError::RateLimited { retry_after });
        }
        let (spake, msg_b) = Spake2::<Ed25519Group>::start_b_with_rng(
            &Password::new(self.pin.0),
            &Identity::new(MEDIATOR_IDENTITY.as_bytes()),
            &Identity::new(self.id_b.as_bytes()),
            Rng(&mut *self.rng),
        );
        let key = spake
            .finish(pake_msg_a)
            .map(SharedKey::from_vec)
            .map_err(|e| OtmError::BadMessage(format!("SPAKE2 message refused: {e}")))?;
        self.failures = self.failures.saturating_add(1);
        self.last_failure = Some(now);
        let confirm_b = key.confirm(LABEL_DEVICE_CONFIRM, exporter).to_vec();
        let mut exp = [0u8; EXPORTER_LEN];
        exp.copy_from_slice(exporter);
        if !self.sessions.contains_key(&session_id) && self.sessions.len() >= MAX_SESSIONS {
            if let Some(oldest) = self
                .sessions
                .iter()
                .min_by_key(|(_, s)| s.started)
                .map(|(id, _)| *id)
            {
                self.sessions.remove(&oldest);
            }
        }
        self.sessions.insert(
            session_id,
            Session {
                key,
                exporter: exp,
                started: now,
            },
        );
        Ok(Step1Reply {
            pake_msg_b: msg_b,
            confirm_b,
        })
    }

    /// Step 2: the Mediator's confirmation on the same connection. A wrong one (wrong PIN, or a
    /// man in the middle) ends the session with [`OtmError::Unauthorized`].
    pub fn handle_step2(
        &mut self,
        session_id: u64,
        confirm_a: &[u8],
        now: Instant,
    ) -> Result<OwnershipGranted, OtmError> {
        self.expire(now);
        let session = self
            .sessions
            .remove(&session_id)
            .ok_or(OtmError::NoSession)?;
        if !session
            .key
            .verify(LABEL_MEDIATOR_CONFIRM, &session.exporter, confirm_a)
        {
            self.last_failure = Some(now);
            return Err(OtmError::Unauthorized);
        }
        self.failures = 0;
        self.last_failure = None;
        self.sessions.clear();
        Ok(OwnershipGranted { session_id })
    }
}

// ---------------------------------------------------------------------------------------------
// Mediator side
// ---------------------------------------------------------------------------------------------

/// The Mediator side of the ownership transfer.
pub struct MediatorOtm {
    spake: Spake2<Ed25519Group>,
}

impl fmt::Debug for MediatorOtm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MediatorOtm(<redacted>)")
    }
}

impl MediatorOtm {
    /// Starts with the PIN of device `di`: returns the state and SPAKE2 message A (step 1).
    pub fn start(pin: &Pin, di: &str, rng: &mut dyn FnMut(&mut [u8])) -> (MediatorOtm, Vec<u8>) {
        let (spake, msg_a) = Spake2::<Ed25519Group>::start_a_with_rng(
            &Password::new(pin.0),
            &Identity::new(MEDIATOR_IDENTITY.as_bytes()),
            &Identity::new(device_identity(di).as_bytes()),
            Rng(rng),
        );
        (MediatorOtm { spake }, msg_a)
    }

    /// Checks the device's step 1 answer against this connection's `exporter` and returns
    /// `confirm_a` for step 2. A device that does not know the PIN, or a man in the middle,
    /// gives [`OtmError::Unauthorized`] here (send no step 2 then).
    pub fn finish(
        self,
        pake_msg_b: &[u8],
        confirm_b: &[u8],
        exporter: &[u8],
    ) -> Result<Vec<u8>, OtmError> {
        check_exporter(exporter)?;
        let key = self
            .spake
            .finish(pake_msg_b)
            .map(SharedKey::from_vec)
            .map_err(|e| OtmError::BadMessage(format!("SPAKE2 message refused: {e}")))?;
        if !key.verify(LABEL_DEVICE_CONFIRM, exporter, confirm_b) {
            return Err(OtmError::Unauthorized);
        }
        Ok(key.confirm(LABEL_MEDIATOR_CONFIRM, exporter).to_vec())
    }
}

// ---------------------------------------------------------------------------------------------
// Wire format
// ---------------------------------------------------------------------------------------------

/// A request to the OTM resource, decoded.
#[derive(Clone, PartialEq, Eq)]
pub enum OtmMessage {
    Step1 { pake_msg_a: Vec<u8> },
    Step2 { confirm_a: Vec<u8> },
}

impl fmt::Debug for OtmMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OtmMessage::Step1 { .. } => f.write_str("OtmMessage::Step1"),
            OtmMessage::Step2 { .. } => f.write_str("OtmMessage::Step2"),
        }
    }
}

fn bad(m: impl Into<String>) -> OtmError {
    OtmError::BadMessage(m.into())
}

fn body_map(format: ContentFormat, payload: &[u8]) -> Result<Vec<(String, Value)>, OtmError> {
    let value = decode_payload(format, payload).map_err(|e| bad(e.0))?;
    let Value::Map(entries) = value else {
        return Err(bad("the body must be a map"));
    };
    let mut out: Vec<(String, Value)> = Vec::with_capacity(entries.len());
    for (k, v) in entries {
        let Value::Text(k) = k else {
            return Err(bad("a key is not text"));
        };
        if out.iter().any(|(seen, _)| *seen == k) {
            return Err(bad("a key appears twice"));
        }
        out.push((k, v));
    }
    Ok(out)
}

fn take_bytes(m: &[(String, Value)], key: &str, len: usize) -> Result<Vec<u8>, OtmError> {
    match m.iter().find(|(k, _)| k == key).map(|(_, v)| v) {
        Some(Value::Bytes(b)) if b.len() == len => Ok(b.clone()),
        Some(Value::Bytes(_)) => Err(bad(format!("`{key}` must be {len} bytes"))),
        Some(_) => Err(bad(format!("`{key}` must be a byte string"))),
        None => Err(bad(format!("`{key}` is required"))),
    }
}

fn take_step(m: &[(String, Value)]) -> Result<u8, OtmError> {
    match m.iter().find(|(k, _)| k == "step").map(|(_, v)| v) {
        Some(Value::Integer(i)) if i128::from(*i) == 1 => Ok(1),
        Some(Value::Integer(i)) if i128::from(*i) == 2 => Ok(2),
        Some(_) => Err(bad("`step` must be 1 or 2")),
        None => Err(bad("`step` is required")),
    }
}

fn only(m: &[(String, Value)], keys: &[&str]) -> Result<(), OtmError> {
    match m.iter().find(|(k, _)| !keys.contains(&k.as_str())) {
        Some((k, _)) => Err(bad(format!("unknown key `{}`", super::util::echo(k)))),
        None => Ok(()),
    }
}

fn request_format(req: &Request) -> Result<ContentFormat, OtmError> {
    match req.content_format {
        None => Ok(ContentFormat::OcfCbor),
        Some(n) => match ContentFormat::from_number(n) {
            Some(ContentFormat::Json) | None => Err(bad("the body must be CBOR (10000 or 60)")),
            Some(f) => Ok(f),
        },
    }
}

impl OtmMessage {
    /// Decodes a request body (device side). Method and href are the caller's business.
    pub fn decode(req: &Request) -> Result<OtmMessage, OtmError> {
        let m = body_map(request_format(req)?, &req.payload)?;
        match take_step(&m)? {
            1 => {
                only(&m, &["step", "pake"])?;
                Ok(OtmMessage::Step1 {
                    pake_msg_a: take_bytes(&m, "pake", PAKE_MSG_LEN)?,
                })
            }
            _ => {
                only(&m, &["step", "confirm"])?;
                Ok(OtmMessage::Step2 {
                    confirm_a: take_bytes(&m, "confirm", CONFIRM_LEN)?,
                })
            }
        }
    }

    /// The POST request carrying this message (Mediator side).
    pub fn to_request(&self) -> Request {
        let text = |s: &str| Value::Text(s.into());
        let body = match self {
            OtmMessage::Step1 { pake_msg_a } => Value::Map(vec![
                (text("step"), Value::Integer(1.into())),
                (text("pake"), Value::Bytes(pake_msg_a.clone())),
            ]),
            OtmMessage::Step2 { confirm_a } => Value::Map(vec![
                (text("step"), Value::Integer(2.into())),
                (text("confirm"), Value::Bytes(confirm_a.clone())),
            ]),
        };
        let mut req = Request::new(Method::Post, OTM_HREF);
        req.content_format = Some(ContentFormat::OCF_CBOR_NUMBER);
        req.accept = Some(ContentFormat::OCF_CBOR_NUMBER);
        req.payload = encode_payload(ContentFormat::OcfCbor, &body).unwrap_or_default();
        req
    }
}

/// The step 1 request (Mediator side).
pub fn step1_request(pake_msg_a: &[u8]) -> Request {
    OtmMessage::Step1 {
        pake_msg_a: pake_msg_a.to_vec(),
    }
    .to_request()
}

/// The step 2 request (Mediator side).
pub fn step2_request(confirm_a: &[u8]) -> Request {
    OtmMessage::Step2 {
        confirm_a: confirm_a.to_vec(),
    }
    .to_request()
}

/// The device's 2.04 to step 1.
pub fn step1_response(reply: &Step1Reply) -> Response {
    let text = |s: &str| Value::Text(s.into());
    cbor_response(&Value::Map(vec![
        (text("step"), Value::Integer(1.into())),
        (text("pake"), Value::Bytes(reply.pake_msg_b.clone())),
        (text("confirm"), Value::Bytes(reply.confirm_b.clone())),
    ]))
}

/// What the device reports after a successful step 2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerInfo {
    pub deviceuuid: String,
    pub devowneruuid: String,
}

/// The device's 2.04 to step 2.
pub fn step2_response(info: &OwnerInfo) -> Response {
    let text = |s: &str| Value::Text(s.into());
    cbor_response(&Value::Map(vec![
        (text("step"), Value::Integer(2.into())),
        (text("owned"), Value::Bool(true)),
        (text("deviceuuid"), text(&info.deviceuuid)),
        (text("devowneruuid"), text(&info.devowneruuid)),
    ]))
}

fn cbor_response(body: &Value) -> Response {
    match encode_payload(ContentFormat::OcfCbor, body) {
        Ok(payload) => Response {
            content_format: Some(ContentFormat::OCF_CBOR_NUMBER),
            payload,
            ..Response::new(ResponseType::Changed)
        },
        Err(e) => Response::error(ResponseType::InternalServerError, &e.0),
    }
}

fn response_map(resp: &Response) -> Result<Vec<(String, Value)>, OtmError> {
    if resp.code != ResponseType::Changed {
        return Err(OtmError::Rejected {
            code: resp.code,
            diagnostic: resp.diagnostic(),
        });
    }
    let format = resp
        .content_format
        .and_then(ContentFormat::from_number)
        .unwrap_or(ContentFormat::OcfCbor);
    if format == ContentFormat::Json {
        return Err(bad("the answer must be CBOR"));
    }
    body_map(format, &resp.payload)
}

/// Reads the device's answer to step 1 (Mediator side). An error answer becomes
/// [`OtmError::Rejected`] (4.29 carries Max-Age in the CoAP options, which the caller reads).
pub fn parse_step1_response(resp: &Response) -> Result<Step1Reply, OtmError> {
    let m = response_map(resp)?;
    if take_step(&m)? != 1 {
        return Err(bad("answer to step 1 is not for step 1"));
    }
    Ok(Step1Reply {
        pake_msg_b: take_bytes(&m, "pake", PAKE_MSG_LEN)?,
        confirm_b: take_bytes(&m, "confirm", CONFIRM_LEN)?,
    })
}

/// Reads the device's answer to step 2 (Mediator side).
pub fn parse_step2_response(resp: &Response) -> Result<OwnerInfo, OtmError> {
    let m = response_map(resp)?;
    if take_step(&m)? != 2 {
        return Err(bad("answer to step 2 is not for step 2"));
    }
    let get = |k: &str| m.iter().find(|(key, _)| key == k).map(|(_, v)| v);
    if get("owned") != Some(&Value::Bool(true)) {
        return Err(bad("the device does not report itself owned"));
    }
    let text = |k: &str| match get(k) {
        Some(Value::Text(s)) => Ok(s.clone()),
        _ => Err(bad(format!("`{k}` missing"))),
    };
    Ok(OwnerInfo {
        deviceuuid: text("deviceuuid")?,
        devowneruuid: text("devowneruuid")?,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const DI: &str = "aaaaaaaa-0000-0000-0000-000000000001";

    /// A deterministic xorshift generator (tests only).
    pub(crate) fn test_rng(seed: u64) -> impl FnMut(&mut [u8]) {
        let mut s = seed | 1;
        move |buf: &mut [u8]| {
            for b in buf.iter_mut() {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                *b = (s >> 24) as u8;
            }
        }
    }

    fn device(pin: &str) -> DeviceOtm {
        DeviceOtm::new(Pin::new(pin).unwrap(), DI, Box::new(test_rng(7)))
    }

    const EXP1: [u8; 32] = [0x11; 32];
    const EXP2: [u8; 32] = [0x22; 32];

    /// One full run over a (simulated) TLS session with `exporter`.
    fn run(
        dev: &mut DeviceOtm,
        session: u64,
        mediator_pin: &str,
        exporter: &[u8],
        now: Instant,
    ) -> Result<OwnershipGranted, (OtmError, Option<OtmError>)> {
        let mut rng = test_rng(session + 100);
        let (m, msg_a) = MediatorOtm::start(&Pin::new(mediator_pin).unwrap(), DI, &mut rng);
        let reply = dev
            .handle_step1(session, &msg_a, exporter, now)
            .map_err(|e| (e, None))?;
        match m.finish(&reply.pake_msg_b, &reply.confirm_b, exporter) {
            Ok(confirm_a) => dev
                .handle_step2(session, &confirm_a, now)
                .map_err(|e| (e, None)),
            Err(mediator_err) => {
                // The Mediator noticed; a careless one sending garbage is refused too.
                let dev_err = dev.handle_step2(session, &[0u8; 32], now).err();
                Err((mediator_err, dev_err))
            }
        }
    }

    #[test]
    fn right_pin_gives_ownership_on_both_sides() {
        let mut dev = device("12345678");
        let now = Instant::now();
        assert_eq!(
            run(&mut dev, 1, "12345678", &EXP1, now),
            Ok(OwnershipGranted { session_id: 1 })
        );
        assert_eq!(dev.failed_attempts(), 0);
        // Step 2 is single use.
        assert_eq!(dev.handle_step2(1, &[0; 32], now), Err(OtmError::NoSession));
    }

    #[test]
    fn wrong_pin_is_detected_by_both_sides() {
        let mut dev = device("12345678");
        let now = Instant::now();
        let (mediator_err, dev_err) = run(&mut dev, 1, "87654321", &EXP1, now).unwrap_err();
        assert_eq!(mediator_err, OtmError::Unauthorized);
        assert_eq!(dev_err, Some(OtmError::Unauthorized));
        assert_eq!(OtmError::Unauthorized.code(), ResponseType::Unauthorized);

        // A Mediator that ignores its own check and sends its confirmation anyway is refused by
        // the device, too.
        let mut rng = test_rng(5);
        let (m, msg_a) = MediatorOtm::start(&Pin::new("87654321").unwrap(), DI, &mut rng);
        let reply = dev.handle_step1(2, &msg_a, &EXP1, now).unwrap();
        // Recompute what a Mediator with the wrong PIN would send.
        let key = SharedKey::from_vec(m.spake.finish(&reply.pake_msg_b).unwrap());
        let confirm_a = key.confirm(LABEL_MEDIATOR_CONFIRM, &EXP1);
        assert_eq!(
            dev.handle_step2(2, &confirm_a, now),
            Err(OtmError::Unauthorized)
        );
        assert_eq!(dev.failed_attempts(), 2);
    }

    #[test]
    fn man_in_the_middle_relaying_pake_messages_fails() {
        // The attacker terminates TLS towards the Mediator (exporter EXP1) and towards the
        // device (exporter EXP2) and relays every OTM message unchanged.
        let mut dev = device("12345678");
        let now = Instant::now();
        let mut rng = test_rng(9);
        let (m, msg_a) = MediatorOtm::start(&Pin::new("12345678").unwrap(), DI, &mut rng);
        let reply = dev.handle_step1(1, &msg_a, &EXP2, now).unwrap();
        // The Mediator, on its leg, refuses the device's confirmation.
        let mediator_view = m.finish(&reply.pake_msg_b, &reply.confirm_b, &EXP1);
        assert_eq!(mediator_view, Err(OtmError::Unauthorized));

        // Even if the Mediator did not check and sent its confirmation for its own leg, the
        // device, on the other leg, refuses it.
        let (m, msg_a) = MediatorOtm::start(&Pin::new("12345678").unwrap(), DI, &mut rng);
        let reply = dev.handle_step1(2, &msg_a, &EXP2, now).unwrap();
        let key = SharedKey::from_vec(m.spake.finish(&reply.pake_msg_b).unwrap());
        let confirm_for_leg1 = key.confirm(LABEL_MEDIATOR_CONFIRM, &EXP1);
        assert_eq!(
            dev.handle_step2(2, &confirm_for_leg1, now),
            Err(OtmError::Unauthorized)
        );

        // Without a MITM (same exporter on both ends) the same PIN works.
        assert!(run(&mut dev, 3, "12345678", &EXP2, now).is_ok());
    }

    #[test]
    fn five_wrong_attempts_then_growing_delays_on_a_virtual_clock() {
        let mut dev = device("12345678");
        let t0 = Instant::now();
        let mut now = t0;
        for i in 0..FREE_ATTEMPTS {
            assert!(run(&mut dev, u64::from(i), "00000000", &EXP1, now).is_err());
            now += Duration::from_millis(10);
        }
        assert_eq!(dev.failed_attempts(), 5);
        let mut expected = Duration::from_secs(1);
        for round in 0..4u64 {
            let last = now - Duration::from_millis(10);
            let (e, _) = run(&mut dev, 100 + round, "12345678", &EXP1, now).unwrap_err();
            let OtmError::RateLimited { retry_after } = e else {
                panic!("{e:?}")
            };
            assert_eq!(retry_after, expected - (now - last));
            assert_eq!(e.code(), ResponseType::TooManyRequests);
            assert_eq!(e.max_age(), Some(expected.as_secs() as u32));
            // Waiting out the delay opens one more attempt, which is wrong again.
            now = last + expected;
            assert!(dev.retry_after(now).is_none());
            let (e, _) = run(&mut dev, 200 + round, "11111111", &EXP1, now).unwrap_err();
            assert_eq!(e, OtmError::Unauthorized);
            now += Duration::from_millis(10);
            expected *= 2;
        }
        // The delay is capped at an hour.
        dev.failures = 40;
        assert_eq!(
            dev.retry_after(now - Duration::from_millis(10)),
            Some(MAX_DELAY)
        );
        dev.failures = 9;
        // After the delay expires, the right PIN works and clears the count.
        now += MAX_DELAY;
        assert!(run(&mut dev, 300, "12345678", &EXP1, now).is_ok());
        assert_eq!(dev.failed_attempts(), 0);
        assert!(dev.retry_after(now).is_none());
    }

    #[test]
    fn stopping_after_step_1_still_costs_an_attempt() {
        let mut dev = device("12345678");
        let now = Instant::now();
        let mut rng = test_rng(3);
        for s in 0..FREE_ATTEMPTS {
            let (_m, msg_a) = MediatorOtm::start(&Pin::new("00000000").unwrap(), DI, &mut rng);
            dev.handle_step1(u64::from(s), &msg_a, &EXP1, now).unwrap();
        }
        let (_m, msg_a) = MediatorOtm::start(&Pin::new("12345678").unwrap(), DI, &mut rng);
        assert!(matches!(
            dev.handle_step1(99, &msg_a, &EXP1, now),
            Err(OtmError::RateLimited { .. })
        ));
        assert!(dev.sessions.len() <= MAX_SESSIONS);
    }

    #[test]
    fn stale_sessions_expire() {
        let mut dev = device("12345678");
        let t0 = Instant::now();
        let mut rng = test_rng(4);
        let (m, msg_a) = MediatorOtm::start(&Pin::new("12345678").unwrap(), DI, &mut rng);
        let reply = dev.handle_step1(1, &msg_a, &EXP1, t0).unwrap();
        assert_eq!(dev.poll_timeout(), Some(t0 + SESSION_TIMEOUT));
        let confirm_a = m
            .finish(&reply.pake_msg_b, &reply.confirm_b, &EXP1)
            .unwrap();
        assert_eq!(
            dev.handle_step2(1, &confirm_a, t0 + SESSION_TIMEOUT),
            Err(OtmError::NoSession)
        );
        assert_eq!(dev.poll_timeout(), None);
        // Closed connections are forgotten at once.
        let (_m, msg_a) = MediatorOtm::start(&Pin::new("12345678").unwrap(), DI, &mut rng);
        dev.handle_step1(2, &msg_a, &EXP1, t0).unwrap();
        dev.drop_session(2);
        assert_eq!(dev.handle_step2(2, &[0; 32], t0), Err(OtmError::NoSession));
    }

    #[test]
    fn malformed_input_is_refused_without_counting() {
        let mut dev = device("12345678");
        let now = Instant::now();
        let mut rng = test_rng(6);
        let (_m, msg_a) = MediatorOtm::start(&Pin::new("12345678").unwrap(), DI, &mut rng);
        assert_eq!(
            dev.handle_step1(1, &msg_a, &[0; 31], now),
            Err(OtmError::BadExporter)
        );
        assert!(matches!(
            dev.handle_step1(1, &msg_a[..32], &EXP1, now),
            Err(OtmError::BadMessage(_))
        ));
        let mut wrong_side = msg_a.clone();
        wrong_side[0] = b'B';
        assert!(matches!(
            dev.handle_step1(1, &wrong_side, &EXP1, now),
            Err(OtmError::BadMessage(_))
        ));
        let mut not_a_point = msg_a.clone();
        not_a_point[1..].fill(0xff);
        let _ = dev.handle_step1(1, &not_a_point, &EXP1, now);
        assert_eq!(dev.handle_step2(5, &[0; 7], now), Err(OtmError::NoSession));
        let counted = dev.failed_attempts();
        assert!(counted <= 1, "only a decodable point can cost an attempt");
        // A short confirmation is simply wrong.
        let reply = dev.handle_step1(2, &msg_a, &EXP1, now).unwrap();
        assert_eq!(reply.pake_msg_b.len(), PAKE_MSG_LEN);
        assert_eq!(
            dev.handle_step2(2, &[0; 3], now),
            Err(OtmError::Unauthorized)
        );
    }

    #[test]
    fn passive_transcript_holds_no_pin() {
        let pin = "31415926";
        let mut dev = device(pin);
        let now = Instant::now();
        let mut rng = test_rng(11);
        let (m, msg_a) = MediatorOtm::start(&Pin::new(pin).unwrap(), DI, &mut rng);
        let req1 = step1_request(&msg_a);
        let OtmMessage::Step1 { pake_msg_a } = OtmMessage::decode(&req1).unwrap() else {
            panic!()
        };
        let reply = dev.handle_step1(1, &pake_msg_a, &EXP1, now).unwrap();
        let resp1 = step1_response(&reply);
        let parsed = parse_step1_response(&resp1).unwrap();
        assert_eq!(parsed, reply);
        let confirm_a = m
            .finish(&parsed.pake_msg_b, &parsed.confirm_b, &EXP1)
            .unwrap();
        let req2 = step2_request(&confirm_a);
        let OtmMessage::Step2 { confirm_a } = OtmMessage::decode(&req2).unwrap() else {
            panic!()
        };
        dev.handle_step2(1, &confirm_a, now).unwrap();
        let info = OwnerInfo {
            deviceuuid: DI.into(),
            devowneruuid: "x".into(),
        };
        let resp2 = step2_response(&info);
        assert_eq!(parse_step2_response(&resp2).unwrap(), info);

        let mut transcript = Vec::new();
        for bytes in [&req1.payload, &resp1.payload, &req2.payload, &resp2.payload] {
            transcript.extend_from_slice(bytes);
        }
        let needle = pin.as_bytes();
        assert!(!transcript.windows(needle.len()).any(|w| w == needle));
        // Nor in BCD, nor the PIN as a little- or big-endian integer.
        let n: u32 = pin.parse().unwrap();
        for needle in [n.to_le_bytes(), n.to_be_bytes()] {
            assert!(!transcript.windows(4).any(|w| w == needle));
        }
    }

    #[test]
    fn wire_format_is_strict() {
        let mut req = step1_request(&[0x41; 33]);
        assert_eq!(req.path, OTM_HREF);
        assert!(matches!(
            OtmMessage::decode(&req),
            Ok(OtmMessage::Step1 { .. })
        ));
        for body in [
            vec![0xa0],                                     // {}
            vec![0x80],                                     // []
            vec![0xff],                                     // garbage
            vec![0xa1, 0x64, b's', b't', b'e', b'p', 0x03], // {"step":3}
        ] {
            req.payload = body;
            assert!(matches!(
                OtmMessage::decode(&req),
                Err(OtmError::BadMessage(_))
            ));
        }
        let mut json = step2_request(&[0; 32]);
        json.content_format = Some(50);
        json.payload = br#"{"step":2,"confirm":"AAAA"}"#.to_vec();
        assert!(OtmMessage::decode(&json).is_err());
        let wrong_len = step2_request(&[0; 31]);
        assert!(OtmMessage::decode(&wrong_len).is_err());

        let refused = Response::error(ResponseType::Unauthorized, "no");
        assert!(matches!(
            parse_step1_response(&refused),
            Err(OtmError::Rejected {
                code: ResponseType::Unauthorized,
                ..
            })
        ));
    }

    #[test]
    fn pins() {
        assert!(Pin::new("1234567").is_err());
        assert!(Pin::new("123456789").is_err());
        assert!(Pin::new("1234567a").is_err());
        assert!(Pin::new("１２３４５６７８").is_err());
        assert_eq!(Pin::new(" 01234567\n").unwrap().expose(), "01234567");
        let mut rng = test_rng(1);
        let a = Pin::generate(&mut rng);
        let b = Pin::generate(&mut rng);
        assert_eq!(a.expose().len(), 8);
        assert!(a.expose().bytes().all(|c| c.is_ascii_digit()));
        assert_ne!(a.expose(), b.expose());
        // Rejection sampling: a source that first yields values above the limit.
        let mut calls = 0;
        let mut high_then_zero = |buf: &mut [u8]| {
            calls += 1;
            buf.fill(if calls == 1 { 0xff } else { 0 });
        };
        assert_eq!(Pin::generate(&mut high_then_zero).expose(), "00000000");
    }

    #[test]
    fn secrets_are_redacted_in_debug() {
        let pin = Pin::new("24681357").unwrap();
        assert_eq!(format!("{pin:?}"), "Pin(<redacted>)");
        let dev = DeviceOtm::new(pin.clone(), DI, Box::new(test_rng(2)));
        let mut rng = test_rng(3);
        let (m, _) = MediatorOtm::start(&pin, DI, &mut rng);
        let key = SharedKey([0x5a; 32]);
        let all = format!("{dev:?} {m:?} {key:?} {:?}", OtmError::Unauthorized);
        assert!(!all.contains("24681357"), "{all}");
        assert!(!all.contains("5a5a") && !all.contains("90, 90"), "{all}");
    }
}
