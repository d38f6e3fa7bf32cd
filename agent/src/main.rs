//! `ocf-agent`: serves a board's sensors and actuators as OCF resources.

mod board;
mod boot;
mod cli;
mod cloud;
mod conn;
mod console;
mod control;
#[cfg(feature = "dtls")]
mod dtls;
#[cfg(feature = "dtls")]
mod dtls_context;
mod log;
mod maintenance;
mod security;
mod server;
mod state;
mod systemd;
mod tcp;
mod tls;
mod tls_server;
mod udp;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::rc::Rc;

use ocf::resource::endpoint::{self, Endpoint, InterfaceAddress};
use ocf::resource::{Device, DeviceInfo, PlatformInfo, Value};
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::cli::{Cli, Command};
use crate::security::Credentials;
use crate::server::Agent;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = match &cli.command {
        Some(Command::Csr { state_dir }) => Some(cloud::print_csr(state_dir)),
        Some(Command::FactoryReset { state_dir }) => {
            log::init();
            Some(control::factory_reset_command(state_dir))
        }
        None => None,
    };
    if let Some(result) = command {
        return match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("ocf-agent: {e}");
                ExitCode::FAILURE
            }
        };
    }
    log::init();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let local = tokio::task::LocalSet::new();
    match local.block_on(&runtime, run(cli)) {
        Ok(Stop::Signal) => ExitCode::SUCCESS,
        Ok(Stop::Reboot(status)) => ExitCode::from(status),
        Err(e) => {
            error!("{e}");
            eprintln!("ocf-agent: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Why the agent stopped.
enum Stop {
    /// SIGTERM or SIGINT: exit 0.
    Signal,
    /// `/oic/mnt` `rb` with `--reboot-exit-status`: exit with that status.
    Reboot(u8),
}

async fn run(cli: Cli) -> Result<Stop, String> {
    let board = board::load(&cli.board)?;
    state::ensure_dir(&cli.state_dir).map_err(|e| {
        format!(
            "{}: cannot create the state directory: {e}",
            cli.state_dir.display()
        )
    })?;
    // Held until the process ends: one agent per state directory.
    let _lock = state::StateLock::acquire(&cli.state_dir)?;
    let boot = boot::prepare(&cli.state_dir, cli.insecure_dev)?;
    let identity = boot.identity.clone();
    if boot.identity_created {
        info!(di = %identity.di, "created a new device identity");
    }
    if boot.reset_finished {
        info!(di = %identity.di, "an interrupted factory reset was finished");
    }
    if cli.insecure_dev {
        warn!(
            "insecure development mode: plain coap+tcp and UDP serve every resource without access \
             control, and the cloud link runs without onboarding; never use this in production"
        );
    } else if cli.tcp.is_some() {
        warn!("--tcp is ignored: the plain coap+tcp listener only exists with --insecure-dev");
    }
    if boot.key_created {
        info!("created the identity key {}", tls::IDENTITY_KEY);
    }
    let (pin, created) = security::load_or_create_pin(cli.pin_file.as_deref(), &cli.state_dir)?;
    if created {
        console::show_pin("setup PIN", &pin);
    }
    let mfg_paths = cli.mfg_cert.as_deref().zip(cli.mfg_key.as_deref());
    let manufacturer = tls_server::load_manufacturer(mfg_paths, &cli.state_dir)?;
    if manufacturer.is_some() {
        info!("the secure endpoint presents the manufacturer certificate");
    }
    let facts = board::facts(&board);
    let credentials = Rc::new(Credentials::new(
        cli.state_dir.clone(),
        cli.insecure_dev,
        boot.key,
        manufacturer,
    )?);
    info!(dos = boot.security.dos().name(), "security state loaded");
    let cloud_timing = cloud::timing(cli.cloud_timing.as_deref())?;
    let multicast_port: Option<u16> = match cli.multicast.as_str() {
        "off" => None,
        p => Some(
            p.parse()
                .map_err(|_| format!("--multicast: {p:?} is neither a port nor \"off\""))?,
        ),
    };

    let mut extra = facts.platform_extra;
    extra
        .entry("mnfv".into())
        .or_insert_with(|| Value::Text(env!("CARGO_PKG_VERSION").into()));
    if let Some(os) = os_release() {
        extra.insert("mnos".into(), Value::Text(os));
    }
    let device = Device::new(
        DeviceInfo {
            di: identity.di.clone(),
            piid: identity.piid.clone(),
            name: identity.name.clone().unwrap_or(facts.device_name.clone()),
            device_type: facts.device_type,
            spec_version: "ocf.2.5.0".into(),
            data_model_version: "ocf.res.1.3.0,ocf.sh.1.3.0".into(),
            software_version: env!("CARGO_PKG_VERSION").into(),
        },
        PlatformInfo {
            pi: identity.pi.clone(),
            manufacturer: facts.manufacturer,
            extra,
        },
    );
    let session = cloud::load_session(
        &cli.state_dir,
        ocf::cloud::DeviceInfo {
            di: identity.di.clone(),
            name: device.info().name.clone(),
        },
        cloud_timing,
    );
    let mut server = ocf::server::Server::new(
        device,
        boot.security,
        session,
        ocf::server::Options {
            dev_mode: cli.insecure_dev,
            pin,
            random: security::random_fill,
            default_name: facts.device_name.clone(),
            cloud_timing,
        },
        std::time::Instant::now(),
    )?;
    server.set_csr(credentials.csr_pem(&identity.di)?);
    // OCF's standard methods (OCF Security §7.3): Random PIN needs the DTLS endpoint,
    // Manufacturer Certificate a manufacturer certificate (over DTLS or coaps+tcp).
    let mut oxms = Vec::new();
    if cli.standard_otm.random_pin && cfg!(feature = "dtls") && cli.dtls.is_some() {
        oxms.push(ocf::security::doxm::OXM_RANDOM_PIN);
    }
    if cli.standard_otm.mfg_cert && credentials.has_manufacturer_certificate() {
        oxms.push(ocf::security::doxm::OXM_MFG_CERT);
    }
    server.set_offered_oxms(&oxms);
    let agent = Rc::new(Agent::new(
        server,
        cli.state_dir.clone(),
        credentials.server_config(&identity.di)?,
    ));
    let maintenance = maintenance::Maintenance::new(match cli.reboot_exit_status {
        Some(status) => maintenance::RebootMethod::ExitStatus(status),
        None => maintenance::RebootMethod::Command {
            command: cli.reboot_command.clone(),
            timeout: cli.reboot_timeout,
        },
    });
    let sensors = board::populate(&board, &agent)?;

    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::task::spawn_local(security::follow_di_changes(
        agent.clone(),
        credentials.clone(),
        stop_rx.clone(),
    ));
    let notifier = Rc::new(systemd::Notifier::from_env());
    if notifier.is_enabled() {
        if let Some(every) = systemd::watchdog_from_env() {
            info!("pinging the service manager's watchdog every {every:?}");
            tokio::task::spawn_local(systemd::ping_watchdog(
                notifier.clone(),
                every,
                stop_rx.clone(),
            ));
        }
    }
    // (scheme, bound address) of each endpoint: what discovery's `eps` is made from, again at
    // each re-scan of the interfaces.
    let mut bound: Vec<(&'static str, SocketAddr)> = Vec::new();

    let udp_addrs = if cli.udp.is_empty() {
        vec![
            SocketAddr::from(([0, 0, 0, 0], 5683)),
            SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 5683)),
        ]
    } else {
        cli.udp.clone()
    };
    let mut unicast_v4 = None;
    let mut unicast_v6 = None;
    for addr in udp_addrs {
        let socket = match udp::bind_unicast(addr) {
            Ok(s) => Rc::new(s),
            Err(e) if addr.is_ipv6() && cli.udp.is_empty() => {
                warn!("no IPv6 CoAP endpoint ({addr}): {e}");
                continue;
            }
            Err(e) => return Err(format!("cannot bind UDP {addr}: {e}")),
        };
        let local = socket.local_addr().map_err(|e| e.to_string())?;
        bound.push(("coap", local));
        if local.is_ipv6() {
            unicast_v6.get_or_insert(socket.clone());
        } else {
            unicast_v4.get_or_insert(socket.clone());
        }
        tokio::task::spawn_local(udp::serve_unicast(socket, agent.clone(), stop_rx.clone()));
    }
    if cli.insecure_dev {
        let addr = cli.tcp.unwrap_or(SocketAddr::from(([0, 0, 0, 0], 5683)));
        let tcp = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| format!("cannot bind TCP {addr}: {e}"))?;
        let tcp_local = tcp.local_addr().map_err(|e| e.to_string())?;
        bound.push(("coap+tcp", tcp_local));
        tcp::log_listening(&tcp);
        tokio::task::spawn_local(tcp::serve(tcp, agent.clone(), stop_rx.clone()));
    }
    let tls = tokio::net::TcpListener::bind(cli.tls)
        .await
        .map_err(|e| format!("cannot bind TCP {} for coaps+tcp: {e}", cli.tls))?;
    let tls_local = tls.local_addr().map_err(|e| e.to_string())?;
    bound.push(("coaps+tcp", tls_local));
    tls_server::log_listening(&tls);
    tokio::task::spawn_local(tls_server::serve(tls, agent.clone(), stop_rx.clone()));
    #[cfg(not(feature = "dtls"))]
    if cli.dtls.is_some() {
        info!("no coaps (DTLS) endpoint: this build has no DTLS (cargo feature `dtls`)");
    }
    #[cfg(feature = "dtls")]
    if let Some(addr) = cli.dtls {
        let socket = udp::bind_unicast(addr)
            .map_err(|e| format!("cannot bind UDP {addr} for coaps (DTLS): {e}"))?;
        let local = socket.local_addr().map_err(|e| e.to_string())?;
        bound.push(("coaps", local));
        info!("coaps (DTLS) listening on {local}");
        tokio::task::spawn_local(dtls::serve(
            socket,
            agent.clone(),
            credentials.clone(),
            stop_rx.clone(),
        ));
    }

    let groups = multicast_port.map(|port| {
        let (agent, stop_rx) = (agent.clone(), stop_rx.clone());
        let (reply_v4, reply_v6) = (unicast_v4.clone(), unicast_v6.clone());
        udp::Groups::start(
            port,
            Box::new(move |socket, v6| {
                let reply = if v6 { &reply_v6 } else { &reply_v4 };
                tokio::task::spawn_local(udp::serve_multicast(
                    socket,
                    reply.clone(),
                    agent.clone(),
                    stop_rx.clone(),
                ))
            }),
        )
    });
    let endpoints = advertised_endpoints(&bound);
    agent.device().set_endpoints(endpoints.clone());
    tokio::task::spawn_local(follow_interfaces(
        groups,
        bound,
        endpoints.clone(),
        agent.clone(),
        stop_rx.clone(),
    ));
    for task in sensors {
        tokio::task::spawn_local(task.run(agent.clone(), stop_rx.clone()));
    }
    let cloud = cloud::start(
        &cli.state_dir,
        &agent,
        &credentials,
        cloud_timing,
        stop_rx.clone(),
    );
    tokio::task::spawn_local(maintenance.clone().run(
        agent.clone(),
        credentials.clone(),
        Some(cloud),
        stop_rx.clone(),
    ));
    // Not fatal: the device works without it (e.g. a state directory path too long for a Unix
    // socket); only the console's factory-reset cannot reach this agent then.
    match control::listen(&cli.state_dir) {
        Ok(control) => {
            tokio::task::spawn_local(control::serve(
                control,
                cli.state_dir.join(control::SOCKET),
                agent.clone(),
                maintenance.clone(),
                stop_rx.clone(),
            ));
        }
        Err(e) => warn!(
            "{}: cannot listen ({e}); `ocf-agent factory-reset` cannot reach this agent",
            cli.state_dir.join(control::SOCKET).display()
        ),
    }

    // The line protocol tests and scripts wait for: every endpoint, then "ready".
    println!("ocf-agent: di {}", identity.di);
    for ep in endpoints.iter().map(Endpoint::uri) {
        println!("ocf-agent: endpoint {ep}");
    }
    let signals = shutdown_signals();
    println!("ocf-agent: ready");
    // Every endpoint is bound and listening (sd_notify(3): READY=1 "after startup is
    // finished"); the cloud link is not waited for, a LAN without it is a working device.
    notifier.notify("READY=1");
    info!(di = %identity.di, "serving {} endpoints", endpoints.len());

    let stop = tokio::select! {
        _ = signals => Stop::Signal,
        status = maintenance.exit_requested() => Stop::Reboot(status),
    };
    match stop {
        Stop::Signal => info!("shutting down"),
        Stop::Reboot(status) => info!(status, "shutting down for the reboot"),
    }
    notifier.notify("STOPPING=1");
    let _ = stop_tx.send(true);
    // Let connection tasks send their Release.
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    Ok(stop)
}

/// Installs the SIGTERM/SIGINT handlers. Done before the agent says it is ready, so a signal
/// sent right after "ready" already finds them and ends in a clean shutdown.
fn shutdown_signals() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let handlers = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    );
    async move {
        let (Ok(mut term), Ok(mut int)) = handlers else {
            // Without signal handling, run until killed.
            std::future::pending::<()>().await;
            return;
        };
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
    }
}

