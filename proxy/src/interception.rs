//! Transparent interception: the iptables rules `vigil-init` writes into a pod's network
//! namespace so that its TCP goes through the proxy without the application knowing.
//!
//! All rules live in the `nat` table, in Vigil's own chains:
//!
//! ```text
//! PREROUTING -p tcp -j VIGIL_INBOUND        connections arriving at the pod
//!   VIGIL_INBOUND   RETURN for the proxy's own ports (inbound, admin, metrics) and
//!                   excluded ports / source CIDRs; everything else -j VIGIL_IN_REDIRECT
//!   VIGIL_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
//! OUTPUT -p tcp -j VIGIL_OUTBOUND            connections the pod opens
//!   VIGIL_OUTBOUND  RETURN for the proxy's own UID (and GID), loopback destinations,
//!                   excluded ports / CIDRs; everything else -j VIGIL_REDIRECT
//!   VIGIL_REDIRECT  -p tcp -j REDIRECT --to-ports 15001
//! ```
//!
//! Writing is idempotent: chains are created if missing and flushed, and the jumps from
//! PREROUTING/OUTPUT are added only when absent, so running twice leaves one set of rules.
//! The proxy finds where a redirected connection was going with `SO_ORIGINAL_DST`
//! ([`crate::transport::orig_dst`]). IPv4 only: IPv6 traffic is not intercepted.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// Vigil's chains in the nat table.
pub const INBOUND_CHAIN: &str = "VIGIL_INBOUND";
pub const INBOUND_REDIRECT_CHAIN: &str = "VIGIL_IN_REDIRECT";
pub const OUTBOUND_CHAIN: &str = "VIGIL_OUTBOUND";
pub const OUTBOUND_REDIRECT_CHAIN: &str = "VIGIL_REDIRECT";

/// What to intercept and what to leave alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterceptionConfig {
    /// The proxy's UID: its own connections (to peers, the control plane, the app) pass.
    pub proxy_uid: u32,
    /// The proxy's GID, matched too when set.
    pub proxy_gid: Option<u32>,
    /// Where inbound connections are sent (the proxy's mTLS listener).
    pub inbound_port: u16,
    /// Where outbound connections are sent.
    pub outbound_port: u16,
    /// Proxy ports that must stay reachable as they are (admin, Prometheus metrics).
    pub proxy_ports: Vec<u16>,
    /// Inbound destination ports that bypass the proxy (kubelet probe ports, say).
    pub exclude_inbound_ports: Vec<u16>,
    /// Inbound source ranges that bypass the proxy.
    pub exclude_inbound_cidrs: Vec<Cidr>,
    /// Outbound destination ports that bypass the proxy.
    pub exclude_outbound_ports: Vec<u16>,
    /// Outbound destination ranges that bypass the proxy (cloud metadata, say).
    pub exclude_outbound_cidrs: Vec<Cidr>,
}

impl Default for InterceptionConfig {
    fn default() -> Self {
        InterceptionConfig {
            proxy_uid: 1337,
            proxy_gid: None,
            inbound_port: 15006,
            outbound_port: 15001,
            proxy_ports: vec![15000, 15090],
            exclude_inbound_ports: vec![],
            exclude_inbound_cidrs: vec![],
            exclude_outbound_ports: vec![],
            exclude_outbound_cidrs: vec![],
        }
    }
}

/// An IPv4 network, `a.b.c.d/len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub address: Ipv4Addr,
    pub prefix: u8,
}

/// A CIDR that does not parse, with the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{input:?} is not an IPv4 CIDR like 10.0.0.0/8: {reason}")]
pub struct CidrError {
    input: String,
    reason: &'static str,
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Cidr, CidrError> {
        let err = |reason| CidrError {
            input: s.to_string(),
            reason,
        };
        let (address, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, p.parse::<u8>().map_err(|_| err("bad prefix length"))?),
            None => (s, 32),
        };
        if prefix > 32 {
            return Err(err("prefix length above 32"));
        }
        let address = address
            .parse::<Ipv4Addr>()
            .map_err(|_| err("bad IPv4 address (IPv6 is not intercepted)"))?;
        Ok(Cidr { address, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix)
    }
}

