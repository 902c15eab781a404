//! Table-driven tests of every validation rule: each error must name the variable.

use std::net::Ipv4Addr;

use clap::Parser;

use super::*;
use crate::cli::Cli;
use crate::size::MIB;

fn settings(args: &[&str]) -> Settings {
    let mut argv = vec!["kvm-manager"];
    argv.extend_from_slice(args);
    Cli::try_parse_from(argv)
        .expect("test arguments are valid clap input")
        .settings
}

fn parse(args: &[&str]) -> Result<Config, ConfigError> {
    let hostname = Hostname::parse("vm-0").expect("valid hostname");
    Config::from_settings(&settings(args), hostname, Vec::new())
}

/// As `run` and `image` parse: the base image's target is needed.
fn with_image(args: &[&str]) -> Result<(Config, ImageTarget), ConfigError> {
    let hostname = Hostname::parse("vm-0").expect("valid hostname");
    Config::with_image(&settings(args), hostname, Vec::new())
}

#[test]
fn defaults_are_valid_without_an_image_when_none_is_needed() {
    let config = parse(&[]).expect("defaults are valid");
    assert_eq!(config.net.slash30.vm(), Ipv4Addr::new(192, 168, 254, 2));
    assert_eq!(config.net.slash30.gw(), Ipv4Addr::new(192, 168, 254, 1));
    assert_eq!(config.net.http_port, Some(8080));
    assert_eq!(config.net.dns_mode, DnsMode::Forward);
    assert_eq!(config.vm.accel, Accel::Auto);
    assert_eq!(config.vm.shutdown_timeout, Duration::from_secs(25));
    assert_eq!(config.vm.console_idle_timeout, Duration::from_secs(15 * 60));
    assert_eq!(config.config_drive.format, DriveFormat::ConfigDrive);
    assert_eq!(config.overlay_path(), PathBuf::from("/pet/vm-0.qcow2"));
    assert!(config.image_target.is_none());
}

#[test]
fn every_bad_value_is_rejected_naming_its_variable() {
    let cases: &[(&[&str], &str)] = &[
        (&["--vm-ip", "192.168.254.5"], "VM_IP"),
        (&["--vm-ip", "192.168.254.1"], "VM_IP"),
        (&["--vm-ip", "192.168.254.0"], "VM_IP"),
        (&["--vm-ip", "192.168.254.3"], "VM_IP"),
        (&["--vm-gw", "192.168.254.0"], "VM_GW"),
        (&["--vm-gw", "192.168.254.3"], "VM_GW"),
        (&["--vm-ip", "10.0.0.2"], "VM_IP"),
        (&["--vm-ip", "not-an-ip"], "VM_IP"),
        (&["--vm-gw", "1.2.3"], "VM_GW"),
        (&["--vm-ip", "127.0.0.2", "--vm-gw", "127.0.0.1"], "VM_IP"),
        (&["--img-target", "a/b.qcow2"], "IMG_TARGET"),
        (&["--img-target", "../b.qcow2"], "IMG_TARGET"),
        (&["--img-target", "x..y"], "IMG_TARGET"),
        (&["--img-target", ".hidden"], "IMG_TARGET"),
        (&["--img-target", "/nonexistent/base.qcow2"], "IMG_TARGET"),
        (
            &["--img-source", "ftp://example.invalid/a.qcow2"],
            "IMG_SOURCE",
        ),
        (&["--img-source", "http://"], "IMG_SOURCE"),
        (&["--img-source", "https://example.invalid/"], "IMG_SOURCE"),
        (&["--img-sha256", "abc"], "IMG_SHA256"),
        (&["--img-sha256", &"g".repeat(64)], "IMG_SHA256"),
        (&["--accel", "hvf"], "ACCEL"),
        (&["--fetch-connections", "0"], "FETCH_CONNECTIONS"),
        (&["--fetch-connections", "17"], "FETCH_CONNECTIONS"),
        (&["--fetch-connections", "four"], "FETCH_CONNECTIONS"),
        (
            &["--fetch-parallel-min-size", "big"],
            "FETCH_PARALLEL_MIN_SIZE",
        ),
        (&["--config-drive", "iso"], "CONFIG_DRIVE"),
        (&["--dns-mode", "recursive"], "DNS_MODE"),
        (&["--log-format", "xml"], "LOG_FORMAT"),
        (&["--log-level", "loud=="], "LOG_LEVEL"),
        (&["--shutdown-timeout", "soon"], "SHUTDOWN_TIMEOUT"),
        (&["--shutdown-timeout=-5s"], "SHUTDOWN_TIMEOUT"),
        (&["--shutdown-timeout", "2days"], "SHUTDOWN_TIMEOUT"),
        (&["--vm-mac", "52:54:00:12:34"], "VM_MAC"),
        (&["--vm-mac", "01:00:5e:00:00:01"], "VM_MAC"),
        (&["--vm-mac", "00:00:00:00:00:00"], "VM_MAC"),
        (&["--vm-cpus", "0"], "VM_CPUS"),
        (&["--vm-cpus", "two"], "VM_CPUS"),
        (&["--vm-memory", "lots"], "VM_MEMORY"),
        (&["--vm-memory", "16"], "VM_MEMORY"),
        (&["--vm-memory", "1536k"], "VM_MEMORY"),
        (&["--vm-disk-size", "20"], "VM_DISK_SIZE"),
        (&["--vm-disk-size", "20X"], "VM_DISK_SIZE"),
        (&["--vm-disk-size", "1000b"], "VM_DISK_SIZE"),
        (&["--http-port", "70000"], "HTTP_PORT"),
        (&["--http-port", "5900"], "HTTP_PORT"),
        (&["--vnc-password", "longer-than-8"], "VNC_PASSWORD"),
        (&["--ready-port", "0"], "READY_PORT"),
        (&["--ready-port", "ssh"], "READY_PORT"),
        (&["--console-idle-timeout", "0"], "CONSOLE_IDLE_TIMEOUT"),
        (&["--console-idle-timeout", "soon"], "CONSOLE_IDLE_TIMEOUT"),
        (&["--console-idle-timeout", "2days"], "CONSOLE_IDLE_TIMEOUT"),
    ];
    for (args, var) in cases {
        let err = parse(args).expect_err(&format!("{args:?} must be rejected"));
        let message = err.to_string();
        assert!(
            message.starts_with(var),
            "{args:?}: message must name {var}: {message}"
        );
        assert!(
            message.contains("Fix:"),
            "{args:?}: message must say how to fix it: {message}"
        );
        let flag = super::flag_of(var);
        assert!(
            message.contains(&flag),
            "{args:?}: message must name {flag}: {message}"
        );
    }
}

