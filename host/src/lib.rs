//! Stagecraft: a CRM core that runs sandboxed WebAssembly plugins for
//! segmentation, scoring and lifecycle-stage transitions.
//!
//! - [`runtime`]: the wasmtime sandbox that loads and calls plugins.
//! - [`customer_file`]: customers as JSON files, for the CLI.
//! - [`cli`]: the `stagecraft` command.

pub mod cli;
pub mod customer_file;
pub mod runtime;
