//! Test access to the recorded Kubernetes payloads in the repository's
//! `tests/fixtures/kubernetes` (its SOURCES.md says where each one was recorded). They
//! live inside the repository so that a clone with nothing beside it passes its tests.

use std::path::PathBuf;

/// The fixtures directory.
pub fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/kubernetes")
}

/// A fixture's text.
pub fn fixture(relative: &str) -> String {
    let path = dir().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "fixture {} is missing ({e}); recorded payloads belong in tests/fixtures/kubernetes \
             with an entry in its SOURCES.md",
            path.display()
        )
    })
}

/// A JSON fixture, parsed.
pub fn fixture_json(relative: &str) -> serde_json::Value {
    serde_json::from_str(&fixture(relative))
        .unwrap_or_else(|e| panic!("fixture {relative} is not JSON: {e}"))
}
