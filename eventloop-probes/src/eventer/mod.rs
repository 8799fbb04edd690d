//! A libmtev-style event loop on mio.
