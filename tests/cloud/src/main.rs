//! `ocf-dev-cloud`: a development OCF Cloud (see the library documentation).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use ocf_dev_cloud::server::{self, Config};
use tracing::error;

/// Development OCF Cloud: behaves like plgd hub towards devices and clients, with a web console.
#[derive(Parser, Debug)]
#[command(name = "ocf-dev-cloud", version, about)]
struct Cli {
    /// coaps+tcp listener for devices (port 0: chosen by the OS).
    #[arg(long, value_name = "ADDR:PORT")]
    coap: SocketAddr,
    /// Optional plain coap+tcp listener for devices.
    #[arg(long, value_name = "ADDR:PORT")]
    coap_plain: Option<SocketAddr>,
    /// HTTP/JSON API listener, plain HTTP.
    #[arg(long, value_name = "ADDR:PORT", required_unless_present = "https")]
    http: Option<SocketAddr>,
    /// The same API over HTTPS (as plgd hub serves it), with a certificate from the cloud's CA
    /// (DATA-DIR/ca.crt, also `certificateAuthorities` of the hub configuration), made at each
    /// start for loopback, ADDR and the --https-name names. Its hub configuration names
    /// https:// services. May be given with --http.
    #[arg(long, value_name = "ADDR:PORT")]
    https: Option<SocketAddr>,
    /// Another DNS name or IP address clients reach --https under (repeatable), for its
    /// certificate.
    #[arg(long, value_name = "NAME", requires = "https")]
    https_name: Vec<String>,
    /// Directory for the CA, the server certificate, the sid and cloud.db.
    #[arg(long, value_name = "DIR")]
    data_dir: PathBuf,
    /// Access-token lifetime in seconds; 0 = permanent tokens (expiresin -1).
    #[arg(long, value_name = "SECONDS", default_value_t = 3600)]
    token_lifetime: u64,
    /// The cloud UUID to use when DATA-DIR has none yet (default: a random one).
    #[arg(long, value_name = "UUID")]
    sid: Option<String>,
    /// Authorisation Provider name devices must send as `authprovider`.
    #[arg(long, value_name = "NAME", default_value = "plgd")]
    apn: String,
    /// Seconds of silence before a keepalive Ping, and to wait for its Pong.
    #[arg(long, value_name = "SECONDS", default_value_t = 20, hide = true)]
    keepalive_secs: u64,
    /// The coaps+tcp URI given to devices as `cis` (`coapGateway` of /.well-known/hub-configuration, which the
    /// Mediator writes into CoAPCloudConf) when they reach --coap through a forward, e.g. a QEMU
    /// guest's `guestfwd` address (default: the --coap listener's own address).
    #[arg(long, value_name = "URI")]
    device_cis: Option<String>,
    /// For tests only: present a server certificate whose validity starts SECONDS after the
    /// cloud starts (in memory; the stored one is kept), as a device whose clock is behind sees
    /// its cloud.
    #[arg(long, value_name = "SECONDS")]
    cert_not_before_offset: Option<u64>,
    /// The Max-Message-Size announced to devices in the CSM (RFC 8323 §5.3.1): larger
    /// responses and notifications must come block-wise (RFC 7959), which the cloud follows.
    #[arg(long, value_name = "BYTES", default_value_t = ocf_dev_cloud::device::MAX_MESSAGE_SIZE)]
    max_message_size: u32,
    /// For tests only: answer this `expiresin` at sign-up, sign-in and token refresh, whatever
    /// the tokens' real lifetime (`--token-lifetime`), as a faulty cloud might.
    #[arg(long, value_name = "SECONDS", allow_negative_numbers = true)]
    answer_expiresin: Option<i64>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("OCF_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let cfg = Config {
        coap: cli.coap,
        coap_plain: cli.coap_plain,
        http: cli.http,
        https: cli.https,
        https_names: cli.https_name,
        data_dir: cli.data_dir,
        token_lifetime: cli.token_lifetime,
        sid: cli.sid,
        apn: cli.apn,
        keepalive: Duration::from_secs(cli.keepalive_secs.max(1)),
        device_cis: cli.device_cis,
        cert_not_before_offset: cli.cert_not_before_offset.map(Duration::from_secs),
        max_message_size: cli.max_message_size,
        answer_expiresin: cli.answer_expiresin,
    };
    let result = runtime.block_on(async {
        let stop = shutdown_signal()?;
        server::run(cfg, stop).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            eprintln!("ocf-dev-cloud: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Completes on SIGTERM or SIGINT.
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>, String> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).map_err(|e| format!("SIGTERM: {e}"))?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| format!("SIGINT: {e}"))?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
    })
}
