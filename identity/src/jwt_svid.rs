//! JWT-SVIDs (the SPIFFE JWT-SVID standard): short-lived ES256 tokens whose `sub` is a
//! SPIFFE ID, signed by a key of the control plane and verified against its JWT bundle, a
//! JWKS whose keys carry `"use": "jwt-svid"`.

use std::path::Path;
use std::time::{Duration, SystemTime};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{json, Map, Value};

use crate::ca::{check_key_file_mode, write_atomic, CaError};
use crate::spiffe::SpiffeId;

/// Why a JWT-SVID was not issued or not accepted.
#[derive(Debug, thiserror::Error)]
pub enum JwtSvidError {
    /// The token is not a valid JWT-SVID for this audience and bundle.
    #[error("invalid JWT-SVID: {0}")]
    Invalid(String),
    /// A JWT-SVID needs at least one audience.
    #[error("a JWT-SVID needs at least one audience")]
    NoAudience,
    /// Signing failed.
    #[error("signing the JWT-SVID: {0}")]
    Sign(String),
}

/// The control plane's JWT-SVID signing key and the JWKS that publishes it.
pub struct JwtSvidSigner {
    key: EncodingKey,
    kid: String,
    jwk: Value,
}

impl JwtSvidSigner {
    /// Loads the ECDSA P-256 key at `path` (PKCS#8 PEM, mode 0600), or generates and
    /// writes one on first start.
    pub fn load_or_generate(path: &Path) -> Result<JwtSvidSigner, CaError> {
        let pem = if path.exists() {
            check_key_file_mode(path)?;
            std::fs::read_to_string(path).map_err(|source| CaError::Io {
                path: path.to_owned(),
                source,
            })?
        } else {
            let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
            let pem = key.serialize_pem();
            write_atomic(path, pem.as_bytes(), 0o600)?;
            pem
        };
        Self::from_pem(&pem)
    }

    /// A signer over a PKCS#8 PEM P-256 key.
    pub fn from_pem(pem: &str) -> Result<JwtSvidSigner, CaError> {
        let pair = rcgen::KeyPair::from_pem(pem).map_err(|e| CaError::Key(e.to_string()))?;
        if pair.algorithm() != &rcgen::PKCS_ECDSA_P256_SHA256 {
            return Err(CaError::Key("the JWT-SVID key must be ECDSA P-256".into()));
        }
        let key =
            EncodingKey::from_ec_pem(pem.as_bytes()).map_err(|e| CaError::Key(e.to_string()))?;
        // Uncompressed point: 0x04 || x || y.
        let point = pair.public_key_raw();
        if point.len() != 65 {
            return Err(CaError::Key("unexpected P-256 public key encoding".into()));
        }
        let (x, y) = (&point[1..33], &point[33..65]);
        let kid = URL_SAFE_NO_PAD.encode(&point[1..17]);
        let jwk = json!({
            "kty": "EC",
            "crv": "P-256",
            "x": URL_SAFE_NO_PAD.encode(x),
            "y": URL_SAFE_NO_PAD.encode(y),
            "kid": kid,
            "use": "jwt-svid",
            "alg": "ES256",
        });
        Ok(JwtSvidSigner { key, kid, jwk })
    }

    /// A JWT-SVID for `id`, for `audience`, valid for `lifetime`.
    pub fn sign(
        &self,
        id: &SpiffeId,
        audience: &[String],
        lifetime: Duration,
    ) -> Result<String, JwtSvidError> {
        if audience.is_empty() || audience.iter().any(String::is_empty) {
            return Err(JwtSvidError::NoAudience);
        }
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        header.typ = Some("JWT".into());
        let claims = json!({
            "sub": id.to_string(),
            "aud": audience,
            "iat": now,
            "exp": now + lifetime.as_secs().max(1),
        });
        jsonwebtoken::encode(&header, &claims, &self.key)
            .map_err(|e| JwtSvidError::Sign(e.to_string()))
    }

