//! Which bytes a viewer sends are a person's input: a scanner over the client half of an RFB
//! stream (RFC 6143, plus the QEMU and noVNC extensions qemu understands).
//!
//! A viewer is idle when it sends no keyboard, pointer or clipboard message. Everything else a
//! viewer sends (framebuffer update requests, fences, encodings) flows whether or not anyone
//! sits in front of it, so counting bytes would keep an abandoned tab alive forever.
//!
//! The scanner only reads; the bytes pass to qemu unchanged. When it meets something it
//! cannot size (a security type qemu does not offer us, an unknown message), it stops
//! recognising input: the viewer then counts as idle, the safe direction for a console that
//! must not be held forever.

/// How a client's security handshake will look: qemu offers exactly one type, decided by
/// whether `VNC_PASSWORD` is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Auth {
    /// Security type None (1): nothing after the type.
    None,
    /// VNC authentication (2): a 16-byte response to the challenge.
    Vnc,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// "RFB 003.00x\n": 12 bytes.
    Version,
    /// RFB 3.7+: the security type the client picked, 1 byte.
    SecurityType,
    /// The VNC authentication response, 16 bytes.
    AuthResponse,
    /// ClientInit (the shared flag), 1 byte.
    ClientInit,
    /// Normal client-to-server messages.
    Messages,
    /// Something we cannot size; nothing more is recognised.
    Lost,
}

/// Feed it every byte the viewer sends, in order; it says when input went by.
#[derive(Debug)]
pub(super) struct InputScanner {
    auth: Auth,
    state: State,
    /// Bytes of the current unit not yet complete.
    pending: Vec<u8>,
}

/// What one message is, once enough of it is there to tell.
enum Size {
    /// Complete after this many bytes; `true` when it is a person's input.
    Known(usize, bool),
    /// Need at least this many bytes to tell.
    NeedHeader(usize),
    Unknown,
}

/// The size of the client message at the start of `buf` (non-empty).
fn message_size(buf: &[u8]) -> Size {
    let need = |n: usize| buf.len() < n;
    let u16_at = |i: usize| usize::from(u16::from_be_bytes([buf[i], buf[i + 1]]));
    match buf[0] {
        0 => Size::Known(20, false), // SetPixelFormat
        2 if need(4) => Size::NeedHeader(4),
        2 => Size::Known(4 + 4 * u16_at(2), false), // SetEncodings
        3 => Size::Known(10, false),                // FramebufferUpdateRequest
        4 => Size::Known(8, true),                  // KeyEvent
        5 => Size::Known(6, true),                  // PointerEvent
        6 if need(8) => Size::NeedHeader(8),
        6 => {
            // ClientCutText; a negative length is the extended-clipboard form (its size).
            let raw = i32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]);
            Size::Known(8 + raw.unsigned_abs() as usize, true)
        }
        150 => Size::Known(10, false), // EnableContinuousUpdates
        248 if need(9) => Size::NeedHeader(9),
        248 => Size::Known(9 + usize::from(buf[8]), false), // ClientFence
        250 => Size::Known(4, false),                       // xvp
        251 if need(8) => Size::NeedHeader(8),
        251 => Size::Known(8 + 16 * usize::from(buf[6]), false), // SetDesktopSize
        255 if need(4) => Size::NeedHeader(4),
        255 => match (buf[1], u16_at(2)) {
            (0, _) => Size::Known(12, true),     // QEMU extended key event
            (1, 0 | 1) => Size::Known(4, false), // QEMU audio enable/disable
            (1, 2) => Size::Known(10, false),    // QEMU audio set format
            _ => Size::Unknown,
        },
        _ => Size::Unknown,
    }
}

impl InputScanner {
    pub(super) fn new(auth: Auth) -> Self {
        Self {
            auth,
            state: State::Version,
            pending: Vec::new(),
        }
    }

    /// Whether nothing more will be recognised as input.
    pub(super) fn lost(&self) -> bool {
        self.state == State::Lost
    }

    /// Consumes `bytes`; true when they completed at least one input message.
    pub(super) fn feed(&mut self, mut bytes: &[u8]) -> bool {
        let mut input = false;
        while !bytes.is_empty() && self.state != State::Lost {
            let want = match self.state {
                State::Version => 12,
                State::SecurityType | State::ClientInit => 1,
                State::AuthResponse => 16,
                State::Messages => {
                    if self.pending.is_empty() {
                        self.pending.push(bytes[0]);
                        bytes = &bytes[1..];
                    }
                    match message_size(&self.pending) {
                        Size::Known(n, _) | Size::NeedHeader(n) => n,
                        Size::Unknown => {
                            self.state = State::Lost;
                            break;
                        }
                    }
                }
                State::Lost => break,
            };
            let take = want.saturating_sub(self.pending.len()).min(bytes.len());
            self.pending.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.pending.len() < want {
                continue;
            }
            input |= self.complete();
        }
        input
    }

    /// The unit in `pending` is complete (or its header is): move on; true for input.
    fn complete(&mut self) -> bool {
        let unit = std::mem::take(&mut self.pending);
        match self.state {
            State::Version => {
                // "RFB 003.003\n": the server picks the type, the client sends none.
                self.state = if unit.get(4..11) == Some(b"003.003") {
                    self.after_security(self.auth)
                } else {
                    State::SecurityType
                };
            }
            State::SecurityType => {
                self.state = match unit[0] {
                    1 => self.after_security(Auth::None),
                    2 => self.after_security(Auth::Vnc),
                    _ => State::Lost,
                };
            }
            State::AuthResponse => self.state = State::ClientInit,
            State::ClientInit => self.state = State::Messages,
            State::Messages => match message_size(&unit) {
                Size::Known(n, input) if unit.len() >= n => return input,
                // Only the header so far: keep it, the next round reads the rest.
                Size::Known(..) | Size::NeedHeader(_) => self.pending = unit,
                Size::Unknown => self.state = State::Lost,
            },
            State::Lost => {}
        }
        false
    }

