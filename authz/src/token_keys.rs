//! Keys and signature checks for the `io.jwt.*` builtins (`tokens.rs`).
//!
//! Keys are read as OPA reads them (Go's `pem.Decode` and `x509` parsers, the JWK library of
//! `jwsbb`), and a signature verifies here exactly where it does in Go. RSA signatures of keys
//! of 2048 to 8192 bits, Ed25519 and HMAC go through the `jsonwebtoken` crate on `ring`, the
//! crypto Vigil uses for TLS; RSA keys of 1024 to 2047 bits (which Go still takes and ring
//! does not) and PSS signatures of any salt length (`verify_ps*`, as Go's `rsa.VerifyPSS`)
//! through the `rsa` crate; ECDSA through the RustCrypto curves, whose prehash
//! verification matches Go's for every pairing of curve and hash a policy can ask for (an
//! ES256 signature checked with a P-384 key, ES512 on P-521). What neither can check the way
//! Go does (an RSA modulus over 8192 bits, SHA-256 with a P-521 key) fails the call, so the
//! decision fails closed rather than differing from OPA's.

use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey};
use x509_parser::prelude::FromDer as _;

// ---------------------------------------------------------------------------------------------
// Keys

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hash {
    Sha256,
    Sha384,
    Sha512,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Curve {
    P256,
    P384,
    P521,
}

impl Curve {
    fn size(self) -> usize {
        match self {
            Curve::P256 => 32,
            Curve::P384 => 48,
            Curve::P521 => 66,
        }
    }
}

pub(crate) enum PublicKey {
    Rsa { modulus: Vec<u8>, exponent: Vec<u8> },
    Ec { curve: Curve, point: Vec<u8> },
    Ed25519(Vec<u8>),
    Secret(Vec<u8>),
}

/// A key to try, with the `alg` and `kid` a JWKS gave it (empty for a PEM key).
pub(crate) struct VerificationKey {
    pub key: PublicKey,
    pub alg: String,
    pub kid: String,
}

/// JWS algorithms OPA knows; a JWKS key naming another one is skipped.
const TOKEN_ALGORITHMS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "HS256",
    "HS384", "HS512", "EdDSA",
];

