//! fowld's JSON-lines protocol as pure functions: build the commands we
//! send on its stdin, parse the lines it writes on its stdout into events.
//! No I/O here; `net::fowl` moves the lines.
//!
//! fowld's lines echo secrets: `code-allocated` carries the wormhole code
//! even after `set-code`, and a command fowld cannot parse comes back as a
//! non-JSON line quoting it whole (doc/networks/fowl.md, "The known facts,
//! checked"). So an event keeps only the fields we act on, a non-JSON line
//! keeps nothing, and every text we keep is cut short and made one line.
//! The message kinds and their fields are fowl 26.8.0's
//! (`fowl/messages.py`, `fowld_output_to_json` in `fowl/_proto.py`).
//!
//! Only the JSON fowld writes is parsed: one object per line, whose
//! values are strings, numbers, booleans, null, arrays or objects. Nested
//! values are skipped; no serde (run-time crates stay nix, lexopt, libc).

use crate::text::json_string;

/// The longest text of fowld's we keep (a reason, an error message).
pub const MAX_TEXT: usize = 200;

/// The longest line we parse; a longer one is an `Event::Other`.
pub const MAX_LINE: usize = 64 * 1024;

/// Deepest nesting we follow; fowld's lines nest two or three levels.
const MAX_DEPTH: usize = 16;

/// What fowld tells us, one line at a time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Connected to the mailbox server.
    Welcome,
    /// The code is set (fowld's line carries the code; we drop it).
    CodeAllocated,
    /// The other side of the wormhole is there and the key exchange worked.
    PeerConnected,
    /// Our `local` forward listens on this loopback port.
    Listening {
        port: u16,
    },
    /// Our `local` forward could not listen.
    ListeningFailed {
        reason: String,
    },
    /// Our `remote` forward is set up on the far side.
    AwaitingConnect,
    /// A stream through our `local` forward opened, ended, or was lost
    /// (refused by the far side, or broken).
    OutgoingConnection,
    OutgoingDone,
    OutgoingLost {
        reason: String,
    },
    /// A stream from the peer arrived at our `remote` forward, ended, or
    /// was lost.
    IncomingConnection,
    IncomingDone,
    IncomingLost {
        reason: String,
    },
    /// Our `remote` forward could not connect to its local port.
    RemoteConnectFailed {
        reason: String,
    },
    /// The wormhole is over: `result` is "happy", "crowded", an error's
    /// name, or (no mailbox) its URL.
    Closed {
        result: String,
    },
    /// fowld failed at something.
    Error {
        message: String,
    },
    /// `bytes-in`/`bytes-out`: one per chunk relayed, nothing to act on.
    Bytes,
    /// Anything else: another kind, or a line that is not a JSON object
    /// (such a line may quote a code: none of it is kept).
    Other,
}

impl Event {
    /// The wormhole or fowld itself is finished: nothing more will come.
    pub fn is_final(&self) -> bool {
        matches!(self, Event::Closed { .. } | Event::Error { .. })
    }
}

/// Parse one line of fowld's output (without its newline).
pub fn parse_line(line: &[u8]) -> Event {
    if line.len() > MAX_LINE {
        return Event::Other;
    }
    let Ok(text) = std::str::from_utf8(line) else {
        return Event::Other;
    };
    let Some(fields) = Parser::new(text).object_line() else {
        return Event::Other;
    };
    let get = |key: &str| fields.iter().find(|(k, _)| k == key).map(|(_, v)| v);
    let text = |key: &str| match get(key) {
        Some(Value::Str(s)) => one_line(s),
        _ => String::new(),
    };
    let Some(Value::Str(kind)) = get("kind") else {
        return Event::Other;
    };
    match kind.as_str() {
        "welcome" => Event::Welcome,
        "code-allocated" => Event::CodeAllocated,
        "peer-connected" => Event::PeerConnected,
        "listening" => match get("listening_port") {
            Some(Value::Int(p)) => match u16::try_from(*p) {
                Ok(port) if port != 0 => Event::Listening { port },
                _ => Event::Other,
            },
            _ => Event::Other,
        },
        "listening-failed" => Event::ListeningFailed {
            reason: text("reason"),
        },
        "awaiting-connect" => Event::AwaitingConnect,
        "outgoing-connection" => Event::OutgoingConnection,
        "outgoing-done" => Event::OutgoingDone,
        "outgoing-lost" => Event::OutgoingLost {
            reason: text("reason"),
        },
        "incoming-connection" => Event::IncomingConnection,
        "incoming-done" => Event::IncomingDone,
        "incoming-lost" => Event::IncomingLost {
            reason: text("reason"),
        },
        "remote-connect-failed" => Event::RemoteConnectFailed {
            reason: text("reason"),
        },
        "closed" => Event::Closed {
            result: text("result"),
        },
        "error" => Event::Error {
            message: text("message"),
        },
        "bytes-in" | "bytes-out" => Event::Bytes,
        _ => Event::Other,
    }
}

