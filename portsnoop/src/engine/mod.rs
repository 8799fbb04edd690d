//! Load, attach, poll: the BPF side, yielding typed [`Event`]s. Nothing else.
//!
//! The kernel side (`bpf/portsnoop.bpf.c`) filters by the target's tgid (with
//! `-f`, by the set of followed processes' tgids: see [`Change`]),
//! joins each syscall's enter and exit, and submits records to a ring buffer
//! without waking us; we drain it on a short timer. Records that did not fit
//! are counted in the kernel and reported in the stream where they are
//! missing, as [`Event::Lost`].

mod background_drop;
mod checks;
mod raw;
mod semaphore;
mod sites;
pub mod sockets;
pub mod unix_diag;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::mem::MaybeUninit;
use std::path::Path;
use std::rc::Rc;
use std::time::Duration;

use libbpf_rs::skel::{OpenSkel, Skel, SkelBuilder};
use libbpf_rs::{
    Link, MapCore, MapFlags, OpenObject, RingBuffer, RingBufferBuilder, UprobeMultiOpts, UprobeOpts,
};
use rustc_hash::FxHashMap;

pub use checks::{check_privileges, ensure_btf, own_pid_namespace};
pub use raw::{decode, DecodeError, Decoder};
pub use sites::{sites_in, ArgSpec, Site, Sites};

use crate::target::{Image, Target};

use crate::event::Event;
use crate::sock::SocketInfo;
use background_drop::BackgroundDrop;
use semaphore::HeldSemaphore;

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
    /// The kernel has no BTF.
    NoBtf,
    /// The kernel refused to load the program or attach a tracepoint.
    Bpf(String, libbpf_rs::Error),
    /// The kernel refused a uprobe on a probe site.
    Attach(String, libbpf_rs::Error),
    /// Other I/O.
    Io(String, io::Error),
    /// What was asked cannot be done here.
    Unsupported(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Privileges(missing) => write!(
                f,
                "portsnoop needs root, or the capabilities CAP_BPF and CAP_PERFMON (missing: {missing}); \
                 run it with sudo"
            ),
            Error::NoBtf => write!(
                f,
                "this kernel has no BTF (/sys/kernel/btf/vmlinux is missing): portsnoop needs a kernel built with \
                 CONFIG_DEBUG_INFO_BTF=y (Linux 5.15 or later; most distributions' kernels are)"
            ),
            // The cause is the source: shown after this, as `what: cause`.
            Error::Bpf(what, _) => write!(f, "{what} (is this kernel built with BPF, BTF and uprobes?)"),
            Error::Attach(what, _) | Error::Io(what, _) | Error::Unsupported(what) => {
                write!(f, "{what}")
            }
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Bpf(_, e) | Error::Attach(_, e) => Some(e),
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
    /// `-f`: also trace the processes the target forks, and theirs.
    pub follow_forks: bool,
    /// Stall tracking: with `Some(min_ns)`, the kernel side knows which
    /// threads are inside a callback, submits their syscalls of any kind
    /// that last at least `min_ns` ([`Event::SlowSyscall`]) and counts their
    /// time off-CPU ([`Event::OffCpu`], from the scheduler's accounting in
    /// the thread's `task_struct`). `None`: the verifier drops all of it.
    pub stall_syscall_min_ns: Option<u64>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            buffer_bytes: 8 << 20,
            follow_forks: false,
            stall_syscall_min_ns: None,
        }
    }
}

/// With `-f`, a change in the set of traced processes that the session
/// acts on (see [`Engine::follow_changes`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// A traced process forked this one: it waits, unrecorded, for
    /// [`Engine::attach_process`].
    Forked(u32),
    /// This followed process exec'd: its new image waits, unrecorded, for
    /// [`Engine::attach_process`].
    Exec(u32),
    /// This followed process is gone: [`Engine::detach_process`].
    Gone(u32),
}

