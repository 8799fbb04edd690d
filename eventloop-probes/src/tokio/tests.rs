//! The adapters on real loopback sockets. Every syscall attempt the adapters
//! bracket with probes is also logged here (test builds only), so the tests
//! can check what the probes would carry without a tracer; the end-to-end
//! tests check the probes themselves with bpftrace.

use std::cell::RefCell;
use std::future::{poll_fn, Future};
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::{pin, Pin};
use std::task::Poll;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};

use super::task::current_closure;
use super::{
    spawn_named, Instrumented, TcpListener, TcpStream, UdpSocket, UnixListener, UnixStream,
};
use crate::fire;

/// One bracketed syscall, as its return probe would report it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Attempt {
    op: &'static str,
    fd: RawFd,
    closure: u64,
    rv: i64,
}

thread_local! {
    // Per thread: each test runs its runtime on its own thread.
    static ATTEMPTS: RefCell<Vec<Attempt>> = const { RefCell::new(Vec::new()) };
}

/// Called by the adapters right after each syscall.
pub(super) fn record<T>(
    op: &'static str,
    fd: RawFd,
    closure: u64,
    res: &io::Result<T>,
    ok: impl FnOnce(&T) -> i64,
) {
    let rv = fire::rv_of(res, ok);
    ATTEMPTS.with(|a| {
        a.borrow_mut().push(Attempt {
            op,
            fd,
            closure,
            rv,
        })
    });
}

/// The attempts so far on this thread, clearing the log.
fn take_attempts() -> Vec<Attempt> {
    ATTEMPTS.with(|a| a.take())
}

fn rvs(attempts: &[Attempt], op: &str, fd: RawFd) -> Vec<i64> {
    attempts
        .iter()
        .filter(|a| a.op == op && a.fd == fd)
        .map(|a| a.rv)
        .collect()
}

const EAGAIN: i64 = -(libc::EAGAIN as i64);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("building a runtime")
}

/// Polls `fut` exactly once.
async fn poll_once<F: Future>(fut: F) -> Poll<F::Output> {
    let mut fut = pin!(fut);
    poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await
}

/// A listener, a blocking std client connected to it, and the accepted
/// server side. The client is std so that only the server's syscalls go
/// through the adapters.
async fn connected() -> (TcpListener, std::net::TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, peer) = listener.accept().await.unwrap();
    assert_eq!(peer, client.local_addr().unwrap());
    (listener, client, server)
}

#[test]
fn accept_reports_the_new_fd_then_eagain_when_none_is_waiting() {
    runtime().block_on(async {
        take_attempts();
        let (listener, _client, server) = connected().await;
        let lfd = listener.as_raw_fd();
        assert_eq!(
            rvs(&take_attempts(), "accept", lfd),
            [server.as_raw_fd() as i64]
        );

        // The listener is still marked readable, so the next poll tries
        // accept4, gets EAGAIN and waits.
        assert!(poll_once(listener.accept()).await.is_pending());
        assert_eq!(rvs(&take_attempts(), "accept", lfd), [EAGAIN]);

        let second = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (conn, peer) = listener.accept().await.unwrap();
        assert_eq!(peer, second.local_addr().unwrap());
        assert_eq!(conn.peer_addr().unwrap(), second.local_addr().unwrap());
        assert_eq!(
            rvs(&take_attempts(), "accept", lfd),
            [conn.as_raw_fd() as i64]
        );
    });
}

#[test]
fn a_short_read_waits_for_the_next_event_a_full_one_reads_on() {
    runtime().block_on(async {
        let (_listener, mut client, mut server) = connected().await;
        let fd = server.as_raw_fd();
        take_attempts();

        // 5 bytes into 64 bytes of room: the queue is drained, so (as
        // tokio's PollEvented) the next read waits for an epoll event
        // instead of making a recv that says EAGAIN.
        client.write_all(b"hello").unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(server.read(&mut buf).await.unwrap(), 5);
        assert_eq!(&buf[..5], b"hello");
        assert!(poll_once(server.read(&mut buf)).await.is_pending());
        assert_eq!(rvs(&take_attempts(), "read", fd), [5]);

        // A read that fills the buffer says nothing about what is left: the
        // next one tries, and here gets EAGAIN.
        client.write_all(b"12345678").unwrap();
        let mut eight = [0u8; 8];
        server.read_exact(&mut eight).await.unwrap();
        assert!(poll_once(server.read(&mut buf)).await.is_pending());
        assert_eq!(rvs(&take_attempts(), "read", fd), [8, EAGAIN]);

        client.write_all(b"world!").unwrap();
        client.shutdown(Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        server.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"world!");
        // Each recv is logged once: data, then EOF (0); an EAGAIN in between
        // depends on when the FIN arrives, so only their rv is checked.
        let reads = rvs(&take_attempts(), "read", fd);
        let data: Vec<i64> = reads.iter().copied().filter(|&rv| rv != EAGAIN).collect();
        assert_eq!(data, [6, 0], "reads: {reads:?}");
    });
}

