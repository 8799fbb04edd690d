//! A libmtev-style event loop on mio.
//!
//! Register a source with a name, an interest mask and a callback; the loop
//! calls the callback with the ready mask and the callback returns its new
//! mask (0: done, the eventer closes the source). Every callback run is
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
//! ```
//! use eventloop_probes::eventer::{Eventer, Source, READ};
//! use std::time::Duration;
//!
//! let mut ev = Eventer::new()?;
//! let listener = mio::net::TcpListener::bind("127.0.0.1:0".parse().unwrap())?;
//! ev.register(Source::TcpListener(listener), "accept", READ, |ctx, _mask| {
//!     while let Ok((conn, _peer)) = ctx.accept() {
//!         ctx.register(Source::TcpStream(conn), "echo", READ, |ctx, _mask| {
//!             let mut buf = [0u8; 4096];
//!             loop {
//!                 match ctx.read(&mut buf) {
//!                     Ok(0) => return 0,
//!                     Ok(n) => { let _ = ctx.write(&buf[..n]); }
//!                     Err(_) => return READ,
//!                 }
//!             }
//!         });
//!     }
//!     READ
//! })?;
//! let stop = ev.stop_handle();
//! ev.add_timer("stop-soon", Duration::from_millis(10), None, move |_ctx, _mask| { stop.stop(); 0 });
//! ev.run()?;
//! # Ok::<(), std::io::Error>(())
//! ```

mod context;
mod event_loop;
mod source;
mod timer;

pub use context::Ctx;
pub use event_loop::{Eventer, StopHandle};
pub use source::Source;
pub use usdt_provider::mask::{EXCEPTION, READ, TIMER, WRITE};

/// A callback: gets the context and the ready mask, returns the new mask.
pub type Callback = Box<dyn FnMut(&mut Ctx<'_>, i32) -> i32>;
