//! SPIFFE ID parsing: never panics, and whatever parses prints back to itself and parses
//! again to an equal ID.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vigil_identity::SpiffeId;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(id) = SpiffeId::parse(&text) {
        let shown = id.to_string();
        assert_eq!(
            shown.as_str(),
            &*text,
            "a parsed ID displays exactly as its input"
        );
        assert_eq!(SpiffeId::parse(&shown), Ok(id.clone()));
        assert!(id.path().is_empty() || id.path().starts_with('/'));
        if let (Some(ns), Some(sa)) = (id.namespace(), id.service_account()) {
            assert_eq!(
                SpiffeId::workload(id.trust_domain(), ns, sa).as_ref(),
                Ok(&id)
            );
        }
    }
});
