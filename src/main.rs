//! Thin binary: [`kvm_manager::app::main`] does everything, blocking the signals first of all
//! (before any thread exists).

use std::process::ExitCode;

fn main() -> ExitCode {
    kvm_manager::app::main()
}
