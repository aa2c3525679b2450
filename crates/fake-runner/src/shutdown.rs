//! SIGTERM / SIGINT as a watch channel, so every waiting point can react to it.

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

/// Starts listening; the receiver turns `true` at the first SIGTERM or SIGINT.
pub fn listen() -> std::io::Result<watch::Receiver<bool>> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!("received {name}, shutting down");
        let _ = tx.send(true);
        // Keep the handlers installed so a second signal does not kill us mid-report.
        loop {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
    });
    Ok(rx)
}

/// Resolves once shutdown was requested (never, if the sender is gone without a signal).
pub async fn requested(rx: &mut watch::Receiver<bool>) {
    if rx.wait_for(|v| *v).await.is_err() {
        std::future::pending::<()>().await;
    }
}
