//! The kernel side of `portsnoop count`: load `bpf/count.bpf.c`, attach it
//! to the raw `sys_enter` tracepoint, and at the end read its table. Thin:
//! what the rows mean is [`super::rows`]'s.

use std::mem::MaybeUninit;

use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{Link, MapCore, MapFlags, OpenObject};

use super::rows::Key;
use crate::engine::{check_privileges, ensure_btf, own_pid_namespace, Error};
use crate::syscalls::{self, Abi};

#[allow(clippy::all, clippy::pedantic, missing_docs, dead_code, unused_imports)]
mod skel {
    include!(concat!(env!("OUT_DIR"), "/count.skel.rs"));
}
use skel::{CountSkel, CountSkelBuilder};

/// `sizeof(struct count_key)` in `bpf/count.h`.
const KEY_SIZE: usize = 32;
/// `COUNT_ABI_IA32` in `bpf/count.h`.
const ABI_IA32: u32 = 1;
/// `COUNT_COMM_LEN` in `bpf/count.h`.
const COMM_LEN: usize = 16;
/// `COUNT_FD_FIRST_MAX` in `bpf/count.h`: syscall numbers below it can be
/// marked as taking an fd first.
pub(crate) const FD_FIRST_MAX: usize = 1024;

/// What to count.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Only this process (a tgid); `None`: every process.
    pub pid: Option<u32>,
    /// Key by the fd too, for the calls that take one first.
    pub by_fd: bool,
    /// Rows the table holds; a call whose row does not fit is uncounted.
    pub max_entries: u32,
}

/// The table as the kernel left it.
#[derive(Debug, Default)]
pub struct Counts {
    /// Each row's key and its count summed over the CPUs.
    pub entries: Vec<(Key, u64)>,
    /// Calls that got no row (the table was full), summed over the CPUs.
    pub uncounted: u64,
}

/// The loaded, attached counter. Counting stops when it is [`finish`]ed
/// or dropped.
///
/// [`finish`]: Counter::finish
pub struct Counter {
    skel: CountSkel<'static>,
    link: Option<Link>,
}

impl Counter {
    /// Loads the program for `opts` and attaches it: counting starts.
    pub fn attach(opts: &Options) -> Result<Counter, Error> {
        check_privileges()?;
        ensure_btf()?;
        let bpf = |what: &str| {
            let what = what.to_string();
            move |e| Error::Bpf(what, e)
        };
        // The skeleton borrows its object for as long as it lives: one
        // counter per process, so it is leaked on purpose (as the engine's).
        let object: &'static mut MaybeUninit<OpenObject> =
            Box::leak(Box::new(MaybeUninit::uninit()));
        let mut open = CountSkelBuilder::default()
            .open(object)
            .map_err(bpf("opening the count BPF object"))?;
        let rodata = open
            .maps
            .rodata_data
            .as_deref_mut()
            .expect("the program has read-only data");
        rodata.target_tgid = opts.pid.unwrap_or(0);
        if let Some((dev, ino)) = own_pid_namespace() {
            rodata.in_pid_ns = 1;
            rodata.pid_ns_dev = dev;
            rodata.pid_ns_ino = ino;
        }
        debug_assert_eq!(rodata.fd_first.len(), FD_FIRST_MAX, "bpf/count.h agrees");
        if opts.by_fd {
            rodata.by_fd = 1;
            for nr in syscalls::fd_first_numbers() {
                if let Some(slot) = rodata.fd_first.get_mut(nr as usize) {
                    *slot = 1;
                }
            }
        }
        open.maps
            .counts
            .set_max_entries(opts.max_entries)
            .map_err(bpf("sizing the count table"))?;
        let skel = open.load().map_err(bpf("loading the count BPF program"))?;
        let link = skel
            .progs
            .count_sys_enter
            .attach()
            .map_err(bpf("attaching to the sys_enter tracepoint"))?;
        Ok(Counter {
            skel,
            link: Some(link),
        })
    }

    /// Stops counting (detaches first, so the table holds still while it
    /// is read, and portsnoop's own reading is not counted) and reads the
    /// table.
    pub fn finish(mut self) -> Result<Counts, Error> {
        drop(self.link.take());
        let io = |what: &str| {
            let what = what.to_string();
            move |e: libbpf_rs::Error| Error::Bpf(what, e)
        };
        let mut counts = Counts::default();
        let table = &self.skel.maps.counts;
        for key in table.keys() {
            let Some(per_cpu) = table
                .lookup_percpu(&key, MapFlags::ANY)
                .map_err(io("reading the count table"))?
            else {
                continue;
            };
            let Some(key) = decode_key(&key) else {
                continue;
            };
            counts.entries.push((key, sum(&per_cpu)));
        }
        counts.uncounted = self
            .skel
            .maps
            .uncounted
            .lookup_percpu(&0u32.to_ne_bytes(), MapFlags::ANY)
            .map_err(io("reading the uncounted calls"))?
            .map_or(0, |per_cpu| sum(&per_cpu));
        Ok(counts)
    }
}

/// A per-CPU `__u64` summed.
fn sum(per_cpu: &[Vec<u8>]) -> u64 {
    per_cpu
        .iter()
        .filter_map(|v| v.get(..8)?.try_into().ok().map(u64::from_ne_bytes))
        .fold(0u64, u64::saturating_add)
}

/// `struct count_key` (see `bpf/count.h` for the offsets).
fn decode_key(b: &[u8]) -> Option<Key> {
    if b.len() != KEY_SIZE {
        return None;
    }
    let u32_at = |o: usize| u32::from_ne_bytes(b[o..o + 4].try_into().expect("4 bytes"));
    let comm = &b[16..16 + COMM_LEN];
    let comm = &comm[..comm.iter().position(|&c| c == 0).unwrap_or(COMM_LEN)];
    let fd = u32_at(8) as i32;
    Some(Key {
        pid: u32_at(0),
        comm: String::from_utf8_lossy(comm).into_owned(),
        nr: u32_at(4),
        abi: if u32_at(12) == ABI_IA32 {
            Abi::Ia32
        } else {
            Abi::Native
        },
        fd: (fd >= 0).then_some(fd),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_decodes_at_count_h_offsets() {
        let mut b = [0u8; KEY_SIZE];
        b[0..4].copy_from_slice(&1234u32.to_ne_bytes());
        b[4..8].copy_from_slice(&0u32.to_ne_bytes());
        b[8..12].copy_from_slice(&(-1i32).to_ne_bytes());
        b[16..18].copy_from_slice(b"dd");
        let k = decode_key(&b).unwrap();
        assert_eq!((k.pid, k.comm.as_str(), k.nr, k.fd), (1234, "dd", 0, None));
        assert_eq!(k.abi, Abi::Native);
        b[12..16].copy_from_slice(&1u32.to_ne_bytes());
        assert_eq!(decode_key(&b).unwrap().abi, Abi::Ia32);
        b[8..12].copy_from_slice(&7i32.to_ne_bytes());
        // A full 16-byte name has no NUL.
        b[16..32].copy_from_slice(b"0123456789abcdef");
        let k = decode_key(&b).unwrap();
        assert_eq!((k.fd, k.comm.as_str()), (Some(7), "0123456789abcdef"));
        assert!(decode_key(&b[..31]).is_none());
    }

    #[test]
    fn per_cpu_counts_add_up() {
        let cpus = vec![3u64.to_ne_bytes().to_vec(), 4u64.to_ne_bytes().to_vec()];
        assert_eq!(sum(&cpus), 7);
    }
}
