//! Shutdown as a value: a [`Shutdown`] is handed to every task that must stop when the daemon
//! stops; the one [`ShutdownTrigger`] fires it. Tasks check it between steps and wait on it
//! beside their own sleeps, so a stop never interrupts a step halfway except at the deadline.

use tokio::sync::watch;

/// Fires the shutdown for every [`Shutdown`] made from it.
#[derive(Debug)]
pub struct ShutdownTrigger {
    tx: watch::Sender<bool>,
}

/// Tells a task whether, and when, to stop.
#[derive(Debug, Clone)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
}

/// A new trigger and the first of its receivers.
pub fn channel() -> (ShutdownTrigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (ShutdownTrigger { tx }, Shutdown { rx })
}

impl ShutdownTrigger {
    /// Asks every task to stop. Idempotent.
    pub fn fire(&self) {
        self.tx.send_replace(true);
    }

    /// Another receiver.
    pub fn subscribe(&self) -> Shutdown {
        Shutdown {
            rx: self.tx.subscribe(),
        }
    }
}

impl Shutdown {
    /// A receiver that never fires (one-shot commands stop by exiting).
    pub fn never() -> Shutdown {
        let (tx, rx) = watch::channel(false);
        // Keep the sender alive for the life of the process, so `requested` waits forever.
        std::mem::forget(tx);
        Shutdown { rx }
    }

    /// Whether a stop was asked for.
    pub fn is_requested(&self) -> bool {
        *self.rx.borrow()
    }

    /// Waits until a stop is asked for (at once if it already was).
    pub async fn requested(&mut self) {
        // An error means the trigger is gone, which also means stop.
        let _ = self.rx.wait_for(|stop| *stop).await;
    }

    /// Sleeps for `duration`, or less if a stop is asked for. Returns false when interrupted.
    pub async fn sleep(&mut self, duration: std::time::Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(duration) => true,
            _ = self.requested() => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_fired_trigger_interrupts_sleeps_and_stays_fired() {
        let (trigger, mut shutdown) = channel();
        let mut other = trigger.subscribe();
        assert!(!shutdown.is_requested());
        assert!(shutdown.sleep(Duration::from_millis(1)).await);
        trigger.fire();
        assert!(shutdown.is_requested());
        assert!(!other.sleep(Duration::from_secs(3600)).await);
        shutdown.requested().await;
    }

    #[tokio::test]
    async fn never_does_not_fire() {
        let mut never = Shutdown::never();
        assert!(never.sleep(Duration::from_millis(5)).await);
        assert!(!never.is_requested());
    }
}
