//! The supervisor's deadlines: one table of named timers, in the manner of quinn-proto's
//! `TimerTable`, but keyed, because most deadlines belong to one pod or one container.
//!
//! Invariants: a timer is set at most once (setting it again moves it); the table holds only
//! deadlines still to come or just expired, and [`TimerTable::pop_expired`] removes the expired
//! ones, so [`TimerTable::next_timeout`] never keeps returning a deadline that was handled.
//! Nothing else in the supervisor stores a deadline.

use std::collections::{BTreeMap, BTreeSet};

use shoal_gossip::Instant;

use crate::manifest::ProbeKind;

/// A named deadline.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Timer {
    /// The first pass stops waiting for the first synchronisation with the cluster.
    SyncWait,
    /// The next periodic listing of the runtime's pods.
    List,
    /// A deadline of one pod (by uid).
    Pod(String, PodTimer),
}

/// A deadline of one pod.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum PodTimer {
    /// The back-off after a failed image pull or a failed start ends. (The first variant:
    /// [`TimerTable::stop_pod`] ranges from it.)
    StartRetry,
    /// A pod placed here that was placed on another live node a plan ago, which may be
    /// starting it, may start ([`super::input::NodePlan::held`]).
    Hold,
    /// The restart back-off of an exited container ends.
    Restart(String),
    /// A container's next probe of one kind is due.
    Probe(String, ProbeKind),
}

/// The table. Deterministic: ties between equal deadlines go in key order.
#[derive(Debug, Default)]
pub(crate) struct TimerTable {
    by_timer: BTreeMap<Timer, Instant>,
    by_deadline: BTreeSet<(Instant, Timer)>,
}

impl TimerTable {
    /// Sets (or moves) `timer` to `at`.
    pub(crate) fn set(&mut self, timer: Timer, at: Instant) {
        if let Some(old) = self.by_timer.insert(timer.clone(), at) {
            self.by_deadline.remove(&(old, timer.clone()));
        }
        self.by_deadline.insert((at, timer));
    }

    /// Removes `timer` if it is set.
    pub(crate) fn stop(&mut self, timer: &Timer) {
        if let Some(at) = self.by_timer.remove(timer) {
            self.by_deadline.remove(&(at, timer.clone()));
        }
    }

    /// When `timer` fires, if it is set.
    pub(crate) fn get(&self, timer: &Timer) -> Option<Instant> {
        self.by_timer.get(timer).copied()
    }

    /// Whether `timer` is set.
    pub(crate) fn is_set(&self, timer: &Timer) -> bool {
        self.by_timer.contains_key(timer)
    }

    /// The earliest deadline.
    pub(crate) fn next_timeout(&self) -> Option<Instant> {
        self.by_deadline.first().map(|(at, _)| *at)
    }

    /// Removes and returns one timer whose deadline is at or before `now`, earliest first.
    pub(crate) fn pop_expired(&mut self, now: Instant) -> Option<Timer> {
        let (at, _) = self.by_deadline.first()?;
        if *at > now {
            return None;
        }
        let (_, timer) = self.by_deadline.pop_first()?;
        self.by_timer.remove(&timer);
        Some(timer)
    }

    /// Removes every deadline of the pod `uid`.
    pub(crate) fn stop_pod(&mut self, uid: &str) {
        let first = Timer::Pod(uid.to_owned(), PodTimer::StartRetry);
        let doomed: Vec<Timer> = self
            .by_timer
            .range(first..)
            .take_while(|(t, _)| matches!(t, Timer::Pod(u, _) if u == uid))
            .map(|(t, _)| t.clone())
            .collect();
        for timer in doomed {
            self.stop(&timer);
        }
    }

    /// How many timers are set.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.by_timer.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> Instant {
        Instant(ms * 1000)
    }

    fn restart(uid: &str, c: &str) -> Timer {
        Timer::Pod(uid.into(), PodTimer::Restart(c.into()))
    }

    #[test]
    fn timers_fire_in_deadline_order_and_moving_one_replaces_it() {
        let mut t = TimerTable::default();
        t.set(Timer::List, at(30));
        t.set(restart("a", "c"), at(10));
        t.set(Timer::SyncWait, at(20));
        t.set(restart("a", "c"), at(40));
        assert_eq!(t.len(), 3);
        assert_eq!(t.next_timeout(), Some(at(20)));
        assert_eq!(t.pop_expired(at(5)), None);
        assert_eq!(t.pop_expired(at(35)), Some(Timer::SyncWait));
        assert_eq!(t.pop_expired(at(35)), Some(Timer::List));
        assert_eq!(t.pop_expired(at(35)), None);
        assert_eq!(t.get(&restart("a", "c")), Some(at(40)));
        t.stop(&restart("a", "c"));
        assert_eq!(t.next_timeout(), None);
    }

    #[test]
    fn stopping_a_pod_removes_only_its_timers() {
        let mut t = TimerTable::default();
        t.set(restart("a", "c"), at(1));
        t.set(Timer::Pod("a".into(), PodTimer::StartRetry), at(2));
        t.set(
            Timer::Pod("a".into(), PodTimer::Probe("c".into(), ProbeKind::Liveness)),
            at(3),
        );
        t.set(restart("ab", "c"), at(4));
        t.set(restart("b", "c"), at(5));
        t.set(Timer::List, at(6));
        t.stop_pod("a");
        assert_eq!(t.len(), 3);
        assert!(t.is_set(&restart("ab", "c")));
        assert!(t.is_set(&restart("b", "c")));
        assert!(t.is_set(&Timer::List));
    }
}
