//! The pool's metrics, through the `metrics` facade: an application installs its own recorder
//! (Prometheus, StatsD, ...) and these appear in it; without one they cost an atomic load.
//! [`crate::Engine::state`] works with or without a recorder.
//!
//! | name | kind | what |
//! | --- | --- | --- |
//! | `datalayer_pool_checkouts_total` | counter | connections checked out |
//! | `datalayer_pool_checkout_wait_seconds` | histogram | how long each checkout waited (0 when the thread's own parked connection served it) |
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

/// The metadata every datalayer metric is registered with.
static METADATA: ::metrics::Metadata<'static> =
    ::metrics::Metadata::new(module_path!(), ::metrics::Level::INFO, Some(module_path!()));

/// A function returning the current recorder's handle for one metric, whose key is built
/// (and hashed) at compile time: the `metrics` macros hash a name given as a constant on every
/// call, which was a fifth of an idle checkout.
macro_rules! handle {
    ($(#[$doc:meta])* $fn_name:ident, $kind:ident, $register:ident, $name:expr) => {
        $(#[$doc])*
        pub(crate) fn $fn_name() -> ::metrics::$kind {
            static KEY: ::metrics::Key = ::metrics::Key::from_static_name($name);
            ::metrics::with_recorder(|recorder| recorder.$register(&KEY, &METADATA))
        }
    };
}

handle!(
    /// [`CHECKOUTS`].
    checkouts, Counter, register_counter, CHECKOUTS
);
handle!(
    /// [`CHECKOUT_WAIT`].
    checkout_wait, Histogram, register_histogram, CHECKOUT_WAIT
);
handle!(
    /// [`CHECKOUT_TIMEOUTS`].
    checkout_timeouts, Counter, register_counter, CHECKOUT_TIMEOUTS
);
handle!(
    /// [`OPENED`].
    opened, Counter, register_counter, OPENED
);
handle!(
    /// [`CLOSED`].
    closed, Counter, register_counter, CLOSED
);
handle!(
    /// [`BROKEN`].
    broken, Counter, register_counter, BROKEN
);
handle!(
    /// [`IN_USE`].
    in_use, Gauge, register_gauge, IN_USE
);
handle!(
    /// [`IDLE`].
    idle, Gauge, register_gauge, IDLE
);
