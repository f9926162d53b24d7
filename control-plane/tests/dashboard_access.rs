//! The dashboard of a real `vigil control-plane` answers only requests addressed to
//! loopback or to a configured host name, or carrying the configured bearer token: a page
//! that rebinds its DNS name to 127.0.0.1 reads neither the API nor the live tap.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use support::*;

const TOKEN: &str = "7f1e0c9a3b5d42e8a6c4f0b2d9e7a1c3";

/// One request; returns the status and, unless it is an event stream, the body.
fn request(addr: SocketAddr, host: Option<&str>, path: &str, headers: &[&str]) -> (u16, String) {
    let mut tcp = TcpStream::connect(addr).expect("connect to the dashboard");
    tcp.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut head = match host {
        Some(h) => format!("GET {path} HTTP/1.1\r\nHost: {h}\r\nConnection: close\r\n"),
        None => format!("GET {path} HTTP/1.0\r\n"),
    };
    for h in headers {
        head += &format!("{h}\r\n");
    }
    head += "\r\n";
    tcp.write_all(head.as_bytes()).expect("send");
    let mut reader = BufReader::new(tcp);
    let mut status_line = String::new();
    reader.read_line(&mut status_line).expect("status line");
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {status_line:?}"));
    let mut headers = String::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).expect("header");
        if line.trim().is_empty() {
            break;
        }
        headers += &line;
    }
    if headers.contains("text/event-stream") {
        return (status, headers);
    }
    let mut body = String::new();
    let _ = reader.read_to_string(&mut body);
    (status, body)
}

#[test]
fn the_dashboard_answers_only_loopback_configured_names_and_the_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cp = ControlPlaneAddresses::free();
    let mesh = dir.path().join("mesh.yaml");
    let yaml = format!(
        "trust_domain: vigil.local\n{}  dashboard_hosts: [ops.example]\nworkloads:\n  - name: web\n    join_token: \"{}\"\n    app_port: 8080\n    proxy: {{ inbound: \"{}\", outbound: \"{}\", admin: \"{}\", metrics: \"{}\" }}\n",
        cp.yaml(),
        random_token(),
        free_addr(),
        free_addr(),
        free_addr(),
        free_addr(),
    );
    std::fs::write(&mesh, yaml).expect("mesh file");
    let mut vigil = Vigil::control_plane(
        dir.path(),
        &mesh,
        &["--dashboard-host", "vigil.example"],
        &[("VIGIL_DASHBOARD_TOKEN", TOKEN)],
    );
    wait_listening(&mut vigil, cp.dashboard);
    let port = cp.dashboard.port();
    let foreign = format!("rebind.example:{port}");

    // A rebinding page's requests carry its own name: every path is refused, the live
    // tap and the JSON API included, with how to allow the name.
    for path in [
        "/",
        "/app.js",
        "/api/overview",
        "/api/graph",
        "/api/workloads",
        "/api/workloads/web",
        "/api/policy",
        "/api/identity",
        "/api/tap",
        "/api/tap?workload=web&policy=deny",
    ] {
        let (status, body) = request(cp.dashboard, Some(&foreign), path, &[]);
        assert_eq!(status, 403, "{path}: {body}");
        assert!(
            body.contains("--dashboard-host rebind.example")
                && body.contains("VIGIL_DASHBOARD_TOKEN"),
            "{path}: {body}"
        );
    }
    let (status, _) = request(cp.dashboard, None, "/api/overview", &[]);
    assert_eq!(status, 403, "a request without Host");
    let (status, _) = request(
        cp.dashboard,
        Some(&foreign),
        "/api/overview",
        &["Authorization: Bearer not-the-token"],
    );
    assert_eq!(status, 403, "a wrong token");

    // Loopback names with any port, the configured names, and the token are answered.
    for host in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        format!("[::1]:{port}"),
        "localhost".to_string(),
        "vigil.example".to_string(),
        format!("ops.example:{port}"),
    ] {
        let (status, body) = request(cp.dashboard, Some(&host), "/api/overview", &[]);
        assert_eq!(status, 200, "{host}: {body}");
        assert!(body.contains("\"trust_domain\":\"vigil.local\""), "{body}");
    }
    let bearer = format!("Authorization: Bearer {TOKEN}");
    let (status, body) = request(cp.dashboard, Some(&foreign), "/api/overview", &[&bearer]);
    assert_eq!(status, 200, "{body}");
    let (status, headers) = request(
        cp.dashboard,
        Some(&format!("127.0.0.1:{port}")),
        "/api/tap?workload=web",
        &[],
    );
    assert_eq!(status, 200, "{headers}");
    assert!(headers.contains("text/event-stream"), "{headers}");
}
