//! SPIFFE IDs (`spiffe://<trust-domain>/<path>`), parsed by the rules of the SPIFFE ID spec.

use std::fmt;
use std::str::FromStr;

/// The scheme prefix every SPIFFE ID starts with (the spec requires it lowercase).
const SCHEME: &str = "spiffe://";
/// SPIFFE ID spec: a trust domain name is at most 255 bytes.
const MAX_TRUST_DOMAIN_LEN: usize = 255;
/// SPIFFE ID spec: a whole SPIFFE ID is at most 2048 bytes.
const MAX_ID_LEN: usize = 2048;

/// Why a string is not a valid SPIFFE ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    /// The input was empty.
    #[error("SPIFFE ID is empty")]
    Empty,
    /// The input is longer than the spec allows.
    #[error("SPIFFE ID is longer than {MAX_ID_LEN} bytes")]
    TooLong,
    /// The input does not start with `spiffe://`.
    #[error("SPIFFE ID must start with \"spiffe://\"")]
    WrongScheme,
    /// Nothing between `spiffe://` and the path.
    #[error("SPIFFE ID has no trust domain")]
    MissingTrustDomain,
    /// The trust domain is longer than the spec allows.
    #[error("trust domain is longer than {MAX_TRUST_DOMAIN_LEN} bytes")]
    TrustDomainTooLong,
    /// A port (`:`) in the authority.
    #[error("trust domain must not carry a port")]
    Port,
    /// Userinfo (`@`) in the authority.
    #[error("trust domain must not carry userinfo")]
    UserInfo,
    /// A character outside `[a-z0-9._-]` in the trust domain.
    #[error(
        "trust domain contains {0:?}; only lowercase letters, digits, '.', '-' and '_' are allowed"
    )]
    BadTrustDomainChar(char),
    /// A `?query` part.
    #[error("SPIFFE ID must not have a query")]
    Query,
    /// A `#fragment` part.
    #[error("SPIFFE ID must not have a fragment")]
    Fragment,
    /// `//`, or a trailing `/`.
    #[error("SPIFFE ID path has an empty segment (\"//\" or a trailing '/')")]
    EmptySegment,
    /// A `.` or `..` segment.
    #[error("SPIFFE ID path must not contain '.' or '..' segments")]
    DotSegment,
    /// A character outside `[A-Za-z0-9._-]` in a path segment.
    #[error("SPIFFE ID path contains {0:?}; only letters, digits, '.', '-' and '_' are allowed")]
    BadPathChar(char),
}

/// A SPIFFE ID: a trust domain and a (possibly empty) path.
///
/// Displays as `spiffe://<trust_domain><path>`; the path is empty or starts with `/`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    trust_domain: String,
    path: String,
}

impl SpiffeId {
    /// Parses `s` strictly by the SPIFFE ID spec (no normalisation, no percent-encoding).
    pub fn parse(s: &str) -> Result<SpiffeId, SpiffeIdError> {
        if s.is_empty() {
            return Err(SpiffeIdError::Empty);
        }
        if s.len() > MAX_ID_LEN {
            return Err(SpiffeIdError::TooLong);
        }
        // The scheme must be exactly "spiffe" in lowercase: accepting "SPIFFE://" would let
        // two spellings of one identity compare unequal in policy.
        let rest = s.strip_prefix(SCHEME).ok_or(SpiffeIdError::WrongScheme)?;
        // Query and fragment are not path characters, but name them for a clearer error.
        if rest.contains('?') {
            return Err(SpiffeIdError::Query);
        }
        if rest.contains('#') {
            return Err(SpiffeIdError::Fragment);
        }
        let (td, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        validate_trust_domain(td)?;
        validate_path(path)?;
        Ok(SpiffeId {
            trust_domain: td.to_owned(),
            path: path.to_owned(),
        })
    }

    /// The Vigil workload identity `spiffe://<td>/ns/<namespace>/sa/<service_account>`.
    ///
    /// Each part must be a single valid segment, so a `/` in a name cannot forge extra levels.
    pub fn workload(
        trust_domain: &str,
        namespace: &str,
        service_account: &str,
    ) -> Result<SpiffeId, SpiffeIdError> {
        validate_trust_domain(trust_domain)?;
        validate_segment(namespace)?;
        validate_segment(service_account)?;
        Self::parse(&format!(
            "{SCHEME}{trust_domain}/ns/{namespace}/sa/{service_account}"
        ))
    }

    /// The ID naming a whole trust domain (`spiffe://<td>`, empty path).
    pub fn trust_domain_id(trust_domain: &str) -> Result<SpiffeId, SpiffeIdError> {
        validate_trust_domain(trust_domain)?;
        Ok(SpiffeId {
            trust_domain: trust_domain.to_owned(),
            path: String::new(),
        })
    }

    /// The trust domain, e.g. `cluster.local`.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The path: empty, or starting with `/`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The namespace, when the path has the form `/ns/<ns>/sa/<sa>`.
    pub fn namespace(&self) -> Option<&str> {
        self.ns_sa().map(|(ns, _)| ns)
    }

    /// The service account, when the path has the form `/ns/<ns>/sa/<sa>`.
    pub fn service_account(&self) -> Option<&str> {
        self.ns_sa().map(|(_, sa)| sa)
    }

    fn ns_sa(&self) -> Option<(&str, &str)> {
        let mut it = self.path.strip_prefix('/')?.split('/');
        match (it.next(), it.next(), it.next(), it.next(), it.next()) {
            (Some("ns"), Some(ns), Some("sa"), Some(sa), None) => Some((ns, sa)),
            _ => None,
        }
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SCHEME}{}{}", self.trust_domain, self.path)
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SpiffeId::parse(s)
    }
}

