//! Event-time windowing for raccordo (DESIGN §3 "Windows and metrics"), as pure code: no
//! clock, no I/O, no threads. The caller feeds records and reads what to emit; persistence
//! and delivery (SSE, storage) live elsewhere.
//!
//! Semantics are Apache Flink's event-time windows with allowed lateness, to the
//! millisecond, so that a Flink job over the same stream gives the same numbers:
//!
//! * a record at time `t` belongs to `[s, s + size)` for every `s = k·slide` with
//!   `s ≤ t < s + size` (one window when `slide = size`: tumbling, epoch-aligned);
//! * the watermark `W` *before* a record is the largest earlier event time minus the allowed
//!   out-of-orderness;
//! * for a window `[s, e)`: on time while `W < e − 1`; the window fires once `W ≥ e − 1`;
//!   a record arriving with `e − 1 ≤ W < e − 1 + lateness` is added and the window re-emitted
//!   at once; with `W ≥ e − 1 + lateness` the window is gone. A record none of whose windows
//!   can take it is *late*: reported to the caller (for the side table), never dropped silently.

pub mod alerts;
pub mod distinct;
pub mod spend;
pub mod stats;
pub mod window;

pub use distinct::DistinctCount;
pub use spend::DailySpend;
pub use stats::{ConversionRecord, ConversionStats};
pub use window::{
    Aggregate, Emission, Firing, OperatorState, Placement, Window, WindowOperator, WindowSpec,
};
