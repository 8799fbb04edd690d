//! The connection records as the writers show them: an accept's row and
//! JSON lines name its peer, TCP events are rows of the fd, Unix paths
//! reach the table escaped, and the JSON replays to the same events.

mod support;

use std::io::Write;

use portsnoop::correlate::Record;
use portsnoop::event::{Event, Probe, ProbeName, Syscall, SyscallName};
use portsnoop::output::json::Json;
use portsnoop::output::table::Table;
use portsnoop::output::Output;
use portsnoop::sock::{
    Endpoint, SocketInfo, SocketOrigin, TcpEvent, TcpEventKind, AF_INET6, AF_UNIX,
};

fn v6(port: u16) -> Endpoint {
    let mut one = [0u8; 16];
    one[15] = 1;
    Endpoint::inet(AF_INET6, one, port)
}

fn stream() -> Vec<Event> {
    let probe = |ts, name, args| {
        Event::Probe(Probe {
            ts_ns: ts,
            pid: 7,
            tid: 7,
            name,
            args,
            strings: vec![],
        })
    };
    vec![
        probe(1_000, ProbeName::AcceptEntry, [3, 0, 0, 1, 1, 0]),
        Event::Socket(SocketInfo {
            ts_ns: 2_000,
            pid: 7,
            tid: 7,
            fd: 8,
            origin: SocketOrigin::Accept,
            family: AF_INET6,
            sock_type: 1,
            protocol: 6,
            local: v6(8080),
            peer: v6(41000),
            inode: 55,
            sk: 0xffff_0000_1234,
        }),
        Event::Syscall(Syscall {
            ts_ns: 2_000,
            pid: 7,
            tid: 7,
            name: SyscallName::Accept4,
            fd: 3,
            rv: 8,
            dur_ns: 3_000,
            arg: 0,
        }),
        probe(6_000, ProbeName::AcceptReturn, [3, 0, 0, 1, 1, 8]),
        Event::Tcp(TcpEvent {
            ts_ns: 9_000,
            pid: 7,
            tid: 0,
            fd: 8,
            kind: TcpEventKind::State,
            from: 1,
            to: 8,
            sk: 0xffff_0000_1234,
            bytes_received: 1,
            bytes_acked: 0,
            fin_received: true,
            fin_acked: false,
        }),
        Event::Socket(SocketInfo {
            ts_ns: 10_000,
            pid: 7,
            tid: 0,
            fd: 9,
            origin: SocketOrigin::BeforeTrace,
            family: AF_UNIX,
            sock_type: 1,
            protocol: 0,
            local: Endpoint::Unix(b"/tmp/\x1b[2Jx.sock".to_vec()),
            peer: Endpoint::Unknown,
            inode: 56,
            sk: 0,
        }),
    ]
}

fn write(out: &mut dyn Output, records: &[Record], summary: &portsnoop::correlate::Summary) {
    for r in records {
        out.record(r).unwrap();
    }
    out.finish(summary).unwrap();
}

#[test]
fn accept_rows_name_the_peer_and_tcp_events_are_rows_of_the_fd() {
    let (records, summary) = support::correlate(stream());
    let mut buf = Vec::new();
    write(&mut Table::new(&mut buf).with_summary(), &records, &summary);
    let text = String::from_utf8(buf).unwrap();
    assert!(
        text.lines()
            .any(|l| l.contains("accept4") && l.ends_with("= 8 3us tcp [::1]:8080 <- [::1]:41000")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.contains("tcp-state") && l.contains(" 8 ESTABLISHED -> CLOSE_WAIT")),
        "{text}"
    );
    assert!(
        !text.contains('\x1b'),
        "a Unix path reaches the table escaped: {text}"
    );
    assert!(text.contains(r"/tmp/\x1b[2Jx.sock"), "{text}");
    assert!(
        text.contains("  fd 8 tcp [::1]:8080 <- [::1]:41000: ESTABLISHED -> CLOSE_WAIT"),
        "the summary's connections name it: {text}"
    );
}

#[test]
fn json_carries_peer_and_local_and_replays_to_the_same_events() {
    let events = stream();
    let (records, summary) = support::correlate(events.clone());
    let mut buf = Vec::new();
    write(&mut Json::new(&mut buf), &records, &summary);
    buf.flush().unwrap();
    let text = String::from_utf8(buf).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let accept = lines
        .iter()
        .find(|v| v["type"] == "syscall" && v["name"] == "accept4")
        .unwrap();
    assert_eq!(
        (accept["local"].as_str(), accept["peer"].as_str()),
        (Some("[::1]:8080"), Some("[::1]:41000"))
    );
    let op = lines
        .iter()
        .find(|v| v["type"] == "op" && v["op"] == "accept")
        .unwrap();
    assert_eq!(op["peer"], "[::1]:41000");
    let tcp = lines.iter().find(|v| v["type"] == "tcp").unwrap();
    assert_eq!(
        (&tcp["fd"], &tcp["event"], &tcp["from"], &tcp["to"]),
        (
            &8.into(),
            &"state".into(),
            &"ESTABLISHED".into(),
            &"CLOSE_WAIT".into()
        )
    );
    let s = lines.last().unwrap();
    assert_eq!(s["fd_connections"]["8"], "tcp [::1]:8080 <- [::1]:41000");
    assert_eq!(s["accepted"][0]["host"], "::1");
    assert_eq!(s["accepted"][0]["local"], "8080");
    let replayed = support::parse_recording(&text).unwrap();
    assert_eq!(replayed, events);
}
