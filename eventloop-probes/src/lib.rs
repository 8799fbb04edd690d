//! mio and tokio building blocks that fire the `evloop` USDT probes.

pub mod eventer;
mod fire;
#[cfg(feature = "log")]
pub mod log_bridge;
pub mod mio;
#[cfg(feature = "tokio")]
pub mod tokio;
#[cfg(feature = "tracing")]
pub mod tracing_bridge;
