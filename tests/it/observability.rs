//! What the engine tells an operator: echoed SQL without bind values, slow statements, and
//! pool metrics through the `metrics` facade.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use blog::models::users::{self, NewUser};
use datalayer::engine::metrics as names;
use datalayer::{Engine, Error};
use diesel::connection::SimpleConnection;
use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};

use crate::common::{fresh_postgres, logged, migrated_engines, with_pool as with};

#[test]
fn echo_logs_each_statement_with_its_duration_but_never_the_binds() {
    for engine in migrated_engines() {
        let echoing = with(&engine, |pool| pool.echo = true);
        let log = logged(|| {
            let mut conn = echoing.get().expect("checkout");
            users::create(
                &mut conn,
                &NewUser {
                    email: "CNRYbind@example.com",
                    display_name: "SecretName",
                },
            )
            .expect("create");
            users::find_by_email(&mut conn, "CNRYbind@example.com").expect("find");
        });
        let insert = log
            .lines()
            .find(|l| l.contains("INSERT INTO") && l.contains("users"))
            .unwrap_or_else(|| panic!("the insert is echoed:\n{log}"));
        assert!(
            insert.contains("INFO") && insert.contains("datalayer::sql"),
            "{insert}"
        );
        assert!(
            insert.contains('[') && insert.ends_with(']'),
            "with its duration: {insert}"
        );
        assert!(log.contains("SELECT"), "{log}");
        assert!(
            !log.contains("CNRYbind") && !log.contains("SecretName"),
            "binds leaked:\n{log}"
        );

        let quiet = logged(|| {
            users::count(&mut engine.get().expect("checkout")).expect("count");
        });
        assert!(
            !quiet.contains("datalayer::sql"),
            "echo is off by default:\n{quiet}"
        );
    }
}

#[test]
fn slow_statements_are_reported_at_warn_level() {
    let (engine, _db) = fresh_postgres("dl_slow", &[]);
    let watched = with(&engine, |pool| {
        pool.slow_query_threshold = Some(Duration::from_millis(30))
    });
    let log = logged(|| {
        let mut conn = watched.get().expect("checkout");
        conn.batch_execute("SELECT 1").expect("fast");
        conn.batch_execute("SELECT pg_sleep(0.06)").expect("slow");
    });
    let warnings: Vec<&str> = log.lines().filter(|l| l.contains("WARN")).collect();
    assert_eq!(warnings.len(), 1, "only the slow one:\n{log}");
    assert!(
        warnings[0].contains("slow query") && warnings[0].contains("SELECT pg_sleep(0.06)"),
        "{log}"
    );
    assert!(
        warnings[0].contains("DATABASE_SLOW_QUERY_THRESHOLD"),
        "{log}"
    );
}

/// A metric's name, its `state` attribute when it has one, and its pool's name:
/// `name.state{pool}`.
fn keyed(key: &Key) -> String {
    let label = |name: &str| {
        key.labels()
            .find(|l| l.key() == name)
            .map(|l| l.value().to_string())
    };
    let pool = label(names::POOL_LABEL)
        .map(|pool| format!("{{{pool}}}"))
        .unwrap_or_default();
    let state = label(names::STATE_LABEL)
        .map(|state| format!(".{state}"))
        .unwrap_or_default();
    format!("{}{state}{pool}", key.name())
}

/// `db.client.connection.count` by state, as [`keyed`] names them.
const USED: &str = "db.client.connection.count.used";
const IDLE: &str = "db.client.connection.count.idle";

/// A recorder that keeps every counter, gauge and histogram in memory, by name and pool.
#[derive(Default)]
struct Memory {
    counters: Mutex<HashMap<String, Arc<AtomicU64>>>,
    gauges: Mutex<HashMap<String, Arc<AtomicU64>>>,
    histograms: Mutex<HashMap<String, Arc<Samples>>>,
}

#[derive(Default)]
struct Samples(Mutex<Vec<f64>>);

impl metrics::HistogramFn for Samples {
    fn record(&self, value: f64) {
        self.0.lock().expect("lock").push(value);
    }
}

impl Recorder for Memory {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let mut map = self.counters.lock().expect("lock");
        Counter::from_arc(Arc::clone(map.entry(keyed(key)).or_default()))
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        let mut map = self.gauges.lock().expect("lock");
        Gauge::from_arc(Arc::clone(map.entry(keyed(key)).or_default()))
    }
    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        let mut map = self.histograms.lock().expect("lock");
        Histogram::from_arc(Arc::clone(map.entry(keyed(key)).or_default()))
    }
}

