//! The CA in cluster mode: one `kubernetes.io/tls` Secret (`tls.crt`, `tls.key`, and
//! `ca.crt` when the signing certificate is an intermediate; the layout cert-manager writes,
//! so a cert-manager or Vault-issued CA can be dropped in).
//!
//! Every replica runs the same code, with no leader: read the Secret; if it is missing,
//! generate a root and create it; if another replica created it first (409), read theirs.
//! A Secret that exists but is empty (pre-created by an operator) is filled with an update
//! that carries its resourceVersion, so two replicas can never both win.

use std::collections::BTreeMap;

use anyhow::Context;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kube::api::{ObjectMeta, PostParams};
use kube::Api;
use vigil_identity::{CertificateAuthority, CA_CERT_FILE, CA_KEY_FILE};

pub const TLS_CRT: &str = "tls.crt";
pub const TLS_KEY: &str = "tls.key";
pub const CA_CRT: &str = "ca.crt";

/// Loads the CA from the Secret `name`, creating it on first start.
pub async fn load_or_create(
    api: &Api<Secret>,
    name: &str,
    trust_domain: &str,
) -> anyhow::Result<CertificateAuthority> {
    for _ in 0..5 {
        let existing = api.get_opt(name).await.with_context(|| {
            format!("reading the CA Secret {name} (RBAC: get on secrets/{name})")
        })?;
        match existing {
            Some(secret) => {
                if let Some(ca) = ca_from_secret(&secret, trust_domain)? {
                    tracing::info!(secret = name, "CA loaded from its Secret");
                    return Ok(ca);
                }
                let (ca, data) = generate(trust_domain)?;
                let mut filled = secret.clone();
                filled.data = Some(data);
                filled.type_ = Some("kubernetes.io/tls".into());
                match api.replace(name, &PostParams::default(), &filled).await {
                    Ok(_) => {
                        tracing::info!(secret = name, "generated a root CA into the empty Secret");
                        return Ok(ca);
                    }
                    Err(kube::Error::Api(s)) if s.code == 409 => continue,
                    Err(e) => {
                        return Err(e).with_context(|| {
                            format!("filling the CA Secret {name} (RBAC: update on secrets/{name})")
                        })
                    }
                }
            }
            None => {
                let (ca, data) = generate(trust_domain)?;
                let secret = Secret {
                    metadata: ObjectMeta {
                        name: Some(name.to_string()),
                        labels: Some(BTreeMap::from([(
                            "app.kubernetes.io/part-of".to_string(),
                            "vigil".to_string(),
                        )])),
                        ..ObjectMeta::default()
                    },
                    type_: Some("kubernetes.io/tls".into()),
                    data: Some(data),
                    ..Secret::default()
                };
                match api.create(&PostParams::default(), &secret).await {
                    Ok(_) => {
                        tracing::info!(
                            secret = name,
                            "generated a root CA and stored it in a Secret"
                        );
                        return Ok(ca);
                    }
                    // Another replica got there first: use its CA.
                    Err(kube::Error::Api(s)) if s.code == 409 => continue,
                    Err(e) => {
                        return Err(e).with_context(|| {
                            format!("creating the CA Secret {name} (RBAC: create on secrets)")
                        })
                    }
                }
            }
        }
    }
    anyhow::bail!("the CA Secret {name} kept changing under this replica; restart it")
}

/// The CA a Secret holds; `None` when the Secret has no CA in it yet.
pub fn ca_from_secret(
    secret: &Secret,
    trust_domain: &str,
) -> anyhow::Result<Option<CertificateAuthority>> {
    let data = secret.data.clone().unwrap_or_default();
    let text = |key: &str| -> anyhow::Result<Option<String>> {
        match data.get(key) {
            Some(ByteString(b)) if !b.is_empty() => {
                Ok(Some(String::from_utf8(b.clone()).with_context(|| {
                    format!("{key} in the CA Secret is not PEM text")
                })?))
            }
            _ => Ok(None),
        }
    };
    let (cert, key) = match (text(TLS_CRT)?, text(TLS_KEY)?) {
        (Some(c), Some(k)) => (c, k),
        (None, None) => return Ok(None),
        _ => {
            anyhow::bail!("the CA Secret has only one of {TLS_CRT} and {TLS_KEY}; fix or delete it")
        }
    };
    // ca.crt equal to tls.crt means a self-signed root: no chain to add.
    let chain = text(CA_CRT)?.filter(|c| c.trim() != cert.trim());
    let ca = CertificateAuthority::from_pem_with_trust_domain(
        trust_domain,
        &cert,
        &key,
        chain.as_deref(),
    )
    .context("the CA in the Secret is not usable")?;
    Ok(Some(ca))
}

/// A new root for `trust_domain` and the Secret data holding it. The key is made by the
/// identity crate in a private temporary directory and removed with it.
fn generate(
    trust_domain: &str,
) -> anyhow::Result<(CertificateAuthority, BTreeMap<String, ByteString>)> {
    let dir = tempfile::tempdir().context("creating a temporary directory for the new CA")?;
    let ca_dir = dir.path().join("ca");
    let ca = CertificateAuthority::load_or_generate(&ca_dir, trust_domain)
        .context("generating the root CA")?;
    let read = |file: &str| {
        std::fs::read(ca_dir.join(file)).with_context(|| format!("reading the new CA's {file}"))
    };
    let cert = read(CA_CERT_FILE)?;
    let key = read(CA_KEY_FILE)?;
    let data = BTreeMap::from([
        (TLS_CRT.to_string(), ByteString(cert.clone())),
        (TLS_KEY.to_string(), ByteString(key)),
        (CA_CRT.to_string(), ByteString(cert)),
    ]);
    Ok((ca, data))
}
