//! Failed authentication, counted per client address: an address that fails too often in a
//! short time is blocked for a while (credential stuffing, a sender with a rotated secret
//! hammering the hub), and each new block is handed to the alert engine.
//!
//! Webhook sources and the admin API share one guard, so an address guessing admin tokens
//! is blocked from posting events too. The tally is in memory: a restart forgets it, which
//! errs towards letting a legitimate sender back in.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `[ingest.auth_failures]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AuthFailureSettings {
    /// Block addresses that fail authentication too often.
    pub block: bool,
    /// Failures from one address within `window` that block it.
    pub max_failures: u32,
    #[serde(with = "humantime_serde")]
    #[schema(value_type = String, format = Duration)]
    pub window: Duration,
    /// How long a blocked address is refused (`429 address-blocked` with `Retry-After`).
    #[serde(with = "humantime_serde")]
    #[schema(value_type = String, format = Duration)]
    pub block_for: Duration,
}

impl Default for AuthFailureSettings {
    fn default() -> Self {
        Self {
            block: true,
            max_failures: 20,
            window: Duration::from_secs(60),
            block_for: Duration::from_secs(15 * 60),
        }
    }
}

/// One address's failures in its current window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    window_start_ms: i64,
    failures: u32,
    blocked_until_ms: i64,
}

/// Counts one failure at `now_ms`; `true` when it makes the address blocked. Pure.
pub fn count_failure(tally: &mut Tally, now_ms: i64, settings: &AuthFailureSettings) -> bool {
    let window_ms = settings.window.as_millis() as i64;
    if now_ms - tally.window_start_ms >= window_ms || tally.failures == 0 {
        tally.window_start_ms = now_ms;
        tally.failures = 0;
    }
    tally.failures += 1;
    if settings.block
        && tally.failures >= settings.max_failures.max(1)
        && tally.blocked_until_ms <= now_ms
    {
        tally.blocked_until_ms = now_ms + settings.block_for.as_millis() as i64;
        tally.failures = 0;
        return true;
    }
    false
}

/// A block, as the API lists it and the alert engine reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Block {
    #[schema(value_type = String)]
    pub address: IpAddr,
    /// The source (or `admin`) whose authentication failed last.
    pub source: String,
    pub blocked_until_ms: i64,
}

/// Most addresses tallied; past it, addresses neither blocked nor failing lately are
/// forgotten first.
const MAX_TRACKED: usize = 100_000;

#[derive(Debug, Default)]
struct State {
    tallies: HashMap<IpAddr, (Tally, String)>,
    new_blocks: Vec<Block>,
}

#[derive(Debug, Default)]
pub struct AuthGuard {
    settings: AuthFailureSettings,
    state: Mutex<State>,
    /// The latest end of any block: before it passes, a request's address is looked up;
    /// after, no address can be blocked and the ingest path takes no lock.
    blocks_end_ms: std::sync::atomic::AtomicI64,
}

