//! Plain and tagged scalars, typed as PyYAML 6 types them.

use super::*;

fn int_(text: &str) -> Scalar {
    Scalar::Int(text.to_owned())
}

fn str_(text: &str) -> Scalar {
    Scalar::Str(text.to_owned())
}

fn ts(text: &str, python: &str) -> Scalar {
    Scalar::Timestamp {
        text: text.to_owned(),
        python: python.to_owned(),
    }
}

/// What PyYAML 6 (`yaml.safe_load`) gives for each plain scalar; checked against PyYAML
/// itself by tests/integration/configdrive.rs.
#[test]
fn plain_scalars_are_typed_as_pyyaml_types_them() {
    let table = [
        ("n", str_("n")),
        ("y", str_("y")),
        ("N", str_("N")),
        ("Y", str_("Y")),
        ("yes", Scalar::Bool(true)),
        ("No", Scalar::Bool(false)),
        ("ON", Scalar::Bool(true)),
        ("off", Scalar::Bool(false)),
        ("True", Scalar::Bool(true)),
        ("tRUE", str_("tRUE")),
        ("0755", int_("493")),
        ("-0755", int_("-493")),
        ("0o755", str_("0o755")),
        ("0x1F", int_("31")),
        ("0b101", int_("5")),
        ("1_000", int_("1000")),
        ("+12", int_("12")),
        ("-0", int_("0")),
        ("09", str_("09")),
        ("190:20:30", int_("685230")),
        ("12345678901234567890123", int_("12345678901234567890123")),
        ("1e3", str_("1e3")),
        ("1.0e3", str_("1.0e3")),
        ("1.0e+3", Scalar::Float(1000.0)),
        ("1.5", Scalar::Float(1.5)),
        ("1.", Scalar::Float(1.0)),
        (".5", Scalar::Float(0.5)),
        ("-.inf", Scalar::Float(f64::NEG_INFINITY)),
        (".Inf", Scalar::Float(f64::INFINITY)),
        ("190:20:30.15", Scalar::Float(685230.15)),
        ("~", Scalar::Null),
        ("", Scalar::Null),
        ("null", Scalar::Null),
        ("nULL", str_("nULL")),
        ("2002-12-14", ts("2002-12-14", "2002-12-14")),
        ("2002-1-14", str_("2002-1-14")),
        (
            "2001-12-14t21:59:43.10-05:00",
            ts(
                "2001-12-14t21:59:43.10-05:00",
                "2001-12-14 21:59:43.100000-05:00",
            ),
        ),
        (
            "2001-12-14 21:59:43.10 -5",
            ts(
                "2001-12-14 21:59:43.10 -5",
                "2001-12-14 21:59:43.100000-05:00",
            ),
        ),
        (
            "2001-12-15T02:59:43Z",
            ts("2001-12-15T02:59:43Z", "2001-12-15 02:59:43+00:00"),
        ),
        (
            "2001-12-14 2:59:43",
            ts("2001-12-14 2:59:43", "2001-12-14 02:59:43"),
        ),
        ("<<", Scalar::Merge),
        ("=", Scalar::Value),
        ("1.2.3", str_("1.2.3")),
        ("52:54:00:12:34:56", int_("41135085296")),
    ];
    for (text, expected) in table {
        let got = plain(text).expect(text);
        match (&got, &expected) {
            (Scalar::Float(a), Scalar::Float(b)) => assert!(a == b, "{text}: {a} != {b}"),
            _ => assert_eq!(got, expected, "{text:?}"),
        }
    }
    assert!(matches!(plain(".nan"), Ok(Scalar::Float(f)) if f.is_nan()));
}

#[test]
fn impossible_dates_are_errors_as_in_python() {
    for text in [
        "2023-02-29",
        "2024-13-01",
        "0000-01-01",
        "2024-01-01 24:00:00",
    ] {
        assert!(plain(text).is_err(), "{text}");
    }
    assert!(plain("2024-02-29").is_ok());
}

#[test]
fn explicit_tags_construct_as_pyyaml_does() {
    assert_eq!(construct(Tag::Str, "0755"), Ok(str_("0755")));
    assert_eq!(construct(Tag::Int, "0755"), Ok(int_("493")));
    assert_eq!(
        construct(Tag::Bool, "y"),
        Err(ScalarError::Invalid("y".into(), "boolean"))
    );
    assert_eq!(construct(Tag::Float, "1e3"), Ok(Scalar::Float(1000.0)));
    assert_eq!(construct(Tag::Null, "anything"), Ok(Scalar::Null));
    assert!(construct(Tag::Int, "twelve").is_err());
    assert!(construct(Tag::Int, &"9".repeat(MAX_DIGITS + 1)).is_err());
}
