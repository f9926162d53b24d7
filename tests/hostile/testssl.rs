//! TLS audits of the inbound port: Debian's testssl.sh (only TLS 1.3 offered, only TLS 1.3
//! cipher suites, no finding rated MEDIUM or worse) and sslyze (TLS 1.3 only).
//!
//! testssl.sh cannot present a SPIFFE client certificate, so every handshake it makes ends
//! at client authentication: it still sees the ServerHello (protocols, cipher suites, key
//! exchange groups, the server's certificate), which is what is asserted here. It cannot
//! see anything behind the handshake (HTTP headers, the application).

use std::path::PathBuf;
use std::process::Command;

use crate::support::*;

/// The checks run: protocols, each cipher per protocol, server defaults/preferences and
/// the known vulnerabilities, on one IP.
const CHECKS: [&str; 5] = [
    "--protocols",
    "--each-cipher",
    "--server-defaults",
    "--server-preference",
    "--vulnerable",
];

/// Certificate findings rated MEDIUM or worse by web-PKI standards that are Vigil's
/// design, each with the text testssl.sh gives and why it is right for a mesh.
const BY_DESIGN: [(&str, &str, &str); 4] = [
    (
        "cert_trust",
        "does not match supplied URI",
        "an SVID names a SPIFFE ID (URI SAN), never a host name; peers check the ID",
    ),
    (
        "cert_expirationStatus",
        "expires < 30 days",
        "SVIDs are short-lived (24 h default, 1 h here) and renewed at half-life",
    ),
    (
        "cert_notAfter",
        "",
        "the same short lifetime, reported as a date",
    ),
    (
        "cert_revocation",
        "Neither CRL nor OCSP",
        "short lifetimes stand in for revocation, as in every SPIFFE deployment",
    ),
];

/// TLS 1.3's cipher suites, as testssl.sh names them (`cipher_x1301`, ...).
const TLS13_SUITES: [&str; 5] = ["x1301", "x1302", "x1303", "x1304", "x1305"];

fn testssl() -> PathBuf {
    ["/usr/bin/testssl", "/usr/bin/testssl.sh", "/usr/local/bin/testssl.sh"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| {
            panic!(
                "testssl.sh is missing: install Debian's testssl.sh package (apt-get install testssl.sh), \
                 or run the tests with scripts/test.sh which does"
            )
        })
}

#[tokio::test(flavor = "multi_thread")]
async fn testssl_sees_only_tls13_and_nothing_medium_or_worse() {
    let _one_at_a_time = serial().await;
    let program = testssl();
    let pair = Pair::start(PairOptions::default()).await;
    let steady = Steady::start(pair.client.outbound, "server");
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("testssl.json");
    let target = pair.server.inbound.to_string();

    let mut command = Command::new(&program);
    command
        .args(CHECKS)
        .args([
            "--quiet",
            "--color",
            "0",
            "--warnings",
            "off",
            "--ip",
            "one",
        ])
        .args(["--connect-timeout", "10", "--openssl-timeout", "10"])
        // The mesh's own root, so the chain of trust is judged against it.
        .arg("--add-ca")
        .arg(pair.mesh.data_dir().join("trust-bundle.pem"))
        .arg("--jsonfile")
        .arg(&json)
        .arg(&target);
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("join")
        .expect("testssl.sh runs");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let report = std::fs::read_to_string(&json).unwrap_or_default();
    std::fs::write(vigil_e2e::artifacts_dir().join("testssl.txt"), &text).ok();
    std::fs::write(vigil_e2e::artifacts_dir().join("testssl.json"), &report).ok();
    let findings: Vec<serde_json::Value> = serde_json::from_str(&report).unwrap_or_else(|e| {
        panic!(
            "testssl.sh wrote no JSON ({e}):\n{text}\n{}",
            String::from_utf8_lossy(&output.stderr)
        )
    });

    let finding = |id: &str| -> String {
        findings
            .iter()
            .find(|f| f["id"] == id)
            .and_then(|f| f["finding"].as_str())
            .unwrap_or("(absent)")
            .to_string()
    };
    let mut problems = Vec::new();
    for old in ["SSLv2", "SSLv3", "TLS1", "TLS1_1", "TLS1_2"] {
        if !finding(old).starts_with("not offered") {
            problems.push(format!("{old}: {}", finding(old)));
        }
    }
    if !finding("TLS1_3").starts_with("offered") {
        problems.push(format!("TLS1_3: {}", finding("TLS1_3")));
    }
    for f in &findings {
        let id = f["id"].as_str().unwrap_or("");
        let severity = f["severity"].as_str().unwrap_or("");
        let text = f["finding"].as_str().unwrap_or("");
        if matches!(severity, "MEDIUM" | "HIGH" | "CRITICAL") {
            let accepted = BY_DESIGN
                .iter()
                .find(|(known, says, _)| *known == id && text.contains(says));
            if let Some((_, _, why)) = accepted {
                println!("by design: {severity} {id}: {text} ({why})");
            } else {
                problems.push(format!("{severity} {id}: {text}"));
            }
        }
        // Every cipher suite the server accepted is a TLS 1.3 one.
        if let Some(suite) = id.strip_prefix("cipher_x") {
            if !TLS13_SUITES.contains(&format!("x{suite}").as_str()) {
                problems.push(format!("a pre-1.3 cipher suite: {id}: {text}"));
            }
        }
    }
    let ciphers: Vec<&str> = findings
        .iter()
        .filter(|f| {
            f["id"]
                .as_str()
                .is_some_and(|id| id.starts_with("cipher_x"))
        })
        .filter_map(|f| f["finding"].as_str())
        .collect();
    println!(
        "testssl.sh: {} findings; TLS 1.3 suites offered: {ciphers:?}",
        findings.len()
    );
    assert!(
        !ciphers.is_empty(),
        "testssl.sh listed no TLS 1.3 cipher suite:\n{text}"
    );
    assert!(problems.is_empty(), "{}\n\n{text}", problems.join("\n"));
    steady.finish(|| pair.mesh.logs()).await;
}

