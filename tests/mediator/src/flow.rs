//! The Mediator's flows: onboarding (OCF-PROTOCOL.md §8.5 in the order pdev uses), offboarding
//! (`{"cis":""}`), and single requests as the owner.
//!
//! Every step prints a progress line `[n/N] …` (and indented detail lines) on stdout; a failure
//! is a [`StepError`] naming the step. Neither the PIN nor the authorisation code is ever
//! printed.

use std::io::Write;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ciborium::Value;
use coap_lite::ResponseType;
use ocf::model::content::json_to_cbor;
use ocf::model::{encode_payload, ContentFormat};
use ocf::resource::{Method, Request};
use ocf::security::otm::{self, MediatorOtm, OtmError, Pin};

use crate::cloud_api::{CloudApi, CloudInfo};
use crate::discover;
use crate::endpoint::{endpoint_uri, parse_endpoint, pick_endpoint};
use crate::identity::{check_pin, Devices, Identity, PinCheck, PinnedDevice};
use crate::tls::{client_config, NetError, Reply, SecureClient};

/// rt of CoAPCloudConf (OCF-PROTOCOL.md §4).
pub const CLOUD_CONF_RT: &str = "oic.r.coapcloudconf";
/// rt of the configuration resource whose `n` names the device.
pub const CON_RT: &str = "oic.wk.con";
/// The resources of the cloud's ACE unless told otherwise: every non-configuration resource,
/// and the two configuration resources the cloud needs (OCF-PROTOCOL.md §8.5: configuration
/// resources need explicit hrefs). `{conf}` is CoAPCloudConf's href.
pub const DEFAULT_CLOUD_ACE: &[&str] = &["*", "/oic/mnt", "{conf}"];

/// The onboarding steps.
pub const ONBOARD_STEPS: [&str; 9] = [
    "connecting",
    "cloud",
    "ownership transfer",
    "identity certificate",
    "credentials",
    "access for the cloud",
    "cloud configuration",
    "normal operation",
    "registration",
];

/// The offboarding steps.
pub const OFFBOARD_STEPS: [&str; 3] = ["connecting", "deregistration", "waiting"];

/// A failed step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepError {
    pub step: usize,
    pub total: usize,
    pub name: &'static str,
    pub message: String,
}

impl std::fmt::Display for StepError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "step {}/{} ({}): {}",
            self.step, self.total, self.name, self.message
        )
    }
}

impl std::error::Error for StepError {}

/// Progress output on stdout, flushed line by line.
pub struct Progress {
    steps: &'static [&'static str],
    current: usize,
    /// Detail lines go to stderr (for commands whose stdout is their result).
    quiet: bool,
}

impl Progress {
    pub fn new(steps: &'static [&'static str]) -> Progress {
        Progress {
            steps,
            current: 0,
            quiet: false,
        }
    }

    /// Details on stderr, stdout left to the result.
    pub fn quiet(steps: &'static [&'static str]) -> Progress {
        Progress {
            steps,
            current: 0,
            quiet: true,
        }
    }

    /// Starts step `n` (1-based) with its line.
    pub fn step(&mut self, n: usize, text: &str) {
        self.current = n;
        say(&format!("[{n}/{}] {text}", self.steps.len()));
    }

    /// A detail line of the current step.
    pub fn detail(&self, text: &str) {
        if self.quiet {
            eprintln!("ocf-mediator: {text}");
        } else {
            say(&format!("      {text}"));
        }
    }

    /// An error in the current step.
    pub fn fail(&self, message: impl Into<String>) -> StepError {
        let n = self.current.max(1);
        StepError {
            step: n,
            total: self.steps.len(),
            name: self.steps[n - 1],
            message: message.into(),
        }
    }
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn warn(line: &str) {
    eprintln!("ocf-mediator: warning: {line}");
}

// ---------------------------------------------------------------------------------------------
// Payloads
// ---------------------------------------------------------------------------------------------

fn text(s: &str) -> Value {
    Value::Text(s.to_string())
}

fn map(entries: Vec<(&str, Value)>) -> Value {
    Value::Map(entries.into_iter().map(|(k, v)| (text(k), v)).collect())
}

pub fn get(path: &str) -> Request {
    let mut r = Request::new(Method::Get, path);
    r.accept = Some(ContentFormat::OCF_CBOR_NUMBER);
    r
}

pub fn post(path: &str, body: &Value) -> Request {
    let mut r = Request::new(Method::Post, path);
    r.content_format = Some(ContentFormat::OCF_CBOR_NUMBER);
    r.accept = Some(ContentFormat::OCF_CBOR_NUMBER);
    r.payload = encode_payload(ContentFormat::OcfCbor, body).unwrap_or_default();
    r
}

/// A certificate credential (`credtype` 8, PEM).
pub fn cred_body(subjectuuid: &str, credusage: &str, pem: &str) -> Value {
    map(vec![(
        "creds",
        Value::Array(vec![map(vec![
            ("credtype", Value::Integer(8.into())),
            ("subjectuuid", text(subjectuuid)),
            ("credusage", text(credusage)),
            (
                "publicdata",
                map(vec![
                    ("encoding", text("oic.sec.encoding.pem")),
                    ("data", text(pem)),
                ]),
            ),
        ])]),
    )])
}

/// The ACE for the cloud: subject `sid`, all permissions (31), on `resources` (`*`, `+`, `-`
/// are wildcards, anything else an href).
pub fn ace_body(sid: &str, resources: &[String]) -> Value {
    let entries = resources
        .iter()
        .map(|r| match r.as_str() {
            "*" | "+" | "-" => map(vec![("wc", text(r))]),
            href => map(vec![("href", text(href))]),
        })
        .collect();
    map(vec![(
        "aclist2",
        Value::Array(vec![map(vec![
            ("subject", map(vec![("uuid", text(sid))])),
            ("permission", Value::Integer(31.into())),
            ("resources", Value::Array(entries)),
        ])]),
    )])
}

