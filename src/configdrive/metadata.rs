//! The operator's meta-data: YAML or JSON, and it must be a mapping, because its keys are
//! merged over the ones we generate (instance id, hostname). A document that starts with `{`
//! is JSON (the classic kvm-manager took `meta_data.json` verbatim; a strict JSON parser gives
//! better errors than YAML's flow syntax would), anything else YAML; an empty document is an
//! empty mapping. Errors carry the file, line and column.

use std::path::Path;

use serde_json::{Map, Value};

use super::ConfigDriveError;

/// The keys and values of a meta-data document.
pub type Metadata = Map<String, Value>;

pub fn parse(path: &Path, bytes: &[u8]) -> Result<Metadata, ConfigDriveError> {
    if bytes.trim_ascii().is_empty() {
        return Ok(Metadata::new());
    }
    if bytes.trim_ascii_start().starts_with(b"{") {
        return serde_json::from_slice::<Metadata>(bytes).map_err(|e| {
            ConfigDriveError::ParseMetadata {
                path: path.to_owned(),
                line: e.line() as u64,
                column: e.column() as u64,
                syntax: "JSON",
                source: Box::new(e),
            }
        });
    }
    yaml(path, bytes)
}

fn yaml(path: &Path, bytes: &[u8]) -> Result<Metadata, ConfigDriveError> {
    // `Option`: a document of only comments (or `~`) is null, which we take as empty.
    match serde_saphyr::from_slice::<Option<Metadata>>(bytes) {
        Ok(map) => Ok(map.unwrap_or_default()),
        Err(e) => {
            let (line, column) = e.location().map_or((1, 1), |l| (l.line(), l.column()));
            Err(ConfigDriveError::ParseMetadata {
                path: path.to_owned(),
                line,
                column,
                syntax: "YAML",
                source: Box::new(e),
            })
        }
    }
}

#[cfg(test)]
mod tests {
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

    #[test]
    fn yaml_and_json_mappings_read_the_same() {
        let yaml = parse_str("public-keys:\n  - ssh-ed25519 AAAA\nzone: a\n").expect("yaml");
        let json =
            parse_str(r#"{"public-keys": ["ssh-ed25519 AAAA"], "zone": "a"}"#).expect("json");
        assert_eq!(yaml, json);
    }

    #[test]
    fn empty_and_comment_only_documents_are_empty_mappings() {
        assert!(parse_str("").expect("empty").is_empty());
        assert!(parse_str("  \n").expect("blank").is_empty());
        assert!(parse_str("# nothing yet\n").expect("comment").is_empty());
    }

    #[test]
    fn a_document_starting_with_a_brace_is_strict_json() {
        let (line, column, message) = position(parse_str("{zone: a}").expect_err("not JSON"));
        assert_eq!((line, column), (1, 2), "{message}");
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
    fn invalid_yaml_reports_where() {
        let (line, column, message) =
            position(parse_str("zone: a\nkeys: [a, b\nname: x\n").expect_err("bad yaml"));
        assert!(line >= 2, "line {line} in {message}");
        assert!(column >= 1);
        assert!(message.contains("YAML"), "{message}");
    }

    #[test]
    fn invalid_json_reports_where() {
        let (line, column, message) =
            position(parse_str("{\n  \"zone\": \"a\",\n  \"name\": \n}\n").expect_err("bad json"));
        assert_eq!(line, 4, "{message}");
        assert_eq!(column, 1, "{message}");
        assert!(message.contains("JSON"), "{message}");
    }
}
