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
//! | `datalayer_replica_up` | gauge | 1 while reads go to the read replica, 0 while they go to the primary |
//! | `datalayer_replica_lag_seconds` | gauge | the replica's lag at its last check |
//! | `datalayer_replica_fallbacks_total` | counter | reads the primary served because the replica was down or too far behind |
//!
//! Every metric carries the label `pool` ([`POOL_LABEL`]): the database it serves
//! (`<database>@<host>:<port>` on PostgreSQL, the file on SQLite), with `#2`, `#3`... added for
//! a second or third engine on the same database in one process. A read replica's pool reports
//! under its own name, and the `datalayer_replica_*` metrics carry that name too.

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

/// Gauge: 1 while reads go to the read replica.
pub const REPLICA_UP: &str = "datalayer_replica_up";
/// Gauge: the replica's lag at its last check, in seconds.
pub const REPLICA_LAG: &str = "datalayer_replica_lag_seconds";
/// Counter: reads the primary served instead of the replica.
pub const REPLICA_FALLBACKS: &str = "datalayer_replica_fallbacks_total";

/// The label every metric carries, naming its pool: two engines in one process (a primary and
/// a replica, two applications' databases) report apart.
pub const POOL_LABEL: &str = "pool";

/// The metadata every datalayer metric is registered with.
static METADATA: ::metrics::Metadata<'static> =
    ::metrics::Metadata::new(module_path!(), ::metrics::Level::INFO, Some(module_path!()));

/// One pool's metric keys, built (and hashed, once) when the engine is made: the `metrics`
/// macros would hash the name and labels on every call, which was a fifth of an idle checkout.
#[derive(Debug)]
pub(crate) struct PoolMetrics {
    keys: [::metrics::Key; 8],
}

/// A function returning the current recorder's handle for one of the pool's metrics.
macro_rules! handle {
    ($fn_name:ident, $index:expr, $kind:ident, $register:ident) => {
        pub(crate) fn $fn_name(&self) -> ::metrics::$kind {
            let key = &self.keys[$index];
            ::metrics::with_recorder(|recorder| recorder.$register(key, &METADATA))
        }
    };
}

impl PoolMetrics {
    /// The keys of the pool named `pool`.
    pub(crate) fn new(pool: &str) -> PoolMetrics {
        let key = |name: &'static str| {
            let key = ::metrics::Key::from_parts(
                name,
                vec![::metrics::Label::new(POOL_LABEL, pool.to_string())],
            );
            // Hash it now, not on the first checkout.
            let _ = key.get_hash();
            key
        };
        PoolMetrics {
            keys: [
                key(CHECKOUTS),
                key(CHECKOUT_WAIT),
                key(CHECKOUT_TIMEOUTS),
                key(OPENED),
                key(CLOSED),
                key(BROKEN),
                key(IN_USE),
                key(IDLE),
            ],
        }
    }

    handle!(checkouts, 0, Counter, register_counter);
    handle!(checkout_wait, 1, Histogram, register_histogram);
    handle!(checkout_timeouts, 2, Counter, register_counter);
    handle!(opened, 3, Counter, register_counter);
    handle!(closed, 4, Counter, register_counter);
    handle!(broken, 5, Counter, register_counter);
    handle!(in_use, 6, Gauge, register_gauge);
    handle!(idle, 7, Gauge, register_gauge);
}
