use std::time::Duration;

use rustls_pki_types::CertificateDer;

use super::ca::{operator_pki, verify_chain};
use super::{id, TD};
use crate::{
    CaDirectory, CertificateAuthority, RotationPhase, WorkloadKey, CA_KEY_FILE, NEXT_CERT_FILE,
    NEXT_KEY_FILE, PREVIOUS_CERT_FILE,
};

fn issue(ca: &CertificateAuthority) -> Vec<CertificateDer<'static>> {
    let key = WorkloadKey::generate().unwrap();
    ca.sign_csr(
        &key.csr_der().unwrap(),
        &id("shop", "web"),
        Duration::from_secs(600),
    )
    .unwrap()
}

#[test]
fn a_rotation_trusts_both_roots_while_certificates_move_to_the_new_one() {
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = CaDirectory::new(&dir.path().join("ca"), TD);
    let first = ca_dir.load().unwrap();
    assert_eq!(first.phase, RotationPhase::Steady);
    let old_svid = issue(&first.ca);

    // Staged: the next root is trusted, the old one still signs.
    let next_roots = ca_dir.stage(None).unwrap();
    let staged = ca_dir.load().unwrap();
    assert_eq!(staged.phase, RotationPhase::Staged);
    assert_eq!(staged.roots.len(), 2);
    assert_eq!(
        staged.roots[0], first.roots[0],
        "the signing root comes first"
    );
    assert_eq!(staged.roots[1], next_roots[0]);
    assert_ne!(next_roots[0], first.roots[0]);
    let mode = {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(ca_dir.path().join(NEXT_KEY_FILE))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode, 0o600, "the staged key is private");
    verify_chain(&issue(&staged.ca), &first.ca.trust_bundle()).unwrap();
    assert!(ca_dir.stage(None).is_err(), "one rotation at a time");

    // Issuing: the new root signs; certificates of the old one still verify.
    ca_dir.activate().unwrap();
    let issuing = ca_dir.load().unwrap();
    assert_eq!(issuing.phase, RotationPhase::Issuing);
    assert_eq!(
        issuing.roots,
        vec![next_roots[0].clone(), first.roots[0].clone()]
    );
    let new_svid = issue(&issuing.ca);
    let bundle = issuing.ca.trust_bundle();
    verify_chain(&new_svid, &bundle).unwrap();
    verify_chain(&old_svid, &bundle).unwrap();
    assert!(verify_chain(&new_svid, &first.ca.trust_bundle()).is_err());
    assert!(!ca_dir.path().join(NEXT_CERT_FILE).exists());

    // Retired: only the new root is trusted.
    ca_dir.retire().unwrap();
    let done = ca_dir.load().unwrap();
    assert_eq!(done.phase, RotationPhase::Steady);
    assert_eq!(done.roots, vec![next_roots[0].clone()]);
    verify_chain(&new_svid, &done.ca.trust_bundle()).unwrap();
    assert!(verify_chain(&old_svid, &done.ca.trust_bundle()).is_err());
    assert!(ca_dir.retire().is_err() && ca_dir.activate().is_err());
}

#[test]
fn an_activation_cut_short_by_a_crash_is_finished_on_the_next_load() {
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = CaDirectory::new(dir.path(), TD);
    let first = ca_dir.load().unwrap();
    let next_roots = ca_dir.stage(None).unwrap();
    // The crash: previous.pem written and the key moved, the certificate not yet.
    std::fs::copy(
        dir.path().join("ca.pem"),
        dir.path().join(PREVIOUS_CERT_FILE),
    )
    .unwrap();
    std::fs::rename(dir.path().join(NEXT_KEY_FILE), dir.path().join(CA_KEY_FILE)).unwrap();
    let healed = ca_dir.load().unwrap();
    assert_eq!(healed.phase, RotationPhase::Issuing);
    assert_eq!(
        healed.roots,
        vec![next_roots[0].clone(), first.roots[0].clone()]
    );
}

#[test]
fn an_operator_intermediate_is_rotated_in_the_same_way_and_a_staged_ca_can_be_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = CaDirectory::new(dir.path(), TD);
    let first = ca_dir.load().unwrap();
    let pki = operator_pki(TD);
    let chain = format!("{}{}", pki.inter_pem, pki.root_pem);
    let roots = ca_dir.stage(Some((&chain, &pki.inter_key_pem))).unwrap();
    assert_eq!(roots, vec!["Corp Root".to_string()]);
    ca_dir.abort().unwrap();
    assert_eq!(ca_dir.load().unwrap().roots, first.roots, "dropped");

    ca_dir.stage(Some((&chain, &pki.inter_key_pem))).unwrap();
    ca_dir.activate().unwrap();
    let issuing = ca_dir.load().unwrap();
    let svid = issue(&issuing.ca);
    assert_eq!(svid[1], pki.inter_der, "the intermediate follows the leaf");
    assert_eq!(issuing.ca.trust_bundle().roots()[0], pki.root_der);
    verify_chain(&svid, &issuing.ca.trust_bundle()).unwrap();
    ca_dir.retire().unwrap();
    assert_eq!(ca_dir.load().unwrap().roots, vec!["Corp Root".to_string()]);
    // A key that does not match is refused before anything is written.
    let other = operator_pki(TD);
    assert!(ca_dir.stage(Some((&chain, &other.inter_key_pem))).is_err());
    assert!(!dir.path().join(NEXT_CERT_FILE).exists());
}