/// OPA's `getKeysFromCertOrJWK`: one PEM certificate or public key, else a JWK or JWKS.
pub(crate) fn keys_from_cert_or_jwk(text: &str) -> Result<Vec<VerificationKey>, String> {
    if let Some(block) = pem_block(text) {
        if !block.rest.is_empty() {
            return Err("extra data after a PEM certificate block".into());
        }
        let key = match block.label.as_str() {
            "CERTIFICATE" => {
                let (rest, cert) = x509_parser::parse_x509_certificate(&block.der)
                    .map_err(|e| format!("failed to parse a PEM certificate: {e}"))?;
                if !rest.is_empty() {
                    return Err("failed to parse a PEM certificate: trailing data".into());
                }
                spki_key(cert.public_key())?
            }
            "PUBLIC KEY" => {
                let (rest, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(&block.der)
                    .map_err(|e| format!("failed to parse a PEM public key: {e}"))?;
                if !rest.is_empty() {
                    return Err("failed to parse a PEM public key: trailing data".into());
                }
                spki_key(&spki)?
            }
            _ => return Err("failed to extract a Key from the PEM certificate".into()),
        };
        return Ok(vec![VerificationKey {
            key,
            alg: String::new(),
            kid: String::new(),
        }]);
    }
    jwk_keys(text)
}

struct PemBlock {
    label: String,
    der: Vec<u8>,
    rest: String,
}

/// Go's `pem.Decode`, for the first well-formed block: its type, bytes, and the text after
/// its end line.
fn pem_block(text: &str) -> Option<PemBlock> {
    const BEGIN: &str = "-----BEGIN ";
    let mut search = 0;
    loop {
        let start = match text[search..].find(BEGIN) {
            Some(i) => search + i,
            None => return None,
        };
        search = start + BEGIN.len();
        if start != 0 && text.as_bytes()[start - 1] != b'\n' {
            continue;
        }
        let after = &text[start + BEGIN.len()..];
        let (type_line, body) = after.split_once('\n').unwrap_or((after, ""));
        let type_line = type_line.trim_end_matches([' ', '\t', '\r']);
        let Some(label) = type_line.strip_suffix("-----") else {
            continue;
        };
        let end_marker = format!("-----END {label}-----");
        let (content, tail) = if let Some(tail) = body.strip_prefix(&end_marker) {
            ("", tail)
        } else if let Some(i) = body.find(&format!("\n{end_marker}")) {
            (&body[..i], &body[i + 1 + end_marker.len()..])
        } else {
            continue;
        };
        // Headers (`Proc-Type: ...`) are not used by keys or certificates.
        let encoded: String = content
            .lines()
            .filter(|line| !line.contains(':'))
            .flat_map(|line| line.chars())
            .filter(|c| !c.is_ascii_whitespace())
            .collect();
        let Ok(der) = base64::engine::general_purpose::STANDARD.decode(encoded) else {
            continue;
        };
        // The rest of the end line belongs to the block.
        let rest = match tail.split_once('\n') {
            Some((line, rest)) if line.trim_matches([' ', '\t', '\r']).is_empty() => rest,
            None if tail.trim_matches([' ', '\t', '\r']).is_empty() => "",
            _ => continue,
        };
        return Some(PemBlock {
            label: label.to_string(),
            der,
            rest: rest.to_string(),
        });
    }
}

const OID_RSA: &str = "1.2.840.113549.1.1.1";
const OID_EC: &str = "1.2.840.10045.2.1";
const OID_ED25519: &str = "1.3.101.112";

/// The key of an X.509 SubjectPublicKeyInfo, as Go's `x509.ParsePKIXPublicKey` reads it.
fn spki_key(spki: &x509_parser::x509::SubjectPublicKeyInfo) -> Result<PublicKey, String> {
    let algorithm = spki.algorithm.algorithm.to_id_string();
    let bits = spki.subject_public_key.data.as_ref();
    match algorithm.as_str() {
        OID_RSA => match spki.parsed() {
            Ok(x509_parser::public_key::PublicKey::RSA(rsa)) => Ok(PublicKey::Rsa {
                modulus: rsa.modulus.to_vec(),
                exponent: rsa.exponent.to_vec(),
            }),
            _ => Err("x509: failed to parse RSA public key".into()),
        },
        OID_EC => {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .map(|oid| oid.to_id_string());
            let curve = match curve.as_deref() {
                Some("1.2.840.10045.3.1.7") => Curve::P256,
                Some("1.3.132.0.34") => Curve::P384,
                Some("1.3.132.0.35") => Curve::P521,
                _ => return Err("x509: unsupported elliptic curve".into()),
            };
            ec_point(curve, bits.to_vec())
        }
        OID_ED25519 if bits.len() == 32 => Ok(PublicKey::Ed25519(bits.to_vec())),
        _ => Err("x509: unknown public key algorithm".into()),
    }
}

/// An uncompressed point of the curve's size (Go rejects compressed points in certificates).
fn ec_point(curve: Curve, point: Vec<u8>) -> Result<PublicKey, String> {
    if point.len() != 1 + 2 * curve.size() || point[0] != 4 {
        return Err("x509: failed to unmarshal elliptic curve point".into());
    }
    Ok(PublicKey::Ec { curve, point })
}

/// A JWK or a JWKS (`{"keys": [...]}`), as OPA's JWK library reads it.
fn jwk_keys(text: &str) -> Result<Vec<VerificationKey>, String> {
    let fail = |e: String| format!("failed to parse a JWK key (set): {e}");
    let json: serde_json::Value = serde_json::from_str(text).map_err(|e| fail(e.to_string()))?;
    let entries: Vec<&serde_json::Value> = match json.get("keys") {
        Some(serde_json::Value::Array(keys)) => keys.iter().collect(),
        Some(_) => return Err(fail("keys must be an array".into())),
        None if json.is_object() => vec![&json],
        None => return Err(fail("a JWK must be an object".into())),
    };
    let mut keys = Vec::with_capacity(entries.len());
    for entry in entries {
        let key = jwk_key(entry).map_err(fail)?;
        let alg = match entry.get("alg") {
            None => String::new(),
            Some(serde_json::Value::String(alg)) => alg.clone(),
            Some(_) => return Err(fail("alg must be a string".into())),
        };
        if !alg.is_empty() && !TOKEN_ALGORITHMS.contains(&alg.as_str()) {
            continue;
        }
        let kid = match entry.get("kid") {
            None => String::new(),
            Some(serde_json::Value::String(kid)) => kid.clone(),
            Some(_) => return Err(fail("kid must be a string".into())),
        };
        keys.push(VerificationKey { key, alg, kid });
    }
    Ok(keys)
}

fn jwk_key(entry: &serde_json::Value) -> Result<PublicKey, String> {
    let member = |name: &str| -> Result<Vec<u8>, String> {
        let text = entry
            .get(name)
            .and_then(|v| v.as_str())
            .ok_or_else(|| format!("required field {name} is missing"))?;
        jwk_base64(text).map_err(|e| format!("failed to decode {name}: {e}"))
    };
    match entry.get("kty").and_then(|v| v.as_str()) {
        Some("RSA") => Ok(PublicKey::Rsa {
            modulus: member("n")?,
            exponent: member("e")?,
        }),
        Some("EC") => {
            let curve = match entry.get("crv").and_then(|v| v.as_str()) {
                Some("P-256") => Curve::P256,
                Some("P-384") => Curve::P384,
                Some("P-521") => Curve::P521,
                _ => return Err("unsupported curve".into()),
            };
            let (x, y) = (member("x")?, member("y")?);
            if x.len() > curve.size() || y.len() > curve.size() {
                return Err("invalid elliptic curve coordinates".into());
            }
            let mut point = vec![4u8];
            for coordinate in [x, y] {
                point.extend(std::iter::repeat_n(0, curve.size() - coordinate.len()));
                point.extend(coordinate);
            }
            Ok(PublicKey::Ec { curve, point })
        }
        Some("OKP") => match entry.get("crv").and_then(|v| v.as_str()) {
            Some("Ed25519") => Ok(PublicKey::Ed25519(member("x")?)),
            _ => Err("unsupported OKP curve".into()),
        },
        Some("oct") => Ok(PublicKey::Secret(member("k")?)),
        _ => Err("invalid key type".into()),
    }
}

/// JWK members are base64url without padding; OPA's library also takes padded and standard
/// base64.
fn jwk_base64(text: &str) -> Result<Vec<u8>, base64::DecodeError> {
    let unpadded = text.trim_end_matches('=');
    let normalized: String = unpadded
        .chars()
        .map(|c| match c {
            '+' => '-',
            '/' => '_',
            c => c,
        })
        .collect();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(normalized)
}

// ---------------------------------------------------------------------------------------------
// Signatures

#[derive(Clone, Copy)]
pub(crate) enum Scheme {
    Pkcs1(Hash),
    Pss(Hash),
    Ecdsa(Hash),
    Hmac(Hash),
    Ed25519,
}

impl Scheme {
    pub(crate) fn of_alg(alg: &str) -> Option<Scheme> {
        Some(match alg {
            "RS256" => Scheme::Pkcs1(Hash::Sha256),
            "RS384" => Scheme::Pkcs1(Hash::Sha384),
            "RS512" => Scheme::Pkcs1(Hash::Sha512),
            "PS256" => Scheme::Pss(Hash::Sha256),
            "PS384" => Scheme::Pss(Hash::Sha384),
            "PS512" => Scheme::Pss(Hash::Sha512),
            "ES256" => Scheme::Ecdsa(Hash::Sha256),
            "ES384" => Scheme::Ecdsa(Hash::Sha384),
            "ES512" => Scheme::Ecdsa(Hash::Sha512),
            "HS256" => Scheme::Hmac(Hash::Sha256),
            "HS384" => Scheme::Hmac(Hash::Sha384),
            "HS512" => Scheme::Hmac(Hash::Sha512),
            "EdDSA" => Scheme::Ed25519,
            _ => return None,
        })
    }
}

/// A key Vigil's crypto cannot check a signature with, where OPA's can: the call fails.
fn unsupported(what: &str) -> String {
    format!(
        "{what} is not supported by Vigil's JWT verification (ring); use P-256 or P-384 keys, \
         or RSA keys of 2048 to 8192 bits"
    )
}

/// Which of OPA's two verifiers checks a signature: `io.jwt.decode_verify` goes through
/// `jwsbb` (ECDSA r and s each exactly the curve's size, PSS salt as long as the hash), the
/// `io.jwt.verify_*` builtins through Go's `crypto` calls directly (the ECDSA signature split in
/// halves, any PSS salt length).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verifier {
    Jws,
    Builtin,
}