#[test]
fn error_names_the_bad_value_but_never_the_vnc_password() {
    let err = parse(&["--vm-ip", "192.168.254.6"]).expect_err("other /30");
    assert!(err.to_string().contains("\"192.168.254.6\""), "{err}");
    let err = parse(&["--vnc-password", "s3cretpassword"]).expect_err("too long");
    assert!(!err.to_string().contains("s3cretpassword"), "{err}");
}

#[test]
fn accepts_every_valid_slash30_pairing() {
    for (ip, gw) in [
        ("10.9.8.2", "10.9.8.1"),
        ("10.9.8.1", "10.9.8.2"),
        ("172.16.0.6", "172.16.0.5"),
    ] {
        let config = parse(&["--vm-ip", ip, "--vm-gw", gw]).expect("valid pair");
        assert_eq!(config.net.slash30.vm().to_string(), ip);
    }
}

#[test]
fn image_is_required_for_run_and_image_only() {
    let err = with_image(&[]).expect_err("no image source");
    assert!(
        err.to_string()
            .starts_with("IMG_SOURCE (--img-source) is required"),
        "{err}"
    );
    parse(&[]).expect("network and qemu-args need no image");
}

#[test]
fn an_existing_image_needs_no_source() {
    let dir = tempfile::tempdir().expect("tempdir");
    let image = dir.path().join("base.qcow2");
    std::fs::write(&image, b"QFI\xfb").expect("write");
    let absolute = image.to_str().expect("utf-8 temp path");
    let (_, target) = with_image(&["--img-target", absolute]).expect("existing absolute path");
    assert_eq!(target, ImageTarget::Existing(image.clone()));
    let dir_arg = dir.path().to_str().expect("utf-8 temp path");
    let (config, target) = with_image(&["--image-dir", dir_arg, "--img-target", "base.qcow2"])
        .expect("existing name in IMAGE_DIR");
    assert_eq!(target.path(&config.image.dir), image);
    let err = with_image(&["--image-dir", dir_arg, "--img-target", "other.qcow2"])
        .expect_err("missing name in IMAGE_DIR");
    assert!(err.to_string().starts_with("IMG_SOURCE"), "{err}");
}

#[test]
fn target_defaults_to_the_last_segment_minus_compression() {
    for (source, want) in [
        (
            "https://example.invalid/images/debian-12.qcow2",
            "debian-12.qcow2",
        ),
        (
            "https://example.invalid/images/debian-12.qcow2.xz?sig=1",
            "debian-12.qcow2",
        ),
        ("http://example.invalid/a/b/disk.raw.zst", "disk.raw"),
        ("file:///srv/images/cirros.img.gz", "cirros.img"),
        ("/srv/images/cirros.img", "cirros.img"),
    ] {
        let (_, target) = with_image(&["--img-source", source]).expect("valid source");
        assert_eq!(target, ImageTarget::Name(want.into()), "{source}");
    }
}

