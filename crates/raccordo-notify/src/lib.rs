//! Notification channels and the Standard Webhooks signer.
//!
//! A channel is a config struct plus an implementation of [`Channel`], in its own module, and
//! one line in [`ChannelConfig`] (the registry): `slack`, `webhook` and `email` today. Sending
//! is one attempt; retries, backoff and dead letters belong to the work queue that carries
//! each delivery, which is why [`Channel::send`] answers with a `Completion`.

pub mod signer;

#[cfg(feature = "channels")]
mod channels;
#[cfg(feature = "channels")]
pub use channels::*;
