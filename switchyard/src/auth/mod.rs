//! Authentication the proxy performs itself: verifying clients and logging in to servers on
//! their behalf.

pub mod md5;
pub mod scram;
