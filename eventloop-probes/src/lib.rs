//! mio and tokio building blocks that fire the `evloop` USDT probes.

pub mod eventer;
mod fire;
pub mod mio;
#[cfg(feature = "tokio")]
pub mod tokio;
