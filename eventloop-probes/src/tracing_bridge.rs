//! A [`tracing_subscriber::Layer`] that fires the `log` probe for every
//! event, so a service that logs through `tracing` shows its events to
//! tracers next to its I/O. Cargo feature `tracing`.
//!
//! The probe carries `facility` = the event's target (the module path
//! unless the event names one), `file` and `line` of the event, and `msg` =
//! the `message` field followed by the other fields as ` key=value`, the
//! way `tracing_subscriber::fmt` writes them (strings quoted, other values
//! by `Debug`). Span fields are not included. Nothing is formatted, and no
//! string is copied, unless a tracer has the `log` probe enabled.

use std::fmt::{self, Write as _};

use tracing_core::field::{Field, Visit};
use tracing_core::{Event, Subscriber};
use tracing_subscriber::layer::Context;

use crate::fire;

/// The layer: add it to the app's subscriber.
///
/// ```
/// use tracing_subscriber::layer::SubscriberExt;
///
/// let subscriber = tracing_subscriber::registry().with(eventloop_probes::tracing_bridge::Layer);
/// tracing::subscriber::with_default(subscriber, || {
///     // A tracer sees facility "http", msg "served bytes=42 peer=\"10.0.0.1\"".
///     tracing::info!(target: "http", bytes = 42, peer = "10.0.0.1", "served");
/// });
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct Layer;

impl<S: Subscriber> tracing_subscriber::Layer<S> for Layer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let meta = event.metadata();
        fire::log(
            meta.target(),
            meta.file().unwrap_or(""),
            meta.line().unwrap_or(0),
            || message(event),
        );
    }
}

/// The event's `message`, then ` key=value` for each other field.
fn message(event: &Event<'_>) -> String {
    let mut v = Message::default();
    event.record(&mut v);
    if v.message.is_empty() {
        // No message: just the fields, without the leading space.
        v.fields.split_off(v.fields.len().min(1))
    } else {
        v.message.push_str(&v.fields);
        v.message
    }
}

#[derive(Default)]
struct Message {
    message: String,
    fields: String,
}

impl Visit for Message {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            self.record_debug(field, &value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        // `message` is the format_args! of the macro, whose Debug is its
        // text; writing to a String cannot fail.
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.fields, " {}={value:?}", field.name());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    /// Captures `message()` of each event, as the probe would carry it.
    struct Capture(Arc<Mutex<Vec<String>>>);

    impl<S: Subscriber> tracing_subscriber::Layer<S> for Capture {
        fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
            self.0.lock().unwrap().push(message(event));
        }
    }

    #[test]
    fn message_first_then_fields() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sub = tracing_subscriber::registry().with(Capture(Arc::clone(&seen)));
        tracing::subscriber::with_default(sub, || {
            let n = 42;
            tracing::info!(bytes = n, peer = "10.0.0.1", "served {} ok", "all");
            tracing::warn!(code = 7);
            tracing::info!(message = "as a field", k = true);
            tracing::info!("plain");
        });
        assert_eq!(
            *seen.lock().unwrap(),
            [
                r#"served all ok bytes=42 peer="10.0.0.1""#,
                "code=7",
                "as a field k=true",
                "plain",
            ]
        );
    }
}
