//! Pods in network namespaces, with `vigil-init`'s iptables rules and a proxy running as
//! UID 1337 in each: applications call each other by IP and port, knowing nothing of the
//! mesh, and the mesh carries the calls over mutual TLS and enforces policy. Needs root.

use std::path::Path;
use std::time::Duration;

use vigil_e2e::fake_kube::FakeKube;
use vigil_e2e::netns::{contains, require_tools, Cluster, Pod};
use vigil_e2e::{binary, TRUST_DOMAIN};

const APP_PORT: u16 = 8080;
const PROXY_UID: u32 = 1337;
/// A server outside the mesh, in the control plane's pod: HTTP and a TCP echo.
const OUTSIDE_PORT: u16 = 9090;
const OUTSIDE_TCP_PORT: u16 = 9091;

/// Only workload `a` may call `b`, and not on `/admin`.
const POLICY: &str = r#"package vigil.authz

import rego.v1

default allow := false

allow if {
	input.attributes.source.principal == "spiffe://vigil.local/ns/demo/sa/a"
	not input.parsed_path[0] == "admin"
}
"#;

fn mesh_yaml(cp: &Pod, pods: &[&Pod], server: &Pod) -> String {
    let mut y = format!(
        "trust_domain: {TRUST_DOMAIN}\ncontrol_plane:\n  identity: \"{ip}:15012\"\n  discovery: \"{ip}:15010\"\n  dashboard: \"{ip}:15080\"\n  webhook: \"{ip}:15017\"\npolicy:\n  dir: policy\nworkloads:\n",
        ip = cp.ip
    );
    for p in pods {
        y += &format!(
            "  - name: {n}\n    namespace: demo\n    join_token: \"{n}-7d3f9a2c81e54b6f90a1c3e5d7b92f48\"\n    app_port: {APP_PORT}\n    proxy:\n      inbound: \"{ip}:15006\"\n",
            n = p.name,
            ip = p.ip
        );
    }
    y += &format!(
        "services:\n  - name: {n}\n    namespace: demo\n    port: {APP_PORT}\n    endpoints: [{n}]\n    virtual_addresses: [\"{ip}:{APP_PORT}\"]\n",
        n = server.name,
        ip = server.ip
    );
    y
}

fn call(cluster: &Cluster, pod: &Pod, target: &str, path: &str) -> String {
    cluster.demo_call(pod, target, path)
}

