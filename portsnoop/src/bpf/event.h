/* The records portsnoop's BPF program submits to the ring buffer: the one
 * definition of their layout. The Rust side is generated from it: the
 * constants are enums and portsnoop.bpf.c keeps one instance of every
 * record (`layout`), so all of them are in the object's BTF, from which
 * libbpf-cargo's skeleton emits the Rust types engine/raw.rs decodes with.
 * Every record starts with struct ev_header; `type` says which one it is. */
#ifndef PORTSNOOP_EVENT_H
#define PORTSNOOP_EVENT_H

enum ev_type {
	EV_SYSCALL = 1,
	EV_EPOLL_CTL = 2,
	EV_EPOLL_WAIT = 3,
	EV_PROBE = 4,
	EV_LOG = 5,
	EV_EXEC = 6,
	EV_LOST = 7,
	EV_CLOSE_ENTER = 8,
	EV_FORK = 9,
	EV_EXIT = 10,
	EV_SLOW_SYSCALL = 11,
	EV_OFF_CPU = 12,
	EV_SOCK = 13,
	EV_TCP = 14,
};

/* Syscall kinds, in the order of event.rs's SyscallName::ALL, then epoll. */
enum sc_kind {
	SC_READ = 0,
	SC_READV = 1,
	SC_RECVFROM = 2,
	SC_RECVMSG = 3,
	SC_WRITE = 4,
	SC_WRITEV = 5,
	SC_SENDTO = 6,
	SC_SENDMSG = 7,
	SC_ACCEPT = 8,
	SC_ACCEPT4 = 9,
	SC_CONNECT = 10,
	SC_SHUTDOWN = 11,
	SC_CLOSE = 12,
	SC_EPOLL_CTL = 13,
	SC_EPOLL_WAIT = 14,
	SC_EPOLL_PWAIT = 15,
	SC_EPOLL_PWAIT2 = 16,
};

/* Probe ids, in the order of event.rs's ProbeName::ALL. */
enum probe_id {
	PR_ACCEPT_ENTRY = 0,
	PR_ACCEPT_RETURN = 1,
	PR_READ_ENTRY = 2,
	PR_READ_RETURN = 3,
	PR_WRITE_ENTRY = 4,
	PR_WRITE_RETURN = 5,
	PR_CLOSE_ENTRY = 6,
	PR_CLOSE_RETURN = 7,
	PR_CALLBACK_ENTRY = 8,
	PR_CALLBACK_RETURN = 9,
	PR_LOG = 10,
};

enum ev_limit {
	WAIT_MAX_EVENTS = 30,
	NAME_LEN = 64,
	LOG_FACILITY_LEN = 32,
	LOG_FILE_LEN = 64,
	LOG_MSG_LEN = 128,
	SOCK_PATH_LEN = 108,
};

/* pid is the process (tgid) the record is from: with -f several are
 * traced, and fd numbers only mean something within one process. */
struct ev_header {
	__u32 type;
	__u32 tid;
	__u64 ts_ns;
	__u32 pid;
	__u32 pad;
};

struct ev_syscall {
	struct ev_header h;
	__u32 kind;
	__s32 fd;
	__s64 rv;
	__u64 dur_ns;
	__u64 arg;
};

struct ev_epoll_ctl {
	struct ev_header h;
	__s32 epfd;
	__s32 op;
	__s32 fd;
	__u32 events;
	__u64 data;
	__s64 rv;
	__u64 dur_ns;
};

struct ev_ready {
	__u32 events;
	__u32 pad;
	__u64 data;
};

struct ev_epoll_wait {
	struct ev_header h;
	__u32 kind;
	__s32 epfd;
	__s64 rv;
	__u64 dur_ns;
	__u32 nready; /* how many of ready[] are filled */
	__u32 pad;
	struct ev_ready ready[WAIT_MAX_EVENTS];
};

struct ev_probe {
	struct ev_header h;
	__u32 probe;
	__u32 pad;
	__u64 args[6];
	char name[NAME_LEN]; /* callback probes only: the others' records end before it */
};

