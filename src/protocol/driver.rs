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
        if reading && wakers.parked[Role::Recv as usize].load(Ordering::Relaxed) {
            // The application waits on its stream: whatever woke the driver woke it too, and
            // it does the work on its own thread.
            return Poll::Pending;
        }
        let Some(mut g) = shared.try_enter_driver() else {
            // A half holds the lock and is doing this work; if the application then stops,
            // the watchdog (or the next event) wakes the driver.
            return Poll::Pending;
        };
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
        let Some(deadline) = g.state.send.linger_until else {
            this.linger = None;
            return Poll::Pending;
        };
        drop(g);
        let sleep = match &mut this.linger {
            Some((at, sleep)) if *at == deadline => sleep,
            linger => {
                let sleep = Box::pin(tokio::time::sleep_until(deadline.into()));
                &mut linger.insert((deadline, sleep)).1
            }
        };
        if sleep.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        // The linger time is over: the lock may be held by nobody now, but wait if it is.
        let mut g = shared.enter(Role::Driver);
        if g.state.send.linger_until.is_some() {
            g.linger_expired();
        }
        drop(g);
        shared.wakers.clear(Role::Driver);
        Poll::Ready(())
    }
}
