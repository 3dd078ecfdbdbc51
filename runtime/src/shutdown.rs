//! Stopping: a [`Shutdown`] is one stop request shared by every task and thread that must obey
//! it. Whoever holds a clone can ask (`request`) or wait (`requested`, or `is_requested` from
//! a thread that polls). [`Shutdown::on_signals`] is the process's own, asked by SIGTERM or
//! SIGINT; [`Shutdown::or_after`] a run's own stop, asked by it or once `--exit-after` passed.

use std::sync::Arc;

use tokio::sync::watch;

/// A stop request: once asked, it stays asked. Cheap to clone; clones share the request.
#[derive(Debug, Clone)]
pub struct Shutdown {
    // Every clone holds the sender, so waiting can never end for any other reason.
    asked: Arc<watch::Sender<bool>>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown::new()
    }
}

impl Shutdown {
    pub fn new() -> Self {
        Shutdown {
            asked: Arc::new(watch::Sender::new(false)),
        }
    }

    /// Asks every holder to stop.
    pub fn request(&self) {
        self.asked.send_replace(true);
    }

    pub fn is_requested(&self) -> bool {
        *self.asked.borrow()
    }

    /// Resolves once stopping is asked (at once if it already was).
    pub async fn requested(&self) {
        let mut asked = self.asked.subscribe();
        // The sender lives as long as `self`: this cannot fail.
        let _ = asked.wait_for(|asked| *asked).await;
    }

    /// A new stop request, asked when this one is, and by itself once `after` has passed
    /// (`--exit-after`), if given; it can also be asked on its own (the input is done). Must be
    /// called inside a Tokio runtime.
    pub fn or_after(&self, after: Option<std::time::Duration>) -> Shutdown {
        let stop = Shutdown::new();
        let (outer, asked) = (self.clone(), stop.clone());
        tokio::spawn(async move {
            let expired = async {
                match after {
                    Some(after) => tokio::time::sleep(after).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = outer.requested() => {}
                () = expired => tracing::info!(?after, "--exit-after reached"),
                // Asked directly: nothing left to forward.
                () = asked.requested() => return,
            }
            asked.request();
        });
        stop
    }

    /// A shutdown asked by SIGTERM or SIGINT (Ctrl-C), whichever comes first. The handlers are
    /// installed now, not when something first waits: a signal that arrives before then must
    /// not kill the process with the default action. Must be called inside a Tokio runtime.
    pub fn on_signals() -> Self {
        use tokio::signal::unix::{SignalKind, signal};
        let shutdown = Shutdown::new();
        let terminate = signal(SignalKind::terminate());
        let interrupt = signal(SignalKind::interrupt());
        let asked = shutdown.clone();
        tokio::spawn(async move {
            match (terminate, interrupt) {
                (Ok(mut terminate), Ok(mut interrupt)) => {
                    tokio::select! {
                        _ = terminate.recv() => {}
                        _ = interrupt.recv() => {}
                    }
                }
                (Err(error), _) | (_, Err(error)) => {
                    tracing::warn!(%error, "cannot watch SIGTERM/SIGINT; stop this process with SIGKILL");
                    return;
                }
            }
            tracing::info!("shutdown requested");
            asked.request();
        });
        shutdown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_clone_sees_the_request_also_after_it_was_made() {
        let shutdown = Shutdown::new();
        let waiter = shutdown.clone();
        let waiting = tokio::spawn(async move { waiter.requested().await });
        assert!(!shutdown.is_requested());
        shutdown.request();
        tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .unwrap()
            .unwrap();
        // Asked once, asked for good: a late waiter returns at once.
        shutdown.clone().requested().await;
        assert!(shutdown.is_requested());
    }

    #[tokio::test]
    async fn a_run_stops_when_its_outer_shutdown_does_or_once_its_time_is_up() {
        let outer = Shutdown::new();
        let run = outer.or_after(None);
        assert!(!run.is_requested());
        outer.request();
        tokio::time::timeout(std::time::Duration::from_secs(5), run.requested())
            .await
            .unwrap();
        let timed = Shutdown::new().or_after(Some(std::time::Duration::from_millis(10)));
        tokio::time::timeout(std::time::Duration::from_secs(5), timed.requested())
            .await
            .unwrap();
    }
}
