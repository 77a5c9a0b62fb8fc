//! Making what the other side sent harmless for the operator's terminal.
//!
//! Everything that comes from the server or the target (the greeting, thread names, answers,
//! live stderr, process names) may carry control sequences: OSC 52 writes the clipboard, OSC 0
//! the title, CSI 2J clears the screen, and 8-bit C1 controls (U+009B is CSI) do the same on
//! terminals that honour them. On a terminal, and unless `--raw`, the client shows them as
//! text instead:
//!
//! * C0 controls except `\n` and `\t` (so also ESC and `\r`) and DEL: `\x1b`, `\r`, `\x7f`...
//! * C1 controls, written as UTF-8 (U+0080 to U+009F): `\u{9b}`...
//! * bytes that are not UTF-8 (a lone 0x9B is a C1 control to an 8-bit terminal): `\x9b`.
//!
//! Everything else, including all other Unicode, is passed as it is. [`Escaper`] works on a
//! stream: a UTF-8 sequence split between two reads is kept until it is whole, so the cost is
//! linear and the output the same however the input was cut.

/// A streaming escaper: feed it chunks, get printable text.
#[derive(Debug, Default)]
pub struct Escaper {
    /// The start of a UTF-8 sequence that the last chunk cut (at most 3 bytes).
    carry: Vec<u8>,
}

impl Escaper {
    /// Appends the escaped form of `input` to `out`. A trailing incomplete UTF-8 sequence is
    /// kept for the next call (or [`finish`](Escaper::finish)).
    pub fn push(&mut self, mut input: &[u8], out: &mut String) {
        // Complete a cut sequence byte by byte (it is at most 3 bytes long), then go on.
        while !self.carry.is_empty() {
            let Some((&byte, rest)) = input.split_first() else {
                return;
            };
            input = rest;
            let mut pending = std::mem::take(&mut self.carry);
            pending.push(byte);
            self.escape(&pending, out);
        }
        self.escape(input, out);
    }

    /// Escapes `input` whole, keeping a cut sequence at its end in the carry.
    fn escape(&mut self, mut input: &[u8], out: &mut String) {
        out.reserve(input.len());
        loop {
            match std::str::from_utf8(input) {
                Ok(text) => {
                    push_str(text, out);
                    return;
                }
                Err(err) => {
                    let (valid, rest) = input.split_at(err.valid_up_to());
                    push_str(std::str::from_utf8(valid).expect("valid"), out);
                    match err.error_len() {
                        Some(bad) => {
                            for &byte in &rest[..bad] {
                                push_byte(byte, out);
                            }
                            input = &rest[bad..];
                        }
                        None => {
                            self.carry = rest.to_vec();
                            return;
                        }
                    }
                }
            }
        }
    }

    /// Escapes what is left of a cut sequence at the end of the stream.
    pub fn finish(&mut self, out: &mut String) {
        for byte in std::mem::take(&mut self.carry) {
            push_byte(byte, out);
        }
    }
}

/// Whether `c` is shown escaped.
fn is_unsafe(c: char) -> bool {
    matches!(c, '\0'..='\x08' | '\x0b'..='\x1f' | '\x7f'..='\u{9f}')
}

fn push_char(c: char, out: &mut String) {
    if !is_unsafe(c) {
        out.push(c);
    } else if c == '\r' {
        out.push_str("\\r");
    } else if (c as u32) < 0x80 {
        out.push_str(&format!("\\x{:02x}", c as u32));
    } else {
        out.push_str(&format!("\\u{{{:x}}}", c as u32));
    }
}

fn push_str(text: &str, out: &mut String) {
    let mut rest = text;
    while let Some(at) = rest.find(is_unsafe) {
        out.push_str(&rest[..at]);
        let c = rest[at..].chars().next().expect("found");
        push_char(c, out);
        rest = &rest[at + c.len_utf8()..];
    }
    out.push_str(rest);
}

fn push_byte(byte: u8, out: &mut String) {
    out.push_str(&format!("\\x{byte:02x}"));
}

/// The escaped form of `bytes` (one piece, nothing carried).
pub fn escape_bytes(bytes: &[u8]) -> String {
    let mut escaper = Escaper::default();
    let mut out = String::new();
    escaper.push(bytes, &mut out);
    escaper.finish(&mut out);
    out
}

/// The escaped form of `text`; also for one-line messages (a `\n` in it is escaped too, so the
/// message stays one line).
pub fn escape_line(text: &str) -> String {
    escape_bytes(text.as_bytes()).replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_are_shown_and_text_is_kept() {
        assert_eq!(escape_bytes(b"plain text\n\ttab"), "plain text\n\ttab");
        assert_eq!(
            escape_bytes(b"\x1b]52;c;aGVsbG8=\x07"),
            "\\x1b]52;c;aGVsbG8=\\x07"
        );
        assert_eq!(escape_bytes(b"\x1b]0;pwned\x1b\\"), "\\x1b]0;pwned\\x1b\\");
        assert_eq!(escape_bytes(b"\x1b[2J"), "\\x1b[2J");
        assert_eq!(escape_bytes("\u{9b}2J".as_bytes()), "\\u{9b}2J");
        assert_eq!(escape_bytes(b"\x9b2J"), "\\x9b2J");
        assert_eq!(escape_bytes(b"a\rb\x7f\x00"), "a\\rb\\x7f\\x00");
        assert_eq!(escape_bytes("héllo ✓ \u{a0}".as_bytes()), "héllo ✓ \u{a0}");
        assert_eq!(escape_line("two\nlines\x1b"), "two\\nlines\\x1b");
    }

    #[test]
    fn a_sequence_cut_anywhere_escapes_the_same() {
        let input = "ok é \u{9b}2J ✓ \x1b[0m 🦀\n".as_bytes();
        let whole = escape_bytes(input);
        for cut in 0..=input.len() {
            for second in cut..=input.len() {
                let mut escaper = Escaper::default();
                let mut out = String::new();
                escaper.push(&input[..cut], &mut out);
                escaper.push(&input[cut..second], &mut out);
                escaper.push(&input[second..], &mut out);
                escaper.finish(&mut out);
                assert_eq!(out, whole, "cut at {cut} and {second}");
            }
        }
        // Byte by byte, with invalid bytes mixed in.
        let odd = b"\xc3\xa9\xc2\x9b\xff\xe2\x9c\x93\xe2\x9c\xc2";
        let mut escaper = Escaper::default();
        let mut out = String::new();
        for byte in odd {
            escaper.push(std::slice::from_ref(byte), &mut out);
        }
        escaper.finish(&mut out);
        assert_eq!(out, escape_bytes(odd));
        assert_eq!(out, "é\\u{9b}\\xff✓\\xe2\\x9c\\xc2");
    }
}
