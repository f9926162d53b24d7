//! Rotating the CA of a CA directory (`<data-dir>/ca`) while the mesh runs: a new root (or
//! an operator's intermediate) is staged and trusted beside the old one, then becomes the
//! signer while the old root is still trusted, then the old root is retired. Every step is
//! a file operation on the directory, which the control plane polls and applies live; the
//! files say which phase the directory is in, so a restart resumes where it stopped.
//!
//! | phase | files besides `ca.pem` / `ca-key.pem` | signs | trusted |
//! |---|---|---|---|
//! | steady | none | current | current |
//! | staged | `next.pem`, `next-key.pem` | current | current, next |
//! | issuing | `previous.pem` | new (now `ca.pem`) | new, previous |
//!
//! Activation deletes the old CA key at once: nothing needs it once the new one signs, and
//! certificates it issued stay valid (and trusted) until they expire or the old root is
//! retired.

use std::fs;
use std::path::{Path, PathBuf};

use rustls_pki_types::CertificateDer;

use crate::ca::{check_key_file_mode, write_atomic, CaError, CertificateAuthority};
use crate::ca::{CA_CERT_FILE, CA_KEY_FILE};
use crate::svid::parse_cert;
use crate::trust::{certs_from_pem, TrustBundle};

/// The staged CA certificate (with any chain after it).
pub const NEXT_CERT_FILE: &str = "next.pem";
/// The staged CA key (mode 0600).
pub const NEXT_KEY_FILE: &str = "next-key.pem";
/// The retired signer's certificate chain, still trusted until the rotation ends.
pub const PREVIOUS_CERT_FILE: &str = "previous.pem";

/// Where a CA directory is in a rotation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RotationPhase {
    /// One CA signs and is the only one trusted.
    Steady,
    /// A next CA is trusted beside the current one, which still signs.
    Staged,
    /// The new CA signs; the previous one is still trusted, for certificates it issued.
    Issuing,
}

impl RotationPhase {
    /// `steady`, `staged` or `issuing`.
    pub fn as_str(self) -> &'static str {
        match self {
            RotationPhase::Steady => "steady",
            RotationPhase::Staged => "staged",
            RotationPhase::Issuing => "issuing",
        }
    }
}

/// A CA directory as loaded: the CA that signs, trusting every root of the phase.
pub struct LoadedCa {
    /// Signs with the current key; its trust bundle holds the signing root first.
    pub ca: CertificateAuthority,
    /// Where the rotation stands.
    pub phase: RotationPhase,
    /// Names of the trusted roots (see [`root_name`]), the signing one first.
    pub roots: Vec<String>,
    /// Name of the certificate that signs SVIDs: the operator's intermediate, else the
    /// first root.
    pub signer: String,
}

/// A CA directory of one trust domain.
#[derive(Clone, Debug)]
pub struct CaDirectory {
    dir: PathBuf,
    trust_domain: String,
}

