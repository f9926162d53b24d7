//! The proxy's own logs (`tracing` to stderr), with a level that can be changed at run
//! time from the admin endpoint.

use std::sync::OnceLock;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

type Handle = reload::Handle<EnvFilter, Registry>;

static HANDLE: OnceLock<Handle> = OnceLock::new();
static CURRENT: OnceLock<std::sync::Mutex<String>> = OnceLock::new();

/// Installs the subscriber; `VIGIL_LOG` (an `EnvFilter` spec) sets the starting level.
pub fn init() {
    let spec = std::env::var("VIGIL_LOG").unwrap_or_else(|_| "info".into());
    let filter = EnvFilter::try_new(&spec).unwrap_or_else(|_| EnvFilter::new("info"));
    let (layer, handle) = reload::Layer::new(filter);
    let _ = tracing_subscriber::registry()
        .with(layer)
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .try_init();
    let _ = HANDLE.set(handle);
    let _ = CURRENT.set(std::sync::Mutex::new(spec));
}

/// The filter in force.
pub fn level() -> String {
    CURRENT
        .get()
        .and_then(|m| m.lock().ok().map(|s| s.clone()))
        .unwrap_or_default()
}

/// Replaces the filter, e.g. `debug` or `info,vigil_proxy::outbound=trace`.
pub fn set_level(spec: &str) -> Result<(), String> {
    let filter =
        EnvFilter::try_new(spec).map_err(|e| format!("invalid log filter {spec:?}: {e}"))?;
    let handle = HANDLE.get().ok_or_else(|| {
        "logging was not initialised through vigil_proxy::telemetry::logging".to_string()
    })?;
    handle.reload(filter).map_err(|e| e.to_string())?;
    if let Some(m) = CURRENT.get() {
        if let Ok(mut current) = m.lock() {
            *current = spec.to_string();
        }
    }
    tracing::info!(filter = %spec, "log level changed");
    Ok(())
}
