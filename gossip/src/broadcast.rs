//! The transmit-limited queue of updates to disseminate.
//!
//! Every update this node learns (or makes) is queued and sent a bounded number of times
//! (`Config::retransmit_limit`): in eager pushes, periodic gossip rounds and piggybacked on
//! probes. Updates sent the fewest times go first, newer before older among equals, as in
//! memberlist's `TransmitLimitedQueue`. A newer update for the same key replaces the queued one:
//! there is no point spreading a value that is already superseded.

use std::cmp::Reverse;
use std::collections::BTreeMap;

use crate::message::{Update, encoded_len};
use crate::store::Key;

/// How many queued updates that do not fit one message's room are looked at before the
/// message goes as it is. Without a bound, a queue of thousands of updates too big for a
/// probe's room would be scanned whole for every probe (quadratic work on the task that
/// answers the failure detector); with it, a message costs O(taken + this) whatever the
/// queue holds.
const MAX_MISFITS: usize = 16;

#[derive(Debug)]
struct Queued {
    update: Update,
    transmits: u32,
    order: u64,
}

/// Updates waiting to be (re)transmitted.
#[derive(Debug, Default)]
pub(crate) struct BroadcastQueue {
    by_key: BTreeMap<Key, Queued>,
    /// The send order, (transmits so far, newest first), with each update's key and encoded
    /// size, so that choosing what fits looks nothing up.
    order: BTreeMap<(u32, Reverse<u64>), (Key, usize)>,
    next_order: u64,
}

impl BroadcastQueue {
    /// Queues an update, replacing any queued update of the same key.
    pub(crate) fn push(&mut self, update: Update) {
        let key = update.0.clone();
        if let Some(old) = self.by_key.remove(&key) {
            self.order.remove(&(old.transmits, Reverse(old.order)));
        }
        let order = self.next_order;
        self.next_order += 1;
        let size = encoded_len(&update);
        self.order.insert((0, Reverse(order)), (key.clone(), size));
        self.by_key.insert(
            key,
            Queued {
                update,
                transmits: 0,
                order,
            },
        );
    }

    /// Forgets every queued update (there is no one to send them to; anti-entropy brings
    /// members that come later up to date).
    pub(crate) fn clear(&mut self) {
        self.by_key.clear();
        self.order.clear();
    }

    /// Number of queued updates.
    pub(crate) fn len(&self) -> usize {
        self.by_key.len()
    }

    /// Whether nothing is queued.
    pub(crate) fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// Takes updates for one message: as many as fit in `budget` bytes, fewest-sent first,
    /// skipping keys in `skip` (already in the message). Each taken update counts one
    /// transmission; those that reach `limit` leave the queue. At most [`MAX_MISFITS`]
    /// updates that do not fit are passed over.
    ///
    /// An update bigger than a whole message would never fit; with `oversize_alone` it is
    /// taken alone when it comes first (the message is then fragmented), otherwise it waits
    /// for such a message (probes never carry it).
    pub(crate) fn take(
        &mut self,
        budget: usize,
        limit: u32,
        skip: &[Key],
        oversize_alone: bool,
    ) -> Vec<Update> {
        let mut left = budget;
        let mut misfits = 0;
        let mut taken: Vec<(u32, Reverse<u64>)> = Vec::new();
        for (&slot, (key, size)) in self.order.iter() {
            if left < 8 || misfits > MAX_MISFITS {
                break;
            }
            if *size > left {
                if oversize_alone && taken.is_empty() && *size > budget {
                    taken.push(slot);
                    break;
                }
                misfits += 1;
                continue;
            }
            if skip.contains(key) {
                continue;
            }
            left -= size;
            taken.push(slot);
        }
        let mut out = Vec::with_capacity(taken.len());
        for slot in taken {
            let Some((key, size)) = self.order.remove(&slot) else {
                continue;
            };
            let transmits = slot.0 + 1;
            if transmits >= limit {
                if let Some(q) = self.by_key.remove(&key) {
                    out.push(q.update);
                }
            } else if let Some(q) = self.by_key.get_mut(&key) {
                q.transmits = transmits;
                out.push(q.update.clone());
                self.order.insert((transmits, slot.1), (key, size));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hlc::Hlc;
    use crate::id::NodeId;
    use crate::store::{Entry, ObjectKey, Version};

    fn update(name: &str, value_len: usize) -> Update {
        let key = Key::Object(ObjectKey {
            kind: "t".into(),
            namespace: "default".into(),
            name: name.into(),
        });
        let hlc = Hlc {
            wall_ms: 1,
            logical: 0,
        };
        let entry = Entry {
            version: Version::Object {
                hlc,
                writer: NodeId([1; 32]),
            },
            written_at: hlc,
            value: Some(vec![7; value_len]),
        };
        (key, entry)
    }

    #[test]
    fn updates_leave_after_limit_transmissions() {
        let mut q = BroadcastQueue::default();
        q.push(update("a", 10));
        for _ in 0..3 {
            assert_eq!(q.take(1000, 3, &[], false).len(), 1);
        }
        assert!(q.is_empty());
    }

    #[test]
    fn least_sent_goes_first_and_budget_is_respected() {
        let mut q = BroadcastQueue::default();
        q.push(update("a", 100));
        assert_eq!(q.take(1000, 5, &[], false).len(), 1);
        q.push(update("b", 100));
        let first = q.take(250, 5, &[], false);
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].0, update("b", 1).0);
        assert_eq!(q.len(), 2);
    }

    #[test]
    fn a_small_message_looks_past_a_bounded_number_of_updates_that_do_not_fit() {
        let mut q = BroadcastQueue::default();
        q.push(update("small-old", 10));
        for i in 0..1000 {
            q.push(update(&format!("big-{i}"), 500));
        }
        // The small update is behind 1,000 newer ones too big for this room: not searched for.
        assert!(q.take(200, 5, &[], false).is_empty());
        // A small update among the first few that do not fit is found.
        q.push(update("small-new", 10));
        let taken = q.take(200, 5, &[], false);
        assert_eq!(taken.len(), 1);
        assert_eq!(taken[0].0, update("small-new", 1).0);
        // A message with room for the big ones takes them, fewest-sent and newest first.
        let taken = q.take(1200, 5, &[], false);
        assert_eq!(taken.len(), 2);
        assert_eq!(taken[0].0, update("big-999", 1).0);
    }

    #[test]
    fn newer_update_of_same_key_replaces_queued_one() {
        let mut q = BroadcastQueue::default();
        q.push(update("a", 10));
        q.push(update("a", 20));
        assert_eq!(q.len(), 1);
        let taken = q.take(1000, 5, &[], false);
        assert_eq!(taken[0].1.value.as_ref().map(Vec::len), Some(20));
    }
}

#[cfg(test)]
mod oversize_tests {
    use super::*;
    use crate::hlc::Hlc;
    use crate::id::NodeId;
    use crate::store::{Entry, ObjectKey, Version};

    #[test]
    fn oversized_update_goes_alone_only_when_allowed() {
        let key = Key::Object(ObjectKey {
            kind: "t".into(),
            namespace: "default".into(),
            name: "big".into(),
        });
        let hlc = Hlc {
            wall_ms: 1,
            logical: 0,
        };
        let entry = Entry {
            version: Version::Object {
                hlc,
                writer: NodeId([1; 32]),
            },
            written_at: hlc,
            value: Some(vec![0; 5000]),
        };
        let mut q = BroadcastQueue::default();
        q.push((key, entry));
        assert!(q.take(1000, 5, &[], false).is_empty());
        assert_eq!(q.take(1000, 5, &[], true).len(), 1);
    }
}
