//! The clock the checks read, and the clock-skew item. The clock is injectable: tests (and only
//! tests) shift it with the hidden `--clock-offset` flag to see the skew and expiry checks fail.

use std::time::{Duration, SystemTime};

use super::report::Item;

/// The item's name.
pub const NAME: &str = "clock skew against the CA";
/// Skew past this is a warning.
pub const WARN_SKEW: Duration = Duration::from_secs(5);
/// Skew past this is a failure: certificates look not yet valid, or expired, to peers.
pub const FAIL_SKEW: Duration = Duration::from_secs(60);

/// Where the checks get "now" from.
pub trait Clock {
    /// The current time.
    fn now(&self) -> SystemTime;
}

/// The system clock, shifted by a signed offset (zero outside tests).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OffsetClock {
    /// How far ahead (positive) or behind the system clock this clock is.
    pub offset: SignedDuration,
}

impl Clock for OffsetClock {
    fn now(&self) -> SystemTime {
        self.offset.apply(SystemTime::now())
    }
}

/// A duration with a sign: `10m`, `+10m`, `-90s` (humantime units).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SignedDuration {
    /// True for behind.
    pub negative: bool,
    /// How much.
    pub amount: Duration,
}

impl SignedDuration {
    /// `t` moved by this duration (saturating at the epoch).
    pub fn apply(self, t: SystemTime) -> SystemTime {
        if self.negative {
            t.checked_sub(self.amount).unwrap_or(SystemTime::UNIX_EPOCH)
        } else {
            t.checked_add(self.amount).unwrap_or(t)
        }
    }

    /// `a - b` with its sign.
    pub fn between(a: SystemTime, b: SystemTime) -> Self {
        match a.duration_since(b) {
            Ok(amount) => Self {
                negative: false,
                amount,
            },
            Err(e) => Self {
                negative: true,
                amount: e.duration(),
            },
        }
    }
}

impl std::str::FromStr for SignedDuration {
    type Err = humantime::DurationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let (negative, rest) = match s.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, s.strip_prefix('+').unwrap_or(s)),
        };
        Ok(Self {
            negative,
            amount: humantime::parse_duration(rest)?,
        })
    }
}

impl std::fmt::Display for SignedDuration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Whole seconds, rounded: the Date header has a resolution of one second anyway.
        let rounded = Duration::from_secs((self.amount + Duration::from_millis(500)).as_secs());
        let sign = match (rounded.is_zero(), self.negative) {
            (true, _) => "",
            (false, true) => "-",
            (false, false) => "+",
        };
        write!(f, "{sign}{}", humantime::format_duration(rounded))
    }
}

/// What was seen of the CA's clock: our clock before and after the request, and the CA's
/// `Date` header (whole seconds, truncated).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockSample {
    /// Our clock as the request left.
    pub sent: SystemTime,
    /// Our clock as the answer came.
    pub received: SystemTime,
    /// The CA's `Date`.
    pub ca_date: SystemTime,
}

impl ClockSample {
    /// Our clock minus the CA's: positive when ours is ahead. The CA's time is taken as the
    /// middle of its second, ours as the middle of the round trip.
    pub fn skew(&self) -> SignedDuration {
        let rtt = self
            .received
            .duration_since(self.sent)
            .unwrap_or(Duration::ZERO);
        let ours = self.sent + rtt / 2;
        let theirs = self.ca_date + Duration::from_millis(500);
        SignedDuration::between(ours, theirs)
    }
}

/// The clock-skew item from a sample, or from why there is none.
pub fn evaluate(sample: Result<ClockSample, String>) -> Item {
    let sample = match sample {
        Ok(sample) => sample,
        Err(why) => {
            return Item::fail(
                NAME,
                format!("not measured: {why}"),
                "make the CA's HTTP port reachable (see the CA items); the skew is read from its Date header",
            );
        }
    };
    let skew = sample.skew();
    let detail = format!("this node's clock is {skew} off the CA's");
    let hint = "synchronize the clocks of this node and the CA's node (chrony, systemd-timesyncd): \
                certificates are checked against them";
    if skew.amount > FAIL_SKEW {
        Item::fail(NAME, detail, hint)
    } else if skew.amount > WARN_SKEW {
        Item::warn(NAME, detail, hint)
    } else {
        Item::ok(NAME, detail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::check::report::Status;

    fn at(secs: u64, millis: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(millis)
    }

    fn sample(ours: SystemTime, ca_secs: u64) -> ClockSample {
        ClockSample {
            sent: ours,
            received: ours + Duration::from_millis(10),
            ca_date: at(ca_secs, 0),
        }
    }

    #[test]
    fn offsets_parse_with_a_sign() {
        let ten = Duration::from_secs(600);
        assert_eq!(
            "10m".parse::<SignedDuration>().unwrap(),
            SignedDuration {
                negative: false,
                amount: ten
            }
        );
        assert_eq!("+10m".parse::<SignedDuration>().unwrap().amount, ten);
        assert!("-10m".parse::<SignedDuration>().unwrap().negative);
        assert!("ten minutes".parse::<SignedDuration>().is_err());
        let clock = OffsetClock {
            offset: "-1h".parse().unwrap(),
        };
        let behind = SystemTime::now().duration_since(clock.now()).unwrap();
        assert!(behind >= Duration::from_secs(3599) && behind < Duration::from_secs(3700));
    }

    #[test]
    fn in_step_clocks_are_ok() {
        // Ours at 1000.495 + 5 ms, theirs 1000 (i.e. 1000.5): 0 off.
        let item = evaluate(Ok(sample(at(1000, 495), 1000)));
        assert_eq!(item.status, Status::Ok, "{item:?}");
        assert_eq!(item.detail, "this node's clock is 0s off the CA's");
        assert!(item.hint.is_none());
    }

    #[test]
    fn skew_warns_then_fails_either_way() {
        let warn = evaluate(Ok(sample(at(1010, 0), 1000)));
        assert_eq!(warn.status, Status::Warn, "{warn:?}");
        assert_eq!(warn.detail, "this node's clock is +10s off the CA's");
        let fail = evaluate(Ok(sample(at(1000, 0), 1600)));
        assert_eq!(fail.status, Status::Fail, "{fail:?}");
        assert_eq!(fail.detail, "this node's clock is -10m off the CA's");
        assert!(fail.hint.unwrap().contains("synchronize"));
    }

    #[test]
    fn no_sample_is_a_failure_with_the_reason() {
        let item = evaluate(Err("connection refused".into()));
        assert_eq!(item.status, Status::Fail);
        assert!(item.detail.contains("connection refused"));
    }
}