/// What was attached, for the ready line.
#[derive(Clone, Debug)]
pub struct Attached {
    /// The traced pid.
    pub pid: u32,
    /// The executable whose probes were attached, as the process sees it
    /// (escaped: the app controls it).
    pub exe: String,
    /// Distinct `evloop` probes attached.
    pub probes: usize,
    /// Probe sites attached (a probe can have several).
    pub sites: usize,
    /// Of those, sites another tool's uprobe holds without the semaphore as
    /// reference counter: attached without one, with the semaphore set by
    /// portsnoop (see `engine/semaphore.rs`).
    pub shared_sites: usize,
    /// Sites not attached because of another tool's uprobe on them (named
    /// in `warnings`).
    pub skipped_sites: usize,
    /// Notes skipped because their code was discarded by the linker.
    pub dead_sites: usize,
    /// Sites skipped because their arguments are not where we read them.
    pub unreadable_sites: usize,
    /// Syscall and sched tracepoints attached.
    pub tracepoints: usize,
    /// The target's threads when recording began: they may have been in the
    /// middle of ops or callbacks whose entries were not recorded (empty for
    /// a child held before its first instruction).
    pub threads_before_trace: Vec<u32>,
    /// What the operator should know about the attach (sites shared or
    /// skipped, and why), one sentence each.
    pub warnings: Vec<String>,
}

impl Attached {
    /// What attaching `sites` of process `pid`'s `image` came to (no sites
    /// if they could not be attached).
    fn of(pid: u32, image: &Image, tracepoints: usize, sites: Option<&ImageSites>) -> Attached {
        Attached {
            pid,
            exe: image.shown.clone(),
            probes: sites.map_or(0, |s| s.probes),
            sites: sites.map_or(0, |s| s.sites),
            shared_sites: sites.map_or(0, |s| s.shared),
            skipped_sites: sites.map_or(0, |s| s.skipped),
            dead_sites: sites.map_or(0, |s| s.dead),
            unreadable_sites: sites.map_or(0, |s| s.unreadable),
            tracepoints,
            threads_before_trace: Vec::new(),
            warnings: sites.map_or_else(Vec::new, |s| s.warnings.clone()),
        }
    }

    /// `" (1 site shared with another uprobe, 0 skipped)"` for the ready
    /// line, or nothing when every site is portsnoop's alone.
    pub fn sharing(&self) -> String {
        if self.shared_sites == 0 && self.skipped_sites == 0 {
            return String::new();
        }
        let plural = if self.shared_sites == 1 { "" } else { "s" };
        format!(
            " ({} site{plural} shared with another uprobe, {} skipped)",
            self.shared_sites, self.skipped_sites
        )
    }
}

/// The argument specs of each probe, by probe id, of the image attached.
type ArgSpecs = [Vec<ArgSpec>; 11];

/// One process's attached sites. Links first: dropped before the
/// semaphores, so the probes go quiet before their semaphores are given
/// back. Only held: dropping them is what detaches.
#[allow(dead_code)]
struct ProcessSites {
    links: Vec<Link>,
    /// Semaphores held up by hand for sites shared with another tool's
    /// uprobe (see `semaphore.rs`).
    semaphores: Vec<HeldSemaphore>,
}

/// A loaded and attached kernel side.
pub struct Engine {
    skel: PortsnoopSkel<'static>,
    _tracepoints: Vec<Link>,
    /// The uprobes on each traced process's current image (uprobes are
    /// per process: with -f, each followed process has its own).
    sites: BTreeMap<u32, ProcessSites>,
    /// Each process's image's argument specs (the decoder sign-extends a
    /// probe's arguments with its own process's).
    arg_specs: Rc<RefCell<FxHashMap<u32, ArgSpecs>>>,
    /// `-f`: the traced set is the `traced` map, not the target alone.
    follow: bool,
    ring: RingBuffer<'static>,
    decoded: Rc<RefCell<Vec<Event>>>,
    undecodable: Rc<RefCell<u64>>,
    lost_reported: u64,
    attached: Attached,
    /// Where the sites of processes that are gone are let go of.
    detached: BackgroundDrop<ProcessSites>,
}

