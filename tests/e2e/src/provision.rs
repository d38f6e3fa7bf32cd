//! The interim provisioning path, until the Mediator (issue 4) does it over the secured local
//! endpoint: `ocf-agent csr` → the cloud's CSR API → `identity.crt` and `cloud-ca.pem` in the
//! agent's state directory (read at every connect, so no restart is needed), then CoAPCloudConf
//! `{cis, apn, at, sid}` over the agent's plain local coap+tcp endpoint. Errors are returned,
//! not panicked, so that `ocf-demo` can say which step failed and why.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use ciborium::Value;
use coap_lite::ResponseType;
use ocf::model::{decode_payload, ContentFormat};
use ocf::resource::Response;

use crate::{get, key, map, post_cbor, try_binary, TcpClient};

/// The CoAPCloudConf resource.
pub const CLOUD_CONF: &str = "/CoAPCloudConfResURI";

/// `ocf-agent csr --state-dir DIR` (from `bin_dir`): a PEM CSR for the agent's identity key,
/// CN `uuid:<di>`. Creates the identity and the key if the agent has not yet.
pub fn agent_csr(bin_dir: &Path, state_dir: &Path) -> Result<String, String> {
    let out = Command::new(try_binary(bin_dir, "ocf-agent")?)
        .arg("csr")
        .arg("--state-dir")
        .arg(state_dir)
        .output()
        .map_err(|e| format!("cannot run ocf-agent csr: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "ocf-agent csr: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let csr = String::from_utf8(out.stdout).map_err(|_| "ocf-agent csr: not UTF-8".to_string())?;
    if !csr.starts_with("-----BEGIN CERTIFICATE REQUEST-----") {
        return Err(format!("ocf-agent csr: not a PEM CSR: {csr:?}"));
    }
    Ok(csr)
}

/// Writes the identity certificate and the cloud trust anchor into the agent's state directory
/// (each to a temporary file renamed into place, so the agent never reads half a file).
pub fn install_identity(state_dir: &Path, cert_pem: &str, ca_pem: &str) -> Result<(), String> {
    for (name, pem) in [("identity.crt", cert_pem), ("cloud-ca.pem", ca_pem)] {
        let path = state_dir.join(name);
        let tmp = state_dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, pem)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}

/// Decodes a response body by its Content-Format.
pub fn try_body(r: &Response) -> Result<Value, String> {
    let cf = r
        .content_format
        .and_then(ContentFormat::from_number)
        .unwrap_or(ContentFormat::OcfCbor);
    decode_payload(cf, &r.payload).map_err(|e| format!("bad body: {e}"))
}

/// `GET /CoAPCloudConfResURI` over the agent's local coap+tcp endpoint.
pub fn read_cloud_conf(agent_tcp: SocketAddr) -> Result<Value, String> {
    let r = TcpClient::try_connect(agent_tcp)?.try_request(&get(CLOUD_CONF))?;
    if r.code != ResponseType::Content {
        return Err(format!("GET {CLOUD_CONF}: {:?} {}", r.code, r.diagnostic()));
    }
    try_body(&r)
}

/// `POST /CoAPCloudConfResURI` with text `entries` over the agent's local coap+tcp endpoint;
/// the representation the agent answers 2.04 Changed with (`at` is write-only, so not in it).
pub fn write_cloud_conf(agent_tcp: SocketAddr, entries: &[(&str, &str)]) -> Result<Value, String> {
    let body = map(&entries
        .iter()
        .map(|(k, v)| (*k, Value::Text(v.to_string())))
        .collect::<Vec<_>>());
    let r = TcpClient::try_connect(agent_tcp)?.try_request(&post_cbor(CLOUD_CONF, &body))?;
    if r.code != ResponseType::Changed {
        return Err(format!(
            "POST {CLOUD_CONF}: {:?} {}",
            r.code,
            r.diagnostic()
        ));
    }
    try_body(&r)
}

/// A text property of a representation.
pub fn text_of(v: &Value, k: &str) -> Option<String> {
    key(v, k).and_then(Value::as_text).map(str::to_string)
}

/// `clec` of a CoAPCloudConf representation.
pub fn clec_of(v: &Value) -> Option<u64> {
    key(v, "clec")
        .and_then(Value::as_integer)
        .and_then(|i| u64::try_from(i).ok())
}

/// What a `clec` value means (OCF-PROTOCOL.md §4).
pub fn clec_meaning(clec: u64) -> &'static str {
    match clec {
        0 => "no error",
        1 => "the cloud answered with an error",
        2 => "cannot connect to the cloud",
        3 => "the token refresh failed",
        4 => "unauthorized",
        _ => "unknown error",
    }
}
