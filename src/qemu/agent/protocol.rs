//! The guest agent's wire protocol, pure: a command is one JSON object on a line; an answer is
//! one JSON object `{"return": …}` or `{"error": {"class", "desc"}}`, without an id (one command
//! at a time). To resynchronise after garbage, a guest reboot or an agent restart, the client
//! sends the byte 0xFF (the agent's parser drops what it had) and `guest-sync-delimited` with a
//! fresh id; the agent answers 0xFF and then `{"return": id}`. Everything before the 0xFF, and
//! every answer whose id is not ours, is stale. (qemu's docs/interop/qemu-ga.rst.)

use serde_json::{json, Value};

/// The delimiter byte of `guest-sync-delimited` (never valid in UTF-8 JSON).
pub(crate) const SYNC_BYTE: u8 = 0xFF;

/// The bytes of one command line.
pub(crate) fn command(name: &str, arguments: Option<&Value>) -> Vec<u8> {
    let mut message = json!({ "execute": name });
    if let Some(arguments) = arguments {
        message["arguments"] = arguments.clone();
    }
    let mut line = message.to_string().into_bytes();
    line.push(b'\n');
    line
}

/// The bytes of a resync: 0xFF, then `guest-sync-delimited` with `id`.
pub(crate) fn sync(id: u64) -> Vec<u8> {
    let mut bytes = vec![SYNC_BYTE];
    bytes.extend(command("guest-sync-delimited", Some(&json!({ "id": id }))));
    bytes
}

/// What one line from the agent is.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Answer {
    Return(Value),
    Error {
        class: String,
        desc: String,
    },
    /// Not a JSON object with `return` or `error`: garbage, or half of something stale.
    Garbage,
}

/// Classifies one line (without its newline). Bytes that are not UTF-8 are garbage too.
pub(crate) fn classify(line: &[u8]) -> Answer {
    let Ok(message) = serde_json::from_slice::<Value>(line) else {
        return Answer::Garbage;
    };
    if let Some(value) = message.get("return") {
        return Answer::Return(value.clone());
    }
    if let Some(error) = message.get("error") {
        let text = |key: &str| {
            error
                .get(key)
                .and_then(Value::as_str)
                .unwrap_or("?")
                .to_owned()
        };
        return Answer::Error {
            class: text("class"),
            desc: text("desc"),
        };
    }
    Answer::Garbage
}

/// Whether `line` is the answer to the resync with `id` (anything else after the 0xFF is
/// stale: the answer to an abandoned command, or an older resync).
pub(crate) fn is_sync_answer(line: &[u8], id: u64) -> bool {
    matches!(classify(line), Answer::Return(Value::Number(n)) if n.as_u64() == Some(id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_is_one_json_line_with_its_arguments() {
        assert_eq!(
            command("guest-ping", None),
            b"{\"execute\":\"guest-ping\"}\n"
        );
        let bytes = command("guest-shutdown", Some(&json!({ "mode": "powerdown" })));
        let value: Value = serde_json::from_slice(&bytes).expect("JSON");
        assert_eq!(value["arguments"]["mode"], "powerdown");
        assert_eq!(bytes.last(), Some(&b'\n'));
    }

    #[test]
    fn a_resync_starts_with_the_delimiter_byte_and_carries_its_id() {
        let bytes = sync(42);
        assert_eq!(bytes[0], SYNC_BYTE);
        let value: Value = serde_json::from_slice(&bytes[1..]).expect("JSON");
        assert_eq!(value["execute"], "guest-sync-delimited");
        assert_eq!(value["arguments"]["id"], 42);
    }

    #[test]
    fn answers_are_returns_errors_or_garbage() {
        assert_eq!(classify(br#"{"return": {}}"#), Answer::Return(json!({})));
        assert_eq!(
            classify(br#"{"error": {"class": "CommandNotFound", "desc": "no"}}"#),
            Answer::Error {
                class: "CommandNotFound".into(),
                desc: "no".into()
            }
        );
        for garbage in [
            &b"\xff\xfe\x00junk"[..],
            b"",
            b"{\"garbage\": [1, 2",
            b"{\"event\": \"X\"}",
            b"[1, 2]",
        ] {
            assert_eq!(classify(garbage), Answer::Garbage, "{garbage:?}");
        }
    }

    #[test]
    fn only_the_answer_with_our_id_ends_a_resync() {
        assert!(is_sync_answer(br#"{"return": 7}"#, 7));
        assert!(!is_sync_answer(br#"{"return": 6}"#, 7));
        assert!(!is_sync_answer(br#"{"return": {}}"#, 7));
        assert!(!is_sync_answer(b"garbage", 7));
    }
}
