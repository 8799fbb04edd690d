//! The kinds of fd an eventer watches, and the one syscall each I/O does.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, IntoRawFd, RawFd};

/// An fd the eventer can watch.
#[derive(Debug)]
pub enum Source {
    /// Accepts TCP connections.
    TcpListener(mio::net::TcpListener),
    /// A TCP connection.
    TcpStream(mio::net::TcpStream),
    /// A UDP socket; read and write are `recv`/`send` on a connected socket.
    UdpSocket(mio::net::UdpSocket),
    /// A Unix stream socket.
    UnixStream(mio::net::UnixStream),
}

impl Source {
    pub(crate) fn fd(&self) -> RawFd {
        match self {
            Source::TcpListener(s) => s.as_raw_fd(),
            Source::TcpStream(s) => s.as_raw_fd(),
            Source::UdpSocket(s) => s.as_raw_fd(),
            Source::UnixStream(s) => s.as_raw_fd(),
        }
    }

    pub(crate) fn as_mio(&mut self) -> &mut dyn mio::event::Source {
        match self {
            Source::TcpListener(s) => s,
            Source::TcpStream(s) => s,
            Source::UdpSocket(s) => s,
            Source::UnixStream(s) => s,
        }
    }

    pub(crate) fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Source::TcpStream(s) => s.read(buf),
            Source::UnixStream(s) => s.read(buf),
            Source::UdpSocket(s) => s.recv(buf),
            Source::TcpListener(_) => Err(not_for("read", "a listener")),
        }
    }

    pub(crate) fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Source::TcpStream(s) => s.write(buf),
            Source::UnixStream(s) => s.write(buf),
            Source::UdpSocket(s) => s.send(buf),
            Source::TcpListener(_) => Err(not_for("write", "a listener")),
        }
    }

    pub(crate) fn into_raw_fd(self) -> RawFd {
        match self {
            Source::TcpListener(s) => s.into_raw_fd(),
            Source::TcpStream(s) => s.into_raw_fd(),
            Source::UdpSocket(s) => s.into_raw_fd(),
            Source::UnixStream(s) => s.into_raw_fd(),
        }
    }
}

pub(crate) fn not_for(op: &str, what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::Unsupported, format!("cannot {op} on {what}"))
}
