//! OPA's `io.jwt.*` builtins: decoding JSON Web Tokens and checking their signatures and claims.
//!
//! Written after OPA's `topdown/tokens.go` (and the `jwsbb` verifier it calls), step for step,
//! because a policy's decision hangs on each of OPA's choices: which failures are errors (a
//! malformed token) and which are `[false, {}, {}]` (a bad signature, a wrong audience), how a
//! `kid` picks a key from a JWKS, that a token carrying `aud` fails when no audience is asked for.
//! Signatures are checked by the `jsonwebtoken` crate, on `ring`, the crypto the rest of Vigil
//! already uses. ECDSA over a hash that is not its curve's (which Go allows and jsonwebtoken does
//! not) goes to `ring` directly. Keys `ring` cannot use (the P-521 curve, RSA moduli outside
//! 2048..=8192 bits) make the call fail, so the decision fails closed instead of differing from
//! OPA's; `io.jwt.verify_es512`, which always needs one of them, is refused at compile time.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey};
use regorus::Value;
use x509_parser::prelude::FromDer as _;

use crate::opa_builtins::{string_operand, Outcome};

/// The builtins evaluated here, with their number of arguments.
pub(crate) const NAMES: &[(&str, u8)] = &[
    ("io.jwt.decode", 1),
    ("io.jwt.decode_verify", 2),
    ("io.jwt.verify_rs256", 2),
    ("io.jwt.verify_rs384", 2),
    ("io.jwt.verify_rs512", 2),
    ("io.jwt.verify_ps256", 2),
    ("io.jwt.verify_ps384", 2),
    ("io.jwt.verify_ps512", 2),
    ("io.jwt.verify_es256", 2),
    ("io.jwt.verify_es384", 2),
    ("io.jwt.verify_eddsa", 2),
    ("io.jwt.verify_hs256", 2),
    ("io.jwt.verify_hs384", 2),
    ("io.jwt.verify_hs512", 2),
];

/// One call of a builtin of [`NAMES`]; `None` for a name that is not one.
pub(crate) fn evaluate(name: &str, args: &[Value]) -> Option<Outcome> {
    let arg = |i: usize| args.get(i).unwrap_or(&Value::Undefined);
    let asymmetric = |scheme| verify_with_keys(arg(0), arg(1), scheme);
    Some(match name {
        "io.jwt.decode" => decode(arg(0)),
        "io.jwt.decode_verify" => decode_verify(arg(0), arg(1), None),
        "io.jwt.verify_rs256" => asymmetric(Scheme::Pkcs1(Hash::Sha256)),
        "io.jwt.verify_rs384" => asymmetric(Scheme::Pkcs1(Hash::Sha384)),
        "io.jwt.verify_rs512" => asymmetric(Scheme::Pkcs1(Hash::Sha512)),
        "io.jwt.verify_ps256" => asymmetric(Scheme::Pss(Hash::Sha256)),
        "io.jwt.verify_ps384" => asymmetric(Scheme::Pss(Hash::Sha384)),
        "io.jwt.verify_ps512" => asymmetric(Scheme::Pss(Hash::Sha512)),
        "io.jwt.verify_es256" => asymmetric(Scheme::Ecdsa(Hash::Sha256)),
        "io.jwt.verify_es384" => asymmetric(Scheme::Ecdsa(Hash::Sha384)),
        "io.jwt.verify_eddsa" => asymmetric(Scheme::Ed25519),
        "io.jwt.verify_hs256" => verify_hmac(arg(0), arg(1), Hash::Sha256),
        "io.jwt.verify_hs384" => verify_hmac(arg(0), arg(1), Hash::Sha384),
        "io.jwt.verify_hs512" => verify_hmac(arg(0), arg(1), Hash::Sha512),
        _ => return None,
    })
}

// ---------------------------------------------------------------------------------------------
// Tokens

/// The three base64url sections of a compact JWS, as written.
struct Token<'a> {
    header: &'a str,
    payload: &'a str,
    signature: &'a str,
}

