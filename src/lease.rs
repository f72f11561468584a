//! Leader election on a `coordination.k8s.io` Lease: only the holder runs the controllers.
//! Losing the Lease ends the process (the safe choice controller-runtime also makes): a
//! replica that may no longer be the only writer must stop writing at once.

use std::time::{Duration, Instant};

use kube::Client;
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder};
use tracing::{info, warn};

/// How to take part in the election.
#[derive(Clone, Debug)]
pub struct LeaseSettings {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    /// Seconds a Lease stays valid without renewal: the longest a dead leader blocks the others.
    pub duration: u64,
    /// Seconds before expiry at which the holder renews.
    pub grace: u64,
}

pub struct Leadership {
    manager: LeaseManager,
}

impl Leadership {
    /// Waits until this replica holds the Lease.
    pub async fn acquire(
        client: Client,
        settings: &LeaseSettings,
    ) -> Result<Self, kube_lease_manager::LeaseManagerError> {
        let manager = LeaseManagerBuilder::new(client, &settings.name)
            .with_namespace(&settings.namespace)
            .with_identity(&settings.identity)
            .with_duration(settings.duration)
            .with_grace(settings.grace)
            .build()
            .await?;
        info!(lease = %settings.name, namespace = %settings.namespace, identity = %settings.identity, "Waiting for the leader Lease");
        loop {
            match manager.changed().await {
                Ok(true) => break,
                Ok(false) => {}
                Err(error) => {
                    warn!(error = %error, "Lease request failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
        info!(identity = %settings.identity, "Acquired the leader Lease");
        Ok(Self { manager })
    }

    /// Keeps renewing the Lease; returns when it is lost, or when renewals have failed for a
    /// whole Lease duration (by then another replica may hold it).
    pub async fn hold(&self, duration: Duration) {
        let mut last_renewed = Instant::now();
        loop {
            match tokio::time::timeout(duration.saturating_sub(last_renewed.elapsed()), self.manager.changed()).await {
                Ok(Ok(true)) => last_renewed = Instant::now(),
                Ok(Ok(false)) | Err(_) => return,
                Ok(Err(error)) => {
                    warn!(error = %error, "Lease renewal failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }

    /// Hands the Lease back, so a standby takes over without waiting for it to expire.
    pub async fn release(self) {
        if let Err(error) = self.manager.release().await {
            warn!(error = %error, "Failed to release the leader Lease");
        }
    }
}
