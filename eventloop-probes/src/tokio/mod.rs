//! Wrappers for tokio sockets and tasks that fire the evloop probes.
//!
//! - [`TcpListener`], [`TcpStream`], [`UdpSocket`], [`UnixListener`] and
//!   [`UnixStream`] bracket every `accept4`, `recv`/`recvfrom`/`readv`,
//!   `send`/`sendto`/`writev` and `close` they make with
//!   `eventer-{accept,read,write,close}-*`, one probe pair per syscall,
//!   `EAGAIN` attempts included. They have tokio's methods and make the
//!   syscalls tokio's own sockets make for the same calls, so switching an
//!   app to them is a change of imports that adds probes and no syscalls.
//! - [`Instrumented`] (and [`spawn_named`]) bracket every poll of a task with
//!   `eventer-callback-entry/return`, named so tracers can filter on it.
//!
//! Sockets report the task polling them as their `closure`, so a tracer
//! sees which task did each read or write, like libmtev's closure ties I/O
//! to its callback. Without the crate's `probes` feature the same code runs
//! with every probe compiled out. No `tokio_unstable` is needed.
//!
//! ```
//! use eventloop_probes::tokio::{spawn_named, TcpListener, TcpStream};
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let listener = TcpListener::bind("127.0.0.1:0").await?;
//! let addr = listener.local_addr()?;
//! let server = spawn_named("echo-once", async move {
//!     let (mut conn, _) = listener.accept().await?;
//!     let mut buf = [0u8; 64];
//!     let n = conn.read(&mut buf).await?;
//!     conn.write_all(&buf[..n]).await
//! });
//!
//! let mut client = TcpStream::connect(addr).await?;
//! client.write_all(b"hello").await?;
//! let mut back = [0u8; 5];
//! client.read_exact(&mut back).await?;
//! assert_eq!(&back, b"hello");
//! server.await.unwrap()?;
//! # Ok::<_, std::io::Error>(())
//! # }).unwrap();
//! ```

// Every public socket method mirrors tokio's and says what it costs in
// syscalls and probes; keep it so.
#![deny(missing_docs)]

#[cfg(feature = "axum")]
mod axum;
#[cfg(tokio_unstable)]
mod hooks;
mod socket;
mod stream;
mod task;
pub mod tcp;
mod udp;
pub mod unix;

#[cfg(tokio_unstable)]
pub use hooks::{
    after_task_poll, before_task_poll, frame_all_tasks, task_closure, task_terminated,
};
pub use task::{spawn_named, Instrumented};
pub use tcp::{OwnedReadHalf, OwnedWriteHalf, TcpListener, TcpStream};
pub use udp::UdpSocket;
pub use unix::{UnixListener, UnixStream};

#[cfg(test)]
mod tests;
