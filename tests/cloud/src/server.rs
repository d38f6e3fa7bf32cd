//! Start-up, listeners and graceful shutdown.

use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tracing::{info, warn};

use crate::app::App;
use crate::core::{Core, CoreConfig};
use crate::http::ApiListener;
use crate::pki::{device_id_from_cert, Pki};
use crate::store::Store;

/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the command line configures.
#[derive(Debug, Clone)]
pub struct Config {
    /// coaps+tcp listener.
    pub coap: SocketAddr,
    /// Optional plain coap+tcp listener.
    pub coap_plain: Option<SocketAddr>,
    /// The API's plain HTTP listener.
    pub http: Option<SocketAddr>,
    /// The API's HTTPS listener (RFC 9110 §4.2.2), with a certificate from the cloud's CA.
    pub https: Option<SocketAddr>,
    /// More names (DNS names or IP addresses) for the HTTPS certificate's SANs, for clients
    /// that reach the listener under another address than loopback or its own.
    pub https_names: Vec<String>,
    /// Data directory (keys, certificates, `cloud.db`).
    pub data_dir: PathBuf,
    /// Access-token lifetime in seconds; 0 = permanent.
    pub token_lifetime: u64,
    /// The cloud UUID to use on first start.
    pub sid: Option<String>,
    /// Authorisation Provider name.
    pub apn: String,
    /// Keepalive: silence before a Ping, and time to wait for its Pong.
    pub keepalive: Duration,
    /// The coaps+tcp URI devices are given (`coapGateway` in `/.well-known/hub-configuration`), when they reach
    /// the listener through a forward under another address; `None`: the listener's own.
    pub device_cis: Option<String>,
    /// Tests only: present a server certificate that becomes valid this long after the start
    /// (what a device whose clock is behind sees).
    pub cert_not_before_offset: Option<Duration>,
    /// The Max-Message-Size announced to devices.
    pub max_message_size: u32,
    /// Tests only: the `expiresin` answered whatever the tokens' lifetime.
    pub answer_expiresin: Option<i64>,
}

/// The TLS configuration of the device listener: the cloud's server certificate, a client
/// certificate required and validated against the cloud CA, TLS 1.3 and 1.2 (ring provider,
/// whose TLS 1.2 suites include ECDHE-ECDSA-AES128-GCM-SHA256).
pub fn tls_config(pki: &Pki) -> Result<Arc<ServerConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    roots
        .add(pki.ca_der.clone())
        .map_err(|e| format!("CA certificate: {e}"))?;
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| format!("client verifier: {e}"))?;
    let config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS versions: {e}"))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(pki.server_chain.clone(), pki.server_key()?)
        .map_err(|e| format!("server certificate: {e}"))?;
    Ok(Arc::new(config))
}

/// The TLS configuration of the HTTPS API listener: its own certificate from the cloud's CA
/// (see [`Pki::https_certificate`]), no client certificate (the API authenticates with bearer
/// tokens), TLS 1.3 and 1.2 (RFC 8446), ALPN `http/1.1` since the API speaks HTTP/1.1 only.
pub fn https_tls_config(
    pki: &Pki,
    listen: std::net::IpAddr,
    names: &[String],
) -> Result<Arc<ServerConfig>, String> {
    let (chain, key) = pki.https_certificate(listen, names)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS versions: {e}"))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| format!("HTTPS certificate: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Serves the API on `listener` until the stop signal.
async fn serve_api<L>(listener: L, router: axum::Router, mut stop: watch::Receiver<bool>)
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    let shutdown = async move {
        let _ = stop.changed().await;
    };
    if let Err(e) = axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
    {
        warn!("HTTP server: {e}");
    }
}

/// A TCP listener whose connections come out TLS-terminated, for `axum::serve`. Handshakes run
/// in their own tasks (bounded by [`HANDSHAKE_TIMEOUT`]) so that a slow or silent client does
/// not hold up the others; a failed one is logged and dropped.
pub struct TlsListener {
    rx: tokio::sync::mpsc::Receiver<(tokio_rustls::server::TlsStream<TcpStream>, SocketAddr)>,
    local: std::io::Result<SocketAddr>,
    accepting: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    pub fn new(
        listener: TcpListener,
        config: Arc<ServerConfig>,
        stop: watch::Receiver<bool>,
    ) -> TlsListener {
        let local = listener.local_addr();
        let acceptor = TlsAcceptor::from(config);
        let (tx, rx) = tokio::sync::mpsc::channel(32);
        let accepting = tokio::spawn(accept_until_stopped(
            listener,
            "HTTPS",
            stop,
            move |sock, peer| {
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(sock)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => warn!(%peer, "HTTPS: TLS handshake failed: {e}"),
                        Err(_) => warn!(%peer, "HTTPS: TLS handshake timed out"),
                    }
                });
            },
        ));
        TlsListener {
            rx,
            local,
            accepting,
        }
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(v) => v,
            // The accept task ended (shutdown): no more connections.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        match &self.local {
            Ok(a) => Ok(*a),
            Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
        }
    }
}

