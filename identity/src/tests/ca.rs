use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, SystemTime};

use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls_pki_types::{CertificateDer, UnixTime};
use x509_parser::extensions::GeneralName;

use super::{id, test_ca, TD};
use crate::{
    certs_to_pem, check_svid_leaf, provider, CaError, CertificateAuthority, SpiffeId, SvidInfo,
    TrustBundle, WorkloadKey, CA_CERT_FILE, CA_KEY_FILE,
};

fn mode(p: &std::path::Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn generate_then_reload_same_root() {
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("ca");
    let ca1 = CertificateAuthority::load_or_generate(&ca_dir, TD).unwrap();
    assert_eq!(ca1.trust_domain(), TD);
    assert_eq!(mode(&ca_dir.join(CA_KEY_FILE)), 0o600);
    assert!(ca_dir.join(CA_CERT_FILE).exists());
    // No temp files left behind.
    assert_eq!(std::fs::read_dir(&ca_dir).unwrap().count(), 2);

    let ca2 = CertificateAuthority::load_or_generate(&ca_dir, TD).unwrap();
    assert_eq!(ca1.trust_bundle(), ca2.trust_bundle());
    assert_eq!(ca2.trust_bundle().roots().len(), 1);
    assert!(ca2.intermediates().is_empty());

    // Root validity ~10 years.
    let root = crate::svid::parse_cert(&ca2.trust_bundle().roots()[0])
        .unwrap()
        .validity()
        .clone();
    let years = (root.not_after.timestamp() - root.not_before.timestamp()) / (365 * 24 * 3600);
    assert_eq!(years, 10);

    // A reloaded CA issues SVIDs that chain to the original root.
    let key = WorkloadKey::generate().unwrap();
    let chain = ca2
        .sign_csr(
            &key.csr_der().unwrap(),
            &id("a", "b"),
            Duration::from_secs(60),
        )
        .unwrap();
    verify_chain(&chain, &ca1.trust_bundle()).unwrap();

    // Another trust domain over the same files is refused.
    let err = CertificateAuthority::load_or_generate(&ca_dir, "other.td").unwrap_err();
    assert!(matches!(err, CaError::TrustDomainMismatch { .. }), "{err}");
}

#[test]
fn loose_key_mode_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    CertificateAuthority::load_or_generate(dir.path(), TD).unwrap();
    let key_path = dir.path().join(CA_KEY_FILE);
    for loose in [0o644, 0o640, 0o604] {
        std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(loose)).unwrap();
        let err = CertificateAuthority::load_or_generate(dir.path(), TD).unwrap_err();
        assert!(matches!(err, CaError::KeyFileMode { .. }), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("chmod 600 {}", key_path.display())),
            "{msg}"
        );
    }
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    CertificateAuthority::load_or_generate(dir.path(), TD).unwrap();
}

#[test]
fn partial_ca_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    CertificateAuthority::load_or_generate(dir.path(), TD).unwrap();
    std::fs::remove_file(dir.path().join(CA_CERT_FILE)).unwrap();
    let err = CertificateAuthority::load_or_generate(dir.path(), TD).unwrap_err();
    assert!(matches!(err, CaError::Incomplete { .. }), "{err}");
    // The orphaned key was not overwritten.
    assert!(dir.path().join(CA_KEY_FILE).exists());
}