/// How often the interfaces are looked at again: an address that DHCP hands out after the
/// start is joined to the groups and listed in `/oic/res` within this.
const RESCAN_INTERFACES: std::time::Duration = std::time::Duration::from_secs(5);

/// Follows the interfaces as they come and go (the unit does not wait for
/// network-online.target): the multicast memberships, and the endpoints `/oic/res` lists for
/// sockets bound to a wildcard address.
async fn follow_interfaces(
    mut groups: Option<udp::Groups>,
    bound: Vec<(&'static str, SocketAddr)>,
    mut endpoints: Vec<Endpoint>,
    agent: Rc<Agent>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(RESCAN_INTERFACES) => {}
            _ = shutdown.changed() => return,
        }
        if let Some(groups) = groups.as_mut() {
            groups.rescan();
        }
        let now = advertised_endpoints(&bound);
        if now != endpoints {
            let uris: Vec<String> = now.iter().map(Endpoint::uri).collect();
            info!(endpoints = ?uris, "the interfaces changed");
            agent.device().set_endpoints(now.clone());
            endpoints = now;
        }
    }
}

/// What discovery lists for the listening sockets `bound`, with the interfaces' addresses now
/// (the rules are in [`ocf::resource::endpoint`]).
fn advertised_endpoints(bound: &[(&'static str, SocketAddr)]) -> Vec<Endpoint> {
    let interfaces: Vec<InterfaceAddress> = udp::interface_addresses()
        .into_iter()
        .map(|(index, addr, loopback)| InterfaceAddress {
            index,
            addr,
            loopback,
        })
        .collect();
    endpoint::advertised(bound, &interfaces)
}

fn os_release() -> Option<String> {
    let text = std::fs::read_to_string("/etc/os-release").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_string())
}
