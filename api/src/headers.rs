//! Header names with a meaning in the mesh, shared by the proxy (which strips and sets
//! them) and the traffic policy (which may not change them).

/// Header carrying the verified peer SPIFFE ID to the application.
pub const PEER_IDENTITY: &str = "x-vigil-peer-identity";

/// Headers that claim a caller's identity: only the proxy that verified it sets one, and
/// whatever arrives in them is discarded.
pub const IDENTITY_HEADERS: [&str; 3] = [
    PEER_IDENTITY,
    "x-forwarded-client-cert",
    "x-client-spiffe-id",
];

/// Headers of one connection, never carried across a proxy.
pub const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "te",
    "trailer",
];