impl Engine {
    /// Loads the BPF program filtered to `target` and attaches every
    /// tracepoint and every `evloop` probe the target's binary has.
    pub fn attach(target: &Target, opts: &Options) -> Result<Engine, Error> {
        check_privileges()?;
        ensure_btf()?;
        let pid_ns = own_pid_namespace();
        if opts.follow_forks && pid_ns.is_some() {
            // The fork program reads a child's tgid from its task, a global
            // pid: mapping it into this namespace is not done (yet).
            return Err(Error::Unsupported(
                "-f is not supported when portsnoop runs in a pid namespace".into(),
            ));
        }
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
        rodata.target_tgid = target.pid();
        // In a pid namespace, the BPF side filters and reports in its pids.
        rodata.follow = u32::from(opts.follow_forks);
        if let Some(min_ns) = opts.stall_syscall_min_ns {
            rodata.stall_track = 1;
            rodata.stall_syscall_min_ns = min_ns;
        }
        if let Some((dev, ino)) = pid_ns {
            rodata.in_pid_ns = 1;
            rodata.pid_ns_dev = dev;
            rodata.pid_ns_ino = ino;
        }
        // Wake the consumer early only when the buffer is half full; else it
        // drains on its timer.
        rodata.wakeup_bytes = (ring_bytes / 2) as u64;
        open.maps
            .events
            .set_max_entries(ring_bytes as u32)
            .map_err(bpf("sizing the ring buffer"))?;
        if !has_uprobe_multi() {
            open.progs.evloop_site_multi.set_autoload(false);
        }
        let skel = open.load().map_err(bpf("loading the BPF program"))?;

        let mut links = Vec::new();
        let mut tracepoints = 0;
        for prog in skel.object().progs_mut() {
            let section = prog.section().to_string_lossy();
            if section.starts_with("tracepoint/") || section.starts_with("raw_tracepoint/") {
                let name = prog.name().to_string_lossy().into_owned();
                // Without -f they would return at once, on every fork and
                // exit of the machine.
                if !opts.follow_forks && (name == "on_fork" || name == "on_process_exit") {
                    continue;
                }
                links.push(prog.attach().map_err(bpf(&format!("attaching {name}")))?);
                tracepoints += 1;
            }
        }

        if opts.follow_forks {
            // Recording as soon as the global flag is set, like without -f.
            skel.maps
                .traced
                .update(
                    &target.pid().to_ne_bytes(),
                    &1u32.to_ne_bytes(),
                    MapFlags::ANY,
                )
                .map_err(bpf("adding the target to the traced processes"))?;
        }
        let image = target.image();
        let sites = attach_sites(&skel, target.pid(), &image.path)?;
        let mut specs_by_pid = FxHashMap::default();
        specs_by_pid.insert(target.pid(), sites.arg_specs.clone());
        let arg_specs = Rc::new(RefCell::new(specs_by_pid));
        let specs = Rc::clone(&arg_specs);

        let decoded = Rc::new(RefCell::new(Vec::new()));
        let undecodable = Rc::new(RefCell::new(0u64));
        let mut builder = RingBufferBuilder::new();
        let (sink, bad) = (Rc::clone(&decoded), Rc::clone(&undecodable));
        let mut decoder = Decoder::default();
        builder
            .add(&skel.maps.events, move |data: &[u8]| {
                match decoder.decode(data) {
                    Ok(Event::Probe(mut p)) => {
                        if let Some(specs) = specs.borrow().get(&p.pid) {
                            for (arg, spec) in p.args.iter_mut().zip(&specs[p.name as usize]) {
                                *arg = spec.extend(*arg);
                            }
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
        let mut skel = skel;
        set_ready(&mut skel, true);
        // Listed after recording began, so no thread running before it is
        // missed; one started in between is only treated more leniently.
        let threads_before_trace = if target.is_held() {
            Vec::new()
        } else {
            threads_of(target.pid())
        };
        let attached = Attached {
            threads_before_trace,
            ..Attached::of(target.pid(), image, tracepoints, Some(&sites))
        };
        let mut by_pid = BTreeMap::new();
        by_pid.insert(
            target.pid(),
            ProcessSites {
                links: sites.links,
                semaphores: sites.semaphores,
            },
        );
        Ok(Engine {
            skel,
            _tracepoints: links,
            sites: by_pid,
            arg_specs,
            follow: opts.follow_forks,
            ring,
            decoded,
            undecodable,
            lost_reported: 0,
            attached,
            detached: BackgroundDrop::new(),
        })
    }

    /// What was attached.
    pub fn attached(&self) -> &Attached {
        &self.attached
    }

    /// Stops recording until [`Engine::reattach`]. The kernel side also
    /// stops by itself when the target execs.
    pub fn pause(&mut self) {
        set_ready(&mut self.skel, false);
    }

    /// Whether the kernel side records. False after [`Engine::pause`], and
    /// after the target exec'd: its old image's sites are gone, and the
    /// new image's wait for [`Engine::reattach`].
    pub fn is_recording(&self) -> bool {
        let bss = self
            .skel
            .maps
            .bss_data
            .as_deref()
            .expect("the program has a .bss section");
        // SAFETY: a u32 in the map's memory, which stays mapped for the
        // skeleton's life; the kernel side writes it on exec.
        let ready = unsafe { std::ptr::read_volatile(&bss.ready) != 0 };
        // With -f an exec pauses only its own process (see `traced`).
        ready && (!self.follow || self.process_state(self.attached.pid) == Some(true))
    }

    /// With -f: whether process `pid` is traced, and then whether it is
    /// recorded (false from its fork or exec until it is attached).
    fn process_state(&self, pid: u32) -> Option<bool> {
        let value = self
            .skel
            .maps
            .traced
            .lookup(&pid.to_ne_bytes(), MapFlags::ANY)
            .ok()
            .flatten()?;
        Some(value.iter().any(|b| *b != 0))
    }

    /// Sets process `pid`'s own recording flag (with -f), or the global one.
    fn set_recording(&mut self, pid: u32, on: bool) {
        if !self.follow {
            set_ready(&mut self.skel, on);
            return;
        }
        // BPF_EXIST: a process that exited meanwhile is not brought back.
        let _ = self.skel.maps.traced.update(
            &pid.to_ne_bytes(),
            &u32::from(on).to_ne_bytes(),
            MapFlags::EXIST,
        );
    }

    /// With -f: the forks, execs and exits among the traced processes
    /// since the last call, read from the kernel side's `traced` map (not
    /// from their records, which can be lost). The main target's exec is
    /// [`Engine::is_recording`]'s, its exit the session's.
    pub fn follow_changes(&self) -> Vec<Change> {
        if !self.follow {
            return Vec::new();
        }
        let main = self.attached.pid;
        let mut changes = Vec::new();
        let mut in_map = std::collections::BTreeSet::new();
        for key in self.skel.maps.traced.keys() {
            let Ok(bytes) = <[u8; 4]>::try_from(key.as_slice()) else {
                continue;
            };
            let pid = u32::from_ne_bytes(bytes);
            in_map.insert(pid);
            if pid == main {
                continue;
            }
            match (self.sites.contains_key(&pid), self.process_state(pid)) {
                (false, Some(_)) => changes.push(Change::Forked(pid)),
                (true, Some(false)) => changes.push(Change::Exec(pid)),
                _ => {}
            }
        }
        for pid in self.sites.keys() {
            if *pid != main && !in_map.contains(pid) {
                changes.push(Change::Gone(*pid));
            }
        }
        changes
    }

    /// With -f: attaches the sites of followed process `pid`'s `image` (a
    /// new child, or a child's image after its exec; the old image's sites
    /// are dropped first) and records it. What it did since its fork or
    /// exec is not in the trace: its threads then are in the result's
    /// `threads_before_trace`. If the sites cannot be attached, the
    /// process is recorded on the kernel side only and the error is
    /// returned.
    pub fn attach_process(&mut self, pid: u32, image: &Image) -> Result<Attached, Error> {
        let (attached, result) = self.attach_image(pid, image);
        result.map(|()| attached)
    }

    /// Swaps process `pid`'s probe sites for those of `image`, with
    /// recording paused meanwhile; kernel side only if they cannot be
    /// attached (the error is returned beside what was attached).
    fn attach_image(&mut self, pid: u32, image: &Image) -> (Attached, Result<(), Error>) {
        self.set_recording(pid, false);
        // Dropping a link detaches it; before the new ones, so that a
        // re-exec of the same binary does not count its semaphores twice.
        self.sites.remove(&pid);
        let result = attach_sites(&self.skel, pid, &image.path);
        let mut attached =
            Attached::of(pid, image, self.attached.tracepoints, result.as_ref().ok());
        let result = result.map(|sites| {
            self.arg_specs.borrow_mut().insert(pid, sites.arg_specs);
            self.sites.insert(
                pid,
                ProcessSites {
                    links: sites.links,
                    semaphores: sites.semaphores,
                },
            );
        });
        if result.is_err() {
            self.record_without_sites(pid);
        }
        self.set_recording(pid, true);
        // Listed after recording began (see `attach`).
        attached.threads_before_trace = threads_of(pid);
        (attached, result)
    }

    /// With -f: records followed process `pid` without probe sites (its
    /// image could not be read): its syscalls are still traced.
    pub fn record_without_sites(&mut self, pid: u32) {
        self.sites.remove(&pid);
        self.sites.insert(
            pid,
            ProcessSites {
                links: Vec::new(),
                semaphores: Vec::new(),
            },
        );
        self.set_recording(pid, true);
    }

    /// With -f: drops the sites of followed process `pid`, which is gone,
    /// on a thread of their own (see [`BackgroundDrop`]).
    pub fn detach_process(&mut self, pid: u32) {
        if let Some(sites) = self.sites.remove(&pid) {
            self.detached.drop_later(sites);
        }
        self.arg_specs.borrow_mut().remove(&pid);
    }

    /// After the target exec'd (and its new image's loader is done, see
    /// [`Target::reload`]): detaches the old image's sites, attaches the
    /// new image's, and records again. The target's threads at that moment
    /// are in [`Attached::threads_before_trace`].
    ///
    /// If the new image's sites cannot be attached, recording resumes on
    /// the kernel side only and the error is returned.
    pub fn reattach(&mut self, target: &Target) -> Result<&Attached, Error> {
        let (attached, result) = self.attach_image(target.pid(), target.image());
        self.attached = attached;
        result.map(|()| &self.attached)
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

    /// The sockets `pid` holds now (read from `/proc`), as identity events
    /// for the correlator; its TCP sockets are handed to the kernel side
    /// by inode, so their TCP events are followed from their next one on.
    /// Called after recording began: a socket accepted in between is
    /// named twice, never missed.
    pub fn sockets_before_trace(&mut self, pid: u32) -> Vec<Event> {
        let found = sockets::sockets_of(pid, monotonic_ns());
        let mut handed = false;
        // Connected ones only: a listener changes state only at its end,
        // and while any inode waits in the map, every TCP event of the
        // machine on an unknown socket costs the kernel side a second
        // lookup.
        let connected = |s: &&SocketInfo| {
            s.is_tcp() && matches!(&s.peer, crate::sock::Endpoint::Inet(a) if a.port() != 0)
        };
        for s in found.iter().filter(connected) {
            let mut owner = [0u8; 8];
            owner[..4].copy_from_slice(&s.pid.to_ne_bytes());
            owner[4..].copy_from_slice(&s.fd.to_ne_bytes());
            // A full table only leaves that socket's TCP events unseen;
            // its identity still names the fd.
            handed |= self
                .skel
                .maps
                .sock_inodes
                .update(&s.inode.to_ne_bytes(), &owner, MapFlags::ANY)
                .is_ok();
        }
        if handed {
            let bss = self
                .skel
                .maps
                .bss_data
                .as_deref_mut()
                .expect("the program has a .bss section");
            // SAFETY: a u32 in the map's memory, mapped for the skeleton's
            // life; the kernel side only reads it.
            unsafe { std::ptr::write_volatile(&mut bss.have_sock_inodes, 1) };
        }
        found.into_iter().map(Event::Socket).collect()
    }

    /// TCP sockets whose events the kernel side could not follow (its
    /// table of sockets was full when they were accepted or connected).
    pub fn tcp_untracked(&self) -> u64 {
        self.skel
            .maps
            .sock_map_full
            .lookup(&0u32.to_ne_bytes(), MapFlags::ANY)
            .ok()
            .flatten()
            .and_then(|v| v.get(..8).and_then(|b| b.try_into().ok()))
            .map_or(0, u64::from_ne_bytes)
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

/// One image's sites, attached.
struct ImageSites {
    links: Vec<Link>,
    /// Semaphores portsnoop holds up itself (see `semaphore.rs`).
    semaphores: Vec<HeldSemaphore>,
    /// Distinct probes.
    probes: usize,
    sites: usize,
    /// Sites shared with another tool's uprobe, and sites given up.
    shared: usize,
    skipped: usize,
    dead: usize,
    unreadable: usize,
    arg_specs: ArgSpecs,
    /// What the operator should know about sharing and skipping.
    warnings: Vec<String>,
}

/// Whether the kernel has uprobe_multi links (Linux 6.6 and later): its
/// BTF then has their type. Without BTF, CO-RE fails first anyway.
fn has_uprobe_multi() -> bool {
    libbpf_rs::btf::Btf::from_vmlinux().is_ok_and(|btf| {
        btf.type_by_name::<libbpf_rs::btf::types::Struct<'_>>("bpf_uprobe_multi_link")
            .is_some()
    })
}

/// Attaches a uprobe to every valid `evloop` site of `exe` (a path that
/// opens the target's mapped image), for `pid` only: all in one
/// uprobe_multi link where the kernel has them, else (or if that link is
/// refused: another tool's uprobe on a site without our semaphore counter)
/// one link per site, sharing or skipping the sites that need it.
fn attach_sites(skel: &PortsnoopSkel<'static>, pid: u32, exe: &Path) -> Result<ImageSites, Error> {
    let sites = sites_in(exe, PROVIDER)
        .map_err(|e| Error::Io(e, io::Error::other("reading USDT notes")))?;
    let mut out = ImageSites {
        links: Vec::new(),
        semaphores: Vec::new(),
        probes: 0,
        sites: 0,
        shared: 0,
        skipped: 0,
        dead: sites.dead,
        unreadable: sites.unreadable,
        arg_specs: Default::default(),
        warnings: Vec::new(),
    };
    let mut probes = std::collections::BTreeSet::new();
    if let Some(link) = attach_all_at_once(skel, pid, exe, &sites.sites) {
        out.links.push(link);
        for site in &sites.sites {
            out.sites += 1;
            probes.insert(site.probe);
            out.arg_specs[site.probe as usize] = site.args.clone();
        }
        out.probes = probes.len();
        return Ok(out);
    }
    for site in &sites.sites {
        let attach = |ref_ctr_offset: u64| {
            let opts = UprobeOpts {
                ref_ctr_offset: ref_ctr_offset as usize,
                cookie: site.probe as u64,
                ..UprobeOpts::default()
            };
            // libbpf prints its own line when an attach fails; ours says
            // which site, why, and what portsnoop did about it.
            let libbpf_print = libbpf_rs::set_print(None);
            let link = skel.progs.evloop_site.attach_uprobe_with_opts(
                pid as i32,
                exe,
                site.offset as usize,
                opts,
            );
            libbpf_rs::set_print(libbpf_print);
            link
        };
        let at = format!("{PROVIDER}:{} at {:#x}", site.probe.as_str(), site.offset);
        let link = match attach(site.semaphore_offset) {
            Ok(link) => link,
            // EINVAL with a reference counter: the kernel allows one per
            // site, and another tool's uprobe there has none (or another
            // one). Share the site without it and hold the semaphore up
            // ourselves (see semaphore.rs).
            // (An odd offset is refused on its own: the counter is a u16.)
            Err(e)
                if site.semaphore_offset != 0
                    && site.semaphore_offset % 2 == 0
                    && e.kind() == libbpf_rs::ErrorKind::InvalidInput =>
            {
                let evidence =
                    semaphore::tracefs_uprobes_at(exe, site.offset, site.semaphore_offset);
                let evidence = if evidence.is_empty() {
                    String::new()
                } else {
                    format!(" (tracefs has uprobe {} there)", evidence.join(", "))
                };
                let link = match attach(0) {
                    Ok(link) => link,
                    Err(without) => {
                        out.skipped += 1;
                        out.warnings.push(format!(
                            "cannot share {at} with another uprobe{evidence}: the kernel allows one \
                             semaphore reference counter per site and refused both ours ({e:#}) and \
                             none ({without:#}): skipping this site, its events are missing"
                        ));
                        continue;
                    }
                };
                match HeldSemaphore::hold(pid, exe, site) {
                    Ok(held) => {
                        out.semaphores.push(held);
                        out.shared += 1;
                        out.warnings.push(format!(
                            "another uprobe on {at} has no semaphore reference counter{evidence}; \
                             portsnoop sets the semaphore itself"
                        ));
                        link
                    }
                    Err(why) => {
                        out.skipped += 1;
                        out.warnings.push(format!(
                            "another uprobe on {at} has no semaphore reference counter{evidence}, \
                             and portsnoop cannot set the semaphore itself ({why}): skipping this \
                             site, its events are missing"
                        ));
                        continue;
                    }
                }
            }
            Err(e) => return Err(Error::Attach(format!("attaching {at}"), e)),
        };
        out.links.push(link);
        out.sites += 1;
        probes.insert(site.probe);
        out.arg_specs[site.probe as usize] = site.args.clone();
    }
    out.probes = probes.len();
    Ok(out)
}

/// All of `sites` in one uprobe_multi link, each with its probe id as
/// cookie and its semaphore counter; `None` when the kernel has no such
/// links (the program was not loaded) or refused this one.
fn attach_all_at_once(
    skel: &PortsnoopSkel<'static>,
    pid: u32,
    exe: &Path,
    sites: &[Site],
) -> Option<Link> {
    let prog = &skel.progs.evloop_site_multi;
    if sites.is_empty() || !prog.autoload() {
        return None;
    }
    let opts = UprobeMultiOpts {
        offsets: sites.iter().map(|s| s.offset as usize).collect(),
        ref_ctr_offsets: sites.iter().map(|s| s.semaphore_offset as usize).collect(),
        cookies: sites.iter().map(|s| s.probe as u64).collect(),
        ..UprobeMultiOpts::default()
    };
    // A refusal is handled site by site after this: libbpf's own line
    // about it would only alarm.
    let libbpf_print = libbpf_rs::set_print(None);
    let link = prog.attach_uprobe_multi_with_opts(pid as i32, exe, "", opts);
    libbpf_rs::set_print(libbpf_print);
    link.ok()
}

/// Starts or stops recording in the kernel side (see `ready` in the BPF
/// program: nothing is recorded until every site is attached).
fn set_ready(skel: &mut PortsnoopSkel<'static>, ready: bool) {
    let bss = skel
        .maps
        .bss_data
        .as_deref_mut()
        .expect("the program has a .bss section");
    // SAFETY: a u32 in the map's memory, which stays mapped for the
    // skeleton's life; the kernel side reads it on every event.
    unsafe { std::ptr::write_volatile(&mut bss.ready, u32::from(ready)) };
}

/// The thread ids of process `pid` now (empty if it is gone).
fn threads_of(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
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
