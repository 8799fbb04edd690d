//! [`TcpListener`] as an [`axum::serve::Listener`], so `axum::serve` takes it
//! as it is: no newtype in the app (the orphan rule forbids the app from
//! implementing axum's trait for our type; only this crate or axum can).

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use super::{TcpListener, TcpStream};
use crate::fire;

/// `axum::serve(listener, app)` with the evloop listener: every `accept4`
/// of the server fires `eventer-accept-entry/return`, and the connections
/// are [`TcpStream`]s, so every read and write the server makes fires its
/// probes too.
///
/// Accept errors are handled as axum handles them for tokio's listener:
/// a connection error (refused, aborted, reset: the peer gave up before
/// the accept) is skipped, any other (`EMFILE`, ...) is reported and
/// retried after a second, since it usually clears once connections close.
/// The report is the `log` probe with facility `evloop::axum`, as this crate
/// has no logger of its own (the accept probes carry the errno anyway).
///
/// ```
/// use axum::{routing::get, Router};
/// use eventloop_probes::tokio::TcpListener;
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let app = Router::new().route("/", get(|| async { "hello" }));
/// let listener = TcpListener::bind("127.0.0.1:0").await?;
/// let server = axum::serve(listener, app);
/// # drop(server);
/// # Ok::<_, std::io::Error>(())
/// # }).unwrap();
/// ```
impl axum::serve::Listener for TcpListener {
    type Io = TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (TcpStream, SocketAddr) {
        loop {
            match TcpListener::accept(self).await {
                Ok(conn) => return conn,
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    fire::log("evloop::axum", file!(), line!(), || {
                        format!("accept error: {e}; retrying in 1s")
                    });
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        TcpListener::local_addr(self)
    }
}

/// The peer went away between the connection's arrival and our accept:
/// nothing is wrong with the listener (axum's own rule).
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_peer_side_errors_are_skipped() {
        for kind in [
            io::ErrorKind::ConnectionRefused,
            io::ErrorKind::ConnectionAborted,
            io::ErrorKind::ConnectionReset,
        ] {
            assert!(is_connection_error(&io::Error::from(kind)));
        }
        // EMFILE: the process is out of fds; waiting may free some.
        assert!(!is_connection_error(&io::Error::from_raw_os_error(
            libc::EMFILE
        )));
    }
}
