//! Switchyard: a multi-protocol reverse proxy and load balancer.
//!
//! The binary in `main.rs` only parses the command line; everything else lives here so that
//! tests, benchmarks and fuzz targets can reach it.

pub mod accept;
pub mod accounting;
pub mod address;
pub mod admin;
pub mod auth;
pub mod authority;
pub mod config;
pub mod ctl;
pub mod health;
pub mod http_link;
pub mod idle_lot;
pub mod joined_writes;
pub mod lazy_timer;
pub mod listener;
pub mod login_gate;
pub mod memory;
pub mod net;
pub mod observe;
pub mod on_wake;
pub mod protocol;
pub mod proxy_protocol;
pub mod redis_link;
pub mod relay;
pub mod resolve;
pub mod route;
pub mod runtime;
pub mod secret;
pub mod tally;
/// Helpers for the crate's own tests, and for the fuzz crate through the `testing` feature.
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod tls;
pub mod upstream;
pub mod wait_queue;
pub mod workers;
