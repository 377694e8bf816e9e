//! datalayer's integration tests: one binary, shared helpers in `common` and `libpq`.

mod canary;
mod cli;
mod cluster;
mod common;
mod config_errors;
mod config_settings;
mod docs;
mod engine;
mod failover;
mod libpq;
mod lifetimes;
mod migration_safety;
mod migration_sets;
mod migrations;
mod models;
mod netns;
mod observability;
mod password_file;
mod pgbouncer;
mod proxy;
mod resilience;
mod server;
mod testing;
mod tls;
mod transactions;
mod url_libpq;
