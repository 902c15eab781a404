"""Checks the kvm-manager chart with a real helm: lint every ci/ scenario strictly, render
them, parse the manifests and assert what a cluster would run. Usage:

    test_chart.py HELM CHART_DIR CLI_RS README

Prints one line per test and a closing `chart: N passed, M failed`; exits 1 on any failure.
"""

import base64
import contextlib
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import yaml

HELM, CHART, CLI_RS, README = (Path(a) for a in sys.argv[1:5])
CI = CHART / "ci"
TESTS = []


def test(fn):
    TESTS.append(fn)
    return fn


def helm(*args, check=True):
    done = subprocess.run(
        [str(HELM), *args], capture_output=True, text=True, check=False
    )
    if check and done.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{done.stderr}")
    return done


def render(values_file=None, *sets):
    args = ["template", "vm", str(CHART)]
    if values_file:
        args += ["-f", str(CI / values_file)]
    for s in sets:
        args += ["--set-string" if s.startswith("string:") else "--set", s.removeprefix("string:")]
    docs = [d for d in yaml.safe_load_all(helm(*args).stdout) if d]
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


def only(manifests, kind):
    found = [d for (k, _), d in manifests.items() if k == kind]
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def container(manifests):
    pod = only(manifests, "StatefulSet")["spec"]["template"]["spec"]
    assert len(pod["containers"]) == 1, "one container: kvm-manager is PID 1 of the pod"
    return pod["containers"][0]


def env(manifests):
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(manifests)["env"]}


# Paths inside the container image, fixed by the Containerfile: not for chart users to set.
IMAGE_INTERNAL = {"RUNTIME_DIR", "NOVNC_DIR"}


def contract_variables():
    """Every variable of the contract, as src/cli.rs declares them."""
    names = re.findall(r'env\s*=\s*"([A-Z0-9_]+)"', CLI_RS.read_text())
    assert len(names) >= 20, f"found only {names} in {CLI_RS}"
    return set(names) - IMAGE_INTERNAL


@test
def lint_is_strictly_clean_for_every_ci_scenario():
    files = sorted(CI.glob("*-values.yaml"))
    assert len(files) >= 5, files
    for f in files:
        done = helm("lint", "--strict", str(CHART), "-f", str(f), check=False)
        assert done.returncode == 0, f"{f.name}:\n{done.stdout}{done.stderr}"


@test
def default_is_a_statefulset_with_pet_and_image_claims():
    m = render("default-values.yaml")
    sts = only(m, "StatefulSet")
    assert sts["spec"]["serviceName"] == "vm-kvm-manager-headless"
    claims = {c["metadata"]["name"]: c["spec"] for c in sts["spec"]["volumeClaimTemplates"]}
    assert set(claims) == {"pet", "image"}, claims
    assert claims["pet"]["resources"]["requests"]["storage"] == "20Gi"
    mounts = {v["name"]: v["mountPath"] for v in container(m)["volumeMounts"]}
    assert mounts == {"image": "/image", "pet": "/pet", "config": "/config"}, mounts
    pod = sts["spec"]["template"]["spec"]
    assert pod["enableServiceLinks"] is False
    assert pod["automountServiceAccountToken"] is False
    assert container(m)["image"] == "kvm-manager:0.1.0"
    assert "args" not in container(m)


@test
def default_env_carries_the_contract_defaults():
    e = env(render("default-values.yaml"))
    assert e["IMG_SOURCE"].endswith("debian-12-genericcloud-amd64.qcow2")
    assert e["IMAGE_DIR"] == "/image" and e["PET_DIR"] == "/pet"
    assert e["USERDATA"] == "/config/userdata" and e["METADATA"] == "/config/metadata"
    assert e["VM_IP"] == "192.168.254.2" and e["VM_GW"] == "192.168.254.1"
    assert e["ACCEL"] == "auto" and e["DNS_MODE"] == "forward"
    assert e["CONFIG_DRIVE"] == "config-2" and e["HTTP_PORT"] == "8080"
    for unset in ("NO_VNC", "NO_DHCP", "VM_CPUS", "VM_MEMORY", "IMG_SHA256", "CONSOLE_IDLE_TIMEOUT"):
        assert unset not in e, f"{unset} must be left to kvm-manager's default"
    assert all(isinstance(v, str) for v in e.values() if not isinstance(v, dict)), e


