//! `protocol = "postgres"`: the PostgreSQL wire protocol (v3.0 and v3.2) in session mode.
//!
//! Each client session is bound to one server connection for its life, but the proxy owns
//! the startup: it answers SSLRequest/GSSENCRequest, routes on the StartupMessage (database,
//! user, application_name), picks a server of the listener's role, relays authentication
//! (or authenticates the client itself and logs in to the server: auth.rs, login.rs),
//! issues its own cancel keys, and reports failures as PostgreSQL errors with a SQLSTATE.

pub mod auth;
pub mod cancel;
pub mod codec;
pub mod errors;
pub mod login;
pub mod session;
pub mod startup;
pub mod tls;

pub use cancel::CancelTable;
pub use session::serve;
