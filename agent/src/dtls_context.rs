//! The OpenSSL context of the DTLS endpoint (see `dtls.rs`): DTLS 1.2 only, the suites of
//! OCF's ownership transfer methods, the device's certificate, the PSK lookup and the
//! HelloVerifyRequest cookie (RFC 6347 §4.2.1). No resumption, no tickets.

use std::cell::RefCell;
use std::net::SocketAddr;

use ocf::security::doc::SessionAuth;
use ocf::security::dtls_keys::p_sha256;
use openssl::error::ErrorStack;
use openssl::ex_data::Index;
use openssl::pkey::PKey;
use openssl::ssl::{
    Ssl, SslContext, SslContextBuilder, SslMethod, SslOptions, SslRef, SslSessionCacheMode,
    SslVerifyMode, SslVersion,
};
use openssl::x509::X509;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tracing::debug;

/// The suites offered, certificate suites first (iotivity-lite's order).
pub const CIPHERS: &str = "ECDHE-ECDSA-AES128-CCM8:ECDHE-ECDSA-AES128-CCM:\
                           ECDHE-ECDSA-AES256-CCM8:ECDHE-ECDSA-AES256-CCM:\
                           ECDHE-PSK-AES128-CBC-SHA256";

/// Finds the key for a PSK identity, and what it authenticates.
pub type PskLookup = Box<dyn Fn(&[u8]) -> Option<(Vec<u8>, SessionAuth)>>;

/// What the OpenSSL callbacks (which must be `Send + Sync`, so cannot hold the agent) store
/// in each `Ssl`.
#[derive(Clone, Copy)]
pub struct Indices {
    pub peer: Index<Ssl, SocketAddr>,
    pub auth: Index<Ssl, SessionAuth>,
}

thread_local! {
    /// What answers the PSK lookups of handshakes driven on this thread (the runtime is
    /// single-threaded; OpenSSL's callback, which must be `Send + Sync`, runs inside
    /// `SslStream::accept`).
    static PSK_LOOKUP: RefCell<Option<PskLookup>> = const { RefCell::new(None) };
}

/// Sets what answers this thread's PSK lookups.
pub fn set_psk_lookup(lookup: PskLookup) {
    PSK_LOOKUP.with(|l| *l.borrow_mut() = Some(lookup));
}

/// The SSL context of the endpoint for the device's certificate.
#[derive(Clone)]
pub struct DtlsContext {
    pub ctx: SslContext,
    pub idx: Indices,
    cookie_key: [u8; 32],
}

impl DtlsContext {
    /// The HelloVerifyRequest cookie for `peer` (what OpenSSL's cookie callbacks use too).
    pub fn cookie(&self, peer: &SocketAddr) -> [u8; COOKIE_LEN] {
        cookie(&self.cookie_key, Some(peer))
    }
}

/// Length of our cookies.
pub const COOKIE_LEN: usize = 16;

/// Builds the context: suites, certificate, the PSK and cookie callbacks (see module docs).
pub fn context(
    chain: &[CertificateDer<'static>],
    key: &PrivateKeyDer<'static>,
    cookie_key: [u8; 32],
) -> Result<DtlsContext, String> {
    fn e(what: &'static str) -> impl Fn(ErrorStack) -> String {
        move |err| format!("DTLS {what}: {err}")
    }
    let idx = Indices {
        peer: Ssl::new_ex_index().map_err(e("ex data"))?,
        auth: Ssl::new_ex_index().map_err(e("ex data"))?,
    };
    let mut b = SslContextBuilder::new(SslMethod::dtls_server()).map_err(e("context"))?;
    b.set_min_proto_version(Some(SslVersion::DTLS1_2))
        .map_err(e("version"))?;
    b.set_max_proto_version(Some(SslVersion::DTLS1_2))
        .map_err(e("version"))?;
    b.set_cipher_list(CIPHERS).map_err(e("suites"))?;
    b.set_options(SslOptions::COOKIE_EXCHANGE | SslOptions::NO_QUERY_MTU | SslOptions::NO_TICKET);
    b.set_session_cache_mode(SslSessionCacheMode::OFF);
    let (leaf, rest) = chain
        .split_first()
        .ok_or("DTLS: the server identity has no certificate")?;
    let leaf = X509::from_der(leaf).map_err(e("certificate"))?;
    b.set_certificate(&leaf).map_err(e("certificate"))?;
    for c in rest {
        b.add_extra_chain_cert(X509::from_der(c).map_err(e("chain"))?)
            .map_err(e("chain"))?;
    }
    let key = PKey::private_key_from_der(key.secret_der()).map_err(e("key"))?;
    b.set_private_key(&key).map_err(e("key"))?;
    b.check_private_key().map_err(e("key"))?;
    // Any client certificate passes the handshake; the access control weighs it.
    b.set_verify_callback(SslVerifyMode::PEER, |_, _| true);
    b.set_psk_server_callback(move |ssl, identity, out| Ok(psk_lookup(ssl, idx, identity, out)));
    b.set_cookie_generate_cb(move |ssl, out| {
        let cookie = cookie(&cookie_key, ssl.ex_data(idx.peer));
        let n = cookie.len().min(out.len());
        out[..n].copy_from_slice(&cookie[..n]);
        Ok(n)
    });
    b.set_cookie_verify_cb(move |ssl, got| {
        let want = cookie(&cookie_key, ssl.ex_data(idx.peer));
        // Not secret-dependent timing that matters: the cookie only proves the address.
        got == want
    });
    Ok(DtlsContext {
        ctx: b.build(),
        idx,
        cookie_key,
    })
}

/// The cookie for a peer address: PRF(key, address ‖ port), 16 bytes.
fn cookie(key: &[u8; 32], peer: Option<&SocketAddr>) -> [u8; COOKIE_LEN] {
    let mut out = [0u8; COOKIE_LEN];
    let addr = peer.map_or_else(String::new, SocketAddr::to_string);
    p_sha256(key, &[b"ocfpi dtls cookie", addr.as_bytes()], &mut out);
    out
}

/// The PSK callback: the key for `identity` from the server, or 0 (the handshake fails).
fn psk_lookup(ssl: &mut SslRef, idx: Indices, identity: Option<&[u8]>, out: &mut [u8]) -> usize {
    let Some(identity) = identity else { return 0 };
    let found = PSK_LOOKUP.with(|l| l.borrow().as_ref().and_then(|f| f(identity)));
    let Some((mut key, auth)) = found else {
        debug!("DTLS handshake with an unknown PSK identity");
        return 0;
    };
    let n = if key.len() <= out.len() {
        out[..key.len()].copy_from_slice(&key);
        ssl.set_ex_data(idx.auth, auth);
        key.len()
    } else {
        0
    };
    key.fill(0);
    std::hint::black_box(&key);
    n
}
