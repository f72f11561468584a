//! Text that others wrote (a change cause, a rollback's reason, an Event's message, a field
//! name in a definition), made safe to print: a control character could otherwise move the
//! cursor, clear the screen or write the reader's clipboard (OSC 52).

use std::borrow::Cow;

/// `text` with every control character (C0, DEL, C1; newlines and tabs too, which would break
/// a table's row) written as a Rust-style escape, `\u{1b}`.
pub fn escape(text: &str) -> Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", u32::from(c))),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_other_text_is_kept() {
        let osc52 = "fix\u{1b}]52;c;ZWNobyBwd25lZA==\u{7}\u{1b}[2J\u{9b}done";
        let safe = escape(osc52);
        assert!(!safe.chars().any(char::is_control), "{safe}");
        assert_eq!(safe, "fix\\u{1b}]52;c;ZWNobyBwd25lZA==\\u{7}\\u{1b}[2J\\u{9b}done");
        assert_eq!(escape("two\nlines\tand a tab"), "two\\nlines\\tand a tab");
        assert!(matches!(escape("plain text, ünïcode ✓"), Cow::Borrowed(_)));
    }
}
