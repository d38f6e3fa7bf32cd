//! A plgd hub deployment as a Mediator uses it: the hub's identity and addresses
//! (`GET /.well-known/hub-configuration` of its HTTP gateway), a device authorisation code from
//! its OAuth 2.0 authorisation server (`GET {authority}/authorize?response_type=code&client_id=
//! {deviceOauthClient.clientId}`) and the signing of the device's identity CSR by its
//! certificate authority (`POST {certificateAuthority}/api/v1/sign/identity-csr`). Every call but
//! the configuration carries the user's bearer token. A small blocking HTTP/1.1 client
//! (`Connection: close`) for `http://` and `https://` (RFC 9110 §4.2): TLS with rustls, the
//! server's certificate checked against the hub's CA (`--cloud-ca`) or the system's trust store.

use std::fmt;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use serde_json::Value as Json;

/// A parsed `http[s]://host[:port][/prefix]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudUrl {
    /// `https://`: TLS.
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// Path prefix without a trailing `/` ("" for none).
    pub prefix: String,
}

impl fmt::Display for CloudUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "https" } else { "http" };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}{}", self.host, self.port, self.prefix)
        } else {
            write!(f, "{scheme}://{}:{}{}", self.host, self.port, self.prefix)
        }
    }
}

/// Parses the `--cloud` URL (and the addresses the hub configuration names): `http://` or
/// `https://`, default ports 80 and 443 (RFC 9110 §4.2.1, §4.2.2); without a scheme, `http`.
pub fn parse_cloud_url(s: &str) -> Result<CloudUrl, String> {
    let s = s.trim();
    let (tls, rest) = match s.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => (false, rest),
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("https") => (true, rest),
        Some((scheme, _)) => {
            return Err(format!(
                "{s:?}: expected http[s]://HOST[:PORT], not {scheme}://"
            ))
        }
        None => (false, s),
    };
    let default_port = if tls { 443 } else { 80 };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if path.contains('?') || path.contains('#') {
        return Err(format!("{s:?}: the cloud URL takes no query or fragment"));
    }
    let (host, port) = if let Some(inner) = authority.strip_prefix('[') {
        let (h, after) = inner
            .split_once(']')
            .ok_or_else(|| format!("{s:?}: unclosed '['"))?;
        let port = match after {
            "" => default_port,
            p => p
                .strip_prefix(':')
                .and_then(|p| p.parse().ok())
                .ok_or_else(|| format!("{s:?}: bad port"))?,
        };
        (h.to_string(), port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (
                h.to_string(),
                p.parse()
                    .map_err(|_| format!("{s:?}: {p:?} is not a port"))?,
            ),
            None => (authority.to_string(), default_port),
        }
    };
    if host.is_empty() || port == 0 {
        return Err(format!("{s:?}: expected http[s]://HOST[:PORT]"));
    }
    Ok(CloudUrl {
        tls,
        host,
        port,
        prefix: path.trim_end_matches('/').to_string(),
    })
}

/// What `GET /.well-known/hub-configuration` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudInfo {
    /// The hub id (`id`), the `sid` of CoAPCloudConf.
    pub sid: String,
    /// `coaps+tcp://…` the device is to connect to (`coapGateway`).
    pub cis: String,
    /// The authorisation provider name devices send (`deviceOauthClient.providerName`).
    pub apn: String,
    /// The hub's CA (`certificateAuthorities`), the device's trust anchor for the hub.
    pub ca_pem: String,
    /// The OAuth 2.0 authorisation server (`authority`).
    pub authority: String,
    /// The certificate authority's address (`certificateAuthority`).
    pub certificate_authority: String,
    /// The OAuth client devices' codes are issued for (`deviceOauthClient.clientId`).
    pub device_client_id: String,
}

/// A single-use authorisation code. Its `Debug` and `Display` never show it.
pub struct AuthCode {
    code: String,
}

impl AuthCode {
    /// A code obtained elsewhere (e.g. from a browser login at the authorisation server).
    pub fn new(code: String) -> AuthCode {
        AuthCode { code }
    }

