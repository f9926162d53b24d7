//! Test access to the recorded Kubernetes payloads in `shared/fixtures/kubernetes`
//! (beside the repository; see its SOURCES.md for where each one was recorded).

use std::path::PathBuf;

/// The fixtures directory.
pub fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/kubernetes")
}

/// A fixture's text.
pub fn fixture(relative: &str) -> String {
    let path = dir().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "fixture {} is missing ({e}); the shared/ directory must sit beside the repository",
            path.display()
        )
    })
}

/// A JSON fixture, parsed.
pub fn fixture_json(relative: &str) -> serde_json::Value {
    serde_json::from_str(&fixture(relative))
        .unwrap_or_else(|e| panic!("fixture {relative} is not JSON: {e}"))
}
