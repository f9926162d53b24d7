//! Bytes and connections: accepting with limits, the original destination, the first
//! bytes of a connection, serving HTTP on it, tunnels, write stalls, draining, pooled
//! mutual-TLS connections to peer proxies, keep-alive connections to the app, and HTTP/2
//! writes gathered per poll.

pub mod app;
pub mod cork;
pub mod drain;
pub mod listener;
pub mod orig_dst;
pub mod pool;
pub mod preface;
pub mod serve;
pub mod stall;
pub mod workers;
