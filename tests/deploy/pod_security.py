"""The Pod Security Standards' "restricted" profile (Kubernetes 1.30), checked offline.

What the API server's PodSecurity admission would refuse under
`pod-security.kubernetes.io/enforce: restricted`: the baseline controls (no host namespaces,
ports or paths, no privileged containers, only the default capabilities, /proc and sysctls
left alone, no unconfined seccomp) and the restricted ones on top (a limited set of volume
types, no privilege escalation, non-root, a RuntimeDefault or Localhost seccomp profile, every
capability dropped but NET_BIND_SERVICE). https://kubernetes.io/docs/concepts/security/pod-security-standards/
"""

from __future__ import annotations

from typing import Any

RESTRICTED_VOLUME_TYPES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}
SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
}
ALLOWED_SECCOMP = {"RuntimeDefault", "Localhost"}


def pod_template_spec(workload: dict[str, Any]) -> dict[str, Any]:
    """The pod spec of a workload (Deployment, StatefulSet, Job, ...) or of a Pod."""
    if workload["kind"] == "Pod":
        return dict(workload["spec"])
    if workload["kind"] == "CronJob":
        return dict(workload["spec"]["jobTemplate"]["spec"]["template"]["spec"])
    return dict(workload["spec"]["template"]["spec"])


def restricted_violations(pod: dict[str, Any]) -> list[str]:
    """Every way `pod` (a pod spec) breaks the restricted profile; empty when it meets it."""
    problems = _pod_level_violations(pod)
    pod_context = pod.get("securityContext") or {}
    for container in [
        *pod.get("initContainers", []),
        *pod.get("containers", []),
        *pod.get("ephemeralContainers", []),
    ]:
        problems += [
            f"container {container['name']}: {problem}"
            for problem in _container_violations(container, pod_context)
        ]
    return problems


def _pod_level_violations(pod: dict[str, Any]) -> list[str]:
    problems = [
        f"{field} is on" for field in ("hostNetwork", "hostPID", "hostIPC") if pod.get(field)
    ]
    for volume in pod.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUME_TYPES:
            problems.append(f"volume {volume['name']} is of type {sorted(kinds)}")
    context = pod.get("securityContext") or {}
    for sysctl in context.get("sysctls", []):
        if sysctl["name"] not in SAFE_SYSCTLS:
            problems.append(f"sysctl {sysctl['name']} is not a safe one")
    if context.get("runAsUser") == 0:
        problems.append("the pod runs as uid 0")
    seccomp = (context.get("seccompProfile") or {}).get("type")
    if seccomp is not None and seccomp not in ALLOWED_SECCOMP:
        problems.append(f"the pod's seccomp profile is {seccomp}")
    selinux = (context.get("seLinuxOptions") or {}).get("type")
    if selinux not in (None, "", "container_t", "container_init_t", "container_kvm_t"):
        problems.append(f"the pod's SELinux type is {selinux}")
    return problems


def _container_violations(container: dict[str, Any], pod_context: dict[str, Any]) -> list[str]:
    context = container.get("securityContext") or {}
    problems = []
    if context.get("privileged"):
        problems.append("privileged")
    if any(port.get("hostPort") for port in container.get("ports", [])):
        problems.append("publishes a host port")
    if context.get("procMount", "Default") != "Default":
        problems.append(f"procMount {context['procMount']}")
    if context.get("allowPrivilegeEscalation") is not False:
        problems.append("allowPrivilegeEscalation is not false")
    if not _inherited(context, pod_context, "runAsNonRoot"):
        problems.append("runAsNonRoot is not true (in the container or the pod)")
    if context.get("runAsUser") == 0:
        problems.append("runs as uid 0")
    seccomp = (context.get("seccompProfile") or pod_context.get("seccompProfile") or {}).get("type")
    if seccomp not in ALLOWED_SECCOMP:
        problems.append(f"seccomp profile {seccomp} (RuntimeDefault or Localhost required)")
    capabilities = context.get("capabilities") or {}
    if "ALL" not in capabilities.get("drop", []):
        problems.append("capabilities do not drop ALL")
    added = set(capabilities.get("add", [])) - {"NET_BIND_SERVICE"}
    if added:
        problems.append(f"adds capabilities {sorted(added)}")
    return problems


def _inherited(context: dict[str, Any], pod_context: dict[str, Any], field: str) -> bool:
    """A container's field, else the pod's."""
    value = context.get(field, pod_context.get(field))
    return value is True