/// Verifies `chain` (leaf first) to `bundle` the way the client side of a handshake does.
pub(super) fn verify_chain(
    chain: &[CertificateDer<'static>],
    bundle: &TrustBundle,
) -> Result<(), rustls::Error> {
    let mut roots = rustls::RootCertStore::empty();
    for r in bundle.roots() {
        roots.add(r.clone()).unwrap();
    }
    let leaf = rustls::server::ParsedCertificate::try_from(&chain[0])?;
    rustls::client::verify_server_cert_signed_by_trust_anchor(
        &leaf,
        &roots,
        &chain[1..],
        UnixTime::now(),
        provider().signature_verification_algorithms.all,
    )
}

pub(super) struct OperatorPki {
    pub(super) root_pem: String,
    pub(super) inter_pem: String,
    pub(super) inter_key_pem: String,
    pub(super) root_der: CertificateDer<'static>,
    pub(super) inter_der: CertificateDer<'static>,
}

pub(super) fn operator_pki(td: &str) -> OperatorPki {
    let root_key = KeyPair::generate().unwrap();
    let mut rp = CertificateParams::default();
    rp.distinguished_name.push(DnType::CommonName, "Corp Root");
    rp.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    rp.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let root = rp.self_signed(&root_key).unwrap();
    let root_issuer = rcgen::Issuer::new(rp, root_key);

    let inter_key = KeyPair::generate().unwrap();
    let mut ip = CertificateParams::default();
    ip.distinguished_name
        .push(DnType::CommonName, "Corp Mesh Intermediate");
    ip.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ip.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ip.subject_alt_names = vec![SanType::URI(
        Ia5String::try_from(format!("spiffe://{td}")).unwrap(),
    )];
    ip.use_authority_key_identifier_extension = true;
    let inter = ip.signed_by(&inter_key, &root_issuer).unwrap();
    OperatorPki {
        root_pem: root.pem(),
        inter_pem: inter.pem(),
        inter_key_pem: inter_key.serialize_pem(),
        root_der: root.der().clone(),
        inter_der: inter.der().clone(),
    }
}

#[test]
fn from_pem_with_intermediate() {
    let pki = operator_pki("corp.example");
    let bundle = format!("{}{}", pki.inter_pem, pki.root_pem);
    let ca =
        CertificateAuthority::from_pem(&pki.inter_pem, &pki.inter_key_pem, Some(&bundle)).unwrap();
    assert_eq!(ca.trust_domain(), "corp.example");
    assert_eq!(
        ca.trust_bundle().roots(),
        std::slice::from_ref(&pki.root_der)
    );
    assert_eq!(ca.intermediates(), std::slice::from_ref(&pki.inter_der));

    let key = WorkloadKey::generate().unwrap();
    let wid = SpiffeId::workload("corp.example", "ns", "sa").unwrap();
    let chain = ca
        .sign_csr(&key.csr_der().unwrap(), &wid, Duration::from_secs(600))
        .unwrap();
    assert_eq!(chain.len(), 2, "leaf + intermediate, no root");
    assert_eq!(chain[1], pki.inter_der);
    verify_chain(&chain, &ca.trust_bundle()).unwrap();
    // Without the intermediate the leaf does not verify: it really is needed in the chain.
    assert!(verify_chain(&chain[..1], &ca.trust_bundle()).is_err());
}

#[test]
fn from_pem_refuses_bad_inputs() {
    let pki = operator_pki("corp.example");
    // Intermediate without its root: nothing to anchor the bundle.
    let err = CertificateAuthority::from_pem(&pki.inter_pem, &pki.inter_key_pem, None).unwrap_err();
    assert!(matches!(err, CaError::Chain(_)), "{err}");

    // Key of another CA.
    let other = KeyPair::generate().unwrap().serialize_pem();
    let err =
        CertificateAuthority::from_pem(&pki.inter_pem, &other, Some(&pki.root_pem)).unwrap_err();
    assert!(matches!(err, CaError::KeyMismatch), "{err}");

    // A leaf certificate is not a CA.
    let ca = test_ca();
    let leaf = crate::testing::valid_leaf(&ca, &id("a", "b")).unwrap();
    let err = CertificateAuthority::from_pem_with_trust_domain(
        TD,
        &leaf.chain_pem,
        &leaf.key_pem,
        Some(&ca.trust_bundle().to_pem()),
    )
    .unwrap_err();
    assert!(matches!(err, CaError::NotCa(_)), "{err}");

    // A CA certificate without a spiffe:// URI SAN needs an explicit trust domain.
    let err = CertificateAuthority::from_pem(&pki.root_pem, "", None).unwrap_err();
    assert!(matches!(err, CaError::NoTrustDomain), "{err}");
}

#[test]
fn add_trust_roots_for_rotation() {
    let mut ca = test_ca();
    let next = test_ca();
    ca.add_trust_roots_pem(&next.trust_bundle().to_pem())
        .unwrap();
    assert_eq!(ca.trust_bundle().roots().len(), 2);
    // Adding again is idempotent.
    ca.add_trust_roots_pem(&next.trust_bundle().to_pem())
        .unwrap();
    assert_eq!(ca.trust_bundle().roots().len(), 2);
    // A leaf is not a root.
    let leaf = crate::testing::valid_leaf(&ca, &id("a", "b")).unwrap();
    assert!(ca.add_trust_roots_pem(&leaf.chain_pem).is_err());
    // PEM round trip of the bundle.
    let bundle = ca.trust_bundle();
    assert_eq!(TrustBundle::from_pem(&bundle.to_pem()).unwrap(), bundle);
    assert_eq!(
        TrustBundle::from_pem("").unwrap_err().reason(),
        "empty-bundle"
    );
}

/// A CSR from a key of its own that asks for everything it should not get.
fn greedy_csr(key: &KeyPair) -> Vec<u8> {
    let mut p = CertificateParams::default();
    p.distinguished_name.push(
        DnType::CommonName,
        "spiffe://cluster.local/ns/kube-system/sa/admin",
    );
    p.subject_alt_names = vec![
        SanType::URI(
            Ia5String::try_from("spiffe://cluster.local/ns/kube-system/sa/admin").unwrap(),
        ),
        SanType::DnsName(Ia5String::try_from("admin.example").unwrap()),
    ];
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::CodeSigning];
    p.serialize_request(key).unwrap().der().to_vec()
}

