//! `ocf-dev-cloud`: a development OCF Cloud that behaves like plgd hub towards devices
//! (OCF-PROTOCOL.md §5-§8, §10), with a client API in plgd hub's shape (its HTTP gateway, certificate authority and
//! authorisation server) for clients, the Mediator and tests, and a web console.
//!
//! - [`store`]: SQLite state (users, authorisation codes, devices, tokens, links).
//! - [`core`]: the device-facing request logic over the store, without sockets.
//! - [`pki`]: the CA, the server certificate, CSR signing, device certificate checks.
//! - [`device`]: one device connection (RFC 8323 through the shared `ocf` core).
//! - [`block1`]: block-wise requests from devices put together (RFC 7959 §2.5).
//! - [`app`]: state shared by connections and the HTTP API.
//! - [`http`]: the client API in plgd hub's shape, its authorisation server and CA signing.
//! - [`ws`]: the event subscriptions over WebSocket (`/api/v1/ws/events`).
//! - [`console`]: the web console at `/`.
//! - [`server`]: listeners, start-up, shutdown.

pub mod app;
pub mod block1;
pub mod console;
pub mod core;
pub mod device;
pub mod http;
pub mod pki;
pub mod server;
pub mod store;
pub mod ws;