/// Runs the cloud until `stop` completes. Prints the ready lines on stdout once listening.
pub async fn run(cfg: Config, stop: impl Future<Output = ()>) -> Result<(), String> {
    let mut pki = Pki::load_or_create(&cfg.data_dir, cfg.sid.as_deref())?;
    if let Some(offset) = cfg.cert_not_before_offset {
        pki = pki.with_server_not_before(offset)?;
        info!(
            "tests: the server certificate becomes valid in {} s",
            offset.as_secs()
        );
    }
    let store = Store::open(&cfg.data_dir.join("cloud.db")).map_err(|e| e.to_string())?;
    store.mark_all_offline().map_err(|e| e.to_string())?;
    let tls = TlsAcceptor::from(tls_config(&pki)?);

    let bind = |addr: SocketAddr, what: &str| {
        let what = what.to_owned();
        async move {
            TcpListener::bind(addr)
                .await
                .map_err(|e| format!("cannot listen on {addr} ({what}): {e}"))
        }
    };
    let coap = bind(cfg.coap, "--coap").await?;
    let plain = match cfg.coap_plain {
        Some(a) => Some(bind(a, "--coap-plain").await?),
        None => None,
    };
    let http = match cfg.http {
        Some(a) => Some(bind(a, "--http").await?),
        None => None,
    };
    let https = match cfg.https {
        Some(a) => Some(bind(a, "--https").await?),
        None => None,
    };
    let local = |l: &TcpListener| l.local_addr().map_err(|e| e.to_string());
    let coap_addr = local(&coap)?;
    let plain_addr = plain.as_ref().map(local).transpose()?;
    let http_addr = http.as_ref().map(local).transpose()?;
    let https_addr = https.as_ref().map(local).transpose()?;
    let https_tls = match &https_addr {
        Some(a) => Some(https_tls_config(&pki, a.ip(), &cfg.https_names)?),
        None => None,
    };
    let ca_file = cfg.data_dir.join("ca.crt");
    let cis = cfg
        .device_cis
        .clone()
        .unwrap_or_else(|| format!("coaps+tcp://{coap_addr}"));
    let cis_plain = plain_addr.map(|a| format!("coap+tcp://{a}"));

    let core = Core::new(
        store,
        CoreConfig {
            apn: cfg.apn.clone(),
            token_lifetime_secs: cfg.token_lifetime,
            answer_expiresin: cfg.answer_expiresin,
            ..CoreConfig::default()
        },
    );
    let sid = pki.sid.clone();
    let client_secret = load_or_create_secret(&cfg.data_dir.join("client-secret"))?;
    let app = App::new(
        core,
        pki,
        cis.clone(),
        cis_plain.clone(),
        cfg.keepalive,
        http_addr
            .or(https_addr)
            .ok_or("no API listener: give --http or --https")?,
        client_secret,
    );
    app.set_max_message_size(cfg.max_message_size);
    let (stop_tx, stop_rx) = watch::channel(false);
    let tracker = Arc::new(());

    let mut tasks = Vec::new();
    tasks.push(tokio::spawn(accept_loop(
        coap,
        Some(tls),
        app.clone(),
        stop_rx.clone(),
        tracker.clone(),
    )));
    if let Some(plain) = plain {
        tasks.push(tokio::spawn(accept_loop(
            plain,
            None,
            app.clone(),
            stop_rx.clone(),
            tracker.clone(),
        )));
    }
    let router = crate::http::router(app.clone());
    if let (Some(listener), Some(addr)) = (http, http_addr) {
        let api = ApiListener {
            scheme: "http",
            addr,
        };
        tasks.push(tokio::spawn(serve_api(
            listener,
            router.clone().layer(axum::Extension(api)),
            stop_rx.clone(),
        )));
    }
    if let (Some(listener), Some(addr), Some(tls)) = (https, https_addr, https_tls) {
        let api = ApiListener {
            scheme: "https",
            addr,
        };
        let listener = TlsListener::new(listener, tls, stop_rx.clone());
        tasks.push(tokio::spawn(serve_api(
            listener,
            router.layer(axum::Extension(api)),
            stop_rx.clone(),
        )));
    }

    {
        let mut out = std::io::stdout().lock();
        // The listener itself: a forwarded `cis` (--device-cis) is in /.well-known/hub-configuration.
        let mut lines =
            format!("ocf-dev-cloud: sid {sid}\nocf-dev-cloud: coap coaps+tcp://{coap_addr}\n");
        if let Some(p) = &cis_plain {
            lines.push_str(&format!("ocf-dev-cloud: coap-plain {p}\n"));
        }
        if let Some(a) = http_addr {
            lines.push_str(&format!("ocf-dev-cloud: http http://{a}\n"));
        }
        if let Some(a) = https_addr {
            // Clients trust the API's certificate through the cloud's CA.
            lines.push_str(&format!(
                "ocf-dev-cloud: https https://{a}\nocf-dev-cloud: ca {}\n",
                ca_file.display()
            ));
        }
        if let Some(a) = https_addr.map(|a| format!("https://{a}/")) {
            lines.push_str(&format!("ocf-dev-cloud: console {a}\n"));
        } else if let Some(a) = http_addr {
            lines.push_str(&format!("ocf-dev-cloud: console http://{a}/\n"));
        }
        lines.push_str("ocf-dev-cloud: ready\n");
        out.write_all(lines.as_bytes())
            .and_then(|()| out.flush())
            .map_err(|e| format!("stdout: {e}"))?;
    }
    info!(%sid, %cis, "ready");

    stop.await;
    info!("shutting down");
    let _ = stop_tx.send(true);
    // Give connections a moment to send their Release and close.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while Arc::strong_count(&tracker) > 1 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for t in tasks {
        t.abort();
    }
    Ok(())
}