#[test]
fn writes_stop_at_a_short_write_or_eagain_and_every_byte_arrives() {
    runtime().block_on(async {
        let (_listener, client, mut server) = connected().await;
        let fd = server.as_raw_fd();
        take_attempts();

        // Write until the socket buffers are full. A send that takes part
        // of the chunk shows the buffer full (tokio's rule), so the poll
        // after it waits without a syscall; a send that says EAGAIN does
        // the same.
        let chunk = vec![7u8; 64 * 1024];
        let mut written = server.write(&chunk).await.unwrap();
        loop {
            match poll_once(server.write(&chunk)).await {
                Poll::Ready(n) => written += n.unwrap(),
                Poll::Pending => break,
            }
            assert!(written < 512 << 20, "the peer's buffers never filled");
        }
        let writes = rvs(&take_attempts(), "write", fd);
        let full = chunk.len() as i64;
        let (last, before) = writes.split_last().unwrap();
        assert!(*last == EAGAIN || (0..full).contains(last), "{writes:?}");
        // Nothing was tried after a short write, and only the last failed.
        assert!(before.iter().all(|&rv| rv == full), "{writes:?}");
        let sent: i64 = writes.iter().filter(|&&rv| rv > 0).sum();
        assert_eq!(sent as usize, written);

        // A reader drains; the writer resumes once the socket is writable.
        let reader = std::thread::spawn(move || {
            let mut client = client;
            let mut got = Vec::new();
            client.read_to_end(&mut got).unwrap();
            got
        });
        server.write_all(b"end").await.unwrap();
        server.shutdown().await.unwrap();
        let got = reader.join().unwrap();
        assert_eq!(got.len(), written + 3);
        assert!(got[..written].iter().all(|&b| b == 7));
        assert_eq!(&got[written..], b"end");
    });
}

#[test]
fn close_fires_once_when_the_last_half_is_dropped() {
    runtime().block_on(async {
        let (listener, _client, server) = connected().await;
        let fd = server.as_raw_fd();
        take_attempts();

        let (read_half, write_half) = server.into_split();
        assert_eq!(read_half.as_raw_fd(), fd);
        drop(write_half);
        assert_eq!(rvs(&take_attempts(), "close", fd), Vec::<i64>::new());
        drop(read_half);
        assert_eq!(rvs(&take_attempts(), "close", fd), [0]);

        let lfd = listener.as_raw_fd();
        drop(listener);
        assert_eq!(rvs(&take_attempts(), "close", lfd), [0]);
    });
}

#[test]
fn split_halves_echo_across_tasks() {
    runtime().block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let (mut sr, mut sw) = server.into_split();
        let echo = spawn_named(
            "echo",
            async move { tokio::io::copy(&mut sr, &mut sw).await },
        );

        let (mut cr, mut cw) = client.into_split();
        let payload: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        let to_send = payload.clone();
        let sender = tokio::spawn(async move {
            cw.write_all(&to_send).await.unwrap();
            cw.shutdown().await.unwrap();
        });
        let mut back = Vec::new();
        cr.read_to_end(&mut back).await.unwrap();
        sender.await.unwrap();
        assert_eq!(echo.await.unwrap().unwrap(), payload.len() as u64);
        assert_eq!(back, payload);
    });
}

