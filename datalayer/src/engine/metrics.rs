//! The pool's metrics, through the `metrics` facade: an application installs its own recorder
//! (Prometheus, OpenTelemetry, StatsD, ...) and these appear in it; without one they cost an
//! atomic load. [`crate::Engine::state`] works with or without a recorder.
//!
//! The names and attributes are OpenTelemetry's semantic conventions for database client
//! connection pools; an exporter that cannot write dots writes underscores (Prometheus:
//! `db_client_connection_count{db_client_connection_pool_name="...",db_client_connection_state="idle"}`).
//!
//! | name | kind | what |
//! | --- | --- | --- |
//! | `db.client.connection.count` | gauge | connections open, by `db.client.connection.state`: `used` (checked out) or `idle` (in the pool or parked for a thread); recorded every second and by [`Engine::record_metrics`](crate::Engine::record_metrics), not by each checkout |
//! | `db.client.connection.max` | gauge | `DATABASE_POOL_MAX_SIZE` |
//! | `db.client.connection.idle.min` | gauge | the idle connections the pool keeps (`DATABASE_POOL_MIN_IDLE`, by default the max size) |
//! | `db.client.connection.pending_requests` | gauge | threads waiting in line for a connection |
//! | `db.client.connection.timeouts` | counter | checkouts that gave up (`Error::PoolTimeout`) |
//! | `db.client.connection.create_time` | histogram (s) | how long opening a connection took, session setup included |
//! | `db.client.connection.wait_time` | histogram (s) | how long each checkout waited (0 when the thread's own parked connection served it) |
//! | `db.client.connection.use_time` | histogram (s) | how long each connection was held, checkout to return |
//! | `datalayer.pool.checkouts` | counter | connections checked out |
//! | `datalayer.pool.connections.opened` | counter | connections the pool opened |
//! | `datalayer.pool.connections.closed` | counter | connections the pool closed |
//! | `datalayer.pool.connections.broken` | counter | connections found dead (closed by the server, failed validation) |
//! | `datalayer.replica.up` | gauge | 1 while reads go to the read replica, 0 while they go to the primary |
//! | `datalayer.replica.lag` | gauge (s) | the replica's lag at its last check |
//! | `datalayer.replica.fallbacks` | counter | reads the primary served because the replica was down or too far behind |
//!
//! Every metric carries the attribute `db.client.connection.pool.name` ([`POOL_LABEL`]): the
//! database it serves (`<database>@<host>:<port>` on PostgreSQL, the file on SQLite), with `#2`,
//! `#3`... added for a second or third engine on the same database in one process. A read
//! replica's pool reports under its own name, and the `datalayer.replica.*` metrics carry that
//! name too. OpenTelemetry has no conventions for the `datalayer.*` ones.

/// Gauge: connections open, by [`STATE_LABEL`].
pub const COUNT: &str = "db.client.connection.count";
/// Gauge: the most connections the pool holds.
pub const MAX: &str = "db.client.connection.max";
/// Gauge: the idle connections the pool keeps.
pub const IDLE_MIN: &str = "db.client.connection.idle.min";
/// Gauge: threads waiting for a connection.
pub const PENDING_REQUESTS: &str = "db.client.connection.pending_requests";
/// Counter: checkouts that timed out.
pub const TIMEOUTS: &str = "db.client.connection.timeouts";
/// Histogram: seconds to open a connection.
pub const CREATE_TIME: &str = "db.client.connection.create_time";
/// Histogram: seconds each checkout waited.
pub const WAIT_TIME: &str = "db.client.connection.wait_time";
/// Histogram: seconds each connection was held.
pub const USE_TIME: &str = "db.client.connection.use_time";
/// Counter: connections checked out.
pub const CHECKOUTS: &str = "datalayer.pool.checkouts";
/// Counter: connections opened by the pool.
pub const OPENED: &str = "datalayer.pool.connections.opened";
/// Counter: connections closed by the pool.
pub const CLOSED: &str = "datalayer.pool.connections.closed";
/// Counter: connections found dead.
pub const BROKEN: &str = "datalayer.pool.connections.broken";
/// Gauge: 1 while reads go to the read replica.
pub const REPLICA_UP: &str = "datalayer.replica.up";
/// Gauge: the replica's lag at its last check, in seconds.
pub const REPLICA_LAG: &str = "datalayer.replica.lag";
/// Counter: reads the primary served instead of the replica.
pub const REPLICA_FALLBACKS: &str = "datalayer.replica.fallbacks";

