//! The phone Mediator's side of OCF onboarding, as a library for the `ocf-mediator` CLI:
//! discovery, the Mediator's identity, CoAP over TLS to a device with the ownership transfer
//! (SPAKE2 bound to the TLS exporter, see `ocf::security::otm`; or OCF's Random PIN and
//! Manufacturer Certificate methods over DTLS), the cloud's HTTP API, and the
//! onboarding / offboarding flows (OCF-PROTOCOL.md §8.5, §4).

pub mod cloud_api;
pub mod csr;
pub mod discover;
pub mod dtls;
pub mod endpoint;
pub mod flow;
pub mod identity;
pub mod standard_otm;
pub mod tls;
