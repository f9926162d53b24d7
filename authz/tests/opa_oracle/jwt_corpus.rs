//! A generated corpus of JSON Web Tokens and keys, as builtin probes for the differential suite.
//!
//! Keys are made fresh on every run (RSA with the `rsa` crate, EC and Ed25519 with rcgen), so
//! no key is pasted into the repository and every run checks new signatures. Each token is then
//! tried by every builtin that can read it: valid tokens of each algorithm, expired ones, ones
//! not yet valid, of the wrong audience or issuer, `alg: none`, tampered payloads and
//! signatures, wrong keys, JWKS with several keys picked by `kid`, certificates, and malformed
//! tokens and constraints. Every call is a line of Rego that OPA and Vigil both evaluate.

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey};
use rcgen::{CertificateParams, KeyPair, PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384};
use rsa::pkcs1::EncodeRsaPrivateKey as _;
use rsa::pkcs8::{EncodePrivateKey as _, EncodePublicKey as _, LineEnding};
use rsa::traits::PublicKeyParts as _;
use serde_json::{json, Value as Json};

/// The evaluation time every probe passes as `time` (nanoseconds), a fixed instant.
const NOW: i64 = 1_700_000_000;

fn pretty(json: &Json) -> String {
    serde_json::to_string_pretty(json).expect("JSON")
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A Rego string literal: raw (backquoted) where it can be, so that PEM blocks and
/// pretty-printed JWKS keep their lines short (Vigil's engine refuses lines over 1024 columns).
fn lit(text: &str) -> String {
    if text.contains('`') {
        serde_json::to_string(text).expect("string JSON")
    } else {
        format!("`{text}`")
    }
}

/// A call with one argument per line.
fn call(name: &str, args: &[String]) -> String {
    format!("{name}(\n  {}\n)", args.join(",\n  "))
}

/// A Rego object from a JSON one, one field per line, strings as [`lit`] writes them.
fn object(constraints: &Json) -> String {
    let fields: Vec<String> = constraints
        .as_object()
        .expect("object")
        .iter()
        .map(|(k, v)| match v {
            Json::String(text) => format!("{}: {}", lit(k), lit(text)),
            other => format!("{}: {other}", lit(k)),
        })
        .collect();
    format!("{{\n  {}\n}}", fields.join(",\n  "))
}

/// Signs a JWS signing input, giving the base64url signature.
type SignFn = Box<dyn Fn(&[u8]) -> String>;

/// A signing key and the ways a policy can be given its public half.
struct Signer {
    name: &'static str,
    sign: SignFn,
    /// SPKI `PUBLIC KEY` PEM.
    public_pem: String,
    /// A self-signed certificate PEM, where rcgen can make one.
    certificate: Option<String>,
    /// The public key as a JWK (no `alg`, no `kid`).
    jwk: Json,
}

fn jsonwebtoken_signer(alg: Algorithm, key: EncodingKey) -> SignFn {
    Box::new(move |input| jsonwebtoken::crypto::sign(input, &key, alg).expect("signs"))
}

/// An RSA key of 1024 bits, which ring cannot sign with: the `rsa` crate signs.
fn small_rsa_signer(name: &'static str, key: &rsa::RsaPrivateKey) -> Signer {
    use rsa::signature::{RandomizedSigner as _, SignatureEncoding as _, Signer as _};
    let sign: SignFn = if name == "RS256" {
        let signing = rsa::pkcs1v15::SigningKey::<sha2::Sha256>::new(key.clone());
        Box::new(move |input| b64(&signing.sign(input).to_bytes()))
    } else {
        let signing = rsa::pss::BlindedSigningKey::<sha2::Sha256>::new(key.clone());
        Box::new(move |input| {
            b64(&signing
                .sign_with_rng(&mut rsa::rand_core::OsRng, input)
                .to_bytes())
        })
    };
    rsa_crate_signer(name, key, sign)
}

/// RSASSA-PSS with a salt of `salt` bytes instead of the hash's length: OPA's `verify_ps*`
/// accept it, `decode_verify` does not.
fn pss_salt_signer(name: &'static str, key: &rsa::RsaPrivateKey, salt: usize) -> Signer {
    use rsa::signature::{RandomizedSigner as _, SignatureEncoding as _};
    fn with_salt<D>(key: &rsa::RsaPrivateKey, salt: usize) -> SignFn
    where
        D: sha2::Digest + rsa::sha2::digest::FixedOutputReset + 'static,
    {
        let signing = rsa::pss::SigningKey::<D>::new_with_salt_len(key.clone(), salt);
        Box::new(move |input| {
            b64(&signing
                .sign_with_rng(&mut rsa::rand_core::OsRng, input)
                .to_bytes())
        })
    }
    let sign = match name {
        "PS256" => with_salt::<sha2::Sha256>(key, salt),
        _ => with_salt::<sha2::Sha512>(key, salt),
    };
    rsa_crate_signer(name, key, sign)
}

/// A signer whose signatures the `rsa` crate makes, its public half given as PEM and JWK
/// only (no certificate).
fn rsa_crate_signer(name: &'static str, key: &rsa::RsaPrivateKey, sign: SignFn) -> Signer {
    let public = key.to_public_key();
    Signer {
        name,
        sign,
        public_pem: public
            .to_public_key_pem(LineEnding::LF)
            .expect("public PEM"),
        certificate: None,
        jwk: json!({
            "kty": "RSA",
            "n": b64(&public.n().to_bytes_be()),
            "e": b64(&public.e().to_bytes_be()),
        }),
    }
}

/// A P-521 key, which neither ring nor rcgen handles: the `p521` crate signs.
fn p521_signer() -> Signer {
    use p521::ecdsa::signature::RandomizedSigner as _;
    use p521::pkcs8::EncodePublicKey as _;
    let signing = p521::ecdsa::SigningKey::random(&mut rsa::rand_core::OsRng);
    let point = p521::ecdsa::VerifyingKey::from(&signing).to_encoded_point(false);
    let public = p521::PublicKey::from_sec1_bytes(point.as_bytes()).expect("P-521 point");
    Signer {
        name: "ES512",
        sign: Box::new(move |input| {
            let signature: p521::ecdsa::Signature =
                signing.sign_with_rng(&mut rsa::rand_core::OsRng, input);
            b64(&signature.to_bytes())
        }),
        public_pem: public
            .to_public_key_pem(p521::pkcs8::LineEnding::LF)
            .expect("public PEM"),
        certificate: None,
        jwk: json!({
            "kty": "EC",
            "crv": "P-521",
            "x": b64(point.x().expect("x")),
            "y": b64(point.y().expect("y")),
        }),
    }
}

fn rsa_signer(alg: Algorithm, name: &'static str, key: &rsa::RsaPrivateKey) -> Signer {
    let der = key.to_pkcs1_der().expect("PKCS#1 DER");
    let pkcs8 = key.to_pkcs8_der().expect("PKCS#8 DER");
    let public = key.to_public_key();
    let key_pair = KeyPair::from_pkcs8_der_and_sign_algo(
        &rustls_pki_types::PrivatePkcs8KeyDer::from(pkcs8.as_bytes()),
        &rcgen::PKCS_RSA_SHA256,
    )
    .expect("rcgen RSA key");
    let certificate = CertificateParams::new(vec!["issuer.vigil.test".to_string()])
        .expect("params")
        .self_signed(&key_pair)
        .expect("certificate")
        .pem();
    Signer {
        name,
        sign: jsonwebtoken_signer(alg, EncodingKey::from_rsa_der(der.as_bytes())),
        public_pem: public
            .to_public_key_pem(LineEnding::LF)
            .expect("public PEM"),
        certificate: Some(certificate),
        jwk: json!({
            "kty": "RSA",
            "n": b64(&public.n().to_bytes_be()),
            "e": b64(&public.e().to_bytes_be()),
        }),
    }
}

fn ec_signer(alg: Algorithm, name: &'static str, curve: &str) -> Signer {
    let (rcgen_alg, size) = match curve {
        "P-256" => (&PKCS_ECDSA_P256_SHA256, 32),
        _ => (&PKCS_ECDSA_P384_SHA384, 48),
    };
    let key_pair = KeyPair::generate_for(rcgen_alg).expect("EC key");
    let raw = key_pair.public_key_raw();
    let certificate = CertificateParams::new(vec!["issuer.vigil.test".to_string()])
        .expect("params")
        .self_signed(&key_pair)
        .expect("certificate")
        .pem();
    Signer {
        name,
        sign: jsonwebtoken_signer(alg, EncodingKey::from_ec_der(&key_pair.serialize_der())),
        public_pem: key_pair.public_key_pem(),
        certificate: Some(certificate),
        jwk: json!({
            "kty": "EC",
            "crv": curve,
            "x": b64(&raw[1..1 + size]),
            "y": b64(&raw[1 + size..]),
        }),
    }
}

fn ed_signer() -> Signer {
    let key_pair = KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("Ed25519 key");
    Signer {
        name: "EdDSA",
        sign: jsonwebtoken_signer(
            Algorithm::EdDSA,
            EncodingKey::from_ed_der(&key_pair.serialize_der()),
        ),
        public_pem: key_pair.public_key_pem(),
        certificate: None,
        jwk: json!({"kty": "OKP", "crv": "Ed25519", "x": b64(key_pair.public_key_raw())}),
    }
}

fn hmac_signer(alg: Algorithm, name: &'static str, secret: &str) -> Signer {
    Signer {
        name,
        sign: jsonwebtoken_signer(alg, EncodingKey::from_secret(secret.as_bytes())),
        public_pem: String::new(),
        certificate: None,
        jwk: json!({"kty": "oct", "k": b64(secret.as_bytes())}),
    }
}

/// A compact token signed by `signer` over the header and claims as written.
fn sign(signer: &Signer, header: &Json, claims: &Json) -> String {
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let signature = (signer.sign)(input.as_bytes());
    format!("{input}.{signature}")
}

fn claims() -> Json {
    json!({
        "iss": "https://issuer.vigil.test",
        "aud": "api",
        "sub": "alice",
        "iat": NOW - 60,
        "nbf": NOW - 60,
        "exp": NOW + 3600,
    })
}

fn with(mut base: Json, changes: Json) -> Json {
    for (k, v) in changes.as_object().expect("object") {
        if v.is_null() {
            base.as_object_mut().expect("object").remove(k);
        } else {
            base[k] = v.clone();
        }
    }
    base
}

fn verify_builtin(name: &str) -> String {
    format!("io.jwt.verify_{}", name.to_lowercase())
}

fn is_hmac(name: &str) -> bool {
    name.starts_with("HS")
}

/// Flips one character of a token's signature section.
fn tamper_signature(token: &str) -> String {
    let (rest, signature) = token.rsplit_once('.').expect("three sections");
    let mut chars: Vec<char> = signature.chars().collect();
    let i = chars.len() / 2;
    chars[i] = if chars[i] == 'A' { 'B' } else { 'A' };
    format!("{rest}.{}", chars.into_iter().collect::<String>())
}

/// Replaces a token's payload, keeping its header and signature.
fn tamper_payload(token: &str, claims: &Json) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    format!(
        "{}.{}.{}",
        parts[0],
        b64(claims.to_string().as_bytes()),
        parts[2]
    )
}

