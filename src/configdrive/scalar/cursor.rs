//! A cursor over the bytes of a scalar: the matchers that stand in for PyYAML's regexes
//! (the implicit resolvers, the timestamp) are written with it.

/// A cursor over the bytes of a scalar, for the matchers that stand in for PyYAML's regexes.
pub(super) struct Cursor<'a> {
    bytes: &'a [u8],
    pub(super) at: usize,
}

impl<'a> Cursor<'a> {
    pub(super) fn new(text: &'a str) -> Self {
        Self {
            bytes: text.as_bytes(),
            at: 0,
        }
    }

    pub(super) fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    pub(super) fn one(&mut self, class: impl Fn(u8) -> bool) -> bool {
        match self.peek() {
            Some(b) if class(b) => {
                self.at += 1;
                true
            }
            _ => false,
        }
    }

    pub(super) fn many(&mut self, class: impl Fn(u8) -> bool + Copy) -> usize {
        let start = self.at;
        while self.one(class) {}
        self.at - start
    }

    pub(super) fn literal(&mut self, text: &str) -> bool {
        if self.bytes[self.at..].starts_with(text.as_bytes()) {
            self.at += text.len();
            true
        } else {
            false
        }
    }

    pub(super) fn sign(&mut self) {
        self.one(|b| b == b'-' || b == b'+');
    }

    pub(super) fn end(&self) -> bool {
        self.at == self.bytes.len()
    }

    /// `(?::[0-5]?[0-9])+`
    pub(super) fn base_60_parts(&mut self) -> bool {
        let mut any = false;
        while self.peek() == Some(b':') {
            self.at += 1;
            let two = matches!(
                self.bytes.get(self.at..self.at + 2),
                Some([b'0'..=b'5', b'0'..=b'9'])
            );
            if two {
                self.at += 2;
            } else if !self.one(digit) {
                return false;
            }
            any = true;
        }
        any
    }
}

pub(super) fn digit(b: u8) -> bool {
    b.is_ascii_digit()
}

pub(super) fn digit_(b: u8) -> bool {
    b.is_ascii_digit() || b == b'_'
}
