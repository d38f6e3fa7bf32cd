//! The interim, file-based cloud identity of the development mode (`--insecure-dev`), which
//! the cloud figures of `ocf-bench` use to measure the protocol path without onboarding:
//! `ocf-agent csr` → the cloud's CSR API → `identity.crt` and `cloud-ca.pem` in the agent's
//! state directory (read at every connect, so no restart is needed). A secure-mode agent gets
//! its identity from the Mediator instead (`ocf-mediator onboard`, as `ocf-demo` does). Errors
//! are returned, not panicked.

use std::path::Path;
use std::process::Command;

use crate::try_binary;

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
