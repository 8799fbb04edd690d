//! Drop-in wrappers for mio sockets that fire the evloop probes.
