//! Log output on stderr: `RDMABUS_LOG` filters (`warn` by default; `info` shows each link's
//! device, GID, MTU, inline size and QP numbers), `RDMABUS_LOG_FORMAT` picks `text` (the
//! default) or `json` (one object per line, for journald or ELK). Colours only when stderr is
//! a terminal and `NO_COLOR` is unset.

use std::io::IsTerminal;

/// The log formats `RDMABUS_LOG_FORMAT` takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Reads `RDMABUS_LOG_FORMAT` (unset or empty: text).
pub fn format_from_env() -> Result<Format, String> {
    match std::env::var("RDMABUS_LOG_FORMAT").ok().as_deref() {
        None | Some("") | Some("text") => Ok(Format::Text),
        Some("json") => Ok(Format::Json),
        Some(other) => Err(format!(
            "RDMABUS_LOG_FORMAT={:?}: use text or json",
            other.escape_debug().to_string()
        )),
    }
}

/// Installs the global subscriber.
pub fn init(format: Format) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RDMABUS_LOG")
        .unwrap_or_else(|_| "warn".into());
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        Format::Text => builder.with_ansi(ansi).init(),
        Format::Json => builder
            .json()
            .with_ansi(false)
            .with_current_span(false)
            .init(),
    }
}