/// Every probe of the corpus, as `name(args)` Rego expressions.
pub fn probes() -> Vec<String> {
    let rsa_key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).expect("RSA key");
    let other_rsa_key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).expect("RSA key");
    let small_rsa_key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 1024).expect("RSA key");
    let secret = "vigil-shared-secret";
    let signers = vec![
        rsa_signer(Algorithm::RS256, "RS256", &rsa_key),
        rsa_signer(Algorithm::RS384, "RS384", &rsa_key),
        rsa_signer(Algorithm::RS512, "RS512", &rsa_key),
        rsa_signer(Algorithm::PS256, "PS256", &rsa_key),
        rsa_signer(Algorithm::PS384, "PS384", &rsa_key),
        rsa_signer(Algorithm::PS512, "PS512", &rsa_key),
        ec_signer(Algorithm::ES256, "ES256", "P-256"),
        ec_signer(Algorithm::ES384, "ES384", "P-384"),
        p521_signer(),
        small_rsa_signer("RS256", &small_rsa_key),
        small_rsa_signer("PS256", &small_rsa_key),
        pss_salt_signer("PS256", &rsa_key, 0),
        pss_salt_signer("PS512", &rsa_key, 20),
        pss_salt_signer("PS256", &small_rsa_key, 7),
        ed_signer(),
        hmac_signer(Algorithm::HS256, "HS256", secret),
        hmac_signer(Algorithm::HS384, "HS384", secret),
        hmac_signer(Algorithm::HS512, "HS512", secret),
    ];
    let wrong_rsa = rsa_signer(Algorithm::RS256, "RS256", &other_rsa_key);
    let wrong_ec = ec_signer(Algorithm::ES256, "ES256", "P-256");
    let time = NOW as f64 * 1e9;
    let iss = "https://issuer.vigil.test";

    let mut out = Vec::new();
    for signer in &signers {
        let header = json!({"alg": signer.name, "typ": "JWT"});
        let kid_header = json!({"alg": signer.name, "typ": "JWT", "kid": "current"});
        let valid = sign(signer, &header, &claims());
        let tokens = vec![
            valid.clone(),
            sign(signer, &kid_header, &claims()),
            sign(signer, &header, &with(claims(), json!({"exp": NOW - 10}))),
            sign(signer, &header, &with(claims(), json!({"exp": NOW}))),
            sign(signer, &header, &with(claims(), json!({"nbf": NOW + 100}))),
            sign(signer, &header, &with(claims(), json!({"nbf": NOW}))),
            sign(signer, &header, &with(claims(), json!({"aud": "other"}))),
            sign(
                signer,
                &header,
                &with(claims(), json!({"aud": ["x", "api"]})),
            ),
            sign(signer, &header, &with(claims(), json!({"aud": null}))),
            sign(
                signer,
                &header,
                &with(claims(), json!({"iss": "https://evil.test"})),
            ),
            sign(
                signer,
                &header,
                &with(claims(), json!({"iss": null, "exp": 1.7e9 + 0.5})),
            ),
            sign(signer, &header, &with(claims(), json!({"exp": "tomorrow"}))),
            sign(
                signer,
                &header,
                &with(claims(), json!({"nbf": null, "exp": null})),
            ),
            sign(
                signer,
                &json!({"alg": signer.name, "crit": ["exp"], "exp": 1}),
                &claims(),
            ),
            sign(signer, &json!({"typ": "JWT"}), &claims()),
            tamper_signature(&valid),
            tamper_payload(&valid, &with(claims(), json!({"sub": "mallory"}))),
        ];
        // The public halves a policy might hold.
        let mut keys: Vec<String> = Vec::new();
        let jwks_plain = pretty(&json!({"keys": [signer.jwk.clone()]}));
        let jwks_kid = pretty(&json!({"keys": [
            with(wrong_rsa.jwk.clone(), json!({"kid": "old", "alg": "RS256"})),
            with(wrong_ec.jwk.clone(), json!({"kid": "other"})),
            with(signer.jwk.clone(), json!({"kid": "current", "alg": signer.name})),
        ]}));
        let jwks_wrong_kid = pretty(&json!({"keys": [
            with(wrong_ec.jwk.clone(), json!({"kid": "current"})),
            with(signer.jwk.clone(), json!({"kid": "next"})),
        ]}));
        let jwks_other_alg = pretty(&json!({"keys": [
            with(signer.jwk.clone(), json!({"alg": "RS512"})),
        ]}));
        if !is_hmac(signer.name) {
            keys.push(signer.public_pem.clone());
            if let Some(cert) = &signer.certificate {
                keys.push(cert.clone());
            }
            keys.push(wrong_rsa.public_pem.clone());
            keys.push(wrong_ec.public_pem.clone());
        }
        keys.extend([jwks_plain, jwks_kid, jwks_wrong_kid, jwks_other_alg]);

        // Every key form for the tokens whose signature is in question; the claims are
        // checked with the first key.
        let signature_cases = [0, 1, tokens.len() - 2, tokens.len() - 1];
        for (i, token) in tokens.iter().enumerate() {
            out.push(call("io.jwt.decode", &[lit(token)]));
            let verify = verify_builtin(signer.name);
            if is_hmac(signer.name) {
                out.push(call(&verify, &[lit(token), lit(secret)]));
                out.push(call(&verify, &[lit(token), lit("wrong")]));
            } else {
                for key in &keys {
                    out.push(call(&verify, &[lit(token), lit(key)]));
                }
            }
            let mut constraint_sets = vec![
                json!({"iss": iss, "aud": "api", "time": time}),
                json!({"aud": "api", "time": time}),
                json!({"iss": iss, "time": time}),
                json!({"iss": "https://other.test", "aud": "api", "time": time}),
                json!({"aud": "x", "time": time}),
                json!({"aud": "api", "alg": signer.name, "time": time}),
                json!({"aud": "api", "alg": "HS256", "time": time}),
                json!({"aud": "api"}),
            ];
            for constraints in constraint_sets.iter_mut() {
                let fields = constraints.as_object_mut().expect("object");
                if is_hmac(signer.name) {
                    fields.insert("secret".into(), json!(secret));
                } else {
                    fields.insert("cert".into(), json!(keys[0]));
                }
            }
            if signature_cases.contains(&i) {
                for key in &keys {
                    constraint_sets.push(json!({"cert": key, "aud": "api", "time": time}));
                }
            }
            if !is_hmac(signer.name) {
                constraint_sets.push(json!({"secret": secret, "aud": "api", "time": time}));
            }
            for constraints in &constraint_sets {
                out.push(call(
                    "io.jwt.decode_verify",
                    &[lit(token), object(constraints)],
                ));
            }
        }
    }

    // Tokens without a valid signature of any key.
    let hs = signers
        .iter()
        .find(|s| s.name == "HS256")
        .expect("an HS256 signer");
    let none = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(claims().to_string().as_bytes())
    );
    let nested_inner = sign(hs, &json!({"alg": "HS256"}), &claims());
    let nested = sign(
        hs,
        &json!({"alg": "HS256", "cty": "JWT"}),
        &Json::String(nested_inner.clone()),
    );
    let malformed = vec![
        none.clone(),
        format!("{none}c2ln"),
        "abc".to_string(),
        "a.b".to_string(),
        "a.b.c.d".to_string(),
        "..".to_string(),
        "!!.e30.e30".to_string(),
        format!("{}.e30.", b64(b"not json")),
        format!("{}.e30.", b64(b"[1]")),
        format!("{}.{}.", b64(br#"{"alg":"HS256"}"#), b64(b"[1]")),
        format!(
            "{}.{}.",
            b64(br#"{"alg":"HS256","enc":"A128GCM"}"#),
            b64(b"{}")
        ),
        format!("{}.e30.e", b64(br#"{"alg":"HS256"}"#)),
        format!("{}.e30=.", b64(br#"{"alg":"HS256"}"#)),
        format!("{}.e30.", b64(br#"{"alg":7}"#)),
        format!("{}.e30.", b64(br#"{"alg":"HS256","crit":[]}"#)),
        format!("{}.e30.", b64(br#"{"alg":"HS256","crit":"x"}"#)),
        nested.clone(),
        nested_inner.clone(),
    ];
    let rsa_pem = &signers[0].public_pem;
    for token in &malformed {
        out.push(call("io.jwt.decode", &[lit(token)]));
        out.push(call("io.jwt.verify_hs256", &[lit(token), lit(secret)]));
        out.push(call("io.jwt.verify_rs256", &[lit(token), lit(rsa_pem)]));
        for constraints in &[
            json!({"secret": secret, "time": time}),
            json!({"cert": rsa_pem, "time": time}),
            json!({"secret": secret, "alg": "none", "time": time}),
        ] {
            out.push(call(
                "io.jwt.decode_verify",
                &[lit(token), object(constraints)],
            ));
        }
    }

    // Malformed constraints and keys.
    let valid = sign(hs, &json!({"alg": "HS256"}), &claims());
    let rs_valid = sign(&signers[0], &json!({"alg": "RS256"}), &claims());
    for constraints in &[
        json!({}),
        json!({"time": time}),
        json!({"secret": secret, "cert": rsa_pem}),
        json!({"secret": secret, "time": -1}),
        json!({"secret": secret, "time": "now"}),
        json!({"secret": secret, "aud": 1}),
        json!({"secret": secret, "iss": ["x"]}),
        json!({"secret": secret, "exp": 1}),
        json!({"secret": "", "time": time}),
        json!({"secret": secret, "time": 0}),
        json!({"secret": secret, "time": 1.7e18 + 3.6e12}),
        json!({"cert": 7}),
        json!({"cert": "not a key"}),
        json!({"cert": "{\"keys\": []}"}),
        json!({"cert": format!("{rsa_pem}\n")}),
        json!({"cert": format!("junk\n{rsa_pem}")}),
        json!({"cert": rsa_pem.replace("PUBLIC KEY", "RSA PUBLIC KEY")}),
        json!({"cert": pretty(&signers[0].jwk)}),
    ] {
        for token in [&valid, &rs_valid] {
            out.push(call(
                "io.jwt.decode_verify",
                &[lit(token), object(constraints)],
            ));
        }
    }
    out.push(call("io.jwt.verify_rs256", &[lit(&rs_valid), lit("")]));
    out.push(call(
        "io.jwt.verify_rs256",
        &[lit(&rs_valid), lit(&format!("{rsa_pem}{rsa_pem}"))],
    ));
    out
}
