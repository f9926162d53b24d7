//! `vigil bench control-plane`, small: the simulator drives a real control plane with
//! real signing calls and mutual-TLS discovery streams, and what it reports holds
//! together: every proxy that holds a moved service gets the change, a scoped proxy gets
//! nothing for services it does not hold, and every stream comes back after a restart.

use std::process::Command;

fn bench(dir: &std::path::Path, name: &str, extra: &[&str]) -> serde_json::Value {
    let json = dir.join(format!("{name}.json"));
    let out = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args([
            "bench",
            "control-plane",
            "--proxies",
            "24",
            "--services",
            "12",
            "--changes",
            "3",
            "--json",
            json.to_str().expect("utf-8"),
        ])
        .args(extra)
        .current_dir(dir)
        .output()
        .expect("vigil runs");
    let printed =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{printed}");
    assert!(
        printed.contains("| proxies (services) |"),
        "prints its table:\n{printed}"
    );
    serde_json::from_str(&std::fs::read_to_string(&json).expect("json written")).expect("json")
}

#[test]
fn the_simulator_measures_whole_and_scoped_discovery() {
    let dir = tempfile::tempdir().expect("tempdir");
    let all = bench(dir.path(), "all", &[]);
    let scoped = bench(dir.path(), "scoped", &["--calls", "2", "--no-restart"]);

    assert!(all["svids_per_second"].as_f64().unwrap_or(0.0) > 0.0);
    for change in all["changes"].as_array().expect("changes") {
        assert_eq!(change["receivers"], 24, "every proxy holds every service");
    }
    assert_eq!(all["restart"]["reconnected"], 24, "{all}");

    // Workload i calls services i and i+1 (of 12): the first change moves s0, held by
    // w0, w11, w12 and w23; later changes also put back the service moved before.
    let changes = scoped["changes"].as_array().expect("changes");
    assert_eq!(changes[0]["receivers"], 4, "{scoped}");
    assert_eq!(changes[1]["receivers"], 6, "{scoped}");
    for change in changes {
        assert_eq!(
            change["sent_needlessly"], 0,
            "nothing for proxies without the service: {scoped}"
        );
    }
    let (whole, cut) = (
        all["snapshot_bytes"].as_u64().unwrap_or(0),
        scoped["snapshot_bytes"].as_u64().unwrap_or(u64::MAX),
    );
    assert!(
        cut < whole,
        "a scoped snapshot ({cut} B) is smaller than the whole mesh ({whole} B)"
    );
}
