//! A TLS audit of the inbound port by Debian's testssl.sh: only TLS 1.3 is offered, only
//! TLS 1.3 cipher suites, and no finding is rated MEDIUM or worse.
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
const CHECKS: [&str; 4] = [
    "--protocols",
    "--each-cipher",
    "--server-preference",
    "--vulnerable",
];

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
            problems.push(format!("{severity} {id}: {text}"));
        }
        // Every cipher suite listed for the server is a TLS 1.3 one.
        if id.starts_with("cipher-") && !id.starts_with("cipher-tls1_3") {
            problems.push(format!("a pre-1.3 cipher suite: {id}: {text}"));
        }
    }
    let ciphers: Vec<&str> = findings
        .iter()
        .filter(|f| {
            f["id"]
                .as_str()
                .is_some_and(|id| id.starts_with("cipher-tls1_3"))
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
