//! Leader election on a `coordination.k8s.io` Lease: only the holder runs the controllers.
//! Losing the Lease ends the process (the safe choice controller-runtime also makes): a
//! replica that may no longer be the only writer must stop writing at once.
//!
//! `LeaseManager::changed` renews the Lease for as long as it is awaited and returns only when
//! the holder changes or a request fails. So the holder keeps one `changed()` pending all the
//! time; it never puts a deadline on it (a healthy leader's call never returns).

use std::time::{Duration, Instant};

use kube::{Client, Config};
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

impl LeaseSettings {
    /// The longest one Lease request may take. Bounded so that a hung renewal shows up as an
    /// error well before the Lease could expire under it.
    fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.grace) / 4
    }

    /// How long renewals may keep failing before the holder gives up. A renewal starts `grace`
    /// seconds before expiry and its first failure comes at most one request timeout later, so
    /// giving up after half the grace leaves this replica stopped before the Lease can expire.
    fn renew_deadline(&self) -> Duration {
        Duration::from_secs(self.grace) / 2
    }
}

pub struct Leadership {
    manager: LeaseManager,
    settings: LeaseSettings,
}

/// Why [`Leadership::hold`] returned.
#[derive(Debug, PartialEq, Eq)]
pub enum LeaseLoss {
    /// The Lease says another replica holds it.
    TakenOver,
    /// Renewals failed for the whole renew deadline.
    RenewalsFailed,
}

impl Leadership {
    /// Waits until this replica holds the Lease. `config` is the operator's own; the Lease gets a
    /// client of its own with bounded request times.
    pub async fn acquire(config: &Config, settings: &LeaseSettings) -> anyhow::Result<Self> {
        let mut config = config.clone();
        let timeout = settings.request_timeout();
        config.connect_timeout = Some(timeout);
        config.read_timeout = Some(timeout);
        config.write_timeout = Some(timeout);
        let client = Client::try_from(config)?;
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
        Ok(Self { manager, settings: settings.clone() })
    }

    /// Keeps renewing the Lease; returns once it is lost: another replica holds it, or renewals
    /// have failed for the renew deadline without a break.
    pub async fn hold(&self) -> LeaseLoss {
        // A `changed()` that stays pending longer than two requests can take has made its
        // requests and sleeps until the next renewal: the failures, if any, are over.
        let settled = self.settings.request_timeout() * 2 + Duration::from_millis(100);
        let mut failing_since: Option<Instant> = None;
        loop {
            let changed = self.manager.changed();
            tokio::pin!(changed);
            let result = loop {
                tokio::select! {
                    result = &mut changed => break result,
                    () = tokio::time::sleep(settled) => failing_since = None,
                }
            };
            match result {
                Ok(true) => failing_since = None,
                Ok(false) => return LeaseLoss::TakenOver,
                Err(error) => {
                    let since = *failing_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= self.settings.renew_deadline() {
                        warn!(error = %error, "Lease renewals kept failing; giving the Lease up");
                        return LeaseLoss::RenewalsFailed;
                    }
                    warn!(error = %error, "Lease renewal failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(duration: u64, grace: u64) -> LeaseSettings {
        LeaseSettings { namespace: "ns".into(), name: "l".into(), identity: "i".into(), duration, grace }
    }

    #[test]
    fn a_failing_holder_stops_before_its_lease_can_expire() {
        for (duration, grace) in [(15, 10), (15, 5), (4, 2), (60, 20), (2, 1)] {
            let s = settings(duration, grace);
            // The renewal starts `grace` before expiry; the first failure is reported at most one
            // request timeout later, and the holder stops a renew deadline after that.
            let worst_stop = s.request_timeout() + s.renew_deadline();
            assert!(worst_stop < Duration::from_secs(grace), "{duration}/{grace}: {worst_stop:?}");
        }
    }
}
