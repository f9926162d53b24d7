//! What comes from the control plane: the workload identity (certificates and their
//! renewal), discovery snapshots and the live view of the mesh built from them.

pub mod backoff;
pub mod control_plane_client;
pub mod discovery;
pub mod identity;
pub mod state;
