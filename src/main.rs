//! Thin binary: block signals first (before any thread exists), then hand over to the library.

use std::process::ExitCode;

fn main() -> ExitCode {
    kvm_manager::app::main()
}
