//! Logging setup: structured tracing to stderr as text or JSON, level from `RUST_LOG`.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber on stderr; `RUST_LOG` overrides `default_level`. A second call is a no-op, so
/// commands and tests may both call it.
pub fn init(json: bool, default_level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = if json { builder.json().flatten_event(true).try_init() } else { builder.try_init() };
}
