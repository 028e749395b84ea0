//! The tasks waiting for a connection, and the waker that wakes them all.
//!
//! Tokio's resources keep one waker each: the listening socket's readiness, a `JoinSet`'s
//! finished tasks and a timer wake only the task that polled them last. With several tasks
//! accepting from one listener, the last one could take a connection and go away, and the
//! others would then sleep through the next ones. So the listener polls its resources with a
//! waker of its own, [`Waiters`] as a [`Wake`], which wakes every task waiting in
//! `accept`/`poll_accept`; each looks again, one takes the connection, the others register
//! anew.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Wake, Waker};

/// The wakers of the callers waiting for a connection.
#[derive(Debug, Default)]
pub(super) struct Waiters {
    list: Mutex<List>,
    next_key: AtomicU64,
}

#[derive(Debug, Default)]
struct List {
    /// Wakers of pending `accept` futures, by their [`Waiter`] key: each future has its own
    /// entry, which it removes when it ends or is dropped.
    keyed: HashMap<u64, Waker>,
    /// Wakers of `poll_accept` callers, one per task (as far as `Waker::will_wake` tells),
    /// kept until the next wake-up: a caller that stops polling leaves its waker here until
    /// then, and is woken once for nothing.
    unkeyed: Vec<Waker>,
}

impl Waiters {
    /// A new entry for one `accept` future; removed when the returned [`Waiter`] is dropped.
    pub(super) fn waiter(&self) -> Waiter<'_> {
        Waiter {
            waiters: self,
            key: self.next_key.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// Keeps `waker` to be woken at the next news: under `key` for an `accept` future, with
    /// the `poll_accept` callers' wakers otherwise.
    pub(super) fn register(&self, key: Option<u64>, waker: &Waker) {
        let mut list = self.lock();
        match key {
            Some(key) => match list.keyed.get_mut(&key) {
                Some(kept) => kept.clone_from(waker),
                None => {
                    list.keyed.insert(key, waker.clone());
                }
            },
            None => {
                if !list.unkeyed.iter().any(|kept| kept.will_wake(waker)) {
                    list.unkeyed.push(waker.clone());
                }
            }
        }
    }

    /// Forgets the waker of the `accept` future with `key`.
    pub(super) fn remove(&self, key: u64) {
        self.lock().keyed.remove(&key);
    }

    /// Wakes every waiting caller, and forgets their wakers: each registers again when it
    /// looks and finds nothing for it.
    pub(super) fn wake_all(&self) {
        let (keyed, unkeyed) = {
            let mut list = self.lock();
            if list.keyed.is_empty() && list.unkeyed.is_empty() {
                return;
            }
            (
                std::mem::take(&mut list.keyed),
                std::mem::take(&mut list.unkeyed),
            )
        };
        // Outside the lock: a waker may run arbitrary code.
        keyed.into_values().chain(unkeyed).for_each(Waker::wake);
    }

    /// Wakers kept.
    #[cfg(test)]
    fn len(&self) -> usize {
        let list = self.lock();
        list.keyed.len() + list.unkeyed.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, List> {
        self.list.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Wake for Waiters {
    fn wake(self: Arc<Self>) {
        self.wake_all();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.wake_all();
    }
}

/// One `accept` future's entry in [`Waiters`]; removes its waker when dropped, so that a
/// cancelled `accept` leaves nothing behind.
#[derive(Debug)]
pub(super) struct Waiter<'a> {
    waiters: &'a Waiters,
    key: u64,
}

impl Waiter<'_> {
    pub(super) fn key(&self) -> u64 {
        self.key
    }
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        self.waiters.remove(self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// A waker that counts its wake-ups.
    #[derive(Default)]
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    impl Count {
        fn get(&self) -> usize {
            self.0.load(Ordering::SeqCst)
        }
    }

    #[test]
    fn news_wakes_every_waiter_once() {
        let waiters = Arc::new(Waiters::default());
        let [a, b, c] = [(); 3].map(|()| Arc::new(Count::default()));
        let (first, second) = (waiters.waiter(), waiters.waiter());
        waiters.register(Some(first.key()), &Waker::from(a.clone()));
        waiters.register(Some(second.key()), &Waker::from(b.clone()));
        let c_waker = Waker::from(c.clone());
        waiters.register(None, &c_waker);
        waiters.register(None, &c_waker);
        assert_eq!(waiters.len(), 3, "one entry per poll_accept task");
        Waker::from(waiters.clone()).wake_by_ref();
        assert_eq!((a.get(), b.get(), c.get()), (1, 1, 1));
        assert_eq!(waiters.len(), 0, "woken waiters register again");
        Waker::from(waiters.clone()).wake();
        assert_eq!((a.get(), b.get(), c.get()), (1, 1, 1), "nobody waits");
    }

    #[test]
    fn a_dropped_accept_takes_its_waker_away() {
        let waiters = Waiters::default();
        let count = Arc::new(Count::default());
        let waker = Waker::from(count.clone());
        let waiter = waiters.waiter();
        waiters.register(Some(waiter.key()), &waker);
        waiters.register(Some(waiter.key()), &waker);
        assert_eq!(waiters.len(), 1, "one entry per accept future");
        drop(waiter);
        assert_eq!(waiters.len(), 0);
        waiters.wake_all();
        assert_eq!(count.get(), 0);
    }
}