struct ev_log {
	struct ev_header h;
	__u64 args[4];
	char facility[LOG_FACILITY_LEN];
	char file[LOG_FILE_LEN];
	char msg[LOG_MSG_LEN];
};

/* Records this CPU could not submit since its last record: placed in the
 * stream where the gap is, so the consumer knows which ops it cuts. */
struct ev_lost {
	struct ev_header h;
	__u64 count;
};

/* close(2) entered: the fd's number may be reused from here on. */
struct ev_close_enter {
	struct ev_header h;
	__s32 fd;
	__u32 pad;
};

struct ev_exec {
	struct ev_header h;
};

/* -f: the traced process h.pid forked process `child`. */
struct ev_fork {
	struct ev_header h;
	__u32 child;
	__u32 pad;
};

/* -f: a followed process (not the main target, whose end portsnoop
 * sees itself) exited; `code` is the kernel's exit_code. */
struct ev_exit {
	struct ev_header h;
	__s32 code;
	__u32 pad;
};

/* Stall tracking: a syscall portsnoop does not otherwise trace (any
 * number: nanosleep, fsync, futex, openat...) that a thread made inside a
 * callback and that lasted at least stall_syscall_min_ns. h.ts_ns is its
 * entry. arg0 is its first argument, raw (the consumer knows which
 * syscalls take an fd there). */
struct ev_slow_syscall {
	struct ev_header h;
	__u32 nr;
	__u32 pad;
	__u64 arg0;
	__s64 rv;
	__u64 dur_ns;
};

/* Stall tracking: the thread's off-CPU time inside callbacks so far (by
 * the scheduler's accounting; a running total, never reset), submitted at a callback entry or return
 * when it changed since the thread's last one: the consumer takes the
 * difference between a callback's entry and return. */
struct ev_off_cpu {
	struct ev_header h;
	__u64 total_ns;
};

/* The socket behind an fd, read from the kernel's socket at accept,
 * accept4 or connect return (connect: also EINPROGRESS). Addresses as the
 * kernel keeps them (network byte order; IPv4 in the first 4 bytes),
 * ports in host order. A Unix socket's bound path (its sun_path bytes,
 * `*_path_len` of them; abstract names start with a NUL) is in the paths
 * instead. `sk` is the struct sock's address: the key the TCP records
 * carry too. */
struct ev_sock {
	struct ev_header h;
	__s32 fd;
	__u32 kind; /* the SC_* syscall that made it known */
	__u64 sk;
	__u64 ino; /* the socket's inode, as in /proc/PID/fd's socket:[ino] */
	__u16 family;
	__u16 sock_type;
	__u16 protocol;
	__u16 lport;
	__u16 rport;
	__u16 lpath_len;
	__u16 rpath_len;
	__u16 pad;
	__u8 laddr[16];
	__u8 raddr[16];
	char lpath[SOCK_PATH_LEN];
	char rpath[SOCK_PATH_LEN];
};

/* A TCP event on a socket a traced fd holds or last held: h.pid and fd
 * are that holder (the fd may be closed by now), h.tid the thread the
 * kernel ran it on if it is one of h.pid's, else 0 (softirq). For a state
 * change from/to are the kernel's TCP_* states; for the others both are
 * the state at the time. The counters are tcp_sock's as the kernel keeps
 * them (a FIN received counts one in bytes_received, a SYN or FIN acked
 * one in bytes_acked); fin_received is SOCK_DONE, fin_acked says the
 * sent FIN is acked (snd_una == write_seq after shutdown for writing). */
enum tcp_ev_kind {
	TCP_EV_STATE = 0,
	TCP_EV_RETRANSMIT = 1,
	TCP_EV_RESET_SENT = 2,
	TCP_EV_RESET_RECEIVED = 3,
};
struct ev_tcp {
	struct ev_header h;
	__s32 fd;
	__u32 event;
	__u64 sk;
	__s32 from;
	__s32 to;
	__u64 bytes_received;
	__u64 bytes_acked;
	__u8 fin_received;
	__u8 fin_acked;
	__u16 pad1;
	__u32 pad2;
};

#endif