#[test]
fn source_kinds_are_typed() {
    let (config, _) = with_image(&["--img-source", "file:///srv/a.qcow2"]).expect("file url");
    assert_eq!(
        config.image.source,
        Some(ImageSource::Path("/srv/a.qcow2".into()))
    );
    let (config, _) = with_image(&["--img-source", "https://h.invalid/a.qcow2"]).expect("url");
    assert!(matches!(config.image.source, Some(ImageSource::Url(_))));
}

#[test]
fn sha256_is_normalised_to_lowercase_hex() {
    let upper = "AB".repeat(32);
    let prefixed = format!("sha256:{upper}");
    let config = parse(&["--img-sha256", &prefixed]).expect("valid digest");
    assert_eq!(config.image.sha256, Some("ab".repeat(32)));
}

#[test]
fn typed_values_parse() {
    let config = parse(&[
        "--vm-mac",
        "52-54-00-AB-CD-EF",
        "--vm-cpus",
        "4",
        "--vm-memory",
        "1536",
        "--vm-disk-size",
        "20Gi",
        "--shutdown-timeout",
        "90",
        "--http-port",
        "0",
        "--accel",
        "TCG",
        "--dns-mode",
        "passthrough",
        "--config-drive",
        "nocloud",
        "--log-format",
        "json",
        "--no-vnc",
        "--no-dhcp",
    ])
    .expect("all valid");
    assert_eq!(
        config.net.vm_mac.map(|m| m.to_string()),
        Some("52:54:00:AB:CD:EF".into())
    );
    assert_eq!(config.vm.cpus, Some(4));
    assert_eq!(config.vm.memory, Some(ByteSize(1536 * MIB)));
    assert_eq!(config.vm.disk_size, Some(ByteSize(20 << 30)));
    assert_eq!(config.vm.shutdown_timeout, Duration::from_secs(90));
    assert_eq!(config.net.http_port, None);
    assert_eq!(config.vm.accel, Accel::Tcg);
    assert_eq!(config.net.dns_mode, DnsMode::Passthrough);
    assert_eq!(config.config_drive.format, DriveFormat::NoCloud);
    assert_eq!(config.log.format, LogFormat::Json);
    assert!(config.net.no_vnc && config.net.no_dhcp);
    parse(&["--http-port", "5900", "--no-vnc"]).expect("5900 is free with NO_VNC");
}

#[test]
fn hostnames_that_cannot_name_a_file_are_rejected() {
    for bad in [
        "",
        "a/b",
        "..",
        ".",
        ".hidden",
        "-x",
        "a b",
        "tab\tname",
        &"x".repeat(254),
    ] {
        let err = Hostname::parse(bad).expect_err(&format!("{bad:?} must be rejected"));
        assert!(err.to_string().contains("hostname"), "{err}");
    }
    for good in ["vm-0", "web.default", "VM_1"] {
        Hostname::parse(good).expect(good);
    }
}

#[test]
fn the_guest_agent_settings_are_parsed_and_checked_naming_their_variable() {
    let config = parse(&[]).expect("defaults");
    assert_eq!(config.agent.ready_on, ReadyOn::Lease);
    assert_eq!(config.agent.poll_interval, Duration::from_secs(10));
    assert_eq!(config.agent.freeze_timeout, Duration::from_secs(60));
    assert!(config.agent.control_token.is_none());
    let no_dhcp = parse(&["--no-dhcp"]).expect("NO_DHCP");
    assert_eq!(no_dhcp.agent.ready_on, ReadyOn::Port);
    let agent = parse(&["--no-dhcp", "--ready-on", "agent"]).expect("agent");
    assert_eq!(agent.agent.ready_on, ReadyOn::Agent);
    for (args, var) in [
        (&["--ready-on", "ssh"][..], "READY_ON"),
        (&["--no-dhcp", "--ready-on", "lease"], "READY_ON"),
        (&["--agent-poll-interval", "100ms"], "AGENT_POLL_INTERVAL"),
        (&["--freeze-timeout", "0"], "FREEZE_TIMEOUT"),
        (
            &["--control-token-file", "/nonexistent/token"],
            "CONTROL_TOKEN_FILE",
        ),
    ] {
        let error = parse(args).expect_err("refused").to_string();
        assert!(error.contains(var), "{args:?}: {error}");
    }
}

#[test]
fn a_control_token_is_read_once_and_must_be_long() {
    let dir = tempfile::tempdir().expect("tempdir");
    let short = dir.path().join("short");
    std::fs::write(&short, "abc\n").expect("write");
    let error = parse(&["--control-token-file", &short.to_string_lossy()])
        .expect_err("too short")
        .to_string();
    assert!(error.contains("shorter than 16"), "{error}");
    assert!(!error.contains("abc"), "the token is never shown: {error}");
    let good = dir.path().join("good");
    std::fs::write(&good, "0123456789abcdef0123\n").expect("write");
    let config = parse(&["--control-token-file", &good.to_string_lossy()]).expect("a long token");
    assert_eq!(
        config.agent.control_token.map(|t| t.0).as_deref(),
        Some("0123456789abcdef0123")
    );
}
