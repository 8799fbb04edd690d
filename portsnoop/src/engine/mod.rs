//! Load, attach, poll: the BPF side, yielding typed [`Event`]s. Nothing else.
//!
//! The kernel side (`bpf/portsnoop.bpf.c`) filters by the target's tgid,
//! joins each syscall's enter and exit, and submits records to a ring buffer
//! without waking us; we drain it on a short timer. Records that did not fit
//! are counted in the kernel and reported in the stream where they are
//! missing, as [`Event::Lost`].

mod raw;
mod sites;
mod target;

use std::cell::RefCell;
use std::fmt;
use std::io;
use std::mem::MaybeUninit;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use libbpf_rs::skel::{OpenSkel, Skel, SkelBuilder};
use libbpf_rs::{Link, MapCore, MapFlags, OpenObject, RingBuffer, RingBufferBuilder, UprobeOpts};

pub use raw::{decode, DecodeError, Decoder};
pub use sites::{sites_in, ArgSpec, Site, Sites};
pub use target::{check_privileges, ensure_btf, Target};

use crate::event::Event;

#[allow(clippy::all, clippy::pedantic, missing_docs, dead_code, unused_imports)]
mod skel {
    include!(concat!(env!("OUT_DIR"), "/portsnoop.skel.rs"));
}
use skel::{PortsnoopSkel, PortsnoopSkelBuilder};

/// The USDT provider portsnoop attaches to.
pub const PROVIDER: &str = "evloop";

/// Why tracing could not start.
#[derive(Debug)]
pub enum Error {
    /// Not root and missing these capabilities.
    Privileges(String),
    /// No process with this pid.
    NoSuchProcess(u32),
    /// The command after `--` was not found.
    NoSuchCommand(String),
    /// The kernel has no BTF.
    NoBtf,
    /// The command line was wrong.
    Usage(String),
    /// The kernel refused to load or attach.
    Bpf(String, libbpf_rs::Error),
    /// Other I/O.
    Io(String, io::Error),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Privileges(missing) => write!(
                f,
                "portsnoop needs root, or the capabilities CAP_BPF and CAP_PERFMON (missing: {missing}); \
                 run it with sudo"
            ),
            Error::NoSuchProcess(pid) => write!(f, "no such process: {pid}"),
            Error::NoSuchCommand(cmd) => write!(f, "command not found: {cmd}"),
            Error::NoBtf => write!(
                f,
                "this kernel has no BTF (/sys/kernel/btf/vmlinux is missing): portsnoop needs a kernel built with \
                 CONFIG_DEBUG_INFO_BTF=y (Linux 5.15 or later; most distributions' kernels are)"
            ),
            Error::Usage(msg) => write!(f, "{msg}"),
            // The cause is the source: shown after this, as `what: cause`.
            Error::Bpf(what, _) => write!(f, "{what} (is this kernel built with BPF, BTF and uprobes?)"),
            Error::Io(what, _) => write!(f, "{what}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Bpf(_, e) => Some(e),
            Error::Io(_, e) => Some(e),
            _ => None,
        }
    }
}

/// How to set up the kernel side.
#[derive(Clone, Debug)]
pub struct Options {
    /// Ring buffer size in bytes; rounded up to a power of two of at least
    /// one page.
    pub buffer_bytes: usize,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            buffer_bytes: 8 << 20,
        }
    }
}

/// What was attached, for the ready line.
#[derive(Clone, Debug)]
pub struct Attached {
    /// The traced pid.
    pub pid: u32,
    /// The executable whose probes were attached.
    pub exe: PathBuf,
    /// Distinct `evloop` probes attached.
    pub probes: usize,
    /// Probe sites attached (a probe can have several).
    pub sites: usize,
    /// Notes skipped because their code was discarded by the linker.
    pub dead_sites: usize,
    /// Sites skipped because their arguments are not where we read them.
    pub unreadable_sites: usize,
    /// Syscall and sched tracepoints attached.
    pub tracepoints: usize,
}

/// A loaded and attached kernel side.
pub struct Engine {
    skel: PortsnoopSkel<'static>,
    _links: Vec<Link>,
    ring: RingBuffer<'static>,
    decoded: Rc<RefCell<Vec<Event>>>,
    undecodable: Rc<RefCell<u64>>,
    lost_reported: u64,
    attached: Attached,
}