    fn after_security(&self, auth: Auth) -> State {
        match auth {
            Auth::None => State::ClientInit,
            Auth::Vnc => State::AuthResponse,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What noVNC sends against qemu without a password, up to its first requests.
    fn handshake_none() -> Vec<u8> {
        let mut bytes = b"RFB 003.008\n".to_vec();
        bytes.push(1); // security None
        bytes.push(1); // ClientInit: shared
        bytes
    }

    fn setup_messages() -> Vec<u8> {
        let mut bytes = vec![0u8; 20]; // SetPixelFormat
        bytes.extend([2, 0, 0, 3]); // SetEncodings, 3 of them
        bytes.extend([0u8; 12]);
        bytes.extend([3, 0, 0, 0, 0, 0, 4, 0, 3, 0]); // FramebufferUpdateRequest
        bytes.extend([150, 1, 0, 0, 0, 0, 4, 0, 3, 0]); // EnableContinuousUpdates
        bytes.extend([248, 0, 0, 0, 0, 0, 0, 3, 2, 7, 7]); // ClientFence with 2 bytes
        bytes.extend([255, 1, 0, 2, 0, 0, 0, 0, 0, 2]); // QEMU audio set format
        bytes
    }

    const KEY: [u8; 8] = [4, 1, 0, 0, 0, 0, 0, 0x61];
    const POINTER: [u8; 6] = [5, 0, 0, 10, 0, 20];

    #[test]
    fn requests_and_handshake_are_not_input() {
        let mut scanner = InputScanner::new(Auth::None);
        assert!(!scanner.feed(&handshake_none()));
        assert!(!scanner.feed(&setup_messages()));
        assert!(!scanner.lost());
    }

    #[test]
    fn keys_pointer_clipboard_and_qemu_keys_are_input() {
        let mut cut = vec![6, 0, 0, 0, 0, 0, 0, 3];
        cut.extend(b"abc");
        let mut extended_cut = vec![6, 0, 0, 0];
        extended_cut.extend((-4i32).to_be_bytes());
        extended_cut.extend([0, 0, 0, 1]);
        let qemu_key = [255, 0, 0, 1, 0, 0, 0, 0x61, 0, 0, 0, 0x1e];
        for message in [
            KEY.to_vec(),
            POINTER.to_vec(),
            cut,
            extended_cut,
            qemu_key.to_vec(),
        ] {
            let mut scanner = InputScanner::new(Auth::None);
            scanner.feed(&handshake_none());
            scanner.feed(&setup_messages());
            assert!(scanner.feed(&message), "{message:?}");
            assert!(!scanner.feed(&[3, 0, 0, 0, 0, 0, 4, 0, 3, 0]));
        }
    }

    #[test]
    fn input_is_found_however_the_stream_is_split() {
        let mut stream = handshake_none();
        stream.extend(setup_messages());
        let before = stream.len();
        stream.extend(KEY);
        stream.extend([3, 0, 0, 0, 0, 0, 4, 0, 3, 0]);
        for chunk in 1..=stream.len() {
            let mut scanner = InputScanner::new(Auth::None);
            let mut seen_at = None;
            let mut offset = 0;
            for piece in stream.chunks(chunk) {
                offset += piece.len();
                if scanner.feed(piece) && seen_at.is_none() {
                    seen_at = Some(offset);
                }
            }
            let at = seen_at.unwrap_or_else(|| panic!("chunks of {chunk}: no input"));
            assert!(
                at >= before + KEY.len() && at < before + KEY.len() + chunk,
                "chunks of {chunk}: input seen at {at}"
            );
        }
    }

    #[test]
    fn a_vnc_password_response_is_not_mistaken_for_messages() {
        let mut scanner = InputScanner::new(Auth::Vnc);
        let mut stream = b"RFB 003.008\n".to_vec();
        stream.push(2);
        stream.extend([4u8; 16]); // a response full of KeyEvent type bytes
        stream.push(1);
        assert!(!scanner.feed(&stream));
        assert!(scanner.feed(&POINTER));
    }

    #[test]
    fn rfb_3_3_has_no_security_type_from_the_client() {
        let mut scanner = InputScanner::new(Auth::Vnc);
        let mut stream = b"RFB 003.003\n".to_vec();
        stream.extend([5u8; 16]);
        stream.push(1);
        assert!(!scanner.feed(&stream));
        assert!(scanner.feed(&KEY));
    }

    #[test]
    fn an_unknown_message_stops_recognising_input() {
        let mut scanner = InputScanner::new(Auth::None);
        scanner.feed(&handshake_none());
        assert!(!scanner.feed(&[99, 4, 1, 0, 0, 0, 0, 0, 0x61]));
        assert!(scanner.lost());
        assert!(!scanner.feed(&KEY));
    }

    #[test]
    fn nothing_sent_before_the_handshake_ends_is_input() {
        let mut scanner = InputScanner::new(Auth::None);
        assert!(!scanner.feed(b"RFB 003.008\n"));
        assert!(!scanner.feed(&[1]));
        assert!(!scanner.lost());
    }
}
