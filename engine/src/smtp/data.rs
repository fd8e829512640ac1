//! Dot-stuffing for the DATA phase (RFC 5321 §4.5.2), streaming in bounded chunks.
//!
//! The message is given unstuffed (headers + body with CRLFs). The encoder copies it into a
//! caller-provided buffer a chunk at a time, doubling a '.' at the start of every line, and ends
//! with `CRLF.CRLF`. A line is taken to start after every LF, so a bare LF followed by '.' is
//! stuffed too (no server can then mistake `LF.CRLF` for the end of data).

/// Chunk size for message writes: large writes, bounded memory.
pub const DATA_CHUNK: usize = 64 * 1024;

/// Streams one message through dot-stuffing.
#[derive(Debug, Clone)]
pub struct DotStuffer<'m> {
    msg: &'m [u8],
    pos: usize,
    line_start: bool,
    done: bool,
}

impl<'m> DotStuffer<'m> {
    /// Streams `msg` (unstuffed, CRLF line endings) through dot-stuffing.
    pub fn new(msg: &'m [u8]) -> Self {
        Self {
            msg,
            pos: 0,
            line_start: true,
            done: false,
        }
    }

    /// Whether everything, terminator included, has been produced.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Append the next piece of the stuffed message (about `chunk` bytes; a little more when the
    /// terminator or a stuffing dot lands at the end) to `out`. Returns false once everything,
    /// terminator included, has been produced.
    pub fn fill(&mut self, out: &mut Vec<u8>, chunk: usize) -> bool {
        if self.done {
            return false;
        }
        let chunk = chunk.max(1);
        let goal = out.len() + chunk;
        while self.pos < self.msg.len() && out.len() < goal {
            if self.line_start && self.msg[self.pos] == b'.' {
                out.push(b'.');
            }
            let rest = &self.msg[self.pos..];
            let room = goal.saturating_sub(out.len()).max(1);
            let window = &rest[..rest.len().min(room)];
            // Up to the next line that starts with a dot (one vectorised search for "\n."
            // instead of one per line: most lines have none), or to the chunk's end.
            let take = memchr::memmem::find(window, b"\n.").map_or(window.len(), |i| i + 1);
            out.extend_from_slice(&rest[..take]);
            self.pos += take;
            self.line_start = rest[take - 1] == b'\n';
        }
        if self.pos >= self.msg.len() {
            if self.msg.is_empty() || self.msg.ends_with(b"\r\n") {
                out.extend_from_slice(b".\r\n");
            } else {
                out.extend_from_slice(b"\r\n.\r\n");
            }
            self.done = true;
        }
        true
    }
}

/// The whole stuffed message with its terminator (tests and small messages).
pub fn dot_stuff(msg: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(msg.len() + 8);
    let mut s = DotStuffer::new(msg);
    while s.fill(&mut out, DATA_CHUNK) {}
    out
}

/// Undo dot-stuffing: what a server stores. `data` is everything after the 354 up to and
/// including the terminating `.CRLF` line. Returns `None` without a terminator.
pub fn dot_unstuff(data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(data.len());
    let mut pos = 0;
    while pos < data.len() {
        let rest = &data[pos..];
        let len = memchr::memchr(b'\n', rest).map_or(rest.len(), |i| i + 1);
        let line = &rest[..len];
        if line == b".\r\n" {
            return Some(out);
        }
        out.extend_from_slice(line.strip_prefix(b".").unwrap_or(line));
        pos += len;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn stuffs_leading_dots() {
        assert_eq!(dot_stuff(b""), b".\r\n");
        assert_eq!(dot_stuff(b"a\r\n"), b"a\r\n.\r\n");
        assert_eq!(dot_stuff(b"a"), b"a\r\n.\r\n");
        assert_eq!(
            dot_stuff(b".hidden\r\n.\r\nx\r\n..two\r\n"),
            b"..hidden\r\n..\r\nx\r\n...two\r\n.\r\n"
        );
        assert_eq!(dot_stuff(b"a\n.\r\n"), b"a\n..\r\n.\r\n");
        assert_eq!(dot_stuff(b"a.b\r\n"), b"a.b\r\n.\r\n");
    }

    #[test]
    fn chunks_are_bounded_and_a_long_line_split() {
        let mut msg = vec![b'x'; 300];
        msg.extend_from_slice(b"\r\n.y\r\n");
        let mut s = DotStuffer::new(&msg);
        let mut all = Vec::new();
        let mut n = 0;
        loop {
            let mut out = Vec::new();
            if !s.fill(&mut out, 64) {
                break;
            }
            assert!(out.len() <= 64 + 5, "chunk of {}", out.len());
            all.extend_from_slice(&out);
            n += 1;
        }
        assert!(n >= 5);
        assert_eq!(all, dot_stuff(&msg));
        assert_eq!(dot_unstuff(&all).unwrap(), msg);
    }

    proptest! {
        #[test]
        fn stuffing_matches_the_rule_byte_by_byte(
            parts in proptest::collection::vec(prop_oneof!["\\.", "\r\n", "\n", "\r", "[a-z. ]{0,5}", "[a-z]{60,90}\r\n"], 0..60),
            chunk in 1usize..200,
        ) {
            let msg: Vec<u8> = parts.concat().into_bytes();
            let mut s = DotStuffer::new(&msg);
            let mut wire = Vec::new();
            while s.fill(&mut wire, chunk) {}
            // The mock MTA's stuffer, written apart from this one byte by byte from RFC 5321
            // 4.5.2, is the reference.
            prop_assert_eq!(wire, mock_mta::dot_stuff(&msg));
        }

        #[test]
        fn stuff_unstuff_roundtrip(
            parts in proptest::collection::vec(prop_oneof!["\\.", "\r\n", "\n", "\r", "[a-z. ]{0,5}"], 0..40),
            chunk in 1usize..50,
        ) {
            let msg: Vec<u8> = parts.concat().into_bytes();
            let mut s = DotStuffer::new(&msg);
            let mut wire = Vec::new();
            while s.fill(&mut wire, chunk) {}
            prop_assert_eq!(&wire, &dot_stuff(&msg));
            // The only ".CRLF" line is the last one.
            let body = &wire[..wire.len() - 3];
            let lines: Vec<&[u8]> = body.split(|&b| b == b'\n').collect();
            for line in &lines[..lines.len().saturating_sub(1)] {
                prop_assert!(!line.starts_with(b".") || line.starts_with(b".."));
            }
            prop_assert!(wire.ends_with(b"\r\n.\r\n") || wire == b".\r\n");
            let mut expected = msg.clone();
            if !expected.is_empty() && !expected.ends_with(b"\r\n") {
                expected.extend_from_slice(b"\r\n");
            }
            prop_assert_eq!(dot_unstuff(&wire), Some(expected));
        }
    }
}