impl Engine {
    /// Loads the BPF program filtered to `target` and attaches every
    /// tracepoint and every `evloop` probe the target's binary has.
    pub fn attach(target: &Target, opts: &Options) -> Result<Engine, Error> {
        check_privileges()?;
        ensure_btf()?;
        let bpf = |what: &str| {
            let what = what.to_string();
            move |e| Error::Bpf(what, e)
        };
        // The skeleton borrows its object for as long as it lives; an engine
        // lives as long as the process, so the object is leaked on purpose.
        let object: &'static mut MaybeUninit<OpenObject> =
            Box::leak(Box::new(MaybeUninit::uninit()));
        let mut open = PortsnoopSkelBuilder::default()
            .open(object)
            .map_err(bpf("opening the BPF object"))?;
        let ring_bytes = opts.buffer_bytes.max(4096).next_power_of_two();
        let rodata = open
            .maps
            .rodata_data
            .as_deref_mut()
            .expect("the program has read-only data");
        rodata.target_tgid = target.pid;
        // Wake the consumer early only when the buffer is half full; else it
        // drains on its timer.
        rodata.wakeup_bytes = (ring_bytes / 2) as u64;
        open.maps
            .events
            .set_max_entries(ring_bytes as u32)
            .map_err(bpf("sizing the ring buffer"))?;
        let skel = open.load().map_err(bpf("loading the BPF program"))?;

        let mut links = Vec::new();
        let mut tracepoints = 0;
        for prog in skel.object().progs_mut() {
            let section = prog.section().to_string_lossy();
            if section.starts_with("tracepoint/") || section.starts_with("raw_tracepoint/") {
                let name = prog.name().to_string_lossy().into_owned();
                links.push(prog.attach().map_err(bpf(&format!("attaching {name}")))?);
                tracepoints += 1;
            }
        }

        let sites = sites_in(&target.exe, PROVIDER)
            .map_err(|e| Error::Io(e, io::Error::other("reading USDT notes")))?;
        let mut probes = std::collections::BTreeSet::new();
        let mut arg_specs: [Vec<ArgSpec>; 11] = Default::default();
        for site in &sites.sites {
            let opts = UprobeOpts {
                ref_ctr_offset: site.semaphore_offset as usize,
                cookie: site.probe as u64,
                ..UprobeOpts::default()
            };
            let link = skel
                .progs
                .evloop_site
                .attach_uprobe_with_opts(target.pid as i32, &target.exe, site.offset as usize, opts)
                .map_err(bpf(&format!(
                    "attaching {PROVIDER}:{} at offset {:#x}",
                    site.probe.as_str(),
                    site.offset
                )))?;
            links.push(link);
            probes.insert(site.probe);
            arg_specs[site.probe as usize] = site.args.clone();
        }

        let decoded = Rc::new(RefCell::new(Vec::new()));
        let undecodable = Rc::new(RefCell::new(0u64));
        let mut builder = RingBufferBuilder::new();
        let (sink, bad) = (Rc::clone(&decoded), Rc::clone(&undecodable));
        let mut decoder = Decoder::default();
        builder
            .add(&skel.maps.events, move |data: &[u8]| {
                match decoder.decode(data) {
                    Ok(Event::Probe(mut p)) => {
                        for (arg, spec) in p.args.iter_mut().zip(&arg_specs[p.name as usize]) {
                            *arg = spec.extend(*arg);
                        }
                        sink.borrow_mut().push(Event::Probe(p))
                    }
                    Ok(ev) => sink.borrow_mut().push(ev),
                    Err(_) => *bad.borrow_mut() += 1,
                }
                0
            })
            .map_err(bpf("opening the ring buffer"))?;
        let ring = builder.build().map_err(bpf("opening the ring buffer"))?;
        let attached = Attached {
            pid: target.pid,
            exe: target.exe.clone(),
            probes: probes.len(),
            sites: sites.sites.len(),
            dead_sites: sites.dead,
            unreadable_sites: sites.unreadable,
            tracepoints,
        };
        Ok(Engine {
            skel,
            _links: links,
            ring,
            decoded,
            undecodable,
            lost_reported: 0,
            attached,
        })
    }

    /// What was attached.
    pub fn attached(&self) -> &Attached {
        &self.attached
    }

    /// Waits up to `timeout` (less if the buffer fills) and puts into
    /// `events` (emptied first) every event submitted since the last call.
    /// Losses come in-band, as [`Event::Lost`] where they happened; see
    /// [`Engine::unreported_losses`]. Both vectors keep their capacity from
    /// poll to poll: growing them afresh every 10 ms was a tenth of the
    /// consumer's time.
    pub fn poll(&mut self, timeout: Duration, events: &mut Vec<Event>) -> Result<(), Error> {
        // poll() returns early only on a forced wakeup; consume() then takes
        // whatever was submitted without one.
        match self.ring.poll(timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == libbpf_rs::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::Bpf("polling the ring buffer".into(), e)),
        }
        match self.ring.consume() {
            Ok(()) => {}
            Err(e) if e.kind() == libbpf_rs::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::Bpf("reading the ring buffer".into(), e)),
        }
        events.clear();
        std::mem::swap(events, &mut *self.decoded.borrow_mut());
        self.lost_reported += events
            .iter()
            .map(|e| {
                if let Event::Lost { count, .. } = e {
                    *count
                } else {
                    0
                }
            })
            .sum::<u64>();
        Ok(())
    }

    /// At the end: losses the kernel counted but could not report in-band
    /// (no record came after them), plus undecodable records, as one
    /// [`Event::Lost`] if there are any.
    pub fn unreported_losses(&mut self) -> Option<Event> {
        let missing = self.lost_total().saturating_sub(self.lost_reported);
        self.lost_reported += missing;
        (missing > 0).then(|| Event::Lost {
            ts_ns: monotonic_ns(),
            count: missing,
        })
    }

    /// Events the kernel side could not submit, plus records that could not
    /// be decoded, since attach.
    pub fn lost_total(&self) -> u64 {
        let dropped = self
            .skel
            .maps
            .dropped
            .lookup_percpu(&0u32.to_ne_bytes(), MapFlags::ANY)
            .ok()
            .flatten()
            .map(|per_cpu| {
                per_cpu
                    .iter()
                    .filter_map(|v| {
                        v.get(..8)
                            .and_then(|b| b.try_into().ok())
                            .map(u64::from_ne_bytes)
                    })
                    .sum::<u64>()
            })
            .unwrap_or(0);
        dropped + *self.undecodable.borrow()
    }
}

/// `CLOCK_MONOTONIC` in ns: the clock `bpf_ktime_get_ns` reads.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