@test
def default_devices_come_from_device_plugins_with_two_capabilities():
    c = container(render("default-values.yaml"))
    limits = c["resources"]["limits"]
    assert limits["devices.kubevirt.io/kvm"] == "1" and limits["devices.kubevirt.io/tun"] == "1"
    assert limits["cpu"] == "1" and limits["memory"] == "1536Mi", "pod resources size the VM"
    sc = c["securityContext"]
    assert sc["privileged"] is False and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"], "add": ["NET_ADMIN", "NET_RAW"]}


@test
def no_scenario_mounts_host_paths():
    for f in sorted(CI.glob("*-values.yaml")):
        for doc in render(f.name).values():
            assert "hostPath" not in yaml.safe_dump(doc), f"{f.name}: {doc['kind']} uses hostPath"


@test
def privileged_switch_replaces_device_resources():
    m = render("privileged-values.yaml")
    c = container(m)
    assert c["securityContext"] == {"privileged": True}
    assert not any(k.startswith("devices.") for k in c["resources"]["limits"])
    assert "securityContext" not in only(m, "StatefulSet")["spec"]["template"]["spec"]


def pod_sysctls(manifests):
    pod = only(manifests, "StatefulSet")["spec"]["template"]["spec"]
    return {s["name"]: s["value"] for s in pod["securityContext"]["sysctls"]}


@test
def default_pod_sets_only_the_safe_low_port_sysctl():
    # ip_forward is inherited from the node (scripts/podman-e2e checks it): no unsafe sysctl,
    # which a default kubelet would refuse.
    assert pod_sysctls(render("default-values.yaml")) == {
        "net.ipv4.ip_unprivileged_port_start": "0"
    }


@test
def extra_sysctls_follow_the_chart_one_even_when_privileged():
    assert pod_sysctls(render("every-variable-values.yaml")) == {
        "net.ipv4.ip_unprivileged_port_start": "0",
        "net.ipv4.conf.all.route_localnet": "1",
    }
    m = render(
        "privileged-values.yaml",
        "sysctls[0].name=net.ipv4.ip_forward",
        "string:sysctls[0].value=1",
    )
    assert pod_sysctls(m) == {"net.ipv4.ip_forward": "1"}


# Pod Security Standards, "restricted" profile (which includes "baseline"), as the
# PodSecurity admission controller of Kubernetes 1.30 checks a pod spec.
PSS_SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
}
PSS_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
               "persistentVolumeClaim", "projected", "secret"}


