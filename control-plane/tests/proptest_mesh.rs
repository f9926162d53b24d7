//! Property tests of the mesh file parser: no text, random or YAML-shaped or a damaged
//! valid file, makes `MeshFile::parse` panic.

use proptest::prelude::*;
use vigil::mesh::MeshFile;

const VALID: &str = "trust_domain: vigil.local
certificate_lifetime: 1h
control_plane:
  identity: \"127.0.0.1:15012\"
  discovery: \"127.0.0.1:15010\"
workloads:
  - name: web
    namespace: demo
    join_token: \"702b086ad2e90ba3adc0e9d9a00079cb\"
    app_port: 8080
    tcp_ports: [9000]
    proxy:
      inbound: \"127.0.0.1:15006\"
      upstreams:
        \"127.0.0.1:16000\": api
  - name: api
    namespace: demo
    join_token: \"65931e9a6be8187a7049d54d6ee9c23b\"
    app_port: 8081
services:
  - name: api
    namespace: demo
    protocol: http
    endpoints: [api]
    hosts: [api.example]
    traffic: {\"timeout\": \"2s\", \"retries\": {\"attempts\": 2}}
";

const KEYS: [&str; 25] = [
    "trust_domain",
    "certificate_lifetime",
    "control_plane",
    "identity",
    "discovery",
    "dashboard",
    "webhook",
    "dashboard_hosts",
    "policy",
    "dir",
    "rule",
    "dry_run",
    "request_body_bytes",
    "workloads",
    "name",
    "namespace",
    "join_token",
    "app_port",
    "tcp_ports",
    "proxy",
    "services",
    "endpoints",
    "hosts",
    "virtual_addresses",
    "traffic",
];

fn scalar() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("~".to_string()),
        Just("\"\"".to_string()),
        Just("[]".to_string()),
        Just("{}".to_string()),
        Just("65536".to_string()),
        Just("-1".to_string()),
        Just("1h".to_string()),
        Just("99999999999999999999999h".to_string()),
        Just("\"127.0.0.1:99999\"".to_string()),
        Just("&a [*a, *a]".to_string()),
        Just("!!binary aGk=".to_string()),
        "[a-z0-9.:]{0,12}",
        "\\PC{0,16}",
    ]
}

/// Nested YAML-ish text from the mesh file's own keys.
fn yamlish() -> impl Strategy<Value = String> {
    let line = (
        0usize..4,
        proptest::sample::select(&KEYS[..]),
        prop_oneof![Just(""), Just("- ")],
        scalar(),
    )
        .prop_map(|(indent, key, dash, value)| {
            format!("{}{dash}{key}: {value}\n", "  ".repeat(indent))
        });
    proptest::collection::vec(line, 0..24).prop_map(|lines| lines.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn any_text_never_panics(s in "\\PC{0,256}") {
        let _ = MeshFile::parse(&s);
    }

    #[test]
    fn yaml_shaped_text_never_panics(s in yamlish()) {
        let _ = MeshFile::parse(&s);
    }

    #[test]
    fn a_damaged_valid_file_never_panics(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), 0usize..3, "\\PC{0,6}"), 1..6)
    ) {
        let mut text = VALID.to_string();
        for (at, kind, insert) in edits {
            let mut i = at.index(text.len() + 1);
            while !text.is_char_boundary(i) {
                i -= 1;
            }
            match kind {
                0 => text.insert_str(i, &insert),
                1 => {
                    let mut end = (i + insert.len().max(1)).min(text.len());
                    while !text.is_char_boundary(end) {
                        end -= 1;
                    }
                    text.replace_range(i..end, "");
                }
                _ => text.replace_range(i..i, "\n  "),
            }
        }
        let _ = MeshFile::parse(&text);
    }
}

#[test]
fn the_valid_example_parses() {
    let mesh = MeshFile::parse(VALID).expect("the base of the damage test is valid");
    assert_eq!(mesh.workloads.len(), 2);
}
