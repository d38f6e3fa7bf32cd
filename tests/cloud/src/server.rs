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
    /// HTTP listener.
    pub http: SocketAddr,
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
    /// Tests only: present a server certificate that becomes valid this long after the start
    /// (what a device whose clock is behind sees).
    pub cert_not_before_offset: Option<Duration>,
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
    let http = bind(cfg.http, "--http").await?;
    let local = |l: &TcpListener| l.local_addr().map_err(|e| e.to_string());
    let coap_addr = local(&coap)?;
    let plain_addr = plain.as_ref().map(local).transpose()?;
    let http_addr = local(&http)?;
    let cis = format!("coaps+tcp://{coap_addr}");
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
    let app = App::new(core, pki, cis.clone(), cis_plain.clone(), cfg.keepalive);
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
    let mut http_stop = stop_rx.clone();
    let router = crate::http::router(app.clone());
    tasks.push(tokio::spawn(async move {
        let shutdown = async move {
            let _ = http_stop.changed().await;
        };
        if let Err(e) = axum::serve(http, router)
            .with_graceful_shutdown(shutdown)
            .await
        {
            warn!("HTTP server: {e}");
        }
    }));

    {
        let mut out = std::io::stdout().lock();
        let mut lines = format!("ocf-dev-cloud: sid {sid}\nocf-dev-cloud: coap {cis}\n");
        if let Some(p) = &cis_plain {
            lines.push_str(&format!("ocf-dev-cloud: coap-plain {p}\n"));
        }
        lines.push_str(&format!(
            "ocf-dev-cloud: http http://{http_addr}\nocf-dev-cloud: ready\n"
        ));
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

async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    app: Arc<App>,
    mut stop: watch::Receiver<bool>,
    tracker: Arc<()>,
) {
    loop {
        let (sock, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(v) => v,
                Err(e) => {
                    warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        if let Err(e) = sock.set_nodelay(true) {
            warn!("TCP_NODELAY: {e}");
        }
        let app = app.clone();
        let stop = stop.clone();
        let tls = tls.clone();
        let guard = tracker.clone();
        tokio::spawn(async move {
            let _guard = guard;
            match tls {
                None => crate::device::serve(app, sock, peer, None, stop).await,
                Some(acceptor) => serve_tls(acceptor, sock, peer, app, stop).await,
            }
        });
    }
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