/// The attribute every metric carries, naming its pool: two engines in one process (a primary
/// and a replica, two applications' databases) report apart.
pub const POOL_LABEL: &str = "db.client.connection.pool.name";
/// The attribute of [`COUNT`]: `used` or `idle`.
pub const STATE_LABEL: &str = "db.client.connection.state";

/// The metadata every datalayer metric is registered with.
static METADATA: ::metrics::Metadata<'static> =
    ::metrics::Metadata::new(module_path!(), ::metrics::Level::INFO, Some(module_path!()));

/// One pool's metric keys, built (and hashed, once) when the engine is made: the `metrics`
/// macros would hash the name and labels on every call, on the checkout's path.
#[derive(Debug)]
pub(crate) struct PoolMetrics {
    keys: [::metrics::Key; 14],
}

/// Where [`PoolMetrics::checked_out`]'s keys are in `keys`.
const WAIT_TIME_KEY: usize = 7;
const CHECKOUTS_KEY: usize = 9;

/// A function returning the current recorder's handle for one of the pool's metrics.
macro_rules! handle {
    ($fn_name:ident, $index:expr, $kind:ident, $register:ident) => {
        #[inline]
        pub(crate) fn $fn_name(&self) -> ::metrics::$kind {
            let key = &self.keys[$index];
            ::metrics::with_recorder(|recorder| recorder.$register(key, &METADATA))
        }
    };
}

impl PoolMetrics {
    /// The keys of the pool named `pool`.
    pub(crate) fn new(pool: &str) -> PoolMetrics {
        let key = |name: &'static str, state: Option<&'static str>| {
            let mut labels = vec![::metrics::Label::new(POOL_LABEL, pool.to_string())];
            if let Some(state) = state {
                labels.push(::metrics::Label::new(STATE_LABEL, state));
            }
            let key = ::metrics::Key::from_parts(name, labels);
            // Hash it now, not on the first checkout.
            let _ = key.get_hash();
            key
        };
        PoolMetrics {
            keys: [
                key(COUNT, Some("used")),
                key(COUNT, Some("idle")),
                key(MAX, None),
                key(IDLE_MIN, None),
                key(PENDING_REQUESTS, None),
                key(TIMEOUTS, None),
                key(CREATE_TIME, None),
                key(WAIT_TIME, None),
                key(USE_TIME, None),
                key(CHECKOUTS, None),
                key(OPENED, None),
                key(CLOSED, None),
                key(BROKEN, None),
                key(REPLICA_FALLBACKS, None),
            ],
        }
    }

    /// Records a checkout that waited `waited`: `wait_time` and `datalayer.pool.checkouts`,
    /// looking up the recorder once.
    #[inline]
    pub(crate) fn checked_out(&self, waited: std::time::Duration) {
        ::metrics::with_recorder(|recorder| {
            recorder
                .register_histogram(&self.keys[WAIT_TIME_KEY], &METADATA)
                .record(waited.as_secs_f64());
            recorder
                .register_counter(&self.keys[CHECKOUTS_KEY], &METADATA)
                .increment(1);
        });
    }

    handle!(in_use, 0, Gauge, register_gauge);
    handle!(idle, 1, Gauge, register_gauge);
    handle!(max, 2, Gauge, register_gauge);
    handle!(idle_min, 3, Gauge, register_gauge);
    handle!(pending, 4, Gauge, register_gauge);
    handle!(checkout_timeouts, 5, Counter, register_counter);
    handle!(create_time, 6, Histogram, register_histogram);
    handle!(checkout_wait, WAIT_TIME_KEY, Histogram, register_histogram);
    handle!(use_time, 8, Histogram, register_histogram);
    handle!(opened, 10, Counter, register_counter);
    handle!(closed, 11, Counter, register_counter);
    handle!(broken, 12, Counter, register_counter);
    handle!(replica_fallbacks, 13, Counter, register_counter);
}