impl Memory {
    /// The one metric called `name`, whatever its pool (when one engine reported).
    fn only<'a, T>(map: &'a HashMap<String, T>, name: &str) -> Option<&'a T> {
        let mut found = map
            .iter()
            .filter(|(k, _)| k.split('{').next() == Some(name));
        let first = found.next().map(|(_, v)| v);
        assert!(found.next().is_none(), "{name} reported by several pools");
        first
    }
    fn counter(&self, name: &str) -> u64 {
        let map = self.counters.lock().expect("lock");
        Memory::only(&map, name).map_or(0, |c| c.load(Ordering::Relaxed))
    }
    fn gauge(&self, name: &str) -> f64 {
        let map = self.gauges.lock().expect("lock");
        Memory::only(&map, name).map_or(f64::NAN, |g| f64::from_bits(g.load(Ordering::Relaxed)))
    }
    fn gauge_of(&self, name: &str, pool: &str) -> f64 {
        let map = self.gauges.lock().expect("lock");
        map.get(&format!("{name}{{{pool}}}"))
            .map_or(f64::NAN, |g| f64::from_bits(g.load(Ordering::Relaxed)))
    }
    fn pools(&self, name: &str) -> Vec<String> {
        let map = self.gauges.lock().expect("lock");
        let mut pools: Vec<String> = map
            .keys()
            .filter_map(|k| k.strip_prefix(name)?.strip_prefix('{')?.strip_suffix('}'))
            .map(str::to_string)
            .collect();
        pools.sort();
        pools
    }
    fn samples(&self, name: &str) -> usize {
        let map = self.histograms.lock().expect("lock");
        Memory::only(&map, name).map_or(0, |h| h.0.lock().expect("lock").len())
    }
}

#[test]
fn checkouts_waits_timeouts_and_gauges_reach_the_recorder() {
    let (engine, _db) = fresh_postgres("dl_metrics", &[]);
    let small = with(&engine, |pool| {
        pool.max_size = 2;
        pool.timeout = Duration::from_millis(200);
    });
    let memory = Memory::default();
    metrics::with_local_recorder(&memory, || {
        let first = small.get().expect("checkout");
        let second = small.get().expect("checkout");
        small.record_metrics();
        assert_eq!(memory.gauge(USED), 2.0);
        let third = small.get();
        assert!(matches!(third, Err(Error::PoolTimeout { .. })));
        drop((first, second));
        small.record_metrics();
        assert_eq!(memory.gauge(USED), 0.0);
    });
    assert_eq!(memory.counter(names::CHECKOUTS), 2);
    assert_eq!(memory.counter(names::TIMEOUTS), 1);
    assert_eq!(
        memory.samples(names::WAIT_TIME),
        3,
        "every checkout's wait, the failed one too"
    );
    assert_eq!(memory.samples(names::USE_TIME), 2, "every return");
    assert_eq!(
        memory.gauge(names::PENDING_REQUESTS),
        0.0,
        "the line is empty"
    );
    assert!(memory.gauge(IDLE) >= 0.0);
    assert!(small.state().in_use == 0, "{:?}", small.state());
}

#[test]
fn two_engines_in_one_process_report_their_own_gauges() {
    let (first, _first_db) = fresh_postgres("dl_metrics_a", &[]);
    let (second, _second_db) = fresh_postgres("dl_metrics_b", &[]);
    let again = Engine::connect(first.settings()).expect("a second engine on the first database");
    let memory = Memory::default();
    metrics::with_local_recorder(&memory, || {
        let held: Vec<_> = (0..3).map(|_| first.get().expect("checkout")).collect();
        let one = second.get().expect("checkout");
        let other = again.get().expect("checkout");
        for engine in [&first, &second, &again] {
            engine.record_metrics();
        }
        let pools = memory.pools(USED);
        assert_eq!(pools.len(), 3, "{pools:?}");
        let of = |engine: &Engine| {
            let db = match &engine.settings().target {
                datalayer::config::Target::Postgres(pg) => pg.database.clone().expect("named"),
                datalayer::config::Target::Sqlite(_) => unreachable!(),
            };
            pools
                .iter()
                .filter(|p| p.starts_with(&format!("{db}@")))
                .cloned()
                .collect::<Vec<_>>()
        };
        let (first_pools, second_pools) = (of(&first), of(&second));
        assert_eq!(second_pools.len(), 1, "{pools:?}");
        assert_eq!(first_pools.len(), 2, "two engines, two names: {pools:?}");
        assert!(first_pools.iter().any(|p| p.ends_with("#2")), "{pools:?}");
        assert_eq!(memory.gauge_of(USED, &second_pools[0]), 1.0);
        let counts: Vec<f64> = first_pools
            .iter()
            .map(|p| memory.gauge_of(USED, p))
            .collect();
        assert!(counts.contains(&3.0) && counts.contains(&1.0), "{counts:?}");
        drop((held, one, other));
    });
}

