//! HTTP pieces both directions share: bodies, header hygiene, request limits, the
//! proxy's own errors as responses, and upgrades across the mesh.

pub mod body;
pub mod buffer;
pub mod error;
pub mod headers;
pub mod limits;
pub mod upgrade;
