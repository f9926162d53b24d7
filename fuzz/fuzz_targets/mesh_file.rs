//! The local mesh file parser (YAML and validation): never panics on any text.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(mesh) = vigil::mesh::MeshFile::parse(text) {
            // Validated meshes also turn into the model without panicking.
            let _ = format!("{mesh:?}");
        }
    }
});
