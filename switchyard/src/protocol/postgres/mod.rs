//! `protocol = "postgres"`: the PostgreSQL wire protocol (v3.0 and v3.2).
//!
//! The proxy owns the startup: it answers SSLRequest/GSSENCRequest, routes on the
//! StartupMessage (database, user, application_name), picks a server of the listener's
//! role, relays authentication or authenticates the client itself and logs in to the server
//! (`auth`, `login`), issues its own cancel keys, and reports failures as PostgreSQL errors
//! with a SQLSTATE. In session mode a client is bound to one server connection for its
//! life; in transaction mode (`pooler`, `transaction`) clients share server connections
//! one transaction at a time.

pub mod auth;
pub mod auth_cache;
pub mod cancel;
pub mod classify;
pub mod codec;
pub mod errors;
pub mod frames;
pub mod login;
pub mod pooler;
pub mod quiet;
pub mod scanner;
pub mod session;
pub mod settings;
pub mod split;
pub mod startup;
pub mod statements;
pub mod tls;
pub mod transaction;

pub use cancel::CancelTable;
pub use pooler::TxPools;
pub use session::serve;
