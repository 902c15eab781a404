//! Log output: `tracing` events as text or JSON lines, filtered by `LOG_LEVEL`.
//!
//! Long-running subcommands (`run`, `network`) log to stdout, which is the container log;
//! one-shot subcommands keep stdout for their result and log to stderr. Every error is shown
//! the same way, as one chain ([`render_chain`]), wherever it is logged or printed.

use std::fmt::Write as _;

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

#[derive(Debug, thiserror::Error)]
pub(crate) enum LogError {
    #[error("invalid LOG_LEVEL filter")]
    Filter(#[source] tracing_subscriber::filter::ParseError),
    #[error("a global logger is already installed")]
    Install(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// `error: top\n  caused by: next\n  caused by: root` — each message once.
pub(crate) fn render_chain(error: &dyn std::error::Error) -> String {
    let mut out = format!("error: {error}");
    let mut source = error.source();
    while let Some(cause) = source {
        // Infallible: writing to a String.
        let _ = write!(out, "\n  caused by: {cause}");
        source = cause.source();
    }
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sink {
    Stdout,
    Stderr,
}

pub(crate) fn init(config: &LogConfig, sink: Sink) -> Result<(), LogError> {
    let filter = EnvFilter::try_new(&config.level).map_err(LogError::Filter)?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(true);
    let result = match (config.format, sink) {
        (LogFormat::Text, Sink::Stdout) => builder
            .with_ansi(false)
            .with_writer(std::io::stdout)
            .try_init(),
        (LogFormat::Text, Sink::Stderr) => builder
            .with_ansi(false)
            .with_writer(std::io::stderr)
            .try_init(),
        (LogFormat::Json, Sink::Stdout) => builder
            .json()
            .flatten_event(true)
            .with_writer(std::io::stdout)
            .try_init(),
        (LogFormat::Json, Sink::Stderr) => builder
            .json()
            .flatten_event(true)
            .with_writer(std::io::stderr)
            .try_init(),
    };
    result.map_err(LogError::Install)
}