/// Sends a line over raw TCP from inside `pod` (bash's /dev/tcp, as an application
/// would) and returns the line echoed back, empty when none came.
fn tcp_echo(cluster: &Cluster, pod: &Pod, ip: &str, port: u16) -> String {
    let script = format!(
        "exec 3<>/dev/tcp/{ip}/{port} || exit 0; echo ping-outside >&3; read -t 5 line <&3; echo \"$line\""
    );
    let out = cluster
        .run(&pod.netns, Path::new("bash"), &["-c", &script])
        .expect("bash runs");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Writes `request` (a printf format) over raw TCP from inside `pod`, as an application
/// with a hand-made client would, and returns whatever came back within 5 s.
fn raw_http(cluster: &Cluster, pod: &Pod, ip: &str, port: u16, request: &str) -> String {
    let script = format!(
        "exec 3<>/dev/tcp/{ip}/{port} || exit 0; printf '{request}' >&3; timeout 5 cat <&3"
    );
    let out = cluster
        .run(&pod.netns, Path::new("bash"), &["-c", &script])
        .expect("bash runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn iptables_rules(cluster: &Cluster, pod: &Pod) -> String {
    let out = cluster
        .run(&pod.netns, Path::new("iptables"), &["-t", "nat", "-S"])
        .expect("iptables -S");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn pods_talk_through_transparent_interception_over_mtls_and_policy_holds() {
    require_tools();
    let mut cluster = Cluster::new().expect("switch namespace");
    let cp = cluster.add_pod("cp", 2).expect("control plane pod");
    let a = cluster.add_pod("a", 11).expect("pod a");
    let b = cluster.add_pod("b", 12).expect("pod b");
    let c = cluster.add_pod("c", 13).expect("pod c");

    std::fs::create_dir_all(cluster.path("policy")).expect("policy dir");
    std::fs::write(cluster.path("policy/policy.rego"), POLICY).expect("policy");
    std::fs::write(cluster.path("mesh.yaml"), mesh_yaml(&cp, &[&a, &b, &c], &b)).expect("mesh");
    let data = cluster.path("data");
    let control_plane = cluster
        .spawn(
            &cp.netns,
            "control-plane",
            None,
            &binary("vigil"),
            &[
                "control-plane".into(),
                "--mesh".into(),
                cluster.path("mesh.yaml").display().to_string(),
                "--data-dir".into(),
                data.display().to_string(),
            ],
        )
        .expect("control plane");
    cluster
        .wait_for_log(
            control_plane,
            "control plane serving",
            Duration::from_secs(30),
        )
        .expect("control plane serving");

    // Pod c is intercepted by the CNI plugin, called as a container runtime calls it,
    // for the pod `vigil inject --interception cni` made; a and b by vigil-init.
    // The recorded pods, served as the Kubernetes API serves them.
    let api = FakeKube::start();
    api.put(cni_injected_pod("c"));
    api.put(recorded_pod("cp"));
    let added = cni(&cluster, "ADD", &c, &api, "c");
    assert_eq!(
        added["ips"][0]["address"], "10.200.0.13/24",
        "the previous result is passed on: {added}"
    );
    cni(&cluster, "CHECK", &c, &api, "c");
    // A pod not marked for the plugin is left alone.
    cni(&cluster, "ADD", &cp, &api, "cp");
    assert!(
        !iptables_rules(&cluster, &cp).contains("VIGIL"),
        "the plugin touched a pod that is not meshed"
    );
    let unknown = cni_run(&cluster, "ADD", &cp, &api, "nobody");
    assert!(
        !unknown.status.success(),
        "a pod the API does not know fails closed"
    );
    let error: serde_json::Value = serde_json::from_slice(&unknown.stdout).expect("a CNI error");
    assert_eq!(error["code"], 100, "{error}");

    // Interception in every meshed pod: c's by the plugin (above), a's and b's by
    // vigil-init; a second run of either must leave the same rules.
    let intercept = |pod: &Pod| {
        if pod.name == "c" {
            cni(&cluster, "ADD", pod, &api, "c");
            return;
        }
        let init = cluster
            .run(&pod.netns, &binary("vigil-init"), &["--proxy-uid", "1337"])
            .expect("vigil-init");
        assert!(
            init.status.success(),
            "{}",
            String::from_utf8_lossy(&init.stderr)
        );
    };
    for pod in [&a, &b, &c] {
        if pod.name != "c" {
            intercept(pod);
        }
        let rules = iptables_rules(&cluster, pod);
        for expected in [
            "-A OUTPUT -p tcp -j VIGIL_OUTBOUND",
            "-A PREROUTING -p tcp -j VIGIL_INBOUND",
            "-A VIGIL_OUTBOUND -m owner --uid-owner 1337 -j RETURN",
            "-A VIGIL_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
            "-A VIGIL_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
        ] {
            assert!(
                rules.contains(expected),
                "{}: {expected} missing:\n{rules}",
                pod.name
            );
        }
        intercept(pod);
        assert_eq!(
            iptables_rules(&cluster, pod),
            rules,
            "{}: interception is idempotent",
            pod.name
        );
    }

    cluster.start_demo_server(&b, "b", APP_PORT).expect("app b");
    // A server outside the mesh (the control plane's pod has no sidecar and no rules).
    cluster
        .spawn(
            &cp.netns,
            "app-outside",
            None,
            &binary("vigil-demo-app"),
            &[
                "server".into(),
                "--listen".into(),
                format!("0.0.0.0:{OUTSIDE_PORT}"),
                "--name".into(),
                "outside".into(),
                "--tcp-echo".into(),
                format!("0.0.0.0:{OUTSIDE_TCP_PORT}"),
            ],
        )
        .expect("app outside the mesh");
    let bundle = data.join("trust-bundle.pem");
    for pod in [&a, &b, &c] {
        let mut args: Vec<String> = [
            "--trust-domain",
            TRUST_DOMAIN,
            "--token",
            &format!("{}-7d3f9a2c81e54b6f90a1c3e5d7b92f48", pod.name),
            "--trust-bundle",
            &bundle.display().to_string(),
            "--identity-addr",
            &format!("{}:15012", cp.ip),
            "--discovery-addr",
            &format!("{}:15010", cp.ip),
            "--inbound",
            &format!("{}:15006", pod.ip),
            "--outbound",
            "127.0.0.1:15001",
            "--admin",
            "127.0.0.1:15000",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        // c may reach addresses outside the mesh; a and b keep the closed default.
        if pod.name == "c" {
            args.extend(["--egress".to_string(), "allow".to_string()]);
        }
        cluster
            .spawn(
                &pod.netns,
                &format!("proxy-{}", pod.name),
                Some(PROXY_UID),
                &binary("vigil-proxy"),
                &args,
            )
            .expect("proxy");
    }
    for pod in [&a, &b, &c] {
        cluster
            .wait_proxy_ready(pod, Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("{e:#}"));
    }

    // Capture b's wire (its veth, seen from the switch) and b's loopback, where its proxy
    // hands requests to the app in plaintext.
    let wire = cluster.path("wire.pcap");
    let lo = cluster.path("lo.pcap");
    let switch = cluster.switch().to_string();
    let captures = [
        (
            switch.as_str(),
            b.switch_port.as_str(),
            &wire,
            "tcpdump-wire",
        ),
        (b.netns.as_str(), "lo", &lo, "tcpdump-lo"),
    ]
    .map(|(netns, interface, file, name)| {
        let args: Vec<String> = [
            "-i",
            interface,
            "-n",
            "-U",
            "--immediate-mode",
            "-Z",
            "root",
            "-s",
            "0",
            "-w",
            &file.display().to_string(),
            "tcp",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let index = cluster
            .spawn(netns, name, None, Path::new("/usr/bin/tcpdump"), &args)
            .expect("tcpdump");
        cluster
            .wait_for_log(index, "listening on", Duration::from_secs(10))
            .expect("tcpdump listening");
        index
    });

    let marker = format!("/plaintext-marker-{}", std::process::id());
    let target = format!("{}:{APP_PORT}", b.ip);
    let allowed = call(&cluster, &a, &target, &marker);
    assert!(
        allowed.contains(": 200 OK"),
        "a → b: {allowed}\n{}",
        cluster.logs()
    );
    assert!(
        allowed.contains("\"caller\":\"spiffe://vigil.local/ns/demo/sa/a\""),
        "b's app sees a's verified identity: {allowed}"
    );
    let denied = call(&cluster, &c, &target, &marker);
    assert!(
        denied.contains(": 403 Forbidden [policy-denied]"),
        "c → b: {denied}\n{}",
        cluster.logs()
    );
    // The same bytes after one CRLF, or with a forged identity header, are still one
    // request the proxies parse and check: never a tunnel around policy.
    for (what, prefix) in [("plain", ""), ("after a CRLF", "\\r\\n")] {
        let answer = raw_http(
            &cluster,
            &a,
            &b.ip.to_string(),
            APP_PORT,
            &format!("{prefix}GET /admin HTTP/1.1\\r\\nHost: b\\r\\nX-Vigil-Peer-Identity: spiffe://vigil.local/ns/demo/sa/admin\\r\\nConnection: close\\r\\n\\r\\n"),
        );
        assert!(
            answer.starts_with("HTTP/1.1 403") && answer.contains("policy-denied"),
            "a → b /admin {what}: {answer}\n{}",
            cluster.logs()
        );
    }
    let forged = raw_http(
        &cluster,
        &a,
        &b.ip.to_string(),
        APP_PORT,
        "\\r\\nGET /whoami HTTP/1.1\\r\\nHost: b\\r\\nX-Vigil-Peer-Identity: spiffe://vigil.local/ns/demo/sa/admin\\r\\nConnection: close\\r\\n\\r\\n",
    );
    assert!(
        forged.starts_with("HTTP/1.1 200")
            && forged.contains("\"caller\":\"spiffe://vigil.local/ns/demo/sa/a\"")
            && !forged.contains("sa/admin"),
        "b's app sees a's verified identity, not the forged one: {forged}"
    );
    // Outside the mesh (no sidecar, no rules): plaintext to the app port is redirected to
    // the proxy's mTLS listener and never reaches the app.
    let outsider = call(&cluster, &cp, &target, "/outsider");
    assert!(
        !outsider.contains("200 OK") && outsider.contains("failed"),
        "outsider → b: {outsider}"
    );

    // Leaving the mesh: refused by default, with the reason; allowed where the proxy says so.
    let outside = format!("{}:{OUTSIDE_PORT}", cp.ip);
    let refused = call(&cluster, &a, &outside, "/egress");
    assert!(
        refused.contains(": 403 Forbidden [egress-denied]"),
        "a → outside the mesh: {refused}\n{}",
        cluster.logs()
    );
    let allowed = call(&cluster, &c, &outside, "/egress");
    assert!(
        allowed.contains(": 200 OK") && allowed.contains("\"service\":\"outside\""),
        "c → outside the mesh with --egress allow: {allowed}\n{}",
        cluster.logs()
    );
    assert!(
        !allowed.contains("spiffe://"),
        "no mesh identity is claimed outside the mesh: {allowed}"
    );
    let echo = |pod: &Pod| tcp_echo(&cluster, pod, &cp.ip.to_string(), OUTSIDE_TCP_PORT);
    assert_eq!(
        echo(&c),
        "ping-outside",
        "c's TCP leaves the mesh\n{}",
        cluster.logs()
    );
    assert_eq!(echo(&a), "", "a's TCP to outside the mesh is refused");

    std::thread::sleep(Duration::from_millis(500));
    for index in captures {
        cluster.process(index).kill();
    }
    let wire = std::fs::read(&wire).expect("wire capture");
    let lo = std::fs::read(&lo).expect("loopback capture");
    assert!(
        wire.len() > 1000,
        "the wire capture saw the calls ({} bytes)\n{}",
        wire.len(),
        cluster.logs()
    );
    assert!(
        !contains(&wire, marker.as_bytes()),
        "the request path crossed the wire in plaintext"
    );
    assert!(
        !contains(&wire, b"\"caller\""),
        "the response crossed the wire in plaintext"
    );
    assert!(
        contains(&lo, marker.as_bytes()),
        "control: the plaintext marker is visible where it is plaintext (b's loopback)"
    );
    // TLS 1.3 on the wire: a handshake record carrying a ServerHello whose
    // supported_versions extension selects 0x0304, and application-data records.
    assert!(
        contains(&wire, &[0x16, 0x03, 0x03]),
        "no TLS handshake record"
    );
    assert!(
        contains(&wire, &[0x00, 0x2b, 0x00, 0x02, 0x03, 0x04]),
        "no TLS 1.3 ServerHello"
    );
    assert!(
        contains(&wire, &[0x17, 0x03, 0x03]),
        "no TLS application data"
    );
}

/// A recorded pod (`kubectl run`, from an AdmissionReview) renamed `name` in `demo`.
fn recorded_pod(name: &str) -> serde_json::Value {
    let path = vigil_e2e::workspace_root()
        .join("tests/fixtures/kubernetes/admission/admissionreview-v1-pod-create-kubectl-run-nodeselector.json");
    let review: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("recorded review"))
            .expect("JSON");
    let mut pod = review["request"]["object"].clone();
    pod["metadata"]["name"] = name.into();
    pod["metadata"]["namespace"] = "demo".into();
    pod
}

/// The recorded pod as `vigil inject --interception cni` writes it.
fn cni_injected_pod(name: &str) -> serde_json::Value {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("pod.json");
    std::fs::write(&input, recorded_pod(name).to_string()).expect("write");
    let out = std::process::Command::new(binary("vigil"))
        .args(["inject", "-f"])
        .arg(&input)
        .args(["--interception", "cni"])
        .output()
        .expect("vigil inject runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pod: serde_json::Value = serde_yaml::from_slice(&out.stdout).expect("YAML");
    assert_eq!(
        pod["metadata"]["annotations"]["vigil.io/interception"],
        "cni"
    );
    pod
}

/// Runs `vigil-cni` as a container runtime does for `pod` (named `name` in the API):
/// the command and pod in `CNI_*` variables, the network configuration with the previous
/// plugin's result on standard input.
fn cni_run(
    cluster: &Cluster,
    command: &str,
    pod: &Pod,
    api: &FakeKube,
    name: &str,
) -> std::process::Output {
    use std::io::Write;
    let _ = cluster;
    let conf = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "k8s-pod-network",
        "type": "vigil-cni",
        "kubernetes": {"server": format!("http://{}", api.address)},
        "prevResult": {
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "eth0", "sandbox": format!("/var/run/netns/{}", pod.netns)}],
            "ips": [{"address": format!("{}/24", pod.ip), "interface": 0}],
        },
    });
    let mut child = std::process::Command::new(binary("vigil-cni"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", format!("test-{}", pod.name))
        .env("CNI_NETNS", format!("/var/run/netns/{}", pod.netns))
        .env("CNI_IFNAME", "eth0")
        .env(
            "CNI_ARGS",
            format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=demo;K8S_POD_NAME={name};K8S_POD_INFRA_CONTAINER_ID=test"),
        )
        .env("CNI_PATH", "/opt/cni/bin")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("vigil-cni runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(conf.to_string().as_bytes())
        .expect("network configuration");
    child.wait_with_output().expect("vigil-cni finishes")
}

/// [`cni_run`], which must succeed; its result.
fn cni(
    cluster: &Cluster,
    command: &str,
    pod: &Pod,
    api: &FakeKube,
    name: &str,
) -> serde_json::Value {
    let out = cni_run(cluster, command, pod, api, name);
    assert!(
        out.status.success(),
        "vigil-cni {command} for {name}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
}