impl Token<'_> {
    fn signing_input(&self) -> Vec<u8> {
        format!("{}.{}", self.header, self.payload).into_bytes()
    }

    fn decoded_header(&self) -> Result<Value, String> {
        let bytes =
            base64url(self.header).map_err(|e| format!("JWT header had invalid encoding: {e}"))?;
        let header = json_object(&bytes).map_err(|e| format!("bad JWT header: {e}"))?;
        // A JWE (encrypted token) carries `enc`; OPA does not decrypt them.
        if field(&header, "enc").is_some() {
            return Err("JWT is a JWE object, which is not supported".into());
        }
        Ok(header)
    }

    fn decoded_payload(&self) -> Result<Vec<u8>, String> {
        base64url(self.payload).map_err(|e| format!("JWT payload had invalid encoding: {e}"))
    }

    fn decoded_signature(&self) -> Result<Vec<u8>, String> {
        base64url(self.signature)
    }
}

/// OPA's `decodeJWT`: a string of exactly three dot-separated sections.
fn split(value: &Value) -> Result<Token<'_>, String> {
    let text = string_operand(value, 1)?;
    if !text.contains('.') {
        return Err("encoded JWT had no period separators".into());
    }
    let parts: Vec<&str> = text.split('.').collect();
    match parts[..] {
        [header, payload, signature] => Ok(Token {
            header,
            payload,
            signature,
        }),
        _ => Err(format!(
            "encoded JWT must have 3 sections, found {}",
            parts.len()
        )),
    }
}

/// OPA's `base64url.decode`: padding added where it is missing (RFC 7515 appendix C), then Go's
/// padded URL-safe decoder, which skips `\r` and `\n` and ignores unused trailing bits.
fn base64url(text: &str) -> Result<Vec<u8>, String> {
    let mut padded = text.to_string();
    if !text.ends_with('=') {
        match text.len() % 4 {
            0 => {}
            2 => padded.push_str("=="),
            3 => padded.push('='),
            _ => return Err(format!("illegal base64url string: {text}")),
        }
    }
    let data: Vec<u8> = padded
        .bytes()
        .filter(|b| *b != b'\r' && *b != b'\n')
        .collect();
    const GO_URL: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
        &base64::alphabet::URL_SAFE,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::RequireCanonical)
            .with_decode_allow_trailing_bits(true),
    );
    GO_URL
        .decode(&data)
        .map_err(|e| format!("illegal base64 data: {e}"))
}

/// OPA's `extractJSONObject`: the bytes as JSON, which must be an object.
fn json_object(bytes: &[u8]) -> Result<Value, String> {
    let text = String::from_utf8_lossy(bytes);
    let value = Value::from_json_str(&text).map_err(|e| format!("invalid JSON: {e}"))?;
    if value.as_object().is_err() {
        return Err("decoded JSON type was not an Object".into());
    }
    Ok(value)
}

fn field<'a>(object: &'a Value, name: &str) -> Option<&'a Value> {
    object.as_object().ok()?.get(&Value::from(name))
}

/// `io.jwt.decode`: `[header, payload, signature as hex]`, following nested tokens (`cty: JWT`).
fn decode(jwt: &Value) -> Outcome {
    let token = split(jwt)?;
    let header = token.decoded_header()?;
    let payload = token.decoded_payload()?;
    if let Some(cty) = field(&header, "cty") {
        let cty = cty
            .as_string()
            .map_err(|_| "cty: must be a string".to_string())?;
        if cty.as_ref() == "JWT" {
            // A nested token's text is often quoted, as jwt.io writes it.
            let inner = String::from_utf8_lossy(&payload);
            let inner = inner.trim_matches(|c| c == '"' || c == '\'');
            return decode(&Value::from(inner));
        }
    }
    let payload = json_object(&payload)?;
    let signature = token
        .decoded_signature()
        .map_err(|e| format!("JWT signature had invalid encoding: {e}"))?;
    Ok(Value::from(vec![
        header,
        payload,
        Value::from(hex::encode(signature)),
    ]))
}

/// The header parameters OPA reads (`parseTokenHeader`).
#[derive(Default)]
struct TokenHeader {
    alg: String,
    kid: String,
    cty: String,
    crit: Vec<String>,
    unknown: Vec<String>,
}