/// One iptables invocation (arguments after `iptables`), and how its failure is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// `-t nat -N CHAIN`: fails harmlessly when the chain exists.
    CreateChain(&'static str),
    /// `-t nat -F CHAIN`.
    Flush(&'static str),
    /// `-t nat -F CHAIN` during cleanup, where the chain may be gone already.
    Clear(&'static str),
    /// Add a rule to a built-in chain unless the same rule is there (`-C` first).
    EnsureJump {
        chain: &'static str,
        rule: Vec<String>,
    },
    /// `-t nat -A CHAIN rule...`.
    Append {
        chain: &'static str,
        rule: Vec<String>,
    },
    /// `-t nat -D CHAIN rule...` (cleanup; absent rules are fine).
    Delete {
        chain: &'static str,
        rule: Vec<String>,
    },
    /// `-t nat -X CHAIN` (cleanup; absent chains are fine).
    DeleteChain(&'static str),
}

impl Step {
    /// The iptables arguments of the step's main command.
    pub fn args(&self) -> Vec<String> {
        let nat = |op: &str, chain: &str, rule: &[String]| {
            let mut a = vec!["-t".to_string(), "nat".into(), op.into(), chain.into()];
            a.extend(rule.iter().cloned());
            a
        };
        match self {
            Step::CreateChain(c) => nat("-N", c, &[]),
            Step::Flush(c) | Step::Clear(c) => nat("-F", c, &[]),
            Step::EnsureJump { chain, rule } => nat("-A", chain, rule),
            Step::Append { chain, rule } => nat("-A", chain, rule),
            Step::Delete { chain, rule } => nat("-D", chain, rule),
            Step::DeleteChain(c) => nat("-X", c, &[]),
        }
    }

    /// The arguments that check whether an [`Step::EnsureJump`] rule already exists.
    pub fn check_args(&self) -> Option<Vec<String>> {
        match self {
            Step::EnsureJump { chain, rule } => {
                let mut a = vec![
                    "-t".to_string(),
                    "nat".into(),
                    "-C".into(),
                    chain.to_string(),
                ];
                a.extend(rule.iter().cloned());
                Some(a)
            }
            _ => None,
        }
    }

    /// Whether a failure of this step is expected and harmless.
    pub fn may_fail(&self) -> bool {
        matches!(
            self,
            Step::CreateChain(_) | Step::Clear(_) | Step::Delete { .. } | Step::DeleteChain(_)
        )
    }
}

impl fmt::Display for Step {
    /// The step as a shell line, for `--dry-run`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let line = |args: Vec<String>| format!("iptables {}", args.join(" "));
        match self {
            Step::EnsureJump { .. } => write!(
                f,
                "{} 2>/dev/null || {}",
                line(self.check_args().unwrap_or_default()),
                line(self.args())
            ),
            s if s.may_fail() => write!(f, "{} 2>/dev/null || true", line(self.args())),
            _ => write!(f, "{}", line(self.args())),
        }
    }
}

fn rule(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| s.to_string()).collect()
}

fn dport(port: u16) -> Vec<String> {
    rule(&["-p", "tcp", "--dport", &port.to_string(), "-j", "RETURN"])
}

/// The jumps from the built-in chains into Vigil's.
fn jumps() -> [(&'static str, Vec<String>); 2] {
    [
        ("PREROUTING", rule(&["-p", "tcp", "-j", INBOUND_CHAIN])),
        ("OUTPUT", rule(&["-p", "tcp", "-j", OUTBOUND_CHAIN])),
    ]
}

const CHAINS: [&str; 4] = [
    INBOUND_CHAIN,
    INBOUND_REDIRECT_CHAIN,
    OUTBOUND_CHAIN,
    OUTBOUND_REDIRECT_CHAIN,
];

/// The steps that install interception for `cfg`, in order.
pub fn install(cfg: &InterceptionConfig) -> Vec<Step> {
    let mut steps = Vec::new();
    for chain in CHAINS {
        steps.push(Step::CreateChain(chain));
        steps.push(Step::Flush(chain));
    }
    let append = |chain, rule| Step::Append { chain, rule };

    steps.push(append(
        INBOUND_REDIRECT_CHAIN,
        rule(&[
            "-p",
            "tcp",
            "-j",
            "REDIRECT",
            "--to-ports",
            &cfg.inbound_port.to_string(),
        ]),
    ));
    let mut inbound_passes: Vec<u16> = vec![cfg.inbound_port];
    for p in cfg.proxy_ports.iter().chain(&cfg.exclude_inbound_ports) {
        if !inbound_passes.contains(p) {
            inbound_passes.push(*p);
        }
    }
    for p in inbound_passes {
        steps.push(append(INBOUND_CHAIN, dport(p)));
    }
    for c in &cfg.exclude_inbound_cidrs {
        steps.push(append(
            INBOUND_CHAIN,
            rule(&["-p", "tcp", "-s", &c.to_string(), "-j", "RETURN"]),
        ));
    }
    steps.push(append(
        INBOUND_CHAIN,
        rule(&["-p", "tcp", "-j", INBOUND_REDIRECT_CHAIN]),
    ));

    steps.push(append(
        OUTBOUND_REDIRECT_CHAIN,
        rule(&[
            "-p",
            "tcp",
            "-j",
            "REDIRECT",
            "--to-ports",
            &cfg.outbound_port.to_string(),
        ]),
    ));
    // The proxy's own traffic first: without this, its connections would loop back to it.
    steps.push(append(
        OUTBOUND_CHAIN,
        rule(&[
            "-m",
            "owner",
            "--uid-owner",
            &cfg.proxy_uid.to_string(),
            "-j",
            "RETURN",
        ]),
    ));
    if let Some(gid) = cfg.proxy_gid {
        steps.push(append(
            OUTBOUND_CHAIN,
            rule(&[
                "-m",
                "owner",
                "--gid-owner",
                &gid.to_string(),
                "-j",
                "RETURN",
            ]),
        ));
    }
    steps.push(append(
        OUTBOUND_CHAIN,
        rule(&["-d", "127.0.0.0/8", "-j", "RETURN"]),
    ));
    for p in &cfg.exclude_outbound_ports {
        steps.push(append(OUTBOUND_CHAIN, dport(*p)));
    }
    for c in &cfg.exclude_outbound_cidrs {
        steps.push(append(
            OUTBOUND_CHAIN,
            rule(&["-d", &c.to_string(), "-j", "RETURN"]),
        ));
    }
    steps.push(append(
        OUTBOUND_CHAIN,
        rule(&["-p", "tcp", "-j", OUTBOUND_REDIRECT_CHAIN]),
    ));

    for (chain, rule) in jumps() {
        steps.push(Step::EnsureJump { chain, rule });
    }
    steps
}

/// The steps that remove everything [`install`] wrote.
pub fn uninstall() -> Vec<Step> {
    let mut steps: Vec<Step> = jumps()
        .into_iter()
        .map(|(chain, rule)| Step::Delete { chain, rule })
        .collect();
    for chain in CHAINS {
        steps.push(Step::Clear(chain));
    }
    for chain in CHAINS {
        steps.push(Step::DeleteChain(chain));
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(steps: &[Step]) -> Vec<String> {
        steps.iter().map(|s| s.args().join(" ")).collect()
    }

    #[test]
    fn default_rules_redirect_both_ways_and_spare_the_proxy() {
        let steps = install(&InterceptionConfig::default());
        let l = lines(&steps);
        let expected = [
            "-t nat -N VIGIL_INBOUND",
            "-t nat -F VIGIL_INBOUND",
            "-t nat -N VIGIL_IN_REDIRECT",
            "-t nat -F VIGIL_IN_REDIRECT",
            "-t nat -N VIGIL_OUTBOUND",
            "-t nat -F VIGIL_OUTBOUND",
            "-t nat -N VIGIL_REDIRECT",
            "-t nat -F VIGIL_REDIRECT",
            "-t nat -A VIGIL_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
            "-t nat -A VIGIL_INBOUND -p tcp --dport 15006 -j RETURN",
            "-t nat -A VIGIL_INBOUND -p tcp --dport 15000 -j RETURN",
            "-t nat -A VIGIL_INBOUND -p tcp --dport 15090 -j RETURN",
            "-t nat -A VIGIL_INBOUND -p tcp -j VIGIL_IN_REDIRECT",
            "-t nat -A VIGIL_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
            "-t nat -A VIGIL_OUTBOUND -m owner --uid-owner 1337 -j RETURN",
            "-t nat -A VIGIL_OUTBOUND -d 127.0.0.0/8 -j RETURN",
            "-t nat -A VIGIL_OUTBOUND -p tcp -j VIGIL_REDIRECT",
            "-t nat -A PREROUTING -p tcp -j VIGIL_INBOUND",
            "-t nat -A OUTPUT -p tcp -j VIGIL_OUTBOUND",
        ];
        assert_eq!(l, expected);
        // The owner exception comes before any redirect in OUTBOUND.
        let owner = l
            .iter()
            .position(|x| x.contains("--uid-owner"))
            .unwrap_or(usize::MAX);
        let redirect = l
            .iter()
            .position(|x| x.ends_with("-j VIGIL_REDIRECT"))
            .unwrap_or(0);
        assert!(owner < redirect);
    }

    #[test]
    fn exclusions_become_returns_before_the_redirect() {
        let cfg = InterceptionConfig {
            proxy_uid: 2000,
            proxy_gid: Some(2000),
            exclude_inbound_ports: vec![8081, 15090],
            exclude_inbound_cidrs: vec!["10.0.0.1/32".parse().expect("cidr")],
            exclude_outbound_ports: vec![5432],
            exclude_outbound_cidrs: vec!["169.254.169.254".parse().expect("cidr")],
            ..InterceptionConfig::default()
        };
        let l = lines(&install(&cfg));
        let inbound: Vec<&String> = l
            .iter()
            .filter(|x| x.contains("-A VIGIL_INBOUND"))
            .collect();
        assert_eq!(
            inbound,
            [
                "-t nat -A VIGIL_INBOUND -p tcp --dport 15006 -j RETURN",
                "-t nat -A VIGIL_INBOUND -p tcp --dport 15000 -j RETURN",
                "-t nat -A VIGIL_INBOUND -p tcp --dport 15090 -j RETURN",
                "-t nat -A VIGIL_INBOUND -p tcp --dport 8081 -j RETURN",
                "-t nat -A VIGIL_INBOUND -p tcp -s 10.0.0.1/32 -j RETURN",
                "-t nat -A VIGIL_INBOUND -p tcp -j VIGIL_IN_REDIRECT",
            ]
        );
        let outbound: Vec<&String> = l
            .iter()
            .filter(|x| x.contains("-A VIGIL_OUTBOUND"))
            .collect();
        assert_eq!(
            outbound,
            [
                "-t nat -A VIGIL_OUTBOUND -m owner --uid-owner 2000 -j RETURN",
                "-t nat -A VIGIL_OUTBOUND -m owner --gid-owner 2000 -j RETURN",
                "-t nat -A VIGIL_OUTBOUND -d 127.0.0.0/8 -j RETURN",
                "-t nat -A VIGIL_OUTBOUND -p tcp --dport 5432 -j RETURN",
                "-t nat -A VIGIL_OUTBOUND -d 169.254.169.254/32 -j RETURN",
                "-t nat -A VIGIL_OUTBOUND -p tcp -j VIGIL_REDIRECT",
            ]
        );
    }

    #[test]
    fn jumps_are_checked_before_they_are_added_and_dry_run_reads_as_shell() {
        let steps = install(&InterceptionConfig::default());
        let jump = steps
            .iter()
            .find(|s| {
                matches!(
                    s,
                    Step::EnsureJump {
                        chain: "OUTPUT",
                        ..
                    }
                )
            })
            .expect("jump");
        assert_eq!(
            jump.to_string(),
            "iptables -t nat -C OUTPUT -p tcp -j VIGIL_OUTBOUND 2>/dev/null || iptables -t nat -A OUTPUT -p tcp -j VIGIL_OUTBOUND"
        );
        assert_eq!(
            Step::CreateChain(INBOUND_CHAIN).to_string(),
            "iptables -t nat -N VIGIL_INBOUND 2>/dev/null || true"
        );
        assert_eq!(
            Step::Flush(INBOUND_CHAIN).to_string(),
            "iptables -t nat -F VIGIL_INBOUND"
        );
    }

    #[test]
    fn uninstall_removes_jumps_then_chains_and_tolerates_absence() {
        let steps = uninstall();
        assert!(steps.iter().all(Step::may_fail));
        let l = lines(&steps);
        assert_eq!(l[0], "-t nat -D PREROUTING -p tcp -j VIGIL_INBOUND");
        assert_eq!(
            l.last().map(String::as_str),
            Some("-t nat -X VIGIL_REDIRECT")
        );
    }

    #[test]
    fn cidrs_parse_strictly() {
        assert_eq!(
            "10.1.0.0/16".parse::<Cidr>().map(|c| c.to_string()),
            Ok("10.1.0.0/16".to_string())
        );
        assert_eq!("10.0.0.1".parse::<Cidr>().map(|c| c.prefix), Ok(32));
        for bad in ["10.0.0.0/33", "fd00::/8", "10.0.0/8", "x/8", "10.0.0.0/"] {
            let err = bad.parse::<Cidr>().expect_err(bad).to_string();
            assert!(err.contains("is not an IPv4 CIDR"), "{err}");
        }
    }
}