/// Whether `signature` over `message` verifies with `key`. `Ok(false)` wherever OPA's check
/// fails (wrong key type too); `Err` only where Vigil cannot tell.
pub(crate) fn check_signature(
    key: &PublicKey,
    scheme: Scheme,
    message: &[u8],
    signature: &[u8],
    verifier: Verifier,
) -> Result<bool, String> {
    let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(signature);
    match (scheme, key) {
        (Scheme::Pkcs1(hash) | Scheme::Pss(hash), PublicKey::Rsa { modulus, exponent }) => {
            let modulus = strip_zeros(modulus);
            let bits =
                modulus.len() * 8 - modulus.first().map_or(8, |b| b.leading_zeros()) as usize;
            // Go refuses keys under 1024 bits; ring takes 2048 to 8192 bits, the rsa crate
            // the keys between.
            if bits < 1024 {
                return Ok(false);
            }
            if bits < 2048 && !(matches!(scheme, Scheme::Pss(_)) && verifier == Verifier::Builtin) {
                return Ok(rsa_verify(
                    scheme, hash, modulus, exponent, message, signature,
                ));
            }
            if bits > 8192 {
                return Err(unsupported(&format!("an RSA key of {bits} bits")));
            }
            if matches!(scheme, Scheme::Pss(_)) && verifier == Verifier::Builtin {
                return Ok(pss_verify_any_salt(
                    hash, modulus, exponent, message, signature,
                ));
            }
            let algorithm = match (scheme, hash) {
                (Scheme::Pkcs1(_), Hash::Sha256) => Algorithm::RS256,
                (Scheme::Pkcs1(_), Hash::Sha384) => Algorithm::RS384,
                (Scheme::Pkcs1(_), Hash::Sha512) => Algorithm::RS512,
                (_, Hash::Sha256) => Algorithm::PS256,
                (_, Hash::Sha384) => Algorithm::PS384,
                (_, Hash::Sha512) => Algorithm::PS512,
            };
            let key = DecodingKey::from_rsa_raw_components(modulus, exponent);
            Ok(jsonwebtoken::crypto::verify(&encoded, message, &key, algorithm).unwrap_or(false))
        }
        (Scheme::Ecdsa(hash), PublicKey::Ec { curve, point }) => {
            let size = curve.size();
            let (r, s) = if verifier == Verifier::Jws {
                if signature.len() != 2 * size {
                    return Ok(false);
                }
                signature.split_at(size)
            } else {
                signature.split_at(signature.len() / 2)
            };
            let (r, s) = (strip_zeros(r), strip_zeros(s));
            if r.len() > size || s.len() > size {
                return Ok(false);
            }
            let mut fixed = vec![0u8; 2 * size];
            fixed[size - r.len()..size].copy_from_slice(r);
            fixed[2 * size - s.len()..].copy_from_slice(s);
            ecdsa_verify(*curve, point, hash, message, &fixed)
        }
        (Scheme::Hmac(hash), PublicKey::Secret(secret)) => {
            // jwsbb refuses an empty HMAC key.
            Ok(!secret.is_empty() && hmac_equal(hash, secret, message, signature))
        }
        (Scheme::Ed25519, PublicKey::Ed25519(raw)) => {
            let key = DecodingKey::from_ed_der(raw);
            Ok(
                jsonwebtoken::crypto::verify(&encoded, message, &key, Algorithm::EdDSA)
                    .unwrap_or(false),
            )
        }
        _ => Ok(false),
    }
}

