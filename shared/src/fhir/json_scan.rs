//! A validating single-pass JSON scanner for the hot path: it checks syntax
//! (strings, escapes, numbers, literals, nesting) and hands back byte
//! positions, building nothing. String bodies are skipped eight bytes at a
//! time. UTF-8 is checked by the caller, once per document.

use std::borrow::Cow;

/// Deepest nesting accepted (hostile input must not exhaust anything).
const MAX_DEPTH: usize = 256;

/// Why a document is not valid JSON (a category, never the content).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ScanError {
    /// The document ends inside a value.
    #[error("truncated JSON")]
    Eof,
    /// Anything else that is not JSON.
    #[error("invalid JSON syntax")]
    Syntax,
    /// Nested deeper than the scanner accepts.
    #[error("JSON nested too deeply")]
    TooDeep,
}

/// A position in a JSON document.
pub struct Scan<'a> {
    b: &'a [u8],
    /// Index of the next unread byte.
    pub i: usize,
    /// Set when whitespace skipped since the last reset held a line break.
    pub newline: bool,
}

/// First index at or after `j` holding `"`, `\` or a control byte.
#[inline]
fn find_special(b: &[u8], mut j: usize) -> Option<usize> {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    while let Some(chunk) = b.get(j..j + 8) {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let w = u64::from_le_bytes(word);
        let quote = w ^ (LO * u64::from(b'"'));
        let slash = w ^ (LO * u64::from(b'\\'));
        // Per byte: zero after the xor, or below 0x20. Borrows only create
        // false hits above a true one, so the lowest hit is exact.
        let hits = ((quote.wrapping_sub(LO) & !quote)
            | (slash.wrapping_sub(LO) & !slash)
            | (w.wrapping_sub(LO * 0x20) & !w))
            & HI;
        if hits != 0 {
            return Some(j + (hits.trailing_zeros() / 8) as usize);
        }
        j += 8;
    }
    b.get(j..)?
        .iter()
        .position(|&c| c == b'"' || c == b'\\' || c < 0x20)
        .map(|p| j + p)
}

impl<'a> Scan<'a> {
    /// A scanner at the start of `b`.
    pub fn new(b: &'a [u8]) -> Self {
        Self {
            b,
            i: 0,
            newline: false,
        }
    }

    /// The next byte after whitespace, without consuming it.
    #[inline]
    pub fn peek(&mut self) -> Option<u8> {
        while let Some(&c) = self.b.get(self.i) {
            match c {
                b' ' | b'\t' => self.i += 1,
                b'\n' | b'\r' => {
                    self.newline = true;
                    self.i += 1;
                }
                _ => return Some(c),
            }
        }
        None
    }

    /// Consumes `c` (after whitespace).
    #[inline]
    pub fn expect(&mut self, c: u8) -> Result<(), ScanError> {
        match self.peek() {
            Some(x) if x == c => {
                self.i += 1;
                Ok(())
            }
            Some(_) => Err(ScanError::Syntax),
            None => Err(ScanError::Eof),
        }
    }

    /// True at the end of the document (after whitespace).
    pub fn at_end(&mut self) -> bool {
        self.peek().is_none()
    }

    /// Consumes a string (after whitespace); returns its raw body's range and
    /// whether it holds escapes.
    #[inline]
    pub fn string(&mut self) -> Result<(usize, usize, bool), ScanError> {
        self.expect(b'"')?;
        let start = self.i;
        let mut j = start;
        let mut escaped = false;
        loop {
            j = find_special(self.b, j).ok_or(ScanError::Eof)?;
            match self.b[j] {
                b'"' => {
                    self.i = j + 1;
                    return Ok((start, j, escaped));
                }
                b'\\' => {
                    escaped = true;
                    match self.b.get(j + 1) {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => j += 2,
                        Some(b'u') => {
                            let hex = self.b.get(j + 2..j + 6).ok_or(ScanError::Eof)?;
                            if !hex.iter().all(u8::is_ascii_hexdigit) {
                                return Err(ScanError::Syntax);
                            }
                            j += 6;
                        }
                        Some(_) => return Err(ScanError::Syntax),
                        None => return Err(ScanError::Eof),
                    }
                }
                // A raw control byte: not allowed inside a JSON string.
                _ => return Err(ScanError::Syntax),
            }
        }
    }