/// The API client's secret: read from `path`, or made and written there (mode 0600).
fn load_or_create_secret(path: &std::path::Path) -> Result<String, String> {
    match std::fs::read_to_string(path) {
        Ok(s) if !s.trim().is_empty() => return Ok(s.trim().to_owned()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("{}: {e}", path.display())),
    }
    let secret = crate::core::random_hex(24)?;
    crate::pki::write_private(path, format!("{secret}\n").as_bytes())?;
    Ok(secret)
}

/// Accepts TCP connections until `stop` changes and hands each to `on_connection`, with
/// TCP_NODELAY set; a failed accept (EMFILE and the like) is logged and retried after a pause.
async fn accept_until_stopped(
    listener: TcpListener,
    what: &'static str,
    mut stop: watch::Receiver<bool>,
    mut on_connection: impl FnMut(TcpStream, SocketAddr),
) {
    loop {
        let (sock, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(v) => v,
                Err(e) => {
                    warn!("accept ({what}): {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        if let Err(e) = sock.set_nodelay(true) {
            warn!(%peer, "TCP_NODELAY ({what}): {e}");
        }
        on_connection(sock, peer);
    }
}

/// Serves the device side (coap+tcp, or coaps+tcp with `tls`) until `stop` changes.
async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    app: Arc<App>,
    stop: watch::Receiver<bool>,
    tracker: Arc<()>,
) {
    let what = if tls.is_some() {
        "coaps+tcp"
    } else {
        "coap+tcp"
    };
    let conn_stop = stop.clone();
    accept_until_stopped(listener, what, stop, move |sock, peer| {
        let app = app.clone();
        let stop = conn_stop.clone();
        let tls = tls.clone();
        let guard = tracker.clone();
        tokio::spawn(async move {
            let _guard = guard;
            match tls {
                None => crate::device::serve(app, sock, peer, None, stop).await,
                Some(acceptor) => serve_tls(acceptor, sock, peer, app, stop).await,
            }
        });
    })
    .await
}

async fn serve_tls(
    acceptor: TlsAcceptor,
    sock: TcpStream,
    peer: SocketAddr,
    app: Arc<App>,
    stop: watch::Receiver<bool>,
) {
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(sock)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            warn!(%peer, "TLS handshake failed: {e}");
            return;
        }
        Err(_) => {
            warn!(%peer, "TLS handshake timed out");
            return;
        }
    };
    let leaf = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.as_ref().to_vec());
    let di = match leaf.as_deref().map(device_id_from_cert) {
        Some(Ok(di)) => di,
        Some(Err(e)) => {
            warn!(%peer, "device certificate refused: {e}");
            return;
        }
        None => {
            warn!(%peer, "no device certificate");
            return;
        }
    };
    crate::device::serve(app, tls, peer, Some(di), stop).await;
}