/// ECDSA over the digest as Go computes it: the RustCrypto curves' prehash verification
/// truncates a longer digest to the curve's size, as Go's `hashToInt` does.
fn ecdsa_verify(
    curve: Curve,
    point: &[u8],
    hash: Hash,
    message: &[u8],
    fixed: &[u8],
) -> Result<bool, String> {
    use p256::ecdsa::signature::hazmat::PrehashVerifier as _;
    use sha2::Digest as _;
    let digest = match hash {
        Hash::Sha256 => sha2::Sha256::digest(message).to_vec(),
        Hash::Sha384 => sha2::Sha384::digest(message).to_vec(),
        Hash::Sha512 => sha2::Sha512::digest(message).to_vec(),
    };
    macro_rules! verify {
        ($curve:ident) => {{
            let (Ok(key), Ok(signature)) = (
                $curve::ecdsa::VerifyingKey::from_sec1_bytes(point),
                $curve::ecdsa::Signature::from_slice(fixed),
            ) else {
                return Ok(false);
            };
            Ok(key.verify_prehash(&digest, &signature).is_ok())
        }};
    }
    match curve {
        Curve::P256 => verify!(p256),
        Curve::P384 => verify!(p384),
        // RustCrypto wants a digest of at least half the field; Go takes any.
        Curve::P521 if hash == Hash::Sha256 => Err(unsupported("SHA-256 with a P-521 key")),
        Curve::P521 => verify!(p521),
    }
}