/// Checks a bare trust domain name (`example.org`).
pub(crate) fn validate_trust_domain(td: &str) -> Result<(), SpiffeIdError> {
    if td.is_empty() {
        return Err(SpiffeIdError::MissingTrustDomain);
    }
    if td.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(SpiffeIdError::TrustDomainTooLong);
    }
    for c in td.chars() {
        match c {
            'a'..='z' | '0'..='9' | '.' | '-' | '_' => {}
            ':' => return Err(SpiffeIdError::Port),
            '@' => return Err(SpiffeIdError::UserInfo),
            other => return Err(SpiffeIdError::BadTrustDomainChar(other)),
        }
    }
    Ok(())
}

/// Checks a path: empty, or `/seg(/seg)*` with every segment valid.
fn validate_path(path: &str) -> Result<(), SpiffeIdError> {
    if path.is_empty() {
        return Ok(());
    }
    // `path` always starts with '/' here (it was split off at the first '/').
    path.split('/').skip(1).try_for_each(validate_segment)
}

fn validate_segment(seg: &str) -> Result<(), SpiffeIdError> {
    if seg.is_empty() {
        return Err(SpiffeIdError::EmptySegment);
    }
    if seg == "." || seg == ".." {
        return Err(SpiffeIdError::DotSegment);
    }
    match seg
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
    {
        Some(c) => Err(SpiffeIdError::BadPathChar(c)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_valid_ids() {
        let id = SpiffeId::parse("spiffe://example.org").unwrap();
        assert_eq!(id.trust_domain(), "example.org");
        assert_eq!(id.path(), "");
        assert_eq!(id.to_string(), "spiffe://example.org");
        assert_eq!(id, SpiffeId::trust_domain_id("example.org").unwrap());
        for s in [
            "spiffe://cluster.local/ns/default/sa/web",
            "spiffe://td/a",
            "spiffe://my-td_1.example/Path/With-Mixed_Case.v1",
            "spiffe://td/a/b/c/d/e/f",
            "spiffe://td/...", // three dots is a normal segment
            "spiffe://0/x",
        ] {
            let id: SpiffeId = s.parse().unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!(id.to_string(), s);
        }
    }

    #[test]
    fn rejects_invalid_ids() {
        use SpiffeIdError::*;
        let long_td = format!("spiffe://{}/x", "a".repeat(256));
        let long_id = format!("spiffe://td/{}", "a".repeat(2048));
        let cases: Vec<(&str, SpiffeIdError)> = vec![
            ("", Empty),
            ("http://td/x", WrongScheme),
            ("SPIFFE://td/x", WrongScheme),
            ("spiffe:/td/x", WrongScheme),
            ("td/x", WrongScheme),
            ("spiffe://", MissingTrustDomain),
            ("spiffe:///x", MissingTrustDomain),
            ("spiffe://Example.org/x", BadTrustDomainChar('E')),
            ("spiffe://td:8080/x", Port),
            ("spiffe://user@td/x", UserInfo),
            ("spiffe://td/x?q=1", Query),
            ("spiffe://td/x#frag", Fragment),
            ("spiffe://td/", EmptySegment),
            ("spiffe://td/a//b", EmptySegment),
            ("spiffe://td/a/", EmptySegment),
            ("spiffe://td/./a", DotSegment),
            ("spiffe://td/a/..", DotSegment),
            ("spiffe://td/a%20b", BadPathChar('%')),
            ("spiffe://td/a b", BadPathChar(' ')),
            ("spiffe://td/ä", BadPathChar('ä')),
            ("spiffe://t d/x", BadTrustDomainChar(' ')),
            (long_td.as_str(), TrustDomainTooLong),
            (long_id.as_str(), TooLong),
        ];
        for (s, want) in cases {
            assert_eq!(SpiffeId::parse(s), Err(want), "input {s:?}");
        }
    }

    #[test]
    fn workload_builds_ns_sa_path() {
        let id = SpiffeId::workload("cluster.local", "x", "y").unwrap();
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/x/sa/y");
        assert_eq!(id.namespace(), Some("x"));
        assert_eq!(id.service_account(), Some("y"));
        assert_eq!(id.trust_domain(), "cluster.local");
        assert_eq!(id.path(), "/ns/x/sa/y");
        // A slash in a name must not forge extra path levels.
        assert!(SpiffeId::workload("td", "a/b", "c").is_err());
        assert!(SpiffeId::workload("td", "a", "").is_err());
        assert!(SpiffeId::workload("td", "..", "c").is_err());
        assert!(SpiffeId::workload("TD", "a", "c").is_err());
    }

    #[test]
    fn ns_sa_only_for_exact_shape() {
        for s in [
            "spiffe://td/ns/x/sa",
            "spiffe://td/ns/x/sa/y/z",
            "spiffe://td/sa/y/ns/x",
            "spiffe://td",
        ] {
            let id = SpiffeId::parse(s).unwrap();
            assert_eq!(id.namespace(), None, "{s}");
            assert_eq!(id.service_account(), None, "{s}");
        }
    }
}
