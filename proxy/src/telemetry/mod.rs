//! What the proxy tells about itself and its traffic: the metrics registry, the record
//! of each request (metrics, tap, access log, hop span), traces, and its own logs.

pub mod log_writer;
pub mod logging;
pub mod metrics;
pub mod observe;
pub mod tap;
pub mod trace;