    /// The code itself, only to put in the CoAPCloudConf update. Never print it.
    pub fn expose(&self) -> &str {
        &self.code
    }
}

impl fmt::Debug for AuthCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthCode")
            .field("code", &"<redacted>")
            .finish()
    }
}

/// An HTTP answer.
#[derive(Debug, Clone)]
pub struct HttpReply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpReply {
    fn json(&self, what: &str) -> Result<Json, String> {
        if self.status / 100 != 2 {
            let text = String::from_utf8_lossy(&self.body);
            // plgd's errors are google.rpc.Status (`message`); OAuth's RFC 6749 §5.2
            // (`error_description`).
            let detail = serde_json::from_slice::<Json>(&self.body)
                .ok()
                .and_then(|j| {
                    ["message", "error_description", "error"]
                        .iter()
                        .find_map(|k| j.get(*k).and_then(Json::as_str).map(str::to_string))
                })
                .unwrap_or_else(|| text.chars().take(200).collect());
            return Err(format!("{what}: HTTP {} {}", self.status, detail.trim()));
        }
        serde_json::from_slice(&self.body)
            .map_err(|e| format!("{what}: the answer is not JSON ({e})"))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A bearer token. Its `Debug` never shows it.
#[derive(Clone)]
pub struct Token(String);

impl Token {
    pub fn new(token: &str) -> Result<Token, String> {
        let t = token.trim();
        if t.is_empty() || t.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err("the token is empty or has spaces in it".into());
        }
        Ok(Token(t.to_string()))
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// The system's trust store as Debian and its derivatives keep it (one PEM bundle).
pub const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// What an `https://` service's certificate is checked against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloudTrust {
    /// The system's trust store, [`SYSTEM_CA_BUNDLE`].
    System,
    /// The CAs of a PEM bundle (`--cloud-ca`), and only those.
    CaFile(PathBuf),
}

impl CloudTrust {
    fn describe(&self) -> String {
        match self {
            CloudTrust::System => format!("the system's trust store {SYSTEM_CA_BUNDLE}"),
            CloudTrust::CaFile(p) => format!("--cloud-ca {}", p.display()),
        }
    }

    /// The trust anchors: every certificate of the PEM bundle (other PEM sections skipped).
    pub fn roots(&self) -> Result<RootCertStore, String> {
        let path: &Path = match self {
            CloudTrust::System => Path::new(SYSTEM_CA_BUNDLE),
            CloudTrust::CaFile(p) => p,
        };
        let what = self.describe();
        let pem = std::fs::read(path).map_err(|e| format!("{what}: {e}"))?;
        let mut roots = RootCertStore::empty();
        let mut bad = 0;
        for cert in
            ocf::x509::certificate_bundle_from_pem(&pem).map_err(|e| format!("{what}: {e}"))?
        {
            // A system bundle may hold a certificate webpki cannot use as an anchor; skip it
            // rather than distrust the whole store.
            if roots.add(cert).is_err() {
                bad += 1;
            }
        }
        if roots.is_empty() {
            return Err(format!(
                "{what}: no usable PEM certificate in it{}",
                if bad > 0 { " (all malformed)" } else { "" }
            ));
        }
        Ok(roots)
    }

    /// A TLS client configuration (ring; TLS 1.3 and 1.2, RFC 8446) verifying servers against
    /// these anchors and the URL's host name, as rustls's WebPKI verifier does.
    pub fn client_config(&self) -> Result<Arc<ClientConfig>, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| format!("TLS versions: {e}"))?
            .with_root_certificates(self.roots()?)
            .with_no_client_auth();
        // This client speaks HTTP/1.1 only.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

/// The hub's services.
#[derive(Debug, Clone)]
pub struct CloudApi {
    pub url: CloudUrl,
    pub timeout: Duration,
    token: Option<Token>,
    trust: CloudTrust,
    /// Made on the first `https://` request, shared with [`CloudApi::service`]'s clients.
    tls: Arc<OnceLock<Result<Arc<ClientConfig>, String>>>,
}

impl CloudApi {
    pub fn new(
        url: &str,
        timeout: Duration,
        token: Option<Token>,
        trust: CloudTrust,
    ) -> Result<CloudApi, String> {
        Ok(CloudApi {
            url: parse_cloud_url(url)?,
            timeout,
            token,
            trust,
            tls: Arc::new(OnceLock::new()),
        })
    }

    fn tls_config(&self) -> Result<Arc<ClientConfig>, String> {
        self.tls.get_or_init(|| self.trust.client_config()).clone()
    }

    /// `GET /.well-known/hub-configuration` (public).
    pub fn info(&self) -> Result<CloudInfo, String> {
        const WHAT: &str = "GET /.well-known/hub-configuration";
        let j = self
            .call("GET", "/.well-known/hub-configuration", None)?
            .json(WHAT)?;
        let text = |path: &[&str]| -> Result<String, String> {
            let mut v = &j;
            for k in path {
                v = &v[*k];
            }
            v.as_str()
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .ok_or_else(|| format!("{WHAT}: no `{}` in the answer", path.join(".")))
        };
        let info = CloudInfo {
            sid: text(&["id"])?.to_ascii_lowercase(),
            cis: text(&["coapGateway"])?,
            apn: text(&["deviceOauthClient", "providerName"])?,
            ca_pem: text(&["certificateAuthorities"])?,
            authority: text(&["authority"])?,
            certificate_authority: text(&["certificateAuthority"])?,
            device_client_id: text(&["deviceOauthClient", "clientId"])?,
        };
        if !ocf::security::is_uuid(&info.sid) {
            return Err(format!("{WHAT}: id {:?} is not a UUID", info.sid));
        }
        if !info.ca_pem.contains("-----BEGIN CERTIFICATE-----") {
            return Err(format!("{WHAT}: certificateAuthorities is not PEM"));
        }
        Ok(info)
    }

    /// A device authorisation code from the hub's authorisation server, for the token's user.
    pub fn auth_code(&self, info: &CloudInfo) -> Result<AuthCode, String> {
        let server = self.service(&info.authority, "authority")?;
        let path = format!(
            "/authorize?response_type=code&client_id={}",
            utf8_percent_encode(&info.device_client_id, QUERY_VALUE)
        );
        let what = format!("GET {}/authorize", server.url);
        let r = server.call("GET", &path, None)?;
        // A redirect carries the code in its Location (RFC 6749 §4.1.2); plgd's test
        // authorisation server answers `{"code"}` when no redirect_uri is given.
        let code = if (300..400).contains(&r.status) {
            r.header("location")
                .and_then(|l| l.split_once('?'))
                .and_then(|(_, q)| {
                    q.split('&')
                        .find_map(|kv| kv.strip_prefix("code=").map(str::to_string))
                })
                .ok_or_else(|| format!("{what}: a redirect without a code"))?
        } else {
            r.json(&what)?
                .get("code")
                .and_then(Json::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .ok_or_else(|| format!("{what}: no `code` in the answer"))?
        };
        Ok(AuthCode { code })
    }

    /// The certificate authority signs the device's identity CSR: (certificate PEM, the rest of
    /// the chain it answered, PEM).
    pub fn sign_csr(&self, info: &CloudInfo, csr_pem: &str) -> Result<(String, String), String> {
        let ca = self.service(&info.certificate_authority, "certificateAuthority")?;
        let what = format!("POST {}/api/v1/sign/identity-csr", ca.url);
        // proto3 JSON carries `bytes` as base64.
        let body =
            serde_json::json!({ "certificateSigningRequest": BASE64.encode(csr_pem.as_bytes()) });
        let j = ca
            .call("POST", "/api/v1/sign/identity-csr", Some(&body))?
            .json(&what)?;
        let chain = j
            .get("certificate")
            .and_then(Json::as_str)
            .and_then(|b64| BASE64.decode(b64).ok())
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| format!("{what}: no base64 `certificate` in the answer"))?;
        let end = "-----END CERTIFICATE-----";
        let i = chain
            .find(end)
            .ok_or_else(|| format!("{what}: the answer holds no PEM certificate"))?
            + end.len();
        Ok((
            format!("{}\n", chain[..i].trim()),
            chain[i..].trim().to_string(),
        ))
    }

    /// The same client for another of the hub's services (an absolute `http[s]://` URL).
    fn service(&self, url: &str, what: &str) -> Result<CloudApi, String> {
        Ok(CloudApi {
            url: parse_cloud_url(url).map_err(|e| format!("hub-configuration {what}: {e}"))?,
            timeout: self.timeout,
            token: self.token.clone(),
            trust: self.trust.clone(),
            tls: self.tls.clone(),
        })
    }

    /// One request; the body is JSON.
    pub fn call(&self, method: &str, path: &str, body: Option<&Json>) -> Result<HttpReply, String> {
        let what = format!("{method} {path}");
        let addrs: Vec<_> = (self.url.host.as_str(), self.url.port)
            .to_socket_addrs()
            .map_err(|e| format!("{what}: cannot resolve {}: {e}", self.url.host))?
            .collect();
        let mut last = String::from("no address");
        let mut stream = None;
        for a in &addrs {
            match TcpStream::connect_timeout(a, self.timeout) {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) => last = format!("{a}: {e}"),
            }
        }
        let s = stream.ok_or_else(|| {
            format!(
                "{what}: cannot connect to the cloud at {}: {last}",
                self.url
            )
        })?;
        s.set_read_timeout(Some(self.timeout))
            .map_err(|e| e.to_string())?;
        s.set_write_timeout(Some(self.timeout))
            .map_err(|e| e.to_string())?;
        let host = if self.url.host.contains(':') {
            format!("[{}]:{}", self.url.host, self.url.port)
        } else {
            format!("{}:{}", self.url.host, self.url.port)
        };
        let body = body.map(|b| serde_json::to_vec(b).unwrap_or_default());
        let mut head = format!(
            "{method} {}{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nAccept: application/json\r\nUser-Agent: ocf-mediator\r\n",
            self.url.prefix
        );
        if let Some(Token(t)) = &self.token {
            head.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        match &body {
            Some(b) => head.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                b.len()
            )),
            None if method != "GET" => head.push_str("Content-Length: 0\r\n"),
            None => {}
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        bytes.extend(body.unwrap_or_default());
        if !self.url.tls {
            let mut s = s;
            s.write_all(&bytes).map_err(|e| format!("{what}: {e}"))?;
            let mut raw = Vec::new();
            s.read_to_end(&mut raw)
                .map_err(|e| format!("{what}: {e}"))?;
            return parse_http_response(&raw).map_err(|e| format!("{what}: {e}"));
        }
        let mut s = self.tls_connect(s).map_err(|e| format!("{what}: {e}"))?;
        s.write_all(&bytes).map_err(|e| format!("{what}: {e}"))?;
        let mut raw = Vec::new();
        match s.read_to_end(&mut raw) {
            Ok(_) => parse_http_response(&raw).map_err(|e| format!("{what}: {e}")),
            // A server may close without close_notify (RFC 8446 §6.1 leaves that open to
            // truncation): accept the answer only when its own framing says it is whole.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => parse_framed(&raw)
                .map_err(|f| format!("{what}: {e} (the answer is cut short: {f})")),
            Err(e) => Err(format!("{what}: {e}")),
        }
    }

    /// TLS to the service: SNI and the certificate check against the URL's host (an IP
    /// address in the URL is checked against the certificate's IP SANs, and sent no SNI, as
    /// RFC 6066 §3 has it).
    fn tls_connect(
        &self,
        mut tcp: TcpStream,
    ) -> Result<StreamOwned<ClientConnection, TcpStream>, String> {
        let config = self
            .tls_config()
            .map_err(|e| format!("TLS with {}: {e}", self.url))?;
        let name = ServerName::try_from(self.url.host.clone())
            .map_err(|e| format!("{}: not a host name for TLS: {e}", self.url))?;
        let mut conn = ClientConnection::new(config, name)
            .map_err(|e| format!("TLS with {}: {e}", self.url))?;
        while conn.is_handshaking() {
            if let Err(e) = conn.complete_io(&mut tcp) {
                let untrusted = e
                    .get_ref()
                    .and_then(|i| i.downcast_ref::<rustls::Error>())
                    .is_some_and(|r| matches!(r, rustls::Error::InvalidCertificate(_)));
                return Err(if untrusted {
                    format!(
                        "TLS with {}: the server's certificate is not accepted ({e}), checked against {}; give the hub's CA with --cloud-ca PATH",
                        self.url,
                        self.trust.describe()
                    )
                } else {
                    format!("TLS with {}: {e}", self.url)
                });
            }
        }
        Ok(StreamOwned::new(conn, tcp))
    }
}

/// [`parse_http_response`] for an answer whose end was not confirmed by the transport: only
/// one framed by Content-Length or chunked coding can be known to be whole.
fn parse_framed(raw: &[u8]) -> Result<HttpReply, String> {
    let r = parse_http_response(raw)?;
    let framed = r.headers.iter().any(|(k, v)| {
        k == "content-length"
            || (k == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked"))
    });
    if framed {
        Ok(r)
    } else {
        Err("no Content-Length nor chunked coding".into())
    }
}

/// Parses a whole HTTP/1.1 response (Content-Length, chunked, or until close).
pub fn parse_http_response(raw: &[u8]) -> Result<HttpReply, String> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no end of the HTTP header")?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .filter(|_| status_line.starts_with("HTTP/"))
        .ok_or_else(|| {
            format!(
                "bad HTTP status line {:?}",
                status_line.chars().take(80).collect::<String>()
            )
        })?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let header = |k: &str| {
        headers
            .iter()
            .find(|(h, _)| h == k)
            .map(|(_, v)| v.as_str())
    };
    let rest = &raw[split + 4..];
    let owned_headers = headers.clone();
    let body = if header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    {
        dechunk(rest)?
    } else if let Some(len) = header("content-length") {
        let len: usize = len.parse().map_err(|_| "bad Content-Length")?;
        if rest.len() < len {
            return Err("the answer is shorter than its Content-Length".into());
        }
        rest[..len].to_vec()
    } else {
        rest.to_vec()
    };
    Ok(HttpReply {
        status,
        headers: owned_headers,
        body,
    })
}

fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let eol = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("truncated chunk size")?;
        let size_text = String::from_utf8_lossy(&rest[..eol]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| "bad chunk size")?;
        rest = &rest[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if rest.len() < size + 2 {
            return Err("truncated chunk".into());
        }
        out.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

/// RFC 3986 §2.3: everything but the unreserved characters is percent-encoded in a query value.
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cloud_urls() {
        assert_eq!(
            parse_cloud_url("http://127.0.0.1:8080").unwrap(),
            CloudUrl {
                tls: false,
                host: "127.0.0.1".into(),
                port: 8080,
                prefix: String::new()
            }
        );
        assert_eq!(
            parse_cloud_url("http://cloud.example/api/").unwrap().prefix,
            "/api"
        );
        assert_eq!(parse_cloud_url("http://cloud.example").unwrap().port, 80);
        assert_eq!(parse_cloud_url("127.0.0.1:9").unwrap().port, 9);
        let v6 = parse_cloud_url("http://[::1]:7").unwrap();
        assert_eq!((v6.host.as_str(), v6.port), ("::1", 7));
        assert_eq!(v6.to_string(), "http://[::1]:7");
        for bad in [
            "https://x:0",
            "https://",
            "https://[::1]x",
            "ftp://x",
            "http://:1",
            "http://x:0",
            "http://x:y",
            "http://x:1/?a",
            "http://[::1",
        ] {
            assert!(parse_cloud_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn https_urls() {
        let u = parse_cloud_url("https://hub.example").unwrap();
        assert_eq!(
            u,
            CloudUrl {
                tls: true,
                host: "hub.example".into(),
                port: 443,
                prefix: String::new()
            }
        );
        assert_eq!(u.to_string(), "https://hub.example:443");
        let u = parse_cloud_url("HTTPS://127.0.0.1:8443/hub/").unwrap();
        assert_eq!((u.tls, u.port, u.prefix.as_str()), (true, 8443, "/hub"));
        let v6 = parse_cloud_url("https://[::1]").unwrap();
        assert_eq!((v6.host.as_str(), v6.port, v6.tls), ("::1", 443, true));
        assert_eq!(v6.to_string(), "https://[::1]:443");
        // No scheme and http:// stay plain.
        assert!(!parse_cloud_url("127.0.0.1:9").unwrap().tls);
        assert!(!parse_cloud_url("http://[::1]").unwrap().tls);
        assert_eq!(parse_cloud_url("http://[::1]").unwrap().port, 80);
    }

    #[test]
    fn trust_anchors_from_a_pem_bundle() {
        let dir = std::env::temp_dir().join(format!("ocf-mediator-trust-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["ca.example".into()]).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = params.self_signed(&key).unwrap();
        let bundle = dir.join("bundle.pem");
        // Text between certificates, as in the system bundle, is skipped.
        std::fs::write(&bundle, format!("# a comment\n{}\n{}", ca.pem(), ca.pem())).unwrap();
        let roots = CloudTrust::CaFile(bundle.clone()).roots().unwrap();
        assert_eq!(roots.len(), 2);
        assert!(CloudTrust::CaFile(bundle.clone()).client_config().is_ok());
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let e = CloudTrust::CaFile(empty.clone()).roots().unwrap_err();
        assert!(e.contains("no usable PEM certificate"), "{e}");
        let missing = dir.join("missing.pem");
        let e = CloudTrust::CaFile(missing).roots().unwrap_err();
        assert!(e.contains("--cloud-ca") && e.contains("missing.pem"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_unconfirmed_end_needs_framing() {
        assert!(parse_framed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}").is_ok());
        assert!(parse_framed(b"HTTP/1.1 200 OK\r\n\r\n{\"a\":").is_err());
        assert!(parse_framed(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n{}").is_err());
    }

    #[test]
    fn http_responses() {
        let r =
            parse_http_response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}trailing").unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"{}"[..]));
        let r = parse_http_response(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\n{\"a\r\n4\r\n\":1}\r\n0\r\n\r\n").unwrap();
        assert_eq!(r.body, br#"{"a":1}"#);
        let r = parse_http_response(b"HTTP/1.1 400 Bad Request\r\n\r\n{\"error\":\"bad csr\"}")
            .unwrap();
        assert_eq!(r.json("csr").unwrap_err(), "csr: HTTP 400 bad csr");
        assert!(parse_http_response(b"garbage").is_err());
        assert!(parse_http_response(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n{}").is_err());
    }

    #[test]
    fn secrets_do_not_show_in_debug() {
        let c = AuthCode::new("s3cr3t-code".into());
        assert!(!format!("{c:?}").contains("s3cr3t"));
        assert_eq!(c.expose(), "s3cr3t-code");
        let t = Token::new(" dev.s3cr3t\n").unwrap();
        assert!(!format!("{t:?}").contains("s3cr3t"));
        assert!(Token::new("a b").is_err());
        assert!(Token::new("").is_err());
    }

    #[test]
    fn query_values_keep_only_unreserved_characters() {
        let q = |s: &str| utf8_percent_encode(s, QUERY_VALUE).to_string();
        assert_eq!(q("ocf-device_1.x~"), "ocf-device_1.x~");
        assert_eq!(q("a b+c%2B&d=e/f?"), "a%20b%2Bc%252B%26d%3De%2Ff%3F");
        assert_eq!(q("\u{e9}\u{20ac}"), "%C3%A9%E2%82%AC");
        let encoded = q("x+%zz \u{e9}");
        let decoded = percent_encoding::percent_decode_str(&encoded).decode_utf8();
        assert_eq!(decoded.unwrap(), "x+%zz \u{e9}");
    }
}