/// The public key of a JWK's or PEM's modulus and exponent, if one of at most `max_bits`.
fn rsa_public_key(modulus: &[u8], exponent: &[u8], max_bits: usize) -> Option<rsa::RsaPublicKey> {
    rsa::RsaPublicKey::new_with_max_size(
        rsa::BigUint::from_bytes_be(modulus),
        rsa::BigUint::from_bytes_be(exponent),
        max_bits,
    )
    .ok()
}

/// RSA keys of 1024 to 2047 bits, which Go still takes and ring does not.
fn rsa_verify(
    scheme: Scheme,
    hash: Hash,
    modulus: &[u8],
    exponent: &[u8],
    message: &[u8],
    signature: &[u8],
) -> bool {
    use rsa::signature::Verifier as _;
    let Some(key) = rsa_public_key(modulus, exponent, rsa::RsaPublicKey::MAX_SIZE) else {
        return false;
    };
    macro_rules! verify {
        ($verifying:ty, $signature:ty) => {{
            let Ok(signature) = <$signature>::try_from(signature) else {
                return false;
            };
            <$verifying>::new(key).verify(message, &signature).is_ok()
        }};
    }
    use rsa::{pkcs1v15, pss};
    match (scheme, hash) {
        (Scheme::Pkcs1(_), Hash::Sha256) => {
            verify!(pkcs1v15::VerifyingKey<sha2::Sha256>, pkcs1v15::Signature)
        }
        (Scheme::Pkcs1(_), Hash::Sha384) => {
            verify!(pkcs1v15::VerifyingKey<sha2::Sha384>, pkcs1v15::Signature)
        }
        (Scheme::Pkcs1(_), Hash::Sha512) => {
            verify!(pkcs1v15::VerifyingKey<sha2::Sha512>, pkcs1v15::Signature)
        }
        // The salt as long as the hash, as jwsbb and every JWT signer use.
        (_, Hash::Sha256) => verify!(pss::VerifyingKey<sha2::Sha256>, pss::Signature),
        (_, Hash::Sha384) => verify!(pss::VerifyingKey<sha2::Sha384>, pss::Signature),
        (_, Hash::Sha512) => verify!(pss::VerifyingKey<sha2::Sha512>, pss::Signature),
    }
}

