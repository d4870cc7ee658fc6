//! Outside text made safe to show: control characters escaped, so a
//! hostile address or answer cannot move the cursor, recolour the terminal
//! or forge a line; words of suggested command lines shell-quoted, so
//! pasting one runs exactly that command.

/// `s` with every control character written as an escape (`\n`, `\t`,
/// `\x1b`, `\u{85}`); everything else as it is.
pub fn printable(s: &str) -> String {
    if !s.chars().any(char::is_control) {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x80 && c.is_control() => {
                out.push_str(&format!("\\x{:02x}", u32::from(c)));
            }
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", u32::from(c))),
            c => out.push(c),
        }
    }
    out
}

/// One word of a POSIX shell command line: as it is when it holds only
/// characters no shell treats specially, else in single quotes (a quote
/// inside becomes `'\''`). Control characters are escaped as `printable`
/// does, so the word stays on its line (and no longer means the same
/// bytes; such a word is broken anyway).
pub fn shell_quote(word: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "_@%+=:,./-".contains(c);
    if !word.is_empty() && word.chars().all(safe) {
        return word.to_string();
    }
    format!("'{}'", printable(word).replace('\'', r"'\''"))
}

/// A JSON string (RFC 8259 section 7): quote, backslash and every control
/// character escaped; everything else is already valid UTF-8.
pub fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            // C1 controls too (U+0080-U+009F): JSON allows them raw, but
            // some terminals act on them (fuzz/status found this).
            c if c.is_control() => {
                out.push_str(&format!("\\u{:04x}", u32::from(c)));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_escape_what_they_must() {
        assert_eq!(json_string("plain"), "\"plain\"");
        assert_eq!(
            json_string("a \"b\" \\ c\nd\te\u{1}"),
            "\"a \\\"b\\\" \\\\ c\\nd\\te\\u0001\""
        );
        assert_eq!(json_string("ünïcødé →"), "\"ünïcødé →\"");
        assert_eq!(json_string("csi\u{9b}"), "\"csi\\u009b\"");
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(printable("plain 10.0.0.1:5599"), "plain 10.0.0.1:5599");
        assert_eq!(printable("a\nb\tc\r"), "a\\nb\\tc\\r");
        assert_eq!(printable("x\x1b[31mred\x7f"), "x\\x1b[31mred\\x7f");
        assert_eq!(printable("ünï\u{85}"), "ünï\\u{85}");
    }

    #[test]
    fn words_are_quoted_only_when_they_must_be() {
        assert_eq!(
            shell_quote("p2p-annex.tcp.transport"),
            "p2p-annex.tcp.transport"
        );
        assert_eq!(shell_quote("/usr/bin/p2p-annex"), "/usr/bin/p2p-annex");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(
            shell_quote("p2p-annex.x;touch /tmp/pwn;.transport"),
            "'p2p-annex.x;touch /tmp/pwn;.transport'"
        );
        assert_eq!(shell_quote("it's $(x)"), r"'it'\''s $(x)'");
        assert_eq!(shell_quote("a\nb"), "'a\\nb'");
        assert_eq!(shell_quote("`id`"), "'`id`'");
    }

    #[test]
    fn a_quoted_word_is_one_word_to_the_shell() {
        for word in ["x;touch /tmp/pwn;:", "it's", "$(id)", "a b", "'", "\\", "*"] {
            let out = std::process::Command::new("sh")
                .args(["-c", &format!("printf %s {}", shell_quote(word))])
                .output()
                .expect("run sh");
            assert_eq!(String::from_utf8_lossy(&out.stdout), word, "{word:?}");
        }
    }
}
