//! What a resource's owner (a driver adapter, a simulated sensor, a configuration resource)
//! implements so the router can serve it.

use std::collections::BTreeMap;
use std::fmt;

/// A property value as carried in an OCF representation (CBOR data model).
pub type Value = ciborium::Value;

/// A resource's own properties (not `rt`, `if`, `n`, `id`: the router adds those for the
/// baseline interface).
pub type Props = BTreeMap<String, Value>;

/// Why a resource could not serve a request. Each maps to one CoAP response code, and the text
/// is sent as the diagnostic payload (RFC 7252 §5.5.2) so a client can tell what was wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResourceError {
    /// 4.00: the body names an unknown or read-only property, or a value out of range.
    BadRequest(String),
    /// 4.03: understood, but not allowed for this requester.
    Forbidden(String),
    /// 4.05: the resource does not support this method.
    MethodNotAllowed,
    /// 5.03: the hardware behind the resource does not answer right now.
    Unavailable(String),
    /// 5.00: anything else that went wrong on our side.
    Internal(String),
}

impl fmt::Display for ResourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResourceError::BadRequest(s) => write!(f, "bad request: {s}"),
            ResourceError::Forbidden(s) => write!(f, "forbidden: {s}"),
            ResourceError::MethodNotAllowed => write!(f, "method not allowed"),
            ResourceError::Unavailable(s) => write!(f, "unavailable: {s}"),
            ResourceError::Internal(s) => write!(f, "internal error: {s}"),
        }
    }
}

impl std::error::Error for ResourceError {}

/// The behaviour behind one resource.
///
/// `retrieve` must report the real state (an actuator reads its hardware back, a sensor its last
/// good sample); `update` must have applied the change to the hardware when it returns `Ok`, so
/// that the 2.04 the router then sends is true.
pub trait Backend {
    /// The current properties.
    fn retrieve(&mut self) -> Result<Props, ResourceError>;

    /// Apply an update (POST). `props` holds only the properties the client sent; a backend
    /// refuses unknown or read-only ones with [`ResourceError::BadRequest`] and changes nothing
    /// then.
    fn update(&mut self, props: &Props) -> Result<(), ResourceError> {
        let _ = props;
        Err(ResourceError::MethodNotAllowed)
    }
}
