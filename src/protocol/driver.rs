//! The connection's driver task: the part of the transport that a socket has in the kernel.
//!
//! It is spawned with the connection and runs the same work as a polled half
//! ([`Guard::make_progress`]) whenever it is woken: by the socket's readiness, a finished
//! pull, a dropped half, or room opening in the receive buffer. So acknowledgements and pulls
//! happen while the application does something else, and a dropped sending side keeps serving
//! the peer for up to [`Config::linger`](crate::Config::linger). It takes the lock only if
//! nobody holds it (a half that holds it is doing the same work), so it never blocks a
//! runtime thread.
//!
//! While the application reads (it polled its receiving half since the driver last looked),
//! the driver leaves the pulls to those polls, which copy on the application's own thread
//! and hand the message over with a warm cache; it still reads frames, sends what a dropped
//! sender left and writes out. The process's watchdog wakes it once the application has
//! stopped polling, and it takes the pulls over.
//!
//! It ends when the connection has failed, when both halves are dropped and the sending
//! direction is closed, or when the peer's end of stream leaves nothing more to receive.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Instant;

use tokio::time::Sleep;

use super::{Guard, Role, Shared, watchdog};

/// Rounds of work in one poll before the driver yields to other tasks.
const ROUNDS_PER_POLL: usize = 16;

/// Spawns the driver of `shared` on the current runtime.
pub(super) fn spawn(shared: Arc<Shared>) {
    let driver = Driver {
        shared,
        linger: None,
    };
    // Connections are only made inside a runtime (connect, accept and pair are async); the
    // check keeps a misuse from panicking: without a driver, the halves still do all the
    // work while they are polled, as they always do.
    if let Ok(handle) = tokio::runtime::Handle::try_current() {
        drop(handle.spawn(driver));
    }
}

struct Driver {
    shared: Arc<Shared>,
    /// The timer of a dropped sender's linger time, and the deadline it was set for.
    linger: Option<(Instant, Pin<Box<Sleep>>)>,
}

impl Guard<'_> {
    /// Whether the driver has nothing more to do, ever.
    fn driver_done(&self) -> bool {
        let st = &*self.state;
        st.fatal.is_some()
            || (st.send.dropped() && st.recv.finished() && st.send.finished())
            || (st.eof && st.recv.idle())
    }
}

impl Future for Driver {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        let shared = &*this.shared;
        let wakers = &*shared.wakers;
        wakers.register(Role::Driver, cx.waker());
        let reading = wakers.recv_polled.load(Ordering::Relaxed);
        if wakers.polled.load(Ordering::Relaxed) && watchdog::running() {
            // The application uses the connection, and its polls do most of the work: the
            // watchdog wakes the driver if it stops.
            wakers.watched.store(true, Ordering::Relaxed);
        }
        // Frames a byte stream's flush left to the driver (see `Guard::write_out_coalesced`),
        // and the socket has room for them: nobody else is sure to write them.
        let fired = wakers.defer_fired.load(Ordering::Relaxed);
        if reading
            && !fired
            && wakers.parked[Role::Recv as usize].load(Ordering::Relaxed)
            && !wakers.released.load(Ordering::Relaxed)
        {
            // The application waits on its stream: whatever woke the driver woke it too, and
            // it does the work on its own thread. (Loans the application released while it
            // waits woke only the driver: those it sends.)
            return this.poll_linger(cx);
        }
        let Some(mut g) = this.shared.try_enter_driver() else {
            // A half holds the lock and is doing this work; if the application then stops,
            // the watchdog (or the next event) wakes the driver. Deferred frames may not be
            // part of that work: the half wakes the driver again as it leaves the lock.
            return this.poll_linger(cx);
        };
        wakers.defer_fired.store(false, Ordering::Relaxed);
        let mut rounds = 0;
        while g.make_progress(!reading) {
            rounds += 1;
            if rounds == ROUNDS_PER_POLL {
                cx.waker().wake_by_ref();
                break;
            }
        }
        if g.driver_done() {
            drop(g);
            shared.wakers.clear(Role::Driver);
            return Poll::Ready(());
        }
        let linger_until = g.state.send.linger_until;
        drop(g);
        match linger_until {
            None => this.linger = None,
            Some(deadline) if this.linger.as_ref().is_some_and(|(at, _)| *at == deadline) => {}
            Some(deadline) => {
                let sleep = Box::pin(tokio::time::sleep_until(deadline.into()));
                this.linger = Some((deadline, sleep));
            }
        }
        this.poll_linger(cx)
    }
}

impl Driver {
    /// Polls the linger timer of a dropped sender, if there is one; when it fires, ends the
    /// connection (and the driver) unless the peer had everything meanwhile. Polled on every
    /// path out of `poll`, so that an expiry is never lost to an early return.
    fn poll_linger(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some((_, sleep)) = &mut self.linger else {
            return Poll::Pending;
        };
        if sleep.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        self.linger = None;
        // The lock may be held by a half now: wait for it.
        let mut g = self.shared.enter(Role::Driver);
        if g.state.send.linger_until.is_none() {
            // The peer had everything in time: the connection goes on.
            return Poll::Pending;
        }
        g.linger_expired();
        drop(g);
        self.shared.wakers.clear(Role::Driver);
        Poll::Ready(())
    }
}