/// A process-wide in-memory recorder, for what the pool does on r2d2's own threads (opening
/// connections), which a thread-local recorder cannot see. Tests read their own pool's metrics
/// from it by name.
fn global() -> &'static Memory {
    static GLOBAL: std::sync::OnceLock<&'static Memory> = std::sync::OnceLock::new();
    GLOBAL.get_or_init(|| {
        let memory: &'static Memory = Box::leak(Box::default());
        metrics::set_global_recorder(memory).expect("no other global recorder in the tests");
        memory
    })
}

#[test]
fn the_pools_limits_and_connection_opening_reach_the_recorder() {
    let memory = global();
    let (_engine, db) = fresh_postgres("dl_metrics_limits", &[("DATABASE_POOL_MIN_IDLE", "1")]);
    let crate::common::Place::Postgres(db) = &db else {
        unreachable!("postgres")
    };
    let pool = memory
        .pools(names::MAX)
        .into_iter()
        .find(|p| p.starts_with(&format!("{}@", db.name)))
        .expect("the engine's pool reported its size");
    assert_eq!(memory.gauge_of(names::MAX, &pool), 4.0);
    assert_eq!(memory.gauge_of(names::IDLE_MIN, &pool), 1.0);
    crate::common::wait_for(
        "r2d2 opens the idle connection, timed",
        Duration::from_secs(10),
        || {
            let map = memory.histograms.lock().expect("lock");
            map.get(&format!("{}{{{pool}}}", names::CREATE_TIME))
                .is_some_and(|h| !h.0.lock().expect("lock").is_empty())
        },
    );
}

#[test]
fn the_engine_records_its_connection_counts_on_its_own() {
    let memory = global();
    let (engine, db) = fresh_postgres("dl_metrics_counts", &[("DATABASE_POOL_MIN_IDLE", "0")]);
    let crate::common::Place::Postgres(db) = &db else {
        unreachable!("postgres")
    };
    let held: Vec<_> = (0..2).map(|_| engine.get().expect("checkout")).collect();
    let pool = || {
        memory
            .pools(USED)
            .into_iter()
            .find(|p| p.starts_with(&format!("{}@", db.name)))
    };
    // No record_metrics call: the housekeeping thread records them every second.
    crate::common::wait_for(
        "the used count reaches the recorder",
        Duration::from_secs(5),
        || pool().is_some_and(|p| memory.gauge_of(USED, &p) == 2.0),
    );
    drop(held);
    // At least the two returned: under load r2d2 may have opened one more while the first
    // checkout waited for its connection, and that one is idle too.
    let seen = std::cell::Cell::new((f64::NAN, f64::NAN));
    let returned = || {
        pool().is_some_and(|p| {
            seen.set((memory.gauge_of(USED, &p), memory.gauge_of(IDLE, &p)));
            seen.get().0 == 0.0 && seen.get().1 >= 2.0
        })
    };
    let counted = crate::common::eventually(Duration::from_secs(5), returned);
    let (used, idle) = seen.get();
    assert!(
        counted,
        "the returned connections count as idle: used {used}, idle {idle}, pool {:?}",
        engine.state()
    );
}

#[test]
fn every_query_runs_in_a_span_with_the_databases_attributes() {
    let (engine, place) = fresh_postgres("dl_spans", &[]);
    let crate::common::Place::Postgres(db) = &place else {
        unreachable!("postgres")
    };
    let quiet = crate::common::logged_with_spans(|| {
        let mut conn = engine.get().expect("checkout");
        conn.batch_execute("SELECT 1 AS spanned").expect("query");
        let _ = conn.batch_execute("SELECT * FROM no_such_table");
    });
    let spans: Vec<&str> = quiet.lines().filter(|l| l.contains("db.query")).collect();
    assert_eq!(spans.len(), 2, "one span per query:\n{quiet}");
    for span in &spans {
        for attribute in [
            "db.system=\"postgresql\"",
            &format!("db.namespace=\"{}\"", db.name),
            "server.address=",
            "server.port=",
        ] {
            assert!(span.contains(attribute), "{attribute} in {span}");
        }
        assert!(
            !span.contains("SELECT"),
            "no statement without DATABASE_ECHO: {span}"
        );
    }
    assert!(
        spans[1].contains("error.type=\"database_error\""),
        "{}",
        spans[1]
    );

    let echoing = with(&engine, |pool| pool.echo = true);
    let echoed = crate::common::logged_with_spans(|| {
        let mut conn = echoing.get().expect("checkout");
        conn.batch_execute("SELECT 1 AS spanned").expect("query");
    });
    assert!(
        echoed
            .lines()
            .any(|l| l.contains("db.query") && l.contains("db.query.text=\"SELECT 1 AS spanned\"")),
        "{echoed}"
    );
    // The echo line itself is logged inside the query's span, with its attributes.
    assert!(
        echoed.lines().any(|l| l.contains("db.query{")
            && l.contains("db.system=\"postgresql\"")
            && l.contains("datalayer::sql")
            && l.contains("SELECT 1 AS spanned [")),
        "{echoed}"
    );
}