    /// The JWT bundle: a JWKS holding this key.
    pub fn jwks(&self) -> String {
        json!({ "keys": [self.jwk] }).to_string()
    }
}

/// Checks a JWT-SVID against `jwks` (a JWT bundle) for `audience`: ES256 signature by a
/// key of the bundle (by `kid`), not expired, `audience` among its `aud`, and a `sub` that
/// is a SPIFFE ID of `trust_domain`. Returns that ID and the token's claims.
pub fn validate_jwt_svid(
    token: &str,
    jwks: &str,
    audience: &str,
    trust_domain: &str,
) -> Result<(SpiffeId, Map<String, Value>), JwtSvidError> {
    let invalid = |e: &dyn std::fmt::Display| JwtSvidError::Invalid(e.to_string());
    if audience.is_empty() {
        return Err(JwtSvidError::NoAudience);
    }
    let header = jsonwebtoken::decode_header(token).map_err(|e| invalid(&e))?;
    if header.alg != Algorithm::ES256 {
        return Err(JwtSvidError::Invalid(format!(
            "algorithm {:?}; JWT-SVIDs of this mesh are ES256",
            header.alg
        )));
    }
    let set: jsonwebtoken::jwk::JwkSet = serde_json::from_str(jwks).map_err(|e| invalid(&e))?;
    let kid = header
        .kid
        .ok_or_else(|| JwtSvidError::Invalid("no kid in the header".into()))?;
    let jwk = set
        .find(&kid)
        .ok_or_else(|| JwtSvidError::Invalid(format!("no key {kid} in the JWT bundle")))?;
    let key = DecodingKey::from_jwk(jwk).map_err(|e| invalid(&e))?;
    let mut validation = Validation::new(Algorithm::ES256);
    validation.set_audience(&[audience]);
    validation.set_required_spec_claims(&["exp", "aud", "sub"]);
    validation.leeway = 0;
    let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key, &validation)
        .map_err(|e| invalid(&e))?;
    let sub = data
        .claims
        .get("sub")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let id = SpiffeId::parse(sub).map_err(|e| invalid(&e))?;
    if id.trust_domain() != trust_domain {
        return Err(JwtSvidError::Invalid(format!(
            "{id} is not in trust domain {trust_domain}"
        )));
    }
    Ok((id, data.claims))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jwt_svid_verifies_for_its_audience_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwt-key.pem");
        let signer = JwtSvidSigner::load_or_generate(&path).unwrap();
        let again = JwtSvidSigner::load_or_generate(&path).unwrap();
        assert_eq!(signer.jwks(), again.jwks(), "the key is kept");
        let id = SpiffeId::parse("spiffe://vigil.local/ns/shop/sa/web").unwrap();
        let token = signer
            .sign(&id, &["orders".to_string()], Duration::from_secs(300))
            .unwrap();
        let (who, claims) =
            validate_jwt_svid(&token, &signer.jwks(), "orders", "vigil.local").unwrap();
        assert_eq!(who, id);
        assert_eq!(claims["aud"], json!(["orders"]));
        assert!(validate_jwt_svid(&token, &signer.jwks(), "payments", "vigil.local").is_err());
        assert!(validate_jwt_svid(&token, &signer.jwks(), "orders", "other.td").is_err());
        let stranger = JwtSvidSigner::from_pem(
            &rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
                .unwrap()
                .serialize_pem(),
        )
        .unwrap();
        assert!(
            validate_jwt_svid(&token, &stranger.jwks(), "orders", "vigil.local").is_err(),
            "another bundle's key"
        );
        let mut forged = token.clone();
        forged.push('x');
        assert!(validate_jwt_svid(&forged, &signer.jwks(), "orders", "vigil.local").is_err());
        assert!(signer.sign(&id, &[], Duration::from_secs(1)).is_err());
    }
}