/// sslyze, the second opinion: presenting a real mesh client certificate it completes the
/// handshakes, and finds cipher suites accepted under TLS 1.3 only. Its curve probe knows
/// classical groups only (OpenSSL's): it finds X25519, the fallback for peers without the
/// hybrid; `tests/tests/post_quantum.rs` shows X25519MLKEM768 negotiated between proxies.
#[tokio::test(flavor = "multi_thread")]
async fn sslyze_finds_tls13_only() {
    let _one_at_a_time = serial().await;
    let pair = Pair::start(PairOptions::default()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let me = vigil_identity::SpiffeId::parse(&pair.client.spiffe_id()).expect("id");
    let (cert, key) = vigil_identity::testing::valid_leaf(&pair.ca(), &me)
        .expect("a client certificate")
        .write_to(dir.path(), "client")
        .expect("written");
    let json = dir.path().join("sslyze.json");
    let mut command = Command::new("python3");
    command
        .args(["-m", "sslyze", "--quiet"])
        .arg(format!("--cert={}", cert.display()))
        .arg(format!("--key={}", key.display()))
        .args([
            "--sslv2",
            "--sslv3",
            "--tlsv1",
            "--tlsv1_1",
            "--tlsv1_2",
            "--tlsv1_3",
            "--elliptic_curves",
        ])
        .arg(format!("--json_out={}", json.display()))
        .arg(pair.server.inbound.to_string());
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("join")
        .expect("python3 runs");
    let report = std::fs::read_to_string(&json).unwrap_or_else(|e| {
        panic!(
            "sslyze wrote no report ({e}); is it installed (pip3 install sslyze, which scripts/test.sh does)?\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    });
    std::fs::write(vigil_e2e::artifacts_dir().join("sslyze.json"), &report).ok();
    let v: serde_json::Value = serde_json::from_str(&report).expect("JSON");
    let scan = &v["server_scan_results"][0];
    assert_eq!(scan["scan_status"], "COMPLETED", "{report}");
    let results = &scan["scan_result"];
    let accepted = |name: &str| -> Vec<String> {
        results[name]["result"]["accepted_cipher_suites"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s["cipher_suite"]["name"].as_str().map(str::to_string))
            .collect()
    };
    for old in [
        "ssl_2_0_cipher_suites",
        "ssl_3_0_cipher_suites",
        "tls_1_0_cipher_suites",
        "tls_1_1_cipher_suites",
        "tls_1_2_cipher_suites",
    ] {
        assert_eq!(
            results[old]["status"], "COMPLETED",
            "{old} not scanned: {}",
            results[old]
        );
        assert!(
            accepted(old).is_empty(),
            "{old} accepted {:?}",
            accepted(old)
        );
    }
    let tls13 = accepted("tls_1_3_cipher_suites");
    println!("sslyze: TLS 1.3 suites accepted {tls13:?}");
    assert!(!tls13.is_empty(), "no TLS 1.3 suite accepted: {report}");
    let groups: Vec<String> = results["elliptic_curves"]["result"]["supported_curves"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str().map(str::to_string))
        .collect();
    println!("sslyze: key exchange groups accepted {groups:?}");
    assert!(
        groups.iter().any(|g| g == "X25519"),
        "X25519 not accepted: {}",
        results["elliptic_curves"]
    );
}
