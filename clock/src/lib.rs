//! The one clock of smtpw and mock-mta (the one clock).
//!
//! Monotonic time is always `tokio::time`: every sleep and time-out in the project uses it, so a
//! test under `#[tokio::test(start_paused = true)]` moves every timer at once. Wall time (what
//! opentime windows, journals and W3C logs read) comes from a [`Clock`]:
//!
//! - [`SystemClock`]: the machine's wall clock and time zone, for production.
//! - [`VirtualClock`]: a wall clock pinned to a chosen start and driven by `tokio::time`, so
//!   paused time that advances one hour also moves the wall clock one hour. [`VirtualClock::set`]
//!   jumps the wall clock (not the monotonic one) for "it is now 04:59" scripts.
//!
//! Code takes a [`SharedClock`] (`Arc<dyn Clock>`) and never calls `SystemTime::now` itself.

use std::sync::{Arc, Mutex, PoisonError};

use jiff::civil::{DateTime, Time};
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp, Zoned};
use tokio::time::Instant;

/// A source of wall time. Monotonic time is `tokio::time::Instant::now()`.
pub trait Clock: Send + Sync + std::fmt::Debug + 'static {
    /// The current instant in UTC.
    fn now(&self) -> Timestamp;
    /// The time zone that "local server time" (WRK-4) means.
    fn time_zone(&self) -> TimeZone;

    /// The current local date and time, in [`Clock::time_zone`].
    fn now_zoned(&self) -> Zoned {
        self.now().to_zoned(self.time_zone())
    }
    /// The current local civil date-time.
    fn local_datetime(&self) -> DateTime {
        self.now_zoned().datetime()
    }
    /// The current local time of day.
    fn local_time(&self) -> Time {
        self.now_zoned().time()
    }
}

/// The clock every component shares.
pub type SharedClock = Arc<dyn Clock>;

/// The real wall clock in the system's time zone.
#[derive(Debug, Clone)]
pub struct SystemClock {
    tz: TimeZone,
}

impl SystemClock {
    /// The system clock in the system's configured time zone (UTC when it cannot be found).
    pub fn new() -> Self {
        Self {
            tz: TimeZone::try_system().unwrap_or(TimeZone::UTC),
        }
    }
    /// The system clock in a given time zone.
    pub fn with_time_zone(tz: TimeZone) -> Self {
        Self { tz }
    }
    /// As a [`SharedClock`].
    pub fn shared() -> SharedClock {
        Arc::new(Self::new())
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
    fn time_zone(&self) -> TimeZone {
        self.tz.clone()
    }
}

#[derive(Debug)]
struct Anchor {
    wall: Timestamp,
    at: Instant,
}

/// A wall clock driven by `tokio::time`: `now() = anchor + (Instant::now() - anchor instant)`.
///
/// Must be created inside a tokio runtime (it reads `tokio::time::Instant::now()`). Under paused
/// time, `tokio::time::advance` and auto-advance move it; [`VirtualClock::set`] and
/// [`VirtualClock::jump`] move only the wall clock.
#[derive(Debug)]
pub struct VirtualClock {
    tz: TimeZone,
    anchor: Mutex<Anchor>,
}

impl VirtualClock {
    /// A clock that reads `start` now.
    pub fn new(start: Timestamp, tz: TimeZone) -> Self {
        Self {
            tz,
            anchor: Mutex::new(Anchor {
                wall: start,
                at: Instant::now(),
            }),
        }
    }

    /// A clock in UTC that reads the given local civil time now, e.g. `date(2026, 11, 22).at(4, 59, 0, 0)`.
    pub fn at_utc(start: DateTime) -> Self {
        Self::at_local(start, TimeZone::UTC)
    }

    /// A clock in `tz` that reads the given local civil time now. An ambiguous or missing local
    /// time (a DST transition) resolves as jiff's "compatible" strategy does.
    pub fn at_local(start: DateTime, tz: TimeZone) -> Self {
        let ts = tz
            .to_ambiguous_zoned(start)
            .compatible()
            .map(|z| z.timestamp())
            .unwrap_or(Timestamp::UNIX_EPOCH);
        Self::new(ts, tz)
    }

    /// As a [`SharedClock`] while keeping a handle to move it.
    pub fn shared(self) -> (Arc<Self>, SharedClock) {
        let me = Arc::new(self);
        let shared: SharedClock = me.clone();
        (me, shared)
    }

    /// Set the wall clock to `wall` from now on (monotonic time is untouched).
    pub fn set(&self, wall: Timestamp) {
        let mut a = self.anchor.lock().unwrap_or_else(PoisonError::into_inner);
        a.wall = wall;
        a.at = Instant::now();
    }

    /// Set the wall clock to a local civil time in this clock's zone.
    pub fn set_local(&self, wall: DateTime) {
        if let Ok(z) = self.tz.to_ambiguous_zoned(wall).compatible() {
            self.set(z.timestamp());
        }
    }

    /// Move the wall clock by `by` (may be negative); monotonic time is untouched.
    pub fn jump(&self, by: SignedDuration) {
        let now = self.now();
        self.set(now.checked_add(by).unwrap_or(now));
    }
}

impl Clock for VirtualClock {
    fn now(&self) -> Timestamp {
        let a = self.anchor.lock().unwrap_or_else(PoisonError::into_inner);
        let elapsed = Instant::now().saturating_duration_since(a.at);
        let elapsed = SignedDuration::try_from(elapsed).unwrap_or(SignedDuration::MAX);
        a.wall.checked_add(elapsed).unwrap_or(a.wall)
    }
    fn time_zone(&self) -> TimeZone {
        self.tz.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::civil::date;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn virtual_clock_moves_with_paused_tokio_time() {
        let (_h, clock) = VirtualClock::at_utc(date(2026, 11, 22).at(4, 59, 0, 0)).shared();
        assert_eq!(clock.local_time(), jiff::civil::time(4, 59, 0, 0));
        tokio::time::sleep(Duration::from_secs(61)).await;
        assert_eq!(clock.local_time(), jiff::civil::time(5, 0, 1, 0));
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert_eq!(clock.local_time(), jiff::civil::time(6, 0, 1, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn set_and_jump_move_only_the_wall_clock() {
        let (h, clock) = VirtualClock::at_utc(date(2026, 1, 1).at(0, 0, 0, 0)).shared();
        let before = Instant::now();
        h.set_local(date(2026, 1, 1).at(23, 59, 0, 0));
        assert_eq!(clock.local_time(), jiff::civil::time(23, 59, 0, 0));
        h.jump(SignedDuration::from_secs(120));
        assert_eq!(
            clock.local_datetime(),
            date(2026, 1, 2).at(0, 1, 0, 0),
            "jump crosses midnight"
        );
        assert_eq!(Instant::now(), before, "monotonic time did not move");
    }

    #[tokio::test(start_paused = true)]
    async fn local_time_follows_the_zone() {
        let tz = TimeZone::get("Europe/Paris").expect("bundled tzdb has Europe/Paris");
        let clock = VirtualClock::at_local(date(2026, 7, 1).at(10, 0, 0, 0), tz);
        assert_eq!(clock.now().to_zoned(TimeZone::UTC).hour(), 8);
        assert_eq!(clock.local_time().hour(), 10);
    }
}
