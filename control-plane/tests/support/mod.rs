//! What the control plane's process tests share: free loopback ports, mesh files, the
//! `vigil` binary run as a child that is killed when the test ends, and a gRPC client
//! for the identity service over real TLS.
#![allow(dead_code)]

use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint};
use vigil_identity::{SpiffeId, TlsOptions, TrustBundle, TrustStore};

pub const TRUST_DOMAIN: &str = "vigil.local";

/// A loopback address on a free port, from 20000-31999 (below the ephemeral range, so an
/// outgoing connection is never handed it), spread by process id so test binaries
/// running at once rarely try the same one.
pub fn free_addr() -> SocketAddr {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = (std::process::id() % 120) * 100 + 50;
    for _ in 0..12_000 {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = 20_000 + ((start + n) % 12_000) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return SocketAddr::from(([127, 0, 0, 1], port));
        }
    }
    panic!("no free loopback port between 20000 and 31999")
}

/// 128 random bits in hex, as `openssl rand -hex 16` makes them.
pub fn random_token() -> String {
    use std::hash::{BuildHasher, Hasher};
    let random = || {
        std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish()
    };
    format!("{:016x}{:016x}", random(), random())
}

/// The control plane's addresses in a test mesh.
#[derive(Debug, Clone, Copy)]
pub struct ControlPlaneAddresses {
    pub identity: SocketAddr,
    pub discovery: SocketAddr,
    pub dashboard: SocketAddr,
    pub webhook: SocketAddr,
}

impl ControlPlaneAddresses {
    pub fn free() -> Self {
        ControlPlaneAddresses {
            identity: free_addr(),
            discovery: free_addr(),
            dashboard: free_addr(),
            webhook: free_addr(),
        }
    }

    /// The `control_plane:` section of a mesh file.
    pub fn yaml(&self) -> String {
        format!(
            "control_plane:\n  identity: \"{}\"\n  discovery: \"{}\"\n  dashboard: \"{}\"\n  webhook: \"{}\"\n",
            self.identity, self.discovery, self.dashboard, self.webhook
        )
    }
}

/// A `vigil` child process with its output in a file; killed when dropped.
pub struct Vigil {
    child: Child,
    pub log: PathBuf,
}

impl Vigil {
    /// Runs `vigil ARGS` in `dir`, output to `<dir>/<name>.log`.
    pub fn start(dir: &Path, name: &str, args: &[&str], env: &[(&str, &str)]) -> Vigil {
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_vigil"))
            .args(args)
            .envs(env.iter().copied())
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("vigil starts");
        Vigil { child, log }
    }

    /// `vigil control-plane` for the mesh file `mesh`, data in `<dir>/data`.
    pub fn control_plane(dir: &Path, mesh: &Path, extra: &[&str], env: &[(&str, &str)]) -> Vigil {
        let data = dir.join("data");
        let mut args = vec![
            "control-plane",
            "--mesh",
            mesh.to_str().expect("utf-8"),
            "--data-dir",
            data.to_str().expect("utf-8"),
        ];
        args.extend_from_slice(extra);
        Vigil::start(dir, "control-plane", &args, env)
    }

    /// Its output so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for it to exit by itself, for at most `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends SIGINT, as Ctrl-C would, and waits for it to stop.
    pub fn interrupt(&mut self) {
        let _ = Command::new("kill")
            .arg("-INT")
            .arg(self.child.id().to_string())
            .status();
        if self.wait_exit(Duration::from_secs(20)).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Drop for Vigil {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.interrupt();
        }
    }
}

/// Waits until something accepts TCP connections on `addr`, or the process ends.
pub fn wait_listening(vigil: &mut Vigil, addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(addr).is_err() {
        if let Some(status) = vigil.wait_exit(Duration::ZERO) {
            panic!(
                "vigil stopped ({status}) before serving on {addr}:\n{}",
                vigil.output()
            );
        }
        assert!(
            Instant::now() < deadline,
            "nothing listens on {addr} after 60 s:\n{}",
            vigil.output()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A gRPC channel to the identity service at `addr` from the loopback address `source`,
/// verifying the control plane's SPIFFE ID against the trust bundle in `data_dir`.
pub async fn identity_channel(data_dir: &Path, addr: SocketAddr, source: IpAddr) -> Channel {
    let pem = std::fs::read_to_string(data_dir.join("trust-bundle.pem")).expect("trust bundle");
    let bundle = TrustBundle::from_pem(&pem).expect("bundle parses");
    let expected =
        SpiffeId::parse("spiffe://vigil.local/ns/vigil-system/sa/vigil-control-plane").expect("id");
    let tls = vigil_identity::mtls_client_config(
        None,
        TrustStore::new(TRUST_DOMAIN, bundle).expect("trust"),
        expected.clone(),
        &TlsOptions {
            alpn: vec![b"h2".to_vec()],
            ..TlsOptions::default()
        },
    );
    let connector = tokio_rustls::TlsConnector::from(Arc::clone(&tls));
    let server_name = vigil_identity::server_name_for(&expected);
    Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect_with_connector(tower::service_fn(move |_| {
            let connector = connector.clone();
            let server_name = server_name.clone();
            async move {
                let socket = tokio::net::TcpSocket::new_v4()?;
                socket.bind(SocketAddr::new(source, 0))?;
                let tcp = socket.connect(addr).await?;
                tcp.set_nodelay(true)?;
                let tls = connector.connect(server_name, tcp).await?;
                Ok::<_, std::io::Error>(TokioIo::new(tls))
            }
        }))
        .await
        .expect("channel to the identity service")
}

/// One signing request with a join token.
pub async fn sign(
    channel: &Channel,
    token: &str,
    csr_der: Vec<u8>,
) -> Result<vigil_api::SignResponse, tonic::Status> {
    vigil_api::identity::IdentityClient::new(channel.clone())
        .sign(vigil_api::SignRequest {
            csr_der,
            token: token.into(),
            kind: vigil_api::TokenKind::Join as i32,
        })
        .await
        .map(|r| r.into_inner())
}
