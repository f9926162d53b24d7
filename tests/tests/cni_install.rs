//! `vigil-cni install`, as the DaemonSet runs it on a node: into directories made here
//! that stand for the node's CNI binary and configuration directories, with flannel's
//! configuration list (as kube-flannel.yml writes it) as the network already there.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::{Duration, Instant};

use vigil_e2e::binary;

const FLANNEL: &str = r#"{
  "name": "cbr0",
  "cniVersion": "0.3.1",
  "plugins": [
    { "type": "flannel", "delegate": { "hairpinMode": true, "isDefaultGateway": true } },
    { "type": "portmap", "capabilities": { "portMappings": true } }
  ]
}"#;

fn plugin_types(list: &std::path::Path) -> Vec<String> {
    let conf: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(list).expect("list")).expect("JSON");
    conf["plugins"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["type"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn the_installer_chains_the_plugin_on_the_node_and_takes_it_out_when_stopped() {
    let node = tempfile::tempdir().expect("tempdir");
    let (bin, conf, sa) = (
        node.path().join("opt/cni/bin"),
        node.path().join("etc/cni/net.d"),
        node.path().join("sa"),
    );
    for d in [&bin, &conf, &sa] {
        std::fs::create_dir_all(d).expect("dir");
    }
    let list = conf.join("10-flannel.conflist");
    std::fs::write(&list, FLANNEL).expect("flannel");
    std::fs::write(sa.join("token"), "eyJhbGciOiJSUzI1NiJ9.e30.c2ln").expect("token");
    std::fs::write(sa.join("ca.crt"), "-----BEGIN CERTIFICATE-----\n").expect("ca");
    let install = |once: bool| {
        let mut c = Command::new(binary("vigil-cni"));
        c.arg("install")
            .arg("--cni-bin-dir")
            .arg(&bin)
            .arg("--cni-conf-dir")
            .arg(&conf)
            .arg("--service-account-dir")
            .arg(&sa)
            .args([
                "--api-server",
                "https://10.96.0.1:443",
                "--interval",
                "100ms",
            ]);
        if once {
            c.arg("--once");
        }
        c
    };

    let out = install(true).output().expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let copied = bin.join("vigil-cni");
    assert!(
        copied.metadata().expect("copied").permissions().mode() & 0o111 != 0,
        "the plugin is executable"
    );
    assert_eq!(plugin_types(&list), ["flannel", "portmap", "vigil-cni"]);
    let chained: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&list).expect("list")).expect("JSON");
    let entry = &chained["plugins"][2]["kubernetes"];
    assert_eq!(entry["server"], "https://10.96.0.1:443");
    assert_eq!(
        entry["token_file"], "/etc/cni/net.d/vigil-cni/token",
        "the path as the node sees it"
    );
    let token = conf.join("vigil-cni/token");
    assert_eq!(
        token.metadata().expect("token").permissions().mode() & 0o777,
        0o600
    );

    // Again: still once in the chain.
    assert!(install(true).status().expect("runs").success());
    assert_eq!(plugin_types(&list), ["flannel", "portmap", "vigil-cni"]);

    // Running, it puts itself back when the list is rewritten, and leaves on SIGTERM.
    std::fs::write(&list, FLANNEL).expect("the network plugin rewrites its list");
    let mut running = install(false).spawn().expect("runs");
    let deadline = Instant::now() + Duration::from_secs(10);
    while plugin_types(&list).last().map(String::as_str) != Some("vigil-cni") {
        assert!(Instant::now() < deadline, "not chained again");
        std::thread::sleep(Duration::from_millis(50));
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(running.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    let status = running.wait().expect("exits");
    assert!(status.success(), "{status}");
    assert_eq!(plugin_types(&list), ["flannel", "portmap"]);
}
