//! Hostile clients against real proxies (processes on loopback): attempts to walk around
//! request policy, malformed and smuggled HTTP/1, oversized heads, request line, header and body limits, idle timeouts,
//! slowloris, an HTTP/2 rapid-reset flood, bad TLS, a peer killed mid-stream, running
//! out of file descriptors, SIGTERM under load, 10,000 idle connections and a testssl.sh audit.
//!
//! Every attack runs while a well-behaved client keeps calling through the same proxies
//! ([`support::Steady`]); each test ends by asserting that client saw no error. The tests
//! take a shared lock and run one at a time: they measure the proxies' behaviour under
//! attack, and two attacks at once on a two-core machine would only measure each other.

mod bypass;
mod drain;
mod fd_exhaustion;
mod h2_flood;
mod http1;
mod idle;
mod limits;
mod peer_kill;
mod slowloris;
mod support;
mod testssl;
mod tls;
