//! The Vigil control plane and CLI.
//!
//! The control plane holds the mesh's CA and issues SPIFFE X.509-SVIDs to proxies that
//! present a valid bootstrap credential ([`identity_service`]), and streams each proxy its
//! view of the mesh and the policy bundle ([`discovery_service`]). Its source of truth is a
//! local mesh file ([`mesh`]) or, in cluster mode, the Kubernetes API ([`kubernetes`]),
//! both turned into the internal [`model`]. The sidecar injector ([`inject`]) adds the
//! proxy to pods, as an admission webhook or offline with `vigil inject`. The SRE
//! [`dashboard`] reads the proxies directly; [`check`] verifies a running mesh, and
//! [`demo`] runs a whole example mesh with [`launcher`].
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use vigil::control_plane::{run, ControlPlaneOptions};
//! run(ControlPlaneOptions {
//!     mesh_file: "examples/quickstart/mesh.yaml".into(),
//!     data_dir: "/tmp/vigil".into(),
//!     ca_cert: None,
//!     ca_key: None,
//!     ca_chain: None,
//!     reload_interval: std::time::Duration::from_secs(1),
//!     dashboard: Default::default(),
//!     namespace: "vigil-system".into(),
//!     replica: 0,
//! })
//! .await
//! # }
//! ```
#![forbid(unsafe_code)]

pub mod admin_client;
pub mod ca_rotation;
pub mod check;
pub mod control_plane;
pub mod control_plane_bench;
pub mod dashboard;
pub mod demo;
pub mod demo_mesh;
pub mod discovery_service;
pub mod gateway;
pub mod identity_service;
pub mod inject;
pub mod kubernetes;
pub mod launcher;
pub mod mesh;
pub mod mesh_location;
pub mod model;
pub mod observe_cli;
pub mod own_identity;
pub mod policy_source;
pub mod retry_hops;
pub mod served_policy;
pub mod tls_listener;

#[cfg(test)]
mod fixtures;
