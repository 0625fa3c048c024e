//! Shutdown signals: SIGINT and SIGTERM cancel one token that every part of a server
//! watches.

use tokio_util::sync::CancellationToken;

/// A token that is cancelled on the first SIGINT or SIGTERM.
///
/// Must be called inside a Tokio runtime. If the signal handlers cannot be installed
/// the token is never cancelled by a signal, and the failure is logged.
pub fn on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        match wait_for_signal().await {
            Ok(name) => tracing::info!(signal = name, "shutting down"),
            Err(err) => {
                tracing::error!(error = %err, "cannot listen for shutdown signals");
                return;
            }
        }
        cancel.cancel();
    });
    token
}

async fn wait_for_signal() -> std::io::Result<&'static str> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(tokio::select! {
        _ = terminate.recv() => "SIGTERM",
        _ = interrupt.recv() => "SIGINT",
    })
}
