//! Protocol front ends: what happens on a client connection after accept.

pub mod postgres;
pub mod tcp;