#[test]
fn sign_csr_issues_exactly_the_given_identity() {
    let ca = test_ca();
    let key = KeyPair::generate().unwrap();
    let want = id("default", "web");
    let before = SystemTime::now();
    let chain = ca
        .sign_csr(&greedy_csr(&key), &want, Duration::from_secs(10))
        .unwrap();
    assert_eq!(chain.len(), 1, "root-signed: leaf only");

    let (_, cert) = x509_parser::parse_x509_certificate(&chain[0]).unwrap();
    // The CSR's key is certified…
    assert_eq!(
        cert.public_key().raw,
        rcgen::PublicKeyData::subject_public_key_info(&key).as_slice()
    );
    // …with exactly one URI SAN = id and nothing else the CSR asked for.
    let san = cert.subject_alternative_name().unwrap().unwrap();
    let names: Vec<_> = san.value.general_names.iter().collect();
    assert_eq!(names.len(), 1);
    assert!(matches!(names[0], GeneralName::URI(u) if *u == want.to_string()));
    assert_eq!(cert.subject().iter().count(), 0, "CSR subject ignored");
    let bc = cert.basic_constraints().unwrap().unwrap();
    assert!(bc.critical && !bc.value.ca);
    let ku = cert.key_usage().unwrap().unwrap();
    assert!(ku.critical);
    assert!(ku.value.digital_signature());
    assert!(!ku.value.key_cert_sign() && !ku.value.crl_sign());
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth && !eku.code_signing);
    assert_eq!(check_svid_leaf(&chain[0]).unwrap(), want);

    // Lifetime: notAfter = now + 10 s, notBefore = now - 60 s (whole seconds, so allow 2 s).
    let info = SvidInfo::from_der(&chain[0]).unwrap();
    let secs = |t: SystemTime| t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs() as i64;
    let now = secs(before);
    assert!((secs(info.not_after) - (now + 10)).abs() <= 2, "{info:?}");
    assert!((secs(info.not_before) - (now - 60)).abs() <= 2, "{info:?}");
    assert_eq!(info.spiffe_id, want);
    assert!(info.issuer.contains("Vigil root CA"), "{}", info.issuer);
    assert_eq!(info.serial_hex.len(), 32);

    // Serials are random.
    let again = ca
        .sign_csr(&greedy_csr(&key), &want, Duration::from_secs(10))
        .unwrap();
    assert_ne!(
        SvidInfo::from_der(&again[0]).unwrap().serial_hex,
        info.serial_hex
    );
}

#[test]
fn sign_csr_refuses_broken_signature_and_foreign_ids() {
    let ca = test_ca();
    let key = WorkloadKey::generate().unwrap();
    let mut csr = key.csr_der().unwrap();
    // The signature is the last field of the CSR: corrupt its last byte.
    let last = csr.len() - 1;
    csr[last] ^= 0x01;
    let err = ca
        .sign_csr(&csr, &id("a", "b"), Duration::from_secs(60))
        .unwrap_err();
    assert!(matches!(err, CaError::CsrSignature), "{err}");

    let err = ca
        .sign_csr(b"garbage", &id("a", "b"), Duration::from_secs(60))
        .unwrap_err();
    assert!(matches!(err, CaError::Csr(_)), "{err}");

    let good = key.csr_der().unwrap();
    let foreign = SpiffeId::workload("other.td", "a", "b").unwrap();
    let err = ca
        .sign_csr(&good, &foreign, Duration::from_secs(60))
        .unwrap_err();
    assert!(matches!(err, CaError::Identity { .. }), "{err}");
    let err = ca
        .sign_csr(&good, &id("a", "b"), Duration::ZERO)
        .unwrap_err();
    assert!(matches!(err, CaError::Lifetime(_)), "{err}");
}

#[test]
fn lifetime_is_capped_at_ca_expiry() {
    let ca = test_ca();
    let key = WorkloadKey::generate().unwrap();
    let chain = ca
        .sign_csr(
            &key.csr_der().unwrap(),
            &id("a", "b"),
            Duration::from_secs(100 * 365 * 24 * 3600),
        )
        .unwrap();
    let info = SvidInfo::from_der(&chain[0]).unwrap();
    assert!(info.not_after <= ca.not_after());
}