impl CaDirectory {
    /// The CA directory `dir` for `trust_domain` (created with a new root on first load).
    pub fn new(dir: &Path, trust_domain: &str) -> CaDirectory {
        CaDirectory {
            dir: dir.to_owned(),
            trust_domain: trust_domain.to_owned(),
        }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn exists(&self, name: &str) -> Result<bool, CaError> {
        let path = self.file(name);
        path.try_exists()
            .map_err(|source| CaError::Io { path, source })
    }

    fn read(&self, name: &str) -> Result<String, CaError> {
        let path = self.file(name);
        fs::read_to_string(&path).map_err(|source| CaError::Io { path, source })
    }

    /// Loads the CA of the directory's phase, first finishing an activation a crash cut
    /// short. On first use, generates a root as [`CertificateAuthority::load_or_generate`].
    pub fn load(&self) -> Result<LoadedCa, CaError> {
        self.resume()?;
        let mut ca = CertificateAuthority::load_or_generate(&self.dir, &self.trust_domain)?;
        let phase = self.phase()?;
        match phase {
            RotationPhase::Steady => {}
            RotationPhase::Staged => {
                let next = self.next_ca()?;
                ca.add_roots(next.trust_bundle().roots())?;
            }
            RotationPhase::Issuing => {
                let previous =
                    certs_from_pem(&self.read(PREVIOUS_CERT_FILE)?).map_err(CaError::Pem)?;
                ca.add_roots(&previous)?;
            }
        }
        let roots: Vec<String> = ca.trust_bundle().roots().iter().map(root_name).collect();
        let signer = ca
            .intermediates()
            .first()
            .map(root_name)
            .unwrap_or_else(|| roots.first().cloned().unwrap_or_default());
        Ok(LoadedCa {
            ca,
            phase,
            roots,
            signer,
        })
    }

    /// The phase the directory's files say it is in.
    pub fn phase(&self) -> Result<RotationPhase, CaError> {
        match (
            self.exists(NEXT_CERT_FILE)?,
            self.exists(PREVIOUS_CERT_FILE)?,
        ) {
            (false, false) => Ok(RotationPhase::Steady),
            (true, false) => Ok(RotationPhase::Staged),
            (false, true) => Ok(RotationPhase::Issuing),
            (true, true) => Err(CaError::Chain(format!(
                "{} holds both {NEXT_CERT_FILE} and {PREVIOUS_CERT_FILE}: finish the rotation under way (`vigil ca rotate --step retire`) before staging another",
                self.dir.display()
            ))),
        }
    }

    /// What the directory's CA files look like from outside (size, modification time and
    /// inode of each), to notice any change cheaply: every step writes or renames a file,
    /// and nothing is read, so no key material is copied to notice it.
    pub fn fingerprint(&self) -> Vec<(u64, i64, i64, u64)> {
        use std::os::unix::fs::MetadataExt;
        [
            CA_CERT_FILE,
            CA_KEY_FILE,
            NEXT_CERT_FILE,
            NEXT_KEY_FILE,
            PREVIOUS_CERT_FILE,
        ]
        .iter()
        .map(|name| match fs::metadata(self.file(name)) {
            Ok(m) => (m.len(), m.mtime(), m.mtime_nsec(), m.ino()),
            Err(_) => (0, 0, 0, 0),
        })
        .collect()
    }

    /// Stages a next CA: a new self-signed root, or the operator's `(certificate chain PEM,
    /// key PEM)` (an intermediate with its chain up to its root). It is trusted at once and
    /// signs after [`activate`](Self::activate). Returns the next CA's root names.
    pub fn stage(&self, operator: Option<(&str, &str)>) -> Result<Vec<String>, CaError> {
        let current = self.load()?;
        if current.phase != RotationPhase::Steady {
            return Err(CaError::Chain(format!(
                "a rotation is already under way ({}): run `vigil ca rotate --step {}` to go on",
                current.phase.as_str(),
                if current.phase == RotationPhase::Staged {
                    "activate"
                } else {
                    "retire"
                }
            )));
        }
        let (cert_pem, key_pem) = match operator {
            Some((cert, key)) => (cert.to_owned(), key.to_owned()),
            None => {
                let (_, cert, key) = CertificateAuthority::generate_inner(&self.trust_domain)?;
                (cert, key)
            }
        };
        let next = CertificateAuthority::from_pem_with_trust_domain(
            &self.trust_domain,
            &cert_pem,
            &key_pem,
            None,
        )?;
        if next.trust_bundle().roots() == current.ca.trust_bundle().roots()
            && next.intermediates() == current.ca.intermediates()
        {
            return Err(CaError::Chain(
                "the staged CA is the one already signing".into(),
            ));
        }
        // Key first, as when generating: a certificate without its key never appears.
        write_atomic(&self.file(NEXT_KEY_FILE), key_pem.as_bytes(), 0o600)?;
        write_atomic(&self.file(NEXT_CERT_FILE), cert_pem.as_bytes(), 0o644)?;
        Ok(next.trust_bundle().roots().iter().map(root_name).collect())
    }

    /// Makes the staged CA the signer; the current one's chain stays trusted as
    /// `previous.pem` and its key is deleted.
    pub fn activate(&self) -> Result<(), CaError> {
        if self.phase()? != RotationPhase::Staged {
            return Err(CaError::Chain(format!(
                "nothing is staged in {}: run `vigil ca rotate --step stage` first",
                self.dir.display()
            )));
        }
        self.next_ca()?;
        let current = self.read(CA_CERT_FILE)?;
        write_atomic(&self.file(PREVIOUS_CERT_FILE), current.as_bytes(), 0o644)?;
        self.resume()
    }

    /// Stops trusting the previous CA: ends the rotation.
    pub fn retire(&self) -> Result<(), CaError> {
        if self.phase()? != RotationPhase::Issuing {
            return Err(CaError::Chain(format!(
                "no previous CA to retire in {}: activate a staged one first",
                self.dir.display()
            )));
        }
        let path = self.file(PREVIOUS_CERT_FILE);
        fs::remove_file(&path).map_err(|source| CaError::Io { path, source })
    }

    /// Drops a staged CA that has not been activated (its root stops being trusted).
    pub fn abort(&self) -> Result<(), CaError> {
        if self.phase()? != RotationPhase::Staged {
            return Err(CaError::Chain(
                "only a staged CA can be dropped; once activated, finish with --step retire".into(),
            ));
        }
        for name in [NEXT_CERT_FILE, NEXT_KEY_FILE] {
            let path = self.file(name);
            fs::remove_file(&path).map_err(|source| CaError::Io { path, source })?;
        }
        Ok(())
    }

    /// The staged CA, checked: its key file is private and matches its certificate.
    fn next_ca(&self) -> Result<CertificateAuthority, CaError> {
        let key = self.file(NEXT_KEY_FILE);
        check_key_file_mode(&key)?;
        CertificateAuthority::from_pem_with_trust_domain(
            &self.trust_domain,
            &self.read(NEXT_CERT_FILE)?,
            &self.read(NEXT_KEY_FILE)?,
            None,
        )
    }

    /// Finishes an activation: once `previous.pem` is written, the next files replace the
    /// current ones (key first). Run on every load, so a crash between the renames heals.
    fn resume(&self) -> Result<(), CaError> {
        if !self.exists(PREVIOUS_CERT_FILE)? {
            return Ok(());
        }
        for (from, to) in [(NEXT_KEY_FILE, CA_KEY_FILE), (NEXT_CERT_FILE, CA_CERT_FILE)] {
            if self.exists(from)? {
                let (from, to) = (self.file(from), self.file(to));
                fs::rename(&from, &to).map_err(|source| CaError::Io { path: to, source })?;
            }
        }
        Ok(())
    }
}

/// A root as operators and `/certs` name it: its subject's common name (Vigil's roots
/// carry a random tag there, so two roots of one trust domain never share a name), else
/// its whole subject.
pub fn root_name(cert: &CertificateDer<'_>) -> String {
    match parse_cert(cert) {
        Ok(c) => c
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_string)
            .unwrap_or_else(|| c.subject().to_string()),
        Err(_) => "<unparsable certificate>".into(),
    }
}

/// The name of the root in `bundle` that `chain` (leaf first, without the root) leads to:
/// the root whose subject issued the chain's last certificate. Empty when none does.
pub fn chain_root(chain: &[CertificateDer<'_>], bundle: &TrustBundle) -> String {
    let Some(last) = chain.last().and_then(|c| parse_cert(c).ok()) else {
        return String::new();
    };
    let issuer = last.issuer().as_raw();
    bundle
        .roots()
        .iter()
        .find(|r| parse_cert(r).is_ok_and(|r| r.subject().as_raw() == issuer))
        .map(root_name)
        .unwrap_or_default()
}
