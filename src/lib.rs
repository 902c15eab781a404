//! kvm-manager: PID 1 of a Kubernetes pod that turns the pod into one virtual machine.
//!
//! The binary (`src/main.rs`) only calls [`app::main`]. Everything else lives here so that the
//! deciding half of each area can be unit-tested without root. Only [`app`] sequences phases;
//! only [`sys`] contains `unsafe`.
//!
//! Public: [`app`] (the binary's entry point) and the LAN protocol layers the fuzz targets
//! drive ([`lan`]); everything else is private to the crate, so the compiler reports what no
//! one uses (`unreachable_pub`, `dead_code`).

pub mod app;
mod atomic_file;
mod backup;
mod cli;
mod config;
mod configdrive;
mod error;
mod http;
mod image;
pub mod lan;
mod locked;
mod logging;
mod metrics;
mod net;
mod pid1;
mod private_socket;
mod qemu;
mod regular_file;
mod size;
mod state;
mod sys;
#[cfg(test)]
mod test_support;
mod timer;
