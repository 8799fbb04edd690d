//! A libmtev-style event loop on mio.
//!
//! Register a source with a name, an interest mask and a callback; the loop
//! calls the callback with the ready mask and the callback returns its new
//! mask (`Mask::NONE`: done, the eventer closes the source). Every callback run is
//! bracketed by `eventer-callback-entry/return`, and the callback's I/O goes
//! through [`Ctx`], whose `accept`/`read`/`write`/`close` each bracket one
//! real syscall with the matching `eventer-*` probes.
//!
//! Readiness is edge-triggered (it is mio's): a callback reads or accepts
//! until it sees `WouldBlock` (the probes show it as `-EAGAIN`), else it may
//! not be called again for data that is already there.
//!
//! One `Eventer` runs on one thread; for more cores run one loop per thread
//! (each with its own listener, e.g. with `SO_REUSEPORT`).
//!
//! Masks are [`Mask`]s (libmtev's `EVENTER_READ`/`WRITE`/`EXCEPTION`/`TIMER`
//! as a typed bitset; the probes carry libmtev's integers). Sources are
//! anything implementing the open [`Source`] trait (mio's sockets, pipes,
//! Unix listeners here; a timerfd or eventfd of yours), and each callback's
//! [`Ctx`] is typed by its source: `accept` exists only on a [`Listener`]'s.
//! A round of the loop allocates nothing: the events buffer is reused.
//!
//! ```
//! use eventloop_probes::eventer::{Eventer, Mask};
//! use std::time::Duration;
//!
//! let mut ev = Eventer::new()?;
//! let listener = mio::net::TcpListener::bind("127.0.0.1:0".parse().unwrap())?;
//! ev.register(listener, "accept", Mask::READ, |ctx, _ready| {
//!     while let Ok((conn, _peer)) = ctx.accept() {
//!         ctx.register(conn, "echo", Mask::READ, |ctx, _ready| {
//!             let mut buf = [0u8; 4096];
//!             loop {
//!                 match ctx.read(&mut buf) {
//!                     Ok(0) => return Mask::NONE, // the peer is done: close
//!                     Ok(n) => { let _ = ctx.write(&buf[..n]); }
//!                     Err(_) => return Mask::READ,
//!                 }
//!             }
//!         });
//!     }
//!     Mask::READ
//! })?;
//! let stop = ev.stop_handle();
//! ev.add_timer("stop-soon", Duration::from_millis(10), None, move |_ctx, _ready| {
//!     stop.stop();
//!     Mask::NONE
//! });
//! ev.run()?;
//! # Ok::<(), std::io::Error>(())
//! ```

#![deny(missing_docs)]

mod context;
mod event_loop;
mod handler;
mod mask;
mod source;
mod timer;

pub use context::Ctx;
pub use event_loop::{Eventer, StopHandle};
pub use mask::Mask;
pub use source::{Listener, Source};
