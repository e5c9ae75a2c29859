//! Stagecraft: a CRM core that runs sandboxed WebAssembly plugins for
//! segmentation, scoring and lifecycle-stage transitions.
//!
//! The rooms, each knowing only what it must (`cargo xtask lint` checks the
//! layering):
//! - [`domain`]: the vocabulary every room shares (customers, events, reasons,
//!   actions, manifests, limits, text rules, times); it imports nothing of the host.
//! - [`runtime`]: the wasmtime sandbox that loads and calls plugins (no SQL).
//! - [`store`]: customers, events and everything else in SQLite or PostgreSQL; it
//!   knows the domain only (no HTTP, no plugins, no services).
//! - [`packs`]: the plugins each tenant has enabled, loaded and swappable.
//! - [`pipeline`]: event → snapshot → plugins → validated actions → one transaction.
//! - [`services`]: the operations the API and the CLI share, one service per
//!   concern (customers, events, imports, registry, jobs, breaker, tokens,
//!   reports), composed in [`Crm`].
//! - [`http`]: the axum API; it only translates.
//! - [`cli`]: the `stagecraft` command.

pub mod cli;
pub mod customer_file;
pub mod demo;
pub mod domain;
pub mod http;
pub mod metrics;
pub mod packs;
pub mod pipeline;
pub mod runtime;
pub mod services;
pub mod store;

pub use services::Crm;

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
