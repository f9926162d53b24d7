//! `vigil`: the control plane server and the operator's CLI.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "vigil",
    version,
    about = "Vigil zero-trust service mesh: control plane and CLI"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum BenchCommand {
    /// `vigil control-plane` with --proxies simulated proxies (real Sign calls and real
    /// mutual-TLS Watch streams) and --services services.
    ControlPlane(vigil::control_plane_bench::BenchOptions),
}

#[derive(Subcommand)]
enum Command {
    /// Run the control plane (CA, identity, discovery, injection webhook) from a local mesh
    /// file, or from the Kubernetes API with --kubernetes.
    ControlPlane {
        /// Mesh YAML: trust domain, workloads, services, policy.
        #[arg(
            long,
            env = "VIGIL_MESH",
            required_unless_present = "kubernetes",
            conflicts_with = "kubernetes"
        )]
        mesh: Option<PathBuf>,
        /// Cluster mode: watch Pods, Services, EndpointSlices and ServiceAccounts, keep the CA
        /// in a Secret and check proxies' ServiceAccount tokens with TokenReviews.
        #[arg(long, env = "VIGIL_KUBERNETES")]
        kubernetes: bool,
        #[command(flatten)]
        cluster: Box<ClusterArgs>,
        /// Where the CA and the trust bundle are kept.
        #[arg(long, env = "VIGIL_DATA_DIR", default_value = "/var/lib/vigil")]
        data_dir: PathBuf,
        /// Operator-supplied signing CA certificate (PEM), instead of a generated root.
        #[arg(long, env = "VIGIL_CA_CERT", requires = "ca_key")]
        ca_cert: Option<PathBuf>,
        /// Key of --ca-cert (PEM).
        #[arg(long, env = "VIGIL_CA_KEY", requires = "ca_cert")]
        ca_key: Option<PathBuf>,
        /// Chain from --ca-cert up to and including the root (PEM).
        #[arg(long, env = "VIGIL_CA_CHAIN")]
        ca_chain: Option<PathBuf>,
        /// How often the mesh file and policy directory are checked for changes.
        #[arg(long, env = "VIGIL_RELOAD_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
        reload_interval: Duration,
        /// The dashboard reads request metrics from this Prometheus (http://HOST:PORT)
        /// instead of the proxies' metrics ports.
        #[arg(long, env = "VIGIL_PROMETHEUS")]
        prometheus: Option<String>,
        #[command(flatten)]
        dashboard: vigil::dashboard::DashboardAccess,
        /// Which replica of the mesh file's control plane this process is: 0 listens on
        /// the `control_plane:` addresses, N on the Nth entry of `control_plane.replicas`.
        /// Replicas share the mesh file and the data directory (start the first before the
        /// others on a new data directory: it creates the CA they share).
        #[arg(
            long,
            env = "VIGIL_REPLICA",
            default_value_t = 0,
            conflicts_with = "kubernetes"
        )]
        replica: usize,
    },
    /// Success rate, request rate and latency per workload and service, from the
    /// proxies' own metrics.
    Stat {
        /// Mesh file naming the proxies (default: the running vigil up / vigil demo's).
        #[arg(long, env = "VIGIL_MESH")]
        mesh: Option<PathBuf>,
        /// Only this workload's proxy.
        #[arg(long)]
        workload: Option<String>,
        /// Window over which rates are measured.
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        window: Duration,
        /// Output: table or json.
        #[arg(short, long, default_value = "table")]
        output: String,
    },
    /// Watch live requests through the proxies (method, path, status, latency, policy).
    Tap {
        /// Mesh file naming the proxies (default: the running vigil up / vigil demo's).
        #[arg(long, env = "VIGIL_MESH")]
        mesh: Option<PathBuf>,
        /// Only this workload's proxy.
        #[arg(long)]
        workload: Option<String>,
        /// Filters, e.g. service=orders, status=5xx, policy=deny, path=/api (repeatable).
        #[arg(long = "filter", value_name = "KEY=VALUE")]
        filters: Vec<String>,
        /// Stop after this many requests (0: until Ctrl-C).
        #[arg(long, default_value_t = 0)]
        count: usize,
        /// Output: text or json.
        #[arg(short, long, default_value = "text")]
        output: String,
    },
    /// Write, test and debug Rego policies.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Run a whole local mesh from a mesh file: control plane, a proxy per workload and
    /// each workload's command.
    Up {
        /// Mesh YAML whose workloads carry a `command`.
        #[arg(long, env = "VIGIL_MESH")]
        mesh: PathBuf,
        /// Where the CA and logs are kept (a fresh temporary directory by default).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Stop after this long (for scripts); runs until Ctrl-C otherwise.
        #[arg(long, value_parser = humantime::parse_duration)]
        duration: Option<Duration>,
        #[command(flatten)]
        dashboard: vigil::dashboard::DashboardAccess,
    },
    /// Run the demo mesh on this machine: a small shop behind sidecars, a traffic
    /// generator, a policy that denies some calls, a flaky service and the dashboard.
    Demo {
        /// Stop after this long; runs until Ctrl-C otherwise.
        #[arg(long, value_parser = humantime::parse_duration)]
        duration: Option<Duration>,
        /// Where the demo's mesh file, policy, CA, logs and pid files go
        /// (default: <temp dir>/vigil-demo).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        #[command(flatten)]
        dashboard: vigil::dashboard::DashboardAccess,
    },
    /// Measure a real control plane under a simulated fleet of proxies: issuance, snapshot
    /// size, memory, CPU, endpoint-change latency and recovery from a restart.
    Bench {
        #[command(subcommand)]
        what: BenchCommand,
    },
    /// Verify a running mesh: control plane reachable, proxies ready, certificates valid,
    /// each proxy on the current version of its policy, clocks in sync. Exits non-zero on
    /// any failure.
    Check {
        /// Mesh file of the running mesh (default: the running vigil up / vigil demo's).
        #[arg(long, env = "VIGIL_MESH")]
        mesh: Option<PathBuf>,
        /// The control plane's data directory, for its trust bundle and the CA rotation
        /// phase (default: the running vigil up / vigil demo's).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// PEM roots that vouch for the control plane (default: trust-bundle.pem beside
        /// the mesh file, else the one a proxy serves).
        #[arg(long)]
        trust_bundle: Option<PathBuf>,
        /// Output: text or json.
        #[arg(short, long, default_value = "text")]
        output: String,
        /// Check the mesh installed in the Kubernetes cluster of the current kubeconfig
        /// context (or the pod's ServiceAccount) instead of a local mesh.
        #[arg(long, conflicts_with_all = ["mesh", "data_dir", "trust_bundle"])]
        kubernetes: bool,
        /// With --kubernetes: the namespace the control plane is installed in.
        #[arg(long, default_value = vigil::own_identity::DEFAULT_NAMESPACE)]
        namespace: String,
        /// With --kubernetes: the mesh's SPIFFE trust domain.
        #[arg(long, default_value = "cluster.local")]
        trust_domain: String,
    },
    /// The mesh's certificate authority: rotate its trust anchor while the mesh runs.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Add the sidecar to the Pods, Deployments, StatefulSets, DaemonSets, ReplicaSets, Jobs
    /// and CronJobs of a multi-document YAML file, as the injection webhook would.
    Inject {
        /// Input YAML ("-" for standard input).
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
        /// Output YAML (standard output by default).
        #[arg(short = 'o', long = "output")]
        output: Option<PathBuf>,
        /// PEM roots for the proxies (the CA Secret's ca.crt); without it the webhook
        /// fills it in when the pod is created in an injection-enabled namespace.
        #[arg(long)]
        trust_bundle: Option<PathBuf>,
        /// SPIFFE trust domain of the mesh.
        #[arg(long, env = "VIGIL_TRUST_DOMAIN", default_value = "cluster.local")]
        trust_domain: String,
        /// Namespace the control plane is installed in (proxies expect its identity there).
        #[arg(long, env = "VIGIL_CONTROL_PLANE_NAMESPACE", default_value = vigil::own_identity::DEFAULT_NAMESPACE)]
        control_plane_namespace: String,
        #[command(flatten)]
        sidecar: SidecarArgs,
    },
}