/// A text of fowld's, safe to show: one line, printable, at most
/// `MAX_TEXT` characters.
fn one_line(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_TEXT)
        .collect();
    if s.chars().count() > MAX_TEXT {
        out.push('…');
    }
    out.trim().to_string()
}

/// `set-code`: join the wormhole of this code.
pub fn set_code(code: &str) -> Vec<u8> {
    command("set-code", &[("code", Json::Str(code))])
}

/// `local`: listen on loopback; streams to it go to the peer's service
/// `name`.
pub fn local(name: &str) -> Vec<u8> {
    command(
        "local",
        &[
            ("name", Json::Str(name)),
            ("bind_interface", Json::Str("127.0.0.1")),
        ],
    )
}

/// `remote`: the peer listens for service `name`; its streams come to our
/// loopback `port`.
pub fn remote(name: &str, port: u16) -> Vec<u8> {
    command(
        "remote",
        &[
            ("name", Json::Str(name)),
            ("local_connect_port", Json::Int(u64::from(port))),
        ],
    )
}

/// `session-close`: end the wormhole, waiting up to `timeout_secs` for the
/// peer; this releases the nameplate on the mailbox.
pub fn session_close(timeout_secs: u64) -> Vec<u8> {
    command("session-close", &[("timeout", Json::Int(timeout_secs))])
}

enum Json<'a> {
    Str(&'a str),
    Int(u64),
}

fn command(kind: &str, fields: &[(&str, Json<'_>)]) -> Vec<u8> {
    let mut out = format!("{{\"kind\": {}", json_string(kind));
    for (key, value) in fields {
        out.push_str(", ");
        out.push_str(&json_string(key));
        out.push_str(": ");
        match value {
            Json::Str(s) => out.push_str(&json_string(s)),
            Json::Int(n) => out.push_str(&n.to_string()),
        }
    }
    out.push_str("}\n");
    out.into_bytes()
}

/// A top-level value we keep; nested ones are skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Value {
    Str(String),
    Int(u64),
    Other,
}

/// A small recursive-descent parser of RFC 8259 JSON, enough for one
/// object per line.
struct Parser<'a> {
    s: &'a [u8],
    at: usize,
}

