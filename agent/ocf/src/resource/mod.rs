//! The OCF resource model: resources with types, interfaces, properties and policy; the router
//! that turns a CoAP request into a call on a resource; `/oic/res`, `/oic/d`, `/oic/p`; and the
//! observation bookkeeping.

mod backend;
mod device;
pub mod endpoint;
mod interface;
mod request;

pub use backend::{Backend, Props, ResourceError, Value};
pub(crate) use device::{decode_update, error_response};
pub use device::{
    etag_of, BatchFilter, Device, DeviceInfo, Notification, Origin, PlatformInfo, Resource,
    CONFIGURATION_HREF, DEFAULT_OBSERVATIONS_PER_PEER, DEFAULT_OBSERVATIONS_TOTAL, DEVICE_HREF,
    MAX_NAME_LEN, PLATFORM_HREF, RES_HREF,
};
pub use interface::{Interface, Policy};
pub use request::{
    Method, Request, Response, OCF_ACCEPT_VERSION, OCF_CONTENT_VERSION, OCF_VERSION_1_0,
};

#[cfg(test)]
mod tests;
