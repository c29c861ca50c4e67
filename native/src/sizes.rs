//! The event's serialized size (`normalize.event_size`: the length of `orjson.dumps(event)`), computed from the
//! JSON text without building a value: whitespace outside strings dropped, string escapes as orjson writes them,
//! numbers as serde_json (= orjson) formats them. Duplicate keys, escaped keys, lone surrogates and deep nesting
//! take the Python path (Python keeps one of the duplicates; the text has both).

use crate::{Fallback, R};

/// Sizes of one JSON document: the whole value, and for an object with an `items` array, each item's.
pub struct Sizes {
    pub total: usize,
    pub items: Option<Vec<usize>>,
}

const MAX_DEPTH: usize = 128;
const MAX_KEYS: usize = 512; // per object, for the linear duplicate check

struct S<'a> {
    b: &'a [u8],
    i: usize,
    keys: Vec<&'a [u8]>,
    items: Option<Vec<usize>>,
}

pub fn sizes(text: &str) -> R<Sizes> {
    let mut s = S { b: text.as_bytes(), i: 0, keys: Vec::with_capacity(64), items: None };
    let total = s.value(0)?;
    s.ws();
    if s.i != s.b.len() {
        return Err(Fallback);
    }
    Ok(Sizes { total, items: s.items })
}

impl<'a> S<'a> {
    fn ws(&mut self) {
        while self.i < self.b.len() && matches!(self.b[self.i], b' ' | b'\t' | b'\n' | b'\r') {
            self.i += 1;
        }
    }

    fn peek(&self) -> R<u8> {
        self.b.get(self.i).copied().ok_or(Fallback)
    }

    fn value(&mut self, depth: usize) -> R<usize> {
        if depth > MAX_DEPTH {
            return Err(Fallback);
        }
        self.ws();
        match self.peek()? {
            b'{' => self.object(depth),
            b'[' => self.array(depth, false),
            b'"' => self.string().map(|(n, _)| n),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            _ => self.number(),
        }
    }

    fn literal(&mut self, word: &[u8]) -> R<usize> {
        if self.b[self.i..].starts_with(word) {
            self.i += word.len();
            Ok(word.len())
        } else {
            Err(Fallback)
        }
    }

    fn object(&mut self, depth: usize) -> R<usize> {
        self.i += 1;
        let mark = self.keys.len();
        let mut n = 2; // {}
        self.ws();
        if self.peek()? == b'}' {
            self.i += 1;
            return Ok(n);
        }
        loop {
            self.ws();
            if self.peek()? != b'"' {
                return Err(Fallback);
            }
            let (klen, raw) = self.string()?;
            if raw.contains(&b'\\') || self.keys[mark..].contains(&raw) || self.keys.len() - mark >= MAX_KEYS {
                return Err(Fallback);
            }
            self.keys.push(raw);
            self.ws();
            if self.peek()? != b':' {
                return Err(Fallback);
            }
            self.i += 1;
            let v = if depth == 0 && raw == b"items" {
                self.ws();
                if self.peek()? == b'[' {
                    self.array(depth + 1, true)?
                } else {
                    self.value(depth + 1)?
                }
            } else {
                self.value(depth + 1)?
            };
            n += klen + 1 + v;
            self.ws();
            match self.peek()? {
                b',' => {
                    self.i += 1;
                    n += 1;
                }
                b'}' => {
                    self.i += 1;
                    self.keys.truncate(mark);
                    return Ok(n);
                }
                _ => return Err(Fallback),
            }
        }
    }

    fn array(&mut self, depth: usize, record_items: bool) -> R<usize> {
        self.i += 1;
        let mut n = 2;
        let mut items = Vec::new(); // only for the record's items: no allocation for the event's own arrays
        self.ws();
        if self.peek()? == b']' {
            self.i += 1;
        } else {
            loop {
                let v = self.value(depth + 1)?;
                if record_items {
                    items.push(v);
                }
                n += v;
                self.ws();
                match self.peek()? {
                    b',' => {
                        self.i += 1;
                        n += 1;
                    }
                    b']' => {
                        self.i += 1;
                        break;
                    }
                    _ => return Err(Fallback),
                }
            }
        }
        if record_items {
            self.items = Some(items);
        }
        Ok(n)
    }

