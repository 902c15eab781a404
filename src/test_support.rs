//! Helpers shared by the unit tests of several areas (compiled only under `cfg(test)`).

use std::path::PathBuf;

/// Compares `actual` with `tests/golden/<area>/<file>`; with `UPDATE_GOLDEN` set it first
/// rewrites that file (review the diff). One home and one rule for every golden file.
pub(crate) fn assert_golden(area: &str, file: &str, actual: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(area)
        .join(file);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().expect("a parent directory"))
            .expect("create the golden directory");
        std::fs::write(&path, actual).expect("write the golden file");
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 creates it)", path.display()));
    assert_eq!(actual, expected, "{} differs", path.display());
}