/// The cloud's ACE resources: `spec` (comma-separated) or the default, with `{conf}` replaced
/// by CoAPCloudConf's href.
pub fn cloud_ace_resources(spec: Option<&str>, conf_href: &str) -> Vec<String> {
    let list: Vec<String> = match spec {
        Some(s) => s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
        None => DEFAULT_CLOUD_ACE.iter().map(|s| s.to_string()).collect(),
    };
    list.into_iter()
        .map(|r| {
            if r == "{conf}" {
                conf_href.to_string()
            } else {
                r
            }
        })
        .collect()
}

/// What `clec` means (OCF-PROTOCOL.md §4).
pub fn clec_meaning(clec: u64) -> &'static str {
    match clec {
        0 => "no error",
        1 => "the cloud refused the device (an error answer to its sign-up or sign-in)",
        2 => "the device cannot connect to the cloud (check that it can reach the cis address, and the cloud's certificate)",
        3 => "the device failed to refresh its access token",
        4 => "unauthorised: the cloud did not accept the device's authorisation code or token",
        _ => "unknown error",
    }
}

/// A key of a CBOR map.
pub fn field<'a>(v: &'a Value, k: &str) -> Option<&'a Value> {
    v.as_map()?
        .iter()
        .find(|(kk, _)| kk.as_text() == Some(k))
        .map(|(_, v)| v)
}

pub fn field_text(v: &Value, k: &str) -> Option<String> {
    field(v, k).and_then(Value::as_text).map(str::to_string)
}

pub fn field_uint(v: &Value, k: &str) -> Option<u64> {
    field(v, k)
        .and_then(Value::as_integer)
        .and_then(|i| u64::try_from(i).ok())
}

/// Links of `/oic/res`: (href, rts).
pub fn links(res: &Value) -> Vec<(String, Vec<String>)> {
    let Some(arr) = res.as_array() else {
        return Vec::new();
    };
    arr.iter()
        .filter_map(|l| {
            let href = field_text(l, "href")?;
            let rts = field(l, "rt")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|t| t.as_text().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            Some((href, rts))
        })
        .collect()
}

/// The href of the first link with resource type `rt`.
pub fn href_of(res: &Value, rt: &str) -> Option<String> {
    links(res)
        .into_iter()
        .find(|(_, rts)| rts.iter().any(|t| t == rt))
        .map(|(h, _)| h)
}

