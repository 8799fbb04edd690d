//! Wrappers for tokio sockets and tasks that fire the evloop probes.