#[test]
fn issue_own_carries_dns_names_and_one_uri() {
    let ca = test_ca();
    let own = SpiffeId::parse("spiffe://cluster.local/ns/vigil-system/sa/vigil").unwrap();
    let names = vec![
        "vigil.vigil-system.svc".to_string(),
        "localhost".to_string(),
    ];
    let ck = ca
        .issue_own(&own, &names, Duration::from_secs(3600))
        .unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(&ck.cert[0]).unwrap();
    let san = cert.subject_alternative_name().unwrap().unwrap();
    let uris = san
        .value
        .general_names
        .iter()
        .filter(|n| matches!(n, GeneralName::URI(_)))
        .count();
    let dns: Vec<_> = san
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(d) => Some(d.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(uris, 1);
    assert_eq!(dns, names);
    assert_eq!(check_svid_leaf(&ck.cert[0]).unwrap(), own);
    ck.keys_match().unwrap();

    assert!(matches!(
        ca.issue_own(&own, &["not a name!".into()], Duration::from_secs(60)),
        Err(CaError::DnsName(_))
    ));
}

#[test]
fn leaf_rules_name_the_rule() {
    let ca = test_ca();
    let me = id("a", "b");
    let two = crate::testing::two_uri_sans_leaf(&ca, &me, &id("c", "d")).unwrap();
    let as_ca = crate::testing::ca_as_leaf(&ca, &me).unwrap();
    let first = |c: &crate::testing::TestCredential| c.chain_der()[0].clone();
    assert_eq!(
        check_svid_leaf(&first(&two)).unwrap_err().reason(),
        "several-uri-sans"
    );
    assert_eq!(
        check_svid_leaf(&first(&as_ca)).unwrap_err().reason(),
        "ca-as-leaf"
    );
    // A root has no leaf business either.
    assert_eq!(
        check_svid_leaf(&ca.trust_bundle().roots()[0])
            .unwrap_err()
            .reason(),
        "ca-as-leaf"
    );
    // No URI SAN at all.
    let plain = rcgen::generate_simple_self_signed(vec!["x.test".to_string()]).unwrap();
    let mut p = CertificateParams::new(vec!["x.test".to_string()]).unwrap();
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let no_uri = p.self_signed(&plain.signing_key).unwrap();
    assert_eq!(
        check_svid_leaf(no_uri.der()).unwrap_err().reason(),
        "no-uri-san"
    );
    // No keyUsage.
    assert_eq!(
        check_svid_leaf(plain.cert.der()).unwrap_err().reason(),
        "bad-key-usage"
    );
    // A URI SAN that is not a SPIFFE ID.
    let mut p = CertificateParams::default();
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.subject_alt_names = vec![SanType::URI(
        Ia5String::try_from("https://x.test/a").unwrap(),
    )];
    let https = p.self_signed(&plain.signing_key).unwrap();
    assert_eq!(
        check_svid_leaf(https.der()).unwrap_err().reason(),
        "not-spiffe"
    );
    // The chain PEM helper writes parseable PEM.
    assert_eq!(
        TrustBundle::from_pem(&certs_to_pem(&two.chain_der()))
            .unwrap()
            .roots()
            .len(),
        1
    );
}

#[test]
fn testing_credentials_write_key_0600() {
    let ca = test_ca();
    let dir = tempfile::tempdir().unwrap();
    let cred = crate::testing::expired_leaf(&ca, &id("a", "b")).unwrap();
    let (cert, key) = cred.write_to(dir.path(), "expired").unwrap();
    assert_eq!(mode(&key), 0o600);
    assert!(std::fs::read_to_string(cert)
        .unwrap()
        .contains("BEGIN CERTIFICATE"));
    let info = SvidInfo::from_der(&cred.chain_der()[0]).unwrap();
    assert!(info.not_after < SystemTime::now());
}

#[test]
fn an_svid_names_its_workload_for_peers_but_its_identity_stays_the_uri() {
    let ca = test_ca();
    let key = WorkloadKey::generate().unwrap();
    let wid = id("shop", "web");
    let named = ca
        .sign_csr_for_workload(
            &key.csr_der().unwrap(),
            &wid,
            "web-7f9c",
            Duration::from_secs(60),
        )
        .unwrap();
    verify_chain(&named, &ca.trust_bundle()).unwrap();
    assert_eq!(
        crate::peer_identity(&named).unwrap(),
        (wid.clone(), "web-7f9c".to_string())
    );
    assert_eq!(check_svid_leaf(&named[0]).unwrap(), wid);

    // Without a workload the subject stays empty, and peers read no name.
    let bare = ca
        .sign_csr(&key.csr_der().unwrap(), &wid, Duration::from_secs(60))
        .unwrap();
    assert!(crate::svid::parse_cert(&bare[0])
        .unwrap()
        .subject()
        .iter()
        .next()
        .is_none());
    assert_eq!(crate::peer_identity(&bare).unwrap(), (wid, String::new()));
}