    /// Consumes a string and returns its value.
    pub fn string_value(&mut self) -> Result<Cow<'a, str>, ScanError> {
        let (start, end, escaped) = self.string()?;
        let b = self.b;
        if escaped {
            serde_json::from_slice::<String>(&b[start - 1..=end])
                .map(Cow::Owned)
                .map_err(|_| ScanError::Syntax)
        } else {
            std::str::from_utf8(&b[start..end])
                .map(Cow::Borrowed)
                .map_err(|_| ScanError::Syntax)
        }
    }

    /// Consumes `true`, `false`, `null` or a number.
    fn literal(&mut self) -> Result<(), ScanError> {
        let rest = &self.b[self.i..];
        for lit in [&b"true"[..], b"false", b"null"] {
            if rest.starts_with(lit) {
                self.i += lit.len();
                return Ok(());
            }
        }
        let digits = |j: usize| {
            rest.get(j..)
                .map_or(0, |r| r.iter().take_while(|c| c.is_ascii_digit()).count())
        };
        let mut j = usize::from(rest.first() == Some(&b'-'));
        match rest.get(j) {
            Some(b'0') => j += 1,
            Some(b'1'..=b'9') => j += digits(j),
            Some(_) => return Err(ScanError::Syntax),
            None => return Err(ScanError::Eof),
        }
        if rest.get(j) == Some(&b'.') {
            let n = digits(j + 1);
            if n == 0 {
                return Err(ScanError::Syntax);
            }
            j += 1 + n;
        }
        if matches!(rest.get(j), Some(b'e' | b'E')) {
            j += 1;
            if matches!(rest.get(j), Some(b'+' | b'-')) {
                j += 1;
            }
            let n = digits(j);
            if n == 0 {
                return Err(ScanError::Syntax);
            }
            j += n;
        }
        self.i += j;
        Ok(())
    }

    /// Consumes an object key and its colon.
    #[inline]
    fn key_colon(&mut self) -> Result<(), ScanError> {
        self.string()?;
        self.expect(b':')
    }

    /// Consumes any one value, checking its syntax (iteratively, so depth
    /// costs no stack).
    pub fn skip_value(&mut self) -> Result<(), ScanError> {
        // One bit per open container: 1 = object, 0 = array.
        let mut kinds = [0u64; MAX_DEPTH / 64];
        let mut depth = 0usize;
        loop {
            // A value is expected here.
            match self.peek() {
                Some(b'{') => {
                    self.i += 1;
                    if self.peek() == Some(b'}') {
                        self.i += 1;
                    } else {
                        if depth == MAX_DEPTH {
                            return Err(ScanError::TooDeep);
                        }
                        kinds[depth / 64] |= 1 << (depth % 64);
                        depth += 1;
                        self.key_colon()?;
                        continue;
                    }
                }
                Some(b'[') => {
                    self.i += 1;
                    if self.peek() == Some(b']') {
                        self.i += 1;
                    } else {
                        if depth == MAX_DEPTH {
                            return Err(ScanError::TooDeep);
                        }
                        kinds[depth / 64] &= !(1 << (depth % 64));
                        depth += 1;
                        continue;
                    }
                }
                Some(b'"') => {
                    self.string()?;
                }
                Some(_) => self.literal()?,
                None => return Err(ScanError::Eof),
            }
            // A value ended: close containers until one goes on.
            loop {
                if depth == 0 {
                    return Ok(());
                }
                let top = depth - 1;
                let object = kinds[top / 64] & (1 << (top % 64)) != 0;
                match (self.peek(), object) {
                    (Some(b','), true) => {
                        self.i += 1;
                        self.key_colon()?;
                        break;
                    }
                    (Some(b','), false) => {
                        self.i += 1;
                        break;
                    }
                    (Some(b'}'), true) | (Some(b']'), false) => {
                        self.i += 1;
                        depth -= 1;
                    }
                    (Some(_), _) => return Err(ScanError::Syntax),
                    (None, _) => return Err(ScanError::Eof),
                }
            }
        }
    }

    /// Consumes an object, calling `field` with each key; `field` must
    /// consume exactly that key's value.
    pub fn object(
        &mut self,
        mut field: impl FnMut(&mut Self, &str) -> Result<(), ScanError>,
    ) -> Result<(), ScanError> {
        self.sequence(b'{', b'}', |s| {
            let key = s.string_value()?;
            s.expect(b':')?;
            field(s, &key)
        })
    }

    /// Consumes an array, calling `element` for each element; `element`
    /// must consume exactly one value.
    pub fn array(
        &mut self,
        element: impl FnMut(&mut Self) -> Result<(), ScanError>,
    ) -> Result<(), ScanError> {
        self.sequence(b'[', b']', element)
    }

    /// Consumes `open`, comma-separated items read by `item`, and `close`.
    fn sequence(
        &mut self,
        open: u8,
        close: u8,
        mut item: impl FnMut(&mut Self) -> Result<(), ScanError>,
    ) -> Result<(), ScanError> {
        self.expect(open)?;
        if self.peek() == Some(close) {
            self.i += 1;
            return Ok(());
        }
        loop {
            item(self)?;
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(c) if c == close => {
                    self.i += 1;
                    return Ok(());
                }
                Some(_) => return Err(ScanError::Syntax),
                None => return Err(ScanError::Eof),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid(doc: &str) -> bool {
        let mut s = Scan::new(doc.as_bytes());
        s.skip_value().is_ok() && s.at_end()
    }

    #[test]
    fn accepts_exactly_what_serde_json_accepts() {
        let cases = [
            r#"{"a":[1,-2.5e+3,0,true,false,null,"x\"y\\z\u00e9"],"b":{}}"#,
            r#" [ {} , [] , "" ] "#,
            "0",
            "-0.1E-2",
            r#""\ud83d\ude00""#,
            r#"{"a":01}"#,
            r#"{"a":1.}"#,
            r#"{"a":.5}"#,
            r#"{"a":tru}"#,
            r#"{"a":truex}"#,
            r#"{"a" 1}"#,
            r#"{"a":1,}"#,
            r#"[1,]"#,
            r#"[1 2]"#,
            r#"{"a":"b"]"#,
            "{\"a\":\"line\nbreak\"}",
            r#""\x""#,
            r#""\u12g4""#,
            r#"{"a":"#,
            r#"{"a":"unterminated"#,
            "{1:2}",
            "+1",
            "[-]",
            "1e",
            "\"a\" \"b\"",
        ];
        for c in cases {
            let serde = serde_json::from_str::<serde_json::Value>(c).is_ok();
            assert_eq!(valid(c), serde, "{c}");
        }
    }

    #[test]
    fn finds_specials_across_word_boundaries() {
        let mut doc = String::from("\"");
        for n in 0..40 {
            doc.push_str(&"x".repeat(n));
            doc.push_str("\\\"");
        }
        doc.push('"');
        assert!(valid(&doc));
        for cut in 1..doc.len() - 1 {
            assert!(!valid(&doc[..cut]), "prefix of {cut} bytes");
        }
    }

    #[test]
    fn hostile_nesting_is_refused_not_overflowed() {
        let deep = "[".repeat(100_000);
        let mut s = Scan::new(deep.as_bytes());
        assert_eq!(s.skip_value(), Err(ScanError::TooDeep));
        let ok = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert!(valid(&ok));
    }

    #[test]
    fn decodes_escaped_strings() {
        let mut s = Scan::new(br#""a\/b\u0041""#);
        assert_eq!(s.string_value().unwrap(), "a/bA");
    }
}
