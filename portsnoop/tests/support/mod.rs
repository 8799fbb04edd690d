//! Shared by portsnoop's pure integration tests: reading a recorded event
//! stream back into [`Event`]s, and running it through the correlator.
//!
//! A recording is portsnoop's own JSON Lines output with the `op` and
//! `summary` lines removed: every other line type carries the whole event
//! (a `wait` line keeps each returned event's epoll `data`, a `probe` line
//! its arguments and strings), so the stream can be replayed exactly.

#![allow(dead_code)] // each test binary uses its own part of this

use std::path::PathBuf;

use portsnoop::correlate::{Correlator, Filter, Op, Record, Summary};
use portsnoop::event::{
    EpollCtl, EpollWait, Event, OffCpu, Probe, ProbeName, ProcessEvent, ProcessEventKind,
    ReadyEvent, SlowSyscall, Syscall, SyscallName,
};
use serde_json::Value;

/// The path of a file under `tests/fixtures/`.
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// The events of a recording under `tests/fixtures/`, in recorded order.
pub fn load_recording(name: &str) -> Vec<Event> {
    let path = fixture(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    parse_recording(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Parses JSON Lines into events; `op` and `summary` lines are skipped
/// (they are results, not input).
pub fn parse_recording(text: &str) -> Result<Vec<Event>, String> {
    let mut events = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(line).map_err(|e| format!("line {}: {e}", i + 1))?;
        match event_of(&v) {
            Ok(Some(ev)) => events.push(ev),
            Ok(None) => {}
            Err(e) => return Err(format!("line {}: {e}: {line}", i + 1)),
        }
    }
    Ok(events)
}

fn u64_of(v: &Value, key: &str) -> Result<u64, String> {
    v[key]
        .as_u64()
        .ok_or_else(|| format!("{key} is not an unsigned number"))
}

fn i64_of(v: &Value, key: &str) -> Result<i64, String> {
    v[key]
        .as_i64()
        .ok_or_else(|| format!("{key} is not a signed number"))
}

fn i32_of(v: &Value, key: &str) -> Result<i32, String> {
    i32::try_from(i64_of(v, key)?).map_err(|_| format!("{key} does not fit an i32"))
}

fn u32_of(v: &Value, key: &str) -> Result<u32, String> {
    u32::try_from(u64_of(v, key)?).map_err(|_| format!("{key} does not fit a u32"))
}

fn str_of<'a>(v: &'a Value, key: &str) -> Result<&'a str, String> {
    v[key]
        .as_str()
        .ok_or_else(|| format!("{key} is not a string"))
}

/// A raw 64-bit register: probe arguments are printed signed or unsigned
/// by their C type; both come back as the same bits.
fn raw_of(v: &Value) -> Result<u64, String> {
    v.as_u64()
        .or_else(|| v.as_i64().map(|n| n as u64))
        .ok_or_else(|| format!("probe argument {v} is not an integer"))
}