/// Shortens a hex fingerprint for display.
fn short(fp: &str) -> String {
    fp.chars().take(16).collect()
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// Finding and connecting to the device
// ---------------------------------------------------------------------------------------------

/// Which device: an endpoint, or a `di` to find by multicast discovery.
#[derive(Debug, Clone)]
pub enum Target {
    Endpoint(SocketAddr),
    Di(String),
}

impl Target {
    pub fn from_args(device: Option<&str>, di: Option<&str>) -> Result<Target, String> {
        match (device, di) {
            (Some(ep), None) => Ok(Target::Endpoint(parse_endpoint(ep)?)),
            (None, Some(di)) if ocf::security::is_uuid(di) => {
                Ok(Target::Di(di.to_ascii_lowercase()))
            }
            (None, Some(di)) => Err(format!("--di {di:?} is not a UUID")),
            (Some(_), Some(_)) => Err("give either --device or --di, not both".into()),
            (None, None) => {
                Err("say which device: --device coaps+tcp://IP:PORT or --di UUID".into())
            }
        }
    }

    fn di(&self) -> Option<&str> {
        match self {
            Target::Di(d) => Some(d),
            Target::Endpoint(_) => None,
        }
    }
}

/// How to find and reach devices.
#[derive(Debug, Clone)]
pub struct Net {
    /// Bound for each network exchange.
    pub request_timeout: Duration,
    /// UDP port of the OCF multicast groups.
    pub discovery_port: u16,
}

/// Finds the secure endpoint of `di` by multicast discovery, in rounds until `deadline`.
fn find_by_di(di: &str, net: &Net, deadline: Instant, p: &Progress) -> Result<SocketAddr, String> {
    let mut rounds = 0;
    loop {
        rounds += 1;
        let found = discover::discover(Duration::from_millis(1500), net.discovery_port)?;
        if let Some(f) = found.iter().find(|f| f.di.eq_ignore_ascii_case(di)) {
            let from = discover::answered_from(f);
            return match pick_endpoint(&f.eps, from) {
                Some(addr) => {
                    p.detail(&format!(
                        "found {di} at {} (answered from {})",
                        endpoint_uri(&addr),
                        from.map(|a| a.to_string()).unwrap_or_default()
                    ));
                    Ok(addr)
                }
                None => Err(format!(
                    "device {di} answered discovery but advertises no coaps+tcp endpoint (eps: {})",
                    f.eps.join(", ")
                )),
            };
        }
        if Instant::now() >= deadline {
            let others: Vec<&str> = found.iter().map(|f| f.di.as_str()).collect();
            return Err(format!(
                "device {di} did not answer multicast discovery on port {} ({rounds} rounds){}",
                net.discovery_port,
                if others.is_empty() {
                    String::new()
                } else {
                    format!("; devices that did: {}", others.join(", "))
                }
            ));
        }
    }
}

/// A TLS connection to a device whose identity was read and checked against the pins.
pub struct DeviceLink {
    pub client: SecureClient,
    pub addr: SocketAddr,
    pub di: String,
    /// `owned`, `devowneruuid` from `/oic/sec/doxm`, if it could be read.
    pub owned: Option<bool>,
    pub devowneruuid: Option<String>,
    pub spki_sha256: String,
    pub cert_sha256: String,
    pub pin: PinCheck,
}

/// Connects to `addr` with the Mediator's certificate, reads `/oic/sec/doxm`, and checks the
/// device's key against the pin for its `di`. A mismatch is an error.
fn connect_device(
    identity: &Identity,
    addr: SocketAddr,
    want_di: Option<&str>,
    net: &Net,
    p: &Progress,
) -> Result<DeviceLink, String> {
    let config = client_config(identity)?;
    let mut client =
        SecureClient::connect(addr, config, net.request_timeout).map_err(|e| e.to_string())?;
    let spki = client
        .peer_spki_sha256()
        .ok_or("the device presented no usable certificate")?;
    let cert_sha = client.peer_cert_sha256().unwrap_or_default();
    let cn = client.peer_cn();
    let (mut di, mut owned, mut owner) = (client.peer_cn_uuid(), None, None);
    match client.request(&get(ocf::security::DOXM_HREF)) {
        Ok(r) if r.code() == ResponseType::Content => {
            if let Some(b) = r.body() {
                if let Some(d) = field_text(&b, "deviceuuid").filter(|d| ocf::security::is_uuid(d))
                {
                    di = Some(d.to_ascii_lowercase());
                }
                owned = field(&b, "owned").and_then(Value::as_bool);
                owner = field_text(&b, "devowneruuid");
            }
        }
        Ok(r) => p.detail(&format!("GET /oic/sec/doxm: {}", r.describe())),
        Err(e) => return Err(format!("GET /oic/sec/doxm: {e}")),
    }
    let di = match (di, want_di) {
        (Some(d), Some(w)) if !d.eq_ignore_ascii_case(w) => {
            return Err(format!(
                "the device at {} is {d}, not {w}",
                endpoint_uri(&addr)
            ))
        }
        (Some(d), _) => d,
        (None, Some(w)) => w.to_ascii_lowercase(),
        (None, None) => {
            return Err(
                "the device does not say its di (no readable /oic/sec/doxm, no uuid: CN)".into(),
            )
        }
    };
    let devices = Devices::load(&identity.dir)?;
    let pin = check_pin(&devices, &di, &spki);
    p.detail(&format!(
        "{}; device {di}, certificate CN {}, key sha256 {}…",
        client.describe_session(),
        cn.as_deref().unwrap_or("(none)"),
        short(&spki)
    ));
    if let PinCheck::Mismatch { pinned } = &pin {
        return Err(format!(
            "the device's key is not the one pinned for {di} at its ownership transfer (pinned sha256 {}…, presented {}…): \
             a different device or a man in the middle. If the device really got a new key (a reflash), remove {di} from {}",
            short(pinned),
            short(&spki),
            identity.devices_path().display()
        ));
    }
    Ok(DeviceLink {
        client,
        addr,
        di,
        owned,
        devowneruuid: owner,
        spki_sha256: spki,
        cert_sha256: cert_sha,
        pin,
    })
}

/// Step 1 of every flow: find the device, connect, identify it.
fn open(
    identity: &Identity,
    target: &Target,
    net: &Net,
    deadline: Instant,
    p: &mut Progress,
) -> Result<DeviceLink, StepError> {
    let addr = match target {
        Target::Endpoint(a) => {
            p.step(1, &format!("connecting to {}", endpoint_uri(a)));
            *a
        }
        Target::Di(di) => {
            p.step(
                1,
                &format!("looking for device {di} by multicast discovery"),
            );
            let a = find_by_di(di, net, deadline, p).map_err(|e| p.fail(e))?;
            p.detail(&format!("connecting to {}", endpoint_uri(&a)));
            a
        }
    };
    connect_device(identity, addr, target.di(), net, p).map_err(|e| p.fail(e))
}

/// Connects again to a known device (after the device closed the connection).
fn reconnect(
    identity: &Identity,
    link: &DeviceLink,
    net: &Net,
    p: &Progress,
) -> Result<DeviceLink, String> {
    let again = connect_device(identity, link.addr, Some(&link.di), net, p)?;
    if again.spki_sha256 != link.spki_sha256 {
        return Err(
            "the device presented another key on reconnecting: a man in the middle?".into(),
        );
    }
    Ok(again)
}

fn expect_success(what: &str, r: Result<Reply, NetError>) -> Result<Reply, String> {
    match r {
        Ok(r) if r.is_success() => Ok(r),
        Ok(r) => Err(format!("{what}: the device answered {}", r.describe())),
        Err(e) => Err(format!("{what}: {e}")),
    }
}

// ---------------------------------------------------------------------------------------------
// Onboarding
// ---------------------------------------------------------------------------------------------

/// The ownership transfer method of `onboard`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtmChoice {
    /// SPAKE2 with the setup PIN over coaps+tcp (this project's method, the default).
    Spake2,
    /// One of OCF's standard methods ([`crate::standard_otm`]).
    Standard(crate::standard_otm::Method),
}

/// What `onboard` is told.
#[derive(Debug)]
pub struct OnboardArgs {
    /// The setup PIN (SPAKE2 only).
    pub pin: Option<Pin>,
    pub otm: OtmChoice,
    /// The manufacturer CA (PEM) a device's manufacturer certificate must chain to.
    pub mfg_ca_pem: Option<String>,
    pub cloud: String,
    /// What the hub's `https://` services are checked against.
    pub cloud_trust: crate::cloud_api::CloudTrust,
    pub target: Target,
    pub name: Option<String>,
    /// Bound for discovery and for the wait for `registered`.
    pub timeout: Duration,
    /// The user's bearer token for the hub's services.
    pub token: Option<crate::cloud_api::Token>,
    /// A device authorisation code obtained elsewhere (else one is asked of the hub's
    /// authorisation server with the token).
    pub auth_code: Option<String>,
    /// `--cloud-ace`: the resources of the cloud's ACE (comma-separated).
    pub cloud_ace: Option<String>,
    pub net: Net,
}

/// How onboarding ended (when no step failed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Registered {
        di: String,
        sid: String,
    },
    /// `cps` became `failed`.
    Failed {
        di: String,
        clec: u64,
    },
}

