//! Configuration: the TOML schema, loading with precise error reports, and validation.

pub mod duration;
pub mod load;
mod schema;
mod validate;

pub use load::{ConfigError, ConfigErrors, default_path, load_file, load_str};
pub use schema::*;