#[test]
fn io_inside_an_instrumented_task_carries_its_id_as_closure() {
    runtime().block_on(async {
        let (_listener, mut client, mut server) = connected().await;
        let fd = server.as_raw_fd();
        client.write_all(b"x").unwrap();
        take_attempts();

        let task = Instrumented::new("reader", async move {
            let mut buf = [0u8; 8];
            let n = server.read(&mut buf).await.unwrap();
            (n, current_closure())
        });
        let id = task.id();
        assert!(id > 0);
        let (n, seen) = task.await;
        assert_eq!(n, 1);
        if cfg!(feature = "probes") {
            assert_eq!(seen, id);
        }
        // Outside the task again: no current task.
        assert_eq!(current_closure(), 0);

        let attempts = take_attempts();
        let reads: Vec<_> = attempts.iter().filter(|a| a.op == "read").collect();
        assert_eq!(reads.len(), 1, "{attempts:?}");
        // The stream was dropped (closed) inside the task too.
        let closes: Vec<_> = attempts
            .iter()
            .filter(|a| a.op == "close" && a.fd == fd)
            .collect();
        assert_eq!(closes.len(), 1, "{attempts:?}");
        // Without probes the task is not tracked (nobody could see it).
        let expected = if cfg!(feature = "probes") { id } else { 0 };
        assert_eq!((reads[0].closure, closes[0].closure), (expected, expected));
    });
}

#[test]
fn nested_instrumented_futures_restore_the_outer_task() {
    runtime().block_on(async {
        let outer = Instrumented::new("outer", async {
            let before = current_closure();
            let inner = Instrumented::new("inner", async { current_closure() });
            let inner_id = inner.id();
            let seen_inside = inner.await;
            (before, inner_id, seen_inside, current_closure())
        });
        let outer_id = outer.id();
        let (before, inner_id, seen_inside, after) = outer.await;
        assert_ne!(outer_id, inner_id);
        if cfg!(feature = "probes") {
            assert_eq!((before, seen_inside, after), (outer_id, inner_id, outer_id));
        }
    });
}

#[test]
fn ids_are_unique_and_names_kept() {
    let a = Instrumented::new("a", async {});
    let b = Instrumented::new(String::from("conn-7"), async {});
    assert_ne!(a.id(), b.id());
    assert_eq!(a.name(), "a");
    assert_eq!(b.name(), "conn-7");
}

#[test]
fn zero_length_io_makes_no_syscall() {
    runtime().block_on(async {
        let (_listener, _client, mut server) = connected().await;
        take_attempts();
        assert_eq!(server.write(&[]).await.unwrap(), 0);
        let mut empty = [0u8; 0];
        let mut rb = ReadBuf::new(&mut empty);
        poll_fn(|cx| AsyncRead::poll_read(Pin::new(&mut server), cx, &mut rb))
            .await
            .unwrap();
        assert_eq!(take_attempts(), []);
    });
}

#[test]
fn a_vectored_write_is_one_writev_probed_with_the_total_length() {
    runtime().block_on(async {
        let (_listener, mut client, mut server) = connected().await;
        let fd = server.as_raw_fd();
        assert!(tokio::io::AsyncWrite::is_write_vectored(&server));
        take_attempts();

        let bufs = [
            io::IoSlice::new(b"head "),
            io::IoSlice::new(b""),
            io::IoSlice::new(b"and body"),
        ];
        let n = server.write_vectored(&bufs).await.unwrap();
        assert_eq!(n, 13);
        assert_eq!(rvs(&take_attempts(), "write", fd), [13]);
        let mut got = [0u8; 13];
        client.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"head and body");
    });
}

#[test]
fn try_read_makes_no_syscall_until_the_reactor_says_readable() {
    runtime().block_on(async {
        let (_listener, mut client, server) = connected().await;
        let fd = server.as_raw_fd();
        // Clear whatever readiness the registration started with: a recv
        // that says EAGAIN if tokio thought it readable, none otherwise.
        let mut buf = [0u8; 16];
        let err = server.try_read(&mut buf).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        take_attempts();
        // Not ready now: WouldBlock without a syscall, as tokio's try_read.
        let err = server.try_read(&mut buf).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        assert_eq!(take_attempts(), []);

        client.write_all(b"abc").unwrap();
        server.readable().await.unwrap();
        let mut a = [0u8; 1];
        let mut b = [0u8; 8];
        let mut bufs = [io::IoSliceMut::new(&mut a), io::IoSliceMut::new(&mut b)];
        assert_eq!(server.try_read_vectored(&mut bufs).unwrap(), 3);
        assert_eq!((&a, &b[..2]), (b"a", &b"bc"[..]));
        assert_eq!(rvs(&take_attempts(), "read", fd), [3]);

        server.writable().await.unwrap();
        assert_eq!(server.try_write(b"xy").unwrap(), 2);
        let bufs = [io::IoSlice::new(b"z"), io::IoSlice::new(b"!")];
        assert_eq!(server.try_write_vectored(&bufs).unwrap(), 2);
        assert_eq!(rvs(&take_attempts(), "write", fd), [2, 2]);
        let mut got = [0u8; 4];
        client.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"xyz!");
    });
}