def restricted_violations(manifests):
    """Every way the StatefulSet's pod breaks Pod Security "restricted" (empty: it passes)."""
    sts = only(manifests, "StatefulSet")
    pod = sts["spec"]["template"]["spec"]
    psc = pod.get("securityContext") or {}
    out = []
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(key):
            out.append(f"{key} is set")
    for v in pod.get("volumes", []):
        kinds = set(v) - {"name"}
        if not kinds <= PSS_VOLUMES:
            out.append(f"volume {v['name']} is of a restricted type: {kinds}")
    for s in psc.get("sysctls", []):
        if s["name"] not in PSS_SAFE_SYSCTLS:
            out.append(f"unsafe sysctl {s['name']}")
    for c in pod.get("initContainers", []) + pod["containers"]:
        sc = c.get("securityContext") or {}
        name = c["name"]
        if sc.get("privileged"):
            out.append(f"{name}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(f"{name}: allowPrivilegeEscalation is not false")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            out.append(f"{name}: capabilities do not drop ALL")
        if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
            out.append(f"{name}: adds capabilities {caps['add']}")
        if not sc.get("runAsNonRoot", psc.get("runAsNonRoot")):
            out.append(f"{name}: runAsNonRoot is not true")
        if sc.get("runAsUser", psc.get("runAsUser")) == 0:
            out.append(f"{name}: runAsUser is 0")
        seccomp = (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            out.append(f"{name}: seccompProfile is {seccomp}")
        for port in c.get("ports", []):
            if port.get("hostPort"):
                out.append(f"{name}: hostPort {port['hostPort']}")
        if sc.get("procMount", "Default") != "Default":
            out.append(f"{name}: procMount")
    return out


@test
def restricted_scenario_passes_pod_security_restricted_in_passt_mode():
    m = render("restricted-values.yaml")
    assert restricted_violations(m) == [], restricted_violations(m)
    assert env(m)["NETWORK_MODE"] == "passt"
    c = container(m)
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    limits = c["resources"]["limits"]
    assert limits.get("devices.kubevirt.io/kvm") == "1", "/dev/kvm from the device plugin"
    assert not any(k.endswith("/tun") for k in limits), f"no tun device: {limits}"
    assert pod_sysctls(m) == {
        "net.ipv4.ip_unprivileged_port_start": "0",
        "net.ipv4.ping_group_range": "0 2147483647",
    }
    pod = only(m, "StatefulSet")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == 65532
    assert pod["securityContext"]["supplementalGroups"] == [108]
    mounts = {v["mountPath"] for v in c["volumeMounts"]}
    assert "/run/kvm-manager" in mounts, "RUNTIME_DIR writable by the non-root user"


@test
def the_nat_scenarios_do_not_pass_restricted_and_the_check_says_why():
    # The checker can fail: NAT needs NET_ADMIN and NET_RAW, and runs as root.
    found = restricted_violations(render("default-values.yaml"))
    assert any("adds capabilities" in v for v in found), found
    assert any("runAsNonRoot" in v for v in found), found
    found = restricted_violations(render("privileged-values.yaml"))
    assert any("privileged" in v for v in found), found
    assert env(render("default-values.yaml"))["NETWORK_MODE"] == "auto"


@test
def grace_period_follows_shutdown_timeout():
    for f, timeout in (("default-values.yaml", 25), ("every-variable-values.yaml", 115)):
        m = render(f)
        pod = only(m, "StatefulSet")["spec"]["template"]["spec"]
        assert env(m)["SHUTDOWN_TIMEOUT"] == f"{timeout}s"
        assert pod["terminationGracePeriodSeconds"] == timeout + 5


@test
def probes_are_on_by_default_with_a_startup_probe_for_the_first_download():
    for f in CI.glob("*-values.yaml"):
        c = container(render(f.name))
        assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}, f.name
        assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}, f.name
        assert c["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}, f.name
    c = container(render("default-values.yaml"))
    startup = c["startupProbe"]
    # Liveness must not kill a pod still downloading its base image: an hour by default.
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 3600, startup
    live = c["livenessProbe"]
    assert live["periodSeconds"] * live["failureThreshold"] >= 30, live
    c = container(render("every-variable-values.yaml"))
    assert {"name": "http", "containerPort": 9090, "protocol": "TCP"} in c["ports"]
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 7200, startup
    c = container(render("default-values.yaml", "probesEnabled=false"))
    assert not {"readinessProbe", "livenessProbe", "startupProbe"} & set(c), c


@test
def probes_without_http_server_fail_with_the_fix():
    done = helm("template", "vm", str(CHART), "-f", str(CI / "default-values.yaml"),
                "--set", "httpPort=0", check=False)
    assert done.returncode != 0
    assert "probesEnabled needs kvm-manager's HTTP server" in done.stderr, done.stderr


@test
def default_services_are_headless_and_vnc():
    m = render("default-values.yaml")
    services = {name: d["spec"] for (kind, name), d in m.items() if kind == "Service"}
    assert set(services) == {"vm-kvm-manager-headless", "vm-kvm-manager-vnc"}, services
    headless = services["vm-kvm-manager-headless"]
    assert headless["clusterIP"] == "None" and headless["publishNotReadyAddresses"] is True
    assert services["vm-kvm-manager-vnc"]["ports"] == [
        {"name": "vnc", "port": 5900, "targetPort": "vnc", "protocol": "TCP"}]
    assert {"name": "vnc", "containerPort": 5900, "protocol": "TCP"} in container(m)["ports"]


@test
def no_vnc_sets_the_variable_and_drops_the_vnc_service():
    m = render("no-vnc-values.yaml")
    assert env(m)["NO_VNC"] == "true"
    assert ("Service", "vm-kvm-manager-vnc") not in m
    assert all(p["containerPort"] != 5900 for p in container(m)["ports"])
    assert m[("Service", "vm-kvm-manager")]["spec"]["ports"][0]["port"] == 5900


@test
def extra_ports_make_a_service_for_the_vm():
    svc = render("extra-ports-values.yaml")[("Service", "vm-kvm-manager")]["spec"]
    assert svc["type"] == "LoadBalancer"
    assert svc["ports"] == [
        {"name": "ssh", "port": 22, "targetPort": 22, "protocol": "TCP"},
        {"name": "http", "port": 80, "targetPort": 8000, "protocol": "TCP"},
        {"name": "syslog", "port": 514, "targetPort": 514, "protocol": "UDP"},
    ]
    assert svc["selector"]["app.kubernetes.io/instance"] == "vm"


@test
def vm_service_without_ports_fails_with_the_fix():
    done = helm("template", "vm", str(CHART), "-f", str(CI / "default-values.yaml"),
                "--set", "vmService.enabled=true", check=False)
    assert done.returncode != 0 and "at least one port in vmService.ports" in done.stderr


@test
def existing_claim_and_configmap_are_used_as_given():
    m = render("existing-claim-values.yaml")
    sts = only(m, "StatefulSet")
    assert sts["spec"]["replicas"] == 3
    assert [c["metadata"]["name"] for c in sts["spec"]["volumeClaimTemplates"]] == ["pet"]
    volumes = {v["name"]: v for v in sts["spec"]["template"]["spec"]["volumes"]}
    assert volumes["image"]["persistentVolumeClaim"] == {"claimName": "vm-images"}
    assert volumes["config"]["configMap"]["name"] == "legacy-vm-config"
    assert not any(kind == "ConfigMap" for kind, _ in m), "the chart must not own it"
    annotations = sts["spec"]["template"]["metadata"].get("annotations") or {}
    assert "checksum/config" not in annotations


@test
def the_image_auth_secret_is_mounted_read_only_and_named_by_img_auth_file():
    m = render("every-variable-values.yaml")
    assert env(m)["IMG_AUTH_FILE"] == "/etc/kvm-manager/image-auth/token"
    pod = only(m, "StatefulSet")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["image-auth"]["secret"] == {"secretName": "image-server-token", "defaultMode": 0o400}
    mounts = {v["name"]: v for v in container(m)["volumeMounts"]}
    assert mounts["image-auth"] == {
        "name": "image-auth", "mountPath": "/etc/kvm-manager/image-auth", "readOnly": True}
    default = render("default-values.yaml")
    assert "IMG_AUTH_FILE" not in env(default)
    assert all(v["name"] != "image-auth" for v in only(default, "StatefulSet")["spec"]["template"]["spec"]["volumes"])


@test
def every_contract_variable_is_settable_from_values():
    seen = set()
    for f in CI.glob("*-values.yaml"):
        seen |= set(env(render(f.name)))
    missing = contract_variables() - seen
    assert not missing, f"no values reach {sorted(missing)}"


@test
def every_variable_scenario_passes_values_through():
    m = render("every-variable-values.yaml")
    e = env(m)
    assert e["IMG_SHA256"].startswith("sha256:0123") and e["IMG_TARGET"] == "legacy-app.qcow2"
    assert e["VM_MAC"] == "52:54:00:12:34:56" and e["VM_CPUS"] == "2"
    assert e["VM_MEMORY"] == "3Gi" and e["VM_DISK_SIZE"] == "40Gi"
    assert e["NO_DHCP"] == "true" and e["DNS_MODE"] == "passthrough"
    assert e["NETWORK_MODE"] == "nat"
    assert e["QEMU"] == "/usr/libexec/qemu-kvm" and e["LOG_FORMAT"] == "json"
    assert e["HTTP_PORT"] == "9090" and e["CONFIG_DRIVE"] == "nocloud"
    assert e["CONSOLE_IDLE_TIMEOUT"] == "30m"
    assert e["VNC_PASSWORD"] == {"secretKeyRef": {"name": "vm-kvm-manager-vnc", "key": "vnc-password"}}
    secret = m[("Secret", "vm-kvm-manager-vnc")]
    assert base64.b64decode(secret["data"]["vnc-password"]) == b"s3cret"
    assert container(m)["args"] == ["--", "-vga", "std"]
    assert container(m)["resources"]["limits"]["cpu"] == "4"


@contextlib.contextmanager
def fake_cluster(*secrets):
    """A fake API server (fake_apiserver.py) holding `secrets` (NAME=PASSWORD); yields the
    environment for helm to use it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = [f"{name}={base64.b64encode(pw.encode()).decode()}"
            for name, pw in (x.split("=", 1) for x in secrets)]
    server = subprocess.Popen(
        [sys.executable, str(Path(__file__).parent / "fake_apiserver.py"), str(port), *args])
    try:
        for _ in range(100):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.1):
                break
            time.sleep(0.05)
        with tempfile.TemporaryDirectory() as tmp:
            kubeconfig = Path(tmp) / "kubeconfig"
            kubeconfig.write_text(
                "apiVersion: v1\nkind: Config\n"
                f"clusters: [{{name: fake, cluster: {{server: 'http://127.0.0.1:{port}'}}}}]\n"
                "users: [{name: u, user: {}}]\n"
                "contexts: [{name: c, context: {cluster: fake, user: u, namespace: default}}]\n"
                "current-context: c\n")
            yield {**os.environ, "KUBECONFIG": str(kubeconfig),
                   "HELM_CACHE_HOME": tmp, "HELM_CONFIG_HOME": tmp, "HELM_DATA_HOME": tmp}
    finally:
        server.kill()
        server.wait()


def install_dry_run(environ, values_file, *sets):
    """`helm install --dry-run=server` against the fake cluster: (manifests, NOTES)."""
    args = [str(HELM), "install", "vm", str(CHART), "-f", str(CI / values_file),
            "--dry-run=server", "--disable-openapi-validation"]
    for s in sets:
        args += ["--set", s]
    done = subprocess.run(args, capture_output=True, text=True, env=environ, check=False)
    assert done.returncode == 0, done.stderr
    manifest = done.stdout.split("\nMANIFEST:\n", 1)[1].split("\nNOTES:\n", 1)
    docs = [d for d in yaml.safe_load_all(manifest[0]) if d]
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}, manifest[1]


def vnc_password(manifests):
    secret = manifests[("Secret", "vm-kvm-manager-vnc")]
    return base64.b64decode(secret["data"]["vnc-password"]).decode()


@test
def default_generates_a_vnc_password_into_a_secret():
    m = render("default-values.yaml")
    assert env(m)["VNC_PASSWORD"] == {
        "secretKeyRef": {"name": "vm-kvm-manager-vnc", "key": "vnc-password"}}
    password = vnc_password(m)
    assert re.fullmatch(r"[A-Za-z0-9]{8}", password), password
    assert vnc_password(render("default-values.yaml")) != password, "random per install"
    annotations = only(m, "StatefulSet")["spec"]["template"]["metadata"]["annotations"]
    assert "checksum/vnc-password" not in annotations, "a generated password never rolls the pod"


@test
def an_upgrade_keeps_the_generated_vnc_password():
    with fake_cluster("vm-kvm-manager-vnc=Kept1234") as environ:
        m, notes = install_dry_run(environ, "default-values.yaml")
    assert vnc_password(m) == "Kept1234"
    assert "get secret vm-kvm-manager-vnc -o jsonpath='{.data.vnc-password}' | base64 -d" in notes
    assert "ask for the VNC password" in notes and "kept across upgrades" in notes, notes
    with fake_cluster() as environ:
        m, _ = install_dry_run(environ, "default-values.yaml")
    assert vnc_password(m) != "Kept1234", "a fresh install generates its own"


@test
def a_given_password_or_existing_secret_wins_over_generation():
    m = render("default-values.yaml", "vncPasswordSecret=mine")
    assert env(m)["VNC_PASSWORD"] == {"secretKeyRef": {"name": "mine", "key": "vnc-password"}}
    assert not [k for k in m if k[0] == "Secret"], "no Secret of ours"
    with fake_cluster("vm-kvm-manager-vnc=Kept1234") as environ:
        m, _ = install_dry_run(environ, "default-values.yaml", "vncPassword=given1")
    assert vnc_password(m) == "given1"


@test
def without_a_password_the_console_is_port_forward_only_and_notes_say_so():
    m = render("port-forward-only-values.yaml")
    assert "VNC_PASSWORD" not in env(m)
    assert not [k for k in m if k[0] == "Secret"]
    assert not render("no-vnc-values.yaml").get(("Secret", "vm-kvm-manager-vnc"))
    with fake_cluster() as environ:
        _, notes = install_dry_run(environ, "port-forward-only-values.yaml")
    assert "only through `kubectl port-forward`" in notes and "pods/portforward" in notes, notes
    assert "port-forward vm-kvm-manager-0 5900" in notes, notes


@test
def configmap_carries_userdata_bytes_and_metadata():
    m = render("every-variable-values.yaml")
    data = m[("ConfigMap", "vm-kvm-manager")]["data"]
    values = yaml.safe_load((CI / "every-variable-values.yaml").read_text())
    assert data["userdata"] == values["userdata"], "user data must pass through byte-for-byte"
    assert yaml.safe_load(data["metadata"]) == values["metadata"]


@test
def changing_userdata_rolls_the_pod():
    def checksum(*sets):
        sts = only(render("default-values.yaml", *sets), "StatefulSet")
        return sts["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
    assert checksum() == checksum(), "the checksum must be stable"
    assert checksum("string:userdata=#cloud-config") != checksum()
    assert checksum("metadata.instance-id=a") != checksum("metadata.instance-id=b")


@test
def missing_img_source_fails_with_a_helpful_message():
    done = helm("template", "vm", str(CHART), check=False)
    assert done.returncode != 0
    assert "imgSource is required" in done.stderr and "IMG_SOURCE" in done.stderr, done.stderr
    assert "--set imgSource=" in done.stderr, "the message should show how to set it"


@test
def schema_rejects_values_kvm_manager_would_reject():
    for bad in ("dnsMode=bogus", "networkMode=slirp", "runAsUser=0", "accel=hvf", "configDrive=iso", "string:vncPassword=123456789",
                "vmIp=300.1.1.1", "string:imgSha256=abc", "string:consoleIdleTimeout=0",
                "string:consoleIdleTimeout=soon",
                # issue 24
                "ignition=maybe", "string:nicQueues=0", "string:nicQueues=65", "shareTransport=nfs",
                "shares[0].tag=bad tag", "shares[0].tag=ok"):
        args = ["template", "vm", str(CHART), "-f", str(CI / "default-values.yaml")]
        args += ["--set-string" if bad.startswith("string:") else "--set", bad.removeprefix("string:")]
        done = helm(*args, check=False)
        assert done.returncode != 0 and "schema" in done.stderr, f"{bad}: {done.stderr}"


def leaf_keys(values, prefix=""):
    for key, value in values.items():
        if isinstance(value, dict) and value and key not in ("deviceResources", "resources"):
            yield from leaf_keys(value, f"{prefix}{key}.")
        else:
            yield prefix + key


@test
def every_value_is_commented_and_in_the_readme():
    top = None
    for i, line in enumerate(lines := (CHART / "values.yaml").read_text().splitlines()):
        m = re.match(r"^( *)([A-Za-z][A-Za-z0-9]*):", line)
        if not m:
            continue
        if not m.group(1):
            top = m.group(2)
        elif top in ("resources", "deviceResources"):
            continue  # Kubernetes' own structure, explained by the comment above it
        assert lines[i - 1].strip().startswith("#"), f"values.yaml:{i + 1} `{line.strip()}` has no comment"
    readme = README.read_text()
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for key in leaf_keys(values):
        assert f"`{key}`" in readme, f"{key} is missing from the README's parameter table"


def main():
    passed = failed = 0
    for fn in TESTS:
        try:
            fn()
        except Exception:  # noqa: BLE001 - report every failure, keep going
            failed += 1
            print(f"FAIL {fn.__name__}\n{traceback.format_exc()}", flush=True)
        else:
            passed += 1
            print(f"ok   {fn.__name__}", flush=True)
    print(f"chart: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