impl TokenHeader {
    fn parse(header: &Value) -> Result<TokenHeader, String> {
        let mut parsed = TokenHeader::default();
        let fields = header
            .as_object()
            .map_err(|_| "bad JWT header".to_string())?;
        for (key, value) in fields.iter() {
            let key = key.as_string().map(|k| k.to_string()).unwrap_or_default();
            let text = |name: &str| {
                value
                    .as_string()
                    .map(|s| s.to_string())
                    .map_err(|_| format!("{name}: must be a string"))
            };
            match key.as_str() {
                "alg" => parsed.alg = text("alg")?,
                "kid" => parsed.kid = text("kid")?,
                "typ" => {
                    text("typ")?;
                }
                "cty" => parsed.cty = text("cty")?,
                "crit" => {
                    let items = value
                        .as_array()
                        .map_err(|_| "crit: must be a list".to_string())?;
                    // OPA stops at the first item that is not a string, keeping those before.
                    parsed.crit = items
                        .iter()
                        .map_while(|item| item.as_string().ok().map(|s| s.to_string()))
                        .collect();
                    if parsed.crit.is_empty() {
                        return Err("crit: must be a nonempty list".into());
                    }
                }
                _ => parsed.unknown.push(key),
            }
        }
        Ok(parsed)
    }

    /// RFC 7515: `alg` is required, and a critical parameter OPA does not know invalidates it.
    fn valid(&self) -> bool {
        !self.alg.is_empty() && !self.unknown.iter().any(|u| self.crit.contains(u))
    }
}

// ---------------------------------------------------------------------------------------------
// Keys