#[test]
fn peek_leaves_the_bytes_for_the_next_read() {
    runtime().block_on(async {
        let (_listener, mut client, mut server) = connected().await;
        let fd = server.as_raw_fd();
        client.write_all(b"peek").unwrap();
        take_attempts();
        let mut buf = [0u8; 16];
        assert_eq!(server.peek(&mut buf).await.unwrap(), 4);
        let mut rb = ReadBuf::new(&mut buf);
        let n = poll_fn(|cx| server.poll_peek(cx, &mut rb)).await.unwrap();
        assert_eq!((n, rb.filled()), (4, &b"peek"[..]));
        let n = server.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"peek");
        assert_eq!(rvs(&take_attempts(), "read", fd), [4, 4, 4]);
    });
}

#[test]
fn borrowed_halves_work_together_in_one_task() {
    runtime().block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        let (mut r, mut w) = server.split();
        assert_eq!(r.peer_addr().unwrap(), client.local_addr().unwrap());
        let echo = async {
            let mut buf = [0u8; 5];
            r.read_exact(&mut buf).await.unwrap();
            w.write_all(&buf).await.unwrap();
        };
        let talk = async {
            client.write_all(b"split").await.unwrap();
            let mut back = [0u8; 5];
            client.read_exact(&mut back).await.unwrap();
            back
        };
        let ((), back) = tokio::join!(echo, talk);
        assert_eq!(&back, b"split");
    });
}

#[test]
fn dropping_the_owned_write_half_shuts_down_unless_forgotten_and_halves_reunite() {
    runtime().block_on(async {
        let (_listener, mut client, server) = connected().await;
        let fd = server.as_raw_fd();
        let (r, w) = server.into_split();
        let server = r.reunite(w).unwrap();
        assert_eq!(server.as_raw_fd(), fd);

        // forget: no shutdown, the peer sees no EOF.
        let (r, w) = server.into_split();
        w.forget();
        client
            .set_read_timeout(Some(std::time::Duration::from_millis(50)))
            .unwrap();
        let mut byte = [0u8; 1];
        let err = client.read(&mut byte).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock, "{err}");

        // A dropped write half shuts the write side down: EOF, fd open.
        let (_l2, mut client2, server2) = connected().await;
        let (r2, w2) = server2.into_split();
        take_attempts();
        drop(w2);
        // Bounded: a missing shutdown fails instead of hanging.
        client2
            .set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        assert_eq!(client2.read(&mut byte).unwrap(), 0);
        assert_eq!(
            rvs(&take_attempts(), "close", r2.as_raw_fd()),
            Vec::<i64>::new()
        );
        drop((r, r2));
    });
}

#[test]
fn options_and_into_std() {
    runtime().block_on(async {
        let (listener, _client, server) = connected().await;
        server.set_nodelay(true).unwrap();
        assert!(server.nodelay().unwrap());
        server
            .set_linger(Some(std::time::Duration::from_secs(3)))
            .unwrap();
        assert_eq!(
            server.linger().unwrap(),
            Some(std::time::Duration::from_secs(3))
        );
        server.set_linger(None).unwrap();
        assert_eq!(server.linger().unwrap(), None);
        server.set_ttl(42).unwrap();
        assert_eq!(server.ttl().unwrap(), 42);
        listener.set_ttl(43).unwrap();
        assert_eq!(listener.ttl().unwrap(), 43);
        assert!(server.take_error().unwrap().is_none());

        // into_std hands the fd over: no close probe, the fd still works.
        let fd = server.as_raw_fd();
        take_attempts();
        let std_stream = server.into_std().unwrap();
        assert_eq!(std_stream.as_raw_fd(), fd);
        assert_eq!(take_attempts(), []);
        let back = TcpStream::try_from(std_stream).unwrap();
        assert_eq!(back.as_raw_fd(), fd);
        let lfd = listener.as_raw_fd();
        let std_listener = listener.into_std().unwrap();
        assert_eq!(std_listener.as_raw_fd(), lfd);
        let _again = TcpListener::from_std(std_listener).unwrap();
    });
}

