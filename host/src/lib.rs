//! Stagecraft: a CRM core that runs sandboxed WebAssembly plugins for
//! segmentation, scoring and lifecycle-stage transitions.
//!
//! The rooms, each knowing only what it must:
//! - [`runtime`]: the wasmtime sandbox that loads and calls plugins (no SQL).
//! - [`store`]: customers, events and everything else in SQLite or PostgreSQL (no HTTP, no plugins).
//! - [`packs`]: the plugins each tenant has enabled, loaded and swappable.
//! - [`pipeline`]: event → snapshot → plugins → validated actions → one transaction.
//! - [`group_commit`]: on SQLite, events arriving together share one transaction.
//! - [`crm`], [`import`] and [`registry`]: the operations the API and the CLI share
//!   (customers and events; bulk import; plugin versions, rule sets, hot swap).
//! - [`http`]: the axum API; it only translates.
//! - [`cli`]: the `stagecraft` command.

pub mod cli;
pub mod crm;
pub mod customer_file;
pub mod demo;
pub mod group_commit;
pub mod http;
pub mod import;
pub mod metrics;
pub mod model;
pub mod packs;
pub mod pipeline;
pub mod registry;
pub mod runtime;
pub mod store;

pub use crm::Crm;

/// `tokio::task::spawn_blocking` that keeps the caller's span, so that the log
/// lines of plugin calls (which run on blocking threads) carry the request id.
pub fn spawn_blocking<F, R>(f: F) -> tokio::task::JoinHandle<R>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || span.in_scope(f))
}