#[derive(Subcommand)]
enum CaCommand {
    /// Rotate the CA of a running local mesh with no restart and no failed request: stage a
    /// new root beside the current one, let it sign once every proxy trusts it, retire the
    /// old root once every proxy holds a certificate from the new one. Waits for the
    /// proxies at each step and says who it waits for.
    Rotate {
        /// Mesh file of the running mesh (default: the running vigil up / vigil demo's).
        #[arg(long, env = "VIGIL_MESH")]
        mesh: Option<PathBuf>,
        /// The control plane's data directory (default: the running vigil up / vigil
        /// demo's); its CA lives in <data-dir>/ca.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Which step to take; `all` takes the ones left, in order.
        #[arg(long, value_enum, default_value = "all")]
        step: vigil::ca_rotation::Step,
        /// Stage this CA certificate (PEM, an intermediate followed by its chain up to the
        /// root) instead of generating a new root.
        #[arg(long, requires = "key")]
        cert: Option<PathBuf>,
        /// Key of --cert (PEM).
        #[arg(long, requires = "cert")]
        key: Option<PathBuf>,
        /// How long to wait for the proxies at each step.
        #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
}

/// Cluster-mode settings (used with --kubernetes).
#[derive(clap::Args)]
struct ClusterArgs {
    /// SPIFFE trust domain of the mesh.
    #[arg(long, env = "VIGIL_TRUST_DOMAIN", default_value = "cluster.local")]
    trust_domain: String,
    /// The control plane's namespace: its CA Secret and policy objects live there, and its
    /// SPIFFE ID and webhook certificate name it (also in local mode).
    #[arg(long, env = "POD_NAMESPACE", default_value = vigil::own_identity::DEFAULT_NAMESPACE)]
    namespace: String,
    /// Secret holding the CA (created on first start).
    #[arg(long, env = "VIGIL_CA_SECRET", default_value = "vigil-ca")]
    ca_secret: String,
    /// VigilPolicy in force.
    #[arg(long, env = "VIGIL_POLICY", default_value = "default")]
    policy: String,
    /// ConfigMap with the policy when there is no such VigilPolicy.
    #[arg(long, env = "VIGIL_POLICY_CONFIGMAP", default_value = "vigil-policy")]
    policy_configmap: String,
    /// Listen address of the identity service (CSR signing).
    #[arg(long, env = "VIGIL_IDENTITY_LISTEN", default_value = "0.0.0.0:15012")]
    identity_listen: SocketAddr,
    /// Listen address of the discovery service.
    #[arg(long, env = "VIGIL_DISCOVERY_LISTEN", default_value = "0.0.0.0:15010")]
    discovery_listen: SocketAddr,
    /// Listen address of the injection webhook (HTTPS).
    #[arg(long, env = "VIGIL_WEBHOOK_LISTEN", default_value = "0.0.0.0:15017")]
    webhook_listen: SocketAddr,
    /// Listen address of the dashboard and the control plane's /metrics.
    #[arg(long, env = "VIGIL_DASHBOARD_LISTEN", default_value = "0.0.0.0:15080")]
    dashboard_listen: SocketAddr,
    /// MutatingWebhookConfiguration whose caBundle the control plane keeps current ("" for none).
    #[arg(
        long,
        env = "VIGIL_WEBHOOK_CONFIGURATION",
        default_value = "vigil-sidecar-injector"
    )]
    webhook_configuration: String,
    /// Lifetime of issued workload certificates.
    #[arg(long, env = "VIGIL_CERTIFICATE_LIFETIME", default_value = "24h", value_parser = humantime::parse_duration)]
    certificate_lifetime: Duration,
    #[command(flatten)]
    sidecar: SidecarArgs,
}