#[test]
fn udp_sends_and_receives_one_probed_syscall_per_datagram() {
    runtime().block_on(async {
        let a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let (afd, bfd) = (a.as_raw_fd(), b.as_raw_fd());
        b.connect(a.local_addr().unwrap()).await.unwrap();
        assert_eq!(b.peer_addr().unwrap(), a.local_addr().unwrap());
        take_attempts();

        assert_eq!(b.send(b"one").await.unwrap(), 3);
        let mut buf = [0u8; 64];
        let (n, from) = a.recv_from(&mut buf).await.unwrap();
        assert_eq!((&buf[..n], from), (&b"one"[..], b.local_addr().unwrap()));
        assert_eq!(a.send_to(b"two!", from).await.unwrap(), 4);
        assert_eq!(b.recv(&mut buf).await.unwrap(), 4);
        // A datagram read leaves readiness set (it may not be the last
        // one): the next try is a recv that says EAGAIN.
        assert_eq!(
            b.try_recv(&mut buf).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        let attempts = take_attempts();
        assert_eq!(rvs(&attempts, "write", bfd), [3]);
        assert_eq!(rvs(&attempts, "read", afd), [3]);
        assert_eq!(rvs(&attempts, "write", afd), [4]);
        assert_eq!(rvs(&attempts, "read", bfd), [4, EAGAIN]);

        // peek_from leaves the datagram; poll_recv_from takes it.
        b.send(b"xyz").await.unwrap();
        let (n, _) = a.peek_from(&mut buf).await.unwrap();
        assert_eq!(n, 3);
        let mut rb = ReadBuf::new(&mut buf);
        let from = poll_fn(|cx| a.poll_recv_from(cx, &mut rb)).await.unwrap();
        assert_eq!((rb.filled(), from), (&b"xyz"[..], b.local_addr().unwrap()));

        let afd = a.as_raw_fd();
        take_attempts();
        drop(a);
        assert_eq!(rvs(&take_attempts(), "close", afd), [0]);
    });
}

#[test]
fn unix_streams_accept_echo_and_close_through_the_probes() {
    runtime().block_on(async {
        let dir = std::env::temp_dir().join(format!("evloop-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("u.sock");
        let listener = UnixListener::bind(&path).unwrap();
        assert_eq!(
            listener.local_addr().unwrap().as_pathname(),
            Some(path.as_path())
        );
        let lfd = listener.as_raw_fd();
        take_attempts();
        let mut client = UnixStream::connect(&path).await.unwrap();
        let (mut server, peer) = listener.accept().await.unwrap();
        assert!(peer.is_unnamed());
        let sfd = server.as_raw_fd();
        assert_eq!(
            rvs(&take_attempts(), "accept", lfd),
            [sfd as i64],
            "one accept4"
        );

        client.write_all(b"over unix").await.unwrap();
        let mut buf = [0u8; 64];
        let n = server.read(&mut buf).await.unwrap();
        server.write_all(&buf[..n]).await.unwrap();
        let mut back = [0u8; 9];
        client.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"over unix");
        let attempts = take_attempts();
        assert_eq!(rvs(&attempts, "read", sfd), [9]);
        assert_eq!(rvs(&attempts, "write", sfd), [9]);

        drop(server);
        assert_eq!(rvs(&take_attempts(), "close", sfd), [0]);
        let (a, b) = UnixStream::pair().unwrap();
        let (mut ra, _wa) = a.into_split();
        let mut b = b;
        b.write_all(b"p").await.unwrap();
        let mut one = [0u8; 1];
        ra.read_exact(&mut one).await.unwrap();
        assert_eq!(&one, b"p");
        std::fs::remove_dir_all(&dir).unwrap();
    });
}
