//! The demo server answers plain HTTP and says when a call did not come through the mesh.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn the_server_reports_its_caller() {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_vigil-demo-app"))
        .args([
            "server",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--name",
            "orders",
        ])
        .stdout(Stdio::null())
        .spawn()
        .expect("server starts");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut tcp = loop {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(t) => break t,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("server never listened: {e}"),
        }
    };
    tcp.write_all(b"GET /x HTTP/1.1\r\nhost: orders\r\nx-vigil-peer-identity: spiffe://vigil.local/ns/a/sa/b\r\nconnection: close\r\n\r\n")
        .expect("write");
    let mut out = String::new();
    tcp.read_to_string(&mut out).expect("read");
    let _ = child.kill();
    let _ = child.wait();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains("\"service\":\"orders\""), "{out}");
    assert!(out.contains("spiffe://vigil.local/ns/a/sa/b"), "{out}");
}
