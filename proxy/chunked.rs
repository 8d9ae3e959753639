//! The decoder of a framed message body (RFC 9112 §6–7): a Content-Length count, or
//! chunked transfer coding with its chunk-size lines, chunk extensions (skipped) and
//! trailer section (checked for size, dropped). It works over a read buffer and never
//! reads itself, so the caller decides when and how to read.

use std::io;

use bytes::{Bytes, BytesMut};

/// Longest chunk-size line (with its extensions).
const MAX_LINE: usize = 4096;
/// Largest trailer section.
const MAX_TRAILERS: usize = 16 * 1024;

/// Where the decoder is in the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Bytes left of a Content-Length body.
    Length(u64),
    /// Waiting for a chunk-size line.
    Size,
    /// Bytes left of a chunk.
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// Trailer lines after the last chunk, and their size so far.
    Trailers(usize),
    /// The body ended.
    Done,
}

/// A body decoder.
#[derive(Debug)]
pub struct Decoder {
    state: State,
    /// Lines must end with CRLF and hold no control characters but tabs (a client's
    /// body, which a parser in front of the proxy may have read too: any leniency is
    /// room for the two to disagree).
    strict: bool,
}

fn bad(why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why.to_string())
}

impl Decoder {
    /// A body of `n` bytes.
    pub fn length(n: u64) -> Decoder {
        Decoder {
            state: if n == 0 {
                State::Done
            } else {
                State::Length(n)
            },
            strict: false,
        }
    }

    /// A chunked body (an origin's: a bare LF ends a line too).
    pub fn chunked() -> Decoder {
        Decoder {
            state: State::Size,
            strict: false,
        }
    }

    /// A chunked body whose lines must be exact (a client's).
    pub fn chunked_strict() -> Decoder {
        Decoder {
            state: State::Size,
            strict: true,
        }
    }

    /// The body ended.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// The bytes still to come, when known (a Content-Length body).
    pub fn exact_left(&self) -> Option<u64> {
        match self.state {
            State::Length(n) => Some(n),
            State::Done => Some(0),
            _ => None,
        }
    }

    /// How many bytes the next read should make room for, at most `max`: the rest of
    /// the body or of the chunk; a little for a chunk-size or trailer line.
    pub fn want(&self, max: usize) -> usize {
        match self.state {
            State::Length(n) | State::Data(n) => usize::try_from(n).unwrap_or(max).min(max),
            _ => 1024,
        }
    }

    /// `n` bytes of a Content-Length body were taken by the caller, not through
    /// [`Decoder::decode`] (moved socket to socket).
    pub fn consumed(&mut self, n: u64) {
        if let State::Length(left) = self.state {
            let left = left.saturating_sub(n);
            self.state = if left == 0 {
                State::Done
            } else {
                State::Length(left)
            };
        }
    }

    /// The next data in `buf`, taken off it: Some(data), or None when `buf` holds no
    /// more of the body (read more, unless `is_done`).
    ///
    /// # Errors
    /// A malformed chunk-size line, a chunk not followed by CRLF, trailers too large.
    pub fn decode(&mut self, buf: &mut BytesMut) -> io::Result<Option<Bytes>> {
        loop {
            match self.state {
                State::Done => return Ok(None),
                State::Length(n) | State::Data(n) => {
                    if buf.is_empty() {
                        return Ok(None);
                    }
                    let take = usize::try_from(n).unwrap_or(usize::MAX).min(buf.len());
                    let left = n - take as u64;
                    self.state = match self.state {
                        State::Length(_) if left == 0 => State::Done,
                        State::Length(_) => State::Length(left),
                        _ if left == 0 => State::DataEnd,
                        _ => State::Data(left),
                    };
                    return Ok(Some(buf.split_to(take).freeze()));
                }
                State::Size => {
                    let Some(line) = take_line(buf, self.strict)? else {
                        return Ok(None);
                    };
                    // Hex digits only (whitespace allowed before an extension).
                    let size = line[..]
                        .split(|&b| b == b';')
                        .next()
                        .map(<[u8]>::trim_ascii_end)
                        .filter(|s| {
                            !s.is_empty() && s.len() <= 16 && s.iter().all(u8::is_ascii_hexdigit)
                        })
                        .and_then(|s| std::str::from_utf8(s).ok())
                        .and_then(|s| u64::from_str_radix(s, 16).ok())
                        .ok_or_else(|| bad("bad chunk size"))?;
                    self.state = if size == 0 {
                        State::Trailers(0)
                    } else {
                        State::Data(size)
                    };
                }
                State::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(None);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(bad("no CRLF after a chunk"));
                    }
                    let _ = buf.split_to(2);
                    self.state = State::Size;
                }
                State::Trailers(seen) => {
                    let Some(line) = take_line(buf, self.strict)? else {
                        return Ok(None);
                    };
                    if line.is_empty() {
                        self.state = State::Done;
                        return Ok(None);
                    }
                    let seen = seen + line.len() + 2;
                    if seen > MAX_TRAILERS {
                        return Err(bad("trailers too large"));
                    }
                    self.state = State::Trailers(seen);
                }
            }
        }
    }
}

