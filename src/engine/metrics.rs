//! The pool's metrics, through the `metrics` facade: an application installs its own recorder
//! (Prometheus, StatsD, ...) and these appear in it; without one they cost an atomic load.
//! [`crate::Engine::state`] works with or without a recorder.
//!
//! | name | kind | what |
//! | --- | --- | --- |
//! | `datalayer_pool_checkouts_total` | counter | connections checked out |
//! | `datalayer_pool_checkout_wait_seconds` | histogram | how long each checkout waited |
//! | `datalayer_pool_checkout_timeouts_total` | counter | checkouts that gave up (`Error::PoolTimeout`) |
//! | `datalayer_pool_connections_opened_total` | counter | connections the pool opened |
//! | `datalayer_pool_connections_closed_total` | counter | connections the pool closed |
//! | `datalayer_pool_connections_broken_total` | counter | connections found dead (closed by the server, failed validation) |
//! | `datalayer_pool_connections_in_use` | gauge | connections checked out now |
//! | `datalayer_pool_connections_idle` | gauge | open connections not checked out (parked ones included) |

/// Counter: connections checked out.
pub const CHECKOUTS: &str = "datalayer_pool_checkouts_total";
/// Histogram: seconds each checkout waited.
pub const CHECKOUT_WAIT: &str = "datalayer_pool_checkout_wait_seconds";
/// Counter: checkouts that timed out.
pub const CHECKOUT_TIMEOUTS: &str = "datalayer_pool_checkout_timeouts_total";
/// Counter: connections opened by the pool.
pub const OPENED: &str = "datalayer_pool_connections_opened_total";
/// Counter: connections closed by the pool.
pub const CLOSED: &str = "datalayer_pool_connections_closed_total";
/// Counter: connections found dead.
pub const BROKEN: &str = "datalayer_pool_connections_broken_total";
/// Gauge: connections checked out now.
pub const IN_USE: &str = "datalayer_pool_connections_in_use";
/// Gauge: open connections not checked out.
pub const IDLE: &str = "datalayer_pool_connections_idle";
