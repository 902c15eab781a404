//! Integration tests: the real `kvm-manager` binary, in namespaces where root is needed.
//!
//! Tests that need root say so loudly and skip when not root; under CI (`CI` set) they fail
//! instead, because CI runs as root and nothing may skip there.

// Skips are announced on stderr, loudly, by design.
#![allow(clippy::print_stderr)]
// A test binary has no public interface: its helpers are `pub` for its own modules.
#![allow(unreachable_pub)]

mod agent;
mod backup;
mod configdrive;
mod dhcp;
mod dns;
mod e2e;
mod firmware;
mod firmware_persist;
mod flood;
mod http;
mod ignition;
mod image;
mod install;
mod ipv6;
mod multiqueue;
mod network;
mod passt;
mod pause;
mod pet;
mod pid1;
mod pod;
mod shares;
mod support;
mod tpm;
mod vm;
mod vmnet;