fn event_of(v: &Value) -> Result<Option<Event>, String> {
    let ev = match str_of(v, "type")? {
        "op" | "stall" | "summary" => return Ok(None),
        "slow_syscall" => Event::SlowSyscall(SlowSyscall {
            ts_ns: u64_of(v, "ts_ns")?,
            pid: u32_of(v, "pid")?,
            tid: u32_of(v, "tid")?,
            nr: u32_of(v, "nr")?,
            arg0: u64_of(v, "arg0")?,
            rv: i64_of(v, "rv")?,
            dur_ns: u64_of(v, "dur_ns")?,
        }),
        "off_cpu" => Event::OffCpu(OffCpu {
            ts_ns: u64_of(v, "ts_ns")?,
            pid: u32_of(v, "pid")?,
            tid: u32_of(v, "tid")?,
            total_ns: u64_of(v, "total_ns")?,
        }),
        "syscall" => {
            let name = str_of(v, "name")?;
            Event::Syscall(Syscall {
                ts_ns: u64_of(v, "ts_ns")?,
                pid: u32_of(v, "pid")?,
                tid: u32_of(v, "tid")?,
                name: SyscallName::ALL
                    .into_iter()
                    .find(|s| s.as_str() == name)
                    .ok_or_else(|| format!("unknown syscall {name}"))?,
                fd: i32_of(v, "fd")?,
                rv: i64_of(v, "rv")?,
                dur_ns: u64_of(v, "dur_ns")?,
                arg: v["arg"].as_u64().unwrap_or(0),
            })
        }
        "epoll_ctl" => Event::EpollCtl(EpollCtl {
            ts_ns: u64_of(v, "ts_ns")?,
            pid: u32_of(v, "pid")?,
            tid: u32_of(v, "tid")?,
            epfd: i32_of(v, "epfd")?,
            op: match str_of(v, "op")? {
                "ADD" => 1,
                "DEL" => 2,
                "MOD" => 3,
                other => return Err(format!("unknown epoll_ctl op {other}")),
            },
            fd: i32_of(v, "fd")?,
            events: u32_of(v, "events")?,
            data: u64_of(v, "data")?,
            rv: i64_of(v, "rv")?,
            dur_ns: u64_of(v, "dur_ns")?,
        }),
        "wait" => Event::EpollWait(EpollWait {
            ts_ns: u64_of(v, "ts_ns")?,
            pid: u32_of(v, "pid")?,
            tid: u32_of(v, "tid")?,
            name: match str_of(v, "name")? {
                "epoll_wait" => "epoll_wait",
                "epoll_pwait" => "epoll_pwait",
                "epoll_pwait2" => "epoll_pwait2",
                other => return Err(format!("unknown wait {other}")),
            },
            epfd: i32_of(v, "epfd")?,
            rv: i64_of(v, "rv")?,
            dur_ns: u64_of(v, "dur_ns")?,
            events: v["events"]
                .as_array()
                .ok_or("events is not an array")?
                .iter()
                .map(|e| {
                    Ok(ReadyEvent {
                        events: u32_of(e, "events")?,
                        data: u64_of(e, "data")?,
                    })
                })
                .collect::<Result<_, String>>()?,
        }),
        "probe" => {
            let name = str_of(v, "name")?;
            let name = ProbeName::from_name(name).ok_or_else(|| format!("unknown probe {name}"))?;
            let mut args = [0u64; 6];
            let given = v["args"].as_array().ok_or("args is not an array")?;
            if given.len() != name.arg_count() {
                return Err(format!(
                    "{} has {} arguments, the line {}",
                    name.as_str(),
                    name.arg_count(),
                    given.len()
                ));
            }
            for (slot, a) in args.iter_mut().zip(given) {
                *slot = raw_of(a)?;
            }
            Event::Probe(Probe {
                ts_ns: u64_of(v, "ts_ns")?,
                pid: u32_of(v, "pid")?,
                tid: u32_of(v, "tid")?,
                name,
                args,
                strings: v["strings"]
                    .as_array()
                    .ok_or("strings is not an array")?
                    .iter()
                    .map(|s| s.as_str().map(Into::into).ok_or("a string is not one"))
                    .collect::<Result<_, _>>()?,
            })
        }
        "lost" => Event::Lost {
            ts_ns: u64_of(v, "ts_ns")?,
            count: u64_of(v, "count")?,
        },
        "process" => Event::Process(ProcessEvent {
            ts_ns: u64_of(v, "ts_ns")?,
            pid: u32_of(v, "pid")?,
            tid: u32_of(v, "tid")?,
            kind: match str_of(v, "event")? {
                "exit" => ProcessEventKind::Exit {
                    code: i32_of(v, "status")?,
                },
                "exec" => ProcessEventKind::Exec,
                other => return Err(format!("unknown process event {other}")),
            },
        }),
        "socket" => {
            let family = match str_of(v, "family")? {
                "inet" => portsnoop::sock::AF_INET,
                "inet6" => portsnoop::sock::AF_INET6,
                "unix" => portsnoop::sock::AF_UNIX,
                n => n.parse().map_err(|_| format!("unknown family {n}"))?,
            };
            let origin = str_of(v, "origin")?;
            Event::Socket(portsnoop::sock::SocketInfo {
                ts_ns: u64_of(v, "ts_ns")?,
                pid: u32_of(v, "pid")?,
                tid: u32_of(v, "tid")?,
                fd: i32_of(v, "fd")?,
                origin: portsnoop::sock::SocketOrigin::from_name(origin)
                    .ok_or_else(|| format!("unknown origin {origin}"))?,
                family,
                sock_type: u64_of(v, "sock_type")? as u16,
                protocol: u64_of(v, "protocol")? as u16,
                local: portsnoop::sock::Endpoint::parse(family, str_of(v, "local")?),
                peer: portsnoop::sock::Endpoint::parse(family, str_of(v, "peer")?),
                inode: u64_of(v, "inode")?,
                sk: u64_of(v, "sk")?,
            })
        }
        "tcp" => {
            let state = |key: &str| {
                let name = str_of(v, key)?;
                portsnoop::sock::tcp_state_of(name).ok_or_else(|| format!("unknown state {name}"))
            };
            let event = str_of(v, "event")?;
            Event::Tcp(portsnoop::sock::TcpEvent {
                ts_ns: u64_of(v, "ts_ns")?,
                pid: u32_of(v, "pid")?,
                tid: u32_of(v, "tid")?,
                fd: i32_of(v, "fd")?,
                kind: portsnoop::sock::TcpEventKind::from_name(event)
                    .ok_or_else(|| format!("unknown tcp event {event}"))?,
                from: state("from")?,
                to: state("to")?,
                sk: u64_of(v, "sk")?,
                bytes_received: u64_of(v, "bytes_received")?,
                bytes_acked: u64_of(v, "bytes_acked")?,
                fin_received: v["fin_received"].as_bool().ok_or("fin_received")?,
                fin_acked: v["fin_acked"].as_bool().ok_or("fin_acked")?,
            })
        }
        other => return Err(format!("unknown line type {other}")),
    };
    Ok(Some(ev))
}

/// Runs `events` through a correlator with `filter`.
pub fn correlate_with(events: Vec<Event>, filter: Filter) -> (Vec<Record>, Summary) {
    let mut c = Correlator::new(filter);
    let mut out = Vec::new();
    for e in events {
        c.push(e, &mut out);
    }
    let summary = c.finish(&mut out);
    (out, summary)
}

/// Runs `events` through a correlator that keeps everything.
pub fn correlate(events: Vec<Event>) -> (Vec<Record>, Summary) {
    correlate_with(events, Filter::default())
}

/// The ops among `records`, in emission order.
pub fn ops(records: &[Record]) -> Vec<&Op> {
    records
        .iter()
        .filter_map(|r| match r {
            Record::Op(op) => Some(&**op),
            _ => None,
        })
        .collect()
}
