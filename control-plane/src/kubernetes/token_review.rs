//! Cluster mode's bootstrap credential: a projected ServiceAccount token (audience `vigil`),
//! checked by the API server through a TokenReview. The authenticated ServiceAccount decides
//! the identity, `spiffe://<td>/ns/<ns>/sa/<sa>`; the pod name the API server binds to the
//! token names the workload.

use k8s_openapi::api::authentication::v1::TokenReview;
use serde_json::json;
use vigil_api::TokenKind;
use vigil_identity::SpiffeId;

use crate::identity_service::{CredentialCheck, CredentialError, VerifiedWorkload};
use crate::inject::TOKEN_AUDIENCE;

const TOKEN_REVIEWS: &str = "/apis/authentication.k8s.io/v1/tokenreviews";
const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";

/// Checks tokens with the API server.
pub struct TokenReviews {
    pub client: kube::Client,
    pub trust_domain: String,
}

/// The TokenReview request body: the token and the one audience Vigil accepts.
pub fn review_request(token: &str) -> serde_json::Value {
    json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenReview",
        "spec": {"token": token, "audiences": [TOKEN_AUDIENCE]},
    })
}

/// The identity an answered TokenReview vouches for, or why it vouches for none.
pub fn identity_from_review(
    review: &TokenReview,
    trust_domain: &str,
) -> Result<VerifiedWorkload, CredentialError> {
    let refused = |m: String| Err(CredentialError::Refused(m));
    let Some(status) = review.status.as_ref() else {
        return refused("the TokenReview came back without a status".into());
    };
    if status.authenticated != Some(true) {
        return refused(format!(
            "the API server did not authenticate the token: {}",
            status.error.as_deref().unwrap_or("no reason given")
        ));
    }
    let audiences = status.audiences.as_deref().unwrap_or_default();
    if !audiences.iter().any(|a| a == TOKEN_AUDIENCE) {
        return refused(format!(
            "the token is not for audience {TOKEN_AUDIENCE:?} (it is for {audiences:?}); \
             mount a projected ServiceAccount token with audience {TOKEN_AUDIENCE}"
        ));
    }
    let user = status.user.as_ref();
    let username = user.and_then(|u| u.username.as_deref()).unwrap_or_default();
    let Some((namespace, service_account)) = username
        .strip_prefix("system:serviceaccount:")
        .and_then(|rest| rest.split_once(':'))
    else {
        return refused(format!(
            "the token belongs to {username:?}, not a ServiceAccount"
        ));
    };
    let spiffe_id = SpiffeId::workload(trust_domain, namespace, service_account)
        .map_err(|e| CredentialError::Refused(format!("no valid identity for {username}: {e}")))?;
    let workload = user
        .and_then(|u| u.extra.as_ref())
        .and_then(|extra| extra.get(POD_NAME_EXTRA))
        .and_then(|names| names.first())
        .cloned()
        .unwrap_or_default();
    Ok(VerifiedWorkload {
        spiffe_id,
        workload,
        namespace: namespace.to_string(),
    })
}

#[tonic::async_trait]
impl CredentialCheck for TokenReviews {
    async fn verify(
        &self,
        kind: TokenKind,
        token: &str,
    ) -> Result<VerifiedWorkload, CredentialError> {
        if kind != TokenKind::KubernetesServiceAccount {
            return Err(CredentialError::Refused(
                "this control plane runs in cluster mode and accepts only ServiceAccount tokens \
                 (--token-kind kubernetes)"
                    .into(),
            ));
        }
        if token.is_empty() {
            return Err(CredentialError::Refused("the token is empty".into()));
        }
        let body = serde_json::to_vec(&review_request(token))
            .map_err(|e| CredentialError::Unavailable(format!("encoding the TokenReview: {e}")))?;
        let request = http::Request::post(TOKEN_REVIEWS)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(body)
            .map_err(|e| CredentialError::Unavailable(format!("building the TokenReview: {e}")))?;
        let review: TokenReview = self.client.request(request).await.map_err(|e| {
            let hint = match &e {
                kube::Error::Api(s) if s.code == 403 => {
                    " (the control plane's ServiceAccount needs create on tokenreviews: apply manifests/base/rbac.yaml)"
                }
                _ => "",
            };
            CredentialError::Unavailable(format!("TokenReview failed: {e}{hint}"))
        })?;
        identity_from_review(&review, &self.trust_domain)
    }
}