    /// (output length with quotes, the raw bytes between the quotes)
    fn string(&mut self) -> R<(usize, &'a [u8])> {
        let b = self.b;
        let start = self.i + 1;
        let mut i = start;
        let mut n = 2;
        loop {
            // plain bytes (most of a string) in one pass: each is written as is
            let end = plain_run(b, i.min(b.len())).ok_or(Fallback)?;
            n += end - i;
            i = end;
            let c = b[i];
            match c {
                b'"' => {
                    self.i = i + 1;
                    return Ok((n, &b[start..i]));
                }
                b'\\' => {
                    let e = *b.get(i + 1).ok_or(Fallback)?;
                    i += 2;
                    n += match e {
                        b'"' | b'\\' | b'b' | b'f' | b'n' | b'r' | b't' => 2,
                        b'/' => 1,
                        b'u' => {
                            let cp = hex4(b, i)?;
                            i += 4;
                            if (0xD800..0xDC00).contains(&cp) {
                                if b.get(i) != Some(&b'\\') || b.get(i + 1) != Some(&b'u') {
                                    return Err(Fallback);
                                }
                                let lo = hex4(b, i + 2)?;
                                if !(0xDC00..0xE000).contains(&lo) {
                                    return Err(Fallback);
                                }
                                i += 6;
                                4
                            } else if (0xDC00..0xE000).contains(&cp) {
                                return Err(Fallback);
                            } else {
                                escaped_len(cp)
                            }
                        }
                        _ => return Err(Fallback),
                    };
                }
                _ => return Err(Fallback), // a control character (position() stops only at SPECIAL bytes)
            }
        }
    }

    fn number(&mut self) -> R<usize> {
        let start = self.i;
        while self.i < self.b.len() && matches!(self.b[self.i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9') {
            self.i += 1;
        }
        let tok = &self.b[start..self.i];
        if tok.is_empty() {
            return Err(Fallback);
        }
        if tok == b"-0" {
            return Err(Fallback); // Python's 0, serde_json's -0.0
        }
        let digits = if tok[0] == b'-' { &tok[1..] } else { tok };
        let plain = !digits.is_empty() && digits.len() <= 18 && digits.iter().all(u8::is_ascii_digit);
        if plain && !(digits[0] == b'0' && (digits.len() > 1 || tok[0] == b'-')) {
            return Ok(tok.len());
        }
        // floats, big or negative-zero integers: as serde_json parses and writes them (what orjson writes too)
        let text = std::str::from_utf8(tok).map_err(|_| Fallback)?;
        let num: serde_json::Number = serde_json::from_str(text).map_err(|_| Fallback)?;
        Ok(serde_json::to_string(&num).map_err(|_| Fallback)?.len())
    }
}

/// Bytes that end a run of plain string content: the closing quote, an escape, a control character.
const SPECIAL: [bool; 256] = {
    let mut t = [false; 256];
    let mut c = 0;
    while c < 0x20 {
        t[c] = true;
        c += 1;
    }
    t[b'"' as usize] = true;
    t[b'\\' as usize] = true;
    t
};

/// The index of the first SPECIAL byte at or after `from`: eight bytes at a time while none of them is a quote, a
/// backslash or a control character (exact tests on the whole word), then byte by byte (4x fewer steps on the
/// long strings of an event: URIs, user agents, messages, object bodies).
fn plain_run(b: &[u8], from: usize) -> Option<usize> {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let mut i = from;
    while let Some(chunk) = b.get(i..i + 8) {
        let x = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
        let (q, s) = (x ^ (LO * b'"' as u64), x ^ (LO * b'\\' as u64));
        // a zero byte in q or s, or a byte below 0x20 in x (each test exact for "is there any", bytes >= 0x80 never hit)
        let hit = (q.wrapping_sub(LO) & !q) | (s.wrapping_sub(LO) & !s) | (x.wrapping_sub(LO * 0x20) & !x);
        if hit & HI != 0 {
            break;
        }
        i += 8;
    }
    b[i..].iter().position(|&c| SPECIAL[c as usize]).map(|p| i + p)
}

fn hex4(b: &[u8], at: usize) -> R<u32> {
    let h = b.get(at..at + 4).ok_or(Fallback)?;
    let s = std::str::from_utf8(h).map_err(|_| Fallback)?;
    u32::from_str_radix(s, 16).map_err(|_| Fallback)
}

/// Bytes orjson writes for code point `cp` (not a surrogate).
fn escaped_len(cp: u32) -> usize {
    match cp {
        0x08 | 0x09 | 0x0a | 0x0c | 0x0d | 0x22 | 0x5c => 2,
        0..=0x1f => 6,
        0x20..=0x7f => 1,
        0x80..=0x7ff => 2,
        _ => 3,
    }
}