#[derive(Clone, Copy, PartialEq, Eq)]
enum Hash {
    Sha256,
    Sha384,
    Sha512,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Curve {
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

enum PublicKey {
    Rsa { modulus: Vec<u8>, exponent: Vec<u8> },
    Ec { curve: Curve, point: Vec<u8> },
    Ed25519(Vec<u8>),
    Secret(Vec<u8>),
}

/// A key to try, with the `alg` and `kid` a JWKS gave it (empty for a PEM key).
struct VerificationKey {
    key: PublicKey,
    alg: String,
    kid: String,
}

/// JWS algorithms OPA knows; a JWKS key naming another one is skipped.
const TOKEN_ALGORITHMS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "HS256",
    "HS384", "HS512", "EdDSA",
];

/// OPA's `getKeysFromCertOrJWK`: one PEM certificate or public key, else a JWK or JWKS.
fn keys_from_cert_or_jwk(text: &str) -> Result<Vec<VerificationKey>, String> {
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
enum Scheme {
    Pkcs1(Hash),
    Pss(Hash),
    Ecdsa(Hash),
    Hmac(Hash),
    Ed25519,
}

impl Scheme {
    fn of_alg(alg: &str) -> Option<Scheme> {
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

/// Whether `signature` over `message` verifies with `key`. `Ok(false)` wherever OPA's check
/// fails (wrong key type too); `Err` only where Vigil cannot tell. `exact_ecdsa_length` is
/// `jwsbb`'s rule (r and s each exactly the curve's size); the `verify_es*` builtins split
/// the signature in halves instead, as OPA's `verifyES` does.
fn check_signature(
    key: &PublicKey,
    scheme: Scheme,
    message: &[u8],
    signature: &[u8],
    exact_ecdsa_length: bool,
) -> Result<bool, String> {
    let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(signature);
    match (scheme, key) {
        (Scheme::Pkcs1(hash) | Scheme::Pss(hash), PublicKey::Rsa { modulus, exponent }) => {
            let modulus = strip_zeros(modulus);
            let bits =
                modulus.len() * 8 - modulus.first().map_or(8, |b| b.leading_zeros()) as usize;
            if !(2048..=8192).contains(&bits) {
                return Err(unsupported(&format!("an RSA key of {bits} bits")));
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
            if *curve == Curve::P521 {
                return Err(unsupported("a P-521 key"));
            }
            let size = curve.size();
            let (r, s) = if exact_ecdsa_length {
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
            use ring::signature as rs;
            let ring_algorithm: &dyn rs::VerificationAlgorithm = match (curve, hash) {
                (Curve::P256, Hash::Sha256) | (Curve::P384, Hash::Sha384) => {
                    let algorithm = if *curve == Curve::P256 {
                        Algorithm::ES256
                    } else {
                        Algorithm::ES384
                    };
                    let key = DecodingKey::from_ec_der(point);
                    let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&fixed);
                    return Ok(
                        jsonwebtoken::crypto::verify(&encoded, message, &key, algorithm)
                            .unwrap_or(false),
                    );
                }
                // Go hashes with the builtin's hash whatever the key's curve.
                (Curve::P256, Hash::Sha384) => &rs::ECDSA_P256_SHA384_ASN1,
                (Curve::P384, Hash::Sha256) => &rs::ECDSA_P384_SHA256_ASN1,
                _ => return Err(unsupported("ECDSA with SHA-512")),
            };
            let der = der_signature(&fixed[..size], &fixed[size..]);
            Ok(rs::UnparsedPublicKey::new(ring_algorithm, point)
                .verify(message, &der)
                .is_ok())
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

fn strip_zeros(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    &bytes[start..]
}

/// An ECDSA signature as the DER `SEQUENCE { r INTEGER, s INTEGER }` ring's ASN.1 forms read.
fn der_signature(r: &[u8], s: &[u8]) -> Vec<u8> {
    let integer = |bytes: &[u8]| {
        let bytes = strip_zeros(bytes);
        let mut out = vec![0x02];
        let pad = bytes.first().is_none_or(|b| *b >= 0x80);
        let len = bytes.len() + usize::from(pad);
        push_der_length(&mut out, len);
        if pad {
            out.push(0);
        }
        out.extend_from_slice(bytes);
        out
    };
    let body = [integer(r), integer(s)].concat();
    let mut out = vec![0x30];
    push_der_length(&mut out, body.len());
    out.extend(body);
    out
}

fn push_der_length(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        out.extend([0x81, len as u8]);
    }
}

fn hmac_equal(hash: Hash, key: &[u8], message: &[u8], signature: &[u8]) -> bool {
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

// ---------------------------------------------------------------------------------------------
// The builtins

/// OPA's `builtinJWTVerify` (`io.jwt.verify_rs*`, `ps*`, `es*`): a key whose `kid` matches the
/// token's decides alone; otherwise any key (of the token's `alg`, if the key names one).
fn verify_with_keys(jwt: &Value, keys: &Value, scheme: Scheme) -> Outcome {
    let token = split(jwt)?;
    let keys = keys_from_cert_or_jwk(string_operand(keys, 2)?)?;
    let signature = token.decoded_signature()?;
    let header = TokenHeader::parse(&token.decoded_header()?)?;
    let message = token.signing_input();
    let check =
        |key: &VerificationKey| check_signature(&key.key, scheme, &message, &signature, false);
    if !header.kid.is_empty() {
        if let Some(key) = keys.iter().find(|k| k.kid == header.kid) {
            return check(key).map(Value::from);
        }
    }
    for key in &keys {
        if !key.alg.is_empty() && key.alg != header.alg {
            continue;
        }
        if check(key)? {
            return Ok(Value::from(true));
        }
    }
    Ok(Value::from(false))
}

/// OPA's `builtinJWTVerifyHS`: the secret is used as it is written.
fn verify_hmac(jwt: &Value, secret: &Value, hash: Hash) -> Outcome {
    string_operand(jwt, 1)?;
    let secret = string_operand(secret, 2)?;
    let token = split(jwt)?;
    let signature = token.decoded_signature()?;
    Ok(Value::from(hmac_equal(
        hash,
        secret.as_bytes(),
        &token.signing_input(),
        &signature,
    )))
}

/// The constraints of `io.jwt.decode_verify` (OPA's `tokenConstraints`).
#[derive(Default)]
struct Constraints {
    keys: Option<Vec<VerificationKey>>,
    secret: String,
    alg: String,
    iss: String,
    aud: String,
    /// Nanoseconds since the epoch.
    time: Option<f64>,
}

impl Constraints {
    fn parse(object: &Value) -> Result<Constraints, String> {
        let fields = object
            .as_object()
            .map_err(|_| "operand 2 must be object".to_string())?;
        let mut parsed = Constraints::default();
        for (key, value) in fields.iter() {
            let name = key.as_string().map(|k| k.to_string()).unwrap_or_default();
            let text = || {
                value
                    .as_string()
                    .map(|s| s.to_string())
                    .map_err(|_| format!("{name} constraint: must be a string"))
            };
            match name.as_str() {
                "cert" => {
                    let cert = value
                        .as_string()
                        .map_err(|_| "cert constraint: must be a string".to_string())?;
                    parsed.keys = Some(keys_from_cert_or_jwk(cert)?);
                }
                "secret" => parsed.secret = text()?,
                "alg" => parsed.alg = text()?,
                "iss" => parsed.iss = text()?,
                "aud" => parsed.aud = text()?,
                "time" => parsed.time = Some(time_of(value)?),
                _ => return Err(format!("unknown token validation constraint: {name}")),
            }
        }
        match (&parsed.keys, parsed.secret.is_empty()) {
            (Some(_), false) => Err("duplicate key constraints".into()),
            (None, true) => Err("no key constraint".into()),
            _ => Ok(parsed),
        }
    }

    /// OPA's `tokenConstraints.verify`.
    fn verify(
        &self,
        header: &TokenHeader,
        message: &[u8],
        signature: &[u8],
    ) -> Result<bool, String> {
        let Some(scheme) = Scheme::of_alg(&header.alg) else {
            return Ok(false);
        };
        if let Some(keys) = &self.keys {
            let check =
                |key: &VerificationKey| check_signature(&key.key, scheme, message, signature, true);
            if !header.kid.is_empty() {
                if let Some(key) = keys.iter().find(|k| k.kid == header.kid) {
                    return check(key);
                }
            }
            for key in keys {
                if !key.alg.is_empty() && key.alg != header.alg {
                    continue;
                }
                if check(key)? {
                    return Ok(true);
                }
            }
            return Ok(false);
        }
        let secret = PublicKey::Secret(self.secret.as_bytes().to_vec());
        check_signature(&secret, scheme, message, signature, true)
    }

    /// OPA's `validAudience`: the token's `aud`, a string or an array holding one, must be
    /// the constraint's (the empty string when none was given).
    fn valid_audience(&self, aud: &Value) -> bool {
        if let Ok(aud) = aud.as_string() {
            return aud.as_ref() == self.aud;
        }
        aud.as_array().is_ok_and(|items| {
            items
                .iter()
                .any(|item| item.as_string().is_ok_and(|s| s.as_ref() == self.aud))
        })
    }
}

fn time_of(value: &Value) -> Result<f64, String> {
    let time =
        go_float(value).ok_or_else(|| "token time constraint: must be a number".to_string())?;
    if time < 0.0 {
        return Err("token time constraint: must not be negative".into());
    }
    Ok(time)
}

/// A number as Go's `strconv.ParseFloat` reads its text: rounded to the nearest float, where
/// regorus's `as_f64` refuses integers beyond 2^53.
fn go_float(value: &Value) -> Option<f64> {
    value.as_number().ok()?;
    serde_json::to_string(value).ok()?.parse::<f64>().ok()
}

fn wallclock_ns() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_nanos() as f64)
}

/// `io.jwt.decode_verify`: `[true, header, payload]` when the signature verifies and every
/// claim meets the constraints, `[false, {}, {}]` when one does not, an error for a malformed
/// token or constraint. `now_ns` stands in for the evaluation's clock (tests).
fn decode_verify(jwt: &Value, constraints: &Value, now_ns: Option<f64>) -> Outcome {
    let unverified = || {
        Ok(Value::from(vec![
            Value::from(false),
            Value::new_object(),
            Value::new_object(),
        ]))
    };
    let constraints = Constraints::parse(constraints)?;
    let time = constraints
        .time
        .unwrap_or_else(|| now_ns.unwrap_or_else(wallclock_ns));

    let mut current = jwt.clone();
    let (header, payload) = loop {
        let token = split(&current)?;
        let header = token.decoded_header()?;
        let parsed = TokenHeader::parse(&header)?;
        if !parsed.valid() {
            return unverified();
        }
        if !constraints.alg.is_empty() && constraints.alg != parsed.alg {
            return unverified();
        }
        let signature = token.decoded_signature()?;
        if !constraints.verify(&parsed, &token.signing_input(), &signature)? {
            return unverified();
        }
        let payload = token.decoded_payload()?;
        if parsed.cty.eq_ignore_ascii_case("JWT") {
            current = Value::from(String::from_utf8_lossy(&payload).into_owned());
            continue;
        }
        break (header, payload);
    };
    let payload = json_object(&payload)?;

    if !constraints.iss.is_empty() {
        match field(&payload, "iss") {
            Some(iss) => {
                let iss = iss
                    .as_string()
                    .map_err(|_| "iss value must be a string".to_string())?;
                if iss.as_ref() != constraints.iss {
                    return unverified();
                }
            }
            None => return unverified(),
        }
    }
    match field(&payload, "aud") {
        Some(aud) if !constraints.valid_audience(aud) => return unverified(),
        None if !constraints.aud.is_empty() => return unverified(),
        _ => {}
    }
    let seconds = time / 1_000_000_000.0;
    if let Some(exp) = field(&payload, "exp") {
        let exp = claim_number(exp, "exp")?;
        if seconds >= exp {
            return unverified();
        }
    }
    if let Some(nbf) = field(&payload, "nbf") {
        let nbf = claim_number(nbf, "nbf")?;
        if seconds < nbf {
            return unverified();
        }
    }
    Ok(Value::from(vec![Value::from(true), header, payload]))
}

fn claim_number(value: &Value, name: &str) -> Result<f64, String> {
    go_float(value).ok_or_else(|| format!("{name} value must be a number"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hmac::Mac as _;

    fn token(header: &str, payload: &str, signature: &[u8]) -> Value {
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        Value::from(format!(
            "{}.{}.{}",
            b64(header.as_bytes()),
            b64(payload.as_bytes()),
            b64(signature)
        ))
    }

    fn hs256(header: &str, payload: &str, secret: &str) -> Value {
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let input = format!("{}.{}", b64(header.as_bytes()), b64(payload.as_bytes()));
        let mut mac =
            <hmac::Hmac<sha2::Sha256> as hmac::digest::KeyInit>::new_from_slice(secret.as_bytes())
                .expect("any key length");
        mac.update(input.as_bytes());
        Value::from(format!("{input}.{}", b64(&mac.finalize().into_bytes())))
    }

    fn constraints(json: &str) -> Value {
        Value::from_json_str(json).expect("constraints JSON")
    }

    #[test]
    fn decode_returns_header_payload_and_hex_signature() {
        let t = token(r#"{"alg":"none"}"#, r#"{"sub":"a"}"#, &[0xab, 0x01]);
        let decoded = decode(&t).expect("decodes");
        assert_eq!(
            serde_json::to_string(&decoded).expect("json"),
            r#"[{"alg":"none"},{"sub":"a"},"ab01"]"#
        );
        assert!(decode(&Value::from("a.b")).is_err());
        assert!(decode(&Value::from("nodots")).is_err());
    }

    #[test]
    fn decode_verify_checks_secret_and_claims() {
        let header = r#"{"alg":"HS256","typ":"JWT"}"#;
        let good = hs256(
            header,
            r#"{"iss":"me","aud":"you","exp":2000,"nbf":1000}"#,
            "s",
        );
        let at = |seconds: u64| seconds as f64 * 1e9;
        let c = constraints(r#"{"secret":"s","iss":"me","aud":"you"}"#);
        let ok = decode_verify(&good, &c, Some(at(1500))).expect("verifies");
        assert_eq!(ok.as_array().expect("array")[0], Value::from(true));
        for (when, c) in [
            (2000, r#"{"secret":"s","iss":"me","aud":"you"}"#),
            (999, r#"{"secret":"s","iss":"me","aud":"you"}"#),
            (1500, r#"{"secret":"t","iss":"me","aud":"you"}"#),
            (1500, r#"{"secret":"s","iss":"me"}"#),
            (1500, r#"{"secret":"s","iss":"other","aud":"you"}"#),
            (1500, r#"{"secret":"s","aud":"you","alg":"RS256"}"#),
        ] {
            let out = decode_verify(&good, &constraints(c), Some(at(when))).expect("no error");
            assert_eq!(
                out.as_array().expect("array")[0],
                Value::from(false),
                "{c} at {when}"
            );
        }
        assert!(decode_verify(&good, &constraints(r#"{"aud":"you"}"#), None).is_err());
        assert!(decode_verify(&good, &constraints(r#"{"secret":"s","x":1}"#), None).is_err());
    }

    #[test]
    fn der_signatures_pad_high_bits() {
        assert_eq!(
            der_signature(&[0x00, 0x80], &[0x01]),
            vec![0x30, 0x07, 0x02, 0x02, 0x00, 0x80, 0x02, 0x01, 0x01]
        );
    }
}
