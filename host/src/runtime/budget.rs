//! Budgets for everything a plugin author controls: the size of the code the host
//! compiles, the manifest it keeps, the text it stores and shows. Each bound is
//! enforced where the input enters (upload, or the output checks of a call) and
//! listed with its test in `docs/SECURITY.md`.
//!
//! Text that reaches the database or a screen is refused, not cleaned, when it
//! names something (bands, labels, codes): a quietly changed label would be a
//! different label. Diagnostic text (error messages) is cleaned and truncated
//! instead, so that the failure it describes is still recorded.

use super::RuntimeError;

/// Core modules a component may carry (a Rust plugin has 3, the componentize-py
/// one 38).
pub const MAX_CORE_MODULES: usize = 64;
/// Functions defined across all core modules. The Python plugin (CPython inside)
/// defines 13,488, a Rust pack ~500; compile time and memory grow with this count.
pub const MAX_FUNCTIONS: u64 = 50_000;
/// Bytes of function bodies across all core modules (the Python plugin: 6.3 MB).
pub const MAX_CODE_BYTES: u64 = 12 << 20;
/// One function body: a single giant body is the other way to make Cranelift
/// spend memory.
pub const MAX_FUNCTION_BYTES: u32 = 1 << 20;

/// Manifest counts and lengths.
pub const MAX_STAGES: usize = 64;
pub const MAX_SEGMENT_DEFS: usize = 256;
pub const MAX_REASON_TEXTS: usize = 512;
pub const MAX_WANTS_FIELDS: usize = 32;
/// A stage or segment label, a band.
pub const MAX_LABEL: usize = 200;
pub const MAX_DESCRIPTION: usize = 2_000;
/// A reason's text template, per language.
pub const MAX_TEMPLATE: usize = 512;
pub const MAX_VERSION: usize = 64;
/// The rule-set JSON Schema and the default rules.
pub const MAX_RULES_SCHEMA: usize = 64 << 10;
pub const MAX_DEFAULT_RULES: usize = 64 << 10;
pub use crate::domain::text::{MAX_MESSAGE, MAX_RENDERED};

/// Refuses, before anything is compiled, a component whose code is larger than the
/// budget above: compiling is the one step whose time and memory grow with what
/// the author wrote, and no deadline can stop Cranelift once it has started.
/// Parsing is linear and allocates little.
pub fn check_code(bytes: &[u8]) -> Result<(), RuntimeError> {
    use wasmparser::{Parser, Payload};
    let over = |what: String| Err(RuntimeError::TooBig(what));
    let (mut modules, mut functions, mut code) = (0usize, 0u64, 0u64);
    for payload in Parser::new(0).parse_all(bytes) {
        let payload = payload.map_err(|e| RuntimeError::Invalid(format!("{e}")))?;
        match payload {
            Payload::ModuleSection { .. } => {
                modules += 1;
                if modules > MAX_CORE_MODULES {
                    return over(format!(
                        "more than {MAX_CORE_MODULES} core modules (the budget)"
                    ));
                }
            }
            Payload::FunctionSection(r) => {
                functions += u64::from(r.count());
                if functions > MAX_FUNCTIONS {
                    return over(format!("more than {MAX_FUNCTIONS} functions (the budget)"));
                }
            }
            Payload::CodeSectionStart { size, .. } => {
                code += u64::from(size);
                if code > MAX_CODE_BYTES {
                    return over(format!(
                        "more than {MAX_CODE_BYTES} bytes of function bodies (the budget)"
                    ));
                }
            }
            Payload::CodeSectionEntry(body) => {
                let len = body.range().len();
                if len > MAX_FUNCTION_BYTES as usize {
                    return over(format!(
                        "a function body of {len} bytes (at most {MAX_FUNCTION_BYTES})"
                    ));
                }
            }
            _ => {}
        }
    }
    Ok(())
}

// `check_code` is tested on a real component with a compile bomb appended:
// `tests/budgets.rs` `a_compile_bomb_is_refused_before_compiling`.