/// Go's `rsa.VerifyPSS` with `PSSSaltLengthAuto` (what OPA's `verify_ps*` use): the salt length
/// is read from the encoded message (RFC 8017 9.1.2), where ring and the rsa crate want it
/// given.
fn pss_verify_any_salt(
    hash: Hash,
    modulus: &[u8],
    exponent: &[u8],
    message: &[u8],
    signature: &[u8],
) -> bool {
    let Some(key) = rsa_public_key(modulus, exponent, 8192) else {
        return false;
    };
    match hash {
        Hash::Sha256 => pss_auto::<sha2::Sha256>(&key, message, signature),
        Hash::Sha384 => pss_auto::<sha2::Sha384>(&key, message, signature),
        Hash::Sha512 => pss_auto::<sha2::Sha512>(&key, message, signature),
    }
}

fn pss_auto<D: sha2::Digest>(key: &rsa::RsaPublicKey, message: &[u8], signature: &[u8]) -> bool {
    use rsa::traits::PublicKeyParts as _;
    let size = key.size();
    let s = rsa::BigUint::from_bytes_be(signature);
    if signature.len() != size || &s >= key.n() {
        return false;
    }
    let Ok(m) = rsa::hazmat::rsa_encrypt(key, &s) else {
        return false;
    };
    let m = m.to_bytes_be();
    let mut em = vec![0u8; size.saturating_sub(m.len())];
    em.extend(m);
    let em_bits = key.n().bits() - 1;
    let em_len = em_bits.div_ceil(8);
    // Go encodes to the modulus size and drops leading zero bytes beyond emLen.
    while em.len() > em_len {
        if em[0] != 0 {
            return false;
        }
        em.remove(0);
    }
    let m_hash = D::digest(message);
    let h_len = m_hash.len();
    if em_len < h_len + 2 || em[em_len - 1] != 0xbc {
        return false;
    }
    let (db, rest) = em.split_at_mut(em_len - h_len - 1);
    let h = &rest[..h_len];
    let bit_mask: u8 = 0xff >> (8 * em_len - em_bits);
    if db[0] & !bit_mask != 0 {
        return false;
    }
    // DB = maskedDB xor MGF1(H).
    let mut counter = 0u32;
    let mut done = 0;
    while done < db.len() {
        let mut block = D::new();
        block.update(h);
        block.update(counter.to_be_bytes());
        let block = block.finalize();
        for (out, mask) in db[done..].iter_mut().zip(block.iter()) {
            *out ^= mask;
        }
        done += block.len();
        counter += 1;
    }
    db[0] &= bit_mask;
    let Some(ps_len) = db.iter().position(|b| *b == 0x01) else {
        return false;
    };
    if db[..ps_len].iter().any(|b| *b != 0) {
        return false;
    }
    let mut check = D::new();
    check.update([0u8; 8]);
    check.update(&m_hash);
    check.update(&db[ps_len + 1..]);
    check.finalize().as_slice() == h
}

fn strip_zeros(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    &bytes[start..]
}

pub(crate) fn hmac_equal(hash: Hash, key: &[u8], message: &[u8], signature: &[u8]) -> bool {
    fn check<M: hmac::Mac + hmac::digest::KeyInit>(key: &[u8], message: &[u8], sig: &[u8]) -> bool {
        match <M as hmac::digest::KeyInit>::new_from_slice(key) {
            Ok(mut mac) => {
                mac.update(message);
                mac.verify_slice(sig).is_ok()
            }
            Err(_) => false,
        }
    }
    match hash {
        Hash::Sha256 => check::<hmac::Hmac<sha2::Sha256>>(key, message, signature),
        Hash::Sha384 => check::<hmac::Hmac<sha2::Sha384>>(key, message, signature),
        Hash::Sha512 => check::<hmac::Hmac<sha2::Sha512>>(key, message, signature),
    }
}
