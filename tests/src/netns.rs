//! "Pods" as Linux network namespaces, for tests of transparent interception with real
//! iptables rules, real processes and real packets.
//!
//! A [`Cluster`] is a switch namespace holding a bridge, plus one namespace per pod joined
//! to it by a veth pair, with an address in 10.200.0.0/24. Nothing touches the root
//! namespace's interfaces, routes or firewall, and traffic only ever flows between the
//! namespaces the test made. Dropping the cluster kills its processes and deletes its
//! namespaces (with them the veths and the bridge), also when the test fails; namespaces
//! left by a test process that died are removed by the next one.
//!
//! Needs root, iproute2, iptables, tcpdump and setpriv (util-linux): [`require_tools`]
//! fails the test with the command that installs what is missing.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::Process;

/// Prefix of every namespace these tests create: `vgle2e-<pid>-<n>-<name>`.
const PREFIX: &str = "vgle2e";
static NEXT: AtomicU32 = AtomicU32::new(0);

/// Fails (never skips) when the test cannot run here, saying how to fix it.
pub fn require_tools() {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(str::to_string))
        })
        .unwrap_or_default();
    assert_eq!(
        uid, "0",
        "network-namespace tests need root (CI runs as root); run them with sudo"
    );
    let mut missing = Vec::new();
    for (tool, package) in [
        ("ip", "iproute2"),
        ("iptables", "iptables"),
        ("tcpdump", "tcpdump"),
        ("setpriv", "util-linux"),
        ("nsenter", "util-linux"),
    ] {
        let found = Command::new(tool)
            .arg(if tool == "ip" { "-V" } else { "--version" })
            .output()
            .is_ok();
        if !found {
            missing.push(package);
        }
    }
    assert!(
        missing.is_empty(),
        "missing tools for the network-namespace tests: apt-get install {} (scripts/test.sh installs them)",
        missing.join(" ")
    );
}

/// One pod: a network namespace with `eth0` on the cluster bridge.
#[derive(Debug, Clone)]
pub struct Pod {
    pub name: String,
    pub netns: String,
    pub ip: Ipv4Addr,
    /// The pod's veth end in the switch namespace (capture there to see its wire).
    pub switch_port: String,
}

/// A bridge and the pods on it; torn down on drop.
pub struct Cluster {
    switch: String,
    pods: Vec<Pod>,
    processes: Vec<Process>,
    pub dir: tempfile::TempDir,
}

impl Cluster {
    /// Creates the switch namespace and its bridge.
    pub fn new() -> anyhow::Result<Cluster> {
        remove_stale_namespaces();
        let dir = tempfile::tempdir()?;
        // The proxies run as an unprivileged UID and read files from here.
        set_mode(dir.path(), 0o755)?;
        let switch = namespace_name("sw");
        ip(&["netns", "add", &switch])?;
        let cluster = Cluster {
            switch,
            pods: vec![],
            processes: vec![],
            dir,
        };
        cluster.ip_in(&cluster.switch, &["link", "set", "lo", "up"])?;
        cluster.ip_in(&cluster.switch, &["link", "add", "br0", "type", "bridge"])?;
        cluster.ip_in(&cluster.switch, &["link", "set", "br0", "up"])?;
        Ok(cluster)
    }

    /// Adds a pod with address `10.200.0.<host>/24`.
    pub fn add_pod(&mut self, name: &str, host: u8) -> anyhow::Result<Pod> {
        let netns = namespace_name(name);
        ip(&["netns", "add", &netns])?;
        let switch_port = format!("v{}", self.pods.len());
        let pod = Pod {
            name: name.to_string(),
            netns: netns.clone(),
            ip: Ipv4Addr::new(10, 200, 0, host),
            switch_port: switch_port.clone(),
        };
        // Registered before anything else can fail, so Drop removes it.
        self.pods.push(pod.clone());
        self.ip_in(
            &self.switch,
            &[
                "link",
                "add",
                &switch_port,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &netns,
            ],
        )?;
        self.ip_in(
            &self.switch,
            &["link", "set", &switch_port, "master", "br0", "up"],
        )?;
        self.ip_in(&netns, &["link", "set", "lo", "up"])?;
        self.ip_in(
            &netns,
            &["addr", "add", &format!("{}/24", pod.ip), "dev", "eth0"],
        )?;
        self.ip_in(&netns, &["link", "set", "eth0", "up"])?;
        Ok(pod)
    }

    /// The switch namespace (where [`Pod::switch_port`] lives).
    pub fn switch(&self) -> &str {
        &self.switch
    }

