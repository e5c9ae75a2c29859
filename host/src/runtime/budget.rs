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
/// A rendered reason, whatever its arguments.
pub const MAX_RENDERED: usize = 1024;
/// A plugin's error message, as stored and shown (trap messages share it).
pub const MAX_MESSAGE: usize = 1024;

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

/// Format and bidirectional controls: invisible characters that reorder or hide
/// text on screen (the "trojan source" trick). Never part of a label or a band.
fn is_invisible_control(c: char) -> bool {
    matches!(c,
        '\u{061C}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{206F}' | '\u{FEFF}' | '\u{FFF9}'..='\u{FFFB}')
}

/// Why `s` is not an acceptable label (a stage or segment label, a band): it must
/// be 1..=`max` bytes with no control or invisible formatting characters and no
/// `<` or `>` (markup in a name is never intended, and not every screen that
/// shows it escapes it).
pub fn label_problem(s: &str, max: usize) -> Option<String> {
    if s.trim().is_empty() {
        return Some("is empty".into());
    }
    if s.len() > max {
        return Some(format!("is {} bytes, at most {max}", s.len()));
    }
    if let Some(c) = s
        .chars()
        .find(|&c| c.is_control() || is_invisible_control(c) || c == '<' || c == '>')
    {
        return Some(format!("contains {}", describe_char(c)));
    }
    None
}

/// Why `s` is not acceptable free text (a note, a field's text, a template): at
/// most `max` bytes, no control characters but newline and tab, no invisible
/// formatting characters. NUL in particular: PostgreSQL cannot store it.
pub fn text_problem(s: &str, max: usize) -> Option<String> {
    if s.len() > max {
        return Some(format!("is {} bytes, at most {max}", s.len()));
    }
    if let Some(c) = s
        .chars()
        .find(|&c| (c.is_control() && c != '\n' && c != '\t') || is_invisible_control(c))
    {
        return Some(format!("contains {}", describe_char(c)));
    }
    None
}

fn describe_char(c: char) -> String {
    match c {
        '\0' => "a NUL character".into(),
        '<' | '>' => format!("{c:?} (markup)"),
        c if c.is_control() => format!("the control character U+{:04X}", c as u32),
        c => format!("the invisible formatting character U+{:04X}", c as u32),
    }
}

/// `text` made safe to store and show as a diagnostic: control and invisible
/// characters become U+FFFD, and past [`MAX_MESSAGE`] bytes it is cut with a note.
pub fn clean_message(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(MAX_MESSAGE + 32));
    for c in text.chars() {
        let c = if c.is_control() || is_invisible_control(c) {
            '\u{FFFD}'
        } else {
            c
        };
        if out.len() + c.len_utf8() > MAX_MESSAGE {
            out.push_str(&format!(" … ({} bytes cut)", text.len() - out.len()));
            return out;
        }
        out.push(c);
    }
    out
}

/// `s` cut to at most `max` bytes on a character boundary, with `…` where it was cut.
pub fn cut(mut s: String, max: usize) -> String {
    if s.len() <= max {
        return s;
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    s.push('…');
    s
}

// `check_code` is tested on a real component with a compile bomb appended:
// `tests/budgets.rs` `a_compile_bomb_is_refused_before_compiling`.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_text() {
        assert_eq!(label_problem("Gold", 64), None);
        assert_eq!(label_problem("金牌客户", 64), None);
        assert!(label_problem("a\0b", 64).unwrap().contains("NUL"));
        assert!(label_problem("two\nlines", 64).unwrap().contains("U+000A"));
        assert!(label_problem("evil\u{202E}txt", 64)
            .unwrap()
            .contains("U+202E"));
        assert!(label_problem("<b>hi</b>", 64).unwrap().contains("markup"));
        assert!(label_problem(" ", 64).unwrap().contains("empty"));
        assert!(label_problem(&"x".repeat(65), 64).unwrap().contains("65"));
        assert_eq!(text_problem("call back\n\tTuesday", 100), None);
        assert!(text_problem("x\0", 100).unwrap().contains("NUL"));
        assert!(text_problem("x\u{7}", 100).unwrap().contains("U+0007"));
    }

    #[test]
    fn messages_are_cleaned_and_cut() {
        assert_eq!(clean_message("bad\0rules"), "bad\u{FFFD}rules");
        let long = clean_message(&"é".repeat(10_000));
        assert!(long.len() <= MAX_MESSAGE + 32, "{}", long.len());
        assert!(long.ends_with("bytes cut)"), "{long}");
        assert_eq!(cut("abcdef".into(), 4), "a…");
        assert_eq!(cut("abc".into(), 4), "abc");
    }
}