/// The ownership transfer on `link` (step 3).
fn take_ownership(
    identity: &Identity,
    link: &mut DeviceLink,
    pin: &Pin,
    p: &Progress,
) -> Result<(), String> {
    let exporter = link.client.exporter()?;
    let mut rng_error = None;
    let mut rng = |buf: &mut [u8]| {
        if let Err(e) = getrandom::fill(buf) {
            rng_error = Some(e.to_string());
        }
    };
    let (otm, msg_a) = MediatorOtm::start(pin, &link.di, &mut rng);
    if let Some(e) = rng_error {
        return Err(format!("no randomness from the OS: {e}"));
    }
    let r1 = link
        .client
        .request(&otm::step1_request(&msg_a))
        .map_err(|e| format!("POST {}: {e}", ocf::security::OTM_HREF))?;
    match r1.code() {
        ResponseType::Changed => {}
        ResponseType::TooManyRequests => {
            let secs = r1.max_age().unwrap_or(0);
            let at = SystemTime::now() + Duration::from_secs(u64::from(secs));
            let at = at.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
            return Err(format!(
                "rate limited after too many wrong PINs (4.29): try again in {secs} s (after {} UTC); the device waits longer after each failed attempt",
                clock(at)
            ));
        }
        ResponseType::Forbidden => {
            return Err(format!(
                "the device is already owned (4.03){}: only its owner can provision it; a factory reset makes it ownable again",
                link.devowneruuid.as_deref().map(|o| format!(" by {o}")).unwrap_or_default()
            ))
        }
        _ => return Err(format!("the device refused the ownership transfer: {}", r1.describe())),
    }
    let step1 = otm::parse_step1_response(&r1.response)
        .map_err(|e| format!("the device's answer to step 1: {e}"))?;
    let confirm_a =
        match otm.finish(&step1.pake_msg_b, &step1.confirm_b, &exporter) {
            Ok(c) => c,
            Err(OtmError::Unauthorized) => return Err(
                "wrong PIN, or a man in the middle: the device's key confirmation did not match"
                    .into(),
            ),
            Err(e) => return Err(e.to_string()),
        };
    let r2 = link
        .client
        .request(&otm::step2_request(&confirm_a))
        .map_err(|e| format!("POST {} (step 2): {e}", ocf::security::OTM_HREF))?;
    match r2.code() {
        ResponseType::Changed => {}
        ResponseType::Unauthorized => {
            return Err(format!(
                "the device did not accept our key confirmation ({}): wrong PIN, or a man in the middle",
                r2.describe()
            ))
        }
        _ => return Err(format!("the device refused step 2: {}", r2.describe())),
    }
    let info = otm::parse_step2_response(&r2.response)
        .map_err(|e| format!("the device's answer to step 2: {e}"))?;
    if !info.devowneruuid.eq_ignore_ascii_case(&identity.uuid) {
        return Err(format!(
            "the device reports owner {}, not this Mediator ({})",
            info.devowneruuid, identity.uuid
        ));
    }
    if !info.deviceuuid.eq_ignore_ascii_case(&link.di) {
        return Err(format!(
            "the device reports di {}, not {}",
            info.deviceuuid, link.di
        ));
    }
    let mut devices = Devices::load(&identity.dir)?;
    devices.devices.insert(
        link.di.clone(),
        PinnedDevice {
            spki_sha256: link.spki_sha256.clone(),
            cert_sha256: link.cert_sha256.clone(),
            endpoint: endpoint_uri(&link.addr),
            owned_since: now_unix(),
        },
    );
    devices.save(&identity.dir)?;
    link.pin = PinCheck::Match;
    p.detail(&format!(
        "the device proved the PIN over this TLS session; owner {} (this Mediator); its key is pinned in {}",
        identity.uuid,
        identity.devices_path().display()
    ));
    Ok(())
}

/// A standard ownership transfer ([`crate::standard_otm`]), then the link for provisioning:
/// the DOC itself over coaps+tcp, else a new connection, whose key must be the one the
/// method authenticated (it is pinned).
fn standard_ownership(
    identity: &Identity,
    link: DeviceLink,
    res: &Value,
    method: crate::standard_otm::Method,
    args: &OnboardArgs,
    p: &Progress,
) -> Result<DeviceLink, String> {
    let deadline = Instant::now() + args.timeout;
    let addr = link.addr;
    let di = link.di.clone();
    // The device closes connections opened before it had an owner, and while one that could
    // be a Device Ownership Connection is open it keeps its clear side closed.
    link.client.close();
    let device = crate::standard_otm::Device {
        di: &di,
        tls: addr,
        res,
    };
    let owned = crate::standard_otm::take_ownership(
        identity,
        &device,
        method,
        args.mfg_ca_pem.as_deref(),
        &mut || crate::standard_otm::read_random_pin_from_stdin(deadline),
        args.net.request_timeout,
        p,
    )?;
    let mut devices = Devices::load(&identity.dir)?;
    devices.devices.insert(
        di.clone(),
        PinnedDevice {
            spki_sha256: owned.spki_sha256.clone(),
            cert_sha256: owned.cert_sha256.clone(),
            endpoint: endpoint_uri(&addr),
            owned_since: now_unix(),
        },
    );
    devices.save(&identity.dir)?;
    let link = match owned.tcp_link {
        Some(client) => DeviceLink {
            client,
            addr,
            di: di.clone(),
            owned: Some(true),
            devowneruuid: Some(identity.uuid.clone()),
            spki_sha256: owned.spki_sha256.clone(),
            cert_sha256: owned.cert_sha256.clone(),
            pin: PinCheck::Match,
        },
        None => connect_device(identity, addr, Some(&di), &args.net, p)?,
    };
    if link.pin != PinCheck::Match {
        return Err(
            "the device's coaps+tcp key is not the one the ownership transfer authenticated: a man in the middle?"
                .into(),
        );
    }
    p.detail(&format!(
        "the device's key is pinned in {}",
        identity.devices_path().display()
    ));
    Ok(link)
}

