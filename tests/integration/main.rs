//! The integration tests: one module per concern, all in one test binary, so
//! that a change to the library compiles and links them once rather than
//! once per file (which also keeps mutation testing affordable).
//! `TESTING.md` says what each module covers.

mod common;

mod attempts;
mod auth;
mod cli;
mod config;
mod dashboards;
mod dead_peer;
mod deployment;
mod engine_properties;
mod engine_suite;
mod fuzz_corpus;
mod groups;
mod grpc;
mod grpc_web;
mod health_reflection;
mod http;
mod http2;
mod limits;
mod logging;
mod metrics;
mod mixed;
mod proxies;
mod redis_auth;
mod redis_failover;
mod redis_faults;
mod redis_measure;
mod replicas;
mod shutdown;
mod tls;
mod traces;
mod withdraw;