/// What injected pods get.
#[derive(clap::Args)]
struct SidecarArgs {
    /// Image with vigil-proxy and vigil-init.
    #[arg(long, env = "VIGIL_PROXY_IMAGE", default_value = concat!("vigil/proxy:", env!("CARGO_PKG_VERSION")))]
    proxy_image: String,
    /// Host name (or IP) proxies dial for the control plane's identity and discovery ports
    /// (default: its Service, vigil-control-plane.<namespace>.svc).
    #[arg(long, env = "VIGIL_CONTROL_PLANE_HOST")]
    control_plane_host: Option<String>,
    /// UID the proxy runs as; its traffic is not intercepted.
    #[arg(long, env = "VIGIL_PROXY_UID", default_value_t = 1337)]
    proxy_uid: u32,
    /// How injected pods are intercepted: `iptables` (an init container with NET_ADMIN)
    /// or `cni` (the vigil-cni plugin on each node, manifests/cni/; pods need no
    /// privilege and pass the restricted Pod Security level).
    #[arg(
        long,
        env = "VIGIL_INTERCEPTION",
        value_enum,
        default_value = "iptables"
    )]
    interception: InterceptionArg,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum InterceptionArg {
    Iptables,
    Cni,
}

impl SidecarArgs {
    fn config(
        &self,
        trust_domain: &str,
        control_plane_namespace: &str,
        trust_bundle_pem: Option<String>,
    ) -> vigil::inject::InjectConfig {
        let defaults = vigil::inject::InjectConfig::for_namespace(control_plane_namespace);
        let defaults = match &self.control_plane_host {
            Some(host) => defaults.reached_at(host),
            None => defaults,
        };
        vigil::inject::InjectConfig {
            proxy_image: self.proxy_image.clone(),
            trust_domain: trust_domain.to_string(),
            proxy_uid: self.proxy_uid,
            trust_bundle_pem,
            interception: match self.interception {
                InterceptionArg::Iptables => vigil::inject::Interception::Iptables,
                InterceptionArg::Cni => vigil::inject::Interception::Cni,
            },
            ..defaults
        }
    }
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Run every `test_*` rule under DIR, like `opa test` (`todo_test_*` rules are reported
    /// as skipped); exits with 2 if any test fails.
    Test {
        dir: PathBuf,
        /// Also print `print()` output of passing tests.
        #[arg(short, long)]
        verbose: bool,
        /// Run only the tests whose full name (data.pkg.test_x) matches this regular expression.
        #[arg(short, long, value_parser = parse_regex)]
        run: Option<vigil_authz::TestFilter>,
        /// Output format: pretty, or json (the result array of `opa test --format json`).
        #[arg(short, long, default_value = "pretty", value_parser = parse_test_format)]
        format: vigil_authz::TestFormat,
        /// Report the lines of each policy and test file the tests evaluated, like
        /// `opa test --coverage`; with `--format json`, OPA's coverage report replaces the
        /// results.
        #[arg(short, long)]
        coverage: bool,
        /// Exit with 2 when total coverage is below this percentage.
        #[arg(long, requires = "coverage", value_name = "PCT")]
        threshold: Option<f64>,
    },
    /// Evaluate a candidate policy against recorded decisions and show what would change.
    ///
    /// The decision logs must have been written with input recording on (`record_input` in
    /// the policy settings). Exits 2 when any decision changes, unless --allow-changes.
    Replay {
        /// Decision log to replay (repeatable).
        #[arg(long = "log", required = true)]
        logs: Vec<PathBuf>,
        /// The candidate policy directory.
        #[arg(long)]
        policy: PathBuf,
        /// Rule to evaluate (default data.vigil.authz.allow).
        #[arg(long)]
        rule: Option<String>,
        /// The mesh's trust domain, for data.vigil.mesh (default: read from the log).
        #[arg(long)]
        trust_domain: Option<String>,
        /// Output format: pretty, or json for CI.
        #[arg(short, long, default_value = "pretty", value_parser = parse_test_format)]
        format: vigil_authz::TestFormat,
        /// Exit 0 even when decisions change.
        #[arg(long)]
        allow_changes: bool,
    },
    /// Evaluate a policy directory against an input document (JSON).
    Eval {
        #[arg(long)]
        policy: PathBuf,
        /// The input document, as the proxy builds it (OPA-Envoy ext_authz shape).
        #[arg(long)]
        input: PathBuf,
        /// Rule to evaluate (default data.vigil.authz.allow).
        #[arg(long)]
        rule: Option<String>,
    },
    /// Show the decision for a request and the rules that produced it.
    Explain {
        #[arg(long)]
        policy: PathBuf,
        /// An input document (JSON, OPA-Envoy ext_authz shape) to explain instead of a request
        /// described by the flags below.
        #[arg(long, conflicts_with_all = ["source", "destination", "method", "path", "host", "headers"])]
        input: Option<PathBuf>,
        /// Caller's SPIFFE ID (omit for a caller without a mesh identity).
        #[arg(long)]
        source: Option<String>,
        /// Callee's SPIFFE ID.
        #[arg(long)]
        destination: Option<String>,
        /// HTTP method; empty for a TCP connection.
        #[arg(long, default_value = "GET")]
        method: String,
        #[arg(long, default_value = "/")]
        path: String,
        #[arg(long, default_value = "")]
        host: String,
        /// Request header as NAME:VALUE (repeatable).
        #[arg(long = "header", value_parser = parse_header)]
        headers: Vec<(String, String)>,
        #[arg(long)]
        rule: Option<String>,
    },
    /// Translate another system's policies into a Vigil policy bundle (with tests).
    Import {
        #[command(subcommand)]
        from: ImportSource,
    },
}

#[derive(Subcommand)]
enum ImportSource {
    /// Istio `AuthorizationPolicy` documents (security.istio.io/v1 or v1beta1). Prints what
    /// could not be translated and exits with 3 without writing anything, unless
    /// --allow-partial.
    Istio {
        /// The YAML file (several documents separated by `---`), or `-` for standard input.
        #[arg(short, long)]
        file: PathBuf,
        /// Directory to write policy.rego and policy_test.rego to (default: the file's path
        /// without its extension).
        #[arg(short, long)]
        out: Option<PathBuf>,
        /// Istio's root namespace: policies there apply to every workload.
        #[arg(long, default_value = "istio-system")]
        root_namespace: String,
        /// Write the bundle even when some fields were not translated (each is translated the
        /// closed way: ALLOW rules dropped, DENY rules widened).
        #[arg(long)]
        allow_partial: bool,
    },
}

/// `vigil policy import istio`: the report goes to standard error; exit code 3 when some
/// field was not translated and --allow-partial was not given.
fn import(from: ImportSource) -> ExitCode {
    use std::io::Read;
    let ImportSource::Istio {
        file,
        out,
        root_namespace,
        allow_partial,
    } = from;
    let mut text = String::new();
    let read = if file.as_os_str() == "-" {
        std::io::stdin().read_to_string(&mut text).map(|_| ())
    } else {
        std::fs::read_to_string(&file).map(|t| text = t)
    };
    if let Err(e) = read {
        eprintln!("error: reading -f {}: {e}", file.display());
        return ExitCode::from(2);
    }
    let options = vigil_authz::IstioImportOptions {
        root_namespace,
        source_name: file.display().to_string(),
    };
    let import = match vigil_authz::import_istio(&text, &options) {
        Ok(import) => import,
        Err(e) => {
            eprintln!("error: {}: {e}", file.display());
            return ExitCode::from(2);
        }
    };
    eprint!("{}", import.report());
    let out = out.unwrap_or_else(|| {
        if file.as_os_str() == "-" {
            PathBuf::from("istio-policy")
        } else {
            file.with_extension("")
        }
    });
    if !import.untranslated.is_empty() && !allow_partial {
        eprintln!(
            "error: {} field(s) not translated, so nothing was written; review them, then \
             re-run with --allow-partial to write {} with the closed translation above",
            import.untranslated.len(),
            out.display()
        );
        return ExitCode::from(3);
    }
    if let Err(e) = import.write_to(&out) {
        eprintln!("error: writing {}: {e}", out.display());
        return ExitCode::from(2);
    }
    eprintln!(
        "wrote {0}/policy.rego and {0}/policy_test.rego; run: vigil policy test {0}",
        out.display()
    );
    ExitCode::SUCCESS
}

fn parse_regex(s: &str) -> Result<vigil_authz::TestFilter, String> {
    vigil_authz::TestFilter::new(s).map_err(|e| format!("not a regular expression: {e}"))
}

fn parse_test_format(s: &str) -> Result<vigil_authz::TestFormat, String> {
    match s {
        "pretty" => Ok(vigil_authz::TestFormat::Pretty),
        "json" => Ok(vigil_authz::TestFormat::Json),
        _ => Err(format!("expected pretty or json, got {s:?}")),
    }
}

fn parse_header(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once(':')
        .ok_or_else(|| format!("expected NAME:VALUE, got {s:?}"))?;
    Ok((k.trim().to_string(), v.trim().to_string()))
}

/// The `--input` document of `policy eval` and `policy explain`, with its path on failure.
fn read_input(input: &std::path::Path) -> anyhow::Result<String> {
    use anyhow::Context;
    std::fs::read_to_string(input).with_context(|| format!("reading --input {}", input.display()))
}

/// Runs a policy subcommand; `Ok(false)` means it ran and the answer is a failure.
fn policy(cmd: PolicyCommand) -> anyhow::Result<bool> {
    let mut out = std::io::stdout();
    match cmd {
        PolicyCommand::Test {
            dir,
            verbose,
            run,
            format,
            coverage,
            threshold,
        } => {
            let options = vigil_authz::TestOptions {
                verbose,
                run,
                format,
                coverage,
                threshold,
            };
            let summary = vigil_authz::run_tests_with(&dir, &mut out, &options)?;
            if let (true, Some(got), Some(threshold)) =
                (summary.below_threshold, summary.coverage, threshold)
            {
                eprintln!("coverage threshold not met: got {got:.2}% instead of {threshold:.2}%");
            }
            Ok(summary.success())
        }
        PolicyCommand::Replay {
            logs,
            policy,
            rule,
            trust_domain,
            format,
            allow_changes,
        } => {
            let summary = vigil::policy_source::replay(
                &logs,
                &policy,
                rule.as_deref(),
                trust_domain.as_deref(),
                format,
                &mut out,
            )
            .map_err(anyhow::Error::msg)?;
            Ok(allow_changes || summary.changed() == 0)
        }
        PolicyCommand::Eval {
            policy,
            input,
            rule,
        } => {
            let text = read_input(&input)?;
            vigil_authz::eval_command(&policy, &text, rule.as_deref(), &mut out)?;
            Ok(true)
        }
        PolicyCommand::Explain {
            policy,
            input: Some(input),
            rule,
            ..
        } => {
            let text = read_input(&input)?;
            vigil_authz::explain_input(&policy, &text, rule.as_deref(), &mut out)?;
            Ok(true)
        }
        PolicyCommand::Explain {
            policy,
            input: None,
            source,
            destination,
            method,
            path,
            host,
            headers,
            rule,
        } => {
            let request = vigil_authz::ExplainRequest {
                source,
                destination,
                method,
                path,
                headers,
                host,
            };
            vigil_authz::explain(&policy, request, rule.as_deref(), &mut out)?;
            Ok(true)
        }
        // `main` runs imports itself, for their own exit code (3: not all translated).
        PolicyCommand::Import { from } => Ok(import(from) == ExitCode::SUCCESS),
    }
}

/// `vigil inject`: reads, injects, writes; the report goes to standard error.
fn inject(
    file: PathBuf,
    output: Option<PathBuf>,
    trust_bundle: Option<PathBuf>,
    trust_domain: String,
    control_plane_namespace: String,
    sidecar: SidecarArgs,
) -> anyhow::Result<()> {
    use anyhow::Context;
    use std::io::Read;
    let text = if file.as_os_str() == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading standard input")?;
        s
    } else {
        std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?
    };
    let pem = match &trust_bundle {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .with_context(|| format!("reading --trust-bundle {}", p.display()))?,
        ),
        None => {
            eprintln!(
                "note: no --trust-bundle; the injection webhook adds it when the pods are created"
            );
            None
        }
    };
    let config = sidecar.config(&trust_domain, &control_plane_namespace, pem);
    let (out, reports) = vigil::inject::offline::inject_yaml(&text, &config)?;
    for r in &reports {
        match &r.outcome {
            vigil::inject::Outcome::Injected { mode, warnings } => {
                let mode = match mode {
                    vigil::inject::SidecarMode::Native => "native",
                    vigil::inject::SidecarMode::Classic => "classic",
                };
                eprintln!("injected {} ({mode} sidecar)", r.object);
                for w in warnings {
                    eprintln!("  warning: {w}");
                }
            }
            vigil::inject::Outcome::Skipped { reason } => {
                eprintln!("skipped {}: {reason}", r.object)
            }
        }
    }
    match output {
        Some(path) => {
            std::fs::write(&path, out).with_context(|| format!("writing {}", path.display()))
        }
        None => {
            print!("{out}");
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let cli = match cli.command {
        Command::Inject {
            file,
            output,
            trust_bundle,
            trust_domain,
            control_plane_namespace,
            sidecar,
        } => {
            return match inject(
                file,
                output,
                trust_bundle,
                trust_domain,
                control_plane_namespace,
                sidecar,
            ) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Policy(PolicyCommand::Import { from }) => return import(from),
        Command::Policy(cmd) => {
            return match policy(cmd) {
                Ok(true) => ExitCode::SUCCESS,
                // Failing tests, with `opa test`'s exit code.
                Ok(false) => ExitCode::from(2),
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::from(2)
                }
            };
        }
        command => Cli { command },
    };
    // `vigil up` shows its own progress; the control plane inside it speaks up only
    // for warnings unless VIGIL_LOG says otherwise.
    init_logging(
        if matches!(
            cli.command,
            Command::Up { .. }
                | Command::Demo { .. }
                | Command::Check { .. }
                | Command::Bench { .. }
        ) {
            "warn"
        } else {
            "info"
        },
    );
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::ControlPlane {
                kubernetes: true,
                cluster,
                prometheus,
                dashboard,
                ..
            } => {
                let inject =
                    cluster
                        .sidecar
                        .config(&cluster.trust_domain, &cluster.namespace, None);
                vigil::kubernetes::run(vigil::kubernetes::ClusterOptions {
                    trust_domain: cluster.trust_domain,
                    namespace: cluster.namespace,
                    ca_secret: cluster.ca_secret,
                    policy: cluster.policy,
                    policy_config_map: cluster.policy_configmap,
                    identity: cluster.identity_listen,
                    discovery: cluster.discovery_listen,
                    webhook: cluster.webhook_listen,
                    certificate_lifetime: cluster.certificate_lifetime,
                    inject,
                    webhook_configuration: Some(cluster.webhook_configuration)
                        .filter(|n| !n.is_empty()),
                    dashboard: cluster.dashboard_listen,
                    dashboard_options: vigil::dashboard::DashboardOptions {
                        prometheus,
                        access: dashboard,
                        ..Default::default()
                    },
                })
                .await
            }
            Command::ControlPlane {
                mesh,
                data_dir,
                ca_cert,
                ca_key,
                ca_chain,
                reload_interval,
                prometheus,
                dashboard,
                cluster,
                replica,
                ..
            } => {
                let Some(mesh) = mesh else {
                    anyhow::bail!("--mesh is required without --kubernetes");
                };
                vigil::control_plane::run(vigil::control_plane::ControlPlaneOptions {
                    mesh_file: mesh,
                    data_dir,
                    ca_cert,
                    ca_key,
                    ca_chain,
                    reload_interval,
                    namespace: cluster.namespace,
                    replica,
                    dashboard: vigil::dashboard::DashboardOptions {
                        prometheus,
                        access: dashboard,
                        ..Default::default()
                    },
                })
                .await
            }
            Command::Policy(_) | Command::Inject { .. } => Ok(()),
            Command::Ca(CaCommand::Rotate {
                mesh,
                data_dir,
                step,
                cert,
                key,
                timeout,
            }) => {
                let mut at = vigil::mesh_location::locate(mesh)?;
                if data_dir.is_some() {
                    at.data_dir = data_dir;
                }
                eprintln!("{}", at.describe());
                let data_dir = at.data_dir.clone().ok_or_else(|| {
                    anyhow::anyhow!(
                        "no data directory: pass --data-dir, the one the control plane of {} runs with",
                        at.mesh_file.display()
                    )
                })?;
                let mesh = vigil::mesh::MeshFile::load(&at.mesh_file)?;
                let dir = vigil_identity::CaDirectory::new(&data_dir.join("ca"), &mesh.trust_domain);
                let read = |p: &PathBuf| {
                    std::fs::read_to_string(p)
                        .map_err(|e| anyhow::anyhow!("reading {}: {e}", p.display()))
                };
                let operator = match (&cert, &key) {
                    (Some(c), Some(k)) => Some((read(c)?, read(k)?)),
                    _ => None,
                };
                vigil::ca_rotation::rotate(&dir, &mesh, step, operator, timeout).await
            }
            Command::Stat {
                mesh,
                workload,
                window,
                output,
            } => {
                let at = vigil::mesh_location::locate(mesh)?;
                eprintln!("{}", at.describe());
                let mesh = vigil::mesh::MeshFile::load(&at.mesh_file)?;
                let targets = vigil::observe_cli::targets(&mesh, workload.as_deref())?;
                eprintln!("measuring for {}…", humantime::format_duration(window));
                let report = vigil::observe_cli::stat(&targets, window).await;
                if output == "json" {
                    println!("{}", vigil::observe_cli::render_json(&at, &report)?);
                } else {
                    print!("{}", vigil::observe_cli::render_table(&report));
                }
                Ok(())
            }
            Command::Tap {
                mesh,
                workload,
                filters,
                count,
                output,
            } => {
                let at = vigil::mesh_location::locate(mesh)?;
                eprintln!("{}", at.describe());
                let mesh = vigil::mesh::MeshFile::load(&at.mesh_file)?;
                let targets = vigil::observe_cli::targets(&mesh, workload.as_deref())?;
                let query = filters.join("&");
                eprintln!("tapping {} proxies; Ctrl-C to stop", targets.len());
                vigil::observe_cli::tap(&targets, &query, output == "json", count).await
            }
            Command::Demo {
                duration,
                data_dir,
                dashboard,
            } => vigil::demo::run(data_dir, duration, dashboard).await,
            Command::Bench {
                what: BenchCommand::ControlPlane(opts),
            } => vigil::control_plane_bench::run(opts).await.map(|_| ()),
            Command::Check {
                kubernetes: true,
                namespace,
                trust_domain,
                output,
                ..
            } => check_cluster(namespace, trust_domain, &output).await,
            Command::Check {
                mesh,
                data_dir,
                trust_bundle,
                output,
                ..
            } => check(mesh, data_dir, trust_bundle, &output).await,
            Command::Up {
                mesh,
                data_dir,
                duration,
                dashboard,
            } => {
                let temp;
                let data_dir = match data_dir {
                    Some(d) => d,
                    None => {
                        // Private from the start: it will hold the CA and every log.
                        use std::os::unix::fs::PermissionsExt;
                        temp = tempfile::Builder::new()
                            .prefix("vigil-up-")
                            .permissions(std::fs::Permissions::from_mode(0o700))
                            .tempdir()?;
                        temp.path().to_path_buf()
                    }
                };
                vigil::launcher::up(vigil::launcher::LaunchOptions {
                    mesh_file: mesh,
                    data_dir,
                    duration,
                    dashboard,
                })
                .await
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `vigil check`: prints the report; an error when any check failed.
async fn check(
    mesh: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    trust_bundle: Option<PathBuf>,
    output: &str,
) -> anyhow::Result<()> {
    let mut at = vigil::mesh_location::locate(mesh)?;
    if data_dir.is_some() {
        at.data_dir = data_dir;
    }
    eprintln!("{}", at.describe());
    let report = vigil::check::check(&at, trust_bundle.as_deref()).await?;
    print_report(&report, output)?;
    if report.ok {
        Ok(())
    } else {
        anyhow::bail!(
            "the mesh of {} is not healthy; fix the ✗ lines above (their hints say how) and run vigil check again",
            at.mesh_file.display()
        )
    }
}

/// A check's report as text or JSON on standard output.
fn print_report(report: &vigil::check::Report, output: &str) -> anyhow::Result<()> {
    if output == "json" {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        print!("{}", vigil::check::render(report));
    }
    Ok(())
}

/// `vigil check --kubernetes`.
async fn check_cluster(
    namespace: String,
    trust_domain: String,
    output: &str,
) -> anyhow::Result<()> {
    let client = kube::Client::try_default().await.map_err(|e| {
        anyhow::anyhow!(
            "cannot reach a Kubernetes cluster ({e}): set KUBECONFIG or a kubectl context, or run it in a pod"
        )
    })?;
    eprintln!("the mesh installed in namespace {namespace} of the current Kubernetes cluster");
    let opts = vigil::kubernetes::check::ClusterCheck {
        namespace,
        trust_domain,
        deployment: "vigil-control-plane".into(),
        ca_secret: "vigil-ca".into(),
        webhook_configuration: "vigil-sidecar-injector".into(),
    };
    let report = vigil::kubernetes::check::check(&client, &opts).await;
    print_report(&report, output)?;
    if report.ok {
        Ok(())
    } else {
        anyhow::bail!(
            "the mesh in namespace {} is not healthy; fix the ✗ lines above (their hints say how) and run vigil check --kubernetes again",
            opts.namespace
        )
    }
}

fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("VIGIL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
