//! Pauses between attempts.

use crate::plan::model::{Backoff, Retry};
use std::time::Duration;

/// The pause after failed attempt number `attempt` (1-based).
pub fn delay_after(retry: &Retry, attempt: u32) -> Duration {
    let base = retry.delay.0;
    let mut delay = match retry.backoff {
        Backoff::Fixed => base,
        Backoff::Exponential => {
            let factor = 2f64.powi(attempt.saturating_sub(1).min(30) as i32);
            Duration::from_secs_f64((base.as_secs_f64() * factor).min(u32::MAX as f64))
        }
    };
    if let Some(max) = retry.max_delay {
        delay = delay.min(max.0);
    }
    if retry.jitter {
        // Between half and all of the pause.
        delay = delay.mul_f64(0.5 + fastrand::f64() * 0.5);
    }
    delay
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::duration::HumanDuration;

    fn retry(backoff: Backoff, max: Option<u64>, jitter: bool) -> Retry {
        Retry {
            attempts: 5,
            delay: HumanDuration(Duration::from_secs(10)),
            backoff,
            max_delay: max.map(|s| HumanDuration(Duration::from_secs(s))),
            jitter,
        }
    }

    #[test]
    fn exponential_doubles_up_to_the_cap() {
        let r = retry(Backoff::Exponential, Some(30), false);
        let delays: Vec<u64> = (1..=4).map(|a| delay_after(&r, a).as_secs()).collect();
        assert_eq!(delays, [10, 20, 30, 30]);
    }

    #[test]
    fn fixed_stays_and_jitter_stays_within_half() {
        let r = retry(Backoff::Fixed, None, false);
        assert_eq!(delay_after(&r, 3), Duration::from_secs(10));
        let j = retry(Backoff::Fixed, None, true);
        for _ in 0..100 {
            let d = delay_after(&j, 1);
            assert!(d >= Duration::from_secs(5) && d <= Duration::from_secs(10));
        }
    }
}
