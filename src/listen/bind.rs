//! Binding the endpoints: each is bound when it can be, and tried again,
//! less and less often, while it cannot.

use std::path::Path;
use std::time::{Duration, Instant};

use super::{BindFailure, Binder, Endpoint, Listener};
use crate::error::Error;
use crate::log::Log;

/// An address that cannot be bound yet is tried again after this long,
/// doubling up to `BIND_RETRY_MAX`, so a port that is freed or an address
/// that appears (on systems without IP_FREEBIND) is served within seconds.
const BIND_RETRY: Duration = Duration::from_millis(250);
const BIND_RETRY_MAX: Duration = Duration::from_secs(10);

/// One endpoint in the accept loop: its listeners once bound, or when to
/// try it again.
pub(super) struct Slot {
    pub(super) shown: String,
    pub(super) bind: Option<Binder>,
    pub(super) bound: Vec<Listener>,
    pub(super) retry: Option<Retry>,
}

/// Retries with a delay that doubles up to a cap. A long wait is logged
/// once and then at growing intervals (see `again`), never per try.
pub(super) struct Retry {
    pub(super) since: Instant,
    pub(super) tries: u64,
    pub(super) delay: Duration,
    pub(super) next: Instant,
}

impl Retry {
    pub(super) fn start(first: Duration) -> Retry {
        let now = Instant::now();
        Retry {
            since: now,
            tries: 1,
            delay: first,
            next: now + first,
        }
    }

    /// Another failure: wait longer. Says whether to log this one: the
    /// 8th, 16th, 32nd... failure, roughly doubling the interval between
    /// lines once the delay is at its cap.
    pub(super) fn again(&mut self, max: Duration) -> bool {
        self.tries += 1;
        self.delay = (self.delay * 2).min(max);
        self.next = Instant::now() + self.delay;
        self.tries >= 8 && self.tries.is_power_of_two()
    }
}

impl Slot {
    pub(super) fn new(endpoint: Endpoint) -> Slot {
        match endpoint {
            Endpoint::Ready(l) => Slot {
                shown: l.describe(),
                bind: None,
                bound: vec![l],
                retry: None,
            },
            Endpoint::Later { shown, bind } => Slot {
                shown,
                bind: Some(bind),
                bound: Vec::new(),
                retry: None,
            },
        }
    }

    /// Bind now if it is time to; Err when it never can.
    pub(super) fn try_bind(&mut self, socket: &Path, log: &Log) -> Result<(), Error> {
        let Some(bind) = self.bind.as_mut() else {
            return Ok(());
        };
        if !self.bound.is_empty() || self.retry.as_ref().is_some_and(|r| r.next > Instant::now()) {
            return Ok(());
        }
        match bind() {
            Ok(listeners) => {
                for l in &listeners {
                    l.set_nonblocking()
                        .map_err(|e| Error::io("cannot set up the listening socket", e))?;
                    let waited = match &self.retry {
                        Some(r) => format!(
                            " (after {} tries in {:.1}s)",
                            r.tries,
                            r.since.elapsed().as_secs_f64()
                        ),
                        None => String::new(),
                    };
                    log.line(format_args!(
                        "listening on {}, relaying to {}{waited}",
                        l.describe(),
                        socket.display()
                    ));
                }
                self.bound = listeners;
                self.retry = None;
                Ok(())
            }
            Err(BindFailure::Never(e)) => Err(e),
            Err(BindFailure::Later(e)) => {
                match &mut self.retry {
                    None => {
                        self.retry = Some(Retry::start(BIND_RETRY));
                        log.line(format_args!(
                            "{e}; will try again, every {}s at most",
                            BIND_RETRY_MAX.as_secs()
                        ));
                    }
                    Some(r) => {
                        if r.again(BIND_RETRY_MAX) {
                            log.line(format_args!(
                                "{e} (still, after {} tries in {:.0}s)",
                                r.tries,
                                r.since.elapsed().as_secs_f64()
                            ));
                        }
                    }
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_double_up_to_the_cap_and_are_logged_ever_more_rarely() {
        let mut r = Retry::start(Duration::from_millis(250));
        let logged: Vec<u64> = (2..=64)
            .filter(|_| r.again(Duration::from_secs(10)))
            .collect();
        assert_eq!(logged, [8, 16, 32, 64]);
        assert_eq!(r.delay, Duration::from_secs(10));
        assert_eq!(r.tries, 64);
    }
}
