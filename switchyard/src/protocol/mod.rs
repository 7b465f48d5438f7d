//! Protocol front ends: what happens on a client connection after accept.

pub mod http;
pub mod tcp;
