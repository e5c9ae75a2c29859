//! Text rules shared by every room: what a label, a free text, a tag, a slug
//! and a reason code may hold, and how diagnostics are made safe to show.
//!
//! Text that reaches the database or a screen is refused, not cleaned, when it
//! names something (bands, labels, codes): a quietly changed label would be a
//! different label. Diagnostic text (error messages) is cleaned and truncated
//! instead, so that the failure it describes is still recorded.

/// A plugin's error message, as stored and shown (trap messages share it).
pub const MAX_MESSAGE: usize = 1024;
/// A rendered reason, whatever its arguments.
pub const MAX_RENDERED: usize = 1024;
/// A tag: lower-case `[a-z0-9:_-]`.
pub const MAX_TAG: usize = 64;

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

/// Whether `s` is 1..=`max` bytes of `[a-z0-9_-]` (keys, kinds, channels, ids in manifests).
pub fn is_slug(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// Whether `tag` is a well-formed tag: lower-case `[a-z0-9:_-]`, 1..=64 bytes.
pub fn is_valid_tag(tag: &str) -> bool {
    !tag.is_empty()
        && tag.len() <= MAX_TAG
        && tag.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b':')
        })
}

/// Whether `code` is a well-formed reason code: 1-64 bytes of `[a-z0-9_.:-]`.
pub fn is_reason_code(code: &str) -> bool {
    !code.is_empty()
        && code.len() <= 64
        && code.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.' | b':')
        })
}

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
