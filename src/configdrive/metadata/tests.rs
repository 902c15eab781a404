//! The operator's meta-data YAML, as PyYAML reads it, and what is refused.

use super::*;

fn parse_str(text: &str) -> Result<Metadata, ConfigDriveError> {
    parse(Path::new("/metadata/meta-data"), text.as_bytes())
}

fn position(err: ConfigDriveError) -> (u64, u64, String) {
    let message = err.to_string();
    match err {
        ConfigDriveError::ParseMetadata { line, column, .. } => (line, column, message),
        other => panic!("expected a parse error, got {other:?}"),
    }
}

fn scalar(map: &Metadata, key: &str) -> Scalar {
    match map.get(key) {
        Some(Value::Scalar(s)) => s.clone(),
        other => panic!("{key}: {other:?}"),
    }
}

#[test]
fn yaml_and_json_mappings_read_the_same() {
    let yaml = parse_str("public-keys:\n  - ssh-ed25519 AAAA\nzone: a\n").expect("yaml");
    let json = parse_str(r#"{"public-keys": ["ssh-ed25519 AAAA"], "zone": "a"}"#).expect("json");
    assert_eq!(yaml, json);
}

#[test]
fn yaml_scalars_keep_the_types_pyyaml_gives_them() {
    let map = parse_str(
        "a: n\nb: yes\nc: 0755\nd: 1e3\ne: '0755'\nf: !!str yes\ng: ~\nh:\ni: 2024-01-02\n",
    )
    .expect("yaml");
    assert_eq!(scalar(&map, "a"), Scalar::Str("n".into()));
    assert_eq!(scalar(&map, "b"), Scalar::Bool(true));
    assert_eq!(scalar(&map, "c"), Scalar::Int("493".into()));
    assert_eq!(scalar(&map, "d"), Scalar::Str("1e3".into()));
    assert_eq!(scalar(&map, "e"), Scalar::Str("0755".into()));
    assert_eq!(scalar(&map, "f"), Scalar::Str("yes".into()));
    assert_eq!(scalar(&map, "g"), Scalar::Null);
    assert_eq!(scalar(&map, "h"), Scalar::Null);
    assert!(matches!(scalar(&map, "i"), Scalar::Timestamp { .. }));
}

#[test]
fn anchors_aliases_and_merge_keys_read_as_in_pyyaml() {
    let map = parse_str(
        "base: &b {x: 1, y: 2}\nother: &o {y: 3, z: 4}\n\
         m:\n  <<: [*b, *o]\n  x: 9\ncopy: *b\n",
    )
    .expect("yaml");
    let Some(Value::Map(m)) = map.get("m") else {
        panic!("{map:?}")
    };
    let int = |n: &str| Value::Scalar(Scalar::Int(n.into()));
    // Explicit x wins; for y the earlier mapping of the list wins.
    assert_eq!(m.get("x"), Some(&int("9")));
    assert_eq!(m.get("y"), Some(&int("2")));
    assert_eq!(m.get("z"), Some(&int("4")));
    assert_eq!(map.get("copy"), map.get("base"));
}

#[test]
fn a_billion_laughs_is_an_error() {
    let mut text = "a: &a [x, x, x, x, x, x, x, x, x, x]\n".to_owned();
    for (prev, next) in ["a", "b", "c", "d", "e", "f", "g"]
        .iter()
        .zip(["b", "c", "d", "e", "f", "g", "h"])
    {
        text.push_str(&format!("{next}: &{next} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"));
    }
    let (_, _, message) = position(parse_str(&text).expect_err("too many"));
    assert!(message.contains("YAML"), "{message}");
}

#[test]
fn unreadable_plain_scalars_and_unknown_tags_are_errors_with_a_position() {
    for text in [
        "a: =\n",
        "a: !!binary aGVsbG8=\n",
        "a: !custom x\n",
        "a: 2023-02-30\n",
    ] {
        let (line, _, message) = position(parse_str(text).expect_err(text));
        assert_eq!(line, 1, "{text}: {message}");
    }
    let map = parse_str("=: x\n").expect("`=` as a key is a string");
    assert_eq!(scalar(&map, "="), Scalar::Str("x".into()));
}

#[test]
fn empty_and_comment_only_documents_are_empty_mappings() {
    assert!(parse_str("").expect("empty").is_empty());
    assert!(parse_str("  \n").expect("blank").is_empty());
    assert!(parse_str("# nothing yet\n").expect("comment").is_empty());
    assert!(parse_str("---\n~\n").expect("null").is_empty());
}

#[test]
fn a_document_starting_with_a_brace_is_strict_json() {
    let (line, column, message) = position(parse_str("{zone: a}").expect_err("not JSON"));
    assert_eq!((line, column), (1, 2), "{message}");
}

#[test]
fn json_keeps_json_types() {
    let map = parse_str(r#"{"a": 1e3, "b": "n", "c": 7}"#).expect("json");
    assert_eq!(scalar(&map, "a"), Scalar::Float(1000.0));
    assert_eq!(scalar(&map, "b"), Scalar::Str("n".into()));
    assert_eq!(scalar(&map, "c"), Scalar::Int("7".into()));
}

#[test]
fn a_list_is_rejected_with_file_line_and_column() {
    let (line, column, message) = position(parse_str("- a\n- b\n").expect_err("a list"));
    assert_eq!((line, column), (1, 1));
    assert!(message.contains("/metadata/meta-data:1:1"), "{message}");
    assert!(message.contains("mapping"), "{message}");
}

#[test]
fn a_json_scalar_is_rejected() {
    let err = parse_str("\"just a string\"").expect_err("a scalar");
    assert!(err.to_string().contains("mapping"), "{err}");
}

#[test]
fn two_documents_are_rejected() {
    let err = parse_str("a: 1\n---\nb: 2\n").expect_err("two documents");
    assert!(
        crate::logging::render_chain(&err).contains("more than one"),
        "{err}"
    );
}

#[test]
fn invalid_yaml_reports_where() {
    let (line, column, message) =
        position(parse_str("zone: a\nkeys: [a, b\nname: x\n").expect_err("bad yaml"));
    assert!(line >= 2, "line {line} in {message}");
    assert!(column >= 1);
    assert!(message.contains("YAML"), "{message}");
}

proptest::proptest! {
    #[test]
    fn never_panics_and_what_it_reads_it_can_write(text in "\\PC*") {
        if let Ok(map) = parse_str(&text) {
            let _ = (super::super::render::json(&map), super::super::render::yaml(&map));
        }
    }

    /// Our YAML writer and our reader agree (the reader agrees with PyYAML: see the
    /// integration tests), for plain and quoted scalars of every type.
    #[test]
    fn what_we_write_reads_back_the_same(
        tokens in proptest::collection::vec("[-+0-9._:a-zA-Z ~\"'\\\\#]{0,12}", 1..8)
    ) {
        let text: String = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| format!("k{i}: {t}\n"))
            .collect();
        if let Ok(map) = parse_str(&text) {
            let written = super::super::render::yaml(&map);
            if !written.contains(".nan") {
                let again = parse_str(&written).expect("our own YAML reads back");
                proptest::prop_assert_eq!(again, map, "{}", written);
            }
        }
    }

    #[test]
    fn plain_scalars_never_panic(text in "[-+0-9._:a-zA-Z tT~<=]{0,24}") {
        let _ = super::super::scalar::plain(&text);
    }
}

#[test]
fn invalid_json_reports_where() {
    let (line, column, message) =
        position(parse_str("{\n  \"zone\": \"a\",\n  \"name\": \n}\n").expect_err("bad json"));
    assert_eq!(line, 4, "{message}");
    assert_eq!(column, 1, "{message}");
    assert!(message.contains("JSON"), "{message}");
}
