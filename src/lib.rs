//! kvm-manager: PID 1 of a Kubernetes pod that turns the pod into one virtual machine.
//!
//! The binary (`src/main.rs`) only calls [`app::main`]. Everything else lives here so that the
//! deciding half of each area can be unit-tested without root. Only [`app`] sequences phases;
//! only [`sys`] contains `unsafe`.

pub mod app;
pub mod atomic_file;
pub mod cli;
pub mod config;
pub mod configdrive;
pub mod error;
pub mod http;
pub mod image;
pub mod lan;
pub mod logging;
pub mod metrics;
pub mod net;
pub mod pid1;
pub mod qemu;
pub mod regular_file;
pub mod size;
pub mod state;
pub mod sys;