/// Before provisioning a device this Mediator already owns again: ends its cloud registration
/// (`{"cis":""}`), removes the identity certificates and trust anchors of the earlier
/// provisioning, and the ACEs for `sid`, so that repeating `onboard` does not pile them up.
/// Manufacturer credentials are kept.
fn clear_earlier_provisioning(
    link: &mut DeviceLink,
    conf_href: &str,
    sid: &str,
    p: &Progress,
) -> Result<(), String> {
    let conf = expect_success(
        &format!("GET {conf_href}"),
        link.client.request(&get(conf_href)),
    )?;
    let cps = conf
        .body()
        .and_then(|b| field_text(&b, "cps"))
        .unwrap_or_default();
    if matches!(cps.as_str(), "registering" | "registered" | "deregistering") {
        let body = map(vec![("cis", text(""))]);
        expect_success(
            &format!("POST {conf_href} {{\"cis\":\"\"}}"),
            link.client.request(&post(conf_href, &body)),
        )?;
        p.detail(&format!(
            "ended the earlier cloud registration (cps was {cps})"
        ));
    }
    let mut removed = 0;
    let creds = expect_success(
        "GET /oic/sec/cred",
        link.client.request(&get(ocf::security::CRED_HREF)),
    )?;
    let ids: Vec<u64> = creds
        .body()
        .and_then(|b| field(&b, "creds").and_then(Value::as_array).cloned())
        .unwrap_or_default()
        .iter()
        .filter(|c| {
            matches!(
                field_text(c, "credusage").as_deref(),
                Some("oic.sec.cred.cert" | "oic.sec.cred.trustca")
            )
        })
        .filter_map(|c| field_uint(c, "credid"))
        .collect();
    for id in ids {
        let mut r = Request::new(Method::Delete, ocf::security::CRED_HREF);
        r.query.push(("credid".into(), id.to_string()));
        expect_success(
            &format!("DELETE /oic/sec/cred?credid={id}"),
            link.client.request(&r),
        )?;
        removed += 1;
    }
    let acl = expect_success(
        "GET /oic/sec/acl2",
        link.client.request(&get(ocf::security::ACL2_HREF)),
    )?;
    let ids: Vec<u64> = acl
        .body()
        .and_then(|b| field(&b, "aclist2").and_then(Value::as_array).cloned())
        .unwrap_or_default()
        .iter()
        .filter(|a| {
            field(a, "subject")
                .and_then(|s| field_text(s, "uuid"))
                .is_some_and(|u| u.eq_ignore_ascii_case(sid))
        })
        .filter_map(|a| field_uint(a, "aceid"))
        .collect();
    for id in ids {
        let mut r = Request::new(Method::Delete, ocf::security::ACL2_HREF);
        r.query.push(("aceid".into(), id.to_string()));
        expect_success(
            &format!("DELETE /oic/sec/acl2?aceid={id}"),
            link.client.request(&r),
        )?;
        removed += 1;
    }
    if removed > 0 {
        p.detail(&format!(
            "removed {removed} credentials and access rules of the earlier provisioning"
        ));
    }
    Ok(())
}

/// `HH:MM:SS` of a Unix time (UTC).
fn clock(unix: u64) -> String {
    let s = unix % 86_400;
    format!("{:02}:{:02}:{:02}", s / 3600, (s / 60) % 60, s % 60)
}

