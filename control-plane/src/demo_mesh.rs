//! The demo mesh embedded in the binary (`examples/demo/`), and where `vigil demo` keeps
//! it: what the launcher and `vigil check` need to know about the demo without running it.

use std::path::{Path, PathBuf};

/// `examples/demo/mesh.yaml`.
pub const MESH_YAML: &str = include_str!("../../examples/demo/mesh.yaml");

/// `examples/demo/policy/`: the Rego policy, its data and its tests.
pub const POLICY_FILES: [(&str, &str); 3] = [
    (
        "policy.rego",
        include_str!("../../examples/demo/policy/policy.rego"),
    ),
    (
        "policy_test.rego",
        include_str!("../../examples/demo/policy/policy_test.rego"),
    ),
    (
        "data.json",
        include_str!("../../examples/demo/policy/data.json"),
    ),
];

/// Where the demo keeps its files when no `--data-dir` is given; `vigil check` looks for
/// the demo's mesh file here too.
pub fn default_data_dir() -> PathBuf {
    std::env::temp_dir().join("vigil-demo")
}

/// The mesh file `vigil demo` writes into `data_dir`.
pub fn mesh_path(data_dir: &Path) -> PathBuf {
    data_dir.join("mesh.yaml")
}
