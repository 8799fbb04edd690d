//! A mio server written on the drop-in wrappers (`echo-mio-wrappers`,
//! shaped like mio's tcp_server example) traced by portsnoop: every
//! eventer probe, callbacks included, and nothing the kernel disagrees with.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::time::Duration;

use serde_json::Value;
use tests::{run_load, socket_count, wait_for_sockets, Portsnoop, Server, WAIT};

const EVENTER_PROBES: [&str; 10] = [
    "eventer-accept-entry",
    "eventer-accept-return",
    "eventer-read-entry",
    "eventer-read-return",
    "eventer-write-entry",
    "eventer-write-return",
    "eventer-close-entry",
    "eventer-close-return",
    "eventer-callback-entry",
    "eventer-callback-return",
];

#[test]
fn mio_wrappers_with_callback_frames_show_every_eventer_probe_and_no_mismatch() {
    let (conns, msgs, size) = (3u32, 20u32, 100u32);
    let server = Server::start("echo-mio-wrappers", &[]);
    let baseline = socket_count(server.pid());
    let snoop = Portsnoop::start(&["-p", &server.pid().to_string(), "--json"]);
    let load = run_load(server.addr, conns, msgs, size);
    assert_eq!(load.bytes, u64::from(conns * msgs * size));
    // One connection that pauses after each echo, so the server's read after
    // it finds nothing: an EAGAIN read, deterministically.
    {
        let mut s = std::net::TcpStream::connect(server.addr).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        let mut back = [0u8; 8];
        for i in 0..5u64 {
            s.write_all(&i.to_le_bytes()).unwrap();
            s.read_exact(&mut back).unwrap();
            assert_eq!(back, i.to_le_bytes());
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    wait_for_sockets(server.pid(), baseline);
    let (status, out, err) = snoop.finish();
    assert!(status.success(), "portsnoop: {status}\n{}", err.join("\n"));
    let records: Vec<Value> = out
        .iter()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();

    let fired: BTreeSet<&str> = records
        .iter()
        .filter(|r| r["type"] == "probe")
        .filter_map(|r| r["name"].as_str())
        .collect();
    for probe in EVENTER_PROBES {
        assert!(fired.contains(probe), "{probe} never fired: {fired:?}");
    }

    let summary = records.last().expect("output");
    assert_eq!(summary["type"], "summary");
    assert_eq!(summary["mismatches"], 0, "{summary}");
    assert_eq!(summary["lost_events"], 0, "{summary}");
    let ops: Vec<&Value> = records.iter().filter(|r| r["type"] == "op").collect();
    for op in &ops {
        assert!(op["mismatch"].is_null(), "op disagrees: {op}");
    }
    // The frames name the ops inside them, as the eventer's do.
    let named = |kind: &str| -> BTreeSet<String> {
        ops.iter()
            .filter(|o| o["op"] == kind && o["incomplete"].is_null())
            .map(|o| o["callback"].as_str().unwrap_or("-").to_string())
            .collect()
    };
    assert_eq!(named("accept"), BTreeSet::from(["accept".to_string()]));
    assert_eq!(named("read"), BTreeSet::from(["echo".to_string()]));
    assert_eq!(named("write"), BTreeSet::from(["echo".to_string()]));
    let closes = ops
        .iter()
        .filter(|o| o["op"] == "close" && o["incomplete"].is_null())
        .count();
    assert_eq!(closes, conns as usize + 1, "one close per connection");
    assert!(
        ops.iter().any(|o| o["op"] == "read" && o["user_rv"] == -11),
        "an EAGAIN read"
    );
}
