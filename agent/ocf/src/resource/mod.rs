//! The OCF resource model: resources with types, interfaces, properties and policy; the router
//! that turns a CoAP request into a call on a resource; `/oic/res`, `/oic/d`, `/oic/p`; and the
//! observation bookkeeping.

mod backend;

pub use backend::{Backend, Props, ResourceError, Value};
