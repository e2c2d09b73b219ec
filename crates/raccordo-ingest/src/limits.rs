//! Per-source rate limits: requests for the whole source, requests per client address, and
//! body bytes, each a GCRA bucket (`governor`) that allows a burst of twice its rate. A
//! request over a limit is answered `429 rate-limited` with the wait in `Retry-After`, and
//! nothing else is done for it.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota};
use serde::{Deserialize, Serialize};

/// `[sources.<name>.limits]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Requests per second for the whole source, all clients together.
    pub requests_per_second: Option<u32>,
    /// Requests per second from one client address.
    pub per_address_per_second: Option<u32>,
    /// Body bytes per second for the whole source.
    pub bytes_per_second: Option<u64>,
}

/// Which limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Source,
    Address,
    Bytes,
}

impl Limit {
    pub fn label(self) -> &'static str {
        match self {
            Limit::Source => "source",
            Limit::Address => "address",
            Limit::Bytes => "bytes",
        }
    }
}

/// Address buckets are forgotten once full again, every this many checks.
const RETAIN_EVERY: u64 = 4096;

/// The buckets of one source.
#[derive(Debug)]
pub struct SourceLimiter {
    requests: Option<DefaultDirectRateLimiter>,
    per_address: Option<DefaultKeyedRateLimiter<IpAddr>>,
    /// In KiB, so that a 4 MiB body is 4 096 cells of a `u32` quota.
    kib: Option<DefaultDirectRateLimiter>,
    checks: AtomicU64,
    /// Made once: a `quanta` clock calibrates itself when made (CPUID reads and a TSC
    /// measurement), which per request cost a fifth of the single-event path's CPU.
    clock: DefaultClock,
}

fn quota(per_second: u32, burst: u32) -> Option<Quota> {
    let rate = NonZeroU32::new(per_second)?;
    let burst = NonZeroU32::new(burst.max(per_second))?;
    Some(Quota::per_second(rate).allow_burst(burst))
}

impl LimitsConfig {
    /// Problems as `(key, message)`.
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (key, value) in [
            (
                "requests_per_second",
                self.requests_per_second.map(u64::from),
            ),
            (
                "per_address_per_second",
                self.per_address_per_second.map(u64::from),
            ),
            ("bytes_per_second", self.bytes_per_second),
        ] {
            if value == Some(0) {
                out.push((
                    key.to_string(),
                    "must be at least 1 (leave it out for no limit)".into(),
                ));
            }
        }
        if self.bytes_per_second.is_some_and(|b| b < 1024) {
            out.push(("bytes_per_second".into(), "must be at least 1024".into()));
        }
        out
    }

    /// The buckets; `max_body_bytes` lets one largest body through a bytes limit.
    pub fn build(&self, max_body_bytes: usize) -> SourceLimiter {
        let burst = |rate: u32| rate.saturating_mul(2);
        let kib_rate = self
            .bytes_per_second
            .map(|b| u32::try_from(b / 1024).unwrap_or(u32::MAX));
        let max_body_kib = u32::try_from(max_body_bytes.div_ceil(1024)).unwrap_or(u32::MAX);
        SourceLimiter {
            requests: self
                .requests_per_second
                .and_then(|r| quota(r, burst(r)))
                .map(governor::RateLimiter::direct),
            per_address: self
                .per_address_per_second
                .and_then(|r| quota(r, burst(r)))
                .map(governor::RateLimiter::keyed),
            kib: kib_rate
                .and_then(|r| quota(r, burst(r).max(max_body_kib)))
                .map(governor::RateLimiter::direct),
            checks: AtomicU64::new(0),
            clock: DefaultClock::default(),
        }
    }
}

impl SourceLimiter {
    pub fn is_unlimited(&self) -> bool {
        self.requests.is_none() && self.per_address.is_none() && self.kib.is_none()
    }

    /// Takes one request of `body_bytes` from the buckets, or says which limit refused it
    /// and how long until it would pass. The address bucket is checked first, so that one
    /// noisy client spends its own allowance before the source's.
    pub fn check(
        &self,
        client: Option<IpAddr>,
        body_bytes: usize,
    ) -> Result<(), (Limit, Duration)> {
        if self.is_unlimited() {
            return Ok(());
        }
        let now = self.clock.now();
        if self.checks.fetch_add(1, Ordering::Relaxed) % RETAIN_EVERY == RETAIN_EVERY - 1
            && let Some(keyed) = &self.per_address
        {
            keyed.retain_recent();
        }
        if let (Some(keyed), Some(client)) = (&self.per_address, client) {
            keyed
                .check_key(&client)
                .map_err(|wait| (Limit::Address, wait.wait_time_from(now)))?;
        }
        if let Some(requests) = &self.requests {
            requests
                .check()
                .map_err(|wait| (Limit::Source, wait.wait_time_from(now)))?;
        }
        if let Some(kib) = &self.kib {
            let cells = u32::try_from(body_bytes.div_ceil(1024))
                .ok()
                .and_then(NonZeroU32::new)
                .unwrap_or(NonZeroU32::MIN);
            match kib.check_n(cells) {
                Ok(Ok(())) => {}
                Ok(Err(wait)) => return Err((Limit::Bytes, wait.wait_time_from(now))),
                // Larger than the burst: it can never pass at this rate.
                Err(_) => return Err((Limit::Bytes, Duration::from_secs(60))),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_of_twice_the_rate_passes_then_the_limit_says_how_long_to_wait() {
        // One a second refills a cell each second: the third request in a row finds none.
        let limiter = LimitsConfig {
            requests_per_second: Some(1),
            ..LimitsConfig::default()
        }
        .build(4096);
        for _ in 0..2 {
            assert!(limiter.check(None, 10).is_ok());
        }
        let (limit, wait) = limiter.check(None, 10).unwrap_err();
        assert_eq!(limit, Limit::Source);
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
    }

    #[test]
    fn each_address_has_its_own_bucket_and_bytes_are_counted() {
        let limiter = LimitsConfig {
            per_address_per_second: Some(1),
            bytes_per_second: Some(10 * 1024),
            ..LimitsConfig::default()
        }
        .build(8 * 1024);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(limiter.check(Some(a), 100).is_ok());
        assert!(limiter.check(Some(a), 100).is_ok());
        assert_eq!(limiter.check(Some(a), 100).unwrap_err().0, Limit::Address);
        assert!(
            limiter.check(Some(b), 100).is_ok(),
            "another address is not slowed"
        );
        // 20 KiB of burst: 2 KiB spent above, 18 KiB left.
        assert!(limiter.check(Some(b), 17 * 1024).is_ok());
        assert_eq!(limiter.check(None, 4 * 1024).unwrap_err().0, Limit::Bytes);
    }

    #[test]
    fn zero_and_tiny_limits_are_refused_in_config() {
        let bad = LimitsConfig {
            requests_per_second: Some(0),
            bytes_per_second: Some(10),
            ..LimitsConfig::default()
        };
        let keys: Vec<String> = bad.problems().into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["requests_per_second", "bytes_per_second"]);
        assert!(LimitsConfig::default().build(1024).is_unlimited());
    }
}
