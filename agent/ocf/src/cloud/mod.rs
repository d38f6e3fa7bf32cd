//! The Device-to-Cloud client of OCF-PROTOCOL.md (ISO/IEC 30118-11), sans-IO.
//!
//! - [`payload`]: the CoAPCloudConf configuration and the account / session / token-refresh / RD
//!   payloads, with lenient-but-strict CBOR decoding and redacted secrets.
//! - [`schedule`]: the pure timing rules (refresh schedule, full-jitter back-off).
//! - [`session`]: [`CloudSession`], the state machine of the device-to-cloud exchanges.
//! - [`link`]: [`link::CloudLink`], the connection to the cloud (framing, keepalive, block-wise
//!   transfers) driving the session: what a daemon drives.

pub mod link;
pub mod payload;
pub mod resource;
pub mod schedule;
pub mod session;

pub use payload::{Clec, CloudConf, CloudServer, ConfError, Cps, RdLink, Secret};
pub use session::{
    Action, CloudSession, ConnectError, DeviceInfo, PersistedState, Registration, RestoreError,
    SessionEvent, Timing,
};
pub mod uri;