/// The whole first-boot flow.
pub fn onboard(identity: &Identity, args: &OnboardArgs) -> Result<Outcome, StepError> {
    let mut p = Progress::new(&ONBOARD_STEPS);
    let start = Instant::now();
    let mut link = open(
        identity,
        &args.target,
        &args.net,
        start + args.timeout,
        &mut p,
    )?;
    let di = link.di.clone();
    // /oic/res: CoAPCloudConf's href (by rt), and the configuration resource for the name.
    let res = expect_success("GET /oic/res", link.client.request(&get("/oic/res")))
        .map_err(|e| p.fail(e))?;
    let res = res.body().unwrap_or(Value::Null);
    let conf_href = href_of(&res, CLOUD_CONF_RT)
        .ok_or_else(|| p.fail(format!("the device lists no {CLOUD_CONF_RT} resource in /oic/res: it cannot be connected to a cloud")))?;

    p.step(
        2,
        &format!("asking the cloud at {} for its identity", args.cloud),
    );
    let api = CloudApi::new(
        &args.cloud,
        args.net.request_timeout,
        args.token.clone(),
        args.cloud_trust.clone(),
    )
    .map_err(|e| p.fail(e))?;
    let cloud: CloudInfo = api.info().map_err(|e| p.fail(e))?;
    p.detail(&format!(
        "sid {}, cis {}, apn {}",
        cloud.sid, cloud.cis, cloud.apn
    ));

    p.step(
        3,
        match args.otm {
            OtmChoice::Spake2 => {
                "ownership transfer (SPAKE2 with the setup PIN, bound to this TLS session)"
            }
            OtmChoice::Standard(crate::standard_otm::Method::RandomPin) => {
                "ownership transfer (OCF Random PIN over DTLS)"
            }
            OtmChoice::Standard(crate::standard_otm::Method::MfgCert { tcp: false }) => {
                "ownership transfer (OCF Manufacturer Certificate over DTLS)"
            }
            OtmChoice::Standard(crate::standard_otm::Method::MfgCert { tcp: true }) => {
                "ownership transfer (OCF Manufacturer Certificate over coaps+tcp)"
            }
        },
    );
    let ours = link.owned == Some(true)
        && link
            .devowneruuid
            .as_deref()
            .is_some_and(|o| o.eq_ignore_ascii_case(&identity.uuid))
        && link.pin == PinCheck::Match;
    if ours {
        p.detail(
            "already owned by this Mediator (same key as pinned): continuing with provisioning",
        );
        // Provisioning happens in RFPRO; a device in normal operation goes back there first.
        let pstat = link
            .client
            .request(&get(ocf::security::PSTAT_HREF))
            .ok()
            .and_then(|r| r.body());
        let s = pstat
            .as_ref()
            .and_then(|b| field(b, "dos"))
            .and_then(|d| field_uint(d, "s"));
        if s == Some(3) {
            let body = map(vec![("dos", map(vec![("s", Value::Integer(2.into()))]))]);
            expect_success(
                "POST /oic/sec/pstat {dos.s: 2}",
                link.client.request(&post(ocf::security::PSTAT_HREF, &body)),
            )
            .map_err(|e| p.fail(e))?;
            p.detail("back to provisioning (RFPRO)");
        }
        clear_earlier_provisioning(&mut link, &conf_href, &cloud.sid, &p).map_err(|e| p.fail(e))?;
    } else if link.owned == Some(true)
        && link
            .devowneruuid
            .as_deref()
            .is_some_and(|o| o.eq_ignore_ascii_case(&identity.uuid))
        && link.pin == PinCheck::Unknown
    {
        // Its owner uuid is public: without the pinned key this could be any device.
        return Err(p.fail(format!(
            "the device says this Mediator ({}) owns it, but {} has no pinned key for {di}, so the device cannot be authenticated: restore that file, or factory-reset the device and onboard it again",
            identity.uuid,
            identity.devices_path().display()
        )));
    } else if let OtmChoice::Standard(method) = args.otm {
        link = standard_ownership(identity, link, &res, method, args, &p).map_err(|e| p.fail(e))?;
    } else {
        let pin = args
            .pin
            .as_ref()
            .ok_or_else(|| p.fail("SPAKE2 needs the setup PIN"))?;
        take_ownership(identity, &mut link, pin, &p).map_err(|e| p.fail(e))?;
    }

    p.step(
        4,
        "identity certificate: the device's CSR, signed by the cloud's CA",
    );
    let r = expect_success(
        "GET /oic/sec/csr",
        link.client.request(&get(ocf::security::CSR_HREF)),
    )
    .map_err(|e| p.fail(e))?;
    let body = r.body().unwrap_or(Value::Null);
    let csr_pem = field_text(&body, "csr")
        .ok_or_else(|| p.fail("GET /oic/sec/csr: no `csr` in the answer"))?;
    if let Some(enc) = field_text(&body, "encoding").filter(|e| e != "oic.sec.encoding.pem") {
        return Err(p.fail(format!(
            "GET /oic/sec/csr: encoding {enc:?} is not supported (PEM only)"
        )));
    }
    let csr = crate::csr::check_csr(&csr_pem, &di).map_err(|e| p.fail(e))?;
    let (cert_pem, issued_ca) = api.sign_csr(&cloud, &csr_pem).map_err(|e| p.fail(e))?;
    crate::csr::check_issued(&cert_pem, &csr, &di).map_err(|e| p.fail(e))?;
    if !issued_ca.is_empty() && issued_ca.trim() != cloud.ca_pem.trim() {
        p.detail("note: the chain in the signing answer differs from the hub's certificateAuthorities; installing the hub's as trust anchor");
    }
    p.detail(&format!(
        "certificate for uuid:{di} issued by the cloud's CA"
    ));

    p.step(
        5,
        "installing the identity certificate and the cloud trust anchor (/oic/sec/cred)",
    );
    let cred = ocf::security::CRED_HREF;
    expect_success(
        "POST /oic/sec/cred (identity certificate)",
        link.client
            .request(&post(cred, &cred_body(&di, "oic.sec.cred.cert", &cert_pem))),
    )
    .map_err(|e| p.fail(e))?;
    expect_success(
        "POST /oic/sec/cred (trust anchor)",
        link.client.request(&post(
            cred,
            &cred_body(&cloud.sid, "oic.sec.cred.trustca", &cloud.ca_pem),
        )),
    )
    .map_err(|e| p.fail(e))?;
    p.detail(&format!("identity certificate (oic.sec.cred.cert) and trust anchor for sid {} (oic.sec.cred.trustca)", cloud.sid));

    p.step(
        6,
        &format!(
            "access for the cloud (/oic/sec/acl2): an ACE for sid {}",
            cloud.sid
        ),
    );
    let resources = cloud_ace_resources(args.cloud_ace.as_deref(), &conf_href);
    expect_success(
        "POST /oic/sec/acl2",
        link.client.request(&post(
            ocf::security::ACL2_HREF,
            &ace_body(&cloud.sid, &resources),
        )),
    )
    .map_err(|e| p.fail(e))?;
    p.detail(&format!(
        "permission 31 (CRUDN) on {}",
        resources.join(", ")
    ));

    p.step(7, &format!("cloud configuration ({conf_href})"));
    if let Some(name) = &args.name {
        match href_of(&res, CON_RT) {
            Some(con) => {
                expect_success(
                    &format!("POST {con} (name)"),
                    link.client
                        .request(&post(&con, &map(vec![("n", text(name))]))),
                )
                .map_err(|e| p.fail(e))?;
                p.detail(&format!("device name set to {name:?}"));
            }
            None => {
                warn(&format!("the device has no {CON_RT} resource, so its name cannot be set; --name ignored"));
                p.detail(&format!(
                    "name not set: the device offers no {CON_RT} resource"
                ));
            }
        }
    }
    let code = match &args.auth_code {
        Some(c) => crate::cloud_api::AuthCode::new(c.clone()),
        None => api.auth_code(&cloud).map_err(|e| p.fail(e))?,
    };
    let apn = cloud.apn.clone();
    let conf = map(vec![
        ("apn", text(&apn)),
        ("at", text(code.expose())),
        ("cis", text(&cloud.cis)),
        ("sid", text(&cloud.sid)),
    ]);
    drop(code);
    let r = expect_success(
        &format!("POST {conf_href}"),
        link.client.request(&post(&conf_href, &conf)),
    )
    .map_err(|e| p.fail(e))?;
    let cps = r
        .body()
        .and_then(|b| field_text(&b, "cps"))
        .unwrap_or_else(|| "?".into());
    p.detail(&format!(
        "cis {}, apn {apn}, sid {}, a fresh authorisation code (not shown); cps {cps}",
        cloud.cis, cloud.sid
    ));

    p.step(8, "normal operation: /oic/sec/pstat dos.s = 3 (RFNOP)");
    let body = map(vec![("dos", map(vec![("s", Value::Integer(3.into()))]))]);
    expect_success(
        "POST /oic/sec/pstat",
        link.client.request(&post(ocf::security::PSTAT_HREF, &body)),
    )
    .map_err(|e| p.fail(e))?;

    let wait = args
        .timeout
        .saturating_sub(start.elapsed())
        .max(Duration::from_secs(5));
    p.step(
        9,
        &format!(
            "waiting for the device to register with the cloud (up to {} s)",
            wait.as_secs()
        ),
    );
    let (cps, clec) = wait_for_cps(
        identity,
        &mut link,
        &conf_href,
        &["registered", "failed"],
        Instant::now() + wait,
        &args.net,
        &p,
    )
    .map_err(|e| p.fail(e))?;
    if cps == "registered" {
        say(&format!(
            "ocf-mediator: device {di} is registered with cloud {}",
            cloud.sid
        ));
        link.client.close();
        Ok(Outcome::Registered { di, sid: cloud.sid })
    } else {
        let clec = clec.unwrap_or(255);
        say(&format!(
            "ocf-mediator: device {di} failed to register: clec {clec}: {}",
            clec_meaning(clec)
        ));
        link.client.close();
        Ok(Outcome::Failed { di, clec })
    }
}

