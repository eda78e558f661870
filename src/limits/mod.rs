//! Limits that keep one client from exhausting the server (README "Limits"):
//!
//! - per-user **rate limits** per class of RPC ([`RateLimits`], here), with `governor`'s
//!   GCRA keyed by the authenticated user id: a burst, then a steady rate. Counted per
//!   replica; 0 turns a class off;
//! - the **request size** limit that answers RESOURCE_EXHAUSTED naming
//!   `max_request_bytes` ([`request_size`]);
//! - unary **calls in progress per user** (`max_in_flight_per_user`, [`in_flight`]).
//!
//! The group-commit queue's deadline is in `commit.rs`, the invite and membership caps in
//! the stores' `send_invite`, the transport limits in `server.rs` and the unary deadline in
//! `service/router.rs`.

pub mod in_flight;
pub mod request_size;

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::config::Settings;
use crate::error::Error;
use crate::shutdown::Signal;

/// How often the keyed state forgets users whose allowance is full again.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// A class of calls that shares one per-user allowance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateClass {
    /// GenerateChannelPair.
    Pairs,
    /// SendInvite.
    Invites,
    /// PostKey and DeleteAccount.
    Keys,
    /// PostPrivateKey.
    PrivateKeys,
    /// PostMessage.
    Posts,
    /// FetchMessages, FetchInvites, ListChannelPairs, FetchKey, FetchPrivateKey, Federate,
    /// GetTreeHead, MonitorKey.
    Reads,
    /// Opening a StreamMessagePosting or Subscribe call, and each stream named in its
    /// `subscribe_to` or `resume_from`.
    Subscriptions,
}

impl RateClass {
    /// Every class, in the order of their config keys.
    pub const ALL: [RateClass; 7] = [
        RateClass::Pairs,
        RateClass::Invites,
        RateClass::Keys,
        RateClass::PrivateKeys,
        RateClass::Posts,
        RateClass::Reads,
        RateClass::Subscriptions,
    ];

    /// The class of a SecretService method (by its name), or None for methods without a
    /// rate limit (LeaveChannelPair and RemoveMember only undo memberships that invites
    /// and pair creation, both limited, made).
    pub fn of_method(method: &str) -> Option<RateClass> {
        Some(match method {
            // SetRetention: a pair's settings, counted with the pairs created.
            "GenerateChannelPair" | "SetRetention" => RateClass::Pairs,
            "SendInvite" => RateClass::Invites,
            "PostKey" | "DeleteAccount" => RateClass::Keys,
            "PostPrivateKey" => RateClass::PrivateKeys,
            "PostMessage" => RateClass::Posts,
            "FetchMessages" | "FetchInvites" | "ListChannelPairs" | "FetchKey"
            | "FetchPrivateKey" | "Federate" | "GetTreeHead" | "MonitorKey" => RateClass::Reads,
            "StreamMessagePosting" | "Subscribe" => RateClass::Subscriptions,
            _ => return None,
        })
    }

    /// The middle part of the class's config keys: `rate_<name>_per_sec`,
    /// `rate_<name>_burst`.
    pub fn name(self) -> &'static str {
        match self {
            RateClass::Pairs => "pairs",
            RateClass::Invites => "invites",
            RateClass::Keys => "keys",
            RateClass::PrivateKeys => "private_keys",
            RateClass::Posts => "posts",
            RateClass::Reads => "reads",
            RateClass::Subscriptions => "subscriptions",
        }
    }

    /// What is counted, for the refusal's message.
    fn counted(self) -> &'static str {
        match self {
            RateClass::Pairs => "GenerateChannelPair calls",
            RateClass::Invites => "SendInvite calls",
            RateClass::Keys => "PostKey calls",
            RateClass::PrivateKeys => "PostPrivateKey calls",
            RateClass::Posts => "PostMessage calls",
            RateClass::Reads => {
                "history reads (FetchMessages, FetchInvites, ListChannelPairs, FetchKey, \
                 FetchPrivateKey, GetTreeHead and MonitorKey together)"
            }
            RateClass::Subscriptions => {
                "subscription attempts (StreamMessagePosting and Subscribe calls opened and \
                 streams named in subscribe_to or resume_from)"
            }
        }
    }

    /// The configured (rate per second, burst) of this class.
    pub fn configured(self, s: &Settings) -> (f64, u32) {
        let (_, rate, burst) = s.rate_limits()[self as usize];
        (rate, burst)
    }
}

/// One class's limiter and the figures its refusals quote.
struct Limiter {
    rate: f64,
    burst: u32,
    keyed: DefaultKeyedRateLimiter<i64>,
}

/// The per-user rate limiters of one server (one per enabled class).
pub struct RateLimits {
    limiters: Vec<Option<Limiter>>,
    clock: DefaultClock,
}

