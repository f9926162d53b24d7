//! A proxy that runs out of file descriptors (EMFILE) while clients keep connecting: its
//! accept loop backs off instead of spinning, connections it already has keep working,
//! and it accepts again once descriptors are free.

use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use vigil_e2e::*;

use crate::support::*;

/// Descriptors the proxy gets beyond those it has open when the test starts.
const HEADROOM: usize = 48;
/// Connections the attacker opens: several times the headroom, fewer than the listen
/// backlog, so the kernel queues the ones the proxy cannot accept.
const HELD: usize = 200;

/// The outbound listener's `accept failed` warnings in a proxy's log.
fn outbound_accept_failures(log: &str) -> usize {
    log.lines()
        .filter(|l| l.contains("accept failed") && l.contains("\"outbound\""))
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn running_out_of_file_descriptors_backs_off_and_recovers() {
    let _one_at_a_time = serial().await;
    // Half-sent requests hold their descriptors for the whole test.
    let mut pair = Pair::start(PairOptions::client(&["--header-read-timeout", "120s"])).await;
    let steady = Steady::start(pair.client.outbound, "server");
    // The steady client's connection is open before the descriptors run out.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let proxy = pair.proxy("client");
    let pid = proxy.pid().expect("the client proxy runs");
    let open = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("/proc is readable")
        .count();
    let limit = open + HEADROOM;
    let status = std::process::Command::new("prlimit")
        .arg(format!("--pid={pid}"))
        .arg(format!("--nofile={limit}:{limit}"))
        .status()
        .expect("prlimit (util-linux) is installed; scripts/test.sh installs it");
    assert!(
        status.success(),
        "prlimit could not lower the proxy's limit"
    );
    let failed_before = outbound_accept_failures(&proxy.output());

    let mut held = Vec::new();
    for _ in 0..HELD {
        let mut tcp = match tokio::time::timeout(
            Duration::from_secs(5),
            TcpStream::connect(pair.client.outbound),
        )
        .await
        {
            Ok(Ok(tcp)) => tcp,
            other => {
                let ss = std::process::Command::new("ss")
                    .args(["-ltn"])
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
                    .unwrap_or_default();
                panic!(
                    "connection {} to the outbound port: {other:?}\n{ss}\n{}",
                    held.len(),
                    pair.proxy("client").output()
                );
            }
        };
        tcp.write_all(b"GET /held HTTP/1.1\r\nHost: server\r\n")
            .await
            .expect("write");
        held.push(tcp);
    }
    // Exhausted for a while: the accept loop retries with growing pauses.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let failures = outbound_accept_failures(&pair.proxy("client").output()) - failed_before;
    eprintln!("out of descriptors for 4 s: {failures} accept failures logged");
    assert!(
        failures >= 1,
        "the proxy never ran out of descriptors (limit {limit}); the test proves nothing"
    );
    assert!(
        failures <= 30,
        "{failures} accept failures logged in 4 s: the accept loop is spinning, not backing off\n{}",
        pair.proxy("client").output()
    );
    assert!(pair.proxy("client").running());

    // Freed: the proxy accepts again and serves a new connection.
    drop(held);
    let mut served = None;
    for _ in 0..40 {
        match tokio::time::timeout(
            Duration::from_secs(5),
            http1(pair.client.outbound, "server", "/after", &[]),
        )
        .await
        {
            Ok(Ok(r)) if r.status == 200 => {
                served = Some(r.status);
                break;
            }
            _ => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
    assert_eq!(
        served,
        Some(200),
        "the proxy did not serve again once descriptors were free\n{}",
        pair.mesh.logs()
    );
    // The connection it already had kept working throughout.
    steady.finish(|| pair.mesh.logs()).await;
}