/// Watches CoAPCloudConf (observe, with a GET every 2 s as well) until `cps` is one of `until`
/// or `deadline`; prints each change of `cps` (and a non-zero `clec`). Reconnects if the device
/// closes the connection. Returns the final `cps` and `clec`.
fn wait_for_cps(
    identity: &Identity,
    link: &mut DeviceLink,
    href: &str,
    until: &[&str],
    deadline: Instant,
    net: &Net,
    p: &Progress,
) -> Result<(String, Option<u64>), String> {
    let mut last: Option<(String, Option<u64>)> = None;
    let mut token: Option<Vec<u8>> = None;
    let note =
        |v: &Value, last: &mut Option<(String, Option<u64>)>| -> Option<(String, Option<u64>)> {
            let cps = field_text(v, "cps")?;
            let clec = field_uint(v, "clec");
            if last.as_ref() != Some(&(cps.clone(), clec)) {
                match clec {
                    Some(c) if c != 0 => {
                        p.detail(&format!("cps {cps} (clec {c}: {})", clec_meaning(c)))
                    }
                    _ => p.detail(&format!("cps {cps}")),
                }
                *last = Some((cps.clone(), clec));
            }
            until.contains(&cps.as_str()).then_some((cps, clec))
        };
    let mut next_poll = Instant::now();
    loop {
        let now = Instant::now();
        if now >= deadline {
            let state = last.map(|(c, _)| c).unwrap_or_else(|| "unknown".into());
            return Err(format!(
                "cps is still {state} after the timeout; wanted {}",
                until.join(" or ")
            ));
        }
        let result: Result<Option<(String, Option<u64>)>, NetError> = (|| {
            if token.is_none() {
                let (t, first) = link.client.observe(&get(href))?;
                if first.response.observe.is_some() {
                    token = Some(t);
                }
                if let Some(b) = first.body() {
                    if let Some(done) = note(&b, &mut last) {
                        return Ok(Some(done));
                    }
                }
                next_poll = Instant::now() + Duration::from_secs(2);
            }
            if Instant::now() >= next_poll {
                next_poll = Instant::now() + Duration::from_secs(2);
                let r = link.client.request(&get(href))?;
                if let Some(b) = r.body() {
                    if let Some(done) = note(&b, &mut last) {
                        return Ok(Some(done));
                    }
                }
            }
            let until_poll = next_poll.min(deadline);
            match &token {
                Some(t) => {
                    let t = t.clone();
                    if let Some(n) = link.client.next_notification(&t, until_poll)? {
                        if let Some(b) = n.body() {
                            if let Some(done) = note(&b, &mut last) {
                                return Ok(Some(done));
                            }
                        }
                    }
                }
                None => std::thread::sleep(
                    until_poll
                        .saturating_duration_since(Instant::now())
                        .min(Duration::from_millis(500)),
                ),
            }
            Ok(None)
        })();
        match result {
            Ok(Some(done)) => return Ok(done),
            Ok(None) => {}
            Err(NetError::Timeout) => {}
            Err(e) => {
                p.detail(&format!("connection lost ({e}); connecting again"));
                std::thread::sleep(Duration::from_millis(500));
                match reconnect(identity, link, net, p) {
                    Ok(again) => {
                        *link = again;
                        token = None;
                    }
                    Err(e) if Instant::now() < deadline => {
                        p.detail(&format!("cannot reconnect yet: {e}"))
                    }
                    Err(e) => return Err(e),
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Offboarding
// ---------------------------------------------------------------------------------------------

/// Removes a device from its cloud: `{"cis":""}` as the owner, then waits for `uninitialized`.
pub fn offboard(
    identity: &Identity,
    target: &Target,
    timeout: Duration,
    net: &Net,
) -> Result<String, StepError> {
    let mut p = Progress::new(&OFFBOARD_STEPS);
    let start = Instant::now();
    let mut link = open(identity, target, net, start + timeout, &mut p)?;
    if link.pin != PinCheck::Match {
        return Err(p.fail(format!(
            "this Mediator has no pinned key for device {} ({} has no entry): it only offboards devices it onboarded",
            link.di,
            identity.devices_path().display()
        )));
    }
    p.detail("the device's key matches the one pinned at its ownership transfer");
    let res = expect_success("GET /oic/res", link.client.request(&get("/oic/res")))
        .map_err(|e| p.fail(e))?;
    let conf_href = href_of(&res.body().unwrap_or(Value::Null), CLOUD_CONF_RT)
        .ok_or_else(|| p.fail(format!("the device lists no {CLOUD_CONF_RT} resource")))?;

    p.step(
        2,
        &format!("deregistering: POST {conf_href} {{\"cis\":\"\"}}"),
    );
    let body = map(vec![("cis", text(""))]);
    expect_success(
        &format!("POST {conf_href}"),
        link.client.request(&post(&conf_href, &body)),
    )
    .map_err(|e| p.fail(e))?;

    let wait = timeout
        .saturating_sub(start.elapsed())
        .max(Duration::from_secs(5));
    p.step(
        3,
        &format!("waiting for cps uninitialized (up to {} s)", wait.as_secs()),
    );
    wait_for_cps(
        identity,
        &mut link,
        &conf_href,
        &["uninitialized"],
        Instant::now() + wait,
        net,
        &p,
    )
    .map_err(|e| p.fail(e))?;
    say(&format!(
        "ocf-mediator: device {} is no longer registered with a cloud",
        link.di
    ));
    let di = link.di.clone();
    link.client.close();
    Ok(di)
}

// ---------------------------------------------------------------------------------------------
// Single requests
// ---------------------------------------------------------------------------------------------

/// One GET or POST (JSON body) to the device with the Mediator's certificate, for inspection
/// and tests. Prints `<code> <name>` and then the body as JSON (or the diagnostic). Returns the
/// reply. A device whose key does not match its pin is refused; an unpinned one is accepted
/// with a note on stderr.
pub fn request(
    identity: &Identity,
    target: &Target,
    method: Method,
    path: &str,
    json_body: Option<&str>,
    timeout: Duration,
    net: &Net,
) -> Result<Reply, String> {
    let p = Progress::quiet(&["connecting"]);
    let addr = match target {
        Target::Endpoint(a) => *a,
        Target::Di(di) => find_by_di(di, net, Instant::now() + timeout, &p)?,
    };
    let mut link = connect_device(identity, addr, target.di(), net, &p)?;
    if link.pin == PinCheck::Unknown {
        eprintln!(
            "ocf-mediator: note: device {} is not pinned in {} (not onboarded by this Mediator)",
            link.di,
            identity.devices_path().display()
        );
    }
    let (path, query) = match path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path, None),
    };
    let mut req = match (method, json_body) {
        (Method::Get, _) => get(path),
        (_, Some(body)) => {
            let j: serde_json::Value =
                serde_json::from_str(body).map_err(|e| format!("the body is not JSON: {e}"))?;
            let v = json_to_cbor(&j).map_err(|e| format!("the body: {e}"))?;
            let mut r = post(path, &v);
            r.method = method;
            r
        }
        (_, None) => {
            let mut r = Request::new(method, path);
            r.accept = Some(ContentFormat::OCF_CBOR_NUMBER);
            r
        }
    };
    if let Some(q) = query {
        for item in q.split('&').filter(|s| !s.is_empty()) {
            let (k, v) = item.split_once('=').unwrap_or((item, ""));
            req.query.push((k.to_string(), v.to_string()));
        }
    }
    let reply = link.client.request(&req).map_err(|e| e.to_string())?;
    link.client.close();
    Ok(reply)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ocf::model::decode_payload;

    fn json(v: &Value) -> serde_json::Value {
        ocf::model::content::cbor_to_json(v).unwrap()
    }

    #[test]
    fn provisioning_payloads_are_those_of_the_protocol() {
        let sid = "11111111-2222-3333-4444-555555555555";
        let ace = ace_body(sid, &cloud_ace_resources(None, "/CoapCloudConfResURI"));
        assert_eq!(
            json(&ace),
            serde_json::json!({"aclist2":[{"subject":{"uuid":sid},"permission":31,"resources":[{"wc":"*"},{"href":"/oic/mnt"},{"href":"/CoapCloudConfResURI"}]}]})
        );
        let limited = cloud_ace_resources(Some("/oic/mnt, {conf},"), "/CoapCloudConfResURI");
        assert_eq!(limited, ["/oic/mnt", "/CoapCloudConfResURI"]);
        assert_eq!(
            json(&ace_body(sid, &["+".into()]))["aclist2"][0]["resources"],
            serde_json::json!([{"wc":"+"}])
        );

        let cred = cred_body(sid, "oic.sec.cred.trustca", "-----BEGIN CERTIFICATE-----\n");
        assert_eq!(
            json(&cred),
            serde_json::json!({"creds":[{"credtype":8,"subjectuuid":sid,"credusage":"oic.sec.cred.trustca","publicdata":{"encoding":"oic.sec.encoding.pem","data":"-----BEGIN CERTIFICATE-----\n"}}]})
        );
        // The request carries it as OCF CBOR.
        let r = post("/oic/sec/cred", &cred);
        assert_eq!(r.content_format, Some(10000));
        assert_eq!(
            decode_payload(ContentFormat::OcfCbor, &r.payload).unwrap(),
            cred
        );
    }

    #[test]
    fn links_and_hrefs_by_type() {
        let res = json_to_cbor(&serde_json::json!([
            {"href":"/oic/d","rt":["oic.wk.d"]},
            {"href":"/CoapCloudConfResURI","rt":["oic.r.coapcloudconf"]},
            {"rt":["x"]},
            7
        ]))
        .unwrap();
        assert_eq!(
            href_of(&res, CLOUD_CONF_RT).as_deref(),
            Some("/CoapCloudConfResURI")
        );
        assert_eq!(href_of(&res, CON_RT), None);
        assert_eq!(links(&res).len(), 2);
        assert!(links(&Value::Null).is_empty());
    }

    #[test]
    fn clec_values_are_explained() {
        assert!(clec_meaning(1).contains("refused"));
        assert!(clec_meaning(2).contains("cannot connect"));
        assert!(clec_meaning(3).contains("refresh"));
        assert!(clec_meaning(4).contains("unauthorised"));
        assert_eq!(clec_meaning(77), "unknown error");
    }

    #[test]
    fn step_errors_name_the_step() {
        let mut p = Progress::new(&ONBOARD_STEPS);
        p.current = 3;
        let e = p.fail("wrong PIN");
        assert_eq!(e.to_string(), "step 3/9 (ownership transfer): wrong PIN");
        let p = Progress::new(&OFFBOARD_STEPS);
        assert_eq!(p.fail("x").to_string(), "step 1/3 (connecting): x");
    }

    #[test]
    fn targets() {
        assert!(matches!(
            Target::from_args(Some("coaps+tcp://127.0.0.1:5"), None),
            Ok(Target::Endpoint(_))
        ));
        assert!(matches!(
            Target::from_args(None, Some("AAAAAAAA-0000-0000-0000-000000000001")),
            Ok(Target::Di(d)) if d == "aaaaaaaa-0000-0000-0000-000000000001"
        ));
        assert!(Target::from_args(None, Some("nope")).is_err());
        assert!(Target::from_args(None, None).is_err());
        assert!(Target::from_args(
            Some("coaps+tcp://127.0.0.1:5"),
            Some("aaaaaaaa-0000-0000-0000-000000000001")
        )
        .is_err());
        assert!(Target::from_args(Some("coap+tcp://127.0.0.1:5"), None)
            .unwrap_err()
            .contains("secure"));
    }

    #[test]
    fn json_and_cbor_convert() {
        let j = serde_json::json!({"value":true,"n":-3,"big":18446744073709551615u64,"f":1.5,"a":[null,"x"]});
        assert_eq!(json(&json_to_cbor(&j).unwrap()), j);
        // Byte strings print as OCF's JSON mapping writes them: base64.
        assert_eq!(
            json(&Value::Bytes(vec![0xab, 1])),
            serde_json::json!("qwE=")
        );
        assert_eq!(clock(3600 * 25 + 61), "01:01:01");
    }
}
