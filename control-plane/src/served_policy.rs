//! A policy bundle as the control plane serves it: encoded once, with its candidate,
//! however many proxies run it. Each proxy's copy only appends that workload's facts.

/// A bundle as served, with the candidate evaluated beside it, each encoded once for
/// every proxy that runs it.
#[derive(Debug, Clone, PartialEq)]
pub struct ServedPolicy {
    pub bundle: vigil_api::PolicyBundle,
    pub candidate: Option<vigil_api::PolicyBundle>,
    encoded: Encoded,
}

#[derive(Debug, Clone, PartialEq)]
struct Encoded {
    bundle: bytes::Bytes,
    candidate: bytes::Bytes,
    /// Of both encodings: what a snapshot's version takes from the policy.
    digest: [u8; 32],
}

impl ServedPolicy {
    pub fn new(
        bundle: vigil_api::PolicyBundle,
        candidate: Option<vigil_api::PolicyBundle>,
    ) -> ServedPolicy {
        use prost::Message;
        use sha2::{Digest, Sha256};
        let encoded_bundle = bytes::Bytes::from(bundle.encode_to_vec());
        let encoded_candidate = candidate
            .as_ref()
            .map_or_else(bytes::Bytes::new, |c| bytes::Bytes::from(c.encode_to_vec()));
        let mut digest = Sha256::new();
        for part in [&encoded_bundle, &encoded_candidate] {
            digest.update((part.len() as u64).to_le_bytes());
            digest.update(part);
        }
        ServedPolicy {
            bundle,
            candidate,
            encoded: Encoded {
                bundle: encoded_bundle,
                candidate: encoded_candidate,
                digest: digest.finalize().into(),
            },
        }
    }

    /// A digest of the bundle and candidate as sent.
    pub fn digest(&self) -> &[u8; 32] {
        &self.encoded.digest
    }

    /// The bundle as sent to one workload: its encoding with the workload's `facts` (see
    /// [`vigil_authz::WORKLOAD_DATA_PATH`]) appended as one more file, unless the bundle
    /// has a file of its own there. Appending a repeated field's element to an encoded
    /// message is how protobuf merges, so the shared encoding is copied, not redone.
    pub fn encoded_for(&self, facts: &str) -> bytes::Bytes {
        with_facts(&self.encoded.bundle, &self.bundle, facts)
    }

    /// Like [`encoded_for`](Self::encoded_for) for the candidate; empty without one.
    pub fn encoded_candidate_for(&self, facts: &str) -> bytes::Bytes {
        match &self.candidate {
            Some(candidate) => with_facts(&self.encoded.candidate, candidate, facts),
            None => bytes::Bytes::new(),
        }
    }
}

fn with_facts(
    encoded: &bytes::Bytes,
    bundle: &vigil_api::PolicyBundle,
    facts: &str,
) -> bytes::Bytes {
    if bundle
        .files
        .iter()
        .any(|f| f.path == vigil_authz::WORKLOAD_DATA_PATH)
    {
        return encoded.clone();
    }
    let file = vigil_api::PolicyFile {
        path: vigil_authz::WORKLOAD_DATA_PATH.to_string(),
        contents: facts.to_string(),
    };
    // Field 2 of PolicyBundle: `repeated PolicyFile files`.
    let mut out = bytes::BytesMut::with_capacity(encoded.len() + facts.len() + 64);
    out.extend_from_slice(encoded);
    prost::encoding::message::encode(2, &file, &mut out);
    out.freeze()
}
