//! The race a multi-threaded runtime runs into, made certain: one thread's
//! `close(2)` of a socket takes a second, while another thread accepts a
//! connection and the kernel hands it the number the close freed.
//!
//! The kernel frees an fd's number at the start of `close(2)`; closing a
//! TCP socket can take much longer (here: `SO_LINGER` with unsent data the
//! peer never reads). Every step fires its eventer probes as the drop-in
//! sockets do. A correct program: a tracer must find no mismatch in it.
//! Prints `fd N closed by tid A in D ms, reused by tid B` at the end.

use std::net::{SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, RawFd};
use std::time::{Duration, Instant};

use usdt_provider::{mask, Io};

const CLOSURE: u64 = 7;

fn die(what: &str) -> ! {
    eprintln!(
        "close-race-fixture: {what}: {}",
        std::io::Error::last_os_error()
    );
    std::process::exit(1)
}

fn tid() -> i64 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::syscall(libc::SYS_gettid) }
}

fn accept(listener: &TcpListener) -> TcpStream {
    tests::fixture::accept(listener, CLOSURE).unwrap_or_else(|_| die("accept"))
}

/// A TCP socket made now and connected later, so connecting takes no new
/// fd number (the number must stay free for the accept).
fn unconnected_socket() -> RawFd {
    // SAFETY: socket(2) with constant arguments.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        die("socket");
    }
    fd
}

fn connect(fd: RawFd, to: SocketAddrV4) {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: to.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*to.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: a valid sockaddr_in and its size.
    let r = unsafe {
        libc::connect(
            fd,
            (&sin as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if r != 0 {
        die("connect");
    }
}

/// Makes `close(2)` of `s` block for about a second: linger on, and the
/// send buffer full of data the peer never reads.
fn make_close_slow(s: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 1,
    };
    // SAFETY: setsockopt with a valid linger struct and its size.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if r != 0 {
        die("SO_LINGER");
    }
    s.set_nonblocking(true)
        .unwrap_or_else(|_| die("nonblocking"));
    let chunk = [0u8; 65536];
    loop {
        let args = Io {
            fd: s.as_raw_fd(),
            buf: chunk.as_ptr() as u64,
            len: chunk.len() as u64,
            mask: mask::WRITE,
            closure: CLOSURE,
        };
        usdt_provider::write_entry(|| args);
        // SAFETY: sending from a local buffer.
        let n = unsafe {
            libc::send(
                s.as_raw_fd(),
                chunk.as_ptr().cast(),
                chunk.len(),
                libc::MSG_NOSIGNAL,
            )
        };
        let rv = if n < 0 {
            -i64::from(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
        } else {
            n as i64
        };
        usdt_provider::write_return(|| (args, rv));
        if n < 0 {
            break;
        }
    }
    s.set_nonblocking(false).unwrap_or_else(|_| die("blocking"));
}

fn main() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|_| die("bind"));
    let std::net::SocketAddr::V4(addr) = listener.local_addr().unwrap() else {
        die("not IPv4")
    };
    let silent_peer = unconnected_socket();
    let second_client = unconnected_socket();
    connect(silent_peer, addr);
    let slow = accept(&listener);
    make_close_slow(&slow);
    let fd = slow.into_raw_fd();

    let closer = std::thread::spawn(move || {
        let start = Instant::now();
        tests::fixture::close(fd, CLOSURE);
        let took = start.elapsed();
        (tid(), took)
    });

    // The close has begun (the number is free) well before this.
    std::thread::sleep(Duration::from_millis(200));
    connect(second_client, addr);
    let mut reused = accept(&listener);
    // SAFETY: the client socket is ours; it goes into a TcpStream to send.
    let mut client = unsafe { TcpStream::from_raw_fd(second_client) };
    std::io::Write::write_all(&mut client, b"hi").unwrap_or_else(|_| die("send"));
    let mut buf = [0u8; 16];
    let args = Io {
        fd: reused.as_raw_fd(),
        buf: buf.as_ptr() as u64,
        len: buf.len() as u64,
        mask: mask::READ,
        closure: CLOSURE,
    };
    usdt_provider::read_entry(|| args);
    let n = std::io::Read::read(&mut reused, &mut buf).map_or(-1, |n| n as i64);
    usdt_provider::read_return(|| (args, n));

    let (closer_tid, took) = closer.join().unwrap_or_else(|_| die("join"));
    println!(
        "fd {fd} closed by tid {closer_tid} in {} ms, reused by tid {} (fd {})",
        took.as_millis(),
        tid(),
        reused.as_raw_fd()
    );
    // The sockets the probes know would close unprobed on drop: leave them
    // to the process's exit.
    let _ = silent_peer;
    std::process::exit(0)
}