impl<'a> Parser<'a> {
    fn new(text: &'a str) -> Parser<'a> {
        Parser {
            s: text.as_bytes(),
            at: 0,
        }
    }

    /// The line is one object and nothing else: its members, in order.
    fn object_line(&mut self) -> Option<Vec<(String, Value)>> {
        self.ws();
        let fields = self.object(0)?;
        self.ws();
        (self.at == self.s.len()).then_some(fields)
    }

    fn ws(&mut self) {
        while self
            .s
            .get(self.at)
            .is_some_and(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
        {
            self.at += 1;
        }
    }

    fn eat(&mut self, b: u8) -> Option<()> {
        self.ws();
        (self.s.get(self.at) == Some(&b)).then(|| self.at += 1)
    }

    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.s.get(self.at).copied()
    }

    fn object(&mut self, depth: usize) -> Option<Vec<(String, Value)>> {
        if depth > MAX_DEPTH {
            return None;
        }
        self.eat(b'{')?;
        let mut fields = Vec::new();
        if self.peek() == Some(b'}') {
            self.at += 1;
            return Some(fields);
        }
        loop {
            self.ws();
            let key = self.string()?;
            self.eat(b':')?;
            let value = self.value(depth + 1)?;
            fields.push((key, value));
            match self.peek()? {
                b',' => self.at += 1,
                b'}' => {
                    self.at += 1;
                    return Some(fields);
                }
                _ => return None,
            }
        }
    }

    fn array(&mut self, depth: usize) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        self.eat(b'[')?;
        if self.peek() == Some(b']') {
            self.at += 1;
            return Some(());
        }
        loop {
            self.value(depth + 1)?;
            match self.peek()? {
                b',' => self.at += 1,
                b']' => {
                    self.at += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    fn value(&mut self, depth: usize) -> Option<Value> {
        match self.peek()? {
            b'"' => self.string().map(Value::Str),
            b'{' => self.object(depth).map(|_| Value::Other),
            b'[' => self.array(depth).map(|()| Value::Other),
            b't' => self.literal("true"),
            b'f' => self.literal("false"),
            b'n' => self.literal("null"),
            b'-' | b'0'..=b'9' => self.number(),
            _ => None,
        }
    }

    fn literal(&mut self, word: &str) -> Option<Value> {
        let end = self.at.checked_add(word.len())?;
        (self.s.get(self.at..end)? == word.as_bytes()).then(|| {
            self.at = end;
            Value::Other
        })
    }

    /// A number; a non-negative integer that fits is kept.
    fn number(&mut self) -> Option<Value> {
        let start = self.at;
        while self
            .s
            .get(self.at)
            .is_some_and(|b| matches!(b, b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9'))
        {
            self.at += 1;
        }
        let text = std::str::from_utf8(&self.s[start..self.at]).ok()?;
        if let Ok(n) = text.parse::<u64>() {
            return Some(Value::Int(n));
        }
        // Any other number (negative, fraction, exponent) is skipped, not
        // parsed: no float parser in the binary for values we never use.
        text.bytes()
            .any(|b| b.is_ascii_digit())
            .then_some(Value::Other)
    }

    fn string(&mut self) -> Option<String> {
        if self.s.get(self.at) != Some(&b'"') {
            return None;
        }
        self.at += 1;
        let mut out = String::new();
        loop {
            let start = self.at;
            while self
                .s
                .get(self.at)
                .is_some_and(|&b| b != b'"' && b != b'\\' && b >= 0x20)
            {
                self.at += 1;
            }
            // The input is a &str and we stop only at ASCII bytes: a
            // boundary.
            out.push_str(std::str::from_utf8(&self.s[start..self.at]).ok()?);
            match *self.s.get(self.at)? {
                b'"' => {
                    self.at += 1;
                    return Some(out);
                }
                b'\\' => {
                    self.at += 1;
                    let c = match *self.s.get(self.at)? {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => {
                            let c = self.unicode_escape()?;
                            out.push(c);
                            continue;
                        }
                        _ => return None,
                    };
                    self.at += 1;
                    out.push(c);
                }
                _ => return None, // a raw control character
            }
        }
    }

    /// After `\u`: four hex digits, or a surrogate pair of two escapes.
    fn unicode_escape(&mut self) -> Option<char> {
        let hi = self.hex4()?;
        if (0xd800..0xdc00).contains(&hi) {
            if self.s.get(self.at..self.at + 2)? != b"\\u" {
                return Some('\u{fffd}');
            }
            self.at += 1;
            let lo = self.hex4()?;
            if !(0xdc00..0xe000).contains(&lo) {
                return Some('\u{fffd}');
            }
            return char::from_u32(0x10000 + ((hi - 0xd800) << 10) + (lo - 0xdc00));
        }
        Some(char::from_u32(hi).unwrap_or('\u{fffd}'))
    }

    /// `u` and four hex digits.
    fn hex4(&mut self) -> Option<u32> {
        let digits = self.s.get(self.at + 1..self.at + 5)?;
        let text = std::str::from_utf8(digits).ok()?;
        let n = u32::from_str_radix(text, 16).ok()?;
        if !digits.iter().all(u8::is_ascii_hexdigit) {
            return None;
        }
        self.at += 5;
        Some(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(line: &str) -> Event {
        parse_line(line.as_bytes())
    }

    // Lines as fowld 26.8.0 writes them (captured in the fowl study; codes
    // and verifiers shortened).
    #[test]
    fn real_fowld_lines() {
        assert_eq!(
            ev(
                r#"{"url": "ws://127.0.0.1:4000/v1", "welcome": {"motd": "hi"}, "kind": "welcome", "timestamp": 0.41}"#
            ),
            Event::Welcome
        );
        assert_eq!(
            ev(r#"{"code": "1234-abcdef", "kind": "code-allocated"}"#),
            Event::CodeAllocated
        );
        assert_eq!(
            ev(
                r#"{"verifier": "8f1e", "versions": {"fowl": {"features": ["core-v1"]}}, "kind": "peer-connected"}"#
            ),
            Event::PeerConnected
        );
        assert_eq!(
            ev(r#"{"name": "annex", "listening_port": 38211, "kind": "listening"}"#),
            Event::Listening { port: 38211 }
        );
        assert_eq!(
            ev(r#"{"service_name": "annex", "id": 1, "kind": "outgoing-connection"}"#),
            Event::OutgoingConnection
        );
        assert_eq!(
            ev(
                r#"{"service_name": "annex", "reason": "Incoming connection against local policy: No service \"annex\"", "kind": "outgoing-lost"}"#
            ),
            Event::OutgoingLost {
                reason: "Incoming connection against local policy: No service \"annex\"".into()
            }
        );
        assert_eq!(
            ev(r#"{"result": "crowded", "kind": "closed"}"#),
            Event::Closed {
                result: "crowded".into()
            }
        );
        assert_eq!(
            ev(r#"{"id": 3, "bytes": 65536, "kind": "bytes-in"}"#),
            Event::Bytes
        );
        assert_eq!(
            ev(r#"{"kind": "incoming-done", "id": 7}"#),
            Event::IncomingDone
        );
    }

    #[test]
    fn a_line_that_is_not_json_keeps_nothing() {
        // fowld's answer to a command it cannot parse quotes it, code and all.
        let line = br#"b'{"kind": "set-code", "code": "1234-secret"': failed: bad"#;
        assert_eq!(parse_line(line), Event::Other);
    }

    #[test]
    fn codes_never_come_back_out() {
        let e = ev(r#"{"code": "7777-topsecret", "kind": "code-allocated"}"#);
        assert!(!format!("{e:?}").contains("topsecret"));
    }

    #[test]
    fn texts_are_one_short_line() {
        let long = "x".repeat(1000);
        let e = ev(&format!(r#"{{"kind": "error", "message": "a\nb{long}"}}"#));
        let Event::Error { message } = e else {
            panic!("{e:?}")
        };
        assert!(!message.contains('\n'));
        assert!(message.chars().count() <= MAX_TEXT + 1);
        assert!(message.starts_with("a b"));
    }

    #[test]
    fn malformed_lines_are_other() {
        for line in [
            "",
            "{",
            "{}",
            "[]",
            r#"{"kind": 5}"#,
            r#"{"kind": "listening", "listening_port": 70000}"#,
            r#"{"kind": "listening", "listening_port": "80"}"#,
            r#"{"kind": "welcome"} trailing"#,
            r#"{"kind": "welcome",}"#,
            r#"{"kind": "we\qlcome"}"#,
            r#"{"kind": "nonsense"}"#,
        ] {
            assert_eq!(ev(line), Event::Other, "{line}");
        }
        assert_eq!(parse_line(b"{\"kind\": \"\xff\"}"), Event::Other);
        let deep = format!(
            r#"{{"kind": "welcome", "x": {}{}}}"#,
            "[".repeat(40),
            "]".repeat(40)
        );
        assert_eq!(ev(&deep), Event::Other);
    }

    #[test]
    fn escapes_and_numbers() {
        assert_eq!(
            ev(
                r#"{"kind":"closed","result":"\u0063rowded \ud83d\ude00","x":-1.5e3,"y":[true,false,null]}"#
            ),
            Event::Closed {
                result: "crowded 😀".into()
            }
        );
    }

    #[test]
    fn commands_are_json_lines() {
        assert_eq!(
            set_code("12-ab\"c"),
            b"{\"kind\": \"set-code\", \"code\": \"12-ab\\\"c\"}\n"
        );
        assert_eq!(
            remote("annex", 4000),
            b"{\"kind\": \"remote\", \"name\": \"annex\", \"local_connect_port\": 4000}\n"
        );
        assert_eq!(
            local("annex"),
            b"{\"kind\": \"local\", \"name\": \"annex\", \"bind_interface\": \"127.0.0.1\"}\n"
        );
        assert_eq!(
            session_close(2),
            b"{\"kind\": \"session-close\", \"timeout\": 2}\n"
        );
    }

    #[test]
    fn our_commands_parse_back() {
        // Our own parser reads what we write: the quoting round-trips.
        let line = set_code("a\\b\u{1}\"");
        let text = std::str::from_utf8(&line).unwrap().trim_end();
        let fields = Parser::new(text).object_line().unwrap();
        assert_eq!(fields[1], ("code".into(), Value::Str("a\\b\u{1}\"".into())));
    }
}
