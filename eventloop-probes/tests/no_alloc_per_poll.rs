//! A round of the eventer allocates nothing: the events buffer, the
//! tables and the pending list are reused. Counted with a global allocator
//! that counts this thread's allocations, around rounds that dispatch real
//! loopback traffic (an idle round proves nothing: an empty `collect`
//! does not allocate either).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{ErrorKind, Read, Write};
use std::rc::Rc;
use std::time::{Duration, Instant};

use eventloop_probes::eventer::{Eventer, Mask};

struct Counting;

thread_local! {
    // const-initialised and without Drop: using it inside the allocator
    // neither allocates nor registers a destructor.
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: forwards to System; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.with(|a| a.set(a.get() + 1));
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.with(|a| a.set(a.get() + 1));
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocs() -> u64 {
    ALLOCS.with(Cell::get)
}

#[test]
fn rounds_that_dispatch_events_allocate_nothing() {
    let mut ev = Eventer::new().unwrap();
    let listener = mio::net::TcpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    // Callback runs and bytes echoed (a run may echo several messages).
    let calls = Rc::new(Cell::new(0u64));
    let echoed = Rc::new(Cell::new(0u64));
    let (c, e) = (Rc::clone(&calls), Rc::clone(&echoed));
    ev.register(listener, "accept", Mask::READ, move |ctx, _| {
        while let Ok((conn, _)) = ctx.accept() {
            let (c, e) = (Rc::clone(&c), Rc::clone(&e));
            let mut buf = [0u8; 256]; // in the closure: no allocation per call
            ctx.register(conn, "echo", Mask::READ, move |ctx, _| {
                c.set(c.get() + 1);
                loop {
                    match ctx.read(&mut buf) {
                        Ok(0) => return Mask::NONE,
                        Ok(n) => {
                            e.set(e.get() + n as u64);
                            ctx.write(&buf[..n]).unwrap();
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => return Mask::READ,
                        Err(_) => return Mask::NONE,
                    }
                }
            });
        }
        Mask::READ
    })
    .unwrap();
    // A client on another thread (its allocations are not this thread's).
    let (go, wait_go) = std::sync::mpsc::channel::<()>();
    // The hang-up waits for the counting to end: the last echo's callback
    // reads on until EAGAIN, and would find the close in the same round.
    let (done, wait_done) = std::sync::mpsc::channel::<()>();
    let client = std::thread::spawn(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut back = [0u8; 4];
        for i in 0..200u32 {
            if i == 20 {
                // The warm-up is done: wait until the counting starts.
                wait_go.recv_timeout(Duration::from_secs(10)).unwrap();
            }
            s.write_all(&i.to_le_bytes()).unwrap();
            s.read_exact(&mut back).unwrap();
            assert_eq!(back, i.to_le_bytes());
        }
        wait_done.recv_timeout(Duration::from_secs(10)).unwrap();
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    // Warm-up: the accept, the registration, the first echoes.
    while echoed.get() < 20 * 4 && Instant::now() < deadline {
        ev.run_once(Some(Duration::from_millis(50))).unwrap();
    }
    assert_eq!(echoed.get(), 20 * 4, "warm-up echoes");
    // Sent before counting: a channel's first send allocates its block.
    go.send(()).unwrap();
    let before = allocs();
    let rounds_before = calls.get();
    // Until the last echo, not the client's hang-up (held back until then):
    // closing a connection the first time grows the free-slot list once
    // (amortized, not per round).
    while echoed.get() < 200 * 4 && Instant::now() < deadline {
        ev.run_once(Some(Duration::from_millis(50))).unwrap();
    }
    let during = allocs() - before;
    let dispatched = calls.get() - rounds_before;
    done.send(()).unwrap();
    client.join().unwrap();
    assert_eq!(echoed.get(), 200 * 4, "every message echoed");
    assert!(
        dispatched >= 10,
        "rounds with events were measured: {dispatched}"
    );
    assert_eq!(during, 0, "allocations in {dispatched} dispatching rounds");
}
