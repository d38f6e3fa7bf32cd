//! The OCF protocol core, sans-IO: no sockets, no clock, no runtime.
//!
//! Everything here takes bytes and time in and hands bytes, timers and decisions out, so the
//! daemon (`ocf-agent`), the development cloud and the Mediator share one implementation and
//! every schedule can be tested on a virtual clock.

#![forbid(unsafe_code)]

pub mod cloud;
pub mod coap;
pub mod maintenance;
pub mod model;
pub mod resource;
pub mod security;
pub mod server;
pub mod x509;
