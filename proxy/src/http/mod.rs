//! HTTP pieces both directions share: bodies, header hygiene, request limits, the
//! proxy's own errors as responses, and which requests are upgrades.

pub mod body;
pub mod buffer;
pub mod error;
pub mod headers;
pub mod limits;
pub mod upgrade;

/// The protocol as the policy input, the tap and the access log name it.
pub fn protocol_name(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_2 => "HTTP/2",
        http::Version::HTTP_10 => "HTTP/1.0",
        _ => "HTTP/1.1",
    }
}