/// A line (without its CRLF) at the start of `buf`, taken off it; None if incomplete.
/// `strict`: it must end with CRLF and hold no control character but tabs.
fn take_line(buf: &mut BytesMut, strict: bool) -> io::Result<Option<BytesMut>> {
    match buf.iter().position(|&b| b == b'\n') {
        Some(i) if i > MAX_LINE => Err(bad("line too long")),
        Some(i) => {
            let mut line = buf.split_to(i + 1);
            line.truncate(i);
            let cr = line.last() == Some(&b'\r');
            if cr {
                line.truncate(i - 1);
            }
            if strict && (!cr || line.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f)) {
                return Err(bad(
                    "a chunk line not ended by CRLF, or with a control character",
                ));
            }
            Ok(Some(line))
        }
        None if buf.len() > MAX_LINE => Err(bad("line too long")),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Everything `input` decodes to, fed `step` bytes at a time, and what is left of
    /// the last part fed.
    fn run(mut d: Decoder, input: &[u8], step: usize) -> io::Result<(Vec<u8>, Vec<u8>)> {
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for part in input.chunks(step) {
            buf.extend_from_slice(part);
            while let Some(b) = d.decode(&mut buf)? {
                out.extend_from_slice(&b);
            }
            if d.is_done() {
                break;
            }
        }
        Ok((out, buf.to_vec()))
    }

    #[test]
    fn chunked_in_any_split_leaves_the_next_message() {
        let msg = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        for step in [1, 2, 3, 7, msg.len()] {
            let mut d = Decoder::chunked();
            let (out, _) = run(Decoder::chunked(), msg, step).expect("decodes");
            assert_eq!(out, b"hello world", "step {step}");
            let mut buf = BytesMut::from(&msg[..]);
            while d.decode(&mut buf).expect("decodes").is_some() {}
            assert!(d.is_done());
            assert_eq!(&buf[..], b"NEXT");
        }
    }

    #[test]
    fn length_stops_at_its_count() {
        let mut d = Decoder::length(10);
        d.consumed(7);
        assert_eq!(d.exact_left(), Some(3));
        assert_eq!(d.exact_left(), Some(3));
        let mut buf = BytesMut::from(&b"abcdef"[..]);
        assert_eq!(
            d.decode(&mut buf).expect("ok").as_deref(),
            Some(&b"abc"[..])
        );
        assert!(d.is_done());
        assert_eq!(d.decode(&mut buf).expect("ok"), None);
        assert_eq!(&buf[..], b"def");
    }

    #[test]
    fn malformed_chunks_are_errors() {
        for bad in [
            &b"zz\r\n"[..],
            b"-1\r\n",
            b"5\r\nhelloXX",
            b"11111111111111111\r\n",
        ] {
            let mut buf = BytesMut::from(bad);
            let mut d = Decoder::chunked();
            let r = (|| {
                while d.decode(&mut buf)?.is_some() {}
                Ok::<_, io::Error>(())
            })();
            assert!(r.is_err(), "{bad:?}");
        }
        let mut buf = BytesMut::from(vec![b'1'; MAX_LINE + 1].as_slice());
        assert!(Decoder::chunked().decode(&mut buf).is_err());
        // Too long even when its end came with it.
        let long = format!("1;{}\r\nx\r\n0\r\n\r\n", "e".repeat(MAX_LINE));
        let mut buf = BytesMut::from(long.as_bytes());
        assert!(Decoder::chunked().decode(&mut buf).is_err());
        // A client's lines must be exact; an origin's may end with a bare LF.
        for lax in [
            &b"5\nhello\r\n0\r\n\r\n"[..],
            b"5;a\rb\r\nhello\r\n0\r\n\r\n",
            b"5\r\nhello\r\n0\r\nX: \x01\r\n\r\n",
        ] {
            let mut d = Decoder::chunked_strict();
            let mut buf = BytesMut::from(lax);
            let r = (|| {
                while d.decode(&mut buf)?.is_some() {}
                Ok::<_, io::Error>(())
            })();
            assert!(r.is_err(), "strict took {lax:?}");
        }
        let mut d = Decoder::chunked();
        let mut buf = BytesMut::from(&b"5\nhello\r\n0\n\n"[..]);
        while d.decode(&mut buf).expect("lenient").is_some() {}
        assert!(d.is_done());
    }
}
