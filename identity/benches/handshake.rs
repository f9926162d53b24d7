//! What the post-quantum key exchange costs: full mTLS handshakes between Vigil's own
//! server config and a client offering either classical X25519 alone or Vigil's default
//! (X25519MLKEM768 first), with the same certificates, provider and cipher suites, over
//! loopback TCP. Each side runs on its own thread and reads its own CPU time, so the
//! figures are handshakes per second and CPU per handshake for the server and the client.
//!
//! `cargo bench -p vigil-identity --bench handshake [-- SECONDS]`; the figures are in
//! docs/security.md. A plain `main` rather than criterion: the interesting numbers are
//! CPU per handshake on each side, which criterion's wall-clock samples do not give.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::Resumption;
use rustls::crypto::CryptoProvider;
use rustls::server::ParsedCertificate;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use vigil_identity::{
    mtls_server_config, CertificateAuthority, SpiffeId, SvidStore, TlsOptions, TrustStore,
    WorkloadKey,
};

/// Connections each client keeps in flight, so the server never waits for the next one.
const IN_FLIGHT: usize = 4;

/// This thread's user + system CPU time, from /proc (Linux).
fn thread_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").expect("Linux /proc");
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let after_name = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<&str> = after_name.split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // USER_HZ is 100 on every Linux this runs on.
    Duration::from_millis(ticks * 10)
}

fn svid(ca: &CertificateAuthority, id: &SpiffeId) -> Arc<SvidStore> {
    let key = WorkloadKey::generate().unwrap();
    let chain = ca
        .sign_csr(&key.csr_der().unwrap(), id, Duration::from_secs(3600))
        .unwrap();
    let store = SvidStore::new();
    store.set(key.certified(chain).unwrap());
    store
}

/// Verifies the server's chain to the mesh CA, as Vigil's client does, without its
/// SPIFFE ID check (a string comparison, not worth rebuilding here).
#[derive(Debug)]
struct ChainToCa(RootCertStore, Arc<CryptoProvider>);

impl ServerCertVerifier for ChainToCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let leaf = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &leaf,
            &self.0,
            intermediates,
            now,
            self.1.signature_verification_algorithms.all,
        )?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.3 only".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.1.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.1.signature_verification_algorithms.supported_schemes()
    }
}

fn client_config(
    provider: Arc<CryptoProvider>,
    ca: &CertificateAuthority,
    me: Arc<SvidStore>,
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for root in ca.trust_bundle().roots() {
        roots.add(root.clone()).unwrap();
    }
    let mut config = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ChainToCa(roots, provider)))
        .with_client_cert_resolver(me);
    config.resumption = Resumption::disabled();
    Arc::new(config)
}

/// Serves handshakes on `listener` until `stop` fires; returns the thread's CPU time.
fn server_thread(
    listener: std::net::TcpListener,
    acceptor: TlsAcceptor,
    stop: tokio::sync::oneshot::Receiver<()>,
) -> std::thread::JoinHandle<Duration> {
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let start = thread_cpu();
        runtime.block_on(async move {
            let listener = TcpListener::from_std(listener).unwrap();
            let serve = async {
                loop {
                    let (tcp, _) = listener.accept().await.unwrap();
                    let acceptor = acceptor.clone();
                    tokio::spawn(async move {
                        let _ = tcp.set_nodelay(true);
                        if let Ok(mut tls) = acceptor.accept(tcp).await {
                            let mut b = [0u8; 1];
                            if tls.read_exact(&mut b).await.is_ok() {
                                let _ = tls.write_all(&b).await;
                                let _ = tls.flush().await;
                            }
                        }
                    });
                }
            };
            tokio::select! {
                _ = serve => {}
                _ = stop => {}
            }
        });
        thread_cpu() - start
    })
}

/// Handshakes (then one byte each way, so the server has checked the client certificate)
/// for `run`; returns the count and the client thread's CPU time.
fn client_thread(
    address: SocketAddr,
    config: Arc<ClientConfig>,
    run: Duration,
) -> std::thread::JoinHandle<(u64, Duration, rustls::NamedGroup)> {
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let start = thread_cpu();
        let (count, group) = runtime.block_on(async move {
            let deadline = Instant::now() + run;
            let connector = TlsConnector::from(config);
            let name = ServerName::try_from(vigil_identity::PLACEHOLDER_SERVER_NAME).unwrap();
            let mut workers = Vec::new();
            for _ in 0..IN_FLIGHT {
                let (connector, name) = (connector.clone(), name.clone());
                workers.push(tokio::spawn(async move {
                    let mut count = 0u64;
                    let mut group = None;
                    while Instant::now() < deadline {
                        let tcp = TcpStream::connect(address).await.unwrap();
                        tcp.set_nodelay(true).unwrap();
                        let mut tls = connector.connect(name.clone(), tcp).await.unwrap();
                        group = tls.get_ref().1.negotiated_key_exchange_group();
                        tls.write_all(b"x").await.unwrap();
                        tls.flush().await.unwrap();
                        let mut b = [0u8; 1];
                        tls.read_exact(&mut b).await.unwrap();
                        count += 1;
                    }
                    (count, group.expect("a group").name())
                }));
            }
            let mut total = 0;
            let mut group = None;
            for w in workers {
                let (n, g) = w.await.unwrap();
                total += n;
                group = Some(g);
            }
            (total, group.unwrap())
        });
        (count, thread_cpu() - start, group)
    })
}

fn main() {
    // `cargo bench` passes `--bench`; the only argument of ours is the seconds per run.
    let seconds = std::env::args()
        .skip(1)
        .find_map(|a| a.parse::<u64>().ok())
        .unwrap_or(5);
    let run = Duration::from_secs(seconds);

    let ca = CertificateAuthority::generate("bench.local").unwrap();
    let server_id = SpiffeId::workload("bench.local", "default", "server").unwrap();
    let client_id = SpiffeId::workload("bench.local", "default", "client").unwrap();
    let trust = TrustStore::new("bench.local", ca.trust_bundle()).unwrap();
    let server = mtls_server_config(svid(&ca, &server_id), trust, &TlsOptions::default());
    let me = svid(&ca, &client_id);

    let classical = Arc::new(CryptoProvider {
        kx_groups: vec![rustls::crypto::aws_lc_rs::kx_group::X25519],
        ..rustls::crypto::aws_lc_rs::default_provider()
    });
    let offers = [
        ("X25519 only (classical peer)", classical),
        ("Vigil default (hybrid first)", vigil_identity::provider()),
    ];
    println!("{seconds} s per run, {IN_FLIGHT} connections in flight, one thread per side");
    println!("| client offers | negotiated | handshakes/s | server CPU/handshake | client CPU/handshake |");
    println!("|---|---|---|---|---|");
    for (label, provider) in offers {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let address = listener.local_addr().unwrap();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let server_cpu = server_thread(listener, TlsAcceptor::from(server.clone()), stop_rx);
        let started = Instant::now();
        let client = client_thread(address, client_config(provider, &ca, me.clone()), run);
        let (count, client_cpu, group) = client.join().unwrap();
        let elapsed = started.elapsed();
        let _ = stop_tx.send(());
        let server_cpu = server_cpu.join().unwrap();
        let per = |cpu: Duration| cpu.as_secs_f64() * 1e6 / count as f64;
        println!(
            "| {label} | {group:?} | {:.0} | {:.0} µs | {:.0} µs |",
            count as f64 / elapsed.as_secs_f64(),
            per(server_cpu),
            per(client_cpu),
        );
    }
}