    /// Runs `f` on a thread that has entered `netns`: a socket it binds or connects stays
    /// in that namespace, wherever it is used afterwards (a server the test process runs
    /// for a pod, a client the test process uses from one).
    pub fn in_netns<T: Send + 'static>(
        &self,
        netns: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> anyhow::Result<T> {
        let path = format!("/var/run/netns/{netns}");
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
            nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET)
                .with_context(|| format!("entering {path}"))?;
            Ok(f())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the thread in {netns} panicked"))?
    }

    /// One call by the demo client inside `pod` to `target` (an `ip:port`), as an
    /// application makes it: plain HTTP to an address, knowing nothing of the mesh.
    /// Returns the client's report line (status, and the server's answer).
    pub fn demo_call(&self, pod: &Pod, target: &str, path: &str) -> String {
        match self.run(
            &pod.netns,
            &crate::binary("vigil-demo-app"),
            &[
                "client", "--via", target, "--host", target, "--path", path, "--count", "1",
            ],
        ) {
            Ok(out) => format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => format!("the demo client did not run: {e:#}"),
        }
    }

    /// Starts the demo app server in `pod`, answering as `name` on `0.0.0.0:port`.
    pub fn start_demo_server(&mut self, pod: &Pod, name: &str, port: u16) -> anyhow::Result<usize> {
        self.spawn(
            &pod.netns,
            &format!("app-{name}"),
            None,
            &crate::binary("vigil-demo-app"),
            &[
                "server".into(),
                "--listen".into(),
                format!("0.0.0.0:{port}"),
                "--name".into(),
                name.into(),
            ],
        )
    }

    /// Waits until the proxy in `pod` answers 200 on its admin port's `/ready`.
    pub fn wait_proxy_ready(&self, pod: &Pod, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let r = self.demo_call(pod, "127.0.0.1:15000", "/ready");
            if r.contains(": 200 OK") {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("proxy {} not ready: {r}\n{}", pod.name, self.logs());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Runs a command in `netns` and waits for it.
    pub fn run(&self, netns: &str, program: &Path, args: &[&str]) -> anyhow::Result<Output> {
        Command::new("ip")
            .args(["netns", "exec", netns])
            .arg(program)
            .args(args)
            .output()
            .with_context(|| format!("running {} in {netns}", program.display()))
    }

    /// Starts a long-running process in `netns`, as `uid` (and the same GID) when given.
    /// Its output goes to `<dir>/<name>.log`; it is killed when the cluster is dropped.
    pub fn spawn(
        &mut self,
        netns: &str,
        name: &str,
        uid: Option<u32>,
        program: &Path,
        args: &[String],
    ) -> anyhow::Result<usize> {
        let mut full = vec!["netns".to_string(), "exec".into(), netns.into()];
        if let Some(uid) = uid {
            full.extend([
                "setpriv".to_string(),
                "--reuid".into(),
                uid.to_string(),
                "--regid".into(),
                uid.to_string(),
                "--clear-groups".into(),
                "--".into(),
            ]);
        }
        full.push(program.display().to_string());
        full.extend(args.iter().cloned());
        let p = Process::spawn(name, self.dir.path(), Path::new("ip"), &full)?;
        self.processes.push(p);
        Ok(self.processes.len() - 1)
    }

    /// A process started with [`Cluster::spawn`].
    pub fn process(&mut self, index: usize) -> &mut Process {
        &mut self.processes[index]
    }

    /// Waits until the process's log contains `text`.
    pub fn wait_for_log(
        &mut self,
        index: usize,
        text: &str,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let p = &mut self.processes[index];
            if p.output().contains(text) {
                return Ok(());
            }
            if !p.running() || Instant::now() > deadline {
                bail!("{} never logged {text:?}:\n{}", p.name, p.output());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Everything the processes printed, for failure messages.
    pub fn logs(&self) -> String {
        self.processes
            .iter()
            .map(|p| format!("--- {} ---\n{}\n", p.name, p.output()))
            .collect()
    }

    /// A file in the cluster's directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn ip_in(&self, netns: &str, args: &[&str]) -> anyhow::Result<()> {
        let mut full = vec!["-n", netns];
        full.extend_from_slice(args);
        ip(&full)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Processes first: a namespace outlives `ip netns del` while anything runs in it.
        for p in &mut self.processes {
            p.kill();
        }
        for pod in &self.pods {
            let _ = ip(&["netns", "del", &pod.netns]);
        }
        let _ = ip(&["netns", "del", &self.switch]);
    }
}

fn namespace_name(name: &str) -> String {
    format!(
        "{PREFIX}-{}-{}-{name}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip (apt-get install iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Namespaces of test processes that no longer exist (killed before their Drop ran).
fn remove_stale_namespaces() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let Some(rest) = name.strip_prefix(&format!("{PREFIX}-")) else {
            continue;
        };
        let pid = rest.split('-').next().unwrap_or_default();
        if !pid.is_empty() && !Path::new("/proc").join(pid).exists() {
            let _ = ip(&["netns", "del", name]);
        }
    }
}

fn set_mode(path: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:o} {}", path.display()))
}

/// Whether `haystack` contains `needle` as bytes.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}