impl RateLimits {
    /// Builds the limiters the settings enable.
    pub fn from_settings(settings: &Settings) -> Self {
        let limiters = RateClass::ALL
            .iter()
            .map(|&class| {
                let (rate, burst) = class.configured(settings);
                let burst = NonZeroU32::new(burst)?;
                if rate <= 0.0 {
                    return None;
                }
                let quota =
                    Quota::with_period(Duration::from_secs_f64(1.0 / rate))?.allow_burst(burst);
                Some(Limiter {
                    rate,
                    burst: burst.get(),
                    keyed: RateLimiter::keyed(quota),
                })
            })
            .collect();
        RateLimits {
            limiters,
            clock: DefaultClock::default(),
        }
    }

    /// Takes one unit of `user`'s allowance for `class`, or says how long to wait.
    pub fn check(&self, class: RateClass, user: i64) -> Result<(), Error> {
        let Some(limiter) = self.limiter(class) else {
            return Ok(());
        };
        limiter.keyed.check_key(&user).map_err(|not_until| {
            let wait = not_until.wait_time_from(self.clock.now());
            let retry_after_ms = u64::try_from(wait.as_nanos().div_ceil(1_000_000))
                .unwrap_or(u64::MAX)
                .max(1);
            let name = class.name();
            crate::telemetry::rate_limited(name);
            Error::Throttled {
                message: format!(
                    "too many {}: the limit is {} per second after a burst of {} (config keys \
                     rate_{name}_per_sec and rate_{name}_burst, counted per server); retry in \
                     {retry_after_ms} ms",
                    class.counted(),
                    limiter.rate,
                    limiter.burst,
                ),
                retry_after_ms,
            }
        })
    }

    /// Users currently remembered, over all classes (each entry is one user in one class).
    pub fn tracked(&self) -> usize {
        self.limiters.iter().flatten().map(|l| l.keyed.len()).sum()
    }

    /// Forgets every user whose allowance is full again (indistinguishable from a user
    /// never seen) and gives the memory back.
    pub fn sweep(&self) {
        for limiter in self.limiters.iter().flatten() {
            limiter.keyed.retain_recent();
            limiter.keyed.shrink_to_fit();
        }
    }

    /// Sweeps every [`SWEEP_INTERVAL`] until the server shuts down.
    pub fn spawn_sweeper(self: &Arc<Self>, shutdown: Signal) {
        let limits = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SWEEP_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let stop = shutdown.draining();
            tokio::pin!(stop);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = &mut stop => return,
                }
                match limits.upgrade() {
                    Some(limits) => limits.sweep(),
                    None => return,
                }
            }
        });
    }

    fn limiter(&self, class: RateClass) -> Option<&Limiter> {
        self.limiters.get(class as usize)?.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(tweak: impl FnOnce(&mut Settings)) -> Settings {
        let mut s = crate::config::defaults();
        tweak(&mut s);
        s
    }

    #[test]
    fn classes_are_indexed_in_order() {
        for (i, class) in RateClass::ALL.iter().enumerate() {
            assert_eq!(*class as usize, i);
        }
    }

    #[test]
    fn a_class_at_zero_is_off_and_others_still_count() {
        let limits = RateLimits::from_settings(&settings(|s| {
            s.rate_posts_per_sec = 0.0;
            s.rate_keys_per_sec = 1.0;
            s.rate_keys_burst = 1;
        }));
        for _ in 0..10_000 {
            limits.check(RateClass::Posts, 7).unwrap();
        }
        limits.check(RateClass::Keys, 7).unwrap();
        let refused = limits.check(RateClass::Keys, 7).unwrap_err();
        let Error::Throttled {
            message,
            retry_after_ms,
        } = refused
        else {
            panic!("expected Throttled, got {refused:?}");
        };
        assert!((1..=1000).contains(&retry_after_ms), "{retry_after_ms}");
        assert!(message.contains("rate_keys_per_sec"), "{message}");
        assert!(
            !message.contains('%') && !message.contains('#'),
            "{message}"
        );
        // Another user has their own allowance.
        limits.check(RateClass::Keys, 8).unwrap();
    }

    #[test]
    fn the_sweep_forgets_users_whose_allowance_is_full_again() {
        let limits = RateLimits::from_settings(&settings(|s| {
            s.rate_reads_per_sec = 1000.0;
            s.rate_reads_burst = 2;
        }));
        for user in 1..=500 {
            limits.check(RateClass::Reads, user).unwrap();
        }
        assert_eq!(limits.tracked(), 500);
        // A burst of 2 at 1000 per second is full again 2 ms after the last call.
        std::thread::sleep(Duration::from_millis(20));
        limits.sweep();
        assert_eq!(limits.tracked(), 0);
    }

    #[test]
    fn classes_match_their_config_keys() {
        let s = crate::config::defaults();
        for class in RateClass::ALL {
            assert_eq!(s.rate_limits()[class as usize].0, class.name());
        }
    }
}
