use std::path::Path;
fn main() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    let mut out = std::io::stdout();
    let s = vigil_authz::run_tests(&dir, &mut out, false).unwrap();
    println!("{s:?}");
    let req = vigil_authz::ExplainRequest {
        source: Some("spiffe://vigil.local/ns/acme/sa/console".into()),
        destination: Some("spiffe://vigil.local/ns/acme/sa/reports".into()),
        method: "GET".into(),
        path: "/reports?x=1".into(),
        headers: vec![
            (
                "authorization".into(),
                "Bearer eyJhbGciOiJIUzI1NiJ9.eyJyb2xlIjoiYWRtaW4iLCJleHAiOjQxMDI0NDQ4MDB9.c2ln"
                    .into(),
            ),
            ("x-tenant".into(), "globex".into()),
        ],
        host: "reports".into(),
    };
    vigil_authz::explain(&dir.join("jwt-claims"), req, None, &mut out).unwrap();
    let req = vigil_authz::ExplainRequest {
        source: Some("spiffe://vigil.local/ns/billing/sa/api".into()),
        destination: Some("spiffe://vigil.local/ns/shop/sa/orders".into()),
        method: "DELETE".into(),
        path: "/orders/42".into(),
        headers: vec![],
        host: "orders".into(),
    };
    println!("==========");
    vigil_authz::explain(&dir.join("method-path"), req, None, &mut out).unwrap();
}
