//! OPA's `io.jwt.*` builtins: decoding JSON Web Tokens and checking their signatures and claims.
//!
//! Written after OPA's `topdown/tokens.go` (and the `jwsbb` verifier it calls), step for step,
//! because a policy's decision hangs on each of OPA's choices: which failures are errors (a
//! malformed token) and which are `[false, {}, {}]` (a bad signature, a wrong audience), how a
//! `kid` picks a key from a JWKS, that a token carrying `aud` fails when no audience is asked for.
//! Keys and signatures are `token_keys.rs`'s.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use regorus::Value;

use crate::outcome::{string_operand, Outcome};
use crate::token_keys::{
    check_signature, hmac_equal, keys_from_cert_or_jwk, Hash, PublicKey, Scheme, VerificationKey,
    Verifier,
};

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
    ("io.jwt.verify_es512", 2),
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
        "io.jwt.verify_es512" => asymmetric(Scheme::Ecdsa(Hash::Sha512)),
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
// The builtins

/// OPA's `builtinJWTVerify` (`io.jwt.verify_rs*`, `ps*`, `es*`): a key whose `kid` matches the
/// token's decides alone; otherwise any key (of the token's `alg`, if the key names one).
fn verify_with_keys(jwt: &Value, keys: &Value, scheme: Scheme) -> Outcome {
    let token = split(jwt)?;
    let keys = keys_from_cert_or_jwk(string_operand(keys, 2)?)?;
    let signature = token.decoded_signature()?;
    let header = TokenHeader::parse(&token.decoded_header()?)?;
    let message = token.signing_input();
    let check = |key: &VerificationKey| {
        check_signature(&key.key, scheme, &message, &signature, Verifier::Builtin)
    };
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
            let check = |key: &VerificationKey| {
                check_signature(&key.key, scheme, message, signature, Verifier::Jws)
            };
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
        check_signature(&secret, scheme, message, signature, Verifier::Jws)
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
}