impl AuthGuard {
    pub fn new(settings: AuthFailureSettings) -> Self {
        Self {
            settings,
            state: Mutex::default(),
            blocks_end_ms: std::sync::atomic::AtomicI64::new(i64::MIN),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How long `address` stays blocked, if it is.
    pub fn blocked_for_ms(&self, address: Option<IpAddr>, now_ms: i64) -> Option<u64> {
        let address = address?;
        if self
            .blocks_end_ms
            .load(std::sync::atomic::Ordering::Relaxed)
            <= now_ms
        {
            return None;
        }
        let state = self.state();
        let (tally, _) = state.tallies.get(&address)?;
        (tally.blocked_until_ms > now_ms).then(|| (tally.blocked_until_ms - now_ms) as u64)
    }

    /// Records a failed authentication against `source` (a source's name, or `admin`).
    pub fn failed(&self, address: Option<IpAddr>, source: &str, reason: &'static str, now_ms: i64) {
        metrics::counter!("raccordo_auth_failures_total", "source" => source.to_string(), "reason" => reason)
            .increment(1);
        let Some(address) = address else { return };
        let mut state = self.state();
        if state.tallies.len() >= MAX_TRACKED && !state.tallies.contains_key(&address) {
            let window_ms = self.settings.window.as_millis() as i64;
            state.tallies.retain(|_, (t, _)| {
                t.blocked_until_ms > now_ms || now_ms - t.window_start_ms < window_ms
            });
            if state.tallies.len() >= MAX_TRACKED {
                return;
            }
        }
        let entry = state
            .tallies
            .entry(address)
            .or_insert_with(|| (Tally::default(), String::new()));
        entry.1 = source.to_string();
        if count_failure(&mut entry.0, now_ms, &self.settings) {
            let block = Block {
                address,
                source: source.to_string(),
                blocked_until_ms: entry.0.blocked_until_ms,
            };
            self.blocks_end_ms
                .fetch_max(block.blocked_until_ms, std::sync::atomic::Ordering::Relaxed);
            metrics::counter!("raccordo_auth_blocks_total", "source" => source.to_string())
                .increment(1);
            tracing::warn!(%address, source, blocked_until_ms = block.blocked_until_ms, "address blocked after repeated authentication failures");
            state.new_blocks.push(block);
        }
    }

    /// Blocks made since the last call (for the alert engine).
    pub fn take_new_blocks(&self) -> Vec<Block> {
        std::mem::take(&mut self.state().new_blocks)
    }

    /// Addresses blocked now.
    pub fn blocked(&self, now_ms: i64) -> Vec<Block> {
        let mut blocks: Vec<Block> = self
            .state()
            .tallies
            .iter()
            .filter(|(_, (t, _))| t.blocked_until_ms > now_ms)
            .map(|(address, (t, source))| Block {
                address: *address,
                source: source.clone(),
                blocked_until_ms: t.blocked_until_ms,
            })
            .collect();
        blocks.sort_by_key(|b| b.blocked_until_ms);
        blocks
    }

    /// Lifts a block (an admin let the address back in); whether it was blocked.
    pub fn unblock(&self, address: IpAddr, now_ms: i64) -> bool {
        let mut state = self.state();
        match state.tallies.get_mut(&address) {
            Some((tally, _)) if tally.blocked_until_ms > now_ms => {
                *tally = Tally::default();
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(max: u32) -> AuthFailureSettings {
        AuthFailureSettings {
            block: true,
            max_failures: max,
            window: Duration::from_secs(60),
            block_for: Duration::from_secs(600),
        }
    }

    #[test]
    fn a_burst_within_the_window_blocks_and_a_slow_drip_does_not() {
        let s = settings(3);
        let mut burst = Tally::default();
        assert!(!count_failure(&mut burst, 1_000, &s));
        assert!(!count_failure(&mut burst, 2_000, &s));
        assert!(count_failure(&mut burst, 3_000, &s));
        assert_eq!(burst.blocked_until_ms, 603_000);

        let mut drip = Tally::default();
        for minute in 0..10 {
            assert!(
                !count_failure(&mut drip, minute * 61_000, &s),
                "one failure a minute never blocks"
            );
        }
        let off = AuthFailureSettings { block: false, ..s };
        let mut counted = Tally::default();
        assert!((0..10).all(|i| !count_failure(&mut counted, i, &off)));
    }

    #[test]
    fn the_guard_blocks_reports_once_and_unblocks() {
        let guard = AuthGuard::new(settings(2));
        let a: IpAddr = "203.0.113.9".parse().unwrap();
        let b: IpAddr = "2001:db8::1".parse().unwrap();
        guard.failed(Some(a), "web", "invalid-credentials", 0);
        assert_eq!(guard.blocked_for_ms(Some(a), 1), None);
        guard.failed(Some(a), "admin", "invalid-credentials", 10);
        guard.failed(Some(b), "web", "invalid-credentials", 10);
        guard.failed(None, "web", "missing-credentials", 10);
        assert_eq!(guard.blocked_for_ms(Some(a), 110), Some(600_000 - 100));
        assert_eq!(guard.blocked_for_ms(Some(b), 110), None);
        let new = guard.take_new_blocks();
        assert_eq!(new.len(), 1);
        assert_eq!(new[0].source, "admin");
        assert!(guard.take_new_blocks().is_empty(), "reported once");
        assert_eq!(guard.blocked(110).len(), 1);
        assert!(guard.unblock(a, 120));
        assert_eq!(guard.blocked_for_ms(Some(a), 130), None);
        assert!(!guard.unblock(a, 130));
        assert_eq!(guard.blocked_for_ms(Some(a), 600_011), None);
    }
}
