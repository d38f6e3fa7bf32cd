//! The cloud's HTTP/JSON API as the Mediator uses it (tests/cloud/README.md): the cloud's
//! identity (`GET /.well-known/ocf-cloud`), a fresh authorisation code
//! (`POST /api/v1/authcodes`) and the signing of a device CSR (`POST /api/v1/csr`). A small
//! blocking HTTP/1.1 client (`Connection: close`, `http://` only).

use std::fmt;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use serde_json::Value as Json;

/// A parsed `http://host[:port][/prefix]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudUrl {
    pub host: String,
    pub port: u16,
    /// Path prefix without a trailing `/` ("" for none).
    pub prefix: String,
}

impl fmt::Display for CloudUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "http://[{}]:{}{}", self.host, self.port, self.prefix)
        } else {
            write!(f, "http://{}:{}{}", self.host, self.port, self.prefix)
        }
    }
}

/// Parses the `--cloud` URL.
pub fn parse_cloud_url(s: &str) -> Result<CloudUrl, String> {
    let s = s.trim();
    let rest = match s.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
        Some((scheme, _)) if scheme.eq_ignore_ascii_case("https") => {
            return Err(format!(
                "{s:?}: this Mediator speaks plain http:// to the cloud's API only (the development cloud's HTTP API)"
            ))
        }
        Some((scheme, _)) => return Err(format!("{s:?}: expected http://HOST:PORT, not {scheme}://")),
        None => s,
    };
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
            "" => 80,
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
            None => (authority.to_string(), 80),
        }
    };
    if host.is_empty() || port == 0 {
        return Err(format!("{s:?}: expected http://HOST:PORT"));
    }
    Ok(CloudUrl {
        host,
        port,
        prefix: path.trim_end_matches('/').to_string(),
    })
}

/// What `GET /.well-known/ocf-cloud` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudInfo {
    pub sid: String,
    /// `coaps+tcp://…` the device is to connect to.
    pub cis: String,
    pub apn: String,
    /// The cloud's CA, the device's trust anchor for the cloud.
    pub ca_pem: String,
}

/// A single-use authorisation code. Its `Debug` and `Display` never show it.
pub struct AuthCode {
    code: String,
    pub apn: Option<String>,
}

impl AuthCode {
    /// The code itself, only to put in the CoAPCloudConf update. Never print it.
    pub fn expose(&self) -> &str {
        &self.code
    }
}

impl fmt::Debug for AuthCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthCode")
            .field("code", &"<redacted>")
            .field("apn", &self.apn)
            .finish()
    }
}

/// An HTTP answer.
#[derive(Debug, Clone)]
pub struct HttpReply {
    pub status: u16,
    pub body: Vec<u8>,
}

impl HttpReply {
    fn json(&self, what: &str) -> Result<Json, String> {
        if self.status / 100 != 2 {
            let text = String::from_utf8_lossy(&self.body);
            let detail = serde_json::from_slice::<Json>(&self.body)
                .ok()
                .and_then(|j| j.get("error").and_then(Json::as_str).map(str::to_string))
                .unwrap_or_else(|| text.chars().take(200).collect());
            return Err(format!("{what}: HTTP {} {}", self.status, detail.trim()));
        }
        serde_json::from_slice(&self.body)
            .map_err(|e| format!("{what}: the answer is not JSON ({e})"))
    }
}

/// The cloud's API.
#[derive(Debug, Clone)]
pub struct CloudApi {
    pub url: CloudUrl,
    pub timeout: Duration,
}

impl CloudApi {
    pub fn new(url: &str, timeout: Duration) -> Result<CloudApi, String> {
        Ok(CloudApi {
            url: parse_cloud_url(url)?,
            timeout,
        })
    }

    /// `GET /.well-known/ocf-cloud`.
    pub fn info(&self) -> Result<CloudInfo, String> {
        let j = self
            .call("GET", "/.well-known/ocf-cloud", None)?
            .json("GET /.well-known/ocf-cloud")?;
        let text = |k: &str| -> Result<String, String> {
            j.get(k)
                .and_then(Json::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .ok_or_else(|| format!("GET /.well-known/ocf-cloud: no `{k}` in the answer"))
        };
        let info = CloudInfo {
            sid: text("sid")?.to_ascii_lowercase(),
            cis: text("cis")?,
            apn: text("apn")?,
            ca_pem: text("ca_pem")?,
        };
        if !ocf::security::is_uuid(&info.sid) {
            return Err(format!(
                "GET /.well-known/ocf-cloud: sid {:?} is not a UUID",
                info.sid
            ));
        }
        if !info.ca_pem.contains("-----BEGIN CERTIFICATE-----") {
            return Err("GET /.well-known/ocf-cloud: ca_pem is not a PEM certificate".into());
        }
        Ok(info)
    }

    /// `POST /api/v1/authcodes` (for `user`, or the cloud's default user).
    pub fn auth_code(&self, user: Option<&str>) -> Result<AuthCode, String> {
        let body = match user {
            Some(u) => serde_json::json!({ "user": u }),
            None => serde_json::json!({}),
        };
        let j = self
            .call("POST", "/api/v1/authcodes", Some(&body))?
            .json("POST /api/v1/authcodes")?;
        let code = j
            .get("code")
            .and_then(Json::as_str)
            .filter(|s| !s.is_empty())
            .ok_or("POST /api/v1/authcodes: no `code` in the answer")?;
        Ok(AuthCode {
            code: code.to_string(),
            apn: j.get("apn").and_then(Json::as_str).map(str::to_string),
        })
    }

    /// `POST /api/v1/csr`: (certificate PEM, CA PEM).
    pub fn sign_csr(&self, csr_pem: &str) -> Result<(String, String), String> {
        let j = self
            .call(
                "POST",
                "/api/v1/csr",
                Some(&serde_json::json!({ "csr_pem": csr_pem })),
            )?
            .json("POST /api/v1/csr")?;
        match (
            j.get("certificate_pem").and_then(Json::as_str),
            j.get("ca_pem").and_then(Json::as_str),
        ) {
            (Some(c), Some(ca)) => Ok((c.to_string(), ca.to_string())),
            _ => Err("POST /api/v1/csr: no certificate_pem and ca_pem in the answer".into()),
        }
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
        let mut s = stream.ok_or_else(|| {
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
        s.write_all(&bytes).map_err(|e| format!("{what}: {e}"))?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw)
            .map_err(|e| format!("{what}: {e}"))?;
        parse_http_response(&raw).map_err(|e| format!("{what}: {e}"))
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
    Ok(HttpReply { status, body })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cloud_urls() {
        assert_eq!(
            parse_cloud_url("http://127.0.0.1:8080").unwrap(),
            CloudUrl {
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
        assert!(parse_cloud_url("https://x:1")
            .unwrap_err()
            .contains("plain http"));
        for bad in [
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
    fn auth_codes_do_not_show_in_debug() {
        let c = AuthCode {
            code: "s3cr3t-code".into(),
            apn: Some("plgd".into()),
        };
        assert!(!format!("{c:?}").contains("s3cr3t"));
        assert_eq!(c.expose(), "s3cr3t-code");
    }
}
