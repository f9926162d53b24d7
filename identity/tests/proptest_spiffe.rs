//! Property tests of SPIFFE ID parsing: no input makes it panic, every valid ID displays
//! as exactly what was parsed and parses back equal, and what the spec forbids is refused.

use proptest::prelude::*;
use vigil_identity::SpiffeId;

fn trust_domain() -> impl Strategy<Value = String> {
    "[a-z0-9._-]{1,40}"
}

fn segment() -> impl Strategy<Value = String> {
    "[A-Za-z0-9._-]{1,16}".prop_filter("dot segments are invalid", |s| s != "." && s != "..")
}

fn valid_id() -> impl Strategy<Value = String> {
    (trust_domain(), proptest::collection::vec(segment(), 0..6)).prop_map(|(td, segs)| {
        let mut id = format!("spiffe://{td}");
        for s in segs {
            id.push('/');
            id.push_str(&s);
        }
        id
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    #[test]
    fn never_panics_on_any_text(s in "\\PC{0,128}") {
        let _ = SpiffeId::parse(&s);
    }

    #[test]
    fn never_panics_on_anything_after_the_scheme(rest in proptest::collection::vec(any::<char>(), 0..128)) {
        let s: String = std::iter::once("spiffe://".to_string()).chain(rest.into_iter().map(String::from)).collect();
        if let Ok(id) = SpiffeId::parse(&s) {
            prop_assert_eq!(SpiffeId::parse(&id.to_string()), Ok(id.clone()));
            prop_assert_eq!(id.to_string(), s);
        }
    }

    #[test]
    fn valid_ids_round_trip(s in valid_id()) {
        let id = SpiffeId::parse(&s).expect("a valid ID parses");
        prop_assert_eq!(id.to_string(), s.clone());
        prop_assert_eq!(SpiffeId::parse(&id.to_string()), Ok(id.clone()));
        prop_assert!(id.path().is_empty() || id.path().starts_with('/'));
    }

    #[test]
    fn workload_ids_round_trip(td in trust_domain(), ns in segment(), sa in segment()) {
        let id = SpiffeId::workload(&td, &ns, &sa).expect("valid parts");
        let parsed = SpiffeId::parse(&id.to_string()).expect("parses");
        prop_assert_eq!(parsed.namespace(), Some(ns.as_str()));
        prop_assert_eq!(parsed.service_account(), Some(sa.as_str()));
        prop_assert_eq!(parsed, id);
    }

    #[test]
    fn uppercase_trust_domains_are_refused(td in "[a-z0-9]{0,8}[A-Z][a-z0-9]{0,8}", seg in segment()) {
        let id = format!("spiffe://{td}/{seg}");
        prop_assert!(SpiffeId::parse(&id).is_err(), "{} parsed", id);
    }

    #[test]
    fn empty_and_dot_segments_are_refused(s in valid_id(), bad in prop_oneof![Just("/"), Just("/."), Just("/.."), Just("//x")]) {
        let s = format!("{s}{bad}");
        prop_assert!(SpiffeId::parse(&s).is_err(), "{} parsed", s);
    }
}
