//! Login throttling: too many failed logins for one user name, or from one client address, within
//! a window, and further attempts get 429 until the window ends.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::env::{ConfigError, Env};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThrottleLimits {
    pub failures_per_user: u32,
    pub failures_per_ip: u32,
    pub window: Duration,
    /// How many users and addresses are tracked at once; memory stays bounded by it.
    pub capacity: usize,
}

impl Default for ThrottleLimits {
    fn default() -> Self {
        Self {
            failures_per_user: 5,
            failures_per_ip: 20,
            window: Duration::from_secs(300),
            capacity: 100_000,
        }
    }
}

impl ThrottleLimits {
    pub fn from_env<F: Fn(&str) -> Option<String>>(env: &Env<F>) -> Result<Self, ConfigError> {
        let defaults = Self::default();
        Ok(Self {
            failures_per_user: env
                .parse_or("LOGIN_FAILURES_PER_USER", defaults.failures_per_user)?,
            failures_per_ip: env.parse_or("LOGIN_FAILURES_PER_IP", defaults.failures_per_ip)?,
            window: Duration::from_secs(
                env.parse_or("LOGIN_FAILURE_WINDOW_SECS", defaults.window.as_secs())?,
            ),
            capacity: defaults.capacity,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    User(String),
    Ip(IpAddr),
}

#[derive(Debug, Clone, Copy)]
struct Window {
    started: Instant,
    failures: u32,
}

#[derive(Debug)]
pub struct LoginThrottle {
    limits: ThrottleLimits,
    windows: Mutex<HashMap<Key, Window>>,
}

impl LoginThrottle {
    pub fn new(limits: ThrottleLimits) -> Self {
        Self {
            limits,
            windows: Mutex::new(HashMap::new()),
        }
    }

    fn windows(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Window>> {
        self.windows
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Counts a login attempt as a failure before the password is checked, and refuses it with
    /// `Err(seconds to wait)` when this user or this address has failed too often lately. Counting
    /// first, under the same lock as the check, means parallel guesses cannot all slip in before
    /// the first failure is recorded.
    pub fn begin_attempt(&self, username: &str, ip: IpAddr) -> Result<(), u64> {
        let now = Instant::now();
        let mut windows = self.windows();
        let keys = [
            (
                Key::User(username.to_owned()),
                self.limits.failures_per_user,
            ),
            (Key::Ip(ip), self.limits.failures_per_ip),
        ];
        let wait = keys
            .iter()
            .filter_map(|(key, limit)| {
                let window = windows.get(key)?;
                let ends = window.started + self.limits.window;
                (window.failures >= *limit && ends > now).then(|| (ends - now).as_secs().max(1))
            })
            .max();
        if let Some(seconds) = wait {
            return Err(seconds);
        }
        self.make_room(&mut windows, now);
        for (key, _) in keys {
            let window = windows.entry(key).or_insert(Window {
                started: now,
                failures: 0,
            });
            if window.started + self.limits.window <= now {
                *window = Window {
                    started: now,
                    failures: 0,
                };
            }
            window.failures += 1;
        }
        Ok(())
    }

    /// A successful login forgets the user's failures, and takes back the attempt it counted
    /// against the address; the address's other failures stand, so that one valid account
    /// cannot be used to reset the limit while spraying passwords at others.
    pub fn record_success(&self, username: &str, ip: IpAddr) {
        let mut windows = self.windows();
        windows.remove(&Key::User(username.to_owned()));
        if let Some(window) = windows.get_mut(&Key::Ip(ip)) {
            window.failures = window.failures.saturating_sub(1);
        }
    }

    /// Keeps the table within its capacity: expired windows go first, then the oldest.
    fn make_room(&self, windows: &mut HashMap<Key, Window>, now: Instant) {
        if windows.len() + 2 <= self.limits.capacity {
            return;
        }
        windows.retain(|_, window| window.started + self.limits.window > now);
        while windows.len() + 2 > self.limits.capacity {
            let Some(oldest) = windows
                .iter()
                .min_by_key(|(_, w)| w.started)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            windows.remove(&oldest);
        }
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.windows().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> ThrottleLimits {
        ThrottleLimits {
            failures_per_user: 3,
            failures_per_ip: 5,
            window: Duration::from_secs(60),
            capacity: 100,
        }
    }

    const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[test]
    fn the_user_limit_trips_and_success_resets_it() {
        let throttle = LoginThrottle::new(limits());
        for _ in 0..3 {
            assert!(throttle.begin_attempt("alice", IP).is_ok());
        }
        let wait = throttle.begin_attempt("alice", IP).unwrap_err();
        assert!((1..=60).contains(&wait));
        assert!(throttle.begin_attempt("bob", [10, 0, 0, 1].into()).is_ok());
        throttle.record_success("alice", IP);
        assert!(throttle.begin_attempt("alice", IP).is_ok());
    }

    #[test]
    fn the_address_limit_covers_many_user_names_and_a_success_does_not_reset_it() {
        let throttle = LoginThrottle::new(limits());
        for n in 0..4 {
            assert!(throttle.begin_attempt(&format!("user{n}"), IP).is_ok());
        }
        assert!(throttle.begin_attempt("mine", IP).is_ok());
        throttle.record_success("mine", IP);
        assert!(throttle.begin_attempt("user9", IP).is_ok());
        assert!(throttle.begin_attempt("someone-else", IP).is_err());
        assert!(
            throttle
                .begin_attempt("someone-else", [10, 0, 0, 1].into())
                .is_ok()
        );
    }

    #[test]
    fn memory_is_bounded() {
        let throttle = LoginThrottle::new(limits());
        for n in 0..1000u32 {
            let _ = throttle.begin_attempt(&format!("user{n}"), IpAddr::V4(n.into()));
        }
        assert!(throttle.tracked() <= 100);
    }
}
